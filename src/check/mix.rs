//! `data web = mix(wiki, code) { weights = [7, 3] }`: a pretraining mixture, text corpora whose
//! training rows are drawn in proportion to their weights (OLMo's and DoReMi's data mixes), read
//! with one tokenizer at one context. Each corpus keeps its own split; the mix's validation loss
//! draws its held-out rows in the same proportions.

use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::DataSpec;
use crate::syntax::ast::{Arg, Block, Decl, DeclKind, ExprKind};

/// Corpora one mix holds at most.
const MOST: usize = 16;

impl<'a> Checker<'a> {
    pub(super) fn check_mix(&mut self, d: &'a Decl, at: Span, args: Option<&'a [Arg]>, block: Option<&'a Block>) -> Option<DataSpec> {
        let name = d.name.name.clone();
        let args = args.unwrap_or(&[]);
        if !(2..=MOST).contains(&args.len()) {
            self.error(Diagnostic::error(Code::E0104, d.value.span, format!("`mix` takes 2 to {MOST} text corpora, not {}", args.len())).with_hint("write `mix(wiki, code) { weights = [7, 3] }`"));
            return None;
        }
        let mut parts: Vec<DataSpec> = vec![];
        let mut ok = true;
        for a in args {
            match self.mix_part(a) {
                Some(p) if parts.iter().any(|q| q.name == p.name) => {
                    self.error(Diagnostic::error(Code::E0102, a.value.span, format!("`{}` is named twice in `mix`", p.name)).with_hint("name each corpus once; its weight says how often it is drawn"));
                    ok = false;
                }
                Some(p) => parts.push(p),
                None => ok = false,
            }
        }
        let weights = self.mix_weights(block, args.len(), at);
        if !ok {
            return None;
        }
        // One tokenizer and one context: a row of any corpus is a row of the same model.
        let first = &parts[0];
        for (p, a) in parts.iter().zip(args).skip(1) {
            if p.tokenizer != first.tokenizer {
                let how = |s: &DataSpec| super::tokens::describe(&s.tokenizer);
                self.error(Diagnostic::error(Code::E0315, a.value.span, format!("data `{name}` mixes `{}`, read as {}, with `{}`, read as {}: a model reads one tokenizer's ids", first.name, how(first), p.name, how(p)))
                    .with_hint(format!("give `{}` the `tokenizer` of `{}`", p.name, first.name)));
                return None;
            }
            if p.context != first.context {
                self.error(Diagnostic::error(Code::E0202, a.value.span, format!("data `{name}` mixes `{}` of context {} with `{}` of context {}", first.name, first.context, p.name, p.context))
                    .with_hint(format!("give `{}` `context = {}`", p.name, first.context)));
                return None;
            }
        }
        let mix = parts.iter().map(|p| p.name.clone()).zip(weights?).collect();
        let tokens = parts.iter().fold(0u64, |t, p| t.saturating_add(p.tokens));
        Some(DataSpec { name, tokens, field: None, mix, ..first.clone() })
    }

    /// One corpus of a mix: a `text(…)` declaration.
    fn mix_part(&mut self, a: &'a Arg) -> Option<DataSpec> {
        if let Some(n) = &a.name {
            self.error(Diagnostic::error(Code::E0104, n.span, format!("`mix` takes corpora by name, not `{} = …`", n.name)).with_hint("write `mix(wiki, code) { weights = [7, 3] }`"));
            return None;
        }
        let d = self.decl_ref(&a.value, DeclKind::Data, "a data set")?;
        let text = d.value.as_ctor_name().is_some_and(|n| n == "text") && a.value.as_path().is_some_and(|p| p.len() == 1);
        if !text {
            self.error(Diagnostic::error(Code::E0301, a.value.span, format!("`mix` takes text corpora, but `{}` is not a `text(…)` declaration", d.name.name))
                .with_hint("declare each corpus as `data wiki = text(\"wiki.txt\") { … }` and mix those"));
            return None;
        }
        self.data_spec(d)
    }

    /// `weights = [w, …]`, one a corpus, each in (0, 1e6]; all 1 when left out.
    fn mix_weights(&mut self, block: Option<&'a Block>, n: usize, at: Span) -> Option<Vec<f64>> {
        let mut f = super::fields::Fields::new(block, &self.top_scope(), "mix", at);
        let field = f.field("weights");
        f.finish(self);
        let Some(field) = field else { return Some(vec![1.0; n]) };
        let ExprKind::List(items) = &field.value.kind else {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`weights` expects a list of numbers, found {}", super::eval::describe(&field.value))).with_hint("write `weights = [7, 3]`, one a corpus"));
            return None;
        };
        if items.len() != n {
            self.error(Diagnostic::error(Code::E0202, field.value.span, format!("`weights` has {} numbers for {n} corpora", items.len())).with_hint("give one weight a corpus, in the order `mix` names them"));
            return None;
        }
        let scope = self.top_scope();
        let mut out = vec![];
        for e in items {
            let w = self.eval_num(e, &scope)?;
            if !(w > 0.0 && w <= 1e6) {
                self.error(Diagnostic::error(Code::E0202, e.span, format!("weight {} is out of range", super::fields::fmt_num(w))).with_hint("a weight must lie in (0, 1000000]: how often its corpus is drawn, relative to the others"));
                return None;
            }
            out.push(w);
        }
        Some(out)
    }
}
