//! The post-training stages' specifications: fine-tuning, reward models, PPO, DPO, compare
//! (GRPO has its own file). What they share (`Optim`, `ModelRef`, `LoraSpec`) is in stage.rs.

use serde::{Deserialize, Serialize};

use super::*;

/// Instruction fine-tuning (SFT), full or through a LoRA adapter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneSpec {
    pub model: ModelRef,
    pub data: String,
    pub opt: Optim,
    pub lora: Option<LoraSpec>,
    /// Prompt tokens carry zero loss weight.
    pub mask_prompt: bool,
    /// Examples packed into rows of up to the context (each still seeing only itself); `batch`
    /// counts rows. Left out of serialized specs when off, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// NEFTune's α (Jain et al. 2023; TRL's `neftune_noise_alpha`): noise on the token embeddings
    /// while training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neftune: Option<f64>,
    /// Held-out prompts scored by greedy generation (exact match, gold reward).
    pub eval_examples: usize,
    pub max_new: usize,
    /// Other instruction sets whose held-out loss and token accuracy every evaluation measures
    /// (`eval_data = [a, b]`, TRL's dict of eval datasets). Left out when empty (older hashes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_data: Vec<String>,
}

/// A scalar head on a language model trained on preference pairs (Bradley–Terry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RewardSpec {
    pub model: ModelRef,
    pub data: String,
    pub opt: Optim,
    /// Eisenstein et al. 2023's centring (TRL's `center_rewards_coefficient`): this many times
    /// the mean of (r_chosen + r_rejected)² joins the loss, so scores stay near zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_rewards: Option<f64>,
    /// LoRA adapters on the trunk (`adapter = lora { … }`; TRL's RewardTrainer with a peft_config,
    /// the score head trained whole): the adapters and the head train, and the stage writes the
    /// trunk with its adapters merged, so `STAGE.model` is a reward model like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// Other preference sets whose held-out pairwise accuracy every evaluation measures
    /// (`eval_data = [a, b]`). Left out when empty (older hashes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_data: Vec<String>,
}

/// PPO against a reward model with a per-token KL penalty to a frozen reference (the policy's
/// starting weights), GAE advantages and clipped policy and value objectives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PpoSpec {
    pub policy: ModelRef,
    /// The reward model (a `reward_model` stage).
    pub reward: String,
    /// Instruction data whose prompts are sampled (responses are ignored).
    pub prompts: String,
    pub opt: Optim,
    pub kl: f64,
    /// Adaptive KL controller (Ziegler et al. 2019): the coefficient tracks this KL per sequence.
    pub kl_target: Option<f64>,
    pub clip: f64,
    pub value_clip: f64,
    pub vf_coef: f64,
    pub entropy_coef: f64,
    pub gamma: f64,
    pub lambda: f64,
    pub epochs: usize,
    pub minibatches: usize,
    pub max_new: usize,
    pub temperature: f64,
    /// Top-k, top-p, min-p and the repetition penalty of the rollouts; left out of serialized
    /// specs when off, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "RolloutFilters::is_off")]
    pub filters: RolloutFilters,
    /// How the per-token KL penalty is estimated (TRL's `kl_estimator`). This and the two below
    /// are left out of serialized specs at their defaults, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "KlEstimator::is_k1")]
    pub kl_estimator: KlEstimator,
    /// Subtracted from the score of a response without the end marker (TRL's
    /// `missing_eos_penalty`): one that ran to `max_new` is worth less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_eos_penalty: Option<f64>,
    /// The per-token rewards (KL penalties and scores) divided by their standard deviation over
    /// the step's response tokens before GAE, their mean kept (TRL's `whiten_rewards`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whiten_rewards: bool,
    /// LoRA adapters on the policy (`adapter = lora { … }`), as on `dpo`: they and the value head
    /// train; the stage's outputs are `STAGE.adapter` and its value head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    pub eval_examples: usize,
}

/// How PPO's per-token penalty estimates KL(π ‖ π_ref) from the sampled token (TRL's
/// `kl_estimator`, after Schulman 2020), with log r = log π_ref − log π: k1 = −log r (unbiased,
/// negative where the policy finds a token less likely than the reference), k3 = (r − 1) − log r
/// (unbiased, never negative, of lower variance).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    #[default]
    K1,
    K3,
}

impl KlEstimator {
    pub fn is_k1(&self) -> bool {
        *self == KlEstimator::K1
    }

    /// The estimate at one token from its log-probabilities under the policy and the reference.
    pub fn at(&self, logp: f64, ref_logp: f64) -> f64 {
        let log_r = ref_logp - logp;
        match self {
            KlEstimator::K1 => -log_r,
            KlEstimator::K3 => log_r.exp_m1() - log_r,
        }
    }
}

/// How PPO and GRPO draw their rollouts besides `temperature` (the generation options TRL's
/// trainers pass on): top-k, nucleus (top-p), min-p and the repetition penalty, as `roux sample`
/// applies them. The log-probabilities the losses read stay those of the whole distribution at
/// the temperature, as TRL's are.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct RolloutFilters {
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: u64,
    /// Keep the smallest most likely set whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Keep the tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f64,
    /// Logits of tokens already in the text divided by it when positive, multiplied when negative.
    pub repetition_penalty: f64,
}

impl Default for RolloutFilters {
    fn default() -> Self {
        RolloutFilters { top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }
}

impl RolloutFilters {
    pub fn is_off(&self) -> bool {
        *self == RolloutFilters::default()
    }
}

/// Direct preference optimisation (Rafailov et al. 2023) against a frozen reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DpoSpec {
    pub policy: ModelRef,
    pub data: String,
    pub opt: Optim,
    pub beta: f64,
    /// Left out of serialized specs at its default (sigmoid, no smoothing), so stages written
    /// before it existed keep their content hash.
    #[serde(default, skip_serializing_if = "DpoLoss::is_sigmoid")]
    pub loss: DpoLoss,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// RPO (Pang et al. 2024; TRL's `rpo_alpha`): the chosen responses' NLL per token, this many
    /// times, added to the preference loss (not with ORPO, which has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
    /// SimPO's target margin γ (only with `loss = simpo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// DiscoPOP's temperature τ (only with `loss = discopop`; TRL's `discopop_tau`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discopop_tau: Option<f64>,
    /// KTO's weights of its desirable and undesirable examples' losses (TRL's `desirable_weight`
    /// and `undesirable_weight`), (1, 1) unless set.
    #[serde(default = "unit_weights", skip_serializing_if = "are_unit")]
    pub kto_weights: (f64, f64),
    /// LoRA adapters on the policy (`adapter = lora { … }`): only they train, against the reference,
    /// the policy without them; the stage's output is `STAGE.adapter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// TR-DPO's moving reference (`sync_ref_model = true`); left out of serialized specs when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<RefSync>,
    /// WPO (Zhou et al. 2024; TRL's `use_weighting`): each pair's loss weighed by how likely the
    /// policy finds both its responses (`losses::wpo_weights`), so that off-policy pairs count
    /// less; left out of serialized specs when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_weighting: bool,
    /// f-DPO's divergence (`f_divergence`); left out of serialized specs when reverse KL.
    #[serde(default, skip_serializing_if = "FDivergence::is_reverse_kl")]
    pub f_divergence: FDivergence,
    /// TRL's `precompute_ref_log_probs`: the reference's log-probabilities of the pairs the run
    /// draws and of the held-out pairs, computed once before the first step, so that no reference
    /// is held or run while training; left out of serialized specs when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub precompute_ref_log_probs: bool,
    pub eval_examples: usize,
    pub max_new: usize,
    /// Other preference (or feedback) sets whose held-out implicit rewards every evaluation
    /// measures (`eval_data = [a, b]`). Left out when empty (older hashes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_data: Vec<String>,
}

/// TR-DPO (Gorbatovski et al. 2024; TRL's `sync_ref_model`): every `every` steps the frozen
/// reference becomes α·policy + (1 − α)·reference, weight by weight, so the trust region it
/// anchors moves with training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefSync {
    pub alpha: f64,
    pub every: u64,
}

impl DpoSpec {
    /// Whether the stage holds and runs a reference while it trains: its loss reads one, and
    /// its log-probabilities are not computed before the first step.
    pub fn holds_reference(&self) -> bool {
        self.loss.needs_reference() && !self.precompute_ref_log_probs
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn unit_weights() -> (f64, f64) {
    (1.0, 1.0)
}

fn are_unit(w: &(f64, f64)) -> bool {
    *w == (1.0, 1.0)
}

/// The balance KTO's authors and TRL recommend: desirable_weight × desirable / (undesirable_weight
/// × undesirable) within [1, 4/3].
pub const KTO_BALANCE: (f64, f64) = (1.0, 4.0 / 3.0);

/// `good` desirable and `bad` undesirable examples' balance under `weights` (infinite without
/// undesirable ones).
pub fn kto_balance(good: usize, bad: usize, weights: (f64, f64)) -> f64 {
    weights.0 * good as f64 / (weights.1 * bad as f64)
}

/// A table of policies on held-out prompts (gold reward, exact match, KL to a reference), on
/// multiple-choice questions (accuracy) or on a text corpus's held-out split (perplexity).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompareSpec {
    pub policies: Vec<(String, ModelRef)>,
    pub reference: ModelRef,
    pub data: String,
    /// Prompts or questions scored (0 on a text corpus, whose held-out split is scored whole).
    pub examples: usize,
    /// On a text corpus: how far each window moves (None: each model's context, windows that do
    /// not overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// On a text corpus: how each policy reads it, in the order of `policies` (resolved by the
    /// checker from where each policy's weights learned their tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Reading>,
    pub max_new: usize,
    pub device: Device,
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}
