//! What a model costs, from its graph: parameters (total, active, non-embedding), FLOPs per
//! token (6N and Chinchilla's Appendix F), the memory of a training step, and sizing a model to
//! a parameter count.

use serde::Serialize;

use super::graph::{lower_model, ModelGraph, Op, OpKind};

#[derive(Serialize, Debug, Clone)]
pub struct ModelPlan {
    pub name: String,
    pub params_total: u64,
    /// Parameters a token passes through: routed experts count k/experts of their weights
    /// (equal to the total for a dense model).
    pub params_active: u64,
    /// Kaplan's N: without token and position embeddings (a tied head is the embedding).
    pub params_non_embedding: u64,
    /// Training FLOPs per token by the 6N rule, N = params_total (Chinchilla's convention).
    pub flops_per_token_6n: f64,
    /// Training FLOPs per token op by op (Chinchilla Appendix F): 3 × forward.
    pub flops_per_token_appendix_f: f64,
    /// The FLOPs a training step executes per token, for MFU: Appendix F without its embedding
    /// term (a lookup is a gather, not a 2·vocab·d matmul; PaLM and nanoGPT count it so too).
    pub flops_per_token_model: f64,
    /// Peak memory of one training step, fp32 (see `train_memory_bytes`).
    pub train_memory_bytes: u64,
    /// Sequence length and batch the FLOPs and memory were computed at.
    pub seq: usize,
    pub batch: usize,
}

pub fn forward_flops_per_token(g: &ModelGraph, seq: usize) -> f64 {
    g.graph.node_weights().map(|op| op.flops_per_token(seq)).sum()
}

/// Forward FLOPs per token that run as arithmetic: every op but the embedding lookup.
pub fn executed_flops_per_token(g: &ModelGraph, seq: usize) -> f64 {
    g.graph.node_weights().filter(|op| !matches!(op.kind, OpKind::Embedding { .. })).map(|op| op.flops_per_token(seq)).sum()
}

pub fn plan_model(g: &ModelGraph, batch: usize, seq: usize) -> ModelPlan {
    let params = g.params();
    let total: u64 = params.iter().map(|p| p.numel()).sum();
    let embedding: u64 = params.iter().filter(|p| p.embedding).map(|p| p.numel()).sum();
    let active: f64 = params.iter().map(|p| p.numel() as f64 * p.active).sum();
    ModelPlan {
        name: g.spec.name.clone(),
        params_total: total,
        params_active: active.round() as u64,
        params_non_embedding: total - embedding,
        // A token runs through the active parameters only: for a mixture of experts, 6N counts
        // those, as Switch and Mixtral report their training compute.
        flops_per_token_6n: 6.0 * active,
        flops_per_token_appendix_f: 3.0 * forward_flops_per_token(g, seq),
        flops_per_token_model: 3.0 * executed_flops_per_token(g, seq),
        train_memory_bytes: train_memory_bytes(g, total, batch, seq),
        seq,
        batch,
    }
}

/// Bytes a training step holds at its peak, fp32: weights, gradients and AdamW's two moments and
/// its scratch buffer (20 bytes a parameter, see run/adamw.rs), the activations saved for the
/// backward pass, the largest gradient working set the backward pass adds on top of them, and
/// libtorch's CPU runtime (thread pools, kernel workspaces: 9 MiB measured by `roux bench
/// transformer` as its warm-up RSS).
pub fn train_memory_bytes(g: &ModelGraph, params: u64, batch: usize, seq: usize) -> u64 {
    training_bytes(params, params, g, batch, seq)
}

/// Peak bytes of training `trainable` of `weights` fp32 parameters (4 bytes each; a trainable one
/// adds 16: its gradient, AdamW's two moments and scratch) on `batch` sequences of `seq` tokens
/// through model `g`. Summed in floating point: an absurd plan saturates instead of wrapping.
pub fn training_bytes(weights: u64, trainable: u64, g: &ModelGraph, batch: usize, seq: usize) -> u64 {
    (4.0 * weights as f64 + 16.0 * trainable as f64 + activation_bytes(g, batch, seq) as f64 + backward_peak_bytes(g, batch, seq) as f64 + RUNTIME_BYTES as f64) as u64
}

const RUNTIME_BYTES: u64 = 9 << 20;

/// Attention with dropout on the CPU, on top of `activation_bytes`: libtorch's fused CPU kernel
/// takes no dropout, so the unfused one keeps, in every layer, the attention probabilities, the
/// dropout mask and the dropped probabilities: 3 floats for each of batch × heads × seq²
/// (measured with `ROUX_MALLOC=exact`: 575 MiB of 576 predicted at 6 layers × 4 heads × 32 × 256²,
/// 197 of 192 at 4 × 8 × 32 × 128²). CUDA's fused kernels draw the dropout inside and keep none.
/// With activation checkpointing (`checkpointed`) one block holds its own at a time.
pub fn cpu_attention_dropout_bytes(g: &ModelGraph, batch: usize, seq: usize, checkpointed: bool) -> u64 {
    if g.spec.attn_softcap.is_some() {
        // (Soft-capped attention does not use the fused kernel: `capped_attention_bytes`.)
        return 0;
    }
    let per_layer = g.graph.node_weights().filter_map(|op| match &op.kind {
        OpKind::Attention { heads, dropout, .. } if *dropout > 0.0 => Some(12.0 * batch as f64 * *heads as f64 * (seq as f64).powi(2)),
        _ => None,
    });
    (if checkpointed { per_layer.fold(0.0, f64::max) } else { per_layer.sum() }) as u64
}

/// What activation checkpointing takes off `activation_bytes`: a block's activations are kept
/// only while it runs again in the backward pass, one block at a time, so what stays is each
/// block's input (the residual stream, d floats a token, once for every block and for the last
/// one's output), the largest block's activations (or the embeddings', run again last) and the
/// ops after the blocks (final norm, head) as before.
pub fn checkpointing_saving(g: &ModelGraph, batch: usize, seq: usize) -> u64 {
    let bt = batch as f64 * seq as f64;
    let (mut blocks, mut before, mut after) = (std::collections::BTreeMap::<usize, f64>::new(), 0.0, 0.0);
    for op in g.graph.node_weights() {
        let floats = op_activation_floats(g, op, bt);
        match op.path.strip_prefix("blocks.").and_then(|rest| rest.split('.').next()).and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => *blocks.entry(i).or_default() += floats,
            None if blocks.is_empty() => before += floats,
            None => after += floats,
        }
    }
    if blocks.is_empty() {
        return 0;
    }
    let inputs = (blocks.len() + 1) as f64 * bt * g.spec.d_model as f64;
    let largest = blocks.values().copied().fold(before, f64::max);
    let all: f64 = before + after + blocks.values().sum::<f64>();
    (4.0 * (all - (inputs + largest + after)).max(0.0)) as u64
}

/// fp32 bytes sampling `rows` sequences of up to `seq` tokens holds at its peak: every attention
/// layer's cached keys and values for each row at full length, the prompt pass's widest layer
/// (an MLP's hidden activations, SwiGLU's two of them and their product; attention's q, k, v and
/// output), and the next token's logits (the head reads the last position only). No activations
/// are kept: it runs without a graph.
pub fn generation_bytes(g: &ModelGraph, rows: usize, seq: usize) -> u64 {
    let act = |a: &crate::recipe::Activation| if a.gated() { 3.0 } else { 2.0 };
    let (mut kv, mut widest) = (0.0f64, 0.0f64);
    for op in g.graph.node_weights() {
        let width = match &op.kind {
            OpKind::Attention { heads, kv_heads, head_dim, .. } => {
                kv += 2.0 * (*kv_heads * *head_dim) as f64;
                4.0 * (*heads * *head_dim) as f64
            }
            OpKind::Mlp { hidden, act: a, .. } => act(a) * *hidden as f64,
            OpKind::Moe { hidden, act: a, .. } => moe_slots(op, 1.0) * act(a) * *hidden as f64,
            _ => 0.0,
        };
        widest = widest.max(width);
    }
    (4.0 * rows as f64 * (seq as f64 * (kv + widest) + g.spec.vocab as f64)) as u64
}

/// fp32 activations kept for the backward pass of one step, counted per op:
/// norms keep their input and output, attention its q, k, v, output and log-sum-exp (the fused
/// kernel does not materialise the T×T scores), the MLP its hidden activations, the head its
/// log-softmax. `roux bench transformer` measures the forward pass's growth within 2% of this
/// on the dense configurations of bench/.
pub fn activation_bytes(g: &ModelGraph, batch: usize, seq: usize) -> u64 {
    let bt = batch as f64 * seq as f64;
    let floats: f64 = g.graph.node_weights().map(|op| op_activation_floats(g, op, bt)).sum();
    (4.0 * floats) as u64 + window_mask_bytes(g, seq) + capped_attention_bytes(g, batch, seq)
}

/// Soft-capped attention (Gemma 2's) runs written out, not fused: each layer keeps the capped
/// scores' tanh and the probabilities, 2 floats for each of batch × heads × seq² (with dropout,
/// its mask and the dropped probabilities too), and one more such tensor is live while a layer
/// runs (measured with `ROUX_MALLOC=exact`: 38.0 MiB of 36 predicted at 4 layers × 2 heads × 8 × 256²).
pub fn capped_attention_bytes(g: &ModelGraph, batch: usize, seq: usize) -> u64 {
    if g.spec.attn_softcap.is_none() {
        return 0;
    }
    let per_layer: Vec<f64> = g.graph.node_weights().filter_map(|op| match &op.kind {
        OpKind::Attention { heads, dropout, .. } => Some((if *dropout > 0.0 { 4.0 } else { 2.0 }) * batch as f64 * *heads as f64 * (seq as f64).powi(2)),
        _ => None,
    }).collect();
    let live = per_layer.iter().copied().fold(0.0, f64::max) / 2.0;
    (4.0 * (per_layer.iter().sum::<f64>() + live)) as u64
}

/// An attention window's mask: a float (0 or −∞) a (query, key) pair, made once and read by
/// every windowed block (`run::model::attention`).
pub fn window_mask_bytes(g: &ModelGraph, seq: usize) -> u64 {
    let windowed = g.graph.node_weights().any(|op| matches!(op.kind, OpKind::Attention { window: Some(_), .. }));
    if windowed { (4.0 * (seq as f64).powi(2)) as u64 } else { 0 }
}

/// The floats op `op` keeps for the backward pass on `bt` tokens (`activation_bytes`).
fn op_activation_floats(g: &ModelGraph, op: &Op, bt: f64) -> f64 {
    match &op.kind {
        OpKind::Embedding { dim, .. } => bt * *dim as f64,
        OpKind::Norm { dim, .. } => 2.0 * bt * *dim as f64,
        OpKind::Attention { dim, heads, head_dim, dropout, .. } => {
            // The input, then q, k, v and the heads' output in the attention width.
            let q = (*heads * *head_dim) as f64;
            bt * (*dim as f64 + 4.0 * q + *heads as f64) + if *dropout > 0.0 { bt * *dim as f64 } else { 0.0 }
        }
        OpKind::Mlp { hidden, act, .. } => {
            let n = if act.gated() { 4.0 } else { 2.0 };
            n * bt * *hidden as f64
        }
        OpKind::Moe { dim, experts, hidden, act, router, .. } => {
            // Router logits and probabilities, then per routed (token, expert) assignment the
            // dispatched input, hidden activations and output. (The CPU groups rows by expert;
            // CUDA's capacity buffer pads them by up to the capacity factor.) Switch's jitter
            // keeps its noise and the router's jittered input.
            let n = if act.gated() { 4.0 } else { 2.0 };
            let jitter = if matches!(router, crate::recipe::RouterSpec::Switch { jitter, .. } if *jitter > 0.0) { 2.0 * bt * *dim as f64 } else { 0.0 };
            3.0 * bt * *experts as f64 + moe_slots(op, bt) * (2.0 * *dim as f64 + n * *hidden as f64) + bt * *dim as f64 + jitter
        }
        OpKind::Head { vocab, .. } => bt * *vocab as f64,
        OpKind::Dropout { .. } => bt * g.spec.d_model as f64,
        _ => 0.0,
    }
}

/// Routed (token, expert) assignments of a mixture-of-experts op for `bt` tokens.
fn moe_slots(op: &Op, bt: f64) -> f64 {
    let OpKind::Moe { active, shared, .. } = &op.kind else { return 0.0 };
    bt * (active + *shared as f64)
}

/// The largest transient on top of the saved activations, fp32, per op as measured one op at a
/// time on libtorch's CPU kernels (RSS growth of a first forward and backward, in rows of the
/// op's widths): at the end of the forward pass the logits beside their log-softmax (1 row of
/// the vocabulary); in the backward pass the head's incoming and outgoing gradients (2 of the
/// vocabulary, 1 of d_model), an MLP's (2 of the hidden width, 2 of d_model; SwiGLU 3 hidden),
/// attention's (10 of d_model: q, k, v's gradients, the copies the fused kernel makes of them
/// and of its output gradient, their concatenation, the input gradient).
pub fn backward_peak_bytes(g: &ModelGraph, batch: usize, seq: usize) -> u64 {
    let bt = batch as f64 * seq as f64;
    let d = g.spec.d_model as f64;
    let floats = g
        .graph
        .node_weights()
        .map(|op| match &op.kind {
            OpKind::Head { vocab, .. } => bt * (2.0 * *vocab as f64 + d),
            OpKind::Mlp { hidden, act, .. } => bt * ((if act.gated() { 3.0 } else { 2.0 }) * *hidden as f64 + 2.0 * d),
            OpKind::Moe { hidden, act, .. } => {
                moe_slots(op, bt) * ((if act.gated() { 3.0 } else { 2.0 }) * *hidden as f64 + 2.0 * d)
            }
            OpKind::Attention { dim, heads, head_dim, .. } => bt * (2.0 * *dim as f64 + 8.0 * (*heads * *head_dim) as f64),
            _ => 0.0,
        })
        .fold(0.0, f64::max);
    (4.0 * floats) as u64
}

/// Parameters of a Jacobs mixture: a linear gate (weights and bias) and the experts.
pub fn mixture_params(m: &crate::recipe::MixtureSpec, g: &crate::recipe::Generator) -> u64 {
    let crate::recipe::Generator::Regions { dim, outputs, .. } = *g;
    let (e, i, o) = (m.experts as u64, dim as u64, outputs as u64);
    let expert = match &m.expert {
        None => i * o + o,
        Some(mlp) => {
            let h = mlp.hidden as u64;
            i * h + h + h * o + o
        }
    };
    e * (i + 1) + e * expert
}

/// The (layers, d_model) whose exact parameter count is nearest `target` (in log ratio), among
/// d_model in multiples of head_dim with d_model / layers within a factor 2 of `aspect`
/// (ties go to the shape closer to `aspect`); heads = d_model / head_dim, FFN 4 × d_model.
/// Returns the sized spec and its parameter count. For a mixture of experts, `target` and the
/// count are active parameters, what C = 6ND spends compute on.
pub fn size_model(base: &crate::recipe::ModelSpec, target: f64, aspect: f64, head_dim: usize) -> (crate::recipe::ModelSpec, u64) {
    let mut best: Option<(f64, f64, crate::recipe::ModelSpec, u64)> = None;
    let shape_of = |layers: usize, k: usize| (((k * head_dim) as f64 / layers as f64) / aspect).ln().abs();
    let sized = |layers: usize, k: usize| {
        let d = k * head_dim;
        let mut s = base.clone();
        s.layers = layers;
        s.d_model = d;
        s.heads = k;
        s.kv_heads = k;
        s.ffn.hidden = 4 * d;
        if let Some(m) = s.moe.as_mut() {
            m.expert.hidden = 4 * d;
            m.layers.retain(|&l| l < layers);
        }
        let n = plan_model(&lower_model(&s), 1, s.context).params_active;
        (s, n)
    };
    // Counts grow with width and depth. At each depth the widths within the aspect window are a
    // run of head counts; a binary search finds where the count crosses the target, and only the
    // widths beside the crossing can be nearest. The search stops at the first depth whose
    // narrowest shape is above the target.
    for layers in 1..=64usize {
        let within = |k: usize| shape_of(layers, k) <= 2f64.ln() + 1e-9;
        let mut ks: Vec<usize> = (1..=256).filter(|&k| within(k) || (layers == 1 && k == 1)).collect();
        if ks.is_empty() {
            continue;
        }
        let (lo, hi) = (0, ks.len() - 1);
        // The first index whose count is above the target (or past the end).
        let (mut l, mut r) = (lo, hi + 1);
        while l < r {
            let mid = (l + r) / 2;
            if sized(layers, ks[mid]).1 as f64 > target {
                r = mid;
            } else {
                l = mid + 1;
            }
        }
        let mut picks = vec![ks[0]];
        picks.extend([l.checked_sub(1), Some(l)].into_iter().flatten().filter(|&i| i <= hi).map(|i| ks[i]));
        picks.sort();
        picks.dedup();
        ks = picks;
        let mut narrowest = None;
        for k in ks {
            let (s, n) = sized(layers, k);
            let shape = shape_of(layers, k);
            let err = (n as f64 / target).ln().abs();
            let better = match &best {
                None => true,
                Some((e, sh, _, _)) => err < *e - 1e-12 || ((err - *e).abs() <= 1e-12 && shape < *sh),
            };
            narrowest.get_or_insert(n);
            if better {
                best = Some((err, shape, s, n));
            }
        }
        if narrowest.is_some_and(|n| n as f64 > target) {
            break;
        }
    }
    let (_, _, s, n) = best.expect("at least one candidate");
    (s, n)
}

/// Elements per block of the gradient norm (run/kit/adamw/norm.rs); a sharded optimizer's slices
/// start at multiples of it.
pub const NORM_BLOCK: u64 = 4096;

/// Elements of the flat buffers each of `world` processes owns when the optimizer is sharded
/// (ZeRO-1): an equal share of `n`, rounded up to whole norm blocks (the buffers are padded to
/// world × this).
pub fn shard_chunk(n: u64, world: u64) -> u64 {
    n.div_ceil(world.max(1)).div_ceil(NORM_BLOCK) * NORM_BLOCK
}
