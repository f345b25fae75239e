//! Learning-rate schedules (tch has none). Pure functions of the step, so a resumed run
//! recomputes exactly the rate it would have used.

use crate::recipe::Schedule;

/// Learning rate for 0-based `step` of `total` steps with peak rate `lr`.
///
/// Warmup is linear, reaching the peak at the end of step `warmup - 1`: lr·(step+1)/warmup.
/// Cosine then decays from lr to min_lr over the remaining steps, reaching min_lr at the last step.
pub fn lr_at(s: &Schedule, lr: f64, step: u64, total: u64) -> f64 {
    let warmup = match s {
        Schedule::Constant { warmup } | Schedule::Cosine { warmup, .. } => *warmup,
    };
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    match s {
        Schedule::Constant { .. } => lr,
        Schedule::Cosine { min_lr, .. } => {
            let span = total.saturating_sub(warmup).saturating_sub(1).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).min(1.0);
            min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_to_the_peak() {
        let s = Schedule::Constant { warmup: 4 };
        // 1e-3 · (step+1)/4: 2.5e-4, 5e-4, 7.5e-4, 1e-3, then constant.
        let got: Vec<f64> = (0..6).map(|i| lr_at(&s, 1e-3, i, 10)).collect();
        let want = [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
    }

    #[test]
    fn cosine_by_hand() {
        // warmup 2 of 12 steps, lr 1.0 → min 0.1; decay over steps 2..=11 (span 9).
        let s = Schedule::Cosine { warmup: 2, min_lr: 0.1 };
        assert!((lr_at(&s, 1.0, 0, 12) - 0.5).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 2, 12) - 1.0).abs() < 1e-12);
        // step 5: progress 3/9, cos(π/3) = 0.5 → 0.1 + 0.45·1.5 = 0.775
        assert!((lr_at(&s, 1.0, 5, 12) - 0.775).abs() < 1e-12);
        // midpoint is not a step here; step 11 is the last: exactly min_lr
        assert!((lr_at(&s, 1.0, 11, 12) - 0.1).abs() < 1e-12);
        // past the end stays at min_lr
        assert!((lr_at(&s, 1.0, 20, 12) - 0.1).abs() < 1e-12);
    }
}
