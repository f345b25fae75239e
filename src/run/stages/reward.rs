//! The loop of a `reward_model` stage: a scalar head on a language model's final hidden state
//! at the last token, trained on preference pairs with the Bradley–Terry loss; held-out pairwise
//! accuracy every `eval_every` steps. Saves the trunk and `reward_head.{weight,bias}` together.

use anyhow::Result;
use serde_json::json;
use std::time::Instant;
use tch::{Kind, Tensor};

use crate::posttrain::examples::Pair;
use crate::recipe::RewardSpec;
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::artifacts::{load_base, preferences, trained};
use crate::run::kit::losses::bradley_terry;
use crate::run::kit::codec::Codec;
use crate::run::kit::dist::Reduce;
use crate::run::kit::patience::Patience;
use crate::run::kit::{completions, device, lifecycle, StageCtx};
use crate::run::model::heads::RewardModel;
use crate::run::kit::seqs::{seed_step, to_f64s};
use crate::schedule::lr_at;

/// Token rows of (prompt, chosen) and (prompt, rejected), cut to the context.
pub fn pair_rows(codec: &Codec, pairs: &[&Pair], ctx: usize) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let row = |p: &Pair, r: &str| -> Vec<i64> {
        let (mut v, response) = codec.pair(&p.prompt, r);
        v.extend(response);
        v.truncate(ctx);
        v
    };
    (pairs.iter().map(|p| row(p, &p.chosen)).collect(), pairs.iter().map(|p| row(p, &p.rejected)).collect())
}

/// Share of pairs where the chosen response scores higher, and each pair's scores (chosen,
/// rejected).
pub fn pairwise_accuracy(rm: &RewardModel, codec: &Codec, pairs: &[Pair]) -> (f64, Vec<(f64, f64)>) {
    let ctx = rm.trunk.spec().context;
    let mut scores = vec![];
    tch::no_grad(|| {
        for chunk in pairs.chunks(64) {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let (c, r) = pair_rows(codec, &refs, ctx);
            scores.extend(to_f64s(&rm.score(&c, false)).into_iter().zip(to_f64s(&rm.score(&r, false))));
        }
    });
    let right = scores.iter().filter(|(c, r)| c > r).count();
    (right as f64 / pairs.len().max(1) as f64, scores)
}

/// The held-out pairs as the reward model scores them, a line each, for `scores/step-N.jsonl`
/// (TRL's RewardTrainer shows such a table at each evaluation).
fn scored_lines(pairs: &[Pair], scores: &[(f64, f64)]) -> Vec<serde_json::Value> {
    pairs.iter().zip(scores).map(|(p, (c, r))| json!({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "chosen_score": c, "rejected_score": r, "right": c > r})).collect()
}

pub fn run(ctx: &StageCtx, r: &RewardSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.clone());
    let Some(mut run) = lifecycle::begin_stage(ctx, r.opt.steps)? else { return Ok(()) };
    let world = ctx.world;
    // Each process's pairs of a global batch, in `accumulate` micro-batches of `micro` pairs.
    let micro = r.opt.micro_batch(&name, world.size).map_err(anyhow::Error::msg)?;
    let dev = device::device(r.opt.device)?;
    world.use_device(&name, dev)?;
    let (set, split) = preferences(recipe, &r.data)?;
    let codec = Codec::new(recipe, &set)?;
    // Each `eval_data` set's held-out pairs, with its own codec (the same tokenizer).
    let mut eval_sets = vec![];
    for n in &r.eval_data {
        let (other, other_split) = preferences(recipe, n)?;
        eval_sets.push((n.clone(), Codec::new(recipe, &other)?, other_split.held_out));
    }
    let mut trunk = load_base(recipe, &ctx.runs, &r.model, r.lora.as_ref(), dev)?.computing(r.opt.precision);
    if let Some(l) = &r.lora {
        trunk.attach_lora(l)?;
    }
    trunk.set_recompute(r.opt.activation_checkpointing);
    let mut rm = RewardModel::new(trunk);
    // What trains: the trunk (or its adapters) and the head.
    let (names, params): (Vec<String>, Vec<Tensor>) = trained(&rm.trunk).into_iter().chain(rm.head.named()).unzip();
    let mut opt = Optimizer::new(&params, &names, &r.opt.optimizer);
    let (step0, mut rng, extra) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x2E3A))?;
    let mut patience = Patience::new(r.opt.patience, "pairwise_accuracy", &extra);
    let mut stopped = None;
    opt.broadcast_state(world)?;
    let context = rm.trunk.spec().context;
    let adapter = rm.trunk.lora.describe().map_or(String::new(), |d| format!(", {d} and the head"));
    tracing::info!("{name}: training a reward model on `{}` ({} pairs, {} held out) for {} steps × {} pairs{adapter}", set.name, split.train.len(), split.held_out.len(), r.opt.steps, r.opt.batch);
    let started = Instant::now();
    let mut acc = None;
    for step in step0..r.opt.steps {
        if patience.exhausted() {
            stopped = Some(step); // resumed after it had stopped
            break;
        }
        seed_step(recipe.seed, step);
        let lr = lr_at(&r.opt.schedule, r.opt.optimizer.lr, step, r.opt.steps);
        // Every process draws the whole global batch (the same sampler state) and keeps its pairs.
        let pairs: Vec<&Pair> = (0..r.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let mine = world.shard_rows(&pairs);
        opt.zero_grad();
        // Sums over the global batch: loss × pairs, pairs the model ranks right, chosen and
        // rejected scores.
        let sums = Tensor::zeros([4], (Kind::Double, dev));
        for part in mine.chunks(micro) {
            let (c, rj) = pair_rows(&codec, part, context);
            let (sc, sr) = (rm.score(&c, true), rm.score(&rj, true));
            let margins: Vec<f32> = part.iter().map(|p| p.margin as f32).collect();
            let mut loss = bradley_terry(&sc, &sr, &Tensor::from_slice(&margins).to_device(dev));
            if let Some(c) = r.center_rewards {
                loss += (&sc + &sr).square().mean(Kind::Float) * c;
            }
            // Each micro-batch's mean, weighted by its share of this process's pairs.
            rm.trunk.backward(&if part.len() == mine.len() { loss.shallow_clone() } else { &loss * (part.len() as f64 / mine.len() as f64) })?;
            let right = sc.gt_tensor(&sr).to_kind(Kind::Double).sum(Kind::Double);
            let total = |t: &Tensor| t.detach().to_kind(Kind::Double).sum(Kind::Double);
            let _ = sums.shallow_clone().g_add_(&Tensor::stack(&[loss.detach().to_kind(Kind::Double) * part.len() as f64, right, total(&sc), total(&sr)], 0));
        }
        opt.all_reduce_grads(world)?;
        world.all_reduce(&sums, Reduce::Sum)?;
        let grad_norm = opt.clip_grad_norm(r.opt.grad_clip);
        opt.step(lr)?;
        let done = step + 1;
        let (loss_v, train_acc) = (sums.double_value(&[0]) / r.opt.batch as f64, sums.double_value(&[1]) / r.opt.batch as f64);
        let eval_now = done % r.opt.eval_every == 0 || done == r.opt.steps;
        let scored = eval_now.then(|| pairwise_accuracy(&rm, &codec, &split.held_out));
        if let Some((_, scores)) = &scored {
            completions::write_jsonl(&run, "scores", &format!("step-{done}"), &scored_lines(&split.held_out, scores))?;
        }
        let a = scored.map(|(a, _)| a);
        let shown = a.map_or(String::new(), |a| format!(" held-out accuracy {:.1}%", 100.0 * a));
        run.progress.line(done, r.opt.log_every, &format!("loss {loss_v:.4} batch accuracy {:.0}%{shown} lr {lr:.2e}", 100.0 * train_acc), a.is_some());
        if done % r.opt.log_every == 0 || a.is_some() {
            let score = |i: i64| sums.double_value(&[i]) / r.opt.batch as f64;
            let mut m = json!({"step": done, "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "accuracy": train_acc, "rewards/chosen": score(2), "rewards/rejected": score(3)});
            if let Some(a) = a {
                m["val_accuracy"] = json!(a);
                for (n, codec, pairs) in &eval_sets {
                    m[format!("val_accuracy/{n}")] = json!(pairwise_accuracy(&rm, codec, pairs).0);
                }
            }
            run.log(m)?;
        }
        if let Some(a) = a {
            acc = Some(a);
            let stop = patience.evaluated(&name, (done, r.opt.steps), a, serde_json::Value::Null, |extra| run.checkpoint(done, &names, &params, &opt, rng, extra))?;
            if stop {
                stopped = Some(done);
                break;
            }
        }
    }
    // A run resumed with no step left to take measures its weights here.
    let acc = acc.unwrap_or_else(|| pairwise_accuracy(&rm, &codec, &split.held_out).0);
    let mut report = json!({
        "experiment": recipe.experiment,
        "kind": "reward_model",
        "precision": r.opt.precision,
        "model": r.model.arch,
        "steps": r.opt.steps,
        "held_out_pairs": split.held_out.len(),
        "held_out_accuracy": acc,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    for (n, codec, pairs) in &eval_sets {
        report["eval_data"][n] = json!({"pairs": pairs.len(), "accuracy": pairwise_accuracy(&rm, codec, pairs).0});
    }
    patience.report_into(&mut report, stopped);
    tracing::info!("{name}: done — held-out pairwise accuracy {:.1}% on {} pairs", 100.0 * acc, split.held_out.len());
    if r.lora.is_some() {
        report["lora_update_ratio"] = json!(rm.trunk.lora_update_ratio());
        // Written merged: the reward model later stages read is a trunk and a head, as always.
        rm.trunk.merge_lora();
    }
    run.finish(&[("model.safetensors", rm.named())], report, &ctx.title())
}
