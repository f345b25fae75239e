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
}

impl Recipe {
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
    pub fn data(&self, name: &str) -> Option<&DataSpec> {
        self.data.iter().find(|d| d.name == name)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte; vocabulary 256.
    Bytes,
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
    /// Size of the corpus in tokens (bytes for the byte tokenizer).
    pub tokens: u64,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub vocab: usize,
    /// Longest sequence the model accepts (the size of learned position tables).
    pub context: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: MlpSpec,
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
}

impl TrainSpec {
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.context) as u64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageKind {
    Train(TrainSpec),
}

impl StageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Train(_) => "train",
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
