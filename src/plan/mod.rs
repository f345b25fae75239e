//! Stage 4, plan: parameters, FLOPs and memory of every model and stage, before anything runs.
//! Pure arithmetic over the lowered graphs (a model's own arithmetic is in `arith`); no libtorch.

mod compare;
mod distill;
mod frozen;
mod kernels;
mod muon;
mod sampling;
mod world;

use serde::Serialize;
pub use world::{plan_world, train_process, ProcessPlan};
use std::collections::HashMap;

pub use crate::arith::count::*;
use crate::arith::{lower_model, ModelGraph};
use crate::recipe::{Recipe, StageKind};
use muon::muon_saving;

#[derive(Serialize, Debug, Clone)]
pub struct StagePlan {
    pub name: String,
    pub kind: &'static str,
    pub after: Vec<String>,
    pub steps: u64,
    pub tokens: u64,
    pub flops: f64,
    /// Parameters the stage updates (a LoRA stage: Σ rank·(in + out) over its targets).
    pub trainable: u64,
    /// Peak bytes on the device, fp32: the trained model as `train_memory_bytes` counts it, on
    /// one micro-batch (`batch / accumulate` rows) of sequences as long as the context, plus the
    /// frozen models the stage runs beside it (reference policies, reward models: 4 bytes a
    /// parameter, 2 under bf16); for a stage that samples, the larger of that and its sampling
    /// (every row's cached keys and values and logits, `generation_bytes`).
    pub memory_bytes: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Plan {
    pub experiment: String,
    pub models: Vec<ModelPlan>,
    pub stages: Vec<StagePlan>,
}

/// The plan as `roux plan` prints it: `device = auto` counted as the CPU.
pub fn plan(r: &Recipe) -> Plan {
    plan_on(r, false)
}

/// The plan on a machine where `device = auto` finds a GPU when `gpu`.
pub fn plan_on(r: &Recipe, gpu: bool) -> Plan {
    let graphs: Vec<ModelGraph> = r.models.iter().map(lower_model).collect();
    // Looked up by name, once per stage: linear in the recipe, however many models it declares.
    let graph_of: HashMap<&str, &ModelGraph> = graphs.iter().map(|g| (g.spec.name.as_str(), g)).collect();
    let mut first_trained: HashMap<&str, (usize, usize, &StageKind)> = HashMap::new();
    for s in &r.stages {
        if let StageKind::Train(t) = &s.kind {
            // (One micro-batch's rows: what a step holds at once.)
            first_trained.entry(t.model.as_str()).or_insert((t.batch / t.accumulate.max(1), t.context, &s.kind));
        }
    }
    let models: Vec<ModelPlan> = graphs
        .iter()
        .map(|g| {
            // FLOPs and memory at the micro-batch and context of the first stage that trains this model.
            match first_trained.get(g.spec.name.as_str()) {
                Some(&(batch, seq, kind)) => {
                    let p = plan_model(g, batch, seq);
                    ModelPlan { train_memory_bytes: kernels::as_run(kind, g, batch, seq, p.train_memory_bytes, gpu).saturating_sub(muon_saving(kind, g)), ..p }
                }
                None => plan_model(g, 1, g.spec.context),
            }
        })
        .collect();
    let stages = r
        .stages
        .iter()
        .map(|s| match &s.kind {
            StageKind::Train(t) => {
                let (tokens, tokens_f) = product(&[t.steps, t.tokens_per_step()]);
                let g = graph_of[t.model.as_str()];
                let per_token = 3.0 * forward_flops_per_token(g, t.context);
                let n = g.params().iter().map(|p| p.numel()).sum();
                // One micro-batch's activations are held at a time (`accumulate`).
                let micro = t.batch / t.accumulate.max(1);
                let memory_bytes = kernels::as_run(&s.kind, g, micro, t.context, train_memory_bytes(g, n, micro, t.context), gpu).saturating_sub(muon_saving(&s.kind, g));
                StagePlan { name: s.name.clone(), kind: s.kind.name(), after: s.after.clone(), steps: t.steps, tokens, flops: per_token * tokens_f, trainable: n, memory_bytes }
            }
            StageKind::Isoflop(iso) => {
                // Every point, plus the check run at `predict` × the largest budget.
                let steps = iso.points.iter().fold(0u64, |a, p| a.saturating_add(p.train.steps));
                let tokens = iso.points.iter().fold(0u64, |a, p| a.saturating_add(product(&[p.train.steps, p.train.tokens_per_step()]).0));
                let largest = iso.points.iter().map(|p| p.budget).fold(0.0, f64::max);
                let flops = iso.points.iter().map(|p| p.budget).sum::<f64>() + iso.predict * largest;
                let memory_bytes = iso.points.iter().map(|p| plan_model(&lower_model(&p.model), p.train.batch, p.train.context).train_memory_bytes).max().unwrap_or(0);
                StagePlan { name: s.name.clone(), kind: s.kind.name(), after: s.after.clone(), steps, tokens, flops, trainable: 0, memory_bytes }
            }
            StageKind::Mixture(m) => {
                // Every expert runs on every example (the gate is dense): 6 FLOPs per parameter per example.
                let (examples, examples_f) = product(&[m.steps, m.batch as u64]);
                let params = r.synthetic.iter().find(|d| d.name == m.data).map_or(0, |d| mixture_params(m, &d.generator));
                StagePlan { name: s.name.clone(), kind: s.kind.name(), after: s.after.clone(), steps: m.steps, tokens: examples, flops: 6.0 * params as f64 * examples_f, trainable: params, memory_bytes: (20 * params).saturating_add(9 << 20) }
            }
            _ => posttrain_plan(r, s, &graph_of, gpu),
        })
        .collect();
    Plan { experiment: r.experiment.clone(), models, stages }
}

/// Post-training stages, at an upper bound: every sequence as long as the model's context.
/// FLOPs count 6N per trained token (forward and backward; a LoRA stage still back-propagates
/// through the frozen weights) and 2N per token only run forward (references, reward models,
/// generation).
fn posttrain_plan(r: &Recipe, s: &crate::recipe::StageSpec, graph_of: &HashMap<&str, &ModelGraph>, gpu: bool) -> StagePlan {
    let graph = |arch: &str| graph_of[arch];
    let n_of = |arch: &str| graph(arch).params().iter().map(|p| p.numel()).sum::<u64>();
    let ctx_of = |arch: &str| graph(arch).spec.context as u64;
    // Training `trainable` of `weights` parameters of `arch` on `seqs` sequences at its context,
    // `micro` of a stage's batch at a time (its `accumulate` micro-batches; PPO's and GRPO's
    // scoring passes over a rollout batch run so too, bounding their minibatches' passes).
    let micro = |o: &crate::recipe::Optim| o.batch / o.accumulate.max(1);
    let training = |arch: &str, weights: u64, trainable: u64, seqs: usize| {
        let (g, seq) = (graph(arch), ctx_of(arch) as usize);
        kernels::as_run(&s.kind, g, seqs, seq, training_bytes(weights, trainable, g, seqs, seq), gpu).saturating_sub(muon_saving(&s.kind, g))
    };
    let reward_model = |stage: &str| r.stage(stage).and_then(|st| if let StageKind::RewardModel(m) = &st.kind { Some(n_of(&m.model.arch)) } else { None });
    // Every reward model a reward's terms read, each held and run once: their parameters.
    let rm_of = |reward: &crate::recipe::Reward| reward.model_stages().into_iter().filter_map(reward_model).sum::<u64>();
    // A stage that samples peaks at the larger of training and sampling (`sampling.rs`).
    let sampling = sampling::sampling_bytes(&s.kind, |a: &str| graph_of.get(a).copied(), 1);
    let peak = |arch: &str, weights: u64, trainable: u64, seqs: usize| training(arch, weights, trainable, seqs).max(training(arch, weights, trainable, 0).saturating_add(sampling));
    let (steps, tokens, flops, trainable, memory_bytes) = match &s.kind {
        StageKind::Finetune(f) => {
            let (n, (t, tf)) = (n_of(&f.model.arch), product(&[f.opt.steps, f.opt.batch as u64, ctx_of(&f.model.arch)]));
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&f.model.arch).spec, f.lora.as_ref(), n);
            // Packed rows add their attention mask: float32, batch × context², made once a step,
            // and as much again with an attention window (the windowed blocks' own).
            // (In floating point: at the limits of batch and context it is past u64; it saturates.)
            let masks = if graph(&f.model.arch).spec.window.is_some() { 2.0 } else { 1.0 };
            let mask = if f.packing { (masks * 4.0 * f.opt.batch as f64 * (ctx_of(&f.model.arch) as f64).powi(2)) as u64 } else { 0 };
            (f.opt.steps, t, 6.0 * n as f64 * tf, trainable, training(&f.model.arch, weights, trainable, micro(&f.opt)).saturating_add(mask))
        }
        StageKind::RewardModel(m) => {
            let n = n_of(&m.model.arch);
            let (t, tf) = product(&[2, m.opt.steps, m.opt.batch as u64, ctx_of(&m.model.arch)]);
            let head = crate::lower::ScalarHead::Reward.numel(&graph(&m.model.arch).spec);
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&m.model.arch).spec, m.lora.as_ref(), n);
            let (trainable, weights) = (trainable + head, weights + head);
            (m.opt.steps, t, 6.0 * n as f64 * tf, trainable, training(&m.model.arch, weights, trainable, 2 * micro(&m.opt)))
        }
        StageKind::Ppo(p) => {
            let n = n_of(&p.policy.arch);
            let (t, tf) = product(&[p.opt.steps, p.opt.batch as u64, ctx_of(&p.policy.arch)]);
            let rm = reward_model(&p.reward);
            // Generation and the old-policy pass (2N each), reference and reward model (2N each),
            // then `epochs` forward-backward passes (6N).
            let per_token = 2.0 * n as f64 * 3.0 + 2.0 * rm.unwrap_or(n) as f64 + 6.0 * n as f64 * p.epochs as f64;
            // The value head trains, and either the whole policy (a copy of it is the reference)
            // or its adapters (the reference is its own base).
            let head = crate::lower::ScalarHead::Value.numel(&graph(&p.policy.arch).spec);
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&p.policy.arch).spec, p.lora.as_ref(), n);
            let (trainable, weights) = (trainable + head, weights + head);
            let reference = if p.lora.is_some() { 0 } else { n };
            let frozen = 4 * (reference + rm.unwrap_or(0));
            (p.opt.steps, t, per_token * tf, trainable, peak(&p.policy.arch, weights, trainable, micro(&p.opt)).saturating_add(frozen))
        }
        StageKind::Dpo(d) => {
            let n = n_of(&d.policy.arch);
            let rows = r.dpo_rows(d) as u64;
            let (t, tf) = product(&[rows, d.opt.steps, d.opt.batch as u64, ctx_of(&d.policy.arch)]);
            // The frozen reference runs forward (2N a token) and is held, unless the loss has none
            // (or it is the LoRA policy's own base). Precomputed, it runs once over the pairs the
            // steps draw (at most as many) and is not held.
            let reference = if d.loss.needs_reference() { n } else { 0 };
            let held = if d.lora.is_some() || !d.holds_reference() { 0 } else { reference };
            // With LoRA only the adapters train (and hold gradients and moments).
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&d.policy.arch).spec, d.lora.as_ref(), n);
            // KTO also runs the policy and the reference forward over as many mismatched rows.
            let kto = if d.loss == crate::recipe::DpoLoss::Kto { 4.0 * n as f64 } else { 0.0 };
            (d.opt.steps, t, (6.0 * n as f64 + 2.0 * reference as f64 + kto) * tf, trainable, training(&d.policy.arch, weights, trainable, rows as usize * micro(&d.opt)).saturating_add(4 * held))
        }
        StageKind::Grpo(g) => {
            let n = n_of(&g.policy.arch);
            let (t, tf) = product(&[g.opt.steps, g.opt.batch as u64, ctx_of(&g.policy.arch)]);
            let rm = rm_of(&g.reward);
            // Generation and the old-policy pass (2N each), the reference when beta > 0 and the
            // reward models (2N each), then `epochs` forward-backward passes (6N).
            let reference = if g.beta > 0.0 { 2.0 * n as f64 } else { 0.0 };
            let per_token = 4.0 * n as f64 + reference + 2.0 * rm as f64 + 6.0 * n as f64 * g.epochs as f64;
            // With LoRA the reference is the policy's own base: nothing more is held.
            let reference = if g.beta > 0.0 && g.lora.is_none() { n } else { 0 };
            let frozen = 4 * (reference + rm);
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&g.policy.arch).spec, g.lora.as_ref(), n);
            (g.opt.steps, t, per_token * tf, trainable, peak(&g.policy.arch, weights, trainable, micro(&g.opt)).saturating_add(frozen))
        }
        StageKind::OnlineDpo(o) => {
            // Two responses a prompt: generated (2N), trained (6N), read by the reference (2N; a
            // copy of the policy, or with LoRA its own base) and by the reward models (2N each).
            let (n, rm) = (n_of(&o.policy.arch), rm_of(&o.reward));
            let (t, tf) = product(&[o.opt.steps, 2 * o.opt.batch as u64, ctx_of(&o.policy.arch)]);
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&o.policy.arch).spec, o.lora.as_ref(), n);
            let frozen = 4 * (if o.lora.is_none() { n } else { 0 } + rm);
            (o.opt.steps, t, (10.0 * n as f64 + 2.0 * rm as f64) * tf, trainable, peak(&o.policy.arch, weights, trainable, 2 * micro(&o.opt)).saturating_add(frozen))
        }
        StageKind::BestOfN(b) => {
            // Each prompt's best trains (6N a token); all `n` are generated (2N) and scored (2N a
            // reward model).
            let (n, rm) = (n_of(&b.policy.arch), rm_of(&b.reward));
            let (t, tf) = product(&[b.opt.steps, b.opt.batch as u64, ctx_of(&b.policy.arch)]);
            let per_token = 6.0 * n as f64 + b.n as f64 * 2.0 * (n + rm) as f64;
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&b.policy.arch).spec, b.lora.as_ref(), n);
            (b.opt.steps, t, per_token * tf, trainable, peak(&b.policy.arch, weights, trainable, micro(&b.opt)).saturating_add(4 * rm))
        }
        StageKind::Distill(k) => {
            let (n, teacher, ctx, vocab) = (n_of(&k.student.arch), n_of(&k.teacher.arch), ctx_of(&k.student.arch), graph(&k.student.arch).spec.vocab);
            let (t, tf) = product(&[k.opt.steps, k.opt.batch as u64, ctx]);
            let (trainable, weights) = crate::lower::trained_and_held(&graph(&k.student.arch).spec, k.lora.as_ref(), n);
            // The teacher is held frozen, and the divergence's tensors beside the student's logits.
            let beside = (4 * teacher).saturating_add(distill::divergence_bytes(ctx as usize, vocab, micro(&k.opt)));
            (k.opt.steps, t, distill::flops_per_token(k, n as f64, teacher as f64) * tf, trainable, peak(&k.student.arch, weights, trainable, micro(&k.opt)).saturating_add(beside))
        }
        StageKind::Compare(c) => compare::plan(r, c, &n_of, &|arch, rows| activation_bytes(graph(arch), rows, ctx_of(arch) as usize), &ctx_of),
        StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) => unreachable!("planned above"),
    };
    // Counted in float32 above: as the stage holds its frozen weights.
    let memory_bytes = frozen::as_held(r, s, memory_bytes);
    StagePlan { name: s.name.clone(), kind: s.kind.name(), after: s.after.clone(), steps, tokens, flops, trainable, memory_bytes }
}

/// A count that is the product of `parts`: saturating at u64::MAX (a plan of absurd sizes says
/// so rather than wrapping around to a small number), and as a float for FLOPs.
fn product(parts: &[u64]) -> (u64, f64) {
    (parts.iter().fold(1u64, |a, &b| a.saturating_mul(b)), parts.iter().map(|&b| b as f64).product())
}
