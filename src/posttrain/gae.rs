//! Generalised advantage estimation (Schulman et al. 2016) over one response.

/// Advantages and returns for per-token `rewards` and value estimates `values` of one
/// trajectory (the value after the last token is 0: the episode ends):
///   δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   R_t = A_t + V_t.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut next_adv = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// A value whitened but for its mean: (x − mean)/√(var + 1e-8) + mean, as TRL's
/// `masked_whiten(…, shift_mean=False)` leaves PPO's per-token rewards.
pub fn whitened(x: f64, mean: f64, var: f64) -> f64 {
    (x - mean) / (var + 1e-8).sqrt() + mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_on_a_three_step_trajectory_by_hand() {
        // r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8:
        //   δ2 = 1 + 0 − 0.7 = 0.3                 A2 = 0.3
        //   δ1 = 0 + 0.9·0.7 − 0.6 = 0.03          A1 = 0.03 + 0.72·0.3 = 0.246
        //   δ0 = 0 + 0.9·0.6 − 0.5 = 0.04          A0 = 0.04 + 0.72·0.246 = 0.21712
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 0.9, 0.8);
        for (x, y) in a.iter().zip([0.21712, 0.246, 0.3]) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        for (x, y) in r.iter().zip([0.71712, 0.846, 1.0]) {
            assert!((x - y).abs() < 1e-12, "{r:?}");
        }
        // λ = 1, γ = 1: advantages are reward-to-go minus the value.
        let (a, _) = gae(&[1.0, 2.0], &[0.5, 0.5], 1.0, 1.0);
        assert_eq!(a, vec![2.5, 1.5]);
    }

    #[test]
    fn whitening_keeps_the_mean_and_scales_the_spread_by_hand() {
        // [1, 2, 3, 6]: mean 3, unbiased variance (4 + 1 + 0 + 9)/3 = 14/3.
        let xs = [1.0, 2.0, 3.0, 6.0];
        let s = (14.0f64 / 3.0 + 1e-8).sqrt();
        for x in xs {
            assert!((whitened(x, 3.0, 14.0 / 3.0) - ((x - 3.0) / s + 3.0)).abs() < 1e-12);
        }
        assert!((whitened(6.0, 3.0, 14.0 / 3.0) - 4.3887301496588).abs() < 1e-8);
    }
}
