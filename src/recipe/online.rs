//! Stages that learn from responses the policy writes as it trains, ranked by the recipe's reward:
//! online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"; TRL's
//! OnlineDPOTrainer), where each prompt's two responses train as a DPO pair against the frozen
//! starting policy, and best-of-n fine-tuning (RAFT, Dong et al. 2023; Llama 2's rejection
//! sampling), where the best of n responses is fine-tuned on.

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

/// Best-of-n fine-tuning (reward-ranked fine-tuning, RAFT; rejection sampling as Llama 2 used it;
/// ReST-EM with a threshold): each step the policy writes `n` responses to each prompt, and the
/// best by the recipe's reward, when it reaches `threshold`, is trained on as SFT data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BestOfNSpec {
    pub policy: ModelRef,
    /// Data whose prompts are answered; program rewards compare with its answers.
    pub prompts: String,
    /// Optimisation; `batch` counts prompts, `n` responses each.
    pub opt: Optim,
    pub n: usize,
    pub reward: Reward,
    /// A best response below this reward is not trained on (none: every prompt's best is).
    pub threshold: Option<f64>,
    pub temperature: f64,
    pub filters: RolloutFilters,
    pub lora: Option<LoraSpec>,
    pub eval_examples: usize,
    pub max_new: usize,
}
