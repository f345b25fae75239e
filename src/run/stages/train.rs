//! The loop of a `train` stage, written out: sample a batch, forward, backward, clip, AdamW,
//! log, evaluate, checkpoint. Resumable at any checkpoint, exactly.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;
use tch::Tensor;

use crate::plan::plan_model;
use crate::recipe::{ModelSpec, TrainSpec};
use crate::rng::Rng;
use crate::run::kit::in_loop::InLoop;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::checkpoint::State;
use crate::run::kit::data::Corpus;
use crate::run::kit::deferred::Deferred;
use crate::run::kit::dist::{Reduce, World};
use crate::run::kit::profile::Profiler;
use crate::run::kit::progress::{format_secs, Metric};
use crate::run::kit::files::{with_mapped, FileTensor};
use crate::run::kit::{device, hash, lifecycle, tokenize, StageCtx};
use crate::run::model::moe::MoeStats;
use crate::run::model::expert_parallel::Share;
use crate::run::model::Model;
use crate::run::kit::sampling::Sampler;
use crate::run::kit::seqs::{seed_step};
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, t: &TrainSpec) -> Result<()> {
    let spec = ctx.recipe.model(&t.model).context("checked recipe names its model")?;
    run_model(ctx, spec, t)
}

/// Train `spec` as `t` says, in `ctx.dir` (the model need not be one of the recipe's
/// declarations: sweeps size their own).
pub fn run_model(ctx: &StageCtx, spec: &ModelSpec, t: &TrainSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.as_str());
    let data_spec = recipe.data(&t.data).context("checked recipe names its data")?;
    // An upstream stage's output hash makes this stage's hash change when it is retrained.
    let upstream = match &t.init_from {
        Some(up) => Some(lifecycle::read_report_hash(&ctx.stage_dir(up)).with_context(|| format!("stage `{name}` needs the output of `{up}`"))?),
        None => None,
    };
    let hash = hash::train(recipe, spec, t, upstream.as_deref());
    let resolved = json!({"experiment": recipe.experiment, "seed": recipe.seed, "stage": name, "model": spec, "data": data_spec, "train": t, "inputs": hash::train_inputs(recipe, spec, t)});
    let Some(mut run) = lifecycle::begin(ctx, hash, &resolved, t.steps)? else { return Ok(()) };
    let dir = run.dir.clone();
    let world = ctx.world;
    // Each process's rows of a global batch, in `accumulate` micro-batches of `micro` rows.
    let micro = t.micro_batch(name, world.size).map_err(anyhow::Error::msg)?;

    let device = device::device(t.device)?;
    world.use_device(name, device)?;
    // Refuse a model that cannot fit before allocating it (an IsoFLOP prediction can be huge).
    let graph = crate::lower::lower_model(spec);
    let plan = plan_model(&graph, t.batch, t.context);
    // On several processes, what each holds (its share of the experts, its slice of the moments).
    // (One micro-batch's activations at a time: `accumulate` lowers the need, as `roux plan` says.)
    let need = crate::plan::train_process(name, &ctx.stage.kind, &graph, world.size, device.is_cuda()).map_or(plan.train_memory_bytes, |p| p.total_bytes);
    device::memory_guard(name, need, device, ctx.stage.kind.accumulates())?;
    // Expert parallel: each process holds its own experts only, from the start.
    let experts = world.experts_layout(name, t.expert_parallel)?;
    let share = experts.as_ref().map(|l| Share { parts: l.group.size as i64, part: l.group.rank as i64 });
    let params_whole: u64 = graph.params().iter().map(|p| p.numel()).sum();
    tch::manual_seed(recipe.seed as i64);
    let mut model = match spec.checkpoint {
        Some(_) => crate::run::kit::hf::load(spec, device, share)?,
        None => Model::from_graph(graph, device, share)?,
    };
    if t.precision == crate::recipe::Precision::Bf16 {
        model.set_precision(tch::Kind::BFloat16);
    }
    model.set_recompute(t.activation_checkpointing);
    model.set_z_loss(t.z_loss);
    model.experts_across = experts.as_ref().map(|l| l.exchange.clone());
    if let Some(l) = &experts {
        tracing::info!("{name}: the experts of every MoE layer divided over {} groups of {} processes", world.size / l.group.size, l.group.size);
        tracing::info!("{name}: this process holds {} of the {params_whole} parameters", model.numel());
    }
    if let Some(up) = &t.init_from {
        let path = ctx.stage_dir(up).join("model.safetensors");
        with_mapped(&path, |tensors| model.load(tensors)).with_context(|| format!("initialising from {}", path.display()))?;
    }
    // ZeRO-1: this process's slice of the moments only, from the start.
    let shard = t.shard_optimizer.then_some(world);
    let mut opt = match experts {
        Some(l) => Optimizer::divided(&model.params, &t.optimizer, model.divided(), l.group, l.replicas, shard),
        None => Optimizer::sharded(&model.params, &model.names, &t.optimizer, shard),
    };
    // A BPE tokenizer comes from the stage this one continues, so both read the same ids; an
    // imported model's from its checkpoint (and, kept beside the model, serves `sample` and `export`).
    let tokenizer_from = match (&t.init_from, &data_spec.tokenizer) {
        (Some(up), crate::recipe::Tokenizer::Bpe { .. }) => Some(ctx.stage_dir(up).join(tokenize::FILE)),
        (_, crate::recipe::Tokenizer::Model { model, .. }) => recipe.model(model).and_then(|m| m.checkpoint.as_ref()).map(|c| c.dir.join(tokenize::FILE)),
        _ => None,
    };
    if let Some(from) = tokenizer_from {
        let to = dir.join(tokenize::FILE);
        if from.exists() && !to.exists() {
            crate::fsio::copy_atomic(&from, &to, tokenize::MAX_BYTES).map_err(anyhow::Error::msg)?;
        }
    }
    let checkpoint = match &data_spec.tokenizer {
        crate::recipe::Tokenizer::Model { model, .. } => recipe.model(model).and_then(|m| m.checkpoint.as_ref()).map(|c| c.dir.clone()),
        _ => None,
    };
    let corpus = if data_spec.mix.is_empty() {
        Corpus::load(data_spec, &dir, checkpoint.as_deref())?
    } else {
        let parts: Vec<(&crate::recipe::DataSpec, f64)> = data_spec.mix.iter().filter_map(|(n, w)| Some((recipe.data(n)?, *w))).collect();
        Corpus::load_mix(&parts, &dir, checkpoint.as_deref())?
    };
    let sampler = t.sample.as_ref().map(|s| Sampler::new(s, &dir)).transpose()?;
    let params: Vec<Tensor> = model.params.iter().map(|p| p.shallow_clone()).collect();
    // The weights files (`model.safetensors`, the best), whole: written a tensor at a time.
    let entries: Vec<FileTensor> = model.names.iter().enumerate().map(|(j, n)| FileTensor { name: n.clone(), shape: model.whole_size(j), kind: params[j].kind() }).collect();
    run.keep = t.keep;
    let (step0, mut rng, extra) = run.restore(&model.names, &params, &mut opt, Rng(recipe.seed ^ 0x5EED_DA7A))?;
    opt.broadcast_state(world)?;
    // bf16: the weights cast once per step into one flat buffer (`ROUX_SHADOW=0` casts each at
    // its use, for comparison); after the restore, which wrote the float32 weights.
    if model.compute == tch::Kind::BFloat16 && std::env::var("ROUX_SHADOW").map_or(true, |v| v != "0") {
        let copies = opt.shadow(&params, tch::Kind::BFloat16, &model.shadow_exclusions());
        model.use_shadow(copies);
    }
    // Evaluations since the best validation loss (for `patience`) and the best one's step.
    let (mut since_best, mut best_step) = (extra["since_best"].as_u64().unwrap_or(0), extra["best_step"].as_u64());
    let resumed = run.resume.as_ref().map(|s| (s.step, s.best_val, s.window_loss));
    let (mut best_val, window_loss) = resumed.map_or((None, (0.0, 0)), |(_, b, w)| (b, w));

    tracing::info!(
        "{name}: training `{}` ({} params) on `{}` for {} steps × {} tokens on {}",
        spec.name,
        model.numel(),
        data_spec.name,
        t.steps,
        t.tokens_per_step(),
        crate::run::kit::device::name(device)
    );
    let mut skipped = 0u64;
    let started = Instant::now();
    let mut window = (Instant::now(), 0u64, window_loss.0, window_loss.1); // (since, tokens, loss sum, steps)
    let (mut last_loss, mut last_val) = (f64::NAN, None);
    let mut last_ckpt: Option<u64> = resumed.map(|r| r.0);
    let mut stopped: Option<u64> = None;
    // With no step to skip (`max_skips = 0`, the default) the loop reads the device only at
    // log, evaluation and checkpoint steps; skipping decides per step, so it reads every step.
    let mut deferred = (t.max_skips == 0).then(|| Deferred::new(device));
    let mut profiler = ctx.opts.profile.map(|steps| Profiler::new(name, steps, device, dir.join(TRACE)));
    let mut in_loop = InLoop::load(recipe, t, &dir)?;

    for step in step0..t.steps {
        // Seeding libtorch per step makes dropout masks a function of the step alone,
        // so a resumed run draws exactly what an uninterrupted one would.
        seed_step(recipe.seed, step);
        let lr = lr_at(&t.schedule, t.optimizer.lr, step, t.steps);
        // Every process draws the whole global batch (the same sampler state) and keeps its rows.
        let (x, y) = corpus.train_batch(t.batch, t.context, &mut rng, device);
        if let Some(p) = profiler.as_mut() {
            p.at_step_start(step + 1)?;
        }
        opt.zero_grad();
        let (loss, ce, moe_stats) = forward_backward(&model, &mut opt, &world.shard(&x), &world.shard(&y), micro, world)?;
        let done = step + 1;
        let ckpt_every = if t.checkpoint_every > 0 { t.checkpoint_every } else { t.eval_every };
        let eval_now = done % t.eval_every == 0 || done == t.steps;
        let sync_point = done % t.log_every == 0 || eval_now || done % ckpt_every == 0;
        let (loss_v, grad_norm) = if let Some(d) = deferred.as_mut() {
            // Nothing is read back between sync points: a non-finite step leaves the weights
            // alone on the device and is reported (as the first one) at the next sync point.
            let norm = opt.grad_norm_clipped(t.grad_clip);
            let found_inf = d.record(done, lr, &ce, &norm);
            opt.step_unless(lr, &found_inf)?;
            opt.all_gather_params(world)?;
            window.3 += 1;
            window.1 += t.tokens_per_step();
            if let Some(p) = profiler.as_mut() {
                p.at_step_end(done)?;
            }
            if !sync_point {
                run.progress.update(done, t.log_every, last_loss, lr, window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9), None);
                continue;
            }
            if let Some((at, loss_v, grad_norm, lr)) = d.first_bad() {
                bail!("{}", nonfinite(name, at, loss_v, grad_norm, lr, last_ckpt, &dir));
            }
            window.2 += d.take_sum();
            (ce.double_value(&[]), norm.double_value(&[]))
        } else {
            let grad_norm = opt.clip_grad_norm(t.grad_clip);
            let loss_v = ce.double_value(&[]);
            if (!loss_v.is_finite() || !grad_norm.is_finite()) && skipped < t.max_skips {
                // `on_nonfinite = skip`: drop this step's update (the batch is consumed, so a
                // resumed run skips the same step) and go on, up to `max_skips` times.
                skipped += 1;
                tracing::warn!("{name}: step {done}: non-finite loss or gradient (loss {loss_v}, gradient norm {grad_norm}); skipped ({skipped} of at most {})", t.max_skips);
                continue;
            }
            if !loss_v.is_finite() || !grad_norm.is_finite() {
                bail!("{}", nonfinite(name, done, loss_v, grad_norm, lr, last_ckpt, &dir));
            }
            opt.step(lr)?;
            opt.all_gather_params(world)?;
            window.1 += t.tokens_per_step();
            window.2 += loss_v;
            window.3 += 1;
            if let Some(p) = profiler.as_mut() {
                p.at_step_end(done)?;
            }
            (loss_v, grad_norm)
        };
        last_loss = loss_v;

        // Throughput is measured before evaluation so it counts training steps only.
        let tok_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
        let val = if eval_now { Some(evaluate(&model, &corpus, t, recipe.seed)) } else { None };
        let scored = if eval_now { Some(in_loop.score(&model)?) } else { None };
        if let Some(v) = val {
            if best_val.is_none_or(|b: f64| v < b) {
                since_best = 0;
                best_step = Some(done);
                if t.keep_best {
                    run.write_output(BEST, &entries, |j| Ok(model.whole(j)))?;
                }
            } else {
                since_best += 1;
            }
            best_val = Some(best_val.map_or(v, |b: f64| b.min(v)));
            last_val = Some(v);
        }
        run.progress.update(done, t.log_every, loss_v, lr, tok_s, val);
        if done % t.log_every == 0 || val.is_some() || done == t.steps {
            let aux = (!moe_stats.is_empty() || t.z_loss > 0.0).then(|| loss.double_value(&[]) - loss_v);
            run.metrics.write(&Metric {
                aux_loss: aux,
                moe: moe_stats.iter().map(moe_json).collect(),
                step: done,
                tokens: done * t.tokens_per_step(),
                loss: window.2 / window.3 as f64,
                val_loss: val,
                lr,
                grad_norm,
                tokens_per_s: tok_s,
                val_choices_acc: scored.and_then(|s| s.choices).map(|c| c.0),
                val_choices_acc_norm: scored.and_then(|s| s.choices).map(|c| c.1),
                val_sets: scored.map(|s| s.losses.clone()).unwrap_or_default(),
            })?;
            window = (Instant::now(), 0, 0.0, 0);
        }
        if let Some(s) = sampler.as_ref().filter(|s| s.due(done, t.steps)) {
            s.sample(&run, &model, done)?;
        }
        if done % ckpt_every == 0 || done == t.steps {
            let extra = json!({"since_best": since_best, "best_step": best_step});
            let state = State { step: done, adam_t: opt.t, data_rng: rng, recipe_hash: String::new(), file: String::new(), best_val, window_loss: (window.2, window.3), extra };
            // Divided experts and sharded moments are gathered a tensor at a time as the file
            // is written.
            run.save(&model.names, &params, &|j| Ok(model.whole(j)), &opt, state)?;
            last_ckpt = Some(done);
        }
        if let Some(p) = t.patience.filter(|p| since_best >= *p) {
            tracing::info!("{name}: stopping early at step {done} of {}: no better validation loss in {p} evaluations (the best, {:.4}, at step {})", t.steps, best_val.unwrap_or(f64::NAN), best_step.unwrap_or(0));
            stopped = Some(done);
            break;
        }
    }

    let wall = started.elapsed().as_secs_f64();
    // The last step may have been skipped (`on_nonfinite = skip`) and its evaluation with it:
    // a stage finishes only with weights that still give a finite validation loss.
    let final_val = last_val.unwrap_or_else(|| evaluate(&model, &corpus, t, recipe.seed));
    if !final_val.is_finite() {
        bail!("{name}: the validation loss of the final weights is {final_val}; not marking the stage finished (lower the learning rate or set `grad_clip`; {skipped} of its steps were skipped)");
    }
    run.write_output("model.safetensors", &entries, |j| Ok(model.whole(j)))?;
    if !run.leads {
        return Ok(());
    }
    let last_val = Some(final_val);
    let best_val = Some(best_val.map_or(final_val, |b: f64| b.min(final_val)));
    let trained_tokens = (stopped.unwrap_or(t.steps) - step0) * t.tokens_per_step();
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "train",
        "model": spec.name,
        "params": params_whole,
        "params_per_process": model.numel(),
        "params_plan": plan.params_total,
        "steps": t.steps,
        "tokens": t.steps * t.tokens_per_step(),
        "final_loss": last_loss,
        "final_val_loss": last_val,
        "best_val_loss": best_val,
        "wall_seconds": wall,
        "tokens_per_s": trained_tokens as f64 / wall.max(1e-9),
        "model_flops_per_s": plan.flops_per_token_model * trained_tokens as f64 / wall.max(1e-9),
        "device": crate::run::kit::device::name(device),
        "precision": t.precision,
        "resumed_from_step": resumed.map(|r| r.0),
        "processes": world.size,
        "adam_moment_bytes_per_process": opt.moment_bytes(),
        "stopped_early_at": stopped,
        "best_step": best_step,
    });
    in_loop.report(&mut report);
    // (A best kept before a resume is listed with the outputs that reuse verifies too.)
    if t.keep_best && dir.join(BEST).exists() {
        run.list_output(BEST);
    }
    run.finish(&[], report, &ctx.title())?;
    tracing::info!(
        "{name}: done in {} — val loss {} nats/token; wrote {}",
        format_secs(wall),
        last_val.map_or("-".into(), |v: f64| format!("{v:.4}")),
        dir.display()
    );
    Ok(())
}

/// Forward and backward over this process's rows `x`, `y` in micro-batches of `micro` rows, the
/// gradients averaged over the micro-batches and then over the processes: the gradient of the
/// mean loss over the global batch, as one process taking it whole computes it. Returns the
/// loss and cross-entropy over the global batch (detached) and the last micro-batch's MoE
/// statistics (a router sees one micro-batch at a time, so its capacity and aux losses do too).
fn forward_backward(model: &Model, opt: &mut Optimizer, x: &Tensor, y: &Tensor, micro: usize, world: &World) -> Result<(Tensor, Tensor, Vec<MoeStats>)> {
    let k = x.size()[0] / micro as i64;
    if k == 1 && !world.grouped() {
        let (loss, ce, stats) = model.loss_parts(x, y, true);
        model.backward(&loss)?;
        return Ok((loss, ce, stats));
    }
    let (mut both, mut last) = (Tensor::zeros([2], (tch::Kind::Double, x.device())), vec![]);
    for i in 0..k {
        let (xm, ym) = (x.narrow(0, i * micro as i64, micro as i64), y.narrow(0, i * micro as i64, micro as i64));
        let (loss, ce, stats) = model.loss_parts(&xm, &ym, true);
        model.backward(&if k == 1 { loss.shallow_clone() } else { &loss / k as f64 })?;
        both += Tensor::stack(&[loss.detach(), ce.detach()], 0).to_kind(tch::Kind::Double) / k as f64;
        last = stats;
    }
    opt.all_reduce_grads(world)?;
    world.all_reduce(&both, Reduce::Sum)?;
    let both = (both / world.size as f64).to_kind(tch::Kind::Float);
    Ok((both.get(0), both.get(1), last))
}

/// Why a stage stopped at a non-finite step, and what to change.
fn nonfinite(name: &str, step: u64, loss: f64, grad_norm: f64, lr: f64, last_ckpt: Option<u64>, dir: &std::path::Path) -> String {
    format!(
        "stage `{name}`: {} at step {step} (loss {loss}, gradient norm {grad_norm}). The last good checkpoint is {}.\n\
         Likely cause: a learning rate too high for this model (lr {lr:.3e}); lower `lr`, add warmup, or set `grad_clip`.",
        if loss.is_finite() { "non-finite gradient" } else { "non-finite loss" },
        last_ckpt.map_or("none (no checkpoint yet)".into(), |s| format!("step {s} in {}", dir.display()))
    )
}

/// The trace `--profile` writes into the stage's directory.
const TRACE: &str = "trace.json";

/// Mean validation loss over a fixed set of batches (the same ones at every evaluation).
/// The weights of the best validation loss, with `keep = best`.
const BEST: &str = "best.safetensors";

pub fn evaluate(model: &Model, corpus: &Corpus, t: &TrainSpec, seed: u64) -> f64 {
    let mut rng = Rng(seed ^ 0xE7A1);
    tch::no_grad(|| {
        let mut sum = 0.0;
        for _ in 0..t.eval_batches {
            let (x, y) = corpus.val_batch(t.batch, t.context, &mut rng, model.device);
            sum += model.loss(&x, &y, false).double_value(&[]);
        }
        sum / t.eval_batches as f64
    })
}

fn moe_json(s: &MoeStats) -> serde_json::Value {
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
