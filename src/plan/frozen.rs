//! What a post-training stage holds and never trains — a LoRA base, a reference, a reward model —
//! and what `precision = bf16` saves on it: such weights are held in bf16 only (2 bytes, not
//! float32's 4; see run/model/casts.rs), but routers', which compute in float32.

use crate::arith::lower_model;
use crate::recipe::{Precision, Recipe, StageKind, StageSpec};

/// The architectures stage `s` holds frozen, one entry a copy: a LoRA stage's base (its own
/// reference too), a full stage's reference, and a reward model it scores with.
fn frozen_arches<'r>(r: &'r Recipe, s: &'r StageSpec) -> Vec<&'r str> {
    let rm = |stage: Option<&str>| match stage.and_then(|st| r.stage(st)).map(|st| &st.kind) {
        Some(StageKind::RewardModel(m)) => Some(m.model.arch.as_str()),
        _ => None,
    };
    match &s.kind {
        StageKind::Finetune(f) => f.lora.as_ref().map(|_| f.model.arch.as_str()).into_iter().collect(),
        StageKind::RewardModel(m) => m.lora.as_ref().map(|_| m.model.arch.as_str()).into_iter().collect(),
        StageKind::Ppo(p) => [Some(p.policy.arch.as_str()), rm(Some(&p.reward))].into_iter().flatten().collect(),
        StageKind::Dpo(d) => (d.lora.is_some() || d.loss.needs_reference()).then_some(d.policy.arch.as_str()).into_iter().collect(),
        StageKind::Distill(k) => k.lora.as_ref().map(|_| k.student.arch.as_str()).into_iter().chain([k.teacher.arch.as_str()]).collect(),
        StageKind::OnlineDpo(o) => std::iter::once(o.policy.arch.as_str()).chain(o.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        StageKind::BestOfN(b) => b.lora.as_ref().map(|_| b.policy.arch.as_str()).into_iter().chain(b.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        StageKind::Grpo(g) => (g.lora.is_some() || g.beta > 0.0).then_some(g.policy.arch.as_str()).into_iter().chain(g.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        _ => vec![],
    }
}

/// Bytes a bf16 stage saves on its frozen weights against float32 (0 for an fp32 stage).
pub fn bf16_saving(r: &Recipe, s: &StageSpec) -> u64 {
    let precision = match &s.kind {
        StageKind::Finetune(f) => f.opt.precision,
        StageKind::RewardModel(m) => m.opt.precision,
        StageKind::Ppo(p) => p.opt.precision,
        StageKind::Dpo(d) => d.opt.precision,
        StageKind::Grpo(g) => g.opt.precision,
        StageKind::Distill(k) => k.opt.precision,
        StageKind::OnlineDpo(o) => o.opt.precision,
        StageKind::BestOfN(b) => b.opt.precision,
        _ => Precision::Fp32,
    };
    if precision != Precision::Bf16 {
        return 0;
    }
    let saved = |arch: &str| {
        let Some(spec) = r.model(arch) else { return 0 };
        let params = lower_model(spec).params();
        let bf16: u64 = params.iter().filter(|p| !p.name.contains(".router.")).map(|p| p.numel()).sum();
        2 * bf16
    };
    frozen_arches(r, s).into_iter().map(saved).sum()
}
