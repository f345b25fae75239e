//! When a stage's health signals fire (run/kit/health.rs reads the metrics against these):
//! `health = thresholds { drop_rate = 0.3, kl_max = 5 }` at the top of a recipe, for every stage.

use serde::{Deserialize, Serialize};

/// The thresholds each signal fires at (the defaults unless the recipe sets them).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Thresholds {
    /// Loss not falling: the last quarter's mean loss is above this share of the first quarter's.
    pub loss_fall: f64,
    /// A gradient-norm spike: a logged norm above this multiple of the median of the logs
    /// before it, not back below half of that by the next log.
    pub grad_spike: f64,
    /// A mixture-of-experts layer dropping more than this share of its tokens.
    pub drop_rate: f64,
    /// One expert taking more than this share of a layer's assignments.
    pub expert_share: f64,
    /// Router collapse: the routing entropy below this share of its maximum, ln(experts).
    pub entropy_floor: f64,
    /// A reward-model score falling by more than this share from the first quarter to the last.
    pub reward_fall: f64,
    /// KL to the reference above this many nats per sequence.
    pub kl_max: f64,
    /// LoRA adapters that barely move: ‖ΔW‖ / ‖W‖ below this.
    pub lora_update: f64,
    /// GRPO without a learning signal: this share of groups with all-equal rewards, or more.
    pub flat_groups: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { loss_fall: 0.99, grad_spike: 10.0, drop_rate: 0.2, expert_share: 0.6, entropy_floor: 0.1, reward_fall: 0.2, kl_max: 2.0, lora_update: 1e-3, flat_groups: 0.9 }
    }
}

impl Thresholds {
    pub fn is_default(&self) -> bool {
        *self == Thresholds::default()
    }
}
