//! The inputs a stage reads: language models named by artifact references (fresh, a stage's
//! weights, or a LoRA stage merged into its base), a reward model, and example sets split.

use anyhow::{bail, Context, Result};
use std::path::Path;

use crate::lower::ScalarHead;
use crate::posttrain::examples::{Example, Pair, Split};
use crate::recipe::{ExampleSet, ModelRef, Recipe, StageKind, Weights};
use crate::run::model::heads::{Head, RewardModel};
use crate::run::model::Model;

use super::files::read_tensors;

/// The language model an artifact reference names: fresh weights, a stage's weights, or a LoRA
/// stage's adapter merged into its (recursively loaded) base.
pub fn load_lm(recipe: &Recipe, runs: &Path, r: &ModelRef, device: tch::Device) -> Result<Model> {
    let spec = recipe.model(&r.arch).context("checked recipe names its model")?;
    tch::manual_seed(recipe.seed as i64);
    match &r.weights {
        Weights::Init if spec.checkpoint.is_some() => super::hf::load(spec, device, None),
        Weights::Init => Model::new(spec, device),
        Weights::Stage { stage } => {
            let mut m = Model::new(spec, device)?;
            let path = runs.join(stage).join("model.safetensors");
            m.load(&read_tensors(&path)?).with_context(|| format!("loading {}", path.display()))?;
            Ok(m)
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

/// The examples of a data set, split, or an error naming the file.
pub fn instructions(recipe: &Recipe, name: &str) -> Result<(ExampleSet, Split<Example>)> {
    let set = recipe.example_set(name).context("checked recipe names its examples")?.clone();
    let split = crate::posttrain::examples::instructions(&set, recipe.seed).map_err(|e| anyhow::anyhow!("data `{name}`: {e}"))?;
    if split.train.is_empty() || split.held_out.is_empty() {
        bail!("data `{name}` has {} training and {} held-out examples; both must be non-empty (adjust `held_out` or add examples)", split.train.len(), split.held_out.len());
    }
    Ok((set, split))
}

/// The preference pairs of a data set, split.
pub fn preferences(recipe: &Recipe, name: &str) -> Result<(ExampleSet, Split<Pair>)> {
    let set = recipe.example_set(name).context("checked recipe names its examples")?.clone();
    let split = crate::posttrain::examples::preferences(&set, recipe.seed).map_err(|e| anyhow::anyhow!("data `{name}`: {e}"))?;
    if split.train.is_empty() || split.held_out.is_empty() {
        bail!("data `{name}` has {} training and {} held-out pairs; both must be non-empty (adjust `held_out` or add pairs)", split.train.len(), split.held_out.len());
    }
    Ok((set, split))
}
