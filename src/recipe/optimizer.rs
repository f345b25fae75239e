//! AdamW and the learning-rate schedules a stage trains with.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Constant { warmup: u64 },
    /// Linear warmup to the peak rate, then a half cosine down to `min_lr` at the last step.
    Cosine { warmup: u64, min_lr: f64 },
    /// Linear warmup, then a straight line down to `min_lr` at the last step (the default of
    /// Hugging Face's Trainer and TRL).
    Linear { warmup: u64, min_lr: f64 },
    /// Warmup–stable–decay (Hu et al. 2024; Hägele et al. 2024): linear warmup, the peak rate held,
    /// then the last `decay` share of the steps down to `min_lr` in the given shape.
    Wsd { warmup: u64, decay: f64, min_lr: f64, shape: DecayShape },
}

impl Schedule {
    pub fn warmup(&self) -> u64 {
        match self {
            Schedule::Constant { warmup } | Schedule::Cosine { warmup, .. } | Schedule::Linear { warmup, .. } | Schedule::Wsd { warmup, .. } => *warmup,
        }
    }

    pub fn warmup_mut(&mut self) -> &mut u64 {
        match self {
            Schedule::Constant { warmup } | Schedule::Cosine { warmup, .. } | Schedule::Linear { warmup, .. } | Schedule::Wsd { warmup, .. } => warmup,
        }
    }

    /// The rate a decaying schedule ends at; none for a constant one.
    pub fn min_lr(&self) -> Option<f64> {
        match self {
            Schedule::Constant { .. } => None,
            Schedule::Cosine { min_lr, .. } | Schedule::Linear { min_lr, .. } | Schedule::Wsd { min_lr, .. } => Some(*min_lr),
        }
    }
}

/// How a warmup–stable–decay schedule comes down from its plateau (torchtitan's `decay_type`):
/// `linear`, `sqrt` (1 − √progress, Hägele et al.'s recommendation) or `cosine`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecayShape {
    Linear,
    Sqrt,
    Cosine,
}
