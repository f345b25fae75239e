//! The same tokenizer for a model and its data: a model whose weights were trained on the BPE
//! tokens of a corpus reads token ids of that tokenizer, and post-training examples are bytes.
//! Feeding one to the other trains on ids that mean something else, silently; the check refuses.

use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{ModelRef, Recipe, StageKind, Tokenizer};

/// Where a stage's weights learned their tokens: (the train stage, its data, the tokenizer).
struct Origin<'r> {
    stage: &'r str,
    data: &'r str,
    tokenizer: Tokenizer,
}

/// The tokenizer the weights of stage `name` were trained with, following post-training and
/// continued pretraining back to the `train` stage that started them (None: fresh weights of
/// a stage with no text data, such as a post-training stage on a fresh model).
fn origin<'r>(r: &'r Recipe, name: &str, depth: usize) -> Option<Origin<'r>> {
    let stage = r.stage(name)?;
    if depth > r.stages.len() {
        return None; // a cycle, reported elsewhere
    }
    match &stage.kind {
        StageKind::Train(t) => {
            let data = r.data(&t.data)?;
            Some(Origin { stage: &stage.name, data: &data.name, tokenizer: data.tokenizer })
        }
        kind => inputs(kind).first().and_then(|m| m.stage()).and_then(|s| origin(r, s, depth + 1)),
    }
}

/// The models a post-training stage reads its examples with.
fn inputs(kind: &StageKind) -> Vec<&ModelRef> {
    match kind {
        StageKind::Finetune(f) => vec![&f.model],
        StageKind::RewardModel(m) => vec![&m.model],
        StageKind::Ppo(p) => vec![&p.policy],
        StageKind::Dpo(d) => vec![&d.policy],
        StageKind::Grpo(g) => vec![&g.policy],
        StageKind::Compare(c) => c.policies.iter().map(|(_, m)| m).chain([&c.reference]).collect(),
        StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) => vec![],
    }
}

fn describe(t: Tokenizer) -> String {
    match t {
        Tokenizer::Bytes => "bytes".into(),
        Tokenizer::Bpe { vocab } => format!("BPE tokens (vocab {vocab})"),
    }
}

impl Checker<'_> {
    /// E0315 for every stage that would feed a model tokens of another tokenizer than its own.
    pub(super) fn check_tokenizers(&mut self, r: &Recipe) {
        for s in &r.stages {
            let span = self.decl(&s.name).map_or(self.ast.name_span, |d| d.value.span);
            // Continued pretraining: the data's tokenizer against the weights'.
            if let StageKind::Train(t) = &s.kind {
                let (Some(up), Some(data)) = (t.init_from.as_deref(), r.data(&t.data)) else { continue };
                if let Some(o) = origin(r, up, 0).filter(|o| std::mem::discriminant(&o.tokenizer) != std::mem::discriminant(&data.tokenizer)) {
                    self.error(Diagnostic::error(Code::E0315, span, format!("stage `{}` trains on `{}` as {}, but the weights it continues learned {} of `{}` in stage `{}`", s.name, data.name, describe(data.tokenizer), describe(o.tokenizer), o.data, o.stage))
                        .with_hint("a model and its data use one tokenizer: give both data sets the same `tokenizer`"));
                }
                continue;
            }
            // Post-training examples are bytes: a base pretrained on BPE tokens would read them as
            // other tokens.
            for m in inputs(&s.kind) {
                let Some(o) = m.stage().and_then(|st| origin(r, st, 0)) else { continue };
                if matches!(o.tokenizer, Tokenizer::Bpe { .. }) {
                    self.error(Diagnostic::error(Code::E0315, span, format!("stage `{}` reads its examples as bytes, but its model learned {} of `{}` in stage `{}`: the ids would mean other tokens", s.name, describe(o.tokenizer), o.data, o.stage))
                        .with_hint("post-training examples are byte-level: pretrain the model on data with `tokenizer = bytes`"));
                    break;
                }
            }
        }
    }
}
