//! The loop of a `grpo` stage (Shao et al. 2024), written out:
//!   1. sample `batch / group` prompts; the policy writes `group` responses to each (temperature
//!      sampling);
//!   2. reward every response with the recipe's weighted sum of program terms (exact match
//!      against the data's answer, format, length) and reward-model scores;
//!   3. advantages normalised within each group: no value network;
//!   4. `epochs` passes of the clipped policy-ratio loss plus β·KL to the frozen reference.
//!
//! Logs the reward's mean and spread, the share of groups whose rewards are all equal (no
//! learning signal), clip fraction, KL and response length; held-out scores every `eval_every`.
//! With several processes each answers its share of a step's prompts (whole groups) and the
//! gradients of every epoch are averaged before the update.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::posttrain::examples::{Example, Seq};
use crate::recipe::{GrpoLoss, GrpoSpec, ImportanceSampling, RewardScale};
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_policy, trained_output, Policy};
use crate::run::kit::rewards::{Rewarder, Sampled};
use crate::run::kit::dist::World;
use crate::run::kit::losses::{entropy_in_chunks, group_advantages, grpo_loss, masked_mean, quantile, rloo_advantages, sequence_k1, GrpoTerms};
use crate::run::kit::score::score;
use crate::run::kit::codec::Codec;
use crate::run::kit::decode::{at_temperature, rollout};
use crate::run::kit::seqs::{by_micro_batch, micro_rows, own_stream, pad, respond, seed_step, to_f64s, token_logprobs};
use crate::run::kit::patience::Patience;
use crate::run::kit::{completions, device, lifecycle, reference, StageCtx};
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, g: &GrpoSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, g.opt.steps)? else { return Ok(()) };
    let dev = device::device(g.opt.device)?;
    let world = ctx.world;
    world.use_device(&name, dev)?;
    // Processes divide a step's prompts (whole groups).
    crate::recipe::split_batch(&name, g.opt.batch / g.group, world.size, 1).map_err(|e| anyhow::anyhow!("{e} (a GRPO batch splits by prompts, {} a step)", g.opt.batch / g.group))?;
    // Each process's completions, in `accumulate` micro-batches.
    g.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let (set, split) = instructions(recipe, &g.prompts)?;
    let codec = Codec::new(recipe, &set)?;
    let held: Vec<Example> = split.held_out.iter().take(g.eval_examples).cloned().collect();
    // With beta = 0 no reference is loaded (the plan counts none); with LoRA only the adapters
    // train and the reference is the policy without them.
    let Policy { model: policy, names, params, reference } = load_policy(recipe, &ctx.runs, &g.policy, g.lora.as_ref(), &g.opt, g.beta > 0.0, dev)?;
    let rewarder = Rewarder::load(recipe, &ctx.runs, &name, &g.reward, g.opt.precision, dev)?;
    // The starting point's score, before a resumed run restores its trained weights.
    let before = score(&policy, reference.as_ref(), &codec, &held, g.max_new)?;
    completions::write(&run, 0, &before)?;
    let mut opt = Optimizer::new(&params, &names, &g.opt.optimizer);
    reference::keep_in_checkpoints(&mut run, g.sync_ref.as_ref(), reference.as_ref());
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x6290))?;
    opt.broadcast_state(world)?;
    // Per step: the share of groups whose rewards were all equal (kept in checkpoints).
    let mut flat_history: Vec<f64> = serde_json::from_value(extra["flat_groups"].clone()).unwrap_or_default();
    let mut patience = Patience::new(g.opt.patience, "sampled_gold_reward", &extra);
    let mut stopped = None;
    let context = policy.spec().context;
    codec.note_long_prompts(&name, &set.name, &split.train.iter().chain(&split.held_out).collect::<Vec<_>>(), context, g.max_new);
    let per_step = g.opt.batch / g.group;
    let clip = g.clip_high.map_or(String::new(), |h| format!(", ratio clipped to [{}, {}]", 1.0 - g.clip, 1.0 + h));
    let clip = g.delta.map_or(clip.clone(), |d| format!("{clip}, two-sided (ratio at most {d})"));
    let adapter = policy.lora.describe().map_or(String::new(), |d| format!(", {d}"));
    let level = if g.importance_sampling == ImportanceSampling::Sequence { ", one ratio per completion (GSPO)" } else { "" };
    let level = if g.mask_truncated { format!("{level}, truncated completions masked") } else { level.to_string() };
    let level = g.top_entropy_quantile.map_or(level.clone(), |q| format!("{level}, the policy term on the top {}% of tokens by entropy", 100.0 * q));
    let level = g.sync_ref.as_ref().map_or(level.clone(), |s| format!("{level}, {}", reference::describe(s)));
    let scale = g.reward_scale();
    let scaled = match scale {
        RewardScale::Group => "advantages ÷ the group's std",
        RewardScale::Batch => "advantages ÷ the batch's std",
        RewardScale::None => "advantages unscaled",
    };
    let how = match g.loss {
        GrpoLoss::Rloo => format!("β = {} (β·KL taken off each completion's reward), RLOO's leave-one-out baselines, one ratio per completion", g.beta),
        loss => format!("β = {}, {} normalisation", g.beta, loss.name()),
    };
    tracing::info!(
        "{name}: {} on prompts of `{}`: {} steps × {per_step} prompts{} × {} responses, {how}, {scaled}{clip}{level}{adapter}",
        if g.loss == GrpoLoss::Rloo { "RLOO" } else { "GRPO" },
        set.name,
        g.opt.steps,
        if world.size > 1 { format!(" (each of {} processes answers {})", world.size, per_step / world.size) } else { String::new() },
        g.group,
    );
    // How the rollouts are drawn; the losses read log-probabilities at the same temperature.
    let (decoding, t) = (rollout(&name, g.temperature, &g.filters), g.temperature);
    let started = Instant::now();
    let mut last = None;
    let clip = (g.clip, g.clip_high.unwrap_or(g.clip));
    for step in step0..g.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&g.opt.schedule, g.opt.optimizer.lr, step, g.opt.steps);
        // 1. A group of responses to each prompt.
        // Every process draws the whole step's prompts (the same sampler state) and answers its
        // share of them, sampling with its own stream; a group stays within one process.
        let chosen: Vec<&Example> = (0..per_step).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let chosen = world.shard_rows(&chosen);
        own_stream(recipe.seed, step, world.rank);
        let batch: Vec<&Example> = chosen.iter().flat_map(|e| std::iter::repeat_n(*e, g.group)).collect();
        let (responses, mut seqs) = respond(&policy, &codec, &batch, context, g.max_new, &decoding)?;
        // Cut off at `max_new` (or the context) before the end marker; with `mask_truncated`
        // such a completion weighs nothing in the loss (DAPO's overlong filtering).
        let cut: Vec<bool> = responses.iter().map(|r| !codec.ended(r)).collect();
        if g.mask_truncated {
            for (s, _) in seqs.iter_mut().zip(&cut).filter(|(_, &t)| t) {
                s.weights.iter_mut().for_each(|w| *w = 0.0);
            }
        }
        let truncated = world.sums(&[cut.iter().filter(|&&t| t).count() as f64])?[0] / g.opt.batch as f64;
        // 2. Rewards.
        let valued = rewarder.terms(&batch, &responses, &seqs, &codec, g.max_new, context, g.opt.accumulate);
        let rewards = rewarder.totals(&valued);
        let rows: Vec<&Seq> = seqs.iter().collect();
        let b = pad(&rows, dev);
        // The scoring passes run in `accumulate` micro-batches of completions (sampled whole
        // above, so the samples do not depend on it), as each epoch's forward and backward do.
        let k = g.opt.accumulate;
        let [old_lp, old_entropy] = tch::no_grad(|| {
            by_micro_batch(&b, k, |m| {
                let logits = at_temperature(policy.forward(&m.x, false), t);
                let ent = if g.top_entropy_quantile.is_some() { entropy_in_chunks(&logits) } else { m.w.zeros_like() };
                [token_logprobs(&logits, &m.y), ent]
            })
        });
        // `top_entropy_quantile`: the step's high-entropy tokens, over every process's, fixed for
        // the step's epochs (TRL finds them in each forward pass: the same on the first).
        let keep = g.top_entropy_quantile.map(|rho| high_entropy(world, &old_entropy, &b.w, rho)).transpose()?;
        let ref_lp = reference.as_ref().map(|r| {
            let [lp] = tch::no_grad(|| by_micro_batch(&b, k, |m| [token_logprobs(&at_temperature(r.forward(&m.x, false), t), &m.y)]));
            lp
        });
        // 3. Advantages within each group; the whole step's rewards over every process (each
        // answers its share) give their mean and spread.
        let all = g.opt.batch as f64;
        let mean = world.sums(&[rewards.iter().sum::<f64>()])?[0] / all;
        let squares = world.sums(&[rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>()])?[0];
        let adv = if g.loss == GrpoLoss::Rloo {
            rloo_step_advantages(world, &rewards, g, scale, &old_lp, ref_lp.as_ref(), &b.w)?
        } else {
            group_advantages(&rewards, g.group, scale, (squares / (all - 1.0).max(1.0)).sqrt())
        };
        let flat = world.sums(&[rewards.chunks(g.group).filter(|grp| grp.iter().all(|r| *r == grp[0])).count() as f64])?[0] / per_step as f64;
        flat_history.push(flat);
        // DAPO divides by the step's completion tokens over all processes; each process's share
        // of that count, since their gradients are averaged.
        let tokens = if g.loss == GrpoLoss::Dapo { world.sums(&[seqs.iter().map(|s| s.weights.iter().map(|&w| w as f64).sum::<f64>()).sum()])?[0] / world.size as f64 } else { 0.0 };
        let terms = GrpoTerms { clip, beta: g.beta, norm: g.loss, max_new: g.max_new, tokens, sequence: g.importance_sampling == ImportanceSampling::Sequence, delta: g.delta };
        let advantages = adv;
        let adv = Tensor::from_slice(&advantages).to_kind(Kind::Float).to_device(dev);
        let all_rows: Vec<i64> = (0..seqs.len() as i64).collect();
        let tokens_here = b.tokens().max(1.0);
        // 4. Policy updates.
        let (mut loss_sum, mut clip_sum, mut kl_sum, mut ent_sum, mut grad_norm) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..g.epochs {
            opt.zero_grad();
            for part in all_rows.chunks(micro_rows(all_rows.len(), k)) {
                let idx = Tensor::from_slice(part).to_device(dev);
                let m = b.rows(&idx);
                let logits = at_temperature(policy.forward(&m.x, false), t);
                let lp = token_logprobs(&logits, &m.y);
                // The sampled distribution's entropy per completion token (logged, as TRL's).
                let ent = tch::no_grad(|| masked_mean(&entropy_in_chunks(&logits.detach()), &m.w));
                let keep = keep.as_ref().map(|k| k.index_select(0, &idx));
                let (loss, clipfrac, kl) = grpo_loss(&lp, &old_lp.index_select(0, &idx), ref_lp.as_ref().map(|r| r.index_select(0, &idx)).as_ref(), &adv.index_select(0, &idx), &m.w, keep.as_ref(), &terms);
                // GRPO and Dr. GRPO average over completions, so a micro-batch's loss weighs its
                // share of them; DAPO's divides by the step's token count already. The logged
                // per-token means weigh each micro-batch's share of the tokens.
                let rows = if g.loss == GrpoLoss::Dapo { 1.0 } else { part.len() as f64 / all_rows.len() as f64 };
                let share = m.tokens() / tokens_here;
                policy.backward(&(&loss * rows))?;
                loss_sum += rows * loss.double_value(&[]);
                clip_sum += if g.loss == GrpoLoss::Rloo { rows } else { share } * clipfrac.double_value(&[]);
                kl_sum += share * kl.double_value(&[]);
                ent_sum += share * ent.double_value(&[]);
            }
            if world.size > 1 {
                opt.all_reduce_grads(world)?;
            }
            grad_norm += opt.clip_grad_norm(g.opt.grad_clip);
            opt.step(lr)?;
        }
        reference::sync_after(g.sync_ref.as_ref(), reference.as_ref(), &policy, step + 1);
        let n = g.epochs as f64;
        // The whole batch's statistics (each process's epochs' are its share's: averaged).
        let w = world.size as f64;
        let [length, loss_sum, clip_sum, kl_sum, ent_sum] = world.sums(&[responses.iter().map(|r| r.len()).sum::<usize>() as f64, loss_sum / w, clip_sum / w, kl_sum / w, ent_sum / w])?;
        let (length, spread) = (length / all, (squares / all).sqrt());
        let done = step + 1;
        let eval_now = done % g.opt.eval_every == 0 || done == g.opt.steps;
        let s = eval_now.then(|| score(&policy, reference.as_ref(), &codec, &held, g.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
            let sampled = Sampled { examples: &batch, responses: &responses, terms: &valued, rewards: &rewards };
            let lines = sampled.lines(&rewarder, &codec, |i| json!({"group": i / g.group, "advantage": advantages[i], "truncated": cut[i]}));
            completions::write_rollouts(&run, done, &lines)?;
        }
        let shown = s.as_ref().map_or(String::new(), |s| s.progress(false));
        run.progress.line(done, g.opt.log_every, &format!("reward {mean:.3} ± {spread:.3} flat groups {:.0}% KL {:.3} clip {:.2}{shown}", 100.0 * flat, kl_sum / n, clip_sum / n), s.is_some());
        let mut m = json!({
            "step": done, "lr": lr, "reward": mean, "reward_std": spread, "flat_groups": flat,
            "loss": loss_sum / n, "kl": kl_sum / n, "clip_fraction": clip_sum / n, "grad_norm": grad_norm / n,
            "response_length": length, "truncated": truncated, "entropy": ent_sum / n,
        });
        if let Some(s) = &s {
            s.log_into(&mut m, "val_");
        }
        run.log(m)?;
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, g.opt.steps), s.sampled_gold, json!({"flat_groups": flat_history}), |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&policy, reference.as_ref(), &codec, &held, g.max_new)?,
    };
    // No learning signal: a group whose rewards are all equal has zero advantages.
    let tail = &flat_history[flat_history.len() - (flat_history.len() / 4).max(1).min(flat_history.len())..];
    let flat_tail = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    // (Read by the health signals: `flat_groups` warns from 90% on.)
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "grpo",
        "precision": g.opt.precision,
        "flat_groups_last_quarter": flat_tail,
        "model": g.policy.arch,
        "steps": g.opt.steps,
        "group": g.group,
        "loss": g.loss,
        "scale_rewards": scale,
        "before": before,
        "after": last,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    patience.report_into(&mut report, stopped);
    tracing::info!("{name}: done — {}", last.against(&before));
    if g.lora.is_some() {
        report["lora_update_ratio"] = json!(policy.lora_update_ratio());
    }
    run.finish(&[trained_output(&policy)], report, &ctx.title())
}

/// RLOO's advantages for this process's completions: each reward less β times its completion's
/// KL to the reference (k1 summed over its tokens, from the sampling-time log-probabilities, as
/// TRL's RLOOTrainer takes it off the reward), less the mean of the others in its group; with
/// `scale_rewards = batch` standardised over the whole step (TRL's `normalize_advantages`).
fn rloo_step_advantages(world: &World, rewards: &[f64], g: &GrpoSpec, scale: RewardScale, old_lp: &Tensor, ref_lp: Option<&Tensor>, mask: &Tensor) -> Result<Vec<f64>> {
    let penalised: Vec<f64> = match ref_lp {
        Some(r) if g.beta > 0.0 => rewards.iter().zip(to_f64s(&sequence_k1(old_lp, r, mask))).map(|(r, k)| r - g.beta * k).collect(),
        _ => rewards.to_vec(),
    };
    let adv = rloo_advantages(&penalised, g.group);
    if scale != RewardScale::Batch {
        return Ok(adv);
    }
    let n = g.opt.batch as f64;
    let mean = world.sums(&[adv.iter().sum::<f64>()])?[0] / n;
    let std = (world.sums(&[adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>()])?[0] / (n - 1.0).max(1.0)).sqrt();
    Ok(adv.iter().map(|a| (a - mean) / (std + 1e-4)).collect())
}

/// 1 at the completion tokens (`mask`) whose entropy is at least the (1 − rho)-quantile of every
/// process's completion tokens this step, 0 elsewhere (B, T).
fn high_entropy(world: &World, entropy: &Tensor, mask: &Tensor, rho: f64) -> Result<Tensor> {
    let (e, w) = (to_f64s(entropy), to_f64s(mask));
    let local: Vec<f64> = e.iter().zip(&w).filter(|(_, &w)| w > 0.0).map(|(&e, _)| e).collect();
    let mut all = if world.size == 1 {
        local
    } else {
        // Each process's values, padded with −1 (no entropy is negative) to the longest share.
        let dev = entropy.device();
        let counts = Tensor::zeros([world.size as i64], (Kind::Double, dev));
        world.all_gather(&counts, &Tensor::from_slice(&[local.len() as f64]).to_device(dev))?;
        let longest = to_f64s(&counts).into_iter().fold(0.0, f64::max) as usize;
        let mut padded = local;
        padded.resize(longest.max(1), -1.0);
        let out = Tensor::zeros([(world.size * padded.len()) as i64], (Kind::Double, dev));
        world.all_gather(&out, &Tensor::from_slice(&padded).to_device(dev))?;
        to_f64s(&out).into_iter().filter(|&x| x >= 0.0).collect()
    };
    Ok(match quantile(&mut all, 1.0 - rho) {
        Some(cut) => entropy.ge(cut).to_kind(Kind::Float) * mask,
        None => mask.zeros_like(),
    })
}
