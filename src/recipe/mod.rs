//! The checked, typed recipe: every value resolved, every invariant holding. Later stages
//! (lower, plan, run) read only this, never the AST.
//!
//! | file       | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `mod.rs`   | the recipe and its look-ups                                    |
//! | `data.rs`  | corpora, tokenizers, synthetic data, example sets              |
//! | `model.rs` | model definitions: attention, MLPs, mixtures of experts        |
//! | `checkpoint.rs` | an imported model's checkpoint and its architecture family |
//! | `stage.rs` | stages, optimizers, schedules, artifacts, budgets              |
//! | `posttrain.rs` | fine-tuning, reward model, PPO, DPO and compare stages     |
//! | `grpo.rs`  | the GRPO stage and its rewards                                 |
//! | `distill.rs` | knowledge distillation from a teacher (GKD)                  |
//! | `online.rs` | online DPO and best-of-n: responses the policy writes, ranked  |
//! | `kind.rs`  | what every stage kind answers: its optimizer, device, adapter  |

mod checkpoint;
mod data;
mod distill;
mod dpo_loss;
mod grpo;
mod health;
mod kind;
mod model;
mod online;
mod optimizer;
mod posttrain;
mod stage;

pub use checkpoint::*;
pub use data::*;
pub use distill::*;
pub use dpo_loss::*;
pub use grpo::*;
pub use health::*;
pub use model::*;
pub use online::*;
pub use optimizer::*;
pub use posttrain::*;
pub use stage::*;

/// The most processes a run may have (torchrun's WORLD_SIZE, `expert_parallel`).
pub const MAX_PROCESSES: usize = 65_536;

/// `expert_parallel = n` divides the experts over groups of n processes, so n must divide the
/// run's processes: an error naming both numbers otherwise.
pub fn expert_parallel_fits(stage: &str, n: usize, processes: usize) -> Result<(), String> {
    if n == 1 || processes.is_multiple_of(n) {
        return Ok(());
    }
    Err(format!(
        "stage `{stage}`: `expert_parallel = {n}` divides the experts over groups of {n} processes, but the run has {processes}: start it with a multiple of {n} processes (`roux run --nproc {n}`)"
    ))
}

/// A recipe value's keyword as the recipe writes it (`learned`, `rmsnorm`, `swiglu`): its serde
/// name, for messages (never Rust's `Debug` spelling).
pub fn keyword<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

use serde::{Deserialize, Serialize};

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
    /// When health signals fire (`health = thresholds { … }`).
    #[serde(default, skip_serializing_if = "Thresholds::is_default")]
    pub health: Thresholds,
    /// A sweep's point: each swept name with its value as the recipe prints it (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<(String, String)>,
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
    /// The tokens an example set is encoded with: bytes, or its model's tokenizer (`tokenizer = m`).
    pub fn set_tokenizer(&self, set: &ExampleSet) -> Tokenizer {
        match &set.tokenizer {
            Some(m) => Tokenizer::Model { model: m.clone(), vocab: self.model(m).map_or(0, |m| m.vocab) },
            None => Tokenizer::Bytes,
        }
    }
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// Sequences a `dpo` stage runs per example: chosen and rejected, or one judged completion.
    pub fn dpo_rows(&self, d: &DpoSpec) -> usize {
        if self.example_set(&d.data).is_some_and(|e| e.kind == ExampleKind::Feedback) { 1 } else { 2 }
    }
}
