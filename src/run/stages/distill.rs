//! The loop of a `distill` stage (knowledge distillation, TRL's GKDTrainer), written out:
//!   1. draw a batch of instruction examples; a coin (`lmbda`) says whether this step reads the
//!      student's own responses, sampled at `temperature` (on-policy); otherwise it reads the
//!      teacher's (`seq_kd`) or the data's;
//!   2. the frozen teacher and the student read the same sequences; the loss is the generalized
//!      Jensen–Shannon divergence of their next-token distributions (`beta`), averaged over the
//!      batch's response tokens;
//!   3. backward, clip, AdamW; every `eval_every` steps the held-out divergence on the data's
//!      responses (what patience watches) and greedy exact match.
//!
//! With several processes each reads its share of the batch's examples (and samples their
//! responses); the divergence is divided by the response tokens of the whole batch.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::hf::generation::Decoding;
use crate::posttrain::examples::{Example, Seq};
use crate::recipe::{DistillSpec, RolloutFilters};
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_base, load_lm, trained, trained_output};
use crate::run::kit::codec::Codec;
use crate::run::kit::decode::rollout;
use crate::run::kit::dist::{Reduce, World};
use crate::run::kit::losses::generalized_jsd;
use crate::run::kit::patience::Patience;
use crate::run::kit::score::score;
use crate::run::kit::seqs::{own_stream, pad, respond, seed_step, token_logprobs};
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::run::model::Model;
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, k: &DistillSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, k.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's examples of a global batch, in `accumulate` micro-batches of `micro`.
    let micro = k.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(k.opt.device)?;
    world.use_device(&name, dev)?;
    let (set, split) = instructions(recipe, &k.data)?;
    let codec = Codec::new(recipe, &set)?;
    let mut teacher = load_lm(recipe, &ctx.runs, &k.teacher, dev)?.computing(k.opt.precision);
    teacher.freeze();
    let mut student = load_base(recipe, &ctx.runs, &k.student, k.lora.as_ref(), dev)?.computing(k.opt.precision);
    student.set_recompute(k.opt.activation_checkpointing);
    let context = student.spec().context;
    let held: Vec<Example> = split.held_out.iter().take(k.eval_examples).cloned().collect();
    let held_seqs: Vec<Seq> = held.iter().map(|e| codec.example(e, true, context)).collect();
    // What the teacher knows and where the student starts, for the report.
    let taught = score(&teacher, None, &codec, &held, k.max_new)?;
    let before = score(&student, None, &codec, &held, k.max_new)?;
    completions::write(&run, 0, &before)?;
    let divergence_before = held_out_divergence(&student, &teacher, &held_seqs, k.beta, dev);
    tracing::info!(
        "{name}: before distillation: held-out divergence {divergence_before:.4}, exact match {:.1}% (the teacher's {:.1}%) on {} held-out examples",
        100.0 * before.exact,
        100.0 * taught.exact,
        held.len()
    );
    if let Some(l) = &k.lora {
        student.attach_lora(l)?;
    }
    let (names, params): (Vec<String>, Vec<Tensor>) = trained(&student).into_iter().unzip();
    let trainable: u64 = params.iter().map(|p| p.numel() as u64).sum();
    let mut opt = Optimizer::new(&params, &names, &k.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0xD157))?;
    let mut patience = Patience::lowest(k.opt.patience, "divergence", &extra);
    let mut stopped = None;
    // Steps that sampled the student's responses, kept in checkpoints.
    let mut on_policy_steps = extra["on_policy_steps"].as_u64().unwrap_or(0);
    opt.broadcast_state(world)?;
    codec.note_long_prompts(&name, &set.name, &split.train.iter().chain(&split.held_out).collect::<Vec<_>>(), context, k.max_new);
    let decoding = if k.samples() { rollout(&name, k.temperature, &RolloutFilters::default()) } else { Decoding::plain(k.temperature) };
    let divergence = if k.beta == 0.0 {
        "KL(teacher ‖ student)".to_string()
    } else if k.beta == 1.0 {
        "KL(student ‖ teacher)".to_string()
    } else {
        format!("the generalized JSD at β = {}", k.beta)
    };
    let others = if k.seq_kd { "the teacher's" } else { "the data's" };
    let read = if k.lmbda == 0.0 {
        format!("{others} responses")
    } else if k.lmbda == 1.0 {
        format!("the student's own responses (sampled at temperature {})", k.temperature)
    } else {
        format!("the student's own responses (sampled at temperature {}) on a share {} of the steps, {others} on the rest", k.temperature, k.lmbda)
    };
    tracing::info!(
        "{name}: distilling `{}` into `{}` ({trainable} trainable of {} parameters{}) on `{}` for {} steps × {} examples: {divergence} over {read}",
        k.teacher.arch,
        k.student.arch,
        student.numel(),
        k.lora.as_ref().map_or("", |l| if l.dora { ", DoRA" } else { ", LoRA" }),
        set.name,
        k.opt.steps,
        k.opt.batch,
    );

    let started = Instant::now();
    // Since the last log: its start, response tokens, steps and on-policy steps.
    let mut window = (Instant::now(), 0.0f64, 0u64, 0u64);
    let (mut last, mut last_divergence) = (None, None);
    for step in step0..k.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&k.opt.schedule, k.opt.optimizer.lr, step, k.opt.steps);
        // Every process draws the whole batch and the coin (the same sampler state) and reads
        // its share; each samples its responses with its own stream.
        let rows: Vec<&Example> = (0..k.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let on_policy = rng.unit() < k.lmbda;
        let mine = world.shard_rows(&rows);
        own_stream(recipe.seed, step, world.rank);
        let writer = if on_policy { Some(&student) } else { k.seq_kd.then_some(&teacher) };
        let seqs: Vec<Seq> = match writer {
            None => mine.iter().map(|e| codec.example(e, true, context)).collect(),
            Some(model) => respond(model, &codec, mine, context, k.max_new, &decoding)?.1,
        };
        on_policy_steps += on_policy as u64;
        opt.zero_grad();
        let ([loss, divergence, nll], tokens) = distill_backward(&student, &teacher, &mut opt, &seqs, micro, k, world, dev)?;
        window.1 += tokens;
        window.2 += 1;
        window.3 += on_policy as u64;
        let grad_norm = opt.clip_grad_norm(k.opt.grad_clip);
        opt.step(lr)?;
        let done = step + 1;
        let eval_now = done % k.opt.eval_every == 0 || done == k.opt.steps;
        let s = eval_now.then(|| score(&student, None, &codec, &held, k.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
        }
        let held_div = eval_now.then(|| held_out_divergence(&student, &teacher, &held_seqs, k.beta, dev));
        let tok_s = window.1 / window.0.elapsed().as_secs_f64().max(1e-9);
        let shown = s.as_ref().zip(held_div).map_or(String::new(), |(s, v)| format!(" held-out divergence {v:.4} exact {:.1}%", 100.0 * s.exact));
        run.progress.line(done, k.opt.log_every, &format!("divergence {loss:.4}{shown} lr {lr:.2e} {:.1}k response tok/s", tok_s / 1e3), s.is_some());
        if done % k.opt.log_every == 0 || s.is_some() {
            let mut m = json!({"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s, "on_policy": window.3 as f64 / window.2 as f64});
            if k.kd_ratio < 1.0 {
                m["divergence"] = json!(divergence);
                m["nll"] = json!(nll);
            }
            if let Some(s) = &s {
                s.log_into(&mut m, "");
            }
            if let Some(v) = held_div {
                m["val_loss"] = json!(v);
                last_divergence = Some(v);
            }
            run.log(m)?;
            window = (Instant::now(), 0.0, 0, 0);
        }
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, k.opt.steps), held_div.unwrap_or(f64::NAN), json!({"on_policy_steps": on_policy_steps}), |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&student, None, &codec, &held, k.max_new)?,
    };
    let last_divergence = last_divergence.unwrap_or_else(|| held_out_divergence(&student, &teacher, &held_seqs, k.beta, dev));
    let output = trained_output(&student);
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "distill",
        "precision": k.opt.precision,
        "weight_bytes": student.weight_bytes(),
        "model": k.student.arch,
        "teacher": k.teacher.arch,
        "params": student.numel(),
        "teacher_params": teacher.numel(),
        "trainable_params": trainable,
        "lora": k.lora,
        "lora_update_ratio": k.lora.as_ref().map(|_| student.lora_update_ratio()),
        "steps": k.opt.steps,
        "beta": k.beta,
        "lmbda": k.lmbda,
        "seq_kd": k.seq_kd,
        "on_policy_steps": on_policy_steps,
        "teacher_score": taught,
        "before": before,
        "after": last,
        "val_loss": {"before": divergence_before, "after": last_divergence},
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    patience.report_into(&mut report, stopped);
    tracing::info!(
        "{name}: done — held-out divergence {last_divergence:.4} (was {divergence_before:.4}), exact match {:.1}% (was {:.1}%, the teacher's {:.1}%); {on_policy_steps} of {} steps on the student's own responses; e.g. {}",
        100.0 * last.exact,
        100.0 * before.exact,
        100.0 * taught.exact,
        k.opt.steps,
        last.example()
    );
    run.finish(&[output], report, &ctx.title())
}

/// Over the response tokens of `rows`, summed: the divergence of `student` from `teacher`, and
/// with `nll` the student's negative log-likelihood of the tokens.
fn divergence_sum(student: &Model, teacher: &Model, rows: &[&Seq], beta: f64, train: bool, nll: bool, dev: tch::Device) -> (Tensor, Option<Tensor>) {
    let b = pad(rows, dev);
    let t = tch::no_grad(|| teacher.forward(&b.x, false));
    let s = student.forward(&b.x, train);
    let nll = nll.then(|| -(token_logprobs(&s, &b.y) * &b.w).sum(Kind::Float));
    ((generalized_jsd(&s, &t, beta) * &b.w).sum(Kind::Float), nll)
}

/// The mean divergence per response token of the held-out examples (the data's responses).
fn held_out_divergence(student: &Model, teacher: &Model, seqs: &[Seq], beta: f64, dev: tch::Device) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    tch::no_grad(|| {
        for chunk in seqs.chunks(32) {
            let rows: Vec<&Seq> = chunk.iter().collect();
            sum += divergence_sum(student, teacher, &rows, beta, false, false, dev).0.double_value(&[]);
            n += rows.iter().map(|s| response_tokens(s)).sum::<f64>();
        }
    });
    sum / n.max(1.0)
}

/// The trained (response) targets of a sequence.
fn response_tokens(s: &Seq) -> f64 {
    s.weights[..s.tokens.len().saturating_sub(1)].iter().map(|&w| w as f64).sum()
}

/// The step's loss over the response tokens of the whole batch, of which `seqs` are this
/// process's share: `kd_ratio` × the mean divergence + (1 − `kd_ratio`) × the mean negative
/// log-likelihood (torchtune's KD recipe; TRL's GKD at 1), and its gradient. Micro-batches of
/// `micro`, each one's sums divided by the batch's response tokens over every process (TRL's
/// "batchmean" over the labelled tokens), so the gradients summed over micro-batches and processes
/// are the whole batch's. Returns the loss, the divergence and NLL means, and this process's
/// response tokens.
#[allow(clippy::too_many_arguments)]
fn distill_backward(student: &Model, teacher: &Model, opt: &mut Optimizer, seqs: &[Seq], micro: usize, k: &DistillSpec, world: &World, dev: tch::Device) -> Result<([f64; 3], f64)> {
    let here: f64 = seqs.iter().map(response_tokens).sum();
    let [all] = world.sums(&[here])?;
    let mut total = Tensor::zeros([3], (Kind::Double, dev));
    let rows: Vec<&Seq> = seqs.iter().collect();
    let r = k.kd_ratio;
    for part in rows.chunks(micro.max(1)) {
        let (div, nll) = divergence_sum(student, teacher, part, k.beta, true, r < 1.0, dev);
        let (div, nll) = (div / all.max(1.0), nll.map(|n| n / all.max(1.0)));
        let loss = match &nll {
            Some(n) => &div * r + n * (1.0 - r),
            None => div.shallow_clone(),
        };
        // all_reduce_grads averages over the processes; each share is already a part of the sum.
        student.backward(&(&loss * world.size as f64))?;
        let nll = nll.map_or_else(|| loss.zeros_like(), |n| n.detach());
        total += Tensor::stack(&[loss.detach(), div.detach(), nll], 0).to_kind(Kind::Double);
    }
    opt.all_reduce_grads(world)?;
    world.all_reduce(&total, Reduce::Sum)?;
    let v = crate::run::kit::seqs::to_f64s(&total);
    Ok(([v[0], v[1], v[2]], here))
}
