//! `roux plan --world N`: what each of N data-parallel processes holds and sends per step of every
//! training stage (`train` and the post-training kinds), before anything runs: its share of the batch, weights, gradients, AdamW state
//! (sharded with `shard_optimizer`, ZeRO-1), activations of one micro-batch, and the bytes its
//! collectives send. A batch the processes and micro-batches cannot split, or a process past
//! the stage's `device_memory`, is refused with the numbers.

use serde::Serialize;

use crate::arith::count::{shard_chunk, training_bytes};
use crate::arith::{lower_model, ModelGraph};
use crate::recipe::{Recipe, StageKind, TrainSpec};

/// One train stage as each of `processes` runs it (float32, bytes).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    pub stage: String,
    pub processes: usize,
    /// Rows each process runs per micro-batch (sequences; a preference pair counts two).
    pub micro_batch: usize,
    pub accumulate: usize,
    pub sharded_optimizer: bool,
    /// Parameters of the model.
    pub params: u64,
    /// Of them, those each process holds: all but the other processes' experts under
    /// `expert_parallel` (weights, gradients and moments below count these).
    pub held_params: u64,
    pub weight_bytes: u64,
    pub gradient_bytes: u64,
    /// AdamW's two moments as held by this process (its slice when sharded).
    pub moment_bytes: u64,
    /// The rest of the optimizer: the update's scratch space (and, sharded, the averaged
    /// gradient slice and the weights slice sent to the all-gather).
    pub optimizer_other_bytes: u64,
    /// Activations saved for backward and the backward pass's working set, of one micro-batch,
    /// and libtorch's runtime.
    pub activation_bytes: u64,
    pub total_bytes: u64,
    /// Bytes each process sends per optimizer step: a ring all-reduce of the gradients
    /// (2·(N−1)/N of them), or a reduce-scatter and an all-gather of the padded buffers.
    pub sent_bytes_per_step: u64,
    /// Processes the MoE layers' experts are divided over (`expert_parallel`; 1: not divided).
    pub expert_parallel: usize,
    /// Bytes each process sends per step for expert parallelism, forward and backward: the router
    /// logits gathered (and their gradient reduce-scattered), and each routed token's row sent to
    /// another process's expert and back, twice (an upper bound: balanced load, no token dropped).
    pub expert_sent_bytes_per_step: u64,
    pub device_memory: Option<u64>,
}

/// Every train stage of `r` on `world` processes, or the first stage's reason it cannot run so.
/// (`device = auto` counted as the CPU, as `plan` does.)
pub fn plan_world(r: &Recipe, world: usize) -> Result<Vec<ProcessPlan>, String> {
    let mut out = vec![];
    for s in &r.stages {
        let StageKind::Train(t) = &s.kind else {
            out.extend(posttrain_process(r, s, world, false)?);
            continue;
        };
        let Some(spec) = r.model(&t.model) else { continue };
        crate::recipe::expert_parallel_fits(&s.name, t.expert_parallel, world)?;
        let mut p = train_process(&s.name, &s.kind, &lower_model(spec), world, false)?;
        p.expert_sent_bytes_per_step = spec.moe.as_ref().filter(|_| t.expert_parallel > 1).map_or(0, |m| expert_bytes(m, spec.d_model, t, world));
        if let Some(limit) = p.device_memory.filter(|l| p.total_bytes > *l) {
            return Err(format!(
                "stage `{}`: each of {world} processes needs {}, more than its device_memory of {}; \
                 shard the optimizer (`shard_optimizer = true`), split the batch further (`accumulate`), or use more processes",
                s.name,
                decimal(p.total_bytes),
                decimal(limit)
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// Bytes in the decimal units `device_memory` is written in (`12.3M`, `80G`), exact below 1k.
fn decimal(b: u64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    match units.iter().find(|(u, _)| b as f64 >= *u) {
        Some((u, name)) => format!("{:.3}{name} bytes", b as f64 / u).replace(".000", ""),
        None => format!("{b} bytes"),
    }
}

/// A post-training stage's process (None for kinds that run whole on every process): the model
/// it trains, the frozen ones beside it (a reference, a reward model), and its share of each
/// step's sequences (pairs count twice, judged completions once), at the model's context (an upper bound, as `plan`).
fn posttrain_process(r: &Recipe, s: &crate::recipe::StageSpec, world: usize, gpu: bool) -> Result<Option<ProcessPlan>, String> {
    let graph = |arch: &str| r.model(arch).map(lower_model);
    let n_of = |g: &ModelGraph| g.params().iter().map(|p| p.numel()).sum::<u64>();
    let rm = |stage: Option<&str>| match stage.and_then(|st| r.stage(st)).map(|st| &st.kind) {
        Some(StageKind::RewardModel(m)) => graph(&m.model.arch).map_or(0, |g| n_of(&g)),
        _ => 0,
    };
    let name = &s.name;
    // (arch, trainable, weights, frozen parameters, sequences per micro-batch, accumulate)
    let (arch, trainable, weights, frozen, seqs, accumulate) = match &s.kind {
        StageKind::Finetune(f) => {
            let Some(g) = graph(&f.model.arch) else { return Ok(None) };
            let n = n_of(&g);
            let (t, w) = crate::lower::trained_and_held(&g.spec, f.lora.as_ref(), n);
            (f.model.arch.clone(), t, w, 0, f.opt.micro_batch(name, world)?, f.opt.accumulate)
        }
        StageKind::RewardModel(m) => {
            let Some(g) = graph(&m.model.arch) else { return Ok(None) };
            let head = crate::lower::ScalarHead::Reward.numel(&g.spec);
            let (t, w) = crate::lower::trained_and_held(&g.spec, m.lora.as_ref(), n_of(&g));
            (m.model.arch.clone(), t + head, w + head, 0, 2 * m.opt.micro_batch(name, world)?, m.opt.accumulate)
        }
        StageKind::Dpo(d) => {
            let Some(g) = graph(&d.policy.arch) else { return Ok(None) };
            let n = n_of(&g);
            // (A LoRA policy's reference is its own base: nothing more is held.)
            let reference = if d.holds_reference() && d.lora.is_none() { n } else { 0 };
            let (t, w) = crate::lower::trained_and_held(&g.spec, d.lora.as_ref(), n);
            (d.policy.arch.clone(), t, w, reference, r.dpo_rows(d) * d.opt.micro_batch(name, world)?, d.opt.accumulate)
        }
        StageKind::Ppo(p) => {
            let Some(g) = graph(&p.policy.arch) else { return Ok(None) };
            let n = n_of(&g);
            let head = crate::lower::ScalarHead::Value.numel(&g.spec);
            let (t, w) = crate::lower::trained_and_held(&g.spec, p.lora.as_ref(), n);
            let reference = if p.lora.is_some() { 0 } else { n };
            (p.policy.arch.clone(), t + head, w + head, reference + rm(Some(&p.reward)), p.opt.micro_batch(name, world)?, p.opt.accumulate)
        }
        StageKind::Grpo(gr) => {
            let Some(g) = graph(&gr.policy.arch) else { return Ok(None) };
            let n = n_of(&g);
            crate::recipe::split_batch(name, gr.opt.batch / gr.group, world, 1)?; // whole groups to a process
            let reference = if gr.beta > 0.0 && gr.lora.is_none() { n } else { 0 };
            let (t, w) = crate::lower::trained_and_held(&g.spec, gr.lora.as_ref(), n);
            (gr.policy.arch.clone(), t, w, reference + gr.reward.model_stages().into_iter().map(|s| rm(Some(s))).sum::<u64>(), gr.opt.micro_batch(name, world)?, gr.opt.accumulate)
        }
        StageKind::OnlineDpo(o) => {
            let Some(g) = graph(&o.policy.arch) else { return Ok(None) };
            let n = n_of(&g);
            let reference = if o.lora.is_none() { n } else { 0 };
            let (t, w) = crate::lower::trained_and_held(&g.spec, o.lora.as_ref(), n);
            (o.policy.arch.clone(), t, w, reference + o.reward.model_stages().into_iter().map(|s| rm(Some(s))).sum::<u64>(), 2 * o.opt.micro_batch(name, world)?, o.opt.accumulate)
        }
        StageKind::BestOfN(b) => {
            let Some(g) = graph(&b.policy.arch) else { return Ok(None) };
            let (t, w) = crate::lower::trained_and_held(&g.spec, b.lora.as_ref(), n_of(&g));
            (b.policy.arch.clone(), t, w, b.reward.model_stages().into_iter().map(|s| rm(Some(s))).sum::<u64>(), b.opt.micro_batch(name, world)?, b.opt.accumulate)
        }
        StageKind::Distill(k) => {
            let (Some(g), Some(teacher)) = (graph(&k.student.arch), graph(&k.teacher.arch)) else { return Ok(None) };
            let (t, w) = crate::lower::trained_and_held(&g.spec, k.lora.as_ref(), n_of(&g));
            (k.student.arch.clone(), t, w, n_of(&teacher), k.opt.micro_batch(name, world)?, k.opt.accumulate)
        }
        StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) | StageKind::Compare(_) => return Ok(None),
    };
    let Some(g) = graph(&arch) else { return Ok(None) };
    let w = world as u64;
    // Packed rows add their attention mask (float32, rows × context²; twice with a window), as
    // `plan` counts it.
    let packing = matches!(&s.kind, StageKind::Finetune(f) if f.packing);
    let masks = if g.spec.window.is_some() { 2.0 } else { 1.0 };
    let mask = if packing { (masks * 4.0 * seqs as f64 * (g.spec.context as f64).powi(2)) as u64 } else { 0 };
    // A distilling student's divergence keeps tensors of the vocabulary's width beside its logits.
    let mask = mask + if matches!(s.kind, StageKind::Distill(_)) { super::distill::divergence_bytes(g.spec.context, g.spec.vocab, seqs) } else { 0 };
    let activation_bytes = super::kernels::as_run(&s.kind, &g, seqs, g.spec.context, training_bytes(0, 0, &g, seqs, g.spec.context), gpu).saturating_add(mask);
    // Sampling keeps no activations but its rows' keys, values and logits: whichever is larger.
    let activation_bytes = activation_bytes.max(super::sampling::sampling_bytes(&s.kind, graph, world));
    // (A bf16 stage holds its frozen weights in 2 bytes, a QLoRA base its projections in NF4,
    // dequantizing one at a time beside the activations.)
    let activation_bytes = activation_bytes.saturating_add(super::frozen::nf4_scratch(r, s));
    let saving = super::frozen::bf16_saving(r, s) + super::frozen::nf4_saving(r, s);
    let (weight_bytes, gradient_bytes) = ((4 * (weights + frozen)).saturating_sub(saving), 4 * trainable);
    // Muon's matrices keep one moment and no scratch.
    let muon = super::muon::muon_params(&s.kind, &g);
    let (moments, other) = (2 * trainable - muon, trainable - muon);
    let total_bytes = total(&[weight_bytes, gradient_bytes, 4 * moments, 4 * other, activation_bytes]);
    Ok(Some(ProcessPlan {
        stage: name.clone(),
        processes: world,
        micro_batch: seqs,
        accumulate,
        sharded_optimizer: false,
        params: n_of(&g),
        held_params: n_of(&g),
        weight_bytes,
        gradient_bytes,
        moment_bytes: 4 * moments,
        optimizer_other_bytes: 4 * other,
        activation_bytes,
        total_bytes,
        sent_bytes_per_step: if w > 1 { ratio(&[8, w - 1, trainable], w) } else { 0 },
        expert_parallel: 1,
        expert_sent_bytes_per_step: 0,
        device_memory: None,
    }))
}

/// Expert parallelism's bytes per process per step (see `ProcessPlan::expert_sent_bytes_per_step`):
/// per MoE layer and micro-batch of n tokens, in a group of W = `expert_parallel` processes, the
/// logits' all-gather and its backward send 2·(W−1)·n·E floats, and the four all-to-alls
/// (dispatch, combine, and their gradients) each n·a·(W−1)/W rows of d floats, a the assignments
/// per token.
fn expert_bytes(m: &crate::recipe::MoeSpec, d_model: usize, t: &TrainSpec, world: usize) -> u64 {
    let (w, n) = (t.expert_parallel as f64, (t.batch / world / t.accumulate * t.context) as f64);
    let gather = 2.0 * (w - 1.0) * n * m.experts as f64;
    let rows = 4.0 * n * m.active_experts() * (w - 1.0) / w * d_model as f64;
    (4.0 * (gather + rows) * (m.layers.len() * t.accumulate) as f64).round() as u64
}

/// What each of `world` processes holds and sends for train stage `stage` of `kind`
/// (`ProcessPlan`); `gpu`: whether `device = auto` finds a GPU.
pub fn train_process(stage: &str, kind: &StageKind, g: &ModelGraph, world: usize, gpu: bool) -> Result<ProcessPlan, String> {
    let StageKind::Train(t) = kind else { return Err(format!("stage `{stage}` is not a train stage")) };
    let micro = t.micro_batch(stage, world)?;
    let n: u64 = g.params().iter().map(|p| p.numel()).sum();
    let w = world as u64;
    // Expert parallel: each process holds 1/ep of every routed expert stack, whose gradients
    // are all-reduced over its replicas in the other groups only (run/kit/adamw/divided.rs).
    let ep = t.expert_parallel as u64;
    let divided: u64 = if ep > 1 { g.params().iter().filter(|p| p.routed_expert()).map(|p| p.numel()).sum() } else { 0 };
    let own = divided / ep.max(1); // this process's experts (0 without expert parallelism)
    let held = n - divided + own;
    let replicas = w / ep.max(1);
    let sharded = t.shard_optimizer && world > 1;
    // Sharded: buffers padded to world × chunk; the moments, the scratch, the gradient slice and
    // the weights slice are one chunk each (run/kit/adamw/zero.rs).
    let experts_sent = if replicas > 1 { ratio(&[2, replicas - 1, own], replicas) } else { 0 };
    let (buffer, moments, other, sent) = if sharded {
        // The rest sharded: buffers padded to world × chunk after this process's experts.
        let chunk = shard_chunk(n - divided, w);
        (own + w * chunk, 2 * (own + chunk), own + 3 * chunk, total(&[2 * (w - 1) * chunk, experts_sent]))
    } else {
        // Muon's matrices keep one moment and no scratch (check refuses it beside sharding).
        let muon = super::muon::muon_params(kind, g);
        (held, 2 * held - muon, held - muon, if w > 1 { total(&[ratio(&[2, w - 1, n - divided], w), experts_sent]) } else { 0 })
    };
    let activation_bytes = super::kernels::as_run(kind, g, micro, t.context, training_bytes(0, 0, g, micro, t.context), gpu);
    let (weight_bytes, gradient_bytes) = (4 * buffer, 4 * buffer);
    let total_bytes = total(&[weight_bytes, gradient_bytes, 4 * moments, 4 * other, activation_bytes]);
    Ok(ProcessPlan {
        stage: stage.to_string(),
        processes: world,
        micro_batch: micro,
        accumulate: t.accumulate,
        sharded_optimizer: sharded,
        params: n,
        held_params: held,
        weight_bytes,
        gradient_bytes,
        moment_bytes: 4 * moments,
        optimizer_other_bytes: 4 * other,
        activation_bytes,
        total_bytes,
        sent_bytes_per_step: sent.saturating_mul(4),
        expert_parallel: t.expert_parallel,
        expert_sent_bytes_per_step: 0,
        device_memory: t.device_memory,
    })
}

/// A sum of byte counts, saturating: one of them may already be at u64::MAX (an activation count
/// past it), and a plan of absurd sizes must say so, not wrap around to a small number.
fn total(parts: &[u64]) -> u64 {
    parts.iter().fold(0u64, |a, &b| a.saturating_add(b))
}

/// ⌊Π parts / den⌋, exact (in 128 bits) and saturating: the bytes a process sends are a product
/// of the world size and the parameters, past u64 at the limits of both.
fn ratio(parts: &[u64], den: u64) -> u64 {
    let num = parts.iter().try_fold(1u128, |a, &b| a.checked_mul(b as u128));
    num.map_or(u64::MAX, |x| u64::try_from(x / den.max(1) as u128).unwrap_or(u64::MAX))
}
