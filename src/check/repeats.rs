//! How many times a `train` stage reads each corpus's training tokens, known before it runs:
//! its steps × batch × context rows drawn against the split it draws them from (a mix's
//! corpora each by its weight). Muennighoff et al. (2023, "Scaling Data-Constrained Language
//! Models") find tokens repeated beyond about four epochs worth much less than fresh ones, and
//! past about forty nothing: W0409 names the corpus and the count. A stage on a mix is told
//! (N0410) what each of its corpora gives: its share of the rows, the tokens and the epochs.

use super::Checker;
use crate::diag::{thousands, Code, Diagnostic};
use crate::recipe::{Recipe, StageKind, Tokenizer};

/// Epochs past which repeated tokens are worth much less (Muennighoff et al. 2023).
const EPOCHS: f64 = 4.0;

impl Checker<'_> {
    pub(super) fn check_repeats(&mut self, r: &Recipe) {
        for s in &r.stages {
            let StageKind::Train(t) = &s.kind else { continue };
            let Some(data) = r.data(&t.data) else { continue };
            let drawn = t.steps as f64 * t.batch as f64 * t.context as f64;
            let parts: Vec<_> = if data.mix.is_empty() { vec![(data, 1.0)] } else { data.mix.iter().filter_map(|(n, w)| Some((r.data(n)?, *w))).collect() };
            let total: f64 = parts.iter().map(|p| p.1).sum();
            if !data.mix.is_empty() {
                self.mix_note(&s.name, &data.name, drawn, &parts, total);
            }
            for (part, w) in parts {
                let tokens = part.tokens as f64 * part.split;
                let epochs = drawn * w / total / tokens.max(1.0);
                if epochs <= EPOCHS {
                    continue;
                }
                // Only bytes are counted exactly before the run: other tokenizers' are bounded by
                // the bytes, so the count is at least this.
                let at_least = if part.tokenizer == Tokenizer::Bytes { "" } else { "at least " };
                let share = if w < total { format!(" ({:.0}% of them by its weight)", 100.0 * w / total) } else { String::new() };
                let span = self.decl(&s.name).map_or(self.ast.name_span, |d| d.value.span);
                self.error(
                    Diagnostic::warning(Code::W0409, span, format!("stage `{}` draws {} tokens{share} from the {} training tokens of `{}`: each {at_least}{:.1} times", s.name, thousands((drawn * w / total).round() as u64), thousands(tokens.round() as u64), part.name, epochs))
                        .with_hint("Muennighoff et al. (2023) find tokens repeated past about 4 epochs worth much less than new ones: more data, or fewer steps"),
                );
            }
        }
    }

    /// N0410: what each corpus of mix `mix` gives stage `stage`'s `drawn` tokens, by its weight.
    fn mix_note(&mut self, stage: &str, mix: &str, drawn: f64, parts: &[(&crate::recipe::DataSpec, f64)], total: f64) {
        let each: Vec<String> = parts
            .iter()
            .map(|(part, w)| {
                let (share, tokens) = (drawn * w / total, part.tokens as f64 * part.split);
                let at_least = if part.tokenizer == Tokenizer::Bytes { "" } else { "at least " };
                format!("{:.0}% from `{}` ({} of its {} training tokens, {at_least}{:.2} epochs)", 100.0 * w / total, part.name, thousands(share.round() as u64), thousands(tokens.round() as u64), share / tokens.max(1.0))
            })
            .collect();
        let span = self.decl(stage).map_or(self.ast.name_span, |d| d.value.span);
        self.error(
            Diagnostic::note(Code::N0410, span, format!("stage `{stage}` draws {} tokens from mix `{mix}`: {}", thousands(drawn.round() as u64), each.join(", ")))
                .with_hint("a corpus's weight sets its share of the rows whatever its size (W0409 past 4 epochs)"),
        );
    }
}
