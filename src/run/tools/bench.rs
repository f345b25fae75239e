//! `roux bench moe`: step time (forward, backward, AdamW) of top-1 Switch layers with 8 and 64
//! experts of the same size, and of the dense model with the same active parameters, measured
//! in one run with interleaved repetitions; `roux bench transformer` one configuration of
//! bench/compare.py's table; `roux bench generate` generation with and without the KV cache;
//! `roux bench recompute` a configuration's steps with and without activation checkpointing;
//! `roux bench muon` its steps and held-out loss under AdamW and under Muon.
//! Speed goals live here, never in timed tests.

use anyhow::Result;
use std::time::Instant;
use crate::hf::generation::Decoding;
use tch::{Device, Kind, Tensor};

use crate::recipe::*;
use crate::run::kit::adamw::Optimizer;
use crate::run::kit::data::batch as data_batch;
use crate::run::kit::seqs::generate;
use crate::run::model::Model;

fn spec(experts: Option<usize>) -> ModelSpec {
    config_spec(experts.map_or("dense", |e| if e == 8 { "switch-8" } else { "switch-64" }), 128, 4, 4, 128, experts)
}

/// The model of a named benchmark configuration (bench/reference.py builds the same in PyTorch).
fn config_spec(name: &str, d: usize, layers: usize, heads: usize, ctx: usize, experts: Option<usize>) -> ModelSpec {
    let mlp = MlpSpec { hidden: 4 * d, act: Activation::Gelu };
    ModelSpec {
        name: name.into(),
        vocab: 256,
        context: ctx,
        d_model: d,
        layers,
        heads,
        kv_heads: 4,
        ffn: mlp.clone(),
        moe: experts.map(|e| MoeSpec {
            experts: e,
            expert: mlp.clone(),
            layers: (0..layers).filter(|i| i % 2 == 1).collect(),
            shared: 0,
            shared_hidden: None,
            shared_gate: false,
            expert_dropout: 0.0,
            router: RouterSpec::Switch { capacity_factor: 1.25, eval_capacity_factor: 2.0, balance_loss: 0.01, z_loss: 0.001, jitter: 0.0 },
        }),
        norm: Norm::Layernorm,
        position: Position::Learned,
        tie_embeddings: true,
        dropout: 0.0,
        bias: false,
        ..ModelSpec::default()
    }
}

struct Case {
    model: Model,
    opt: Optimizer,
    x: Tensor,
    y: Tensor,
}

impl Case {
    fn new(s: &ModelSpec, device: Device, batch: i64) -> Result<Case> {
        tch::manual_seed(0);
        let model = Model::new(s, device)?;
        let opt = Optimizer::new(&model.params, &model.names, &crate::recipe::AdamW { lr: 1e-3, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1, muon: None, loraplus_lr_ratio: None });
        let x = Tensor::randint(256, [batch, s.context as i64], (Kind::Int64, device));
        let y = Tensor::randint(256, [batch, s.context as i64], (Kind::Int64, device));
        Ok(Case { model, opt, x, y })
    }

    /// Seconds for `n` training steps.
    fn steps(&mut self, n: usize) -> Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            self.opt.zero_grad();
            let (loss, _, _) = self.model.loss_parts(&self.x, &self.y, true);
            self.model.backward(&loss)?;
            self.opt.step(1e-3)?;
        }
        if let Device::Cuda(_) = self.model.device {
            tch::Cuda::synchronize(0);
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// One model of `roux bench moe`: its size and median seconds per training step.
pub struct MoeRow {
    pub name: String,
    pub params: u64,
    pub active: u64,
    pub secs: f64,
}

/// `roux bench moe`'s measurements: dense, 8 and 64 experts, in that order.
pub struct MoeBench {
    pub device: String,
    pub threads: i32,
    pub batch: usize,
    pub context: usize,
    pub reps: usize,
    pub steps: usize,
    pub rows: Vec<MoeRow>,
}

pub fn bench_moe(reps: usize, steps: usize) -> Result<MoeBench> {
    let device = tch::Device::cuda_if_available();
    let batch = 32;
    let specs = [spec(None), spec(Some(8)), spec(Some(64))];
    let mut cases: Vec<Case> = specs.iter().map(|s| Case::new(s, device, batch)).collect::<Result<_>>()?;
    for c in cases.iter_mut() {
        c.steps(2)?; // warm-up: allocator, kernels
    }
    let mut times = vec![vec![]; cases.len()];
    for _ in 0..reps {
        for (i, c) in cases.iter_mut().enumerate() {
            times[i].push(c.steps(steps)? / steps as f64);
        }
    }
    let med: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
    let rows = specs
        .iter()
        .zip(cases.iter().zip(&med))
        .map(|(s, (c, &secs))| {
            let plan = crate::plan::plan_model(&c.model.graph, batch as usize, 128);
            MoeRow { name: s.name.clone(), params: plan.params_total, active: plan.params_active, secs }
        })
        .collect();
    Ok(MoeBench { device: crate::run::kit::device::name(device), threads: tch::get_num_threads(), batch: batch as usize, context: 128, reps, steps, rows })
}

/// What a two-way benchmark ran: configuration, device, batch shape and repetitions.
pub struct Setup {
    pub config: String,
    pub device: String,
    pub batch: usize,
    pub context: usize,
    pub reps: usize,
    pub steps: usize,
}

/// `roux bench recompute`'s measurements: median seconds per step without and with activation
/// checkpointing, and the activations the plan counts for each.
pub struct RecomputeBench {
    pub setup: Setup,
    pub secs: [f64; 2],
    pub activation_bytes: [u64; 2],
}

pub fn bench_recompute(name: &str, reps: usize, steps: usize) -> Result<RecomputeBench> {
    let (s, ctx, batch) = configured(name)?;
    let device = tch::Device::cuda_if_available();
    let mut cases = [Case::new(&s, device, batch as i64)?, Case::new(&s, device, batch as i64)?];
    cases[1].model.set_recompute(true);
    for c in cases.iter_mut() {
        c.steps(2)?; // warm-up: allocator, kernels
    }
    let mut times = [vec![], vec![]];
    for _ in 0..reps {
        for (i, c) in cases.iter_mut().enumerate() {
            times[i].push(c.steps(steps)? / steps as f64);
        }
    }
    let g = &cases[0].model.graph;
    let all = crate::plan::activation_bytes(g, batch, ctx);
    let setup = Setup { config: name.to_string(), device: crate::run::kit::device::name(device), batch, context: ctx, reps, steps };
    Ok(RecomputeBench { setup, secs: [median(&mut times[0]), median(&mut times[1])], activation_bytes: [all, all.saturating_sub(crate::plan::checkpointing_saving(g, batch, ctx))] })
}

/// `roux bench muon`'s measurements, AdamW's first and Muon's second: median seconds per step
/// and the held-out loss after the same steps on the same batches from the same weights.
pub struct MuonBench {
    pub setup: Setup,
    pub secs: [f64; 2],
    pub val_loss: [f64; 2],
}

/// AdamW (lr 1e-3, betas (0.9, 0.95), weight decay 0.1) against Muon (lr 0.02 on the blocks'
/// matrices, no decay, Keller Jordan's speedrun settings, AdamW as before on the rest), each from
/// the same weights through the same Shakespeare batches, interleaved `reps` times `steps` steps.
pub fn bench_muon(name: &str, reps: usize, steps: usize) -> Result<MuonBench> {
    let (s, ctx, batch) = configured(name)?;
    let device = tch::Device::cuda_if_available();
    let data: Vec<u32> = read_bench_data()?.into_iter().map(u32::from).collect();
    let (train, held) = data.split_at(data.len() * 9 / 10);
    let adamw = AdamW { lr: 1e-3, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1, muon: None, loraplus_lr_ratio: None };
    let muon = Muon { lr: 0.02, momentum: 0.95, nesterov: true, weight_decay: 0.0, ns_steps: 5, adjust_lr: MuonLr::Original };
    let mut cases: Vec<(Model, Optimizer, crate::rng::Rng)> = vec![];
    for cfg in [adamw.clone(), AdamW { muon: Some(muon), ..adamw }] {
        tch::manual_seed(0);
        let model = Model::new(&s, device)?;
        let opt = Optimizer::new(&model.params, &model.names, &cfg);
        cases.push((model, opt, crate::rng::Rng(7)));
    }
    let mut times = [vec![], vec![]];
    for _ in 0..reps {
        for (i, (model, opt, rng)) in cases.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..steps {
                let (x, y) = data_batch(train, batch, ctx, rng, device);
                opt.zero_grad();
                let (loss, _, _) = model.loss_parts(&x, &y, true);
                model.backward(&loss)?;
                opt.clip_grad_norm(Some(1.0));
                opt.step(1e-3)?;
            }
            if let Device::Cuda(_) = device {
                tch::Cuda::synchronize(0);
            }
            times[i].push(t.elapsed().as_secs_f64() / steps as f64);
        }
    }
    let mut val_loss = [0.0; 2];
    for (i, (model, _, _)) in cases.iter().enumerate() {
        let mut rng = crate::rng::Rng(11);
        val_loss[i] = tch::no_grad(|| (0..8).map(|_| {
            let (x, y) = data_batch(held, batch, ctx, &mut rng, device);
            model.loss(&x, &y, false).double_value(&[])
        }).sum::<f64>() / 8.0);
    }
    let setup = Setup { config: name.to_string(), device: crate::run::kit::device::name(device), batch, context: ctx, reps, steps };
    Ok(MuonBench { setup, secs: [median(&mut times[0]), median(&mut times[1])], val_loss })
}

/// The median of timings (the upper one of an even count), sorting them in place.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A named configuration's model, context and batch, or an error listing the names.
fn configured(name: &str) -> Result<(ModelSpec, usize, usize)> {
    let (d, layers, heads, ctx, batch, experts) = config(name).ok_or_else(|| anyhow::anyhow!("unknown config `{name}` (tiny, small, medium, switch-8, switch-64)"))?;
    Ok((config_spec(name, d, layers, heads, ctx, experts), ctx, batch))
}

/// (d_model, layers, heads, context, batch, experts) of the configurations of issue 8.
pub fn config(name: &str) -> Option<(usize, usize, usize, usize, usize, Option<usize>)> {
    Some(match name {
        "tiny" => (64, 2, 4, 128, 32, None),
        "small" => (256, 4, 4, 128, 32, None),
        "medium" => (512, 8, 8, 256, 16, None),
        "switch-8" => (128, 4, 4, 128, 32, Some(8)),
        "switch-64" => (128, 4, 4, 128, 32, Some(64)),
        _ => return None,
    })
}

fn rss_bytes(key: &str) -> u64 {
    crate::run::kit::device::process_memory(key).unwrap_or(0)
}

/// `roux bench transformer CONFIG`: tokens/s, the final loss and memory, as the JSON line
/// bench/compare.py sets beside the PyTorch reference.
pub fn bench_config(name: &str, steps: usize) -> Result<serde_json::Value> {
    let (s, ctx, batch) = configured(name)?;
    let device = tch::Device::cuda_if_available();
    let data: Vec<u32> = read_bench_data()?.into_iter().map(u32::from).collect();
    let base_rss = rss_bytes("VmRSS:");
    // What libtorch's runtime takes at its first forward and backward (thread pools, kernel
    // workspaces), whatever the model: a 2-parameter step.
    tch::no_grad(|| ());
    {
        let w = tch::Tensor::ones([2, 2], (tch::Kind::Float, device)).set_requires_grad(true);
        let l = w.matmul(&w).softmax(-1, tch::Kind::Float).sum(tch::Kind::Float);
        l.backward();
    }
    let warm_rss = rss_bytes("VmRSS:");
    tch::manual_seed(0);
    let mut model = Model::new(&s, device)?;
    let mut opt = Optimizer::new(&model.params, &model.names, &crate::recipe::AdamW { lr: 1e-3, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1, muon: None, loraplus_lr_ratio: None });
    // The first step, phase by phase: peak RSS after the forward pass (saved activations) and
    // after the backward pass (its temporaries), beside the plan's terms for the same.
    let phases = {
        let (x, y) = data_batch(&data, batch, ctx, &mut crate::rng::Rng(5), device);
        let r0 = rss_bytes("VmHWM:");
        let (loss, _, _) = model.loss_parts(&x, &y, true);
        let r1 = rss_bytes("VmHWM:");
        loss.backward();
        let r2 = rss_bytes("VmHWM:");
        serde_json::json!({"before": r0 - base_rss, "forward": r1 - r0, "backward": r2 - r1})
    };
    let mut rng = crate::rng::Rng(1);
    let mut step = |model: &mut Model| {
        let (x, y) = data_batch(&data, batch, ctx, &mut rng, device);
        opt.zero_grad();
        let (loss, ce, _) = model.loss_parts(&x, &y, true);
        loss.backward();
        opt.clip_grad_norm(Some(1.0));
        opt.step(1e-3)?;
        Ok::<f64, anyhow::Error>(ce.double_value(&[]))
    };
    for _ in 0..3 {
        step(&mut model)?;
    }
    let t = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = step(&mut model)?;
    }
    let dt = t.elapsed().as_secs_f64();
    let plan = crate::plan::plan_model(&model.graph, batch, ctx);
    Ok(serde_json::json!({
            "impl": "roux",
            "config": name,
            "tokens_per_s": (steps * batch * ctx) as f64 / dt,
            "loss": loss,
            "peak_rss": rss_bytes("VmHWM:"),
            "base_rss": base_rss,
            "warm_rss": warm_rss,
            "plan_memory": plan.train_memory_bytes,
            "plan_activations": crate::plan::activation_bytes(&model.graph, batch, ctx),
            "plan_backward": crate::plan::backward_peak_bytes(&model.graph, batch, ctx),
            "first_step": phases,
            "flops_per_token": plan.flops_per_token_model,
            "params": plan.params_total,
            "threads": tch::get_num_threads(),
    }))
}

/// `roux bench generate --config C`: greedy generation of 8 rows from 16-token prompts to the
/// full context, through the KV cache (`seqs::generate`) and by running the whole sequence
/// again for every token (how roux generated before the cache), interleaved `reps` times.
/// `roux bench generate`'s measurements.
pub struct GenerateBench {
    pub config: String,
    pub rows: usize,
    pub new: usize,
    pub prompt: usize,
    pub context: usize,
    pub reps: usize,
    /// Median seconds with the KV cache and re-running the whole prefix.
    pub cached: f64,
    pub uncached: f64,
    /// Whether both produced the same tokens.
    pub same: bool,
}

pub fn bench_generate(name: &str, reps: usize) -> Result<GenerateBench> {
    let (s, ctx, _) = configured(name)?;
    let device = tch::Device::cuda_if_available();
    tch::manual_seed(0);
    let model = Model::new(&s, device)?;
    let (rows, prompt) = (8usize, 16usize);
    let data = read_bench_data()?;
    let prompts: Vec<Vec<i64>> = (0..rows).map(|r| data[r * 1000..r * 1000 + prompt].iter().map(|&b| b as i64).collect()).collect();
    let new = ctx - prompt;
    let uncached = || {
        tch::no_grad(|| {
            let flat: Vec<i64> = prompts.concat();
            let mut ids = Tensor::from_slice(&flat).view([rows as i64, prompt as i64]).to_device(device);
            for _ in 0..new {
                let next = model.forward(&ids, false).select(1, -1).argmax(-1, true);
                ids = Tensor::cat(&[&ids, &next], 1);
            }
            Vec::<Vec<i64>>::try_from(&ids.narrow(1, prompt as i64, new as i64).to_device(Device::Cpu)).unwrap_or_default()
        })
    };
    let (mut t_cache, mut t_full, mut same) = (vec![], vec![], true);
    for _ in 0..reps {
        let t = Instant::now();
        let a = generate(&model, &prompts, new, &Decoding::plain(0.0), &[])?;
        t_cache.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = uncached();
        t_full.push(t.elapsed().as_secs_f64());
        same &= a == b;
    }
    let (cached, uncached) = (median(&mut t_cache), median(&mut t_full));
    Ok(GenerateBench { config: name.to_string(), rows, new, prompt, context: ctx, reps, cached, uncached, same })
}

/// The benchmarks' text: bench/ runs them from the repository root.
fn read_bench_data() -> Result<Vec<u8>> {
    let path = std::path::Path::new("data/tinyshakespeare.txt");
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {} (run the benchmarks from the repository root): {e}", path.display()))
}
