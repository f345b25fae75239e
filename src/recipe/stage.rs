//! Stages and what they share: devices, precision, artifact references, budgets (the optimizer
//! and its schedules are in `optimizer.rs`).

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Auto,
    Cpu,
    /// The process's GPU: cuda:0, or cuda:LOCAL_RANK when torchrun starts one process per GPU.
    Cuda,
    /// One GPU by index (`device = "cuda:1"`), for a run of one process.
    #[serde(rename = "cuda_index")]
    CudaIndex(u32),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 compute with float32 master weights and optimizer state.
    Bf16,
}

impl Precision {
    /// Left out of serialized specs when fp32, so stages written before `precision` existed on
    /// them keep their content hash.
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
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
    /// Checkpoints kept on disk (`keep = N`, 2 when absent).
    #[serde(default = "two", skip_serializing_if = "is_two")]
    pub keep: usize,
    /// Also keep the weights of the best validation loss as best.safetensors (`keep = best`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_best: bool,
    /// Stop once this many evaluations in a row bring no better validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// Micro-batches per optimizer step on each process (`accumulate = k`): `batch` stays the
    /// global batch of one step, split over the processes and then into k parts.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// Each process keeps its share of the AdamW moments only (ZeRO-1; `shard_optimizer = true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_optimizer: bool,
    /// The MoE layers' experts divided over this many processes (`expert_parallel = N`; N must
    /// be the run's number of processes).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub expert_parallel: usize,
    /// Bytes one device holds (`device_memory = 80G`): `roux plan --world N` refuses a layout
    /// whose process needs more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<u64>,
    /// Keep only each block's input in the forward pass and run the blocks again in the
    /// backward pass (`activation_checkpointing = true`): the same numbers, fewer activations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    /// PaLM's z-loss (Chowdhery et al. 2022): this times the mean of log² Z, Z the softmax's
    /// normaliser at every position, added to the training loss; 0 (off) is left out of
    /// serialized specs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub z_loss: f64,
    /// A multiple-choice set (`choices(…)`) scored at every evaluation as `compare` scores it
    /// (`eval_choices = quiz`), as nanoGPT-style runs track HellaSwag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_choices: Option<String>,
    /// Other corpora whose held-out loss is measured at every evaluation, on the same windows
    /// each time (`eval_data = [wiki, c4]`), as OLMo's in-loop perplexity evaluations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_data: Vec<String>,
    /// Text sampled from the model every `every` steps as it trains (`sample_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<TrainSamples>,
}

/// What `train` samples as it learns: `tokens` tokens after `prompt` at `temperature` (0:
/// greedy), every `every` steps and at the last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainSamples {
    pub every: u64,
    pub prompt: String,
    pub tokens: usize,
    pub temperature: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

// Defaults left out of the serialized spec, so adding them changed no stage's content hash.
fn two() -> usize {
    2
}

fn is_two(n: &usize) -> bool {
    *n == 2
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl TrainSpec {
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.context) as u64
    }

    /// The rows of one micro-batch when `processes` share each step's batch (`split_batch`).
    pub fn micro_batch(&self, stage: &str, processes: usize) -> Result<usize, String> {
        split_batch(stage, self.batch, processes, self.accumulate)
    }
}

/// The rows of one micro-batch when `processes` share each step's `batch`, each in `accumulate`
/// parts; an error naming the three numbers when they do not divide it.
pub fn split_batch(stage: &str, batch: usize, processes: usize, accumulate: usize) -> Result<usize, String> {
    let parts = processes * accumulate;
    if parts == 0 || !batch.is_multiple_of(parts) {
        return Err(format!(
            "stage `{stage}`: its batch of {batch} does not split over {processes} processes × `accumulate = {accumulate}` micro-batches \
             ({parts} equal parts); pick a batch that is a multiple of {parts}, or another number of processes"
        ));
    }
    Ok(batch / parts)
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
    /// bf16: the experts compute in bfloat16 (the gate, its softmax and the loss in float32).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
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

/// Low-rank adapters (Hu et al. 2021): W x + (alpha/rank)·B A x on the target linears, base frozen
/// (with `dora`, a trained magnitude per output row as well).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Rank-stabilised LoRA (Kalajdzievski 2023; PEFT's `use_rslora`): scale α/√rank, not α/rank.
    /// Left out of serialized specs when off, so older stages keep their hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rslora: bool,
    /// Weight-decomposed LoRA (Liu et al. 2024, DoRA; PEFT's `use_dora`): each target row's
    /// magnitude is a trained vector m and its direction W + s·B·A normalised,
    /// y = m/‖W + s·B·A‖ ⊙ (W + s·B·A)·x, the norm per output row and held constant in backward.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dora: bool,
    /// Module-path patterns (`attn.q`, `blocks.*.ffn.w1`): a pattern matches a linear whose
    /// path ends with it, `*` standing for one path segment.
    pub targets: Vec<String>,
    /// How the frozen base's linears are held: as they are, or in NF4 (QLoRA). Left out of
    /// serialized specs when `none`.
    #[serde(default, skip_serializing_if = "QuantizeBase::is_none")]
    pub quantize_base: QuantizeBase,
    /// Double quantization (QLoRA's; bitsandbytes' `bnb_4bit_use_double_quant`): an NF4 base's
    /// block scales held in 8 bits themselves. Left out of serialized specs when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub double_quant: bool,
}

impl LoraSpec {
    /// How the base's projections are held in NF4, if they are.
    pub fn nf4_base(&self) -> Option<Nf4Base> {
        (self.quantize_base == QuantizeBase::Nf4).then_some(Nf4Base { double_quant: self.double_quant })
    }
}

/// A QLoRA base's NF4 projections: each block's scale in float32, or (`double_quant`) the
/// scales less their mean in 8 bits, in blocks of 256 with a float32 scale each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Base {
    pub double_quant: bool,
}

/// The frozen base's linears under a LoRA adapter: as they are, or 4-bit NormalFloat (QLoRA,
/// Dettmers et al. 2023: blocks of 64 values, each block's absolute maximum in float32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizeBase {
    #[default]
    None,
    Nf4,
}

impl QuantizeBase {
    pub fn is_none(&self) -> bool {
        *self == QuantizeBase::None
    }
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
    /// bf16: every model of the stage computes in bfloat16 (trained ones keep float32 weights).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Micro-batches per step on each process (`accumulate = k`; finetune stages read the key).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// Stop after this many evaluations without a better held-out measure (`patience = N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// Keep only each block's input in the forward pass and run the blocks again in the
    /// backward pass (`activation_checkpointing = true`): the same numbers, fewer activations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

impl Optim {
    /// The rows of one micro-batch when `processes` share each step's batch (`split_batch`).
    pub fn micro_batch(&self, stage: &str, processes: usize) -> Result<usize, String> {
        split_batch(stage, self.batch, processes, self.accumulate)
    }
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
    Grpo(GrpoSpec),
    Distill(DistillSpec),
    OnlineDpo(OnlineDpoSpec),
    BestOfN(BestOfNSpec),
    Compare(CompareSpec),
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
