//! `train { eval_data = [wiki, c4] }`: other corpora whose held-out loss a pretraining run
//! measures at every evaluation (OLMo's in-loop perplexity evaluations). Each is read with the
//! tokens the model trains on, whatever its own `tokenizer`: bytes, the checkpoint's tokenizer,
//! or the BPE tokenizer the stage trains.

use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::syntax::ast::{DeclKind, Expr, ExprKind};

/// Corpora one stage evaluates on at most (each is scored at every evaluation).
const MOST: usize = 16;

impl<'a> Checker<'a> {
    /// A corpus name or a list of them; None after an error.
    pub(super) fn eval_data(&mut self, e: &'a Expr) -> Option<Vec<String>> {
        let items: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) => items.iter().collect(),
            _ => vec![e],
        };
        if items.len() > MOST {
            self.error(Diagnostic::error(Code::E0202, e.span, format!("`eval_data` names {} corpora; at most {MOST}", items.len()))
                .with_hint("each is scored at every evaluation: keep the ones whose curves you will read"));
            return None;
        }
        let mut names: Vec<String> = vec![];
        let mut ok = true;
        for item in items {
            match self.eval_corpus(item) {
                Some(n) if names.contains(&n) => {
                    self.error(Diagnostic::error(Code::E0102, item.span, format!("`{n}` is named twice in `eval_data`")).with_hint("name each corpus once"));
                    ok = false;
                }
                Some(n) => names.push(n),
                None => ok = false,
            }
        }
        ok.then_some(names)
    }

    /// One corpus of `eval_data`: a `text(…)` declaration.
    fn eval_corpus(&mut self, e: &'a Expr) -> Option<String> {
        let d = self.decl_ref(e, DeclKind::Data, "a data set")?;
        if d.kind != DeclKind::Data || self.is_examples(d) || self.is_synthetic(d) || e.as_path().is_none_or(|p| p.len() != 1) {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("`eval_data` takes text corpora, but `{}` is not a `text(…)` declaration", d.name.name))
                .with_hint("declare `data wiki = text(\"wiki.txt\") { … }`; multiple-choice questions go in `eval_choices`"));
            return None;
        }
        let spec = self.data_spec(d)?;
        if !spec.mix.is_empty() {
            let names: Vec<&str> = spec.mix.iter().map(|(n, _)| n.as_str()).collect();
            self.error(Diagnostic::error(Code::E0301, e.span, format!("`eval_data` takes text corpora, and `{}` mixes {}", spec.name, names.len()))
                .with_hint(format!("name its corpora, each evaluated on its own: `eval_data = [{}]`", names.join(", "))));
            return None;
        }
        Some(spec.name)
    }
}
