//! The losses of preference and RL stages, on tensors. Each is tested against hand-computed
//! values (tests/posttrain.rs).

use tch::{Kind, Tensor};

/// Bradley–Terry: −log σ(r_chosen − r_rejected), averaged over pairs.
pub fn bradley_terry(chosen: &Tensor, rejected: &Tensor) -> Tensor {
    -(chosen - rejected).log_sigmoid().mean(Kind::Float)
}

/// DPO (Rafailov et al. 2023): −log σ(β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]),
/// averaged over pairs; arguments are sequence log-probabilities (B).
pub fn dpo(pi_c: &Tensor, pi_r: &Tensor, ref_c: &Tensor, ref_r: &Tensor, beta: f64) -> Tensor {
    -(((pi_c - ref_c) - (pi_r - ref_r)) * beta).log_sigmoid().mean(Kind::Float)
}

/// Mean of `x` over positions where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// PPO's clipped surrogate (Schulman et al. 2017), as a loss to minimise:
/// mean over response tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old).
/// Also returns the share of tokens where the clipped term was taken.
pub fn ppo_clip(logp: &Tensor, old_logp: &Tensor, adv: &Tensor, mask: &Tensor, eps: f64) -> (Tensor, Tensor) {
    let ratio = (logp - old_logp).exp();
    let unclipped = -adv * &ratio;
    let clipped = -adv * ratio.clamp(1.0 - eps, 1.0 + eps);
    let loss = masked_mean(&unclipped.maximum(&clipped), mask);
    let frac = masked_mean(&clipped.gt_tensor(&unclipped).to_kind(Kind::Float), mask);
    (loss, frac)
}

/// The clipped value loss: ½·mean max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²).
pub fn value_loss(v: &Tensor, old_v: &Tensor, returns: &Tensor, mask: &Tensor, eps: f64) -> Tensor {
    let clipped = old_v + (v - old_v).clamp(-eps, eps);
    let a = (v - returns).square();
    let b = (clipped - returns).square();
    masked_mean(&a.maximum(&b), mask) * 0.5
}

/// Entropy of the next-token distribution at every position, (B, T, V) → (B, T).
pub fn entropy(logits: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float)
}
