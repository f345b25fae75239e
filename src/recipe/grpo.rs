//! GRPO (Shao et al. 2024, DeepSeekMath): for each prompt a group of sampled answers, rewards
//! from a program or a reward model, advantages normalised within the group, a clipped
//! policy-ratio loss and an optional KL term to a frozen reference; no value network.

use serde::{Deserialize, Serialize};

use super::{ModelRef, Optim};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GrpoSpec {
    pub policy: ModelRef,
    /// Instruction data whose prompts are sampled; program rewards compare with its answers.
    pub prompts: String,
    /// Optimisation; `batch` counts completions: `batch / group` prompts a step.
    pub opt: Optim,
    /// Completions sampled per prompt.
    pub group: usize,
    pub reward: Reward,
    /// Weight of the KL term to the frozen reference; 0 loads no reference.
    pub beta: f64,
    pub clip: f64,
    /// The upper clip when it differs (DAPO's clip-higher: ρ within [1 − clip, 1 + clip_high]).
    /// Left out of serialized specs when unset, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_high: Option<f64>,
    /// Two-sided clipping (INTELLECT-2; TRL's `delta`): the ratio capped at δ in the unclipped
    /// term too, which the clip leaves unbounded where the advantage is negative. Left out of
    /// serialized specs when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Only the tokens of the step whose sampled distribution's entropy is in this top share
    /// carry the policy term ("Beyond the 80/20 Rule", Wang et al. 2025; TRL's
    /// `top_entropy_quantile`). Left out of serialized specs when unset (every token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_entropy_quantile: Option<f64>,
    /// Passes over each step's completions.
    pub epochs: usize,
    pub max_new: usize,
    pub temperature: f64,
    /// Top-k, top-p, min-p and the repetition penalty of the rollouts; left out of serialized
    /// specs when off, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "super::RolloutFilters::is_off")]
    pub filters: super::RolloutFilters,
    pub loss: GrpoLoss,
    /// What the rewards' deviations from their group mean are divided by (TRL's
    /// `scale_rewards`); unset means the loss's own choice. Left out of serialized specs when
    /// unset, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_rewards: Option<RewardScale>,
    /// LoRA adapters on the policy (`adapter = lora { … }`), as on `dpo`: only they train; the
    /// stage's output is `STAGE.adapter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<super::LoraSpec>,
    pub eval_examples: usize,
    /// Whose ratio π/π_old is clipped: each token's (GRPO) or each completion's (GSPO). Left out
    /// of serialized specs at its default, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "ImportanceSampling::is_token")]
    pub importance_sampling: ImportanceSampling,
    /// DAPO's overlong filtering (TRL's `mask_truncated_completions`): a completion that reached
    /// `max_new` without the end marker takes no part in the loss (its reward still counts in its
    /// group's mean). Left out of serialized specs when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_truncated: bool,
    /// TR-DPO's moving reference, as TRL's GRPOTrainer takes it (`sync_ref_model = true`); left
    /// out of serialized specs when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<super::RefSync>,
}

/// The level of the importance ratio (TRL's `importance_sampling_level`): per token, as GRPO and
/// PPO take it, or per completion, GSPO's (Zheng et al. 2025): the geometric mean of its tokens'
/// ratios, exp(mean over the completion of log π − log π_old), clipped as one, so a completion's
/// tokens move together and one unlikely token cannot swing the update.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSampling {
    #[default]
    Token,
    Sequence,
}

impl ImportanceSampling {
    pub fn is_token(&self) -> bool {
        *self == ImportanceSampling::Token
    }
}

impl GrpoSpec {
    /// The advantages' scale: the recipe's, else the group's standard deviation (none for Dr. GRPO).
    pub fn reward_scale(&self) -> RewardScale {
        self.scale_rewards.unwrap_or(if matches!(self.loss, GrpoLoss::DrGrpo | GrpoLoss::Rloo) { RewardScale::None } else { RewardScale::Group })
    }
}

/// A = r − mean(group), divided by the standard deviation of the group's rewards, of the whole
/// step's (over every process: Liu et al. 2025's "Tricks or Traps" batch scaling), or by nothing.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RewardScale {
    Group,
    Batch,
    None,
}

impl RewardScale {
    pub fn name(self) -> &'static str {
        match self {
            RewardScale::Group => "group",
            RewardScale::Batch => "batch",
            RewardScale::None => "none",
        }
    }
}

/// How the per-token losses of a group become one number.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// DeepSeekMath: advantages divided by the group's standard deviation; each completion's
    /// tokens averaged, then the completions.
    Grpo,
    /// Dr. GRPO (Liu et al. 2025): no division by the standard deviation; each completion's
    /// tokens summed and divided by `max_new`, a constant, so length carries no bias.
    DrGrpo,
    /// DAPO (Yu et al. 2025): advantages as GRPO's, but every completion token of the step weighs
    /// the same: the sum over all of them divided by their number, so long completions are not
    /// diluted (TRL's `loss_type = "dapo"`).
    Dapo,
    /// RLOO (Ahmadian et al. 2024, TRL's RLOOTrainer): each completion's baseline is the mean
    /// reward of the other completions of its prompt; β·KL to the reference (k1, summed over the
    /// completion, from the sampling-time policy) is taken off the reward instead of added to the
    /// loss; one ratio per completion, exp of the sum of its tokens' log π − log π_old, clipped
    /// as one; the completions' losses averaged. `scale_rewards = batch` divides the advantages
    /// by their standard deviation over the step (TRL's `normalize_advantages`).
    Rloo,
}

impl GrpoLoss {
    pub fn name(self) -> &'static str {
        match self {
            GrpoLoss::Grpo => "GRPO",
            GrpoLoss::DrGrpo => "Dr. GRPO",
            GrpoLoss::Dapo => "DAPO",
            GrpoLoss::Rloo => "RLOO",
        }
    }
}

/// A reward: the weighted sum of its terms, as the recipe writes it (`exact_match + 0.5 * format`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reward {
    pub terms: Vec<(f64, RewardTerm)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RewardTerm {
    /// 1 when the response is exactly the data's answer, else 0.
    ExactMatch,
    /// 1 when the response ends with the data's end marker (the policy stopped within
    /// `max_new`, as an answer should), else 0.
    Format,
    /// The response's length over `max_new`, in [0, 1]: give it a negative weight to penalise.
    Length,
    /// The scalar of a reward model (the output of this `reward_model` stage).
    Model { stage: String },
    /// 1 when the response (up to the end marker) contains a match of this regular expression
    /// (`^…$` for the whole of it), else 0: a format reward, as GRPO recipes write them.
    Matches { pattern: String },
}

/// The longest pattern `matches` takes, in bytes, and the most memory its compiled form may take.
pub const PATTERN_BYTES: usize = 4096;
const PATTERN_MEMORY: usize = 1 << 20;

/// A `matches` reward's regular expression, compiled within bounds (the regex crate matches in
/// time linear in the text); the error says why not, in one line.
pub fn reward_pattern(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > PATTERN_BYTES {
        return Err(format!("the pattern is {} bytes, more than the {PATTERN_BYTES} a reward may use", pattern.len()));
    }
    regex::RegexBuilder::new(pattern).size_limit(PATTERN_MEMORY).dfa_size_limit(PATTERN_MEMORY).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => format!("its compiled form takes more than the {} MiB a reward may use", PATTERN_MEMORY >> 20),
        // A syntax error's text ends with its one-line reason ("error: unclosed group").
        e => e.to_string().lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or("it does not parse").to_string(),
    })
}

impl RewardTerm {
    /// Whether the term compares with an answer the data must hold.
    pub fn needs_answers(&self) -> bool {
        matches!(self, RewardTerm::ExactMatch)
    }
}

impl Reward {
    /// The reward-model stages its terms read, each once, in the order they first appear.
    pub fn model_stages(&self) -> Vec<&str> {
        let mut stages: Vec<&str> = vec![];
        for (_, t) in &self.terms {
            if let RewardTerm::Model { stage } = t {
                if !stages.contains(&stage.as_str()) {
                    stages.push(stage);
                }
            }
        }
        stages
    }
}
