//! Knowledge distillation (TRL's GKDTrainer; Agarwal et al. 2024, "On-Policy Distillation of
//! Language Models"): a student learns a frozen teacher's next-token distributions over the
//! responses of instruction data, its own sampled responses (on-policy), or the teacher's.

use serde::{Deserialize, Serialize};

use super::{LoraSpec, ModelRef, Optim};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistillSpec {
    /// The model that trains.
    pub student: ModelRef,
    /// The frozen model whose distributions it learns: same tokens, a context at least as long.
    pub teacher: ModelRef,
    /// Instruction data: its prompts, and its responses on the steps that read them.
    pub data: String,
    pub opt: Optim,
    /// LoRA adapters on the student (TRL's GKDTrainer with a `peft_config`).
    pub lora: Option<LoraSpec>,
    /// The generalized Jensen–Shannon divergence's β (TRL's `beta`): 0 is KL(teacher ‖ student),
    /// forward KL; 1 is KL(student ‖ teacher), reverse KL; between, β·KL(T ‖ M) + (1−β)·KL(S ‖ M)
    /// with M = β·T + (1−β)·S.
    pub beta: f64,
    /// The chance that a step trains on the student's own responses, sampled at `temperature`
    /// (TRL's `lmbda`): a coin drawn once a step from the stage's seeded generator.
    pub lmbda: f64,
    /// Sequence-level KD (TRL's `seq_kd`): the teacher writes the responses the other steps read.
    pub seq_kd: bool,
    /// The temperature responses are sampled at (the divergence reads temperature 1, as TRL's).
    pub temperature: f64,
    /// The divergence's share of the loss, the rest the data's negative log-likelihood
    /// (torchtune's KD recipe's `kd_ratio`; 1, TRL's GKD, is the divergence alone).
    pub kd_ratio: f64,
    pub eval_examples: usize,
    /// The longest sampled response, on-policy and held-out alike.
    pub max_new: usize,
}

impl DistillSpec {
    /// Whether some steps sample their responses (the prompts must leave room for `max_new`).
    pub fn samples(&self) -> bool {
        self.lmbda > 0.0 || self.seq_kd
    }
}
