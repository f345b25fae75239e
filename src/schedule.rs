//! Learning-rate schedules (tch has none). Pure functions of the step, so a resumed run
//! recomputes exactly the rate it would have used.

use crate::recipe::{DecayShape, Schedule};

/// Learning rate for 0-based `step` of `total` steps with peak rate `lr`.
///
/// Warmup is linear, reaching the peak at the end of step `warmup - 1`: lr·(step+1)/warmup.
/// A decay then runs from lr at its first step to min_lr at the stage's last step: over all the
/// steps after warmup (cosine, linear) or over the last `decay` share of them (wsd).
pub fn lr_at(s: &Schedule, lr: f64, step: u64, total: u64) -> f64 {
    let warmup = s.warmup();
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let (start, shape) = match s {
        Schedule::Constant { .. } => return lr,
        Schedule::Cosine { .. } => (warmup, DecayShape::Cosine),
        Schedule::Linear { .. } => (warmup, DecayShape::Linear),
        Schedule::Wsd { decay, shape, .. } => (total.saturating_sub(decay_steps(*decay, total)).max(warmup), *shape),
    };
    if step < start {
        return lr;
    }
    let min_lr = s.min_lr().unwrap_or(lr);
    let span = total.saturating_sub(start).saturating_sub(1);
    // A wsd decay of one step is that step at the floor (cosine and linear keep their first
    // decaying step at the peak, as they always have).
    let progress = if span == 0 && matches!(s, Schedule::Wsd { .. }) { 1.0 } else { ((step - start) as f64 / span.max(1) as f64).min(1.0) };
    let left = match shape {
        DecayShape::Linear => 1.0 - progress,
        DecayShape::Sqrt => 1.0 - progress.sqrt(),
        DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    min_lr + (lr - min_lr) * left
}

/// Steps of a warmup–stable–decay schedule's decay: its share of the stage, rounded, at least one.
pub fn decay_steps(decay: f64, total: u64) -> u64 {
    ((decay * total as f64).round() as u64).clamp(1, total.max(1))
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

    #[test]
    fn linear_by_hand() {
        // warmup 2 of 12 steps, lr 1.0 → min 0.1 over steps 2..=11 (span 9): 0.1 a step.
        let s = Schedule::Linear { warmup: 2, min_lr: 0.1 };
        let want = [0.5, 1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1];
        for (step, w) in want.iter().enumerate() {
            assert!((lr_at(&s, 1.0, step as u64, 12) - w).abs() < 1e-12, "step {step}");
        }
    }

    #[test]
    fn warmup_stable_decay_by_hand() {
        // 20 steps, warmup 2, decay 0.25 → the last 5 steps (15..=19, span 4) decay to 0.
        let lin = Schedule::Wsd { warmup: 2, decay: 0.25, min_lr: 0.0, shape: DecayShape::Linear };
        let got: Vec<f64> = (0..20).map(|i| lr_at(&lin, 2.0, i, 20)).collect();
        let mut want = vec![1.0];
        want.extend([2.0; 14]);
        want.extend([2.0, 1.5, 1.0, 0.5, 0.0]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // 1 − √progress: at step 16 progress ¼, so 2·(1 − ½) = 1.0; step 18: 2·(1 − √¾).
        let sqrt = Schedule::Wsd { warmup: 2, decay: 0.25, min_lr: 0.0, shape: DecayShape::Sqrt };
        assert!((lr_at(&sqrt, 2.0, 16, 20) - 1.0).abs() < 1e-12);
        assert!((lr_at(&sqrt, 2.0, 18, 20) - 2.0 * (1.0 - 0.75f64.sqrt())).abs() < 1e-12);
        // cosine shape with a floor: midway (step 17, progress ½) is halfway between 2 and 0.4.
        let cos = Schedule::Wsd { warmup: 0, decay: 0.25, min_lr: 0.4, shape: DecayShape::Cosine };
        assert!((lr_at(&cos, 2.0, 17, 20) - 1.2).abs() < 1e-12);
        assert!((lr_at(&cos, 2.0, 19, 20) - 0.4).abs() < 1e-12);
        // A decay of one step puts only the last step at the floor; rounding: 0.22 · 20 = 4.4 → 4.
        assert_eq!(decay_steps(0.01, 20), 1);
        assert_eq!(decay_steps(0.22, 20), 4);
        let one = Schedule::Wsd { warmup: 0, decay: 0.01, min_lr: 0.0, shape: DecayShape::Linear };
        assert_eq!((lr_at(&one, 1.0, 18, 20), lr_at(&one, 1.0, 19, 20)), (1.0, 0.0));
    }
}
