//! The loop of a `dpo` stage (Rafailov et al. 2023): for each preference pair, the policy's and
//! the frozen reference's log-probabilities of the chosen and rejected responses, and the DPO
//! loss — or, on unpaired feedback, KTO's loss on each judged completion (`feedback.rs`);
//! held-out generation scored every `eval_every` steps.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

mod feedback;
mod kto;
mod logps;
mod others;
mod reference;

use feedback::Judged;
use logps::{logps, logps_weighted, pair_seqs, response_seq, Examples};
use reference::RefLogps;
use crate::posttrain::examples::{Pair, Seq, Split};
use crate::recipe::{DpoLoss, DpoSpec, FDivergence};
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{feedback_examples, instructions, load_policy, preferences, trained_output, Policy};
use crate::run::kit::codec::Codec;
use crate::run::kit::dist::Reduce;
use crate::run::kit::losses::{dpo, dpo_per_pair, log_odds_ratio, DpoTerms};
use crate::run::kit::patience::Patience;
use crate::run::kit::score::score;
use crate::run::kit::seqs::{pad, seed_step};
use crate::run::kit::{completions, device, lifecycle, reference as moving, StageCtx};
use crate::run::model::Model;
use crate::schedule::lr_at;

/// DPO's implicit rewards β·(log π − log π_ref) on held-out pairs, as TRL reports them: the
/// mean reward of the chosen (desirable) and of the rejected (undesirable) responses, their mean
/// margin, and for pairs the share whose chosen response the policy prefers (its held-out
/// pairwise accuracy).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PairScores {
    pub chosen: f64,
    pub rejected: f64,
    pub margin: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// `PairScores` of the held-out `pairs`, read by `reference` as pairs 0, 1, … .
fn held_out_pairs(policy: &Model, reference: &RefLogps, codec: &Codec, pairs: &[Pair], d: &DpoSpec, context: usize, dev: tch::Device) -> Result<PairScores> {
    let (mut c_sum, mut r_sum, mut wins) = (0.0, 0.0, 0.0);
    tch::no_grad(|| -> Result<()> {
        for (k, chunk) in pairs.chunks(32).enumerate() {
            let seqs: Vec<(Seq, Seq)> = chunk.iter().map(|p| pair_seqs(codec, p, context)).collect();
            let rows: Vec<&Seq> = seqs.iter().map(|p| &p.0).chain(seqs.iter().map(|p| &p.1)).collect();
            let b = pad(&rows, dev);
            let n = chunk.len() as i64;
            let idx: Vec<usize> = (32 * k..32 * k + chunk.len()).collect();
            let reward = (logps(policy, &b, false, d.loss).0 - reference.pairs(&b, &idx, d.loss)?) * d.beta;
            let (c, r) = (reward.narrow(0, 0, n), reward.narrow(0, n, n));
            c_sum += c.sum(Kind::Double).double_value(&[]);
            r_sum += r.sum(Kind::Double).double_value(&[]);
            wins += c.gt_tensor(&r).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        }
        Ok(())
    })?;
    let n = pairs.len().max(1) as f64;
    Ok(PairScores { chosen: c_sum / n, rejected: r_sum / n, margin: (c_sum - r_sum) / n, accuracy: Some(wins / n) })
}

pub fn run(ctx: &StageCtx, d: &DpoSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, d.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's pairs of a global batch, in `accumulate` micro-batches of `micro` pairs.
    let micro = d.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(d.opt.device)?;
    world.use_device(&name, dev)?;
    // Preference pairs, or unpaired feedback (KTO only): then `split` is empty and `judged` holds it.
    let (set, split, judged) = match recipe.dpo_rows(d) {
        1 => {
            let (set, judged) = feedback_examples(recipe, &d.data)?;
            (set, Split { train: vec![], held_out: vec![] }, Some(judged))
        }
        _ => {
            let (set, split) = preferences(recipe, &d.data)?;
            (set, split, None)
        }
    };
    let train_len = judged.as_ref().map_or(split.train.len(), |j| j.train.len());
    let codec = Codec::new(recipe, &set)?;
    let (_, held) = instructions(recipe, &d.data)?;
    let held: Vec<_> = held.held_out.into_iter().take(d.eval_examples).collect();
    // SimPO and ORPO compare with no reference: none is loaded (nor any KL to it reported), nor
    // with its log-probabilities precomputed. With LoRA only the adapters train, from zero: the
    // policy starts as its reference.
    let Policy { model: policy, names, params, reference } = load_policy(recipe, &ctx.runs, &d.policy, d.lora.as_ref(), &d.opt, d.holds_reference(), dev)?;
    let reference = reference.as_ref();
    // The chosen responses' NLL per token joins the loss: ORPO's own term, or RPO's (`rpo_alpha`).
    let nll_weight = if d.loss == DpoLoss::Orpo { 1.0 } else { d.rpo_alpha.unwrap_or(0.0) };
    let mut terms = DpoTerms { beta: d.beta, loss: d.loss, smoothing: d.label_smoothing, gamma: d.gamma.unwrap_or(0.0), kl: 0.0, weights: d.kto_weights, tau: d.discopop_tau.unwrap_or(0.0), divergence: d.f_divergence };
    let before = score(&policy, reference, &codec, &held, d.max_new)?;
    completions::write(&run, 0, &before)?;
    let held_pairs: Vec<Pair> = split.held_out.iter().take(d.eval_examples).cloned().collect();
    let held_judged: Vec<_> = judged.iter().flat_map(|j| j.held_out.iter().take(d.eval_examples).cloned()).collect();
    let sampler = Rng(recipe.seed ^ 0xD90);
    // Before a checkpoint's weights are loaded: the policy is still its reference.
    let examples = match &judged {
        Some(j) => (Examples::Feedback(&j.train), Examples::Feedback(&held_judged)),
        None => (Examples::Pairs(&split.train), Examples::Pairs(&held_pairs)),
    };
    let others = others::load(recipe, d, judged.is_some())?;
    let other_sets: Vec<_> = others.iter().map(|o| (o.examples(), &o.codec)).collect();
    let precomputed = if d.precompute_ref_log_probs { Some(reference::Precomputed::new(&name, &policy, &codec, examples, &other_sets, d, micro, sampler, world, dev)?) } else { None };
    let refs = precomputed.as_ref().map_or(RefLogps::Model(reference), |p| RefLogps::Table(&p.train));
    let held_refs = precomputed.as_ref().map_or(RefLogps::Model(reference), |p| RefLogps::Table(&p.held));
    let others_refs: Vec<RefLogps> = (0..others.len()).map(|k| precomputed.as_ref().map_or(RefLogps::Model(reference), |p| RefLogps::Table(&p.others[k]))).collect();
    let mut opt = Optimizer::new(&params, &names, &d.opt.optimizer);
    moving::keep_in_checkpoints(&mut run, d.sync_ref.as_ref(), reference);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, sampler)?;
    // Watched: the held-out pairs' accuracy (TRL's eval_rewards/accuracies), else the gold reward.
    // On feedback, the held-out margin between desirable and undesirable completions' rewards.
    let measure = match (judged.is_some(), held_pairs.is_empty()) {
        (true, _) => "reward_margin",
        (false, true) => "sampled_gold_reward",
        (false, false) => "pairwise_accuracy",
    };
    let mut patience = Patience::new(d.opt.patience, measure, &extra);
    let mut stopped = None;
    opt.broadcast_state(world)?;
    let context = policy.spec().context;
    let mut settings = vec![format!("{} loss", d.loss.name()), format!("β = {}", d.beta)];
    if d.label_smoothing > 0.0 {
        settings.push(format!("label smoothing {}", d.label_smoothing));
    }
    settings.extend(d.gamma.map(|g| format!("γ = {g}")));
    settings.extend(d.discopop_tau.map(|t| format!("τ = {t}")));
    settings.extend(match d.f_divergence {
        FDivergence::ReverseKl => None,
        FDivergence::JsDivergence => Some("h under the Jensen–Shannon divergence (f-DPO)".to_string()),
        FDivergence::AlphaDivergence { coef } => Some(format!("h under the α-divergence, α = {coef} (f-DPO)")),
    });
    if d.loss.sorts() && micro < d.opt.batch {
        settings.push(format!("sorted within each micro-batch of {micro} pairs"));
    }
    match &precomputed {
        Some(p) => settings.push(p.describe(train_len)),
        None if reference.is_none() => settings.push("no reference".into()),
        None => {}
    }
    settings.extend(d.rpo_alpha.map(|a| format!("NLL weight {a}")));
    settings.extend(d.sync_ref.as_ref().map(moving::describe));
    settings.extend(d.use_weighting.then(|| "pairs weighed by the policy's likelihood of both responses (WPO)".to_string()));
    settings.extend(policy.lora.describe());
    match &judged {
        Some(j) => {
            settings.extend((d.kto_weights != (1.0, 1.0)).then(|| format!("weights {} and {}", d.kto_weights.0, d.kto_weights.1)));
            let good = j.train.iter().filter(|f| f.desirable).count();
            let kind = if d.loss == DpoLoss::Kto { "KTO" } else { "Unpaired preference optimisation" };
            tracing::info!("{name}: {kind} ({}) on `{}` ({} examples: {good} desirable, {} not) for {} steps × {} examples", settings.join(", "), set.name, j.train.len(), j.train.len() - good, d.opt.steps, d.opt.batch);
            if let Some(w) = feedback::imbalance(good, j.train.len() - good, d.kto_weights) {
                tracing::warn!("{name}: {w}");
            }
        }
        None => tracing::info!("{name}: DPO ({}) on `{}` ({} pairs) for {} steps × {} pairs", settings.join(", "), set.name, split.train.len(), d.opt.steps, d.opt.batch),
    }
    let started = Instant::now();
    let (mut last, mut last_pairs) = (None, None);
    for step in step0..d.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&d.opt.schedule, d.opt.optimizer.lr, step, d.opt.steps);
        // Every process draws the whole global batch (the same sampler state) and keeps its pairs.
        let drawn: Vec<usize> = (0..d.opt.batch).map(|_| rng.below(train_len as u64) as usize).collect();
        // Sums over the global batch: loss × pairs, the implicit rewards' margins, pairs won,
        // chosen and rejected rewards β·(log π − log π_ref); ORPO's NLL and log odds ratio. (On
        // feedback: loss × examples, 0, 0, the desirable and undesirable rewards, their counts.)
        let sums = Tensor::zeros([7], (Kind::Double, dev));
        if d.loss == DpoLoss::Kto {
            let point = kto::ReferencePoint { policy: &policy, reference, precomputed: precomputed.as_ref().and_then(|p| p.mismatched.as_ref()), examples: examples.0, codec: &codec };
            terms.kl = point.at(&drawn, micro, world, dev)?;
        }
        if let Some(j) = &judged {
            opt.zero_grad();
            let step = Judged { policy: &policy, reference: &refs, codec: &codec, terms: &terms, context, dev };
            step.backward(&j.train, &drawn, micro, world, &sums)?;
        } else {
            let pairs: Vec<(Seq, Seq)> = drawn.iter().map(|&j| pair_seqs(&codec, &split.train[j], context)).collect();
            let (mine, mine_drawn) = (world.shard_rows(&pairs), world.shard_rows(&drawn));
            opt.zero_grad();
            // The chosen responses' NLL (ORPO's, RPO's) is per chosen token of the whole batch: each
            // process divides its sum by its share of their number, as its gradients are averaged.
            let chosen_tokens = pairs.iter().map(|p| p.0.weights.iter().map(|&w| w as f64).sum::<f64>()).sum::<f64>().max(1.0) / world.size as f64;
            for (part, part_drawn) in mine.chunks(micro).zip(mine_drawn.chunks(micro)) {
                // One batch: the chosen rows, then the rejected rows.
                let rows: Vec<&Seq> = part.iter().map(|p| &p.0).chain(part.iter().map(|p| &p.1)).collect();
                let b = pad(&rows, dev);
                let n = part.len() as i64;
                let (pi, pi_sum, weights) = logps_weighted(&policy, &b, true, d.loss, d.use_weighting); // (2n)
                let rf = refs.pairs(&b, part_drawn, d.loss)?;
                let (pc, pr, rc, rr) = (pi.narrow(0, 0, n), pi.narrow(0, n, n), rf.narrow(0, 0, n), rf.narrow(0, n, n));
                let mut loss = match &weights {
                    // WPO: each pair's loss times its chosen and rejected responses' weights.
                    Some(w) => (dpo_per_pair(&pc, &pr, &rc, &rr, &terms) * w.narrow(0, 0, n) * w.narrow(0, n, n)).mean(Kind::Float),
                    None => dpo(&pc, &pr, &rc, &rr, &terms),
                };
                let (mut nll, mut odds) = (Tensor::zeros([], (Kind::Double, dev)), Tensor::zeros([], (Kind::Double, dev)));
                if nll_weight > 0.0 {
                    // As a mean over this process's pairs, like the preference term, once weighted below.
                    let part_nll = -pi_sum.narrow(0, 0, n).sum(Kind::Float) / chosen_tokens * (mine.len() as f64 / part.len() as f64);
                    loss += &part_nll * nll_weight;
                    nll = part_nll.detach().to_kind(Kind::Double) * n as f64; // as the loss's row: a sum over pairs
                }
                if d.loss == DpoLoss::Orpo {
                    odds = log_odds_ratio(&pc, &pr).detach().to_kind(Kind::Double).sum(Kind::Double);
                }
                // Each micro-batch's mean, weighted by its share of this process's pairs.
                policy.backward(&if part.len() == mine.len() { loss.shallow_clone() } else { &loss * (part.len() as f64 / mine.len() as f64) })?;
                let (chosen, rejected) = ((&pc - &rc).detach() * d.beta, (&pr - &rr).detach() * d.beta);
                let margin = &chosen - &rejected;
                let sum = |t: &Tensor| t.to_kind(Kind::Double).sum(Kind::Double);
                let row = [loss.detach().to_kind(Kind::Double) * n as f64, sum(&margin), sum(&margin.gt(0.0)), sum(&chosen), sum(&rejected), nll, odds];
                let _ = sums.shallow_clone().g_add_(&Tensor::stack(&row, 0));
            }
        }
        opt.all_reduce_grads(world)?;
        world.all_reduce(&sums, Reduce::Sum)?;
        let grad_norm = opt.clip_grad_norm(d.opt.grad_clip);
        opt.step(lr)?;
        let done = step + 1;
        moving::sync_after(d.sync_ref.as_ref(), reference, &policy, done);
        let mean = |i: i64| sums.double_value(&[i]) / d.opt.batch as f64;
        let (loss_v, margin_v, acc, chosen_v, rejected_v) = if judged.is_some() {
            // Each kind's mean reward (NaN, logged as null, when a batch has none of it).
            let per = |i: i64, n: i64| sums.double_value(&[i]) / sums.double_value(&[n]);
            let (c, r) = (per(3, 5), per(4, 6));
            (mean(0), c - r, None, c, r)
        } else {
            (mean(0), mean(1), Some(mean(2)), mean(3), mean(4))
        };
        let eval_now = done % d.opt.eval_every == 0 || done == d.opt.steps;
        let s = eval_now.then(|| score(&policy, reference, &codec, &held, d.max_new)).transpose()?;
        if let Some(s) = &s {
            completions::write(&run, done, s)?;
        }
        let pairs_now = match judged {
            Some(_) if eval_now => Some(Judged { policy: &policy, reference: &held_refs, codec: &codec, terms: &terms, context, dev }.held_out(&held_judged)?),
            None if eval_now && !held_pairs.is_empty() => Some(held_out_pairs(&policy, &held_refs, &codec, &held_pairs, d, context, dev)?),
            _ => None,
        };
        let shown = s.as_ref().map_or(String::new(), |s| format!(" held-out: greedy exact {:.1}%; sampled exact {:.1}% verbose {:.1}% gold {:.3}{}", 100.0 * s.exact, 100.0 * s.sampled_exact, 100.0 * s.sampled_verbose, s.sampled_gold, s.kl.map_or(String::new(), |kl| format!("; KL {kl:.3}"))));
        let acc_shown = acc.map_or(String::new(), |a| format!(" acc {:.0}%", 100.0 * a));
        // (A feedback step of one label alone has no margin between desirable and undesirable.)
        let margin_shown = if margin_v.is_finite() { format!(" margin {margin_v:.3}") } else { " (one label only: no margin)".to_string() };
        run.progress.line(done, d.opt.log_every, &format!("loss {loss_v:.4}{margin_shown}{acc_shown}{shown}"), s.is_some());
        if done % d.opt.log_every == 0 || s.is_some() {
            // TRL's names for the training batch's implicit rewards, and the held-out pairs'.
            let mut m = json!({"step": done, "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "margin": margin_v,
                "rewards/chosen": chosen_v, "rewards/rejected": rejected_v, "rewards/margins": margin_v});
            if let Some(a) = acc {
                m["accuracy"] = json!(a);
                m["rewards/accuracies"] = json!(a);
            }
            if nll_weight > 0.0 {
                m["nll_loss"] = json!(mean(5));
            }
            if d.loss == DpoLoss::Orpo {
                m["log_odds_ratio"] = json!(mean(6));
            }
            if judged.is_some() {
                m["count/chosen"] = json!(sums.double_value(&[5]));
                m["count/rejected"] = json!(sums.double_value(&[6]));
            }
            if let Some(s) = &s {
                s.log_into(&mut m, "");
            }
            // KTO's reference point is TRL's `kl`; the held-out sampled KL then goes beside it.
            if d.loss == DpoLoss::Kto {
                if let Some(k) = s.as_ref().and_then(|s| s.kl) {
                    m["sampled_kl"] = json!(k);
                }
                m["kl"] = json!(terms.kl);
            }
            for (o, r) in others.iter().zip(&others_refs).filter(|_| s.is_some()) {
                let p = o.score(&policy, r, &terms, d, dev)?;
                m[format!("eval_rewards/margins/{}", o.name)] = json!(p.margin);
                if let Some(a) = p.accuracy {
                    m[format!("eval_rewards/accuracies/{}", o.name)] = json!(a);
                }
            }
            if let Some(p) = &pairs_now {
                m["eval_rewards/chosen"] = json!(p.chosen);
                m["eval_rewards/rejected"] = json!(p.rejected);
                m["eval_rewards/margins"] = json!(p.margin);
                if let Some(a) = p.accuracy {
                    m["eval_rewards/accuracies"] = json!(a);
                }
            }
            run.log(m)?;
        }
        if let Some(p) = pairs_now {
            last_pairs = Some(p);
        }
        if let Some(s) = s {
            let stop = patience.evaluated(&name, (done, d.opt.steps), pairs_now.map_or(s.sampled_gold, |p| p.accuracy.unwrap_or(p.margin)), serde_json::Value::Null, |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
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
        None => score(&policy, reference, &codec, &held, d.max_new)?,
    };
    if last_pairs.is_none() && judged.is_some() {
        last_pairs = Some(Judged { policy: &policy, reference: &held_refs, codec: &codec, terms: &terms, context, dev }.held_out(&held_judged)?);
    } else if last_pairs.is_none() && !held_pairs.is_empty() {
        last_pairs = Some(held_out_pairs(&policy, &held_refs, &codec, &held_pairs, d, context, dev)?);
    }
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "dpo",
        "precision": d.opt.precision,
        // (A LoRA policy's reference is its own base: no weights of its own, as the plan counts it.)
        "reference_weight_bytes": reference.filter(|_| policy.lora.is_empty()).map_or(0, |r| r.weight_bytes()),
        "loss": d.loss.name(),
        "model": d.policy.arch,
        "beta": d.beta,
        "steps": d.opt.steps,
        "before": before,
        "after": last,
        "held_out_pairs": held_pairs.len(),
        "held_out_rewards": last_pairs,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    if judged.is_some() {
        report["held_out_feedback"] = json!(held_judged.len());
    }
    for (o, r) in others.iter().zip(&others_refs) {
        report["eval_data"][&o.name] = json!(o.score(&policy, r, &terms, d, dev)?);
    }
    if let Some(p) = &precomputed {
        // (Unpaired feedback is precomputed an example at a time.)
        report[if judged.is_some() { "precomputed_reference_examples" } else { "precomputed_reference_pairs" }] = json!(p.train.computed.len());
    }
    patience.report_into(&mut report, stopped);
    tracing::info!(
        "{name}: done — held-out (sampled) preferred behaviour (exact, concise) {:.1}% (was {:.1}%), verbose {:.1}% (was {:.1}%), gold reward {:.3} (was {:.3}){}",
        100.0 * last.sampled_exact,
        100.0 * before.sampled_exact,
        100.0 * last.sampled_verbose,
        100.0 * before.sampled_verbose,
        last.sampled_gold,
        before.sampled_gold,
        last.kl.map_or(String::new(), |kl| format!(", KL to reference {kl:.3}"))
    );
    if d.lora.is_some() {
        report["lora_update_ratio"] = json!(policy.lora_update_ratio());
    }
    run.finish(&[trained_output(&policy)], report, &ctx.title())
}
