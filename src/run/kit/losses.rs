//! The losses of preference and RL stages, on tensors. Each is tested against hand-computed
//! values (tests/posttrain.rs).

use tch::{Kind, Tensor};

use crate::recipe::{DpoLoss, FDivergence, GrpoLoss, RewardScale};

/// Bradley–Terry: −log σ(r_chosen − r_rejected − m), averaged over pairs, m each pair's margin
/// (0 without one; Llama 2's margin loss, TRL's RewardTrainer's with a `margin` column). A
/// reward stage's `center_rewards = c` adds c·mean((r_chosen + r_rejected)²).
pub fn bradley_terry(chosen: &Tensor, rejected: &Tensor, margin: &Tensor) -> Tensor {
    -(chosen - rejected - margin).log_sigmoid().mean(Kind::Float)
}

/// A preference loss's settings: β, which loss, label smoothing ε, SimPO's γ.
pub struct DpoTerms {
    pub beta: f64,
    pub loss: DpoLoss,
    pub smoothing: f64,
    pub gamma: f64,
    /// KTO's reference point z for this step (see `DpoLoss::Kto`); unread by the others.
    pub kl: f64,
    /// KTO's weights of desirable and undesirable examples; unread by the others.
    pub weights: (f64, f64),
    /// DiscoPOP's temperature τ; unread by the others.
    pub tau: f64,
    /// The f-divergence h is taken under (f-DPO; reverse KL is DPO's).
    pub divergence: FDivergence,
}

/// DPO (Rafailov et al. 2023) and its variants on h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) −
/// log π_ref(y_r)), averaged over pairs; arguments are sequence log-probabilities (B), for IPO,
/// SimPO and ORPO averaged over each response's tokens (the reference-free two take zeros for the
/// reference's). With s_ε(x) = −(1−ε)·log σ(x) − ε·log σ(−x) — sigmoid: s_ε(βh) (ε = 0 is DPO);
/// robust: (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε); IPO: (h − 1/(2β))²; hinge:
/// max(0, 1 − βh); SimPO: s_ε(βh − γ); ORPO's preference term: −β·log σ(log odds(y_c) − log
/// odds(y_r)), log odds(y) = a − log(1 − eᵃ) of the average log-probability a (its NLL term is the
/// stage's); KTO: (w_d·(1 − σ(β(r_c − z))) + w_u·(1 − σ(β(z − r_r)))) / 2, r = log π − log π_ref
/// of each response, z = `t.kl`; APO-zero: w_d·(1 − σ(β·r_c)) + w_u·σ(β·r_r); APO-down: σ(β·r_c) + 1
/// − σ(βh); NCA: −log σ(β·r_c) − ½·log σ(−β·r_c) − ½·log σ(−β·r_r); SPPO (hard): (r_c − 1/(2β))² +
/// (r_r + 1/(2β))²; EXO: σ(βh)·(log σ(βh) − log(1 − ε)) + σ(−βh)·(log σ(−βh) − log ε), ε = 1e-3
/// when 0; DiscoPOP: (1 − m)·(−log σ(βh)) + m·e^(−βh), m = σ(βh/τ); BCO (pairs): −log σ(β·r_c) −
/// log σ(−β·r_r); AOT: s_ε(β·(sort(log π(y_c) − log π(y_r)) − sort(log π_ref(y_c) − log
/// π_ref(y_r)))), sorted over the batch's pairs; AOT unpaired: s_ε(β·(sort(r_c) − sort(r_r))) —
/// TRL's `loss_type`s and trainers of the same names. Under f-DPO (`t.divergence`) h is the
/// chosen and rejected responses' difference in that divergence (`FDivergence`).
pub fn dpo(pi_c: &Tensor, pi_r: &Tensor, ref_c: &Tensor, ref_r: &Tensor, t: &DpoTerms) -> Tensor {
    dpo_per_pair(pi_c, pi_r, ref_c, ref_r, t).mean(Kind::Float)
}

/// `dpo`'s loss of each pair (B), before the mean.
pub fn dpo_per_pair(pi_c: &Tensor, pi_r: &Tensor, ref_c: &Tensor, ref_r: &Tensor, t: &DpoTerms) -> Tensor {
    let h = match t.divergence {
        FDivergence::ReverseKl => (pi_c - ref_c) - (pi_r - ref_r),
        FDivergence::JsDivergence => {
            let (c, r) = (pi_c - ref_c, pi_r - ref_r);
            (&c - &r) - (c.softplus() - r.softplus())
        }
        FDivergence::AlphaDivergence { coef } => (capped_exp(&((pi_r - ref_r) * -coef)) - capped_exp(&((pi_c - ref_c) * -coef))) / coef,
    };
    let (beta, e) = (t.beta, t.smoothing);
    let smoothed = |x: Tensor| -x.log_sigmoid() * (1.0 - e) - (-x).log_sigmoid() * e;
    match t.loss {
        DpoLoss::Sigmoid => smoothed(&h * beta),
        DpoLoss::Robust => (-(&h * beta).log_sigmoid() * (1.0 - e) + (&h * -beta).log_sigmoid() * e) / (1.0 - 2.0 * e),
        DpoLoss::Ipo => (h - 1.0 / (2.0 * beta)).square(),
        DpoLoss::Hinge => (h * -beta + 1.0).relu(),
        DpoLoss::Simpo => smoothed(&h * beta - t.gamma),
        DpoLoss::Orpo => -log_odds_ratio(pi_c, pi_r) * beta,
        DpoLoss::Kto => ((((pi_c - ref_c) - t.kl) * beta).sigmoid().neg() + 1.0) * t.weights.0 / 2.0 + ((((pi_r - ref_r) - t.kl) * -beta).sigmoid().neg() + 1.0) * t.weights.1 / 2.0,
        DpoLoss::ApoZero => ((pi_c - ref_c) * beta).sigmoid().neg() * t.weights.0 + t.weights.0 + ((pi_r - ref_r) * beta).sigmoid() * t.weights.1,
        DpoLoss::ApoDown => ((pi_c - ref_c) * beta).sigmoid() - (h * beta).sigmoid() + 1.0,
        DpoLoss::NcaPair => {
            let (rc, rr) = ((pi_c - ref_c) * beta, (pi_r - ref_r) * beta);
            -rc.log_sigmoid() - (-&rc).log_sigmoid() * 0.5 - (-rr).log_sigmoid() * 0.5
        }
        DpoLoss::SppoHard => ((pi_c - ref_c) - 0.5 / beta).square() + ((pi_r - ref_r) + 0.5 / beta).square(),
        DpoLoss::ExoPair => {
            let e = if e == 0.0 { 1e-3 } else { e };
            let x = &h * beta;
            x.sigmoid() * (x.log_sigmoid() - (1.0 - e).ln()) + (-&x).sigmoid() * ((-&x).log_sigmoid() - e.ln())
        }
        DpoLoss::Discopop => {
            let x = &h * beta;
            let m = (&x / t.tau).sigmoid();
            -x.log_sigmoid() * (-&m + 1.0) + (-&x).exp() * m
        }
        DpoLoss::BcoPair => -((pi_c - ref_c) * beta).log_sigmoid() - ((pi_r - ref_r) * -beta).log_sigmoid(),
        DpoLoss::Aot => smoothed((sorted(&(pi_c - pi_r)) - sorted(&(ref_c - ref_r))) * beta),
        DpoLoss::AotUnpaired => smoothed((sorted(&(pi_c - ref_c)) - sorted(&(pi_r - ref_r))) * beta),
    }
}

/// WPO's weight of each row (B), as TRL computes it (`use_weighting`): exp of the mean over the
/// response tokens (`mask`) of log p(y_t) − log Σ_v p(v)², the token's log-probability aligned
/// by the distribution's own sharpness (log Σ p² = logsumexp(2z) − 2·logsumexp(z) of the logits
/// z), without a graph and a few rows of logits at a time. A pair's loss is then multiplied by its
/// chosen and rejected rows' weights.
pub fn wpo_weights(logits: &Tensor, token_logp: &Tensor, mask: &Tensor) -> Tensor {
    let denominator = |z: &Tensor| {
        let z = z.to_kind(Kind::Float);
        (&z * 2.0).logsumexp([-1].as_slice(), false) - z.logsumexp([-1].as_slice(), false) * 2.0
    };
    let aligned = (token_logp - in_row_chunks(logits, 1 << 24, denominator)) * mask;
    tch::no_grad(|| (aligned.sum_dim_intlist(-1, false, Kind::Float) / mask.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0)).exp())
}

/// e^x with x capped below the log of its kind's largest value, truncated to four decimals (TRL's
/// `cap_exp`), so that the α-divergence of a far-off ratio stays finite.
fn capped_exp(x: &Tensor) -> Tensor {
    let largest = if x.kind() == Kind::Double { f64::MAX.ln() } else { (f32::MAX as f64).ln() };
    x.clamp_max((largest * 1e4).floor() / 1e4).exp()
}

/// The values of `x` (B) in ascending order (autograd follows each to its place).
fn sorted(x: &Tensor) -> Tensor {
    x.sort(0, false).0
}

/// A loss on judged completions, unpaired (TRL's KTOTrainer): the mean over rows of a desirable
/// completion's loss where `desirable` is 1 and an undesirable one's where it is 0, r = log π −
/// log π_ref of the completion. KTO (Ethayarajh et al. 2024): w_d·(1 − σ(β(r − z))) and
/// w_u·(1 − σ(β(z − r))), z = `t.kl` the reference point; under `DpoLoss::ApoZero` (TRL's
/// `apo_zero_unpaired`) w_d·(1 − σ(βr)) and w_u·σ(βr), anchored at the reference itself. (The
/// checker admits no other loss on feedback.)
pub fn kto(pi: &Tensor, reference: &Tensor, desirable: &Tensor, t: &DpoTerms) -> Tensor {
    let z = if t.loss == DpoLoss::ApoZero { 0.0 } else { t.kl };
    let r = (pi - reference) - z;
    let good = ((&r * t.beta).sigmoid().neg() + 1.0) * desirable * t.weights.0;
    // 1 − σ(β(z − r)) = σ(β(r − z)): the same for both losses once z is theirs.
    let bad = (&r * t.beta).sigmoid() * (desirable.neg() + 1.0) * t.weights.1;
    (good + bad).mean(Kind::Float)
}

/// ORPO's log σ(log odds(y_c) − log odds(y_r)) per pair, from average log-probabilities (kept
/// below 0 so that a response already certain has a finite log(1 − p)).
pub fn log_odds_ratio(avg_c: &Tensor, avg_r: &Tensor) -> Tensor {
    let odds = |a: &Tensor| {
        let a = a.clamp_max(-1e-6);
        &a - (-a.exp()).log1p()
    };
    (odds(avg_c) - odds(avg_r)).log_sigmoid()
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

/// The generalized Jensen–Shannon divergence between the teacher's and the student's next-token
/// distributions at every position, (B, T, V) logits each → (B, T), as TRL's GKDTrainer computes
/// it (`generalized_jsd_loss`, temperature 1): β = 0 is KL(T ‖ S), β = 1 is KL(S ‖ T), and between
/// them β·KL(T ‖ M) + (1 − β)·KL(S ‖ M) with the mixture M = β·T + (1 − β)·S. Only the student's
/// logits carry a graph.
pub fn generalized_jsd(student: &Tensor, teacher: &Tensor, beta: f64) -> Tensor {
    let s = student.log_softmax(-1, Kind::Float);
    let t = tch::no_grad(|| teacher.log_softmax(-1, Kind::Float));
    let kl = |p: &Tensor, q: &Tensor| (p.exp() * (p - q)).sum_dim_intlist(-1, false, Kind::Float);
    if beta == 0.0 {
        return kl(&t, &s);
    }
    if beta == 1.0 {
        return kl(&s, &t);
    }
    let m = (&s + (1.0 - beta).ln()).logaddexp(&(&t + beta.ln()));
    kl(&t, &m) * beta + kl(&s, &m) * (1.0 - beta)
}

/// Entropy of the next-token distribution at every position, (B, T, V) → (B, T).
pub fn entropy(logits: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float)
}

/// `entropy` without a graph, a few rows at a time: what GRPO logs and its entropy quantile reads,
/// holding one chunk's temporaries (three times its logits) rather than the whole batch's (as TRL
/// computes entropies in chunks: with a large vocabulary they outweigh the activations).
pub fn entropy_in_chunks(logits: &Tensor) -> Tensor {
    entropy_in_chunks_of(logits, 1 << 24)
}

/// `entropy_in_chunks` with chunks of at most `elements` logits (at least a row).
fn entropy_in_chunks_of(logits: &Tensor, elements: i64) -> Tensor {
    in_row_chunks(logits, elements, entropy)
}

/// `f` of `logits` without a graph, over chunks of whole rows of at most `elements` logits (at
/// least a row), joined: a chunk's temporaries at a time rather than the whole batch's.
fn in_row_chunks(logits: &Tensor, elements: i64, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    tch::no_grad(|| {
        let b = logits.size()[0].max(1);
        let per_row = (logits.numel() as i64 / b).max(1);
        let rows = (elements / per_row).clamp(1, b);
        Tensor::cat(&logits.split(rows, 0).iter().map(f).collect::<Vec<_>>(), 0)
    })
}

/// GRPO's advantages for rewards in groups of `g` consecutive completions: each reward minus its
/// group's mean, divided by a standard deviation (n − 1, as TRL computes it) + 1e-4: the group's
/// (DeepSeekMath), `batch_std` (the whole step's rewards', computed by the caller over every
/// process), or none (Dr. GRPO). A group whose rewards are all equal gives zeros: no learning signal.
pub fn group_advantages(rewards: &[f64], g: usize, scale: RewardScale, batch_std: f64) -> Vec<f64> {
    rewards
        .chunks(g)
        .flat_map(|grp| {
            let mean = grp.iter().sum::<f64>() / grp.len() as f64;
            let by = match scale {
                RewardScale::Group => sample_std(grp, mean) + 1e-4,
                RewardScale::Batch => batch_std + 1e-4,
                RewardScale::None => 1.0,
            };
            grp.iter().map(move |r| (r - mean) / by)
        })
        .collect()
}

/// RLOO's advantages (Ahmadian et al. 2024): each reward less the mean of the other rewards of
/// its group of `g` (at least 2), A_i = r_i − (Σ_group r − r_i)/(g − 1), which is g/(g − 1) times
/// the deviation from the group's mean; every group's advantages sum to zero.
pub fn rloo_advantages(rewards: &[f64], g: usize) -> Vec<f64> {
    assert!(g >= 2, "a leave-one-out baseline needs groups of 2 or more (check refuses smaller)");
    rewards
        .chunks(g)
        .flat_map(|grp| {
            let sum = grp.iter().sum::<f64>();
            grp.iter().map(move |r| r - (sum - r) / (g - 1) as f64)
        })
        .collect()
}

/// Each completion's KL to the reference as RLOO takes it off the reward: the k1 estimate
/// log π_old − log π_ref summed over its tokens (`mask`), one number per row (B, float64).
pub fn sequence_k1(old_logp: &Tensor, ref_logp: &Tensor, mask: &Tensor) -> Tensor {
    tch::no_grad(|| ((old_logp - ref_logp) * mask).sum_dim_intlist(-1, false, Kind::Double))
}

/// RLOO's loss over completions (B, T) with response mask `mask`, as TRL's RLOOTrainer computes
/// it: one ratio per completion, ρ = exp(Σ_t (log π − log π_old)), clipped as one,
/// l = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) (with `delta`, the unclipped ρ capped at δ), the
/// mean over the completions. Returns (loss, share of completions where the clip was taken).
pub fn rloo_loss(logp: &Tensor, old_logp: &Tensor, adv: &Tensor, mask: &Tensor, t: &GrpoTerms) -> (Tensor, Tensor) {
    let ratio = ((logp - old_logp) * mask).sum_dim_intlist(-1, false, Kind::Float).exp(); // (B)
    let unclipped = match t.delta {
        Some(d) => -adv * ratio.clamp_max(d),
        None => -adv * &ratio,
    };
    let clipped = -adv * ratio.clamp(1.0 - t.clip.0, 1.0 + t.clip.1);
    let loss = unclipped.maximum(&clipped).mean(Kind::Float);
    (loss, clipped.gt_tensor(&unclipped).to_kind(Kind::Float).mean(Kind::Float))
}

/// The sample standard deviation (n − 1; 0 for one value) of `xs`, whose mean is `mean`.
pub fn sample_std(xs: &[f64], mean: f64) -> f64 {
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0).max(1.0)).sqrt()
}

/// What GRPO's loss is made of: the clip range, the KL weight, how tokens are averaged, and for
/// `Dapo` this process's share of the step's completion tokens (all of them over the processes).
pub struct GrpoTerms {
    /// ρ is clipped to [1 − clip.0, 1 + clip.1].
    pub clip: (f64, f64),
    pub beta: f64,
    pub norm: GrpoLoss,
    pub max_new: usize,
    pub tokens: f64,
    /// GSPO: one ratio per completion, exp(its tokens' mean log π − log π_old).
    pub sequence: bool,
    /// Two-sided clipping (INTELLECT-2, TRL's `delta`): the unclipped term's ratio capped at δ.
    pub delta: Option<f64>,
}

/// GRPO's loss (Shao et al. 2024) over completions (B, T) with response mask `mask`: per token
/// l = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·k3, with ρ = exp(log π − log π_old), A the
/// completion's advantage (B), and k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1, the
/// non-negative KL estimator DeepSeekMath uses. `Grpo` averages each completion's tokens, then
/// the completions; `DrGrpo` sums each completion's tokens over `max_new` (a constant), then
/// averages; `Dapo` sums every token and divides by `tokens`. With `sequence` (GSPO) ρ is the
/// completion's: exp of the mean of log π − log π_old over its tokens, the same at each of them.
/// With `delta` the unclipped term reads min(ρ, δ); with `keep` (B, T) only the tokens it marks
/// carry the policy term.
/// Returns (loss, share of tokens where the clipped term was taken, mean k3 per token).
/// `Rloo` takes its loss from `rloo_loss` (its KL is in the reward), and returns as its third
/// value the mean k1 per token, log π_old − log π_ref, as TRL's RLOOTrainer logs it.
pub fn grpo_loss(logp: &Tensor, old_logp: &Tensor, ref_logp: Option<&Tensor>, adv: &Tensor, mask: &Tensor, keep: Option<&Tensor>, t: &GrpoTerms) -> (Tensor, Tensor, Tensor) {
    if t.norm == GrpoLoss::Rloo {
        let (loss, frac) = rloo_loss(logp, old_logp, adv, mask, t);
        let k1 = ref_logp.map_or_else(|| mask.zeros_like(), |r| old_logp - r);
        return (loss, frac, masked_mean(&k1, mask));
    }
    let log_ratio = logp - old_logp;
    let ratio = if t.sequence {
        // (B, 1), broadcast over the tokens below.
        ((log_ratio * mask).sum_dim_intlist(-1, true, Kind::Float) / mask.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1.0)).exp()
    } else {
        log_ratio.exp()
    };
    let a = adv.unsqueeze(-1); // (B, 1), broadcast over tokens
    // With `delta`, a ratio above δ counts as δ even where the clipped term is not taken (a
    // negative advantage), so one token far likelier than before cannot drive the step.
    let unclipped = match t.delta {
        Some(d) => -&a * ratio.clamp_max(d),
        None => -&a * &ratio,
    };
    let clipped = -&a * ratio.clamp(1.0 - t.clip.0, 1.0 + t.clip.1);
    // (B, T), or (B, 1) under GSPO until the KL term or the mask broadcasts it.
    let per_token = unclipped.maximum(&clipped);
    // The high-entropy tokens alone carry the policy term; every token still counts in the
    // averages below and carries the KL term, as TRL applies its entropy mask.
    let per_token = match keep {
        Some(k) => per_token * k,
        None => per_token,
    };
    let kl = match ref_logp {
        Some(r) => {
            let d = r - logp;
            d.exp() - &d - 1.0
        }
        None => logp.zeros_like(),
    };
    let per_token = if t.beta > 0.0 { per_token + &kl * t.beta } else { per_token };
    let per_row = (&per_token * mask).sum_dim_intlist(-1, false, Kind::Float); // (B)
    let loss = match t.norm {
        GrpoLoss::Grpo => (per_row / mask.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0)).mean(Kind::Float),
        GrpoLoss::DrGrpo => (per_row / t.max_new.max(1) as f64).mean(Kind::Float),
        GrpoLoss::Dapo => per_row.sum(Kind::Float) / t.tokens.max(1.0),
        GrpoLoss::Rloo => unreachable!("RLOO's loss returned above"),
    };
    let frac = masked_mean(&clipped.gt_tensor(&unclipped).to_kind(Kind::Float), mask);
    (loss, frac, masked_mean(&kl, mask))
}

/// The q-quantile of `xs` with linear interpolation between order statistics (torch.quantile's
/// default); None for no values.
pub fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let at = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(xs[lo] + (at - lo as f64) * (xs[hi] - xs[lo]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_in_chunks_is_the_whole_batchs() {
        tch::manual_seed(3);
        let logits = Tensor::randn([5, 3, 7], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let whole = entropy(&logits);
        // Chunks of 2 rows (42 logits), and of 1 where even a row is larger.
        for elements in [42, 10, 1 << 24] {
            let chunked = entropy_in_chunks_of(&logits, elements);
            assert_eq!(chunked.size(), [5, 3]);
            assert!(f64::try_from((chunked - &whole).abs().max()).expect("scalar") < 1e-6, "{elements}");
        }
        // A uniform distribution over 7 has entropy ln 7.
        let flat = entropy_in_chunks(&Tensor::zeros([1, 1, 7], (Kind::Float, tch::Device::Cpu)));
        assert!((f64::try_from(flat.sum(Kind::Float)).expect("scalar") - 7f64.ln()).abs() < 1e-6);
    }
}
