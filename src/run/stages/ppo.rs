//! The loop of a `ppo` stage (Ouyang et al. 2022's RLHF step), written out:
//!   1. sample a batch of prompts; the policy writes responses (temperature sampling);
//!   2. score them: the reward model's scalar at the last token, minus a per-token KL penalty
//!      kl·(log π_old − log π_ref) against the frozen reference (the policy's starting point);
//!   3. advantages by GAE (γ, λ) on the value head's estimates, whitened;
//!   4. `epochs` passes over `minibatches` minibatches of the clipped policy objective, the
//!      clipped value loss and an entropy bonus;
//!   5. optionally adapt the KL coefficient toward `kl_target` (Ziegler et al. 2019).
//!
//! Logs the reward model's score next to the gold reward, so reward hacking (the first rising
//! while the second falls) shows in the metrics and the report.
//!
//! With several processes each rolls out its share of the prompts (sampling with a stream of its
//! own), advantages are whitened and the KL measured over the whole batch, and every minibatch's
//! gradients are averaged before the update: one PPO step over the global batch, its rollouts
//! divided. `accumulate = k` runs the scoring passes and each minibatch's forward and backward in
//! k micro-batches (the rollouts are sampled whole, so the samples do not depend on k).

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::lower::ScalarHead;
use crate::posttrain::examples::{Example, Seq};
use crate::posttrain::gae::{gae, whitened};
use crate::posttrain::tasks;
use crate::recipe::PpoSpec;
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_policy, load_reward_model, trained_output, Policy};
use crate::run::kit::losses::{entropy, entropy_in_chunks, masked_mean, ppo_clip, value_loss};
use crate::run::kit::score::score;
use crate::run::kit::codec::Codec;
use crate::run::kit::decode::{at_temperature, rollout};
use crate::run::kit::seqs::{by_micro_batch, micro_rows, own_stream, pad, respond, seed_step, to_f64s, token_logprobs};
use crate::run::kit::patience::Patience;
use crate::run::kit::dist::{Reduce, World};
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::run::model::heads::Head;
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, p: &PpoSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, p.opt.steps)? else { return Ok(()) };
    let dev = device::device(p.opt.device)?;
    let world = ctx.world;
    world.use_device(&name, dev)?;
    p.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let (set, split) = instructions(recipe, &p.prompts)?;
    let codec = Codec::new(recipe, &set)?;
    let held: Vec<Example> = split.held_out.iter().take(p.eval_examples).cloned().collect();
    // With LoRA only the adapters (and the value head) train; the reference is the policy
    // without them.
    let Policy { model: policy, mut names, mut params, reference } = load_policy(recipe, &ctx.runs, &p.policy, p.lora.as_ref(), &p.opt, true, dev)?;
    let reference = reference.expect("asked for");
    let rm = load_reward_model(recipe, &ctx.runs, &p.reward, dev)?.computing(p.opt.precision);
    // The starting point's score, before a resumed run restores its trained weights.
    let before = score(&policy, Some(&reference), &codec, &held, p.max_new)?;
    completions::write(&run, 0, &before)?;
    // The value head reads the policy's final hidden state, detached: the critic is a linear
    // probe on the policy's features, so value-loss gradients cannot pull those features away
    // from what the policy objective wants (a shared trunk destabilised small models here).
    // It starts at zero.
    let value_head = Head::new(ScalarHead::Value, &policy);
    let (head_names, head_params): (Vec<String>, Vec<Tensor>) = value_head.named().into_iter().unzip();
    names.extend(head_names);
    params.extend(head_params);
    let mut opt = Optimizer::new(&params, &names, &p.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x990))?;
    opt.broadcast_state(world)?;
    let mut kl_coef = extra["kl_coef"].as_f64().unwrap_or(p.kl);
    let mut history: Vec<(f64, f64)> = serde_json::from_value(extra["history"].clone()).unwrap_or_default(); // (reward-model score, gold reward) per step
    let mut patience = Patience::new(p.opt.patience, "sampled_gold_reward", &extra);
    let mut stopped = None;
    let context = policy.spec().context;
    codec.note_long_prompts(&name, &set.name, &split.train.iter().chain(&split.held_out).collect::<Vec<_>>(), context, p.max_new);
    tracing::info!(
        "{name}: PPO on prompts of `{}` against reward model `{}`: {} steps × {} prompts{}, KL coefficient {kl_coef}{}{}",
        set.name,
        p.reward,
        p.opt.steps,
        p.opt.batch,
        if world.size > 1 { format!(" (each of {} processes rolls out {})", world.size, p.opt.batch / world.size) } else { String::new() },
        p.kl_target.map_or(String::new(), |t| format!(" (adaptive, target {t})")),
        policy.lora.describe().map_or(String::new(), |d| format!(", {d}"))
    );
    // How the rollouts are drawn; the losses read log-probabilities at the same temperature.
    let (decoding, t) = (rollout(&name, p.temperature, &p.filters), p.temperature);
    let started = Instant::now();
    let mut last = None;
    for step in step0..p.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&p.opt.schedule, p.opt.optimizer.lr, step, p.opt.steps);
        let step_started = Instant::now();
        // 1. Rollouts.
        // Every process draws the whole global batch (the same sampler state) and rolls out its
        // share, each sampling with its own stream.
        let batch: Vec<&Example> = (0..p.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let batch = world.shard_rows(&batch);
        own_stream(recipe.seed, step, world.rank);
        let (responses, seqs) = respond(&policy, &codec, batch, context, p.max_new, &decoding)?;
        let rows: Vec<&Seq> = seqs.iter().collect();
        let b = pad(&rows, dev);
        // 2. Scores, old log-probabilities and values, reference log-probabilities.
        // In `accumulate` micro-batches, as the updates below: the logits of the whole rollout
        // batch need not be held at once.
        let k = p.opt.accumulate;
        let (old_lp, old_v, ref_lp, rm_score) = tch::no_grad(|| {
            let [old_lp, old_v, ref_lp] = by_micro_batch(&b, k, |m| {
                let (h, logits, _) = policy.forward_full(&m.x, false);
                [token_logprobs(&at_temperature(logits, t), &m.y), value_head.apply(&h), token_logprobs(&at_temperature(reference.forward(&m.x, false), t), &m.y)] // (B, T) each
            });
            let full: Vec<Vec<i64>> = seqs.iter().map(|s| s.tokens.iter().copied().take(context).collect()).collect();
            (old_lp, old_v, ref_lp, rm.score_in_chunks(&full, micro_rows(full.len(), k)))
        });
        // 3. Per-token rewards: the KL penalty at each response token, the score added at the
        // last; a response that did not stop loses `missing_eos_penalty` from its score.
        let (t_len, mask) = (b.x.size()[1] as usize, to_f64s(&b.w));
        let (lp_v, ref_v, val_v, mut sc_v) = (to_f64s(&old_lp), to_f64s(&ref_lp), to_f64s(&old_v), to_f64s(&rm_score));
        let cut: Vec<bool> = responses.iter().map(|r| !codec.ended(r)).collect();
        if let Some(penalty) = p.missing_eos_penalty {
            sc_v.iter_mut().zip(&cut).filter(|(_, &t)| t).for_each(|(s, _)| *s -= penalty);
        }
        let positions: Vec<Vec<usize>> = (0..seqs.len()).map(|r| (0..t_len).map(|t| r * t_len + t).filter(|&i| mask[i] > 0.0).collect()).collect();
        let mut kl_seq = 0.0;
        let mut rewards: Vec<Vec<f64>> = vec![];
        // Each response's summed KL and the penalty it cost (for `rollouts/`).
        let mut kl_rows: Vec<(f64, f64)> = vec![];
        for (r, pos) in positions.iter().enumerate() {
            let kl: Vec<f64> = pos.iter().map(|&i| p.kl_estimator.at(lp_v[i], ref_v[i])).collect();
            kl_seq += kl.iter().sum::<f64>();
            kl_rows.push((kl.iter().sum(), kl_coef * kl.iter().sum::<f64>()));
            let mut row: Vec<f64> = kl.iter().map(|k| -kl_coef * k).collect();
            if let Some(last) = row.last_mut() {
                *last += sc_v[r];
            }
            rewards.push(row);
        }
        if p.whiten_rewards {
            whiten_keeping_mean(world, &mut rewards)?;
        }
        // GAE, row by row over the response positions.
        let (mut adv, mut ret) = (vec![0f64; mask.len()], vec![0f64; mask.len()]);
        for (pos, rewards) in positions.iter().zip(&rewards) {
            let values: Vec<f64> = pos.iter().map(|&i| val_v[i]).collect();
            let (a, rt) = gae(rewards, &values, p.gamma, p.lambda);
            for (k, &i) in pos.iter().enumerate() {
                adv[i] = a[k];
                ret[i] = rt[k];
            }
        }
        let kl_seq = world.sums(&[kl_seq])?[0] / p.opt.batch as f64;
        let shape = [seqs.len() as i64, t_len as i64];
        let adv = Tensor::from_slice(&adv).view(shape).to_kind(Kind::Float).to_device(dev);
        let ret = Tensor::from_slice(&ret).view(shape).to_kind(Kind::Float).to_device(dev);
        // Whiten advantages over response tokens.
        let mean = global_masked_mean(world, &adv, &b.w)?;
        let std = global_masked_mean(world, &(&adv - &mean).square(), &b.w)?.sqrt();
        let adv = ((&adv - &mean) / (std + 1e-8)) * &b.w;
        // 4. Policy and value updates.
        let (mut pg_sum, mut vl_sum, mut ent_sum, mut clip_sum, mut grad_norm, mut n_mb) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..p.epochs {
            let mut order: Vec<i64> = (0..seqs.len() as i64).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for mb in order.chunks(order.len().div_ceil(p.minibatches)) {
                // The minibatch's losses are means over its response tokens: each micro-batch's
                // mean weighs its share of them, so their sum is the minibatch's.
                let tokens = b.rows(&Tensor::from_slice(mb).to_device(dev)).tokens().max(1.0);
                opt.zero_grad();
                for part in mb.chunks(micro_rows(mb.len(), k)) {
                    let idx = Tensor::from_slice(part).to_device(dev);
                    let pick = |t: &Tensor| t.index_select(0, &idx);
                    let m = b.rows(&idx);
                    let share = m.tokens() / tokens;
                    let (h, logits, _) = policy.forward_full(&m.x, false);
                    let logits = at_temperature(logits, t);
                    let lp = token_logprobs(&logits, &m.y);
                    let v = value_head.apply(&h.detach());
                    let (pg, clipfrac) = ppo_clip(&lp, &pick(&old_lp), &pick(&adv), &m.w, p.clip);
                    let vl = value_loss(&v, &pick(&old_v), &pick(&ret), &m.w, p.value_clip);
                    // Without an entropy bonus it is only logged: no graph, a few rows at a time
                    // (its temporaries, three times the logits, would otherwise wait for backward).
                    let ent = if p.entropy_coef > 0.0 { masked_mean(&entropy(&logits), &m.w) } else { masked_mean(&entropy_in_chunks(&logits.detach()), &m.w) };
                    let loss = (&pg + &vl * p.vf_coef - &ent * p.entropy_coef) * share;
                    policy.backward(&loss)?;
                    pg_sum += share * pg.double_value(&[]);
                    vl_sum += share * vl.double_value(&[]);
                    ent_sum += share * ent.double_value(&[]);
                    clip_sum += share * clipfrac.double_value(&[]);
                }
                if world.size > 1 {
                    opt.all_reduce_grads(world)?;
                }
                grad_norm += opt.clip_grad_norm(p.opt.grad_clip);
                opt.step(lr)?;
                n_mb += 1.0;
            }
        }
        // 5. Adaptive KL: β ← β·(1 + 0.1·clip(KL/target − 1, ±0.2)).
        if let Some(target) = p.kl_target {
            kl_coef *= 1.0 + 0.1 * (kl_seq / target - 1.0).clamp(-0.2, 0.2);
        }
        let gold: f64 = batch.iter().zip(&responses).map(|(e, r)| tasks::gold_reward(e.gold.as_deref().unwrap_or(&e.response), &codec.decode(r))).sum::<f64>();
        let length = responses.iter().map(|r| r.len()).sum::<usize>() as f64;
        // The whole batch's means, and the minibatches' (each process's are its share's).
        let w = world.size as f64;
        let stopped_short = cut.iter().filter(|&&t| t).count() as f64;
        let [gold, rm_mean, length, pg_sum, vl_sum, ent_sum, clip_sum, truncated] = world.sums(&[gold, sc_v.iter().sum::<f64>(), length, pg_sum / w, vl_sum / w, ent_sum / w, clip_sum / w, stopped_short])?;
        let truncated = truncated / p.opt.batch as f64;
        let (gold, rm_mean) = (gold / p.opt.batch as f64, rm_mean / p.opt.batch as f64);
        history.push((rm_mean, gold));
        let done = step + 1;
        // Rollouts, scoring and the PPO epochs of this step (the held-out evaluation not counted).
        let step_seconds = step_started.elapsed().as_secs_f64();
        let eval_now = done % p.opt.eval_every == 0 || done == p.opt.steps;
        let s = eval_now.then(|| score(&policy, Some(&reference), &codec, &held, p.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
            let lines: Vec<serde_json::Value> = (0..responses.len())
                .map(|r| {
                    let (e, (kl, penalty)) = (batch[r], kl_rows[r]);
                    json!({"prompt": e.prompt, "answer": e.gold.as_deref().unwrap_or(&e.response), "completion": codec.decode(&responses[r]), "reward": sc_v[r] - penalty,
                        "score": sc_v[r], "kl": kl, "kl_penalty": penalty, "truncated": cut[r]})
                })
                .collect();
            completions::write_rollouts(&run, done, &lines)?;
        }
        let shown = s.as_ref().map_or(String::new(), |s| s.progress(true));
        run.progress.line(done, p.opt.log_every, &format!("reward {rm_mean:.3} gold {gold:.3} KL {kl_seq:.3} clip {:.2}{shown}", clip_sum / n_mb), s.is_some());
        let mlen = length / p.opt.batch as f64;
        let mut m = json!({
            "step": done, "lr": lr, "reward": rm_mean, "gold": gold, "kl": kl_seq, "kl_coef": kl_coef,
            "entropy": ent_sum / n_mb, "clip_fraction": clip_sum / n_mb, "value_loss": vl_sum / n_mb,
            "policy_loss": pg_sum / n_mb, "grad_norm": grad_norm / n_mb, "response_length": mlen, "step_seconds": step_seconds, "truncated": truncated,
        });
        if let Some(s) = &s {
            s.log_into(&mut m, "val_");
        }
        run.log(m)?;
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, p.opt.steps), s.sampled_gold, json!({"kl_coef": kl_coef, "history": history}), |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&policy, Some(&reference), &codec, &held, p.max_new)?,
    };
    // Reward hacking: the reward model's score up while the gold reward goes down.
    let window = (history.len() / 4).max(1);
    let avg = |h: &[(f64, f64)]| (h.iter().map(|x| x.0).sum::<f64>() / h.len().max(1) as f64, h.iter().map(|x| x.1).sum::<f64>() / h.len().max(1) as f64);
    let (first, final_) = (avg(&history[..window.min(history.len())]), avg(&history[history.len().saturating_sub(window)..]));
    let hacking = final_.0 > first.0 && final_.1 < first.1;
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "ppo",
        "precision": p.opt.precision,
        "model": p.policy.arch,
        "steps": p.opt.steps,
        "kl_coef_final": kl_coef,
        "before": before,
        "after": last,
        "reward_first_quarter": first.0, "gold_first_quarter": first.1,
        "reward_last_quarter": final_.0, "gold_last_quarter": final_.1,
        "reward_hacking": hacking,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    patience.report_into(&mut report, stopped);
    tracing::info!(
        "{name}: done — held-out (sampled) gold reward {:.3} (was {:.3}), preferred behaviour {:.1}% (was {:.1}%), KL to reference {:.3}; training reward-model score {:.3} → {:.3}, gold {:.3} → {:.3}{}",
        last.sampled_gold,
        before.sampled_gold,
        100.0 * last.sampled_exact,
        100.0 * before.sampled_exact,
        last.kl.unwrap_or(0.0),
        first.0,
        final_.0,
        first.1,
        final_.1,
        if hacking { " — REWARD HACKING: the reward model's score rose while the gold reward fell" } else { "" }
    );
    if p.lora.is_some() {
        report["lora_update_ratio"] = json!(policy.lora_update_ratio());
    }
    run.finish(&[trained_output(&policy), ("value_head.safetensors", value_head.named())], report, &ctx.title())
}

/// `masked_mean` over every process's rows (the weighted sum and the weight summed over them).
/// Every process's per-token rewards divided by their standard deviation over all of them (with
/// Bessel's correction), their mean kept: TRL's `masked_whiten(…, shift_mean=False)`.
fn whiten_keeping_mean(world: &World, rows: &mut [Vec<f64>]) -> Result<()> {
    let [n, sum] = world.sums(&[rows.iter().map(Vec::len).sum::<usize>() as f64, rows.iter().flatten().sum::<f64>()])?;
    let mean = sum / n.max(1.0);
    let [squares] = world.sums(&[rows.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>()])?;
    let var = squares / (n - 1.0).max(1.0);
    rows.iter_mut().flatten().for_each(|x| *x = whitened(*x, mean, var));
    Ok(())
}

fn global_masked_mean(world: &World, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if world.size == 1 {
        return Ok(masked_mean(x, mask));
    }
    let sums = Tensor::stack(&[(x * mask).sum(Kind::Float), mask.sum(Kind::Float)], 0);
    world.all_reduce(&sums, Reduce::Sum)?;
    Ok(sums.get(0) / sums.get(1).clamp_min(1.0))
}
