//! `compare(base = pretrain.model, sft = merge(sft.adapter), …) { data, … }`: the table of
//! policies at the end of a pipeline, on held-out instructions (gold reward, exact match), on a
//! multiple-choice benchmark (accuracy), or on a text corpus's held-out split (perplexity).

use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, Decl, DeclKind, Expr};

/// What a `compare` scores its policies on.
enum Scored {
    Examples(ExampleSet),
    Corpus(DataSpec),
}

impl Scored {
    fn name(&self) -> &str {
        match self {
            Scored::Examples(s) => &s.name,
            Scored::Corpus(c) => &c.name,
        }
    }
}

impl<'a> Checker<'a> {
    pub(super) fn check_compare(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let mut policies = vec![];
        let mut ok = true;
        for a in args {
            let label = match &a.name {
                Some(n) => n.name.clone(),
                None => a.value.as_path().map_or_else(|| format!("policy {}", policies.len() + 1), |p| p[0].name.clone()),
            };
            match self.expect_lm(&a.value, &format!("`{label}`")) {
                Some(r) => policies.push((label, r)),
                None => ok = false,
            }
        }
        if args.is_empty() {
            self.error(Diagnostic::error(Code::E0106, at, "`compare` needs at least one policy").with_hint("write `compare(sft = sft.model, rl = rl.model) { data = instr }`"));
            ok = false;
        }
        let mut f = self.stage_fields(d, at, block);
        let data = match f.field("data") {
            Some(field) => self.compare_data(&field.value),
            None => {
                // The recipe's first instruction set, if it has one.
                let instructions = |n: &str| self.examples.get(n).is_some_and(|e| e.as_ref().is_some_and(|e| e.kind == ExampleKind::Instructions));
                let name = self.decls.iter().find(|d| instructions(&d.name.name)).map_or("instr".to_string(), |d| d.name.name.clone());
                let hint = if block.is_some() { format!("add `data = {name}` to its block") } else { format!("give it a block: `compare(…) {{ data = {name} }}`") };
                self.error(Diagnostic::error(Code::E0101, at, "`compare` needs `data`: the examples whose held-out prompts it scores").with_hint(hint));
                None
            }
        };
        let reference = match f.field("reference") {
            Some(field) => self.expect_lm(&field.value, "the reference"),
            None => policies.first().map(|p| p.1.clone()),
        };
        let examples = match &data {
            // A corpus's held-out split is scored whole, as lm-eval scores a perplexity task.
            Some(Scored::Corpus(c)) => match f.field("examples") {
                Some(field) => {
                    self.error(Diagnostic::error(Code::E0313, field.key.span, format!("`examples` counts prompts or questions, but `{}` is a text corpus, whose held-out split is scored whole", c.name))
                        .with_hint(format!("hold out less of it with `split` on data `{}`", c.name)));
                    None
                }
                None => Some(0),
            },
            // A benchmark is scored whole unless `examples` says otherwise (lm-eval's default).
            Some(Scored::Examples(ExampleSet { source: ExampleSource::Choices { questions, .. }, .. })) => f.size(self, "examples", Some((*questions as u64).min(1 << 24))),
            _ => f.size(self, "examples", Some(200)),
        };
        let stride = match (&data, f.field("stride")) {
            (Some(Scored::Corpus(_)), Some(_)) => f.size(self, "stride", None).map(Some),
            (Some(Scored::Examples(s)), Some(field)) => {
                self.error(Diagnostic::error(Code::E0313, field.key.span, format!("`stride` moves the window over a text corpus, but `{}` holds {}", s.name, super::posttrain::kind_words(&s.kind)))
                    .with_hint("leave `stride` out, or compare on `text(…)` data"));
                None
            }
            _ => Some(None),
        };
        let max_new = f.size(self, "max_new", Some(16));
        let device = self.device_key(&mut f);
        let precision = f.sym(self, "precision", &["fp32", "bf16"], Some("fp32"));
        f.finish(self);
        if !ok {
            return None;
        }
        let (device, precision) = (device?, super::posttrain::precision_of(precision?));
        let data = data?.name().to_string();
        Some(self.stage_spec(d, StageKind::Compare(CompareSpec { policies, reference: reference?, data, examples: examples?, stride: stride?, reads: vec![], max_new: max_new?, device, precision })))
    }

    /// Example sets of any kind, or a text corpus.
    fn compare_data(&mut self, e: &'a Expr) -> Option<Scored> {
        let d = self.decl_ref(e, DeclKind::Data, "a data set")?;
        let corpus = d.kind == DeclKind::Data && e.as_path().is_some_and(|p| p.len() == 1) && !self.is_examples(d) && !self.is_synthetic(d);
        if corpus {
            let spec = self.data_spec(d)?;
            if let Some((first, _)) = spec.mix.first() {
                self.error(Diagnostic::error(Code::E0313, e.span, format!("`compare` scores one corpus's held-out text, and `{}` mixes {}", spec.name, spec.mix.len()))
                    .with_hint(format!("compare on each corpus of the mix: `data = {first}`")));
                return None;
            }
            return Some(Scored::Corpus(spec));
        }
        self.examples_arg(e, &[], "compare").map(Scored::Examples)
    }
}
