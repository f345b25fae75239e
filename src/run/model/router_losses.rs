//! The routers' auxiliary losses and the 1991 mixture's competitive loss, as their papers define
//! them (each checked against a value computed by hand in tests/moe.rs).

use tch::{Kind, Tensor};

/// CV² = Var/mean² with the population variance (divide by n), as Shazeer et al.'s
/// `cv_squared` (tf.nn.moments) computes it; the ε keeps it finite when everything is 0.
pub fn cv_squared(v: &Tensor) -> Tensor {
    let mean = v.mean(Kind::Float);
    let var = (v - &mean).square().mean(Kind::Float);
    var / (mean.square() + 1e-10)
}

/// Switch balance loss without its coefficient: E · Σ_i f_i · P_i, where f_i is the fraction of
/// assignments sent to expert i and P_i the mean router probability of expert i.
pub fn balance_loss(probs: &Tensor, routed: &Tensor, n_routed: i64) -> Tensor {
    let e = probs.size()[1] as f64;
    let f = routed.to_kind(Kind::Float) / n_routed as f64;
    let p = probs.mean_dim(0, false, Kind::Float);
    (f * p).sum(Kind::Float) * e
}

/// ST-MoE router z-loss without its coefficient: mean over tokens of logsumexp(logits)².
pub fn z_loss(logits: &Tensor) -> Tensor {
    logits.logsumexp(-1, false).square().mean(Kind::Float)
}

/// Shazeer et al.'s smooth load estimator: Σ_x P(x, i), where P(x, i) is the probability that
/// expert i stays in the top k when only its own noise is redrawn:
/// Φ((clean_i − threshold) / noise_std_i), threshold = the k-th largest noisy logit of the other
/// experts (the (k+1)-th overall when i is in the top k, the k-th otherwise).
pub fn smooth_load(clean: &Tensor, noisy: &Tensor, noise_std: &Tensor, k: i64) -> Tensor {
    let (top, _) = noisy.topk(k + 1, -1, true, true); // (N, k+1)
    let kth_if_in = top.narrow(1, k, 1); // (k+1)-th largest
    let kth_if_out = top.narrow(1, k - 1, 1); // k-th largest
    let is_in = noisy.ge_tensor(&kth_if_out);
    let threshold = kth_if_out.where_self(&is_in.logical_not(), &kth_if_in);
    let z = (clean - threshold) / noise_std;
    let prob = ((z / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    prob.sum_dim_intlist(0, false, Kind::Float)
}

/// Jacobs et al. 1991 competitive loss per example: −log Σ_j p_j·exp(−½‖d − o_j‖²), averaged.
/// p (N, E), outputs (E, N, D), target (N, D).
pub fn jacobs_loss(p: &Tensor, outputs: &Tensor, target: &Tensor) -> Tensor {
    let sq = (outputs - target.unsqueeze(0)).square().sum_dim_intlist(-1, false, Kind::Float); // (E, N)
    let log_terms = p.transpose(0, 1).log() - sq * 0.5; // (E, N)
    (-log_terms.logsumexp(0, false)).mean(Kind::Float)
}
