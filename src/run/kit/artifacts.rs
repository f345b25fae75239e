//! The inputs a stage reads: language models named by artifact references (fresh, a stage's
//! weights, or a LoRA stage merged into its base), a reward model, and example sets split.

use anyhow::{bail, Context, Result};
use std::path::Path;

use crate::lower::ScalarHead;
use crate::posttrain::examples::{Example, Feedback, Pair, Split};
use tch::Tensor;

use crate::recipe::{ExampleSet, LoraSpec, ModelRef, Nf4Base, Optim, Recipe, StageKind, Weights};
use crate::run::model::heads::{Head, RewardModel};
use crate::run::model::Model;

use super::files::{read_tensors, with_mapped};

/// The language model an artifact reference names: fresh weights, a stage's weights, or a LoRA
/// stage's adapter merged into its (recursively loaded) base.
pub fn load_lm(recipe: &Recipe, runs: &Path, r: &ModelRef, device: tch::Device) -> Result<Model> {
    load_held(recipe, runs, r, device, None)
}

/// The model a stage trains, which attaches `lora` to it: for a QLoRA adapter a stage's
/// weights are quantized as they are read, so the base is never whole in float32 (adapters
/// attached later leave them so).
pub fn load_base(recipe: &Recipe, runs: &Path, r: &ModelRef, lora: Option<&LoraSpec>, device: tch::Device) -> Result<Model> {
    load_held(recipe, runs, r, device, lora.and_then(LoraSpec::nf4_base))
}

fn load_held(recipe: &Recipe, runs: &Path, r: &ModelRef, device: tch::Device, nf4: Option<Nf4Base>) -> Result<Model> {
    let spec = recipe.model(&r.arch).context("checked recipe names its model")?;
    tch::manual_seed(recipe.seed as i64);
    match &r.weights {
        Weights::Init if spec.checkpoint.is_some() => super::hf::load_as(spec, device, None, nf4),
        Weights::Init => Model::new(spec, device),
        Weights::Stage { stage } => {
            let path = runs.join(stage).join("model.safetensors");
            // Copied from a mapping of the file into the weights a tensor at a time.
            with_mapped(&path, |views| Model::loaded(spec, device, views, nf4)).with_context(|| format!("loading {}", path.display()))
        }
        Weights::Merged { stage } => {
            let Some((base, lora)) = recipe.stage(stage).and_then(|s| s.kind.adapter()) else { bail!("`{stage}` is not a stage that trains a LoRA adapter") };
            let mut m = load_lm(recipe, runs, base, device)?;
            m.attach_lora(lora)?;
            let path = runs.join(stage).join("adapter.safetensors");
            m.load_lora(&read_tensors(&path)?).with_context(|| format!("loading {}", path.display()))?;
            m.merge_lora();
            Ok(m)
        }
    }
}

/// A reward stage's output, frozen: its trunk and its head.
pub fn load_reward_model(recipe: &Recipe, runs: &Path, stage: &str, device: tch::Device) -> Result<RewardModel> {
    let Some(StageKind::RewardModel(r)) = recipe.stage(stage).map(|s| &s.kind) else { bail!("`{stage}` is not a reward_model stage") };
    let spec = recipe.model(&r.model.arch).context("checked model")?;
    let path = runs.join(stage).join("model.safetensors");
    let tensors = read_tensors(&path)?;
    let mut trunk = Model::new(spec, device)?;
    trunk.load(&tensors).with_context(|| format!("loading {}", path.display()))?;
    trunk.freeze();
    let head = Head::from_named(ScalarHead::Reward, &tensors, device, &path)?;
    Ok(RewardModel { trunk, head })
}

/// What `read` makes of data set `name` (`items` say what), split; an error names the file,
/// or says which side of the split is empty.
fn split_set<T>(recipe: &Recipe, name: &str, items: &str, read: fn(&ExampleSet, u64) -> Result<Split<T>, String>) -> Result<(ExampleSet, Split<T>)> {
    let set = recipe.example_set(name).context("checked recipe names its examples")?.clone();
    let split = read(&set, recipe.seed).map_err(|e| anyhow::anyhow!("data `{name}`: {e}"))?;
    if split.train.is_empty() || split.held_out.is_empty() {
        bail!("data `{name}` has {} training and {} held-out {items}; both must be non-empty (adjust `held_out` or add {items})", split.train.len(), split.held_out.len());
    }
    Ok((set, split))
}

/// The examples of a data set, split.
pub fn instructions(recipe: &Recipe, name: &str) -> Result<(ExampleSet, Split<Example>)> {
    split_set(recipe, name, "examples", crate::posttrain::examples::instructions)
}

/// The preference pairs of a data set, split.
pub fn preferences(recipe: &Recipe, name: &str) -> Result<(ExampleSet, Split<Pair>)> {
    split_set(recipe, name, "pairs", crate::posttrain::examples::preferences)
}

/// The judged completions of an unpaired feedback set, split.
pub fn feedback_examples(recipe: &Recipe, name: &str) -> Result<(ExampleSet, Split<Feedback>)> {
    split_set(recipe, name, "examples", crate::posttrain::examples::feedback)
}

/// A stage's policy, the tensors it trains (named), and the frozen reference it is compared with.
pub struct Policy {
    pub model: Model,
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub reference: Option<Model>,
}

/// The policy `r` at the stage's `precision` (and checkpointing its activations when the stage
/// asks), with fresh LoRA adapters when `lora` is given (then only they
/// train), and when `reference`, the model it starts as, frozen: with adapters, the same weights
/// without them (shared, no second copy, as TRL's trainers use a peft model's base); otherwise a
/// second copy.
pub fn load_policy(recipe: &Recipe, runs: &Path, r: &ModelRef, lora: Option<&LoraSpec>, opt: &Optim, reference: bool, device: tch::Device) -> Result<Policy> {
    let precision = opt.precision;
    let mut model = load_base(recipe, runs, r, lora, device)?.computing(precision);
    if let Some(l) = lora {
        model.attach_lora(l)?;
    }
    model.set_recompute(opt.activation_checkpointing);
    let reference = match (reference, lora.is_some()) {
        (false, _) => None,
        (true, true) => Some(model.base_view()),
        (true, false) => {
            let mut copy = load_lm(recipe, runs, r, device)?.computing(precision);
            copy.freeze();
            Some(copy)
        }
    };
    let (names, params) = trained(&model).into_iter().unzip();
    Ok(Policy { model, names, params, reference })
}

/// What a stage trains of `model`, named: its adapters when it has them, else every weight.
pub fn trained(model: &Model) -> Vec<(String, Tensor)> {
    if model.lora.is_empty() { model.named() } else { model.lora.named() }
}

/// The file a stage writes what it trained to, and the tensors: `adapter.safetensors` for
/// adapters (a model only through `merge`), else `model.safetensors`.
pub fn trained_output(model: &Model) -> (&'static str, Vec<(String, Tensor)>) {
    (if model.lora.is_empty() { "model.safetensors" } else { "adapter.safetensors" }, trained(model))
}
