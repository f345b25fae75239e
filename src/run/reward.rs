//! The loop of a `reward_model` stage: a scalar head on a language model's final hidden state
//! at the last token, trained on preference pairs with the Bradley–Terry loss; held-out pairwise
//! accuracy every `eval_every` steps. Saves the trunk and `reward_head.{weight,bias}` together.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use super::adamw::AdamW;
use super::data::Rng;
use super::model::Model;
use super::rl_losses::bradley_terry;
use super::seqs::prompt_ids;
use super::stage_run::{begin, load_lm, preferences};
use super::RunOptions;
use crate::posttrain::examples::Pair;
use crate::recipe::{ExampleSet, Recipe, RewardSpec, StageKind, StageSpec};
use crate::schedule::lr_at;

pub struct RewardModel {
    pub trunk: Model,
    /// (1, d) and (1).
    pub w: Tensor,
    pub b: Tensor,
}

/// Right-padded token rows and the index of each row's last token.
pub fn pad_rows(rows: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut x = vec![0i64; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        x[i * t..i * t + r.len()].copy_from_slice(r);
    }
    let last: Vec<i64> = rows.iter().map(|r| r.len().max(1) as i64 - 1).collect();
    (Tensor::from_slice(&x).view([rows.len() as i64, t as i64]).to_device(device), Tensor::from_slice(&last).to_device(device))
}

/// Gather (B, T, d) hidden states at per-row positions (B) → (B, d).
pub fn at_positions(hidden: &Tensor, pos: &Tensor) -> Tensor {
    let d = hidden.size()[2];
    hidden.gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, d], false), false).squeeze_dim(1)
}

impl RewardModel {
    pub fn new(trunk: Model) -> RewardModel {
        let d = trunk.spec().d_model as i64;
        let dev = trunk.device;
        RewardModel { w: Tensor::zeros([1, d], (Kind::Float, dev)).set_requires_grad(true), b: Tensor::zeros([1], (Kind::Float, dev)).set_requires_grad(true), trunk }
    }

    /// The reward stage's output, frozen.
    pub fn load(recipe: &Recipe, runs: &Path, stage: &str, device: Device) -> Result<RewardModel> {
        let Some(StageKind::RewardModel(r)) = recipe.stage(stage).map(|s| &s.kind) else { anyhow::bail!("`{stage}` is not a reward_model stage") };
        let spec = recipe.model(&r.model.arch).context("checked model")?;
        let path = runs.join(stage).join("model.safetensors");
        let tensors = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut trunk = Model::new(spec, device);
        trunk.load(&tensors)?;
        super::stage_run::freeze(&mut trunk);
        let get = |n: &str| tensors.iter().find(|(k, _)| k == n).map(|(_, t)| t.to_device(device)).with_context(|| format!("{} has no `{n}`", path.display()));
        Ok(RewardModel { trunk, w: get("reward_head.weight")?, b: get("reward_head.bias")? })
    }

    /// Scalar scores (B) of whole token rows (prompt, response and end marker).
    pub fn score(&self, rows: &[Vec<i64>], train: bool) -> Tensor {
        let (x, last) = pad_rows(rows, self.trunk.device);
        let (hidden, _, _) = self.trunk.forward_full(&x, train);
        at_positions(&hidden.to_kind(Kind::Float), &last).linear(&self.w, Some(&self.b)).squeeze_dim(-1)
    }

    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v = self.trunk.named();
        v.push(("reward_head.weight".into(), self.w.shallow_clone()));
        v.push(("reward_head.bias".into(), self.b.shallow_clone()));
        v
    }
}

/// Token rows of (prompt, chosen) and (prompt, rejected), cut to the context.
pub fn pair_rows(set: &ExampleSet, pairs: &[&Pair], ctx: usize) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    let row = |p: &Pair, r: &str| -> Vec<i64> {
        let mut v = prompt_ids(set, &p.prompt);
        v.extend(r.bytes().chain(set.end.bytes()).map(i64::from));
        v.truncate(ctx);
        v
    };
    (pairs.iter().map(|p| row(p, &p.chosen)).collect(), pairs.iter().map(|p| row(p, &p.rejected)).collect())
}

/// Share of pairs where the chosen response scores higher.
pub fn pairwise_accuracy(rm: &RewardModel, set: &ExampleSet, pairs: &[Pair]) -> f64 {
    let ctx = rm.trunk.spec().context;
    let mut right = 0.0;
    tch::no_grad(|| {
        for chunk in pairs.chunks(64) {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let (c, r) = pair_rows(set, &refs, ctx);
            right += rm.score(&c, false).gt_tensor(&rm.score(&r, false)).to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
        }
    });
    right / pairs.len().max(1) as f64
}

pub fn run_reward_model(recipe: &Recipe, source: &str, stage: &StageSpec, r: &RewardSpec, runs: &Path, opts: &RunOptions) -> Result<()> {
    let Some(mut run) = begin(recipe, source, stage, runs, r.opt.steps, r.opt.device, opts)? else { return Ok(()) };
    let name = stage.name.clone();
    let (set, split) = preferences(recipe, &r.data)?;
    let rm = RewardModel::new(load_lm(recipe, runs, &r.model, run.device)?);
    let mut names = rm.trunk.names.clone();
    names.extend(["reward_head.weight".to_string(), "reward_head.bias".to_string()]);
    let mut params: Vec<Tensor> = rm.trunk.params.iter().map(|p| p.shallow_clone()).collect();
    params.extend([rm.w.shallow_clone(), rm.b.shallow_clone()]);
    let mut opt = AdamW::new(&params, &r.opt.optimizer);
    let (step0, mut rng, _) = run.restore(&names, &params, &mut opt, Rng(recipe.seed ^ 0x2E3A))?;
    let ctx = rm.trunk.spec().context;
    tracing::info!("{name}: training a reward model on `{}` ({} pairs, {} held out) for {} steps × {} pairs", set.name, split.train.len(), split.held_out.len(), r.opt.steps, r.opt.batch);
    let started = Instant::now();
    let mut acc = None;
    for step in step0..r.opt.steps {
        tch::manual_seed((recipe.seed ^ step.wrapping_mul(0x9E37_79B9)) as i64);
        let lr = lr_at(&r.opt.schedule, r.opt.optimizer.lr, step, r.opt.steps);
        let pairs: Vec<&Pair> = (0..r.opt.batch).map(|_| &split.train[rng.below(split.train.len() as u64) as usize]).collect();
        let (c, rj) = pair_rows(&set, &pairs, ctx);
        opt.zero_grad();
        let (sc, sr) = (rm.score(&c, true), rm.score(&rj, true));
        let loss = bradley_terry(&sc, &sr);
        loss.backward();
        let grad_norm = opt.clip_grad_norm(r.opt.grad_clip);
        opt.step(lr);
        let done = step + 1;
        let loss_v = loss.double_value(&[]);
        let train_acc = sc.gt_tensor(&sr).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let eval_now = done % r.opt.eval_every == 0 || done == r.opt.steps;
        let a = eval_now.then(|| pairwise_accuracy(&rm, &set, &split.held_out));
        let shown = a.map_or(String::new(), |a| format!(" held-out accuracy {:.1}%", 100.0 * a));
        run.progress.line(done, r.opt.log_every, &format!("loss {loss_v:.4} batch accuracy {:.0}%{shown} lr {lr:.2e}", 100.0 * train_acc), a.is_some());
        if done % r.opt.log_every == 0 || a.is_some() {
            let mut m = json!({"step": done, "loss": loss_v, "lr": lr, "grad_norm": grad_norm, "accuracy": train_acc});
            if let Some(a) = a {
                m["val_accuracy"] = json!(a);
            }
            run.log(m)?;
        }
        if a.is_some() {
            acc = a;
            run.checkpoint(done, &names, &params, &opt, rng, serde_json::Value::Null)?;
        }
    }
    let report = json!({
        "experiment": recipe.experiment,
        "kind": "reward_model",
        "model": r.model.arch,
        "steps": r.opt.steps,
        "held_out_pairs": split.held_out.len(),
        "held_out_accuracy": acc,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    tracing::info!("{name}: done — held-out pairwise accuracy {:.1}% on {} pairs", 100.0 * acc.unwrap_or(0.0), split.held_out.len());
    run.finish(&[("model.safetensors", rm.named())], report, &format!("{} / {name}", recipe.experiment))
}
