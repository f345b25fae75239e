//! The checked, typed recipe: every value resolved, every invariant holding. Later stages
//! (lower, plan, run) read only this, never the AST.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    pub experiment: String,
    pub seed: u64,
    pub data: Vec<DataSpec>,
    pub models: Vec<ModelSpec>,
    pub stages: Vec<StageSpec>,
    /// Compute budgets and what their law solved them to.
    #[serde(default)]
    pub budgets: Vec<BudgetSpec>,
    /// Generated data sets (`synthetic.*`), reproducible from the recipe's seed.
    #[serde(default)]
    pub synthetic: Vec<SyntheticSpec>,
    /// Instruction examples and preference pairs for post-training stages.
    #[serde(default)]
    pub examples: Vec<ExampleSet>,
}

impl Recipe {
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
    pub fn data(&self, name: &str) -> Option<&DataSpec> {
        self.data.iter().find(|d| d.name == name)
    }
    pub fn example_set(&self, name: &str) -> Option<&ExampleSet> {
        self.examples.iter().find(|d| d.name == name)
    }
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte; vocabulary 256.
    Bytes,
    /// Byte-level BPE trained on the training split (the `tokenizers` crate), `vocab` tokens;
    /// saved as tokenizer.json beside the model.
    Bpe { vocab: usize },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSpec {
    pub name: String,
    /// Absolute path of the text file.
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    pub vocab: usize,
    pub context: usize,
    /// Fraction of the corpus used for training; the rest is validation.
    pub split: f64,
    /// Size of the corpus in tokens: bytes for the byte tokenizer, an upper bound (the bytes)
    /// for BPE, whose count is known only once it is trained.
    pub tokens: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyntheticSpec {
    pub name: String,
    pub generator: Generator,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Generator {
    /// Regression whose input space splits into `tasks` angular sectors of the first two input
    /// coordinates, each with its own random affine map: a task whose decomposition is known.
    Regions { tasks: usize, dim: usize, outputs: usize, examples: usize, noise: f64 },
}

/// A synthetic instruction task with a programmatic answer (see `posttrain::tasks`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Reverse,
    Sort,
    Add,
    Uppercase,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExampleKind {
    /// Prompt → response, for instruction fine-tuning (and prompts for PPO).
    Instructions,
    /// Prompt, chosen, rejected: for reward models and DPO.
    Preferences,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExampleSource {
    /// Generated from the seed: `count` distinct prompts (pairs for preferences); a `verbose`
    /// share of instruction responses carry a filler after the answer.
    Synthetic { tasks: Vec<Task>, count: usize, verbose: f64, max_len: usize },
    /// One JSON object per line; `fields` are the keys read, in order (prompt, response) or
    /// (prompt, chosen, rejected).
    Jsonl { path: PathBuf, fields: Vec<String> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExampleSet {
    pub name: String,
    pub kind: ExampleKind,
    pub source: ExampleSource,
    /// How a prompt is shown to the model; contains `{prompt}`.
    pub template: String,
    /// Appended to every response; generation stops when it is produced.
    pub end: String,
    /// Share of prompts held out for evaluation (chosen by a hash of the prompt).
    pub held_out: f64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
    Swiglu,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Layernorm,
    Rmsnorm,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Learned,
    Rope,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlpSpec {
    pub hidden: usize,
    pub act: Activation,
}

/// How a mixture-of-experts layer picks experts for each token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouterSpec {
    /// Jacobs et al. 1991: a dense softmax gate over all experts; output Σ p_j·expert_j(x).
    Softmax,
    /// Shazeer et al. 2017: H = x·W_g + N(0,1)·softplus(x·W_noise), softmax over the top k.
    NoisyTopk { k: usize, importance_loss: f64, load_loss: f64 },
    /// Fedus et al. 2022: top-1 with a capacity; over-capacity tokens are dropped.
    Switch { capacity_factor: f64, eval_capacity_factor: f64, balance_loss: f64, z_loss: f64, jitter: f64 },
    /// Mixtral: top-k, dropless; `normalize` renormalises the k gates to sum to 1.
    Topk { k: usize, normalize: bool, balance_loss: f64, z_loss: f64 },
    /// Zhou et al. 2022: each expert takes its top tokens; capacity = tokens·factor/experts.
    ExpertChoice { capacity_factor: f64 },
}

impl RouterSpec {
    pub fn name(&self) -> &'static str {
        match self {
            RouterSpec::Softmax => "softmax",
            RouterSpec::NoisyTopk { .. } => "noisy_topk",
            RouterSpec::Switch { .. } => "switch",
            RouterSpec::Topk { .. } => "topk",
            RouterSpec::ExpertChoice { .. } => "expert_choice",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MoeSpec {
    pub experts: usize,
    pub expert: MlpSpec,
    /// Blocks (0-based) whose FFN is this mixture; the others use a dense `expert`-sized MLP.
    pub layers: Vec<usize>,
    /// Always-on experts every token passes through besides the routed ones.
    pub shared: usize,
    /// Dropout inside experts.
    pub expert_dropout: f64,
    pub router: RouterSpec,
}

impl MoeSpec {
    /// Experts a token passes through on average (for active parameters and FLOPs).
    pub fn active_experts(&self) -> f64 {
        match &self.router {
            RouterSpec::Softmax => self.experts as f64,
            RouterSpec::NoisyTopk { k, .. } | RouterSpec::Topk { k, .. } => *k as f64,
            RouterSpec::Switch { .. } => 1.0,
            RouterSpec::ExpertChoice { capacity_factor } => *capacity_factor,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub vocab: usize,
    /// Longest sequence the model accepts (the size of learned position tables).
    pub context: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// The dense FFN (in every block without a mixture).
    pub ffn: MlpSpec,
    pub moe: Option<MoeSpec>,
    pub norm: Norm,
    pub position: Position,
    pub tie_embeddings: bool,
    pub dropout: f64,
    pub bias: bool,
}

impl ModelSpec {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// A model definition read back from a run directory (`resolved.json`'s `model`), which is a
    /// file anyone may have edited: the invariants the checker guarantees for recipes, checked
    /// again so that building the model cannot panic.
    pub fn from_run_json(v: &serde_json::Value) -> Result<ModelSpec, String> {
        let s: ModelSpec = serde_json::from_value(v.clone()).map_err(|e| format!("not a model definition: {e}"))?;
        const MAX: usize = 1 << 20;
        let dims = [("vocab", s.vocab), ("context", s.context), ("d_model", s.d_model), ("heads", s.heads), ("kv_heads", s.kv_heads), ("ffn.hidden", s.ffn.hidden)];
        for (name, v) in dims.iter().chain(&[("layers", s.layers)]) {
            if *v == 0 || *v > MAX {
                return Err(format!("`{name}` = {v} is out of range (1 to {MAX})"));
            }
        }
        if s.d_model % s.heads != 0 || s.heads % s.kv_heads != 0 {
            return Err(format!("heads {} must divide d_model {} and kv_heads {} must divide heads", s.heads, s.d_model, s.kv_heads));
        }
        if s.position == Position::Rope && s.head_dim() % 2 != 0 {
            return Err(format!("rope needs an even head size, not {}", s.head_dim()));
        }
        if !(0.0..1.0).contains(&s.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", s.dropout));
        }
        if let Some(m) = &s.moe {
            let k = match &m.router {
                RouterSpec::NoisyTopk { k, .. } | RouterSpec::Topk { k, .. } => *k,
                _ => 1,
            };
            if m.experts == 0 || m.experts > MAX || m.expert.hidden == 0 || m.expert.hidden > MAX || k == 0 || k > m.experts || m.layers.iter().any(|&l| l >= s.layers) {
                return Err("its mixture of experts is inconsistent (experts, expert size, k or layers)".into());
            }
        }
        Ok(s)
    }
}

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
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 compute with float32 master weights and optimizer state.
    Bf16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainSpec {
    /// Name of the model architecture trained.
    pub model: String,
    /// Stage whose trained weights initialise this one (`train(pretrain.model, …)`), else random.
    pub init_from: Option<String>,
    pub data: String,
    pub steps: u64,
    pub batch: usize,
    pub context: usize,
    pub optimizer: AdamW,
    pub schedule: Schedule,
    pub grad_clip: Option<f64>,
    pub eval_every: u64,
    pub eval_batches: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub device: Device,
    #[serde(default)]
    pub precision: Precision,
    /// Steps with a non-finite loss or gradient that may be skipped before the stage stops
    /// (0: stop at the first).
    #[serde(default)]
    pub max_skips: u64,
}

impl TrainSpec {
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.context) as u64
    }
}

/// Jacobs et al. 1991's objectives for a gated mixture.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// −log Σ_j p_j·exp(−½‖d − o_j‖²): experts compete for each case.
    Competitive,
    /// ‖d − Σ_j p_j·o_j‖²: experts cooperate (the contrast the paper draws).
    Cooperative,
}

/// A gated mixture of small expert networks trained on a synthetic task (Jacobs et al. 1991).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MixtureSpec {
    pub data: String,
    pub experts: usize,
    /// None: linear experts; Some: one-hidden-layer MLP experts.
    pub expert: Option<MlpSpec>,
    pub objective: Objective,
    pub steps: u64,
    pub batch: usize,
    pub optimizer: AdamW,
    pub schedule: Schedule,
    pub eval_every: u64,
}

/// One point of an IsoFLOP sweep: a model sized for the budget and its training run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IsoflopPoint {
    pub budget: f64,
    pub model: ModelSpec,
    pub train: TrainSpec,
}

/// Hoffmann et al.'s Approach 2 as a stage: for each budget, several model sizes, each trained
/// on tokens = C / (6N); then a fit, and a run at `predict` × the largest budget with the size
/// the fit predicts, to check the prediction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IsoflopSpec {
    pub points: Vec<IsoflopPoint>,
    pub predict: f64,
    pub aspect: f64,
    pub head_dim: usize,
    /// The template every point was sized from, and the training settings they share.
    pub template: ModelSpec,
    pub train: TrainSpec,
}

/// Where a post-training stage's starting weights come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Weights {
    /// A fresh initialisation of the model declaration (seeded).
    Init,
    /// The full weights a stage wrote (`pretrain.model`).
    Stage { stage: String },
    /// A LoRA stage's adapter merged into its base (`merge(sft.adapter)`).
    Merged { stage: String },
}

/// A model artifact: an architecture and where its weights come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelRef {
    pub arch: String,
    pub weights: Weights,
}

impl ModelRef {
    pub fn stage(&self) -> Option<&str> {
        match &self.weights {
            Weights::Init => None,
            Weights::Stage { stage } | Weights::Merged { stage } => Some(stage),
        }
    }
}

/// Low-rank adapters (Hu et al. 2021): W x + (alpha/rank)·B A x on the target linears, base frozen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module-path patterns (`attn.q`, `blocks.*.ffn.w1`): a pattern matches a linear whose
    /// path ends with it, `*` standing for one path segment.
    pub targets: Vec<String>,
}

/// The optimisation settings every post-training stage shares.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Optim {
    pub steps: u64,
    /// Sequences (pairs for preferences, prompts for PPO) per step.
    pub batch: usize,
    pub optimizer: AdamW,
    pub schedule: Schedule,
    pub grad_clip: Option<f64>,
    pub eval_every: u64,
    pub log_every: u64,
    pub device: Device,
}

/// Instruction fine-tuning (SFT), full or through a LoRA adapter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneSpec {
    pub model: ModelRef,
    pub data: String,
    pub opt: Optim,
    pub lora: Option<LoraSpec>,
    /// Prompt tokens carry zero loss weight.
    pub mask_prompt: bool,
    /// Held-out prompts scored by greedy generation (exact match, gold reward).
    pub eval_examples: usize,
    pub max_new: usize,
}

/// A scalar head on a language model trained on preference pairs (Bradley–Terry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RewardSpec {
    pub model: ModelRef,
    pub data: String,
    pub opt: Optim,
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
    pub eval_examples: usize,
}

/// Direct preference optimisation (Rafailov et al. 2023) against a frozen reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DpoSpec {
    pub policy: ModelRef,
    pub data: String,
    pub opt: Optim,
    pub beta: f64,
    pub eval_examples: usize,
    pub max_new: usize,
}

/// A table of policies on held-out prompts: gold reward, exact match, KL to a reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompareSpec {
    pub policies: Vec<(String, ModelRef)>,
    pub reference: ModelRef,
    pub data: String,
    pub examples: usize,
    pub max_new: usize,
    pub device: Device,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageKind {
    Train(TrainSpec),
    Mixture(MixtureSpec),
    Isoflop(IsoflopSpec),
    Finetune(FinetuneSpec),
    RewardModel(RewardSpec),
    Ppo(PpoSpec),
    Dpo(DpoSpec),
    Compare(CompareSpec),
}

impl StageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Train(_) => "train",
            StageKind::Mixture(_) => "mixture",
            StageKind::Isoflop(_) => "isoflop",
            StageKind::Finetune(_) => "finetune",
            StageKind::RewardModel(_) => "reward_model",
            StageKind::Ppo(_) => "ppo",
            StageKind::Dpo(_) => "dpo",
            StageKind::Compare(_) => "compare",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    pub name: String,
    /// Stages whose artifacts this stage consumes.
    pub after: Vec<String>,
    #[serde(flatten)]
    pub kind: StageKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BudgetSpec {
    pub name: String,
    pub law: crate::scaling::law::Law,
    pub params: f64,
    pub tokens: f64,
    pub flops: f64,
    /// Predicted loss at (params, tokens) under the law's parametric fit.
    pub loss: f64,
    /// Stages warn when N or D is off the optimum by more than this factor.
    pub tolerance: f64,
}
