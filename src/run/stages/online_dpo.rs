//! The loop of an `online_dpo` stage (Guo et al. 2024; TRL's OnlineDPOTrainer), written out:
//!   1. draw `batch` prompts; the policy writes two responses to each (sampled at `temperature`
//!      through the rollout filters);
//!   2. the recipe's reward scores every response (less `missing_eos_penalty` where the end
//!      marker is missing); of each prompt's two the higher is chosen, the first on a tie;
//!   3. DPO's loss (`sigmoid` or `ipo`) on the pairs, log-probabilities summed over each
//!      response, against the frozen starting policy; backward, clip, AdamW.
//!
//! Logged as TRL logs it: the scores and their margin, the implicit rewards, log-probabilities,
//! KL and entropy of the responses; held-out scores every `eval_every` steps. With several
//! processes each answers its share of the prompts and the gradients are averaged.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::posttrain::examples::{Example, Seq};
use crate::recipe::{DpoLoss, OnlineDpoSpec};
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{instructions, load_policy, trained_output, Policy};
use crate::run::kit::codec::Codec;
use crate::run::kit::decode::rollout;
use crate::run::kit::losses::{dpo_per_pair, DpoTerms};
use crate::run::kit::patience::Patience;
use crate::run::kit::rewards::{Rewarder, Sampled};
use crate::run::kit::score::score;
use crate::run::kit::seqs::{own_stream, pad, respond, seed_step, seq_logprob};
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::run::model::Model;
use crate::schedule::lr_at;

pub fn run(ctx: &StageCtx, o: &OnlineDpoSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, o.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's prompts of a step, in `accumulate` micro-batches of `micro` prompts.
    let micro = o.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(o.opt.device)?;
    world.use_device(&name, dev)?;
    let (set, split) = instructions(recipe, &o.prompts)?;
    let codec = Codec::new(recipe, &set)?;
    let held: Vec<Example> = split.held_out.iter().take(o.eval_examples).cloned().collect();
    // The reference is the starting policy: a frozen copy, or with LoRA the policy without them.
    let Policy { model: policy, names, params, reference } = load_policy(recipe, &ctx.runs, &o.policy, o.lora.as_ref(), &o.opt, true, dev)?;
    let reference = reference.context("online DPO holds a reference")?;
    let rewarder = Rewarder::load(recipe, &ctx.runs, &name, &o.reward, o.opt.precision, dev)?;
    // The starting point's score, before a resumed run restores its trained weights.
    let before = score(&policy, Some(&reference), &codec, &held, o.max_new)?;
    completions::write(&run, 0, &before)?;
    let mut opt = Optimizer::new(&params, &names, &o.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x0D90))?;
    opt.broadcast_state(world)?;
    let mut patience = Patience::new(o.opt.patience, "sampled_gold_reward", &extra);
    let mut stopped = None;
    let context = policy.spec().context;
    codec.note_long_prompts(&name, &set.name, &split.train.iter().chain(&split.held_out).collect::<Vec<_>>(), context, o.max_new);
    let decoding = rollout(&name, o.temperature, &o.filters);
    tracing::info!(
        "{name}: online DPO on prompts of `{}`: {} steps × {} prompts{} × 2 responses (temperature {}), the higher-rewarded one chosen, {} loss at β = {}{}{}",
        set.name,
        o.opt.steps,
        o.opt.batch,
        if world.size > 1 { format!(" (each of {} processes answers {})", world.size, o.opt.batch / world.size) } else { String::new() },
        o.temperature,
        if o.loss == DpoLoss::Ipo { "IPO's" } else { "DPO's sigmoid" },
        o.beta,
        o.missing_eos_penalty.map_or(String::new(), |p| format!(", {p} off the reward of a response without the end marker")),
        policy.lora.describe().map_or(String::new(), |d| format!(", {d}")),
    );
    let terms = DpoTerms { beta: o.beta, loss: o.loss, smoothing: 0.0, gamma: 0.0, kl: 0.0, weights: (1.0, 1.0), tau: 1.0, divergence: Default::default() };
    let started = Instant::now();
    let mut last = None;
    for step in step0..o.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&o.opt.schedule, o.opt.optimizer.lr, step, o.opt.steps);
        // 1. Every process draws the whole step's prompts (the same sampler state) and answers
        // its share, sampling with its own stream: both responses of a prompt in one process.
        let drawn: Vec<&Example> = (0..o.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let mine = world.shard_rows(&drawn);
        own_stream(recipe.seed, step, world.rank);
        let k = mine.len();
        // The first responses of the prompts, then the second ones.
        let examples: Vec<&Example> = mine.iter().chain(mine.iter()).copied().collect();
        let (responses, seqs) = respond(&policy, &codec, &examples, context, o.max_new, &decoding)?;
        // 2. Rewards, and each prompt's pair.
        let ended: Vec<bool> = responses.iter().map(|r| codec.ended(r)).collect();
        let valued = rewarder.terms(&examples, &responses, &seqs, &codec, o.max_new, context, o.opt.accumulate);
        let mut rewards = rewarder.totals(&valued);
        if let Some(p) = o.missing_eos_penalty {
            rewards.iter_mut().zip(&ended).filter(|(_, &e)| !e).for_each(|(r, _)| *r -= p);
        }
        let pairs = rank(&rewards, k);
        // 3. The loss over micro-batches of prompts, each weighing its share of the step's pairs.
        opt.zero_grad();
        let mut sums = PairSums::default();
        let all: Vec<usize> = (0..k).collect();
        for part in all.chunks(micro.max(1)) {
            let rows: Vec<&Seq> = part.iter().map(|&i| &seqs[pairs[i].0]).chain(part.iter().map(|&i| &seqs[pairs[i].1])).collect();
            let loss = sums.add(&policy, &reference, &rows, &terms, dev);
            // all_reduce_grads averages over the processes; each share is already a part of the mean.
            policy.backward(&(loss * (world.size as f64 / o.opt.batch as f64)))?;
        }
        opt.all_reduce_grads(world)?;
        let grad_norm = opt.clip_grad_norm(o.opt.grad_clip);
        opt.step(lr)?;
        let score_margin: f64 = pairs.iter().map(|&(c, r)| rewards[c] - rewards[r]).sum();
        let here = [sums.loss, sums.chosen, sums.rejected, sums.right, sums.logp_chosen, sums.logp_rejected, sums.kl, sums.logp, rewards.iter().sum(), score_margin, ended.iter().filter(|&&e| e).count() as f64, responses.iter().map(Vec::len).sum::<usize>() as f64];
        let [loss, chosen, rejected, right, logp_c, logp_r, kl, logp, reward, margin, with_eos, length] = world.sums(&here)?;
        let (p, n) = (o.opt.batch as f64, 2.0 * o.opt.batch as f64);
        let done = step + 1;
        let eval_now = done % o.opt.eval_every == 0 || done == o.opt.steps;
        let s = eval_now.then(|| score(&policy, Some(&reference), &codec, &held, o.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
            // Each prompt's two responses, which the loss chose and which it rejected.
            let sampled = Sampled { examples: &examples, responses: &responses, terms: &valued, rewards: &rewards };
            let role = |i: usize| if pairs[i % k].0 == i { "chosen" } else { "rejected" };
            let lines = sampled.lines(&rewarder, &codec, |i| json!({"pair": i % k, "role": role(i), "missing_eos_penalty": o.missing_eos_penalty.filter(|_| !ended[i])}));
            completions::write_rollouts(&run, done, &lines)?;
        }
        let shown = s.as_ref().map_or(String::new(), |s| s.progress(false));
        run.progress.line(done, o.opt.log_every, &format!("loss {:.4} score {:.3} margin {:.3} accuracy {:.0}% KL {:.3}{shown}", loss / p, reward / n, margin / p, 100.0 * right / p, kl / n), s.is_some());
        let mut m = json!({
            "step": done, "lr": lr, "loss": loss / p, "grad_norm": grad_norm,
            "objective/scores": reward / n, "objective/scores_margin": margin / p, "objective/kl": kl / n, "objective/entropy": -logp / n,
            "rewards/chosen": chosen / p, "rewards/rejected": rejected / p, "rewards/margins": (chosen - rejected) / p, "rewards/accuracies": right / p,
            "logps/chosen": logp_c / p, "logps/rejected": logp_r / p, "val/contain_eos_token": with_eos / n, "response_length": length / n,
        });
        if let Some(s) = &s {
            s.log_into(&mut m, "val_");
        }
        run.log(m)?;
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, o.opt.steps), s.sampled_gold, serde_json::Value::Null, |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&policy, Some(&reference), &codec, &held, o.max_new)?,
    };
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "online_dpo",
        "precision": o.opt.precision,
        "model": o.policy.arch,
        "steps": o.opt.steps,
        "beta": o.beta,
        "loss": o.loss,
        "before": before,
        "after": last,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    patience.report_into(&mut report, stopped);
    if o.lora.is_some() {
        report["lora_update_ratio"] = json!(policy.lora_update_ratio());
    }
    tracing::info!("{name}: done — {}", last.against(&before));
    run.finish(&[trained_output(&policy)], report, &ctx.title())
}

/// Each prompt's (chosen, rejected) responses, as indices into `rewards`, whose first `k` are the
/// prompts' first responses and next `k` their second: the higher reward is chosen, the first
/// response on a tie (TRL's `first_half >= second_half`).
pub fn rank(rewards: &[f64], k: usize) -> Vec<(usize, usize)> {
    (0..k).map(|i| if rewards[i] >= rewards[i + k] { (i, i + k) } else { (i + k, i) }).collect()
}

/// Sums over a step's pairs of what is logged: the loss, the implicit rewards β·(log π − log π_ref)
/// of the chosen and rejected responses, pairs ranked right by them, the responses' summed
/// log-probabilities, their KL to the reference (Σ log π − log π_ref) and log-probabilities.
#[derive(Default)]
struct PairSums {
    loss: f64,
    chosen: f64,
    rejected: f64,
    right: f64,
    logp_chosen: f64,
    logp_rejected: f64,
    kl: f64,
    logp: f64,
}

impl PairSums {
    /// The summed loss of the pairs `rows` (the chosen responses, then as many rejected ones),
    /// with its graph; what is logged of them is added in.
    fn add(&mut self, policy: &Model, reference: &Model, rows: &[&Seq], t: &DpoTerms, dev: tch::Device) -> Tensor {
        let p = (rows.len() / 2) as i64;
        let b = pad(rows, dev);
        let lp = seq_logprob(policy, &b, true);
        let ref_lp = tch::no_grad(|| seq_logprob(reference, &b, false));
        let half = |x: &Tensor| (x.narrow(0, 0, p), x.narrow(0, p, p));
        let ((pc, pr), (rc, rr)) = (half(&lp), half(&ref_lp));
        let loss = dpo_per_pair(&pc, &pr, &rc, &rr, t).sum(Kind::Float);
        let sum = |x: Tensor| x.sum(Kind::Double).double_value(&[]);
        let (c, r) = ((&pc - &rc).detach() * t.beta, (&pr - &rr).detach() * t.beta);
        self.loss += loss.double_value(&[]);
        self.right += sum((&c - &r).gt(0.0).to_kind(Kind::Double));
        self.chosen += sum(c);
        self.rejected += sum(r);
        self.logp_chosen += sum(pc.detach());
        self.logp_rejected += sum(pr.detach());
        self.kl += sum((&lp - &ref_lp).detach());
        self.logp += sum(lp.detach());
        loss
    }
}
