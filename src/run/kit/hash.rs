//! What each stage kind's output depends on, as a stable content hash (FNV-1a of canonical
//! JSON): its resolved definition, the declarations it reads and the files behind them
//! (`inputs.rs`), the seed and the hashes of the upstream outputs it consumes, so retraining
//! one stage retrains its users.

use anyhow::Result;
use serde_json::json;

use super::files::fnv1a;
use crate::recipe::{MixtureSpec, ModelSpec, Recipe, StageSpec, SyntheticSpec, TrainSpec};

/// A `train` run of `spec` (a sweep point sizes its own model); `upstream` is the output hash of
/// the stage it initialises from.
pub fn train(recipe: &Recipe, spec: &ModelSpec, t: &TrainSpec, upstream: Option<&str>) -> String {
    // How the processes divide the work, not what it computes (as the number of processes is
    // not): a run divided one way is reused, or resumed from its whole checkpoints, another way.
    // So is activation checkpointing (the same numbers to the bit): a run that ran out of memory
    // resumes with it.
    let mut train = serde_json::to_value(t).unwrap_or_default();
    if let Some(o) = train.as_object_mut() {
        for layout in ["shard_optimizer", "expert_parallel", "device_memory", "activation_checkpointing"] {
            o.remove(layout);
        }
    }
    let mut key = json!({
        "seed": recipe.seed,
        "train": train,
        "model": spec,
        "data": recipe.data(&t.data),
        "upstream": upstream,
        "inputs": train_inputs(recipe, spec, t),
    });
    // What the evaluations read (their files are in `inputs`): only when there is some, so the
    // hashes of runs without stay those they were made under.
    let corpora: Vec<_> = t.eval_data.iter().filter_map(|n| recipe.data(n)).collect();
    if !corpora.is_empty() {
        key["eval_data"] = json!(corpora);
    }
    if let Some(quiz) = t.eval_choices.as_deref().and_then(|n| recipe.example_set(n)) {
        key["eval_choices"] = json!(quiz);
    }
    // A mix's corpora (their splits, keys, tokenizer).
    let parts: Vec<_> = recipe.data(&t.data).into_iter().flat_map(|d| &d.mix).filter_map(|(n, _)| recipe.data(n)).collect();
    if !parts.is_empty() {
        key["mix"] = json!(parts);
    }
    fnv1a(key.to_string().as_bytes())
}

/// A `mixture` stage on its synthetic data.
pub fn mixture(recipe: &Recipe, m: &MixtureSpec, data: &SyntheticSpec) -> String {
    fnv1a(json!({"seed": recipe.seed, "stage": m, "data": data}).to_string().as_bytes())
}

/// A post-training stage: its definition, the data and model declarations it mentions, the
/// seed, and `upstream`: the output hashes of the stages it runs after, as (stage, hash).
pub fn posttrain(recipe: &Recipe, stage: &StageSpec, upstream: &[(String, String)]) -> Result<String> {
    let mut spec = serde_json::to_value(stage)?;
    // (Activation checkpointing changes no number: as on `train`.)
    if let Some(opt) = spec.pointer_mut("/opt").and_then(|o| o.as_object_mut()) {
        opt.remove("activation_checkpointing");
    }
    let text = spec.to_string();
    let mentions = |name: &str| text.contains(&format!("\"{name}\""));
    let models: Vec<_> = recipe.models.iter().filter(|m| mentions(&m.name)).collect();
    let sets: Vec<_> = recipe.examples.iter().filter(|d| mentions(&d.name)).collect();
    let up: Vec<_> = upstream.iter().map(|(s, h)| json!([s, h])).collect();
    let mut key = json!({"seed": recipe.seed, "stage": spec, "models": models, "examples": sets, "upstream": up, "inputs": super::inputs::of(recipe, mentions)});
    // A corpus (`compare`'s perplexity): its split and tokenizer. Only when there is one, so
    // the hashes of stages that read none stay those their runs were made under.
    let corpora: Vec<_> = recipe.data.iter().filter(|d| mentions(&d.name)).collect();
    if !corpora.is_empty() {
        key["data"] = json!(corpora);
    }
    Ok(fnv1a(key.to_string().as_bytes()))
}

/// The files a `train` run of `spec` reads: its corpus (a mix's corpora), the checkpoint it
/// starts from, and the sets its evaluations score.
pub fn train_inputs(recipe: &Recipe, spec: &ModelSpec, t: &TrainSpec) -> serde_json::Value {
    // (A mix's corpora, whose files it reads.)
    let mixed = |n: &str| recipe.data(&t.data).is_some_and(|d| d.mix.iter().any(|(m, _)| m == n));
    super::inputs::of(recipe, |n| n == t.data || mixed(n) || n == spec.name || t.eval_data.iter().any(|e| e == n) || t.eval_choices.as_deref() == Some(n))
}

/// The files a post-training stage reads: those of the declarations its definition names.
pub fn posttrain_inputs(recipe: &Recipe, stage: &StageSpec) -> serde_json::Value {
    let text = serde_json::to_value(stage).unwrap_or_default().to_string();
    super::inputs::of(recipe, |name| text.contains(&format!("\"{name}\"")))
}
