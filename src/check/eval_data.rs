//! `train { eval_data = [wiki, c4] }`: other corpora whose held-out loss a pretraining run
//! measures at every evaluation (OLMo's in-loop perplexity evaluations). Each is read with the
//! tokens the model trains on, whatever its own `tokenizer`: bytes, the checkpoint's tokenizer,
//! or the BPE tokenizer the stage trains. `finetune { eval_data = [a, b] }`: other instruction
//! sets, read with the stage's own set's tokenizer (TRL's dict of eval datasets).

use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{ExampleKind, ExampleSet};
use crate::syntax::ast::{DeclKind, Expr, ExprKind};

/// Corpora one stage evaluates on at most (each is scored at every evaluation).
const MOST: usize = 16;

impl<'a> Checker<'a> {
    /// A corpus name or a list of them; None after an error.
    pub(super) fn eval_data(&mut self, e: &'a Expr) -> Option<Vec<String>> {
        self.eval_names(e, ("corpora", "corpus"), |ck, item| ck.eval_corpus(item))
    }

    /// A post-training stage's other sets (`own` is the set it trains on): each must hold what
    /// `own` does (E0313; instructions for `finetune`, preference pairs for `reward_model` and
    /// `dpo`, or the unpaired feedback a `dpo` stage trains on), read
    /// with `own`'s tokenizer (E0315); None after an error.
    pub(super) fn eval_sets(&mut self, e: &'a Expr, own: &ExampleSet, stage: &str) -> Option<Vec<String>> {
        let plural = match own.kind {
            ExampleKind::Instructions => "instruction sets",
            ExampleKind::Feedback => "feedback sets",
            _ => "preference sets",
        };
        let want = own.kind;
        self.eval_names(e, (plural, "set"), |ck, item| {
            let d = ck.decl_ref(item, DeclKind::Data, "a data set")?;
            let found = (d.kind == DeclKind::Data && item.as_path().is_some_and(|p| p.len() == 1)).then(|| ck.examples.get(&d.name.name).cloned()).flatten();
            let set = match found {
                Some(Some(set)) if set.kind == want => set,
                Some(Some(set)) => {
                    ck.error(Diagnostic::error(Code::E0313, item.span, format!("`eval_data` of a `{stage}` stage takes {plural}, but `{}` holds {}", set.name, super::posttrain::kind_words(&set.kind)))
                        .with_hint(format!("name sets that hold {}, as `{}` does", super::posttrain::kind_words(&want), own.name)));
                    return None;
                }
                Some(None) => return None, // (the set's own error is reported)
                None => {
                    ck.error(Diagnostic::error(Code::E0301, item.span, format!("`eval_data` of a `{stage}` stage takes {plural}, but `{}` is not one", d.name.name))
                        .with_hint("a text corpus's held-out loss is a `train` stage's `eval_data`, or a `compare` stage's perplexity"));
                    return None;
                }
            };
            if set.tokenizer != own.tokenizer {
                let reads = |s: &ExampleSet| s.tokenizer.as_ref().map_or("as bytes".to_string(), |m| format!("with the tokenizer of `{m}`"));
                ck.error(Diagnostic::error(Code::E0315, item.span, format!("`eval_data` set `{}` is read {}, but the stage's model reads `{}` {}", set.name, reads(&set), own.name, reads(own)))
                    .with_hint(format!("give data `{}` the same `tokenizer` as `{}`", set.name, own.name)));
                return None;
            }
            Some(set.name)
        })
    }

    /// A name or a list of up to `MOST` distinct names (of `what`: plural, singular), each
    /// checked by `one`.
    fn eval_names(&mut self, e: &'a Expr, (what, each): (&str, &str), mut one: impl FnMut(&mut Self, &'a Expr) -> Option<String>) -> Option<Vec<String>> {
        let items: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) => items.iter().collect(),
            _ => vec![e],
        };
        if items.len() > MOST {
            self.error(Diagnostic::error(Code::E0202, e.span, format!("`eval_data` names {} {what}; at most {MOST}", items.len()))
                .with_hint("each is scored at every evaluation: keep the ones whose curves you will read"));
            return None;
        }
        let mut names: Vec<String> = vec![];
        let mut ok = true;
        for item in items {
            match one(self, item) {
                Some(n) if names.contains(&n) => {
                    self.error(Diagnostic::error(Code::E0102, item.span, format!("`{n}` is named twice in `eval_data`")).with_hint(format!("name each {each} once")));
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
