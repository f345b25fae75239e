//! A `mixture` stage: Jacobs, Jordan, Nowlan & Hinton (1991), "Adaptive mixtures of local experts".
//! A softmax gate over the input picks among small expert networks; trained with the paper's
//! competitive objective, each expert should come to own one subtask of the synthetic problem.
//! The report says how cleanly each subtask is claimed (purity) and by which expert.
//! Checkpointed at every evaluation and resumable, like every stage.

use anyhow::{Context, Result};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::recipe::{Activation, Generator, MixtureSpec, Objective, Precision};
use crate::rng::Rng;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::progress::Metric;
use crate::run::kit::{hash, lifecycle, StageCtx};
use crate::run::model::moe::jacobs_loss;
use crate::schedule::lr_at;
use crate::synthetic::{purity, regions};

struct Mixture {
    params: Vec<Tensor>, // gate w (E, dim), gate b (E), then expert tensors
    act: Option<Activation>,
    /// The experts' compute kind (`precision`); the gate and the loss stay float32.
    compute: Kind,
}

/// Checkpoint names of `Mixture::params`, in order.
fn param_names(m: &MixtureSpec) -> Vec<String> {
    let names: &[&str] = if m.expert.is_some() { &["gate.weight", "gate.bias", "experts.w1", "experts.b1", "experts.w2", "experts.b2"] } else { &["gate.weight", "gate.bias", "experts.weight", "experts.bias"] };
    names.iter().map(|s| s.to_string()).collect()
}

impl Mixture {
    fn new(m: &MixtureSpec, dim: i64, out: i64) -> Mixture {
        let e = m.experts as i64;
        let opts = (Kind::Float, Device::Cpu);
        let mut params = vec![Tensor::randn([e, dim], opts) * 0.01, Tensor::zeros([e], opts)];
        match &m.expert {
            None => params.extend([Tensor::randn([e, out, dim], opts) * 0.5, Tensor::zeros([e, out], opts)]),
            Some(mlp) => {
                let h = mlp.hidden as i64;
                params.extend([
                    Tensor::randn([e, h, dim], opts) / (dim as f64).sqrt(),
                    Tensor::zeros([e, h], opts),
                    Tensor::randn([e, out, h], opts) / (h as f64).sqrt(),
                    Tensor::zeros([e, out], opts),
                ]);
            }
        }
        let compute = if m.precision == Precision::Bf16 { Kind::BFloat16 } else { Kind::Float };
        Mixture { params: params.into_iter().map(|p| p.set_requires_grad(true)).collect(), act: m.expert.as_ref().map(|x| x.act), compute }
    }

    /// Gate probabilities (N, E) and every expert's output (E, N, out).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let p = x.linear(&self.params[0], Some(&self.params[1])).softmax(-1, Kind::Float);
        let xe = x.to_kind(self.compute).unsqueeze(0); // (1, N, dim), broadcast over experts
        let k = self.compute;
        let lin = |h: &Tensor, w: &Tensor, b: &Tensor| h.matmul(&w.to_kind(k).transpose(1, 2)) + b.to_kind(k).unsqueeze(1);
        let o = match self.act {
            None => lin(&xe, &self.params[2], &self.params[3]),
            Some(act) => {
                let h = lin(&xe, &self.params[2], &self.params[3]);
                let h = match act {
                    Activation::Relu => h.relu(),
                    Activation::Gelu => h.gelu("tanh"),
                    // (Ungated here: a mixture's experts have two layers.)
                    Activation::Swiglu => h.silu(),
                    Activation::Geglu => h.gelu("tanh"),
                };
                lin(&h, &self.params[4], &self.params[5])
            }
        };
        (p, o.to_kind(Kind::Float))
    }

    fn loss(&self, x: &Tensor, y: &Tensor, objective: Objective) -> (Tensor, Tensor) {
        let (p, o) = self.forward(x);
        let loss = match objective {
            Objective::Competitive => jacobs_loss(&p, &o, y),
            Objective::Cooperative => {
                let blend = (p.transpose(0, 1).unsqueeze(-1) * &o).sum_dim_intlist(0, false, Kind::Float); // (N, out)
                (blend - y).square().sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float)
            }
        };
        (loss, p)
    }
}

pub fn run(ctx: &StageCtx, m: &MixtureSpec) -> Result<()> {
    let (recipe, name) = (ctx.recipe, ctx.label.as_str());
    let data = recipe.synthetic.iter().find(|d| d.name == m.data).context("checked recipe names its data")?;
    let resolved = json!({"experiment": recipe.experiment, "seed": recipe.seed, "stage": name, "mixture": m, "data": data});
    let Some(mut run) = lifecycle::begin(ctx, hash::mixture(recipe, m, data), &resolved, m.steps)? else { return Ok(()) };
    let Generator::Regions { tasks, .. } = data.generator;
    let set = regions(&data.generator, recipe.seed);
    let (n, dim, out) = (set.task.len(), set.dim as i64, set.outputs as i64);
    let n_val = (n / 5).max(1);
    let n_train = n - n_val;
    let x = Tensor::from_slice(&set.x).view([n as i64, dim]);
    let y = Tensor::from_slice(&set.y).view([n as i64, out]);
    let (x_train, y_train) = (x.narrow(0, 0, n_train as i64), y.narrow(0, 0, n_train as i64));
    let (x_val, y_val) = (x.narrow(0, n_train as i64, n_val as i64), y.narrow(0, n_train as i64, n_val as i64));
    let val_tasks = &set.task[n_train..];

    tch::manual_seed(recipe.seed as i64);
    let model = Mixture::new(m, dim, out);
    let names = param_names(m);
    let mut opt = Optimizer::new(&model.params, &[], &m.optimizer);
    let (step0, mut rng, _) = run.restore(&names, &model.params, &mut opt, Rng(recipe.seed ^ 0x0B7C_4E55))?;
    let eval = |model: &Mixture| {
        tch::no_grad(|| {
            let (loss, p) = model.loss(&x_val, &y_val, m.objective);
            let winners: Vec<i64> = Vec::<i64>::try_from(&p.argmax(-1, false)).unwrap_or_default();
            let winners: Vec<usize> = winners.into_iter().map(|w| w as usize).collect();
            (loss.double_value(&[]), purity(val_tasks, &winners, tasks, m.experts))
        })
    };
    let started = std::time::Instant::now();
    let mut last = (f64::NAN, vec![]);
    for step in step0..m.steps {
        let lr = lr_at(&m.schedule, m.optimizer.lr, step, m.steps);
        let idx: Vec<i64> = (0..m.batch).map(|_| rng.below(n_train as u64) as i64).collect();
        let idx = Tensor::from_slice(&idx);
        opt.zero_grad();
        let (loss, _) = model.loss(&x_train.index_select(0, &idx), &y_train.index_select(0, &idx), m.objective);
        loss.backward();
        opt.step(lr)?;
        let done = step + 1;
        if done % m.eval_every == 0 || done == m.steps {
            let loss_v = loss.double_value(&[]);
            anyhow::ensure!(loss_v.is_finite(), "stage `{name}`: non-finite loss at step {done}; lower the learning rate");
            last = eval(&model);
            let mean_purity = last.1.iter().map(|(_, p)| p).sum::<f64>() / tasks as f64;
            let per_s = ((done - step0) * m.batch as u64) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            run.progress.update(done, m.eval_every, loss_v, lr, per_s, Some(last.0));
            run.metrics.write(&Metric {
                step: done,
                tokens: done * m.batch as u64,
                loss: loss_v,
                val_loss: Some(last.0),
                lr,
                grad_norm: f64::NAN,
                tokens_per_s: per_s,
                aux_loss: None,
                moe: vec![json!({"layer": "gate", "purity": mean_purity})],
                val_choices_acc: None,
                val_choices_acc_norm: None,
                val_sets: Default::default(),
            })?;
            run.checkpoint(done, &names, &model.params, &opt, rng, serde_json::Value::Null)?;
        }
    }
    if last.1.is_empty() {
        // Resumed from the last step's checkpoint: nothing ran, so evaluate what it holds.
        last = eval(&model);
    }
    let (val_loss, per_task) = last;
    let claimed: Vec<usize> = per_task.iter().map(|(e, _)| *e).collect();
    let mut distinct = claimed.clone();
    distinct.sort();
    distinct.dedup();
    let mean_purity = per_task.iter().map(|(_, p)| p).sum::<f64>() / tasks as f64;
    let report = json!({
        "experiment": recipe.experiment,
        "kind": "mixture",
        "precision": m.precision,
        "objective": m.objective,
        "experts": m.experts,
        "tasks": tasks,
        "val_loss": val_loss,
        "purity": mean_purity,
        "per_task": per_task.iter().enumerate().map(|(t, (e, p))| json!({"task": t, "claimed_by": e, "purity": p})).collect::<Vec<_>>(),
        "distinct_experts_claiming": distinct.len(),
    });
    let dir = run.dir.clone();
    let named: Vec<(String, Tensor)> = names.iter().cloned().zip(model.params.iter().map(|p| p.shallow_clone())).collect();
    run.finish(&[("model.safetensors", named)], report, &ctx.title())?;
    tracing::info!(
        "{name}: val loss {val_loss:.4}; subtask purity {:.3} (each of {tasks} sectors → expert {claimed:?}, {} distinct experts); wrote {}",
        mean_purity,
        distinct.len(),
        dir.display()
    );
    Ok(())
}
