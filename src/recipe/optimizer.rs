//! AdamW and the learning-rate schedules a stage trains with.

use serde::{Deserialize, Serialize};

/// AdamW's settings; with `muon`, the optimizer of everything Muon does not take (embeddings,
/// head, norms, biases, adapters), as torch.optim.Muon's documentation prescribes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// `optimizer = muon { … }`: the transformer blocks' matrices take Muon's update. Left out of
    /// serialized specs when unset, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<Muon>,
    /// LoRA+ (Hayou et al. 2024; PEFT's `create_loraplus_optimizer`): the adapters' B matrices
    /// and every trained vector learn at `lr` times this. Left out of serialized specs when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
}

/// Muon (Jordan et al. 2024; torch.optim.Muon): momentum, then the update orthogonalised by
/// `ns_steps` Newton–Schulz iterations in bfloat16, scaled per matrix by `adjust_lr`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Muon {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub ns_steps: usize,
    pub adjust_lr: MuonLr,
}

/// How Muon scales a matrix's rate by its shape (out × in): `original`, Keller Jordan's
/// √max(1, out/in), or `match_rms_adamw`, Moonshot's 0.2·√max(out, in), which gives the update
/// AdamW's RMS so that AdamW's rate and weight decay carry over (Liu et al. 2025).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MuonLr {
    Original,
    MatchRmsAdamw,
}

impl Muon {
    /// Whether Muon takes the trained tensor `name` of `dims` dimensions: a matrix (or a stack of
    /// experts' matrices) inside a transformer block, not a LoRA adapter.
    pub fn takes(name: &str, dims: usize) -> bool {
        dims >= 2 && name.starts_with("blocks.") && !name.contains(".lora_")
    }

    /// What a stage's log says of it.
    pub fn describe(&self) -> String {
        let nesterov = if self.nesterov { "Nesterov " } else { "" };
        let adjust = match self.adjust_lr {
            MuonLr::Original => "√max(1, out/in)",
            MuonLr::MatchRmsAdamw => "0.2·√max(out, in)",
        };
        format!("Muon on the transformer blocks' matrices (lr {} × {adjust}, {nesterov}momentum {}, weight decay {}, {} Newton–Schulz steps)", self.lr, self.momentum, self.weight_decay, self.ns_steps)
    }

    /// The rate of a matrix of `out` × `input` at rate `lr`.
    pub fn adjusted(&self, lr: f64, out: i64, input: i64) -> f64 {
        let (a, b) = (out as f64, input as f64);
        match self.adjust_lr {
            MuonLr::Original => lr * (a / b).max(1.0).sqrt(),
            MuonLr::MatchRmsAdamw => lr * 0.2 * a.max(b).sqrt(),
        }
    }
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
