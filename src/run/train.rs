//! The loop of a `train` stage, written out: sample a batch, forward, backward, clip, AdamW,
//! log, evaluate, checkpoint. Resumable at any checkpoint, exactly.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

use super::adamw::AdamW;
use super::checkpoint::{self, State};
use super::data::{batch, Corpus, Rng};
use super::model::Model;
use super::progress::{Metric, Metrics, Progress};
use crate::plan::plan_model;
use super::RunOptions;
use crate::recipe::{ModelSpec, Recipe, TrainSpec};
use crate::schedule::lr_at;

/// What the stage's output depends on: its definition, its model, its data and the seed.
pub fn stage_hash(recipe: &Recipe, spec: &ModelSpec, t: &TrainSpec, upstream: Option<&str>) -> String {
    let key = json!({
        "seed": recipe.seed,
        "train": t,
        "model": spec,
        "data": recipe.data(&t.data),
        "upstream": upstream,
    });
    checkpoint::fnv1a(key.to_string().as_bytes())
}

pub fn run_train(recipe: &Recipe, source: &str, name: &str, t: &TrainSpec, dir: &Path, opts: &RunOptions) -> Result<()> {
    let spec = recipe.model(&t.model).context("checked recipe names its model")?;
    run_train_model(recipe, source, name, spec, t, dir, opts)
}

/// Train `spec` as `t` says (the model need not be one of the recipe's declarations: sweeps
/// size their own).
pub fn run_train_model(recipe: &Recipe, source: &str, name: &str, spec: &ModelSpec, t: &TrainSpec, dir: &Path, opts: &RunOptions) -> Result<()> {
    let data_spec = recipe.data(&t.data).context("checked recipe names its data")?;
    // An upstream stage's output hash makes this stage's hash change when it is retrained.
    let upstream = match &t.init_from {
        Some(up) => Some(read_report_hash(&dir.with_file_name(up)).with_context(|| format!("stage `{name}` needs the output of `{up}`"))?),
        None => None,
    };
    let hash = stage_hash(recipe, spec, t, upstream.as_deref());
    let resolved = json!({"experiment": recipe.experiment, "seed": recipe.seed, "stage": name, "model": spec, "data": data_spec, "train": t});
    let Some(resume) = prepare_run_dir(name, dir, &hash, &resolved, source, opts)? else { return Ok(()) };

    let device = super::device(t.device)?;
    // Refuse a model that cannot fit before allocating it (an IsoFLOP prediction can be huge).
    let plan = plan_model(&crate::lower::lower_model(spec), t.batch, t.context);
    if device == tch::Device::Cpu {
        memory_guard(name, plan.train_memory_bytes)?;
    }
    tch::manual_seed(recipe.seed as i64);
    let mut model = Model::new(spec, device);
    if t.precision == crate::recipe::Precision::Bf16 {
        model.set_precision(tch::Kind::BFloat16);
    }
    if let Some(up) = &t.init_from {
        let path = dir.with_file_name(up).join("model.safetensors");
        let tensors = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
        model.load(&tensors).with_context(|| format!("initialising from {}", path.display()))?;
    }
    let mut opt = AdamW::new(&model.params, &t.optimizer);
    // A BPE tokenizer comes from the stage this one continues, so both read the same ids.
    if let (Some(up), crate::recipe::Tokenizer::Bpe { .. }) = (&t.init_from, data_spec.tokenizer) {
        let from = dir.with_file_name(up).join(super::tokenize::FILE);
        if from.exists() && !dir.join(super::tokenize::FILE).exists() {
            std::fs::copy(&from, dir.join(super::tokenize::FILE))?;
        }
    }
    let corpus = Corpus::load(data_spec, dir)?;
    let mut rng = Rng(recipe.seed ^ 0x5EED_DA7A);
    let mut step0 = 0;
    let mut best_val: Option<f64> = None;
    let mut window_loss = (0.0f64, 0u64);
    if let Some(s) = &resume {
        checkpoint::load(dir, s, &mut model, &mut opt)?;
        rng = s.data_rng;
        step0 = s.step;
        best_val = s.best_val;
        window_loss = s.window_loss;
        tracing::info!("{name}: resuming from step {} of {} ({})", s.step, t.steps, dir.join(&s.file).display());
    }
    let mut metrics = Metrics::open(dir, Some(step0))?;

    tracing::info!(
        "{name}: training `{}` ({} params) on `{}` for {} steps × {} tokens on {:?}",
        spec.name,
        model.numel(),
        data_spec.name,
        t.steps,
        t.tokens_per_step(),
        device
    );
    let progress = Progress::new(name, step0, t.steps);
    let mut skipped = 0u64;
    let started = Instant::now();
    let mut window = (Instant::now(), 0u64, window_loss.0, window_loss.1); // (since, tokens, loss sum, steps)
    let (mut last_loss, mut last_val) = (f64::NAN, None);
    let mut last_ckpt: Option<u64> = resume.as_ref().map(|s| s.step);

    for step in step0..t.steps {
        // Seeding libtorch per step makes dropout masks a function of the step alone,
        // so a resumed run draws exactly what an uninterrupted one would.
        tch::manual_seed((recipe.seed ^ step.wrapping_mul(0x9E37_79B9)) as i64);
        let lr = lr_at(&t.schedule, t.optimizer.lr, step, t.steps);
        let (x, y) = batch(&corpus.train, t.batch, t.context, &mut rng, device);
        opt.zero_grad();
        let (loss, ce, moe_stats) = model.loss_parts(&x, &y, true);
        loss.backward();
        let grad_norm = opt.clip_grad_norm(t.grad_clip);
        let loss_v = ce.double_value(&[]);
        if (!loss_v.is_finite() || !grad_norm.is_finite()) && skipped < t.max_skips {
            // `on_nonfinite = skip`: drop this step's update (the batch is consumed, so a
            // resumed run skips the same step) and go on, up to `max_skips` times.
            skipped += 1;
            tracing::warn!("{name}: step {}: non-finite loss or gradient (loss {loss_v}, gradient norm {grad_norm}); skipped ({skipped} of at most {})", step + 1, t.max_skips);
            continue;
        }
        if !loss_v.is_finite() || !grad_norm.is_finite() {
            bail!(
                "stage `{name}`: {} at step {} (loss {loss_v}, gradient norm {grad_norm}). The last good checkpoint is {}.\n\
                 Likely cause: a learning rate too high for this model (lr {lr:.3e}); lower `lr`, add warmup, or set `grad_clip`.",
                if loss_v.is_finite() { "non-finite gradient" } else { "non-finite loss" },
                step + 1,
                last_ckpt.map_or("none (no checkpoint yet)".into(), |s| format!("step {s} in {}", dir.display()))
            );
        }
        opt.step(lr);
        let done = step + 1;
        window.1 += t.tokens_per_step();
        window.2 += loss_v;
        window.3 += 1;
        last_loss = loss_v;

        // Throughput is measured before evaluation so it counts training steps only.
        let tok_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
        let eval_now = done % t.eval_every == 0 || done == t.steps;
        let val = if eval_now { Some(evaluate(&model, &corpus.val, t, recipe.seed)) } else { None };
        if let Some(v) = val {
            best_val = Some(best_val.map_or(v, |b: f64| b.min(v)));
            last_val = Some(v);
        }
        progress.update(done, t.log_every, loss_v, lr, tok_s, val);
        if done % t.log_every == 0 || val.is_some() || done == t.steps {
            let aux = (!moe_stats.is_empty()).then(|| loss.double_value(&[]) - loss_v);
            metrics.write(&Metric {
                aux_loss: aux,
                moe: moe_stats.iter().map(moe_json).collect(),
                step: done,
                tokens: done * t.tokens_per_step(),
                loss: window.2 / window.3 as f64,
                val_loss: val,
                lr,
                grad_norm,
                tokens_per_s: tok_s,
            })?;
            window = (Instant::now(), 0, 0.0, 0);
        }
        let ckpt_every = if t.checkpoint_every > 0 { t.checkpoint_every } else { t.eval_every };
        if done % ckpt_every == 0 || done == t.steps {
            let state = State { step: done, adam_t: opt.t, data_rng: rng, recipe_hash: hash.clone(), file: format!("ckpt-{done}.safetensors"), best_val, window_loss: (window.2, window.3), extra: serde_json::Value::Null };
            checkpoint::save(dir, &model, &opt, &state)?;
            last_ckpt = Some(done);
        }
    }

    checkpoint::write_tensors_atomic(&dir.join("model.safetensors"), &model.named())?;
    let wall = started.elapsed().as_secs_f64();
    let trained_tokens = (t.steps - step0) * t.tokens_per_step();
    let report = json!({
        "experiment": recipe.experiment,
        "stage": name,
        "kind": "train",
        "model": spec.name,
        "params": model.numel(),
        "params_plan": plan.params_total,
        "steps": t.steps,
        "tokens": t.steps * t.tokens_per_step(),
        "final_loss": last_loss,
        "final_val_loss": last_val,
        "best_val_loss": best_val,
        "wall_seconds": wall,
        "tokens_per_s": trained_tokens as f64 / wall.max(1e-9),
        "model_flops_per_s": plan.flops_per_token_model * trained_tokens as f64 / wall.max(1e-9),
        "device": format!("{device:?}"),
        "precision": t.precision,
        "resumed_from_step": resume.as_ref().map(|s| s.step),
        "hash": hash,
    });
    checkpoint::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    if let Err(e) = crate::report::plots::write_run_plots(dir, &format!("{} / {name}", recipe.experiment)) {
        tracing::warn!("{name}: could not draw plots: {e}");
    }
    tracing::info!(
        "{name}: done in {} — val loss {} nats/token; wrote {}",
        super::progress::format_secs(wall),
        last_val.map_or("-".into(), |v: f64| format!("{v:.4}")),
        dir.display()
    );
    Ok(())
}

/// Mean validation loss over a fixed set of batches (the same ones at every evaluation).
pub fn evaluate(model: &Model, val: &[u32], t: &TrainSpec, seed: u64) -> f64 {
    let mut rng = Rng(seed ^ 0xE7A1);
    tch::no_grad(|| {
        let mut sum = 0.0;
        for _ in 0..t.eval_batches {
            let (x, y) = batch(val, t.batch, t.context, &mut rng, model.device);
            sum += model.loss(&x, &y, false).double_value(&[]);
        }
        sum / t.eval_batches as f64
    })
}

/// Ready a stage's run directory under the caching and resume rules every stage shares:
/// - `--fresh` renames an existing run aside;
/// - a finished run of the same hash is reused: returns None;
/// - a finished run of another hash (definition or inputs changed) is renamed aside, retrained;
/// - an interrupted run of another hash is refused with what changed, unless `--force`.
///
/// Otherwise writes the recipe and resolved definition and returns the state to resume from.
pub(crate) fn prepare_run_dir(name: &str, dir: &Path, hash: &str, resolved: &serde_json::Value, source: &str, opts: &RunOptions) -> Result<Option<Option<State>>> {
    if opts.fresh && dir.exists() {
        set_aside(dir)?;
    }
    if dir.join("report.json").exists() {
        if read_report_hash(dir).ok().as_deref() == Some(hash) {
            tracing::info!("{name}: up to date in {} (same definition, inputs and seed); reusing it. --fresh retrains.", dir.display());
            return Ok(None);
        }
        tracing::info!("{name}: its definition or inputs changed since it finished; retraining.");
        set_aside(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let resume = checkpoint::read_state(dir)?;
    if let Some(s) = &resume {
        if s.recipe_hash != hash && !opts.force {
            let before: serde_json::Value = std::fs::read_to_string(dir.join("resolved.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
            let mut changes = vec![];
            diff("", &before, resolved, &mut changes);
            if changes.is_empty() {
                changes.push("an upstream stage's output".into());
            }
            bail!(
                "{} holds a checkpoint of a different definition of stage `{name}`; changed since:\n  {}\n\
                 Resuming would mix two experiments. --fresh sets that run aside (renamed, not deleted) and starts over; \
                 --force resumes anyway.",
                dir.display(),
                changes.join("\n  ")
            );
        }
    }
    checkpoint::write_atomic(&dir.join("recipe.roux"), source.as_bytes())?;
    checkpoint::write_atomic(&dir.join("resolved.json"), serde_json::to_string_pretty(resolved)?.as_bytes())?;
    Ok(Some(resume))
}

pub(crate) fn read_report_hash(dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(dir.join("report.json")).with_context(|| format!("no finished run in {}", dir.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["hash"].as_str().map(String::from).context("report.json has no hash")
}

/// Rename an existing run directory out of the way instead of deleting it.
pub(crate) fn set_aside(dir: &Path) -> Result<()> {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".old-{ts}"));
    let to = dir.with_file_name(name);
    std::fs::rename(dir, &to).with_context(|| format!("setting {} aside", dir.display()))?;
    tracing::info!("set the previous run aside as {}", to.display());
    Ok(())
}

fn moe_json(s: &super::moe::MoeStats) -> serde_json::Value {
    let load: Vec<f64> = Vec::<f64>::try_from(&s.load.to_kind(tch::Kind::Double)).unwrap_or_default();
    let mut v = json!({
        "layer": s.layer,
        "load": load,
        "dropped": s.dropped.double_value(&[]),
        "entropy": s.entropy.double_value(&[]),
    });
    for (name, t) in &s.parts {
        v[*name] = json!(t.double_value(&[]));
    }
    v
}

/// Refuse a CPU run whose planned memory exceeds what the machine has available.
fn memory_guard(name: &str, need: u64) -> Result<()> {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else { return Ok(()) };
    let available = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    if let Some(avail) = available {
        if need > avail {
            bail!(
                "stage `{name}` needs about {:.2} GiB (the plan's training-memory estimate: weights, gradients, AdamW moments and activations) \
                 but only {:.2} GiB is available; lower `batch` or the context, or run on a larger machine",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// The leaves that differ between two JSON values, as `path: old → new`.
fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}
