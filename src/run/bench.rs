//! `roux bench moe`: step time (forward, backward, AdamW) of top-1 Switch layers with 8 and 64
//! experts of the same size, and of the dense model with the same active parameters, measured
//! in one run with interleaved repetitions. Speed goals live here, never in timed tests.

use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use super::adamw::AdamW;
use super::model::Model;
use crate::recipe::*;

fn spec(experts: Option<usize>) -> ModelSpec {
    let mlp = MlpSpec { hidden: 512, act: Activation::Gelu };
    ModelSpec {
        name: experts.map_or("dense".into(), |e| format!("switch-{e}")),
        vocab: 256,
        context: 128,
        d_model: 128,
        layers: 4,
        heads: 4,
        kv_heads: 4,
        ffn: mlp.clone(),
        moe: experts.map(|e| MoeSpec {
            experts: e,
            expert: mlp.clone(),
            layers: vec![1, 3],
            shared: 0,
            expert_dropout: 0.0,
            router: RouterSpec::Switch { capacity_factor: 1.25, eval_capacity_factor: 2.0, balance_loss: 0.01, z_loss: 0.001, jitter: 0.0 },
        }),
        norm: Norm::Layernorm,
        position: Position::Learned,
        tie_embeddings: true,
        dropout: 0.0,
        bias: false,
    }
}

struct Case {
    model: Model,
    opt: AdamW,
    x: Tensor,
    y: Tensor,
}

impl Case {
    fn new(s: &ModelSpec, device: Device, batch: i64) -> Case {
        tch::manual_seed(0);
        let model = Model::new(s, device);
        let opt = AdamW::new(&model.params, &crate::recipe::AdamW { lr: 1e-3, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1 });
        let x = Tensor::randint(256, [batch, s.context as i64], (Kind::Int64, device));
        let y = Tensor::randint(256, [batch, s.context as i64], (Kind::Int64, device));
        Case { model, opt, x, y }
    }

    /// Seconds for `n` training steps.
    fn steps(&mut self, n: usize) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            for p in self.model.params.iter_mut() {
                p.zero_grad();
            }
            let (loss, _, _) = self.model.loss_parts(&self.x, &self.y, true);
            loss.backward();
            self.opt.step(&mut self.model.params, 1e-3);
        }
        if let Device::Cuda(_) = self.model.device {
            tch::Cuda::synchronize(0);
        }
        t.elapsed().as_secs_f64()
    }
}

pub fn bench_moe(reps: usize, steps: usize) -> Result<()> {
    let device = tch::Device::cuda_if_available();
    let batch = 32;
    let specs = [spec(None), spec(Some(8)), spec(Some(64))];
    let mut cases: Vec<Case> = specs.iter().map(|s| Case::new(s, device, batch)).collect();
    for c in cases.iter_mut() {
        c.steps(2); // warm-up: allocator, kernels
    }
    let mut times = vec![vec![]; cases.len()];
    for _ in 0..reps {
        for (i, c) in cases.iter_mut().enumerate() {
            times[i].push(c.steps(steps) / steps as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let med: Vec<f64> = times.iter_mut().map(median).collect();
    let tokens = (batch as usize * 128) as f64;
    println!("roux bench moe — {device:?}, {} threads, batch {batch} × 128 tokens, {reps} interleaved reps × {steps} steps, median", tch::get_num_threads());
    println!("{:<12} {:>12} {:>12} {:>12} {:>10}", "model", "params", "active", "ms/step", "tok/s");
    for (s, (c, t)) in specs.iter().zip(cases.iter().zip(&med)) {
        let plan = crate::plan::plan_model(&c.model.graph, batch as usize, 128);
        println!("{:<12} {:>12} {:>12} {:>12.1} {:>10.0}", s.name, plan.params_total, plan.params_active, t * 1e3, tokens / t);
    }
    println!("64 vs 8 experts: {:.2}× (target ≤ 1.3×)", med[2] / med[1]);
    println!("8 experts vs dense of equal active parameters: {:.2}× (target ≤ 1.6×)", med[1] / med[0]);
    println!("64 experts vs dense: {:.2}×", med[2] / med[0]);
    Ok(())
}
