//! `roux merge RUN`: a LoRA stage's adapter folded into its base, written as a plain model
//! (`model.safetensors` + `resolved.json`) that `roux sample` and `roux export` read.
//!
//! The base is found through the run-directory lifecycle: each stage of the chain
//! `merge(sft.adapter)` → its base → … is read from its own directory (`runs/<stage>`), never by
//! listing siblings (a run set aside as `sft.old-*` holds an older definition), and must be the
//! output the adapter was trained on (the hash its report recorded).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;

use crate::recipe::{ModelRef, ModelSpec, Recipe, StageKind, StageSpec, Weights};
use crate::run::kit::artifacts::load_lm;
use crate::run::kit::files::{write_atomic, write_tensors_atomic};
use crate::run::kit::lifecycle::{self, Finished};

/// What `merge_run` wrote.
pub struct Merged {
    /// The LoRA stage whose adapter was merged, and its experiment.
    pub stage: String,
    pub experiment: String,
    /// Where its base weights came from: a stage, a checkpoint, or fresh weights.
    pub base: String,
    pub params: u64,
}

pub fn merge_run(run: &Path, out: &Path) -> Result<Merged> {
    lifecycle::refuse_to_overwrite(out, &["report.json", "state.json", "metrics.jsonl"])?;
    let (m, merged, chat_template) = merged_model(run, tch::Device::Cpu)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_tensors_atomic(&out.join("model.safetensors"), &m.named())?;
    let mut resolved = json!({"experiment": merged.experiment, "merged_from": merged.stage, "model": m.spec()});
    if let Some(t) = chat_template {
        resolved["chat_template"] = t;
    }
    write_atomic(&out.join("resolved.json"), serde_json::to_string_pretty(&resolved)?.as_bytes())?;
    Ok(Merged { params: m.numel(), ..merged })
}

/// The model of a finished LoRA stage `run` with its adapter folded into its base (read through
/// the chain of stages it was built on, each from its own directory), on `device`; what was
/// merged, and the chat template the stage trained in.
pub fn merged_model(run: &Path, device: tch::Device) -> Result<(crate::run::model::Model, Merged, Option<serde_json::Value>)> {
    // `roux merge sft` from inside the experiment's directory, or `runs/x/sft/`, or `.`.
    let run = std::fs::canonicalize(run).with_context(|| format!("{} is not a run directory", run.display()))?;
    let runs = lifecycle::experiment_dir(&run);
    let adapter = lifecycle::finished(&run)?;
    let stage = stage_of(&adapter)?;
    let Some((base_ref, _)) = stage.kind.adapter() else {
        if matches!(stage.kind, StageKind::Finetune(_) | StageKind::Dpo(_) | StageKind::Ppo(_) | StageKind::Grpo(_) | StageKind::Distill(_) | StageKind::OnlineDpo(_) | StageKind::BestOfN(_)) {
            bail!("`{}` trained the whole model: its model.safetensors is already plain", stage.name);
        }
        bail!("`{}` is a {} stage; only a post-training stage with a LoRA adapter can be merged", stage.name, stage.kind.name())
    };
    let base_ref = base_ref.clone();
    let chat_template = adapter.resolved.get("chat_template").cloned();
    let spec = ModelSpec::from_run_json(&adapter.resolved["model"]).map_err(|e| anyhow::anyhow!("{}: {e}", adapter.dir.join("resolved.json").display()))?;
    // Follow the chain of bases, each from its own run directory.
    let mut stages = vec![stage.clone()];
    let (mut user, mut weights) = (adapter, base_ref.weights.clone());
    let base = loop {
        match weights {
            // An imported model's initial weights are its checkpoint's.
            Weights::Init => break spec.checkpoint.as_ref().map_or("fresh weights".to_string(), |c| format!("the checkpoint in {}", c.dir.display())),
            Weights::Stage { stage: s } => {
                let dir = lifecycle::stage_dir(&runs, &s)?;
                same_output(&user, &s, &lifecycle::finished(&dir)?)?;
                break format!("`{s}` ({})", dir.display());
            }
            Weights::Merged { stage: s } => {
                let next = lifecycle::finished(&lifecycle::stage_dir(&runs, &s)?)?;
                same_output(&user, &s, &next)?;
                let spec = stage_of(&next)?;
                let Some((g, _)) = spec.kind.adapter() else { bail!("`{s}` in {} is not a stage that trains a LoRA adapter", next.dir.display()) };
                weights = g.weights.clone();
                stages.push(spec);
                user = next;
            }
        }
    };
    let v = &user.resolved;
    let recipe = Recipe {
        experiment: v["experiment"].as_str().unwrap_or_default().to_string(),
        seed: v["seed"].as_u64().unwrap_or(0),
        data: vec![],
        models: vec![spec],
        stages,
        budgets: vec![],
        synthetic: vec![],
        examples: vec![],
        health: Default::default(),
        sweep: vec![],
    };
    let r = ModelRef { arch: base_ref.arch.clone(), weights: Weights::Merged { stage: stage.name.clone() } };
    let m = load_lm(&recipe, &runs, &r, device)?;
    let params = m.numel();
    Ok((m, Merged { stage: stage.name.clone(), experiment: recipe.experiment, base, params }, chat_template))
}

/// The stage definition a finished run resolved.
fn stage_of(run: &Finished) -> Result<StageSpec> {
    // A `train` stage's resolved.json names its stage by a string; a post-training stage's is
    // the whole definition.
    if let Some(name) = run.resolved["stage"].as_str() {
        bail!("`{name}` is a pretraining stage; only a post-training stage with a LoRA adapter can be merged");
    }
    serde_json::from_value(run.resolved["stage"].clone()).map_err(|_| anyhow::anyhow!("{} does not hold a stage definition roux can read", run.dir.join("resolved.json").display()))
}

/// Refuse an input that was retrained after `user` was trained on it: `user`'s report records the
/// output hash of each stage it consumed (runs written before roux recorded it are taken as they are).
fn same_output(user: &Finished, input: &str, found: &Finished) -> Result<()> {
    let (Some(recorded), Some(now)) = (user.report["upstream"][input].as_str(), found.report["hash"].as_str()) else { return Ok(()) };
    if recorded != now {
        bail!(
            "{} holds another output of `{input}` than the one `{}` was trained on (hash {now}, trained on {recorded}); \
             run the recipe again so `{}` trains on it, then merge",
            found.dir.display(),
            user.report["stage"].as_str().unwrap_or("?"),
            user.report["stage"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
