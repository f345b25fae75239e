//! What a post-training stage holds and never trains — a LoRA base, a reference, a reward model —
//! and what `precision = bf16` saves on it: such weights are held in bf16 only (2 bytes, not
//! float32's 4; see run/model/casts.rs), but routers', which compute in float32. A QLoRA base's
//! projections are held in NF4 (run/model/nf4.rs), 0.5625 bytes an element.

use crate::arith::lower_model;
use crate::recipe::{Nf4Base, Precision, Recipe, StageKind, StageSpec};

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
        StageKind::Dpo(d) => (d.lora.is_some() || d.holds_reference()).then_some(d.policy.arch.as_str()).into_iter().collect(),
        StageKind::Distill(k) => k.lora.as_ref().map(|_| k.student.arch.as_str()).into_iter().chain([k.teacher.arch.as_str()]).collect(),
        StageKind::OnlineDpo(o) => std::iter::once(o.policy.arch.as_str()).chain(o.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        StageKind::BestOfN(b) => b.lora.as_ref().map(|_| b.policy.arch.as_str()).into_iter().chain(b.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        StageKind::Grpo(g) => (g.lora.is_some() || g.beta > 0.0).then_some(g.policy.arch.as_str()).into_iter().chain(g.reward.model_stages().into_iter().filter_map(|s| rm(Some(s)))).collect(),
        _ => vec![],
    }
}

fn precision(s: &StageSpec) -> Precision {
    s.kind.optim().map_or(Precision::Fp32, |o| o.precision)
}

/// Bytes a bf16 stage saves on its frozen weights against float32 (0 for an fp32 stage).
pub fn bf16_saving(r: &Recipe, s: &StageSpec) -> u64 {
    if precision(s) != Precision::Bf16 {
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

/// The element counts of the linears a stage holds as NF4 (QLoRA: its LoRA base's attention
/// and MLP projections, `lora { quantize_base = nf4 }`), and how; none otherwise.
fn nf4_linears(r: &Recipe, s: &StageSpec) -> (Vec<u64>, Option<Nf4Base>) {
    let own = s.kind.adapter().or(match &s.kind {
        StageKind::RewardModel(m) => m.lora.as_ref().map(|l| (&m.model, l)),
        _ => None,
    });
    match own.and_then(|(m, l)| Some((r.model(&m.arch)?, l.nf4_base()?))) {
        Some((spec, base)) => (crate::arith::lora::lora_linears(spec).iter().map(|l| (l.out * l.inp) as u64).collect(), Some(base)),
        None => (vec![], None),
    }
}

/// Bytes an NF4 weight of `n` elements holds: half a byte an element in blocks of 64, and each
/// block's float32 scale; with double quantization each scale's byte, their mean and, for each
/// 256 of them, their float32 scale (the codes' tables are the model's, once).
pub fn nf4_bytes(n: u64, base: Nf4Base) -> u64 {
    let blocks = n.div_ceil(64);
    if base.double_quant {
        33 * blocks + 4 + 4 * blocks.div_ceil(256)
    } else {
        36 * blocks
    }
}

/// Bytes an NF4 base saves against its linears held as the stage's precision holds them (2
/// bytes under bf16, after `bf16_saving`; 4 under fp32).
pub fn nf4_saving(r: &Recipe, s: &StageSpec) -> u64 {
    let held = if precision(s) == Precision::Bf16 { 2 } else { 4 };
    let (linears, base) = nf4_linears(r, s);
    base.map_or(0, |base| linears.into_iter().map(|n| (held * n).saturating_sub(nf4_bytes(n, base))).sum())
}

/// What an NF4 base holds beside its codes while a pass reads it: one projection dequantized
/// at a time, in float32 and (under bf16) its cast.
pub fn nf4_scratch(r: &Recipe, s: &StageSpec) -> u64 {
    let per = if precision(s) == Precision::Bf16 { 6 } else { 4 };
    nf4_linears(r, s).0.into_iter().max().map_or(0, |n| per * n)
}

/// `bytes` counted with every frozen weight in float32, as the stage holds them: in 2 bytes
/// under bf16, a QLoRA base's projections in NF4 and one of them dequantized at a time.
pub fn as_held(r: &Recipe, s: &StageSpec, bytes: u64) -> u64 {
    bytes.saturating_sub(bf16_saving(r, s) + nf4_saving(r, s)).saturating_add(nf4_scratch(r, s))
}
