//! `health = thresholds { … }` at the top of a recipe: when the training-health signals fire
//! (each key a number in its range; the rest keep their defaults).

use super::fields::Fields;
use super::Checker;
use crate::recipe::Thresholds;

impl<'a> Checker<'a> {
    pub(super) fn check_health(&mut self, top: &mut Fields<'a>) -> Option<Thresholds> {
        let d = Thresholds::default();
        let Some(field) = top.field("health") else { return Some(d) };
        let (_, path, _, block) = self.ctor(&field.value, "health", &["thresholds"])?;
        let mut f = Fields::new(block, &top.scope, "thresholds", Checker::span_of_path(path));
        // (default, lowest, lowest excluded, highest)
        let mut key = |ck: &mut Checker<'a>, name: &'static str, default: f64, lo: f64, lo_open: bool, hi: f64| f.ranged(ck, name, Some(default), lo, lo_open, hi, false);
        let th = Thresholds {
            loss_fall: key(self, "loss_fall", d.loss_fall, 0.0, true, 10.0)?,
            grad_spike: key(self, "grad_spike", d.grad_spike, 1.0, true, 1e6)?,
            drop_rate: key(self, "drop_rate", d.drop_rate, 0.0, false, 1.0)?,
            expert_share: key(self, "expert_share", d.expert_share, 0.0, true, 1.0)?,
            entropy_floor: key(self, "entropy_floor", d.entropy_floor, 0.0, false, 1.0)?,
            reward_fall: key(self, "reward_fall", d.reward_fall, 0.0, false, 100.0)?,
            kl_max: key(self, "kl_max", d.kl_max, 0.0, true, 1e6)?,
            lora_update: key(self, "lora_update", d.lora_update, 0.0, false, 1.0)?,
            flat_groups: key(self, "flat_groups", d.flat_groups, 0.0, false, 1.0)?,
        };
        f.finish(self);
        Some(th)
    }
}
