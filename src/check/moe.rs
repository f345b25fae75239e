//! `ffn = moe { experts, every | layers, expert = mlp {…}, shared, shared_hidden, shared_gate,
//! expert_dropout, router = … }`
//! and its routers. Invalid combinations (k > experts, an option of another router, placement
//! past the last block, …) are diagnostics with spans, before anything runs.

use super::eval::Scope;
use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{MoeSpec, RouterSpec};
use crate::syntax::ast::Field;

pub const ROUTERS: &[&str] = &["softmax", "noisy_topk", "switch", "topk", "expert_choice"];

/// Which router owns each option, for "that option belongs to another router" diagnostics.
const OPTIONS: &[(&str, &[&str])] = &[
    ("k", &["noisy_topk", "topk"]),
    ("importance_loss", &["noisy_topk"]),
    ("load_loss", &["noisy_topk"]),
    ("capacity_factor", &["switch", "expert_choice"]),
    ("eval_capacity_factor", &["switch"]),
    ("balance_loss", &["switch", "topk"]),
    ("z_loss", &["switch", "topk"]),
    ("jitter", &["switch"]),
    ("normalize", &["topk"]),
];

impl<'a> Checker<'a> {
    pub fn check_moe(&mut self, field: &'a Field, outer: &Scope<'a>, d_model: Option<usize>, layers: Option<usize>) -> Option<MoeSpec> {
        let (_, path, _, block) = self.ctor(&field.value, "feed-forward layer", &["mlp", "moe"])?;
        let mut f = Fields::new(block, outer, "moe", Checker::span_of_path(path));
        let experts = f.size(self, "experts", None);
        let expert = match f.field("expert") {
            Some(e) => self.check_mlp(&e.value, &f.scope, d_model, &["mlp"]),
            None => d_model.map(|d| crate::recipe::MlpSpec { hidden: 4 * d, act: crate::recipe::Activation::Gelu }),
        };
        let shared = f.int(self, "shared", Some(0), Min::Zero);
        // Qwen2-MoE's shared expert: its own width, its output behind a sigmoid gate.
        let shared_hidden = f.field("shared_hidden").map(|_| f.size(self, "shared_hidden", None));
        let shared_gate = f.bool(self, "shared_gate", false);
        let expert_dropout = f.ranged(self, "expert_dropout", Some(0.0), 0.0, false, 1.0, true);
        let placement = self.moe_placement(&mut f, layers);
        let router = match f.field("router") {
            Some(r) => self.check_router(r, &f.scope, experts),
            None => Some(RouterSpec::SWITCH),
        };
        f.finish(self);
        Some(MoeSpec {
            experts: experts?,
            expert: expert?,
            layers: placement?,
            shared: shared? as usize,
            shared_hidden: shared_hidden.map(|h| h.ok_or(())).transpose().ok()?,
            shared_gate: shared_gate?,
            expert_dropout: expert_dropout?,
            router: router?,
        })
    }

    /// `every = N` (blocks N-1, 2N-1, …: Switch's "every other FFN" is every = 2) or `layers = [i, …]`.
    fn moe_placement(&mut self, f: &mut Fields<'a>, layers: Option<usize>) -> Option<Vec<usize>> {
        let every_field = f.field("every");
        let list_field = f.field("layers");
        if let (Some(_), Some(l)) = (every_field, list_field) {
            self.error(Diagnostic::error(Code::E0107, l.key.span, "give `every` or `layers`, not both")
                .with_hint("`every = 2` puts a mixture in every second block; `layers = [1, 3]` names the blocks"));
            return None;
        }
        let n = layers?;
        if let Some(l) = list_field {
            return self.block_list(l, &f.scope.clone(), n, "MoE placement");
        }
        let every = f.int(self, "every", Some(1), Min::One)? as usize;
        if every > n {
            self.error(Diagnostic::error(Code::E0231, f.value_span("every"), format!("every = {every} places no mixture in a model of {n} blocks"))
                .with_hint(format!("use every ≤ {n}")));
            return None;
        }
        Some((0..n).filter(|i| (i + 1) % every == 0).collect())
    }

    fn check_router(&mut self, field: &'a Field, scope: &Scope<'a>, experts: Option<usize>) -> Option<RouterSpec> {
        let (kind, path, _, block) = self.ctor(&field.value, "router", ROUTERS)?;
        let mut f = Fields::new(block, scope, format!("{kind} router"), Checker::span_of_path(path));
        // Options that belong to another router get a diagnostic of their own.
        if let Some(b) = block {
            for fl in b.fields() {
                if let Some((opt, owners)) = OPTIONS.iter().find(|(o, _)| *o == fl.key.name) {
                    if !owners.contains(&kind) {
                        self.error(Diagnostic::error(Code::E0230, fl.key.span, format!("the {kind} router has no `{opt}`"))
                            .with_hint(format!("`{opt}` is an option of {}", owners.join(" and "))));
                        f.field(opt);
                    }
                }
            }
        }
        let weight = |ck: &mut Checker<'a>, f: &mut Fields<'a>, key: &'static str, d: f64| f.ranged(ck, key, Some(d), 0.0, false, f64::INFINITY, true);
        let spec = match kind {
            "softmax" => Some(RouterSpec::Softmax),
            "noisy_topk" | "topk" => {
                let k = f.size(self, "k", Some(2));
                if let (Some(k), Some(e)) = (k, experts) {
                    if k > e {
                        self.error(Diagnostic::error(Code::E0232, f.value_span("k"), format!("k = {k} exceeds the {e} experts"))
                            .with_hint(format!("each token can be routed to at most {e} experts")));
                    }
                }
                if kind == "noisy_topk" {
                    let imp = weight(self, &mut f, "importance_loss", 0.1);
                    let load = weight(self, &mut f, "load_loss", 0.1);
                    Some(RouterSpec::NoisyTopk { k: k?, importance_loss: imp?, load_loss: load? })
                } else {
                    let normalize = f.bool(self, "normalize", true);
                    let bal = weight(self, &mut f, "balance_loss", 0.01);
                    let z = weight(self, &mut f, "z_loss", 0.0);
                    Some(RouterSpec::Topk { k: k?, normalize: normalize?, balance_loss: bal?, z_loss: z? })
                }
            }
            "switch" => {
                let RouterSpec::Switch { capacity_factor, eval_capacity_factor, balance_loss, z_loss, jitter } = RouterSpec::SWITCH else { unreachable!("SWITCH is a Switch router") };
                let cf = f.positive(self, "capacity_factor", Some(capacity_factor));
                let ecf = f.positive(self, "eval_capacity_factor", Some(eval_capacity_factor));
                let bal = weight(self, &mut f, "balance_loss", balance_loss);
                let z = weight(self, &mut f, "z_loss", z_loss);
                let jitter = f.ranged(self, "jitter", Some(jitter), 0.0, false, 1.0, true);
                Some(RouterSpec::Switch { capacity_factor: cf?, eval_capacity_factor: ecf?, balance_loss: bal?, z_loss: z?, jitter: jitter? })
            }
            _ => {
                let cf = f.positive(self, "capacity_factor", Some(2.0));
                if let (Some(c), Some(e)) = (cf, experts) {
                    if c > e as f64 {
                        self.error(Diagnostic::error(Code::E0232, f.value_span("capacity_factor"), format!("capacity_factor {c} exceeds the {e} experts"))
                            .with_hint("a token cannot be chosen by more experts than exist"));
                    }
                }
                Some(RouterSpec::ExpertChoice { capacity_factor: cf? })
            }
        };
        f.finish(self);
        spec
    }
}
