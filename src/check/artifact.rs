//! Typed artifacts between stages. A stage's outputs have kinds: a language model
//! (`pretrain.model`), a LoRA adapter (`sft.adapter`, usable as a model only through
//! `merge(sft.adapter)`), a reward model (`rm.model`). Passing the wrong kind is a check-time
//! error pointing at the argument.

use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::{ModelRef, Weights};
use crate::syntax::ast::{Decl, DeclKind, Expr, ExprKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// A language model: a policy, something to fine-tune.
    Lm,
    /// LoRA weights without their base.
    Adapter,
    /// A language model with a scalar reward head.
    Reward,
}

impl Artifact {
    fn noun(self) -> &'static str {
        match self {
            Artifact::Lm => "a language model",
            Artifact::Adapter => "a LoRA adapter",
            Artifact::Reward => "a reward model",
        }
    }
}

/// Every stage that names another stage: in its arguments (also inside `merge(…)`) or in a
/// field of its block (`reference = …`). Returns (stage name, span of the reference).
pub fn stage_refs<'a>(ck: &Checker<'a>, d: &'a Decl) -> Vec<(&'a str, Span)> {
    fn walk<'a>(ck: &Checker<'a>, e: &'a Expr, out: &mut Vec<(&'a str, Span)>) {
        // A GRPO reward is a weighted sum that may hold `reward_model(rm.model)`.
        match &e.kind {
            ExprKind::Binary(_, a, b) => return [a, b].into_iter().for_each(|x| walk(ck, x, out)),
            ExprKind::Paren(x) | ExprKind::Neg(x) => return walk(ck, x, out),
            _ => {}
        }
        if let ExprKind::Ctor { path, args, block } = &e.kind {
            if args.is_none() && block.is_none() {
                if let Some(t) = ck.decl(&path[0].name).filter(|t| t.kind == DeclKind::Stage) {
                    out.push((t.name.name.as_str(), path[0].span));
                }
                return;
            }
            for a in args.iter().flatten() {
                walk(ck, &a.value, out);
            }
            for f in block.iter().flat_map(|b| b.fields()) {
                walk(ck, &f.value, out);
            }
        }
    }
    let mut out = vec![];
    if let ExprKind::Ctor { args, block, .. } = &d.value.kind {
        for a in args.iter().flatten() {
            walk(ck, &a.value, &mut out);
        }
        // Only fields that hold artifacts; other fields are settings (`optimizer = adamw {…}`).
        for f in block.iter().flat_map(|b| b.fields()).filter(|f| f.key.name == "reference" || f.key.name == "reward") {
            walk(ck, &f.value, &mut out);
        }
    }
    out
}

impl<'a> Checker<'a> {
    /// What a stage declaration produces, as (attribute, kind).
    pub(super) fn stage_outputs(&self, d: &Decl) -> Vec<(&'static str, Artifact)> {
        let ExprKind::Ctor { path, block, .. } = &d.value.kind else { return vec![] };
        let adapter = block.as_ref().and_then(|b| b.field("adapter")).is_some_and(|f| !f.value.is_word("none"));
        match Expr::path_string(path).as_str() {
            "finetune" | "dpo" | "ppo" | "grpo" | "online_dpo" | "best_of_n" | "distill" if adapter => vec![("adapter", Artifact::Adapter)],
            "train" | "ppo" | "dpo" | "grpo" | "online_dpo" | "best_of_n" | "finetune" | "distill" => vec![("model", Artifact::Lm)],
            "reward_model" => vec![("model", Artifact::Reward)],
            _ => vec![],
        }
    }

    /// The kind and source of a model-valued expression: a model declaration (fresh weights),
    /// `STAGE.output`, or `merge(STAGE.adapter)`.
    pub(super) fn artifact(&mut self, e: &'a Expr) -> Option<(Artifact, ModelRef)> {
        if let ExprKind::Ctor { path, args: Some(args), block: None } = &e.kind {
            if Expr::path_string(path) == "merge" {
                let [arg] = args.as_slice() else {
                    self.error(Diagnostic::error(Code::E0104, e.span, "`merge` takes one argument: an adapter").with_hint("write `merge(sft.adapter)`"));
                    return None;
                };
                let (kind, r) = self.artifact(&arg.value)?;
                if kind != Artifact::Adapter {
                    self.error(Diagnostic::error(Code::E0310, arg.value.span, format!("`merge` expects a LoRA adapter, found {}", kind.noun()))
                        .with_hint("merge the `adapter` of a `finetune`, `dpo`, `online_dpo`, `ppo`, `grpo`, `best_of_n` or `distill` stage that has `adapter = lora { … }`"));
                    return None;
                }
                let stage = r.stage().unwrap_or_default().to_string();
                return Some((Artifact::Lm, ModelRef { arch: r.arch, weights: Weights::Merged { stage } }));
            }
        }
        let d = self.decl_ref(e, DeclKind::Model, "a model")?;
        let path = e.as_path()?;
        match (d.kind, path.len()) {
            (DeclKind::Model, 1) => Some((Artifact::Lm, ModelRef { arch: d.name.name.clone(), weights: Weights::Init })),
            (DeclKind::Stage, 1) => {
                let outs = self.stage_outputs(d);
                let hint = match outs.first() {
                    Some((attr, _)) => format!("use its output: `{}.{attr}`", d.name.name),
                    None => format!("a `{}` stage has no model output", d.value.as_ctor_name().unwrap_or_default()),
                };
                self.error(Diagnostic::error(Code::E0301, e.span, format!("`{}` is a stage, not a model", d.name.name)).with_hint(hint));
                None
            }
            (DeclKind::Stage, 2) => {
                let outs = self.stage_outputs(d);
                let Some(&(_, kind)) = outs.iter().find(|(a, _)| *a == path[1].name) else {
                    let mut err = Diagnostic::error(Code::E0311, path[1].span, format!("stage `{}` has no output `{}`", d.name.name, path[1].name));
                    err = match outs.first() {
                        Some((a, Artifact::Adapter)) if path[1].name == "model" => err.with_hint(format!(
                            "`{0}` trains a LoRA adapter, not a whole model: use `merge({0}.{a})` for a model",
                            d.name.name
                        )),
                        Some((a, _)) => err.with_hint(format!("its output is `{}.{a}`", d.name.name)),
                        None => err.with_hint(format!("a `{}` stage produces no model", d.value.as_ctor_name().unwrap_or_default())),
                    };
                    self.error(err);
                    return None;
                };
                let arch = self.stage_arch(d)?;
                Some((kind, ModelRef { arch, weights: Weights::Stage { stage: d.name.name.clone() } }))
            }
            _ => {
                self.error(Diagnostic::error(Code::E0301, e.span, format!("expected a model, found {} `{}`", d.kind.keyword(), Expr::path_string(path)))
                    .with_hint("pass a `model` declaration or a stage's output such as `pretrain.model`"));
                None
            }
        }
    }

    /// A language model where a policy or a model to fine-tune is expected.
    pub(super) fn expect_lm(&mut self, e: &'a Expr, role: &str) -> Option<ModelRef> {
        let (kind, r) = self.artifact(e)?;
        match kind {
            Artifact::Lm => Some(r),
            Artifact::Adapter => {
                let stage = r.stage().unwrap_or_default();
                self.error(Diagnostic::error(Code::E0310, e.span, format!("{role} must be a language model, but `{stage}.adapter` is a LoRA adapter"))
                    .with_hint(format!("an adapter is a model only together with its base: write `merge({stage}.adapter)`")));
                None
            }
            Artifact::Reward => {
                self.error(Diagnostic::error(Code::E0310, e.span, format!("{role} must be a language model, but `{}` is a reward model", describe_ref(&r)))
                    .with_hint("a reward model scores text, it does not generate it: pass a policy such as `sft.model` or `merge(sft.adapter)`"));
                None
            }
        }
    }

    /// A reward model (the output of a `reward_model` stage); returns that stage's name.
    pub(super) fn expect_reward(&mut self, e: &'a Expr) -> Option<(String, String)> {
        let (kind, r) = self.artifact(e)?;
        if kind != Artifact::Reward {
            self.error(Diagnostic::error(Code::E0310, e.span, format!("`reward` must be a reward model, but `{}` is {}", describe_ref(&r), kind.noun()))
                .with_hint("train one with `stage rm = reward_model(sft.model, prefs) { … }` and pass `rm.model`"));
            return None;
        }
        Some((r.stage()?.to_string(), r.arch))
    }

    /// The architecture a stage trains, following `STAGE.model` and `merge(…)` chains back to a
    /// model: iteratively (a chain of 20k stages), each stage's answer kept for the next asking.
    pub(super) fn stage_arch(&mut self, d: &'a Decl) -> Option<String> {
        // The stages walked, each answered at the end.
        let mut seen: std::collections::HashSet<&'a str> = Default::default();
        let mut stage = d;
        let arch = loop {
            if let Some(known) = self.stage_archs.get(stage.name.name.as_str()) {
                break known.clone();
            }
            // A circle is reported where stages are ordered; here it has no architecture.
            if !seen.insert(stage.name.name.as_str()) {
                break None;
            }
            match self.trained_decl(stage) {
                Some(t) if t.kind == DeclKind::Model => break Some(t.name.name.clone()),
                Some(t) if t.kind == DeclKind::Stage => stage = t,
                _ => break None,
            }
        };
        for s in seen {
            self.stage_archs.insert(s.to_string(), arch.clone());
        }
        arch
    }

    /// The declaration a stage's model argument (`model`, `policy`, `student`, or the first) names,
    /// through `merge(…)`.
    fn trained_decl(&self, d: &'a Decl) -> Option<&'a Decl> {
        let ExprKind::Ctor { args: Some(args), .. } = &d.value.kind else { return None };
        let mut e = &args.iter().find(|a| a.name.as_ref().is_none_or(|n| n.name == "model" || n.name == "policy" || n.name == "student"))?.value;
        while let ExprKind::Ctor { path, args: Some(args), .. } = &e.kind {
            if Expr::path_string(path) != "merge" {
                break;
            }
            e = &args.first()?.value;
        }
        self.decl(&e.as_path()?[0].name)
    }
}

fn describe_ref(r: &ModelRef) -> String {
    match &r.weights {
        Weights::Init => r.arch.clone(),
        Weights::Stage { stage } => format!("{stage}.model"),
        Weights::Merged { stage } => format!("merge({stage}.adapter)"),
    }
}
