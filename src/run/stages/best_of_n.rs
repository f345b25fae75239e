//! The loop of a `best_of_n` stage (reward-ranked fine-tuning, RAFT, Dong et al. 2023; the
//! rejection sampling Llama 2 fine-tuned with; ReST-EM with a threshold), written out:
//!   1. draw `batch` prompts; the policy writes `n` responses to each (sampled at `temperature`
//!      through the rollout filters);
//!   2. the recipe's reward scores every response; each prompt keeps its best (the first on a
//!      tie), when it reaches `threshold`;
//!   3. the kept responses train as SFT examples: their tokens' mean negative log-likelihood,
//!      backward, clip, AdamW. A step that keeps none leaves the weights as they are.
//!
//! Logs the responses' mean reward and the best ones', the share of prompts kept, the loss and
//! the response length; held-out scores every `eval_every` steps. With several processes each
//! answers its share of the prompts and the gradients are averaged.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::posttrain::examples::{Example, Seq};
use crate::recipe::BestOfNSpec;
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_policy, trained_output, Policy};
use crate::run::kit::codec::Codec;
use crate::run::kit::decode::rollout;
use crate::run::kit::dist::Reduce;
use crate::run::kit::patience::Patience;
use crate::run::kit::rewards::{Rewarder, Sampled};
use crate::run::kit::score::score;
use crate::run::kit::seqs::{own_stream, pad, respond, seed_step, token_logprobs};
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, b: &BestOfNSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, b.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's prompts of a step, in `accumulate` micro-batches of `micro` prompts.
    let micro = b.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(b.opt.device)?;
    world.use_device(&name, dev)?;
    let (set, split) = instructions(recipe, &b.prompts)?;
    let codec = Codec::new(recipe, &set)?;
    let held: Vec<Example> = split.held_out.iter().take(b.eval_examples).cloned().collect();
    let Policy { model: policy, names, params, .. } = load_policy(recipe, &ctx.runs, &b.policy, b.lora.as_ref(), &b.opt, false, dev)?;
    let rewarder = Rewarder::load(recipe, &ctx.runs, &name, &b.reward, b.opt.precision, dev)?;
    // The starting point's score, before a resumed run restores its trained weights.
    let before = score(&policy, None, &codec, &held, b.max_new)?;
    completions::write(&run, 0, &before)?;
    let mut opt = Optimizer::new(&params, &names, &b.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0xB0F4))?;
    opt.broadcast_state(world)?;
    let mut patience = Patience::new(b.opt.patience, "sampled_gold_reward", &extra);
    let mut stopped = None;
    let context = policy.spec().context;
    codec.note_long_prompts(&name, &set.name, &split.train.iter().chain(&split.held_out).collect::<Vec<_>>(), context, b.max_new);
    let decoding = rollout(&name, b.temperature, &b.filters);
    tracing::info!(
        "{name}: best-of-{} fine-tuning on prompts of `{}`: {} steps × {} prompts{} × {} responses (temperature {}), each prompt's best {}{}",
        b.n,
        set.name,
        b.opt.steps,
        b.opt.batch,
        if world.size > 1 { format!(" (each of {} processes answers {})", world.size, b.opt.batch / world.size) } else { String::new() },
        b.n,
        b.temperature,
        b.threshold.map_or("trained on".to_string(), |t| format!("trained on when its reward reaches {t}")),
        policy.lora.describe().map_or(String::new(), |d| format!(", {d}")),
    );
    let started = Instant::now();
    let mut last = None;
    for step in step0..b.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&b.opt.schedule, b.opt.optimizer.lr, step, b.opt.steps);
        // 1. Every process draws the whole step's prompts (the same sampler state) and answers
        // its share, sampling with its own stream: all of a prompt's responses in one process.
        let drawn: Vec<&Example> = (0..b.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let mine = world.shard_rows(&drawn);
        own_stream(recipe.seed, step, world.rank);
        // Each prompt's `n` responses, one after another.
        let examples: Vec<&Example> = mine.iter().flat_map(|e| std::iter::repeat_n(*e, b.n)).collect();
        let (responses, seqs) = respond(&policy, &codec, &examples, context, b.max_new, &decoding)?;
        // 2. Rewards, and each prompt's best.
        let valued = rewarder.terms(&examples, &responses, &seqs, &codec, b.max_new, context, b.opt.accumulate);
        let rewards = rewarder.totals(&valued);
        let bests = best_of(&rewards, b.n);
        let best: f64 = bests.iter().map(|&i| rewards[i]).sum();
        let kept: Vec<usize> = bests.into_iter().filter(|&i| b.threshold.is_none_or(|t| rewards[i] >= t)).collect();
        // 3. SFT on the kept responses: the NLL over every process's kept response tokens.
        let tokens_here: f64 = kept.iter().map(|&i| responses[i].len() as f64).sum();
        let [tokens, kept_all] = world.sums(&[tokens_here, kept.len() as f64])?;
        opt.zero_grad();
        let mut total = Tensor::zeros([1], (Kind::Double, dev));
        // (Micro-batches of `micro` prompts: at most that many kept responses each.)
        for part in kept.chunks(micro.max(1)) {
            let rows: Vec<&Seq> = part.iter().map(|&i| &seqs[i]).collect();
            let batch = pad(&rows, dev);
            let nll = -(token_logprobs(&policy.forward(&batch.x, true), &batch.y) * &batch.w).sum(Kind::Float) / tokens.max(1.0);
            // all_reduce_grads averages over the processes; each share is already a part of the mean.
            policy.backward(&(&nll * world.size as f64))?;
            total += nll.detach().to_kind(Kind::Double);
        }
        opt.all_reduce_grads(world)?;
        world.all_reduce(&total, Reduce::Sum)?;
        let grad_norm = opt.clip_grad_norm(b.opt.grad_clip);
        // Every process knows the kept count over all of them: all step, or none.
        if kept_all > 0.0 {
            opt.step(lr)?;
        }
        let [reward, best, length] = world.sums(&[rewards.iter().sum(), best, responses.iter().map(Vec::len).sum::<usize>() as f64])?;
        let (p, all) = (b.opt.batch as f64, (b.opt.batch * b.n) as f64);
        let loss = total.double_value(&[0]);
        let done = step + 1;
        let eval_now = done % b.opt.eval_every == 0 || done == b.opt.steps;
        let s = eval_now.then(|| score(&policy, None, &codec, &held, b.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
            // Each prompt's responses, and the one trained on (its best, when it reached the threshold).
            let sampled = Sampled { examples: &examples, responses: &responses, terms: &valued, rewards: &rewards };
            let lines = sampled.lines(&rewarder, &codec, |i| json!({"prompt_index": i / b.n, "kept": kept.contains(&i)}));
            completions::write_rollouts(&run, done, &lines)?;
        }
        let shown = s.as_ref().map_or(String::new(), |s| s.progress(false));
        run.progress.line(done, b.opt.log_every, &format!("loss {loss:.4} reward {:.3} best {:.3} kept {:.0}%{shown}", reward / all, best / p, 100.0 * kept_all / p), s.is_some());
        let mut m = json!({
            "step": done, "lr": lr, "loss": loss, "grad_norm": grad_norm, "reward": reward / all, "best_reward": best / p,
            "kept": kept_all / p, "response_length": length / all,
        });
        if let Some(s) = &s {
            s.log_into(&mut m, "val_");
        }
        run.log(m)?;
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, b.opt.steps), s.sampled_gold, serde_json::Value::Null, |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&policy, None, &codec, &held, b.max_new)?,
    };
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "best_of_n",
        "precision": b.opt.precision,
        "model": b.policy.arch,
        "steps": b.opt.steps,
        "n": b.n,
        "threshold": b.threshold,
        "before": before,
        "after": last,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    patience.report_into(&mut report, stopped);
    if b.lora.is_some() {
        report["lora_update_ratio"] = json!(policy.lora_update_ratio());
    }
    tracing::info!("{name}: done — {}", last.against(&before));
    run.finish(&[trained_output(&policy)], report, &ctx.title())
}

/// The index of the best of each run of `n` consecutive rewards (one prompt's responses): the
/// highest, the first of them on a tie.
pub fn best_of(rewards: &[f64], n: usize) -> Vec<usize> {
    rewards.chunks(n.max(1)).enumerate().map(|(p, r)| p * n + r.iter().enumerate().fold(0, |best, (i, &x)| if x > r[best] { i } else { best })).collect()
}
