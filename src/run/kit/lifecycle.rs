//! One run-directory lifecycle for every stage kind. A stage names what its output depends on
//! (a content hash, `hash.rs`) and what it resolved to; `begin` then decides:
//! - `--fresh` renames an existing run aside (never deletes it);
//! - a finished run of the same hash is reused (`None`);
//! - a finished run of another hash is kept beside it under its hash (`variant_dir`), saying what
//!   changed, and the stage runs again, unless a run of the new hash is kept there: that one
//!   comes back (so `--set lr=…` variants do not evict each other);
//! - an interrupted run of another hash is refused, listing what changed, unless `--force`;
//! - otherwise the stage starts, or resumes from the checkpoint its state names.
//!
//! `RunDir::finish` writes the outputs and then report.json with the hash: the mark of a
//! finished run. Tools (`merge`) find runs through `finished` and `stage_dir`, never by listing.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::Tensor;

use super::adamw::Optimizer;
use super::checkpoint::{self, State};
use super::context::StageCtx;
use super::files::write_atomic;
use super::changes::changes_since;
use super::lock::Lock;
use super::progress::{Metrics, Progress};
pub use super::files::stage_dir;
pub use super::lock::lock;
use crate::recipe::StageKind;
use crate::rng::Rng;

/// A stage's run directory while it runs.
pub struct RunDir {
    /// Held until the run ends: no second `roux run` writes this directory meanwhile (by the
    /// leading process; the others of a multi-process run write nothing).
    _lock: Option<Lock>,
    /// Whether this process writes the directory (rank 0, or the only process).
    pub leads: bool,
    pub label: String,
    pub dir: PathBuf,
    pub hash: String,
    /// The checkpoint to resume from, if any.
    pub resume: Option<State>,
    /// (stage, output hash) of the stages this one consumed, recorded in report.json so a tool
    /// can tell whether an input was retrained since.
    pub upstream: Vec<(String, String)>,
    pub metrics: Metrics,
    pub progress: Progress,
    /// Checkpoints kept on disk (a stage's `keep`; 2 unless it says otherwise).
    pub keep: usize,
    /// When the health signals `finish` reads from the metrics fire (the recipe's `health`).
    pub(super) health: crate::recipe::Thresholds,
    /// Outputs already written a tensor at a time (`write_output`), which `finish` lists.
    pub(super) streamed: Vec<String>,
    /// Tensors every checkpoint keeps beside the trained ones, by name, and a resume restores in
    /// place (a TR-DPO reference that moves with the policy).
    pub companions: Vec<(String, Tensor)>,
}

/// Ready `ctx.dir` for a run of `steps` steps whose output has content hash `hash` and whose
/// definition resolved to `resolved`; None when a finished run of the same hash is reused.
/// In a run of several processes the leader decides and readies the directory, then tells the
/// others, which read the checkpoint it chose and write nothing.
pub fn begin(ctx: &StageCtx, hash: String, resolved: &Value, steps: u64) -> Result<Option<RunDir>> {
    let world = ctx.world;
    if world.leads() {
        let run = lead(ctx, hash, resolved, steps);
        if world.size > 1 {
            world.from_leader(match &run { Ok(Some(_)) => GO, Ok(None) => UP_TO_DATE, Err(_) => FAILED })?;
        }
        return run;
    }
    match world.from_leader(0)? {
        GO => {}
        UP_TO_DATE => return Ok(None),
        _ => bail!("{}: rank 0 could not start the stage (its messages say why)", ctx.label),
    }
    Ok(Some(RunDir {
        _lock: None,
        leads: false,
        label: ctx.label.clone(),
        dir: ctx.dir.clone(),
        hash,
        resume: checkpoint::resume_state(&ctx.dir, ctx.opts.resume_from)?,
        upstream: vec![],
        metrics: Metrics::discard(),
        progress: Progress::silent(&ctx.label, steps),
        keep: 2,
        health: ctx.recipe.health,
        streamed: vec![],
        companions: vec![],
    }))
}

/// What the leader tells the other processes after `begin`.
const GO: i64 = 1;
const UP_TO_DATE: i64 = 0;
const FAILED: i64 = 2;

/// `begin` in the process that owns the directory.
fn lead(ctx: &StageCtx, hash: String, resolved: &Value, steps: u64) -> Result<Option<RunDir>> {
    let (label, dir) = (&ctx.label, &ctx.dir);
    let lock = lock(dir)?;
    if let Some(step) = ctx.opts.resume_from.filter(|_| dir.join("report.json").exists()) {
        bail!("{label}: --resume-from ckpt-{step}: the stage has finished ({}); it resumes interrupted runs (--fresh trains it again)", dir.display());
    }
    // What a killed run was writing when it died (checkpoints of steps it will not reach again;
    // a plot it was redrawing after its report, which leaves the stage up to date).
    crate::fsio::remove_stale_tmp(dir, None);
    if ctx.opts.fresh && dir.exists() {
        set_aside(dir)?;
    }
    if dir.join("report.json").exists() {
        // One read of the report: its hash, then the outputs it lists.
        let report = read_report(dir).ok();
        let kept = report.as_ref().and_then(|r| r["hash"].as_str()).map(String::from);
        match (kept.as_deref() == Some(hash.as_str()), report.as_ref().and_then(|r| super::outputs::changed(dir, r))) {
            (true, None) => {
                tracing::info!("{label}: up to date in {} (same definition, inputs and seed); reusing it. --fresh retrains.", dir.display());
                return Ok(None);
            }
            (true, Some(why)) => {
                tracing::info!("{label}: its outputs changed since it finished ({why}); retraining.");
                set_aside(dir)?;
            }
            (false, _) => {
                tracing::info!("{label}: changed since its run in {} finished:\n  {}", dir.display(), changes_since(dir, resolved).join("\n  "));
                // Kept under its hash, so that going back to that definition reuses it.
                match kept {
                    Some(h) if !variant_dir(dir, &h).exists() => {
                        std::fs::rename(dir, variant_dir(dir, &h)).with_context(|| format!("setting {} aside", dir.display()))?;
                        tracing::info!("{label}: kept that run as {}", variant_dir(dir, &h).display());
                    }
                    _ => set_aside(dir)?,
                }
            }
        }
    }
    // A finished run of this very definition, kept from an earlier `roux run`, comes back.
    let kept = variant_dir(dir, &hash);
    if !ctx.opts.fresh && !dir.exists() {
        // One read of its report: the hash, then the outputs it lists.
        let report = read_report(&kept).ok().filter(|r| r["hash"].as_str() == Some(hash.as_str()));
        if report.is_some_and(|r| super::outputs::changed(&kept, &r).is_none()) {
            std::fs::rename(&kept, dir).with_context(|| format!("restoring {}", kept.display()))?;
            tracing::info!("{label}: up to date: the run of this definition kept in {} is back in {}. --fresh retrains.", kept.display(), dir.display());
            return Ok(None);
        }
    }
    // Refused before anything is allocated, against the free memory of the stage's device.
    if ctx.memory > 0 {
        super::device::memory_guard(label, ctx.memory, super::device::device(ctx.stage.kind.device())?, ctx.stage.kind.accumulates())?;
    }
    if ctx.stage.kind.checkpoints_activations() {
        tracing::info!("{label}: activation checkpointing: only each block's input is kept, and the block runs again in the backward pass");
    }
    if let Some((adamw, muon)) = ctx.stage.kind.optimizer().and_then(|o| Some((o, o.muon.as_ref()?))) {
        tracing::info!("{label}: {}; AdamW (lr {}) on the embeddings, head, norms and biases", muon.describe(), adamw.lr);
    }
    if let Some((adamw, ratio)) = ctx.stage.kind.optimizer().and_then(|o| Some((o, o.loraplus_lr_ratio?))) {
        tracing::info!("{label}: LoRA+: the adapters' B matrices and every trained vector learn at {ratio} × lr ({}), the A matrices and the rest at lr", adamw.lr * ratio);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let resume = checkpoint::resume_state(dir, ctx.opts.resume_from)?;
    if let Some(s) = &resume {
        if s.recipe_hash != hash && !ctx.opts.force {
            bail!(
                "{} holds a checkpoint of a different definition of stage `{label}`; changed since:\n  {}\n\
                 Resuming would mix two experiments. --fresh sets that run aside (renamed, not deleted) and starts over; \
                 --force resumes anyway.",
                dir.display(),
                changes_since(dir, resolved).join("\n  ")
            );
        }
        tracing::info!("{label}: resuming from step {} of {steps} ({})", s.step, dir.join(&s.file).display());
        if ctx.opts.resume_from.is_some() {
            checkpoint::choose(dir, s)?;
        }
    }
    write_atomic(&dir.join("recipe.roux"), ctx.source.as_bytes())?;
    // A sweep's point also says where it lies (the experiment report's table and plots read it).
    let mut resolved = resolved.clone();
    if let (Some(o), false) = (resolved.as_object_mut(), ctx.recipe.sweep.is_empty()) {
        o.insert("sweep".into(), ctx.recipe.sweep.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>().into());
    }
    write_atomic(&dir.join("resolved.json"), serde_json::to_string_pretty(&resolved)?.as_bytes())?;
    let step0 = resume.as_ref().map(|s| s.step);
    Ok(Some(RunDir {
        _lock: Some(lock),
        leads: true,
        label: label.clone(),
        dir: dir.clone(),
        hash,
        resume,
        upstream: vec![],
        metrics: Metrics::open(dir, step0, ctx.opts.tensorboard)?,
        progress: Progress::new(label, step0.unwrap_or(0), steps),
        keep: 2,
        health: ctx.recipe.health,
        streamed: vec![],
        companions: vec![],
    }))
}

/// `begin` for a post-training stage: its hash covers its definition, the declarations it
/// mentions and its upstream outputs; its resolved definition carries the model it writes (or,
/// for LoRA, adapts), so `roux sample`, `export` and `merge` can read its weights.
pub fn begin_stage(ctx: &StageCtx, steps: u64) -> Result<Option<RunDir>> {
    let (recipe, stage) = (ctx.recipe, ctx.stage);
    let mut upstream = vec![];
    for s in &stage.after {
        let h = read_report_hash(&ctx.stage_dir(s)).with_context(|| format!("stage `{}` needs the output of `{s}`", stage.name))?;
        upstream.push((s.clone(), h));
    }
    let hash = super::hash::posttrain(recipe, stage, &upstream)?;
    // The language model a stage trains; a reward model is none, but its trunk is one (what
    // `export --to hf` writes as a sequence classifier).
    let (key, arch) = match &stage.kind {
        StageKind::Finetune(f) => ("model", Some(&f.model.arch)),
        StageKind::Ppo(p) => ("model", Some(&p.policy.arch)),
        StageKind::Dpo(d) => ("model", Some(&d.policy.arch)),
        StageKind::Grpo(g) => ("model", Some(&g.policy.arch)),
        StageKind::Distill(k) => ("model", Some(&k.student.arch)),
        StageKind::OnlineDpo(o) => ("model", Some(&o.policy.arch)),
        StageKind::BestOfN(b) => ("model", Some(&b.policy.arch)),
        StageKind::RewardModel(m) => ("reward_trunk", Some(&m.model.arch)),
        _ => ("model", None),
    };
    let mut resolved = json!({"experiment": recipe.experiment, "seed": recipe.seed, "stage": stage, "model": null, "inputs": super::hash::posttrain_inputs(recipe, stage)});
    resolved[key] = json!(arch.and_then(|a| recipe.model(a)));
    if let Some(t) = chat_template(ctx)? {
        resolved["chat_template"] = t;
    }
    Ok(begin(ctx, hash, &resolved, steps)?.map(|run| RunDir { upstream, ..run }))
}

/// The chat template a stage's model answers in, for `roux sample --chat` and `export`: its
/// data's (conversations, rendered with the recipe's or the checkpoint's template), else the
/// one the model it starts from answered in; none for a model never trained on conversations.
fn chat_template(ctx: &StageCtx) -> Result<Option<Value>> {
    let (model, data) = match &ctx.stage.kind {
        StageKind::Finetune(f) => (&f.model, &f.data),
        StageKind::RewardModel(r) => (&r.model, &r.data),
        StageKind::Ppo(p) => (&p.policy, &p.prompts),
        StageKind::Dpo(d) => (&d.policy, &d.data),
        StageKind::Grpo(g) => (&g.policy, &g.prompts),
        StageKind::Distill(k) => (&k.student, &k.data),
        StageKind::OnlineDpo(o) => (&o.policy, &o.prompts),
        StageKind::BestOfN(b) => (&b.policy, &b.prompts),
        _ => return Ok(None),
    };
    if let Some(t) = ctx.recipe.example_set(data).and_then(|s| s.chat.as_ref()) {
        return Ok(Some(serde_json::to_value(t)?));
    }
    let Some(up) = model.stage() else { return Ok(None) };
    // The stage it starts from has finished (its output was read above); one that records no
    // definition (an isoflop sweep's point) trained on no conversations.
    let path = ctx.stage_dir(up).join("resolved.json");
    if !path.exists() {
        return Ok(None);
    }
    let before: Value = serde_json::from_str(&super::files::read_capped(&path, 64 << 20)?).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(before.get("chat_template").filter(|t| t.is_object()).cloned())
}

impl RunDir {
    /// When resuming, restore the trainable tensors and their optimizer state; returns (steps
    /// done, data rng, stage-specific state), or (0, `rng`, null) for a fresh start.
    /// A newest checkpoint that cannot be read (damaged on disk since it was written) gives way
    /// to the older one kept beside it, with a warning; the metrics then restart from there.
    pub fn restore(&mut self, names: &[String], params: &[Tensor], opt: &mut Optimizer, rng: Rng) -> Result<(u64, Rng, Value)> {
        let Some(newest) = self.resume.clone() else { return Ok((0, rng, Value::Null)) };
        let err = match checkpoint::load(&self.dir, &newest, names, params, opt, &self.companions) {
            Ok(()) => return Ok((newest.step, newest.data_rng, newest.extra)),
            Err(e) => e,
        };
        for older in checkpoint::older_states(&self.dir, newest.step).into_iter().filter(|o| o.recipe_hash == newest.recipe_hash) {
            if checkpoint::load(&self.dir, &older, names, params, opt, &self.companions).is_ok() {
                tracing::warn!("{}: the newest checkpoint cannot be used ({err:#}); resuming from the older one, step {}", self.label, older.step);
                if self.leads {
                    self.metrics = Metrics::open(&self.dir, Some(older.step), self.metrics.tensorboard())?;
                }
                self.progress = Progress::new(&self.label, older.step, self.progress.total());
                let back = (older.step, older.data_rng, older.extra.clone());
                self.resume = Some(older);
                return Ok(back);
            }
        }
        Err(err)
    }

    /// Checkpoint after `state.step` steps; the hash and file name are filled in here. `weight(i)`
    /// gives trainable tensor i whole (`held[i]` this process's); every process calls it, the
    /// leading one writes (`checkpoint::save`).
    pub fn save(&self, names: &[String], held: &[Tensor], weight: &dyn Fn(usize) -> Result<Tensor>, opt: &Optimizer, state: State) -> Result<()> {
        let state = State { recipe_hash: self.hash.clone(), file: format!("ckpt-{}.safetensors", state.step), adam_t: opt.t, ..state };
        checkpoint::save(self.leads.then_some(self.dir.as_path()), names, held, weight, opt, &state, self.keep, &self.companions)
    }

    /// Checkpoint with no training-loss window or best validation loss (post-training stages).
    pub fn checkpoint(&self, step: u64, names: &[String], params: &[Tensor], opt: &Optimizer, rng: Rng, extra: Value) -> Result<()> {
        let state = State { step, adam_t: opt.t, data_rng: rng, recipe_hash: String::new(), file: String::new(), best_val: None, window_loss: (0.0, 0), extra };
        self.save(names, params, &|i| Ok(params[i].shallow_clone()), opt, state)
    }

    pub fn log(&mut self, v: Value) -> Result<()> {
        self.metrics.write_json(&v)
    }
}

/// A finished run: its report and resolved definition.
pub struct Finished {
    pub dir: PathBuf,
    pub report: Value,
    pub resolved: Value,
}

/// The finished run in `dir`, or an error saying why it is not one.
pub fn finished(dir: &Path) -> Result<Finished> {
    let read = |file: &str| -> Result<Value> {
        let p = dir.join(file);
        let text = super::files::read_capped(&p, 64 << 20).with_context(|| format!("{} is not a finished run (cannot read {file})", dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
    };
    Ok(Finished { dir: dir.to_path_buf(), report: read("report.json")?, resolved: read("resolved.json")? })
}

/// The directory holding every stage of the experiment that `run` (a stage's directory, as
/// given on the command line, relative or not) belongs to.
pub fn experiment_dir(run: &Path) -> PathBuf {
    match run.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn read_report_hash(dir: &Path) -> Result<String> {
    let v = read_report(dir)?;
    v["hash"].as_str().map(String::from).with_context(|| format!("{} has no hash", dir.join("report.json").display()))
}

/// A run's report.json, parsed.
fn read_report(dir: &Path) -> Result<Value> {
    let p = dir.join("report.json");
    let text = super::files::read_capped(&p, 64 << 20).with_context(|| format!("no finished run in {}", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// Refuse to write a tool's output into `out` when it holds any of `markers`: a stage's run
/// directory (its report, state or metrics) or a model roux reads, whose files the output would
/// replace while the run still claims them.
pub fn refuse_to_overwrite(out: &Path, markers: &[&str]) -> Result<()> {
    if let Some(m) = markers.iter().find(|m| out.join(m).exists()) {
        bail!("{} holds a roux run ({m} is there): writing into it would replace the files the run stands for; choose another output folder", out.display());
    }
    Ok(())
}

/// Where a finished run of content hash `hash` is kept while another definition of its stage
/// occupies `dir`: `<stage>.<first 16 hex digits>` beside it.
pub fn variant_dir(dir: &Path, hash: &str) -> PathBuf {
    let short: String = hash.chars().filter(char::is_ascii_hexdigit).take(16).collect();
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{short}"));
    dir.with_file_name(name)
}

/// Rename an existing run directory out of the way instead of deleting it: `NAME.old-SECONDS`,
/// or `NAME.old-SECONDS-2`, … when a run was set aside in the same second (renaming onto a
/// directory that holds files fails, so nothing set aside before is touched).
pub fn set_aside(dir: &Path) -> Result<()> {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for n in 1..=1000 {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(if n == 1 { format!(".old-{ts}") } else { format!(".old-{ts}-{n}") });
        let to = dir.with_file_name(name);
        if to.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::rename(dir, &to).with_context(|| format!("setting {} aside as {}", dir.display(), to.display()))?;
        tracing::info!("set the previous run aside as {}", to.display());
        return Ok(());
    }
    bail!("setting {} aside: a thousand runs were set aside in the same second", dir.display())
}
