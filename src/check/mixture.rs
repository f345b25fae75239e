//! `stage NAME = mixture(data) { experts, expert = linear | mlp {…}, objective, … }`:
//! Jacobs et al. 1991's gated mixture of experts on a synthetic task.

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::{MixtureSpec, Objective, StageKind, StageSpec};
use crate::syntax::ast::{Arg, Block, Decl, DeclKind};

impl<'a> Checker<'a> {
    pub(super) fn check_mixture(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "mixture", args, &["data"]);
        let data = bound[0].and_then(|e| {
            let decl = self.decl_ref(e, DeclKind::Data, "a data set")?;
            if decl.kind != DeclKind::Data || !self.is_synthetic(decl) {
                self.error(Diagnostic::error(Code::E0301, e.span, format!("`mixture` needs synthetic task data, found `{}`", decl.name.name))
                    .with_hint("declare `data tasks = synthetic.regions { … }`"));
                return None;
            }
            Some(decl.name.name.clone())
        });
        let mut f = Fields::new(block, &self.top_scope(), format!("stage `{}`", d.name.name), at);
        let experts = f.size(self, "experts", Some(4));
        let expert = match f.field("expert") {
            Some(e) if e.value.as_path().is_some_and(|p| p.len() == 1 && p[0].name == "linear") => Some(None),
            Some(e) => self.check_mlp(&e.value, &f.scope, None, &["linear", "mlp"]).map(Some),
            None => Some(None),
        };
        let objective = f.sym(self, "objective", &["competitive", "cooperative"], Some("competitive"));
        let steps = f.int(self, "steps", Some(2000), Min::One);
        let batch = f.size(self, "batch", Some(64));
        let optimizer = self.check_adamw(&mut f);
        let schedule = self.check_schedule(&mut f);
        let eval_every = f.int(self, "eval_every", Some(200), Min::One);
        let precision = f.sym(self, "precision", &["fp32", "bf16"], Some("fp32"));
        f.finish(self);
        Some(StageSpec {
            name: d.name.name.clone(),
            after: vec![],
            kind: StageKind::Mixture(MixtureSpec {
                data: data?,
                experts: experts?,
                expert: expert?,
                objective: if objective? == "cooperative" { Objective::Cooperative } else { Objective::Competitive },
                steps: steps?,
                batch: batch?,
                optimizer: optimizer?,
                schedule: schedule?,
                eval_every: eval_every?,
                precision: super::posttrain::precision_of(precision?),
            }),
        })
    }
}
