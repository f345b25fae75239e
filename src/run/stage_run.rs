//! What every post-training stage does around its loop: decide whether its output is cached
//! (a content hash of its resolved definition, its inputs and its upstream outputs), resume or
//! refuse a checkpoint of another definition, load model artifacts, checkpoint, log, finish.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::Tensor;

use super::adamw::AdamW;
use super::checkpoint::{self, State};
use super::model::Model;
use super::progress::{Metrics, Progress};
use super::train::{prepare_run_dir, read_report_hash};
use super::RunOptions;
use crate::recipe::{ModelRef, Recipe, StageKind, StageSpec, Weights};

/// The hash of a stage's output: its definition, the data and model declarations it reads,
/// the seed, and the hashes of the stages it consumes (so retraining one retrains its users).
pub fn stage_hash(recipe: &Recipe, stage: &StageSpec, runs: &Path) -> Result<String> {
    let mut upstream = vec![];
    for s in &stage.after {
        let h = read_report_hash(&runs.join(s)).with_context(|| format!("stage `{}` needs the output of `{s}`", stage.name))?;
        upstream.push(json!([s, h]));
    }
    let spec = serde_json::to_value(stage)?;
    let text = spec.to_string();
    let mentions = |name: &str| text.contains(&format!("\"{name}\""));
    let models: Vec<_> = recipe.models.iter().filter(|m| mentions(&m.name)).collect();
    let sets: Vec<_> = recipe.examples.iter().filter(|d| mentions(&d.name)).collect();
    let key = json!({"seed": recipe.seed, "stage": spec, "models": models, "examples": sets, "upstream": upstream});
    Ok(checkpoint::fnv1a(key.to_string().as_bytes()))
}

pub struct StageRun {
    pub name: String,
    pub dir: PathBuf,
    pub runs: PathBuf,
    pub hash: String,
    pub resume: Option<State>,
    pub metrics: Metrics,
    pub progress: Progress,
    pub device: tch::Device,
}

/// Prepare a stage's run directory; None when its output is up to date and is reused.
pub fn begin(recipe: &Recipe, source: &str, stage: &StageSpec, runs: &Path, steps: u64, device: crate::recipe::Device, opts: &RunOptions) -> Result<Option<StageRun>> {
    let name = &stage.name;
    let dir = runs.join(name);
    let hash = stage_hash(recipe, stage, runs)?;
    // The model a stage writes (or, for LoRA, adapts), so `roux sample`, `export` and `merge`
    // can read its weights.
    let arch = match &stage.kind {
        StageKind::Finetune(f) => Some(&f.model.arch),
        StageKind::Ppo(p) => Some(&p.policy.arch),
        StageKind::Dpo(d) => Some(&d.policy.arch),
        _ => None,
    };
    let resolved = json!({"experiment": recipe.experiment, "seed": recipe.seed, "stage": stage, "model": arch.and_then(|a| recipe.model(a))});
    let Some(resume) = prepare_run_dir(name, &dir, &hash, &resolved, source, opts)? else { return Ok(None) };
    let step0 = resume.as_ref().map(|s| s.step);
    if let Some(s) = step0 {
        tracing::info!("{name}: resuming from step {s} of {steps}");
    }
    Ok(Some(StageRun {
        name: name.clone(),
        metrics: Metrics::open(&dir, step0)?,
        progress: Progress::new(name, step0.unwrap_or(0), steps),
        dir,
        runs: runs.to_path_buf(),
        hash,
        resume,
        device: super::device(device)?,
    }))
}

impl StageRun {
    /// Restore trainable tensors and optimizer state when resuming; returns (step, rng, extra).
    pub fn restore(&self, names: &[String], params: &[Tensor], opt: &mut AdamW, rng: super::data::Rng) -> Result<(u64, super::data::Rng, serde_json::Value)> {
        match &self.resume {
            Some(s) => {
                checkpoint::load_params(&self.dir, s, names, params, opt)?;
                Ok((s.step, s.data_rng, s.extra.clone()))
            }
            None => Ok((0, rng, serde_json::Value::Null)),
        }
    }

    pub fn checkpoint(&self, step: u64, names: &[String], params: &[Tensor], opt: &AdamW, rng: super::data::Rng, extra: serde_json::Value) -> Result<()> {
        let state = State { step, adam_t: opt.t, data_rng: rng, recipe_hash: self.hash.clone(), file: format!("ckpt-{step}.safetensors"), best_val: None, window_loss: (0.0, 0), extra };
        checkpoint::save_params(&self.dir, names, params, opt, &state)
    }

    pub fn log(&mut self, v: serde_json::Value) -> Result<()> {
        self.metrics.write_json(&v)
    }

    /// Write outputs, then report.json (with the hash, which marks the stage finished), plots.
    pub fn finish(self, outputs: &[(&str, Vec<(String, Tensor)>)], mut report: serde_json::Value, title: &str) -> Result<()> {
        for (file, tensors) in outputs {
            checkpoint::write_tensors_atomic(&self.dir.join(file), tensors)?;
        }
        report["stage"] = json!(self.name);
        report["hash"] = json!(self.hash);
        checkpoint::write_atomic(&self.dir.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
        if let Err(e) = crate::report::plots::write_run_plots(&self.dir, title) {
            tracing::warn!("{}: could not draw plots: {e}", self.name);
        }
        Ok(())
    }
}

/// The language model an artifact reference names: fresh weights, a stage's weights, or a LoRA
/// stage's adapter merged into its (recursively loaded) base.
pub fn load_lm(recipe: &Recipe, runs: &Path, r: &ModelRef, device: tch::Device) -> Result<Model> {
    let spec = recipe.model(&r.arch).context("checked recipe names its model")?;
    tch::manual_seed(recipe.seed as i64);
    match &r.weights {
        Weights::Init => Ok(Model::new(spec, device)),
        Weights::Stage { stage } => {
            let mut m = Model::new(spec, device);
            let path = runs.join(stage).join("model.safetensors");
            let t = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
            m.load(&t).with_context(|| format!("loading {}", path.display()))?;
            Ok(m)
        }
        Weights::Merged { stage } => {
            let Some(StageKind::Finetune(f)) = recipe.stage(stage).map(|s| &s.kind) else { bail!("`{stage}` is not a finetune stage") };
            let lora = f.lora.as_ref().context("merge needs a LoRA stage")?;
            let mut m = load_lm(recipe, runs, &f.model, device)?;
            m.attach_lora(lora);
            let path = runs.join(stage).join("adapter.safetensors");
            let t = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
            m.load_lora(&t)?;
            m.merge_lora();
            Ok(m)
        }
    }
}

/// A frozen copy: no parameter takes gradients.
pub fn freeze(m: &mut Model) {
    for p in m.params.iter_mut() {
        let _ = p.set_requires_grad(false);
    }
}

/// The examples of a data set, split, or an error naming the file.
pub fn instructions(recipe: &Recipe, name: &str) -> Result<(crate::recipe::ExampleSet, crate::posttrain::examples::Split<crate::posttrain::examples::Example>)> {
    let set = recipe.example_set(name).context("checked recipe names its examples")?.clone();
    let split = crate::posttrain::examples::instructions(&set, recipe.seed).map_err(|e| anyhow::anyhow!("data `{name}`: {e}"))?;
    if split.train.is_empty() || split.held_out.is_empty() {
        bail!("data `{name}` has {} training and {} held-out examples; both must be non-empty (adjust `held_out` or add examples)", split.train.len(), split.held_out.len());
    }
    Ok((set, split))
}

pub fn preferences(recipe: &Recipe, name: &str) -> Result<(crate::recipe::ExampleSet, crate::posttrain::examples::Split<crate::posttrain::examples::Pair>)> {
    let set = recipe.example_set(name).context("checked recipe names its examples")?.clone();
    let split = crate::posttrain::examples::preferences(&set, recipe.seed).map_err(|e| anyhow::anyhow!("data `{name}`: {e}"))?;
    if split.train.is_empty() || split.held_out.is_empty() {
        bail!("data `{name}` has {} training and {} held-out pairs; both must be non-empty (adjust `held_out` or add pairs)", split.train.len(), split.held_out.len());
    }
    Ok((set, split))
}
