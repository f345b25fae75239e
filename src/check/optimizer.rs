//! A stage's `optimizer` and `schedule`: `adamw { … }`, or `muon { … }` with the AdamW it leaves
//! the rest to; the schedules' shapes.

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Block, ExprKind};

impl<'a> Checker<'a> {
    /// `optimizer = adamw { … }` (the default), for stages that take no other.
    pub(super) fn check_adamw(&mut self, outer: &mut Fields<'a>) -> Option<AdamW> {
        self.optimizer_of(outer, &["adamw"])
    }

    /// `optimizer = adamw { … }` or `muon { … }`: the stages that train a transformer.
    pub(super) fn check_optimizer(&mut self, outer: &mut Fields<'a>) -> Option<AdamW> {
        self.optimizer_of(outer, &["adamw", "muon"])
    }

    fn optimizer_of(&mut self, outer: &mut Fields<'a>, kinds: &[&'static str]) -> Option<AdamW> {
        let Some(field) = outer.field("optimizer") else { return self.adamw_keys(None, &outer.scope.clone(), outer.at) };
        let (kind, path, _, block) = self.ctor(&field.value, "optimizer", kinds)?;
        let at = Checker::span_of_path(path);
        if kind == "muon" {
            return self.muon_keys(block, &outer.scope.clone(), at);
        }
        self.adamw_keys(block, &outer.scope.clone(), at)
    }

    fn adamw_keys(&mut self, block: Option<&'a Block>, scope: &super::eval::Scope<'a>, at: Span) -> Option<AdamW> {
        let mut f = Fields::new(block, scope, "adamw", at);
        let lr = f.positive(self, "lr", Some(1e-3));
        let betas = self.betas(&mut f);
        let eps = f.positive(self, "eps", Some(1e-8));
        let wd = f.ranged(self, "weight_decay", Some(0.0), 0.0, false, f64::INFINITY, true);
        let ratio = f.optional(self, "loraplus_lr_ratio", |f, ck| f.ranged(ck, "loraplus_lr_ratio", None, 0.0, true, 1e6, false));
        f.finish(self);
        Some(AdamW { lr: lr?, betas: betas?, eps: eps?, weight_decay: wd?, muon: None, loraplus_lr_ratio: ratio? })
    }

    /// `muon { lr, momentum, nesterov, weight_decay, ns_steps, adjust_lr, adamw = adamw { … } }`,
    /// torch.optim.Muon's keys and defaults; `adamw` trains what Muon does not take.
    fn muon_keys(&mut self, block: Option<&'a Block>, scope: &super::eval::Scope<'a>, at: Span) -> Option<AdamW> {
        let mut f = Fields::new(block, scope, "muon", at);
        let lr = f.positive(self, "lr", Some(1e-3));
        let momentum = f.ranged(self, "momentum", Some(0.95), 0.0, false, 1.0, true);
        let nesterov = f.bool(self, "nesterov", true);
        let wd = f.ranged(self, "weight_decay", Some(0.1), 0.0, false, f64::INFINITY, true);
        let ns_steps = f.size(self, "ns_steps", Some(5));
        let adjust = f.sym(self, "adjust_lr", &["original", "match_rms_adamw"], Some("original"));
        let adamw = match f.field("adamw") {
            Some(field) => {
                let scope = f.scope.clone();
                self.ctor(&field.value, "adamw", &["adamw"]).and_then(|(_, path, _, block)| self.adamw_keys(block, &scope, Checker::span_of_path(path)))
            }
            None => self.adamw_keys(None, &f.scope.clone(), at),
        };
        f.finish(self);
        let adjust_lr = if adjust? == "match_rms_adamw" { MuonLr::MatchRmsAdamw } else { MuonLr::Original };
        let muon = Muon { lr: lr?, momentum: momentum?, nesterov: nesterov?, weight_decay: wd?, ns_steps: ns_steps?, adjust_lr };
        Some(AdamW { muon: Some(muon), ..adamw? })
    }

    /// Muon needs each matrix it updates whole on one process, and trains a block's matrices:
    /// E0257 for it beside `shard_optimizer`, `expert_parallel` or LoRA adapters (`at` is the
    /// stage's `optimizer`).
    pub(super) fn muon_fits(&mut self, spec: &StageSpec, at: Span) {
        let (optimizer, conflict) = match &spec.kind {
            StageKind::Train(t) => (&t.optimizer, if t.shard_optimizer { Some("`shard_optimizer` keeps a slice of each process's moments") } else if t.expert_parallel > 1 { Some("`expert_parallel` divides the experts' matrices") } else { None }),
            kind => {
                let Some(opt) = kind.optim() else { return };
                (&opt.optimizer, (kind.adapter().is_some() || kind.reward_adapter()).then_some("LoRA trains only adapters, which Muon leaves to AdamW"))
            }
        };
        if let (Some(_), Some(why)) = (&optimizer.muon, conflict) {
            self.error(Diagnostic::error(Code::E0257, at, format!("stage `{}` cannot take `optimizer = muon`: {why}", spec.name))
                .with_hint("Muon orthogonalises each block matrix's whole update on one process: use `optimizer = adamw { … }` here, or drop the other option"));
        }
    }

    /// LoRA+ speeds up adapters: E0262 on a stage that trains none (`at`: its `optimizer`).
    pub(super) fn loraplus_fits(&mut self, spec: &StageSpec, at: Span) {
        let optimizer = match &spec.kind {
            StageKind::Mixture(m) => Some(&m.optimizer),
            StageKind::Isoflop(i) => Some(&i.train.optimizer),
            kind => kind.optimizer(),
        };
        let adapter = spec.kind.adapter().is_some() || spec.kind.reward_adapter();
        if optimizer.is_some_and(|o| o.loraplus_lr_ratio.is_some()) && !adapter {
            self.error(Diagnostic::error(Code::E0262, at, format!("stage `{}` takes `loraplus_lr_ratio`, but trains no LoRA adapter: LoRA+ speeds up the adapters' B matrices", spec.name))
                .with_hint("add `adapter = lora { … }` to the stage, or drop `loraplus_lr_ratio`"));
        }
    }

    fn betas(&mut self, f: &mut Fields<'a>) -> Option<(f64, f64)> {
        let Some(field) = f.field("betas") else { return Some((0.9, 0.999)) };
        // A pair, or the list YAML writes for one (`betas: [0.9, 0.95]`).
        let (ExprKind::Tuple(items) | ExprKind::List(items)) = &field.value.kind else {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`betas` expects a pair, found {}", super::eval::describe(&field.value))).with_hint("write `betas = (0.9, 0.95)`"));
            return None;
        };
        if items.len() != 2 {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`betas` expects two numbers, found {}", items.len())).with_hint("write `betas = (0.9, 0.95)`"));
            return None;
        }
        let scope = f.scope.clone();
        let b1 = self.eval_num(&items[0], &scope);
        let b2 = self.eval_num(&items[1], &scope);
        for (b, e) in [(b1, &items[0]), (b2, &items[1])] {
            if let Some(v) = b {
                if !(0.0..1.0).contains(&v) {
                    self.error(Diagnostic::error(Code::E0202, e.span, format!("beta = {v} is out of range")).with_hint("betas must lie in [0, 1)"));
                    return None;
                }
            }
        }
        Some((b1?, b2?))
    }

    pub(super) fn check_schedule(&mut self, outer: &mut Fields<'a>) -> Option<Schedule> {
        let Some(field) = outer.field("schedule") else { return Some(Schedule::Constant { warmup: 0 }) };
        let (kind, path, _, block) = self.ctor(&field.value, "schedule", &["constant", "cosine", "linear", "wsd"])?;
        let mut f = Fields::new(block, &outer.scope, kind, Checker::span_of_path(path));
        let warmup = f.int(self, "warmup", Some(0), Min::Zero);
        let mut min_lr = || f.ranged(self, "min_lr", Some(0.0), 0.0, false, f64::INFINITY, true);
        let sched = match kind {
            "cosine" => Some(Schedule::Cosine { warmup: warmup?, min_lr: min_lr()? }),
            "linear" => Some(Schedule::Linear { warmup: warmup?, min_lr: min_lr()? }),
            "wsd" => {
                let min_lr = min_lr();
                let decay = f.ranged(self, "decay", Some(0.2), 0.0, true, 1.0, false);
                let shape = f.sym(self, "shape", &["linear", "sqrt", "cosine"], Some("linear")).map(|s| match s {
                    "sqrt" => DecayShape::Sqrt,
                    "cosine" => DecayShape::Cosine,
                    _ => DecayShape::Linear,
                });
                Some(Schedule::Wsd { warmup: warmup?, decay: decay?, min_lr: min_lr?, shape: shape? })
            }
            _ => Some(Schedule::Constant { warmup: warmup? }),
        };
        f.finish(self);
        sched
    }
}
