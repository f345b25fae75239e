//! The loop of a `finetune` stage (instruction fine-tuning), written out: sample examples,
//! masked next-token loss on the response, backward, clip, AdamW; every `eval_every` steps,
//! greedy generation on held-out prompts scored by exact match and gold reward, and the
//! held-out loss of the set and of each `eval_data` set (`val_loss/NAME`).
//! With `adapter = lora { … }` only the adapter trains, and only the adapter is saved.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::posttrain::examples::Seq;
use crate::run::kit::codec::Codec;
use crate::recipe::FinetuneSpec;
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_base, trained, trained_output};
use crate::run::kit::score::score;
use crate::run::kit::packing::{batch, pack, PackedRow};
use crate::run::kit::seqs::{pad, seed_step, token_logprobs};
use crate::run::kit::dist::{Reduce, World};
use crate::run::kit::patience::Patience;
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::run::model::Model;
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, f: &FinetuneSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, f.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's rows of a global batch, in `accumulate` micro-batches of `micro` rows.
    let micro = f.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(f.opt.device)?;
    world.use_device(&name, dev)?;
    let (set, split) = instructions(recipe, &f.data)?;
    let codec = Codec::new(recipe, &set)?;
    let mut model = load_base(recipe, &ctx.runs, &f.model, f.lora.as_ref(), dev)?.computing(f.opt.precision);
    model.set_recompute(f.opt.activation_checkpointing);
    let held: Vec<_> = split.held_out.iter().take(f.eval_examples).cloned().collect();
    // The starting point's score, for the report (what fine-tuning changed).
    let before = score(&model, None, &codec, &held, f.max_new)?;
    completions::write(&run, 0, &before)?;
    let context = model.spec().context;
    let held_seqs: Vec<Seq> = held.iter().map(|e| codec.example(e, f.mask_prompt, context)).collect();
    let loss_before = held_out_loss(&model, &held_seqs, dev);
    // Each `eval_data` set's held-out examples, encoded with its own codec (the same tokenizer).
    let mut eval_sets: Vec<(String, Vec<Seq>, HeldOut)> = vec![];
    for n in &f.eval_data {
        let (other, other_split) = instructions(recipe, n)?;
        let other_codec = Codec::new(recipe, &other)?;
        let seqs: Vec<Seq> = other_split.held_out.iter().take(f.eval_examples).map(|e| other_codec.example(e, f.mask_prompt, context)).collect();
        let before = held_out_loss(&model, &seqs, dev);
        eval_sets.push((n.clone(), seqs, before));
    }
    tracing::info!(
        "{name}: before fine-tuning: held-out loss {:.4}, exact match {:.1}%, gold reward {:.3} on {} held-out examples",
        loss_before.loss,
        100.0 * before.exact,
        before.gold,
        held.len()
    );

    // NEFTune: noise on the embeddings of training passes (evaluation and generation see none).
    model.neftune = f.neftune.unwrap_or(0.0);
    if let Some(l) = &f.lora {
        model.attach_lora(l)?;
    }
    let (names, params): (Vec<String>, Vec<Tensor>) = trained(&model).into_iter().unzip();
    let trainable: u64 = params.iter().map(|p| p.numel() as u64).sum();
    let mut opt = Optimizer::new(&params, &names, &f.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x5F7))?;
    // Watched: the held-out loss, as Hugging Face's EarlyStoppingCallback watches eval_loss.
    let mut patience = Patience::lowest(f.opt.patience, "loss", &extra);
    let mut stopped = None;
    opt.broadcast_state(world)?;
    let seqs: Vec<Seq> = split.train.iter().map(|e| codec.example(e, f.mask_prompt, context)).collect();
    let packed = if f.packing { pack(&seqs, context) } else { vec![] };
    let unit = if f.packing {
        let filled: usize = packed.iter().map(|r| r.x.len()).sum();
        tracing::info!("{name}: {} examples packed into {} rows of up to {context} tokens ({:.1}% filled)", seqs.len(), packed.len(), 100.0 * filled as f64 / (packed.len() * context).max(1) as f64);
        "packed rows"
    } else {
        "examples"
    };
    tracing::info!(
        "{name}: fine-tuning `{}` ({trainable} trainable of {} parameters{}) on {} examples of `{}` for {} steps × {} {unit}",
        f.model.arch,
        model.numel(),
        format!("{}{}", f.lora.as_ref().map_or("", |l| if l.dora { ", DoRA" } else { ", LoRA" }), f.neftune.map_or(String::new(), |a| format!(", NEFTune α = {a}"))),
        seqs.len(),
        set.name,
        f.opt.steps,
        f.opt.batch
    );

    let started = Instant::now();
    // Response tokens per second over each logging window (the first one includes warm-up).
    let mut window = (Instant::now(), 0.0f64);
    let (mut last, mut last_val) = (None, None);
    for step in step0..f.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&f.opt.schedule, f.opt.optimizer.lr, step, f.opt.steps);
        // Every process draws the whole global batch (the same sampler state) and keeps its rows.
        opt.zero_grad();
        // Counted on the host from the rows' weights: no read of the device for it.
        let loss = if f.packing {
            let rows: Vec<&PackedRow> = (0..f.opt.batch).map(|_| &packed[rng.below(packed.len() as u64) as usize]).collect();
            window.1 += rows.iter().map(|r| r.weight()).sum::<f64>();
            sft_backward(&model, &mut opt, &rows, micro, world, dev)?
        } else {
            let rows: Vec<&Seq> = (0..f.opt.batch).map(|_| &seqs[rng.below(seqs.len() as u64) as usize]).collect();
            window.1 += rows.iter().map(|s| s.weight()).sum::<f64>();
            sft_backward(&model, &mut opt, &rows, micro, world, dev)?
        };
        let grad_norm = opt.clip_grad_norm(f.opt.grad_clip);
        opt.step(lr)?;
        let done = step + 1;
        let loss_v = loss.double_value(&[]);
        let eval_now = done % f.opt.eval_every == 0 || done == f.opt.steps;
        let s = eval_now.then(|| score(&model, None, &codec, &held, f.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
        }
        let val = eval_now.then(|| held_out_loss(&model, &held_seqs, dev));
        let tok_s = window.1 / window.0.elapsed().as_secs_f64().max(1e-9);
        let shown = s.as_ref().zip(val).map_or(String::new(), |(s, v)| format!(" held-out loss {:.4} exact {:.1}% verbose {:.1}% gold {:.3}", v.loss, 100.0 * s.exact, 100.0 * s.verbose, s.gold));
        run.progress.line(done, f.opt.log_every, &format!("loss {loss_v:.4}{shown} lr {lr:.2e} {:.1}k response tok/s", tok_s / 1e3), s.is_some());
        if done % f.opt.log_every == 0 || s.is_some() {
            let mut m = json!({"step": done, "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s});
            if let Some(s) = &s {
                s.log_into(&mut m, "");
            }
            if let Some(v) = val {
                for (n, seqs, _) in &eval_sets {
                    let o = held_out_loss(&model, seqs, dev);
                    m[format!("val_loss/{n}")] = json!(o.loss);
                    m[format!("val_token_accuracy/{n}")] = json!(o.token_accuracy);
                }
                m["val_loss"] = json!(v.loss);
                m["val_token_accuracy"] = json!(v.token_accuracy);
                last_val = Some(v);
            }
            run.log(m)?;
            window = (Instant::now(), 0.0);
        }
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, f.opt.steps), val.map_or(f64::NAN, |v| v.loss), serde_json::Value::Null, |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
            last = Some(s);
            if stop {
                stopped = Some(done);
                break;
            }
        }
    }
    // A run resumed with no step left to take scores its weights here.
    let last = match last {
        Some(s) => s,
        None => score(&model, None, &codec, &held, f.max_new)?,
    };
    let last_val = last_val.unwrap_or_else(|| held_out_loss(&model, &held_seqs, dev));
    let output = trained_output(&model);
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "finetune",
        "precision": f.opt.precision,
        "weight_bytes": model.weight_bytes(),
        "model": f.model.arch,
        "params": model.numel(),
        "trainable_params": trainable,
        "lora": f.lora,
        "neftune": f.neftune,
        "lora_update_ratio": f.lora.as_ref().map(|_| model.lora_update_ratio()),
        "steps": f.opt.steps,
        "before": before,
        "after": last,
        "val_loss": {"before": loss_before.loss, "after": last_val.loss},
        "val_token_accuracy": {"before": loss_before.token_accuracy, "after": last_val.token_accuracy},
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    for (n, seqs, before) in &eval_sets {
        let after = held_out_loss(&model, seqs, dev);
        report["eval_data"][n] = json!({"examples": seqs.len(), "val_loss": {"before": before.loss, "after": after.loss}, "val_token_accuracy": {"before": before.token_accuracy, "after": after.token_accuracy}});
    }
    patience.report_into(&mut report, stopped);
    tracing::info!(
        "{name}: done — held-out exact match {:.1}% (was {:.1}%), gold reward {:.3} (was {:.3}); e.g. {}",
        100.0 * last.exact,
        100.0 * before.exact,
        last.gold,
        before.gold,
        last.example()
    );
    run.finish(&[output], report, &ctx.title())
}

/// What TRL's SFTTrainer reports as `eval_loss` and `eval_mean_token_accuracy`: over the held-out
/// examples' trained tokens (the response, or every token without `mask_prompt`), the mean
/// negative log-likelihood and the share whose most likely token is the next one.
#[derive(Clone, Copy)]
struct HeldOut {
    loss: f64,
    token_accuracy: f64,
}

fn held_out_loss(model: &Model, seqs: &[Seq], dev: tch::Device) -> HeldOut {
    let (mut nll, mut right, mut n) = (0.0, 0.0, 0.0);
    tch::no_grad(|| {
        for chunk in seqs.chunks(32) {
            let rows: Vec<&Seq> = chunk.iter().collect();
            let b = pad(&rows, dev);
            let logits = model.forward(&b.x, false);
            let hit = logits.argmax(-1, false).eq_tensor(&b.y).to_kind(Kind::Float);
            let sum = |t: Tensor| (t * &b.w).sum(Kind::Double).double_value(&[]);
            nll -= sum(token_logprobs(&logits, &b.y));
            right += sum(hit);
            n += b.w.sum(Kind::Double).double_value(&[]);
        }
    });
    let n = n.max(1.0);
    HeldOut { loss: nll / n, token_accuracy: right / n }
}

/// What a training row is to the loss: its trained weight, and the weighted negative
/// log-likelihood of a batch of such rows.
trait Row {
    fn weight(&self) -> f64;
    /// Σ weight · −log p over the targets of `rows`, on the device.
    fn nll(model: &Model, rows: &[&Self], dev: tch::Device) -> Tensor;
}

impl Row for Seq {
    fn weight(&self) -> f64 {
        self.weights[..self.tokens.len().saturating_sub(1)].iter().map(|&w| w as f64).sum()
    }

    fn nll(model: &Model, rows: &[&Self], dev: tch::Device) -> Tensor {
        let b = pad(rows, dev);
        -(token_logprobs(&model.forward(&b.x, true), &b.y) * &b.w).sum(Kind::Float)
    }
}

impl Row for PackedRow {
    fn weight(&self) -> f64 {
        PackedRow::weight(self)
    }

    fn nll(model: &Model, rows: &[&Self], dev: tch::Device) -> Tensor {
        let (b, packing) = batch(rows, dev);
        -(token_logprobs(&model.forward_packed(&b.x, &packing, true), &b.y) * &b.w).sum(Kind::Float)
    }
}

/// The mean negative log-likelihood over the weighted (response) targets of the global batch
/// `rows`, and its gradient: this process's rows in micro-batches of `micro`, each micro-batch's
/// loss divided by the weight of the whole batch (counted on the host), so that the gradients
/// summed over micro-batches and processes are the whole batch's, as one process computes it.
fn sft_backward<R: Row>(model: &Model, opt: &mut Optimizer, rows: &[&R], micro: usize, world: &World, dev: tch::Device) -> Result<Tensor> {
    let weight: f64 = rows.iter().map(|r| r.weight()).sum::<f64>().max(1.0);
    if micro == rows.len() {
        let loss = R::nll(model, rows, dev) / weight;
        model.backward(&loss)?;
        return Ok(loss);
    }
    let mine = world.shard_rows(rows);
    let mut total = Tensor::zeros([1], (Kind::Double, dev));
    for part in mine.chunks(micro) {
        let loss = R::nll(model, part, dev) / weight;
        // all_reduce_grads averages over the processes; each share is already a part of the sum.
        model.backward(&(&loss * world.size as f64))?;
        total += loss.detach().to_kind(Kind::Double);
    }
    opt.all_reduce_grads(world)?;
    world.all_reduce(&total, Reduce::Sum)?;
    Ok(total.to_kind(Kind::Float).reshape([0i64; 0]))
}
