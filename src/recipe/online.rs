//! Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"; TRL's
//! OnlineDPOTrainer): each step the policy writes two responses to each prompt, the recipe's
//! reward ranks them, and the pair trains with DPO's loss against the frozen starting policy.

use serde::{Deserialize, Serialize};

use super::{DpoLoss, LoraSpec, ModelRef, Optim, Reward, RolloutFilters};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OnlineDpoSpec {
    pub policy: ModelRef,
    /// Data whose prompts are answered; program rewards compare with its answers.
    pub prompts: String,
    /// Optimisation; `batch` counts prompts, two responses each.
    pub opt: Optim,
    /// What ranks a prompt's two responses (as on `grpo`): the higher is chosen, the first on a tie.
    pub reward: Reward,
    pub beta: f64,
    /// `sigmoid` or `ipo`, on log-probabilities summed over each response (TRL's `loss_type`).
    pub loss: DpoLoss,
    pub temperature: f64,
    pub filters: RolloutFilters,
    /// Taken off the reward of a response without the end marker (TRL's `missing_eos_penalty`).
    pub missing_eos_penalty: Option<f64>,
    /// LoRA adapters on the policy: only they train, against the policy without them.
    pub lora: Option<LoraSpec>,
    pub eval_examples: usize,
    pub max_new: usize,
}
