//! The network on tch (room `run/model`): a transformer built from the lowered model graph and
//! executed by walking it. Imports nothing else in `run/`.
//!
//! | file           | what it does                                                        |
//! |----------------|---------------------------------------------------------------------|
//! | `mod.rs`       | parameters from the graph, the loss, load, freeze                   |
//! | `walk.rs`      | the forward pass: the graph's ops in order                          |
//! | `recompute.rs` | activation checkpointing: blocks run again in the backward pass    |
//! | `shim.rs`      | what the model calls in the C++ shim (grad mode, generators, backward) |
//! | `casts.rs`     | parameters in the compute kind: cached casts, the optimizer's bf16 copies |
//! | `attention.rs` | causal attention, rotary embeddings, grouped-query heads, KV cache  |
//! | `moe.rs`       | routers, the MoE layer and jitter                                   |
//! | `experts.rs`   | the experts on their tokens: routing decisions, sparse dispatch, expert LoRA |
//! | `router_losses.rs` | the routers' auxiliary losses, the 1991 mixture's loss          |
//! | `expert_parallel.rs` | an MoE layer's experts divided over processes (all-to-all)    |
//! | `lora.rs`      | LoRA adapters: attach, load, merge                                  |
//! | `nf4.rs`       | QLoRA's base: weights held as 4-bit NormalFloat                     |
//! | `packing.rs`   | several sequences in a row: positions and the block-diagonal mask   |
//! | `heads.rs`     | scalar heads on the final hidden state (reward and value heads)     |
//! | `weights.rs`   | weights in: copied into a model, or a checkpoint's tensors adopted  |
//!
//! Parameters are created from `ModelGraph::params()` (names, shapes and init come from the
//! graph), so the planner's count is by construction the count of what runs; a test checks it.

pub mod attention;
mod casts;
pub mod heads;
pub mod lora;
pub mod expert_parallel;
pub mod moe;
pub mod experts;
pub mod nf4;
mod packing;
mod recompute;
pub(crate) mod shim;
mod walk;
mod router_losses;
mod weights;

use anyhow::Result;
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

pub use attention::KvCache;
pub use packing::Packing;
pub use weights::all_finite;
use crate::lower::{lower_model, ModelGraph, ParamInit};
use crate::recipe::ModelSpec;
use moe::MoeStats;

pub struct Model {
    pub graph: ModelGraph,
    /// Parameters in graph order, with their names.
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    index: HashMap<String, usize>,
    /// Per op (in topological order): its parameters as (name after the op's path, index), so
    /// the forward pass finds them without formatting names.
    node_params: Vec<Vec<(String, usize)>>,
    /// Topological order, each node's inputs, and the position after which an output is dead.
    order: Vec<NodeIndex>,
    inputs: Vec<Vec<usize>>,
    last_use: Vec<usize>,
    rope: Option<(Tensor, Tensor)>,
    /// The windowed blocks' tables, when they turn by a base of their own (`window_rope_theta`).
    rope_local: Option<(Tensor, Tensor)>,
    pub device: Device,
    /// Kind the forward pass computes in. Parameters stay float32 (the master weights AdamW
    /// updates); with bfloat16 each is cast where it is used, so gradients flow back to float32.
    pub compute: Kind,
    /// LoRA adapters, by the index of the weight they modify (see `lora.rs`).
    pub lora: lora::Adapters,
    /// Per parameter, its NF4 codes when the base is quantized (QLoRA, `nf4.rs`); the parameter
    /// itself is then a stride-0 placeholder of its shape.
    quantized: Vec<Option<nf4::Nf4>>,
    /// Pad the vocabulary of the loss's head matmul to a multiple of 64. A vocabulary like
    /// GPT-2's 50257 leaves the logits' rows misaligned for the fastest CUDA tensor-core kernels;
    /// the weight gets zero rows and the extra logits a −∞ bias, so their probability and
    /// gradient are exactly 0 and the loss is unchanged.
    pub pad_vocab: bool,
    /// NEFTune's α (0: off): training passes add uniform noise to the token embeddings.
    pub neftune: f64,
    /// PaLM's z-loss weight (0: off; `set_z_loss`).
    z_loss: f64,
    /// Parameters already cast to the compute kind, reused while they cannot change: always for
    /// a parameter that takes no gradient (a frozen reference, a LoRA base), and for every one
    /// inside `with_cached_casts` (generation, where no update happens). Without it a bf16 model
    /// generating casts every weight for every token (PPO's rollouts ran slower than float32's).
    casts: RefCell<Vec<Option<Tensor>>>,
    cache_all: Cell<bool>,
    /// Per parameter, the optimizer's low-precision copy to compute with (`use_shadow`).
    shadow: Vec<Option<Tensor>>,
    /// Set for expert parallelism: forward passes divide the experts over processes.
    pub experts_across: Option<std::rc::Rc<dyn expert_parallel::Exchange>>,
    /// This process's part of every routed expert stack (expert parallelism), and the
    /// parameters that hold only that part.
    share: Option<expert_parallel::Share>,
    divided: Vec<usize>,
    /// Activation checkpointing (`set_recompute`): where blocks end in the order, and the
    /// checkpointed passes waiting for `backward`.
    recompute: bool,
    block_ends: Vec<usize>,
    pending: RefCell<Vec<recompute::Pending>>,
    /// The last attention mask made ((queries, keys, offset, window) and the scores to add): every
    /// windowed block of a pass, and every training pass, reads the one (the backward passes
    /// keep one copy, not one per block).
    window_mask: RefCell<Option<((i64, i64, i64, i64), Tensor)>>,
}

impl Model {
    /// Fresh parameters, initialised as the graph says, from libtorch's (seeded) generator. An
    /// allocation libtorch refuses is an error, not a panic.
    pub fn new(spec: &ModelSpec, device: Device) -> Result<Model> {
        Self::build(lower_model(spec), device, true, None)
    }

    /// Fresh parameters for a model already lowered (the caller planned it from the same graph),
    /// of each routed expert stack only `share`'s rows when given (`expert_parallel.rs`).
    pub fn from_graph(graph: ModelGraph, device: Device, share: Option<expert_parallel::Share>) -> Result<Model> {
        Self::build(graph, device, true, share)
    }

    /// The same model with every parameter a stride-0 view of one element: real tch tensors of
    /// the real shapes, no memory. For checking the structure of models too large to allocate
    /// (Mixtral's 46.7B parameters); it cannot be trained.
    pub fn shapes_only(spec: &ModelSpec) -> Model {
        Self::build(lower_model(spec), Device::Cpu, false, None).expect("stride-0 views allocate one element")
    }

    fn build(graph: ModelGraph, device: Device, materialize: bool, share: Option<expert_parallel::Share>) -> Result<Model> {
        let mut names = vec![];
        let mut params = vec![];
        let mut divided = vec![];
        tch::no_grad(|| -> Result<()> {
            for p in graph.params() {
                let shape: Vec<i64> = p.shape.iter().map(|&d| d as i64).collect();
                let mine = share.filter(|_| p.routed_expert());
                if mine.is_some() {
                    divided.push(params.len());
                }
                if !materialize {
                    let mut held = shape.clone();
                    held[0] = mine.map_or(shape[0], |s| s.rows(shape[0]).1);
                    names.push(p.name);
                    params.push(Tensor::zeros([1], (Kind::Float, device)).expand(&held, false));
                    continue;
                }
                let t = match p.init {
                    ParamInit::Zeros => Tensor::f_zeros(&shape, (Kind::Float, device)),
                    ParamInit::Ones => Tensor::f_ones(&shape, (Kind::Float, device)),
                    ParamInit::Normal { std } => Tensor::f_randn(&shape, (Kind::Float, device)).map(|t| t * std),
                };
                let t = t.map_err(|e| anyhow::anyhow!("could not allocate `{}` ({} floats): {e}", p.name, shape.iter().product::<i64>()))?;
                // A divided stack is drawn whole (the numbers one process draws) and only this
                // process's rows kept: one stack at a time is ever whole.
                let t = match mine {
                    Some(s) => s.of(&t).copy(),
                    None => t,
                };
                names.push(p.name);
                params.push(t.set_requires_grad(true));
            }
            Ok(())
        })?;
        let order = graph.topo();
        let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let inputs: Vec<Vec<usize>> = order
            .iter()
            .map(|&n| {
                let mut ins: Vec<usize> = graph.graph.neighbors_directed(n, Direction::Incoming).map(|m| pos[&m]).collect();
                ins.sort();
                ins
            })
            .collect();
        let mut last_use: Vec<usize> = (0..order.len()).collect();
        for (i, ins) in inputs.iter().enumerate() {
            for &j in ins {
                last_use[j] = last_use[j].max(i);
            }
        }
        let spec = &graph.spec;
        let rope = (spec.position == crate::recipe::Position::Rope).then(|| attention::rope_tables(spec, false, device));
        let rope_local = spec.window_rope_theta.filter(|_| spec.position == crate::recipe::Position::Rope).map(|_| attention::rope_tables(spec, true, device));
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let node_params = order
            .iter()
            .map(|&n| {
                let prefix = format!("{}.", graph.graph[n].path);
                names.iter().enumerate().filter_map(|(j, name)| name.strip_prefix(&prefix).map(|rest| (rest.to_string(), j))).collect()
            })
            .collect();
        let casts = RefCell::new((0..names.len()).map(|_| None).collect());
        Ok(Model { graph, names, params, index, node_params, order, inputs, last_use, rope, rope_local, device, compute: Kind::Float, lora: Default::default(), quantized: vec![], pad_vocab: false, neftune: 0.0, z_loss: 0.0, casts, cache_all: Cell::new(false), shadow: vec![], experts_across: None, share, divided, recompute: false, block_ends: vec![], pending: RefCell::new(vec![]), window_mask: RefCell::new(None) })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.graph.spec
    }

    /// Parameters this process holds (of a divided expert stack, its own rows only).
    pub fn numel(&self) -> u64 {
        self.params.iter().map(|p| p.numel() as u64).sum()
    }

    /// Op `i`'s parameter `<sub>.<leaf>` (or `<leaf>` when `sub` is empty).
    fn find(&self, i: usize, sub: &str, leaf: &str) -> Option<&Tensor> {
        self.find_index(i, sub, leaf).map(|j| &self.params[j])
    }

    fn find_index(&self, i: usize, sub: &str, leaf: &str) -> Option<usize> {
        self.node_params[i]
            .iter()
            .find(|(name, _)| match sub {
                "" => name == leaf,
                _ => name.len() == sub.len() + 1 + leaf.len() && name.starts_with(sub) && name.as_bytes()[sub.len()] == b'.' && name.ends_with(leaf),
            })
            .map(|&(_, j)| j)
    }

    /// Index of a parameter by its full name.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// A parameter of op `i` in the compute kind (no copy when that is float32).
    fn w(&self, i: usize, sub: &str, leaf: &str) -> Tensor {
        self.cast(self.find_index(i, sub, leaf).expect("the graph lists every parameter an op uses"))
    }

    fn w_opt(&self, i: usize, sub: &str, leaf: &str) -> Option<Tensor> {
        self.find_index(i, sub, leaf).map(|j| self.cast(j))
    }


    fn linear(&self, x: &Tensor, i: usize, sub: &str) -> Tensor {
        let j = self.find_index(i, sub, "weight").expect("a linear has a weight");
        let bias = self.w_opt(i, sub, "bias");
        let (y, w) = match self.nf4(j) {
            // (The weight whole only where DoRA's norms read it.)
            Some(q) => {
                let y = q.linear(x);
                (bias.as_ref().map_or_else(|| y.shallow_clone(), |b| &y + b), None)
            }
            None => {
                let w = self.cast(j);
                (x.linear(&w, bias.as_ref()), Some(w))
            }
        };
        match self.lora.get(j) {
            Some(ad) => self.lora.apply(ad, x, y, || w.unwrap_or_else(|| self.cast(j)), bias.as_ref(), self.compute),
            None => y,
        }
    }

    /// Parameter `j`'s NF4 codes, when the base is quantized.
    fn nf4(&self, j: usize) -> Option<&nf4::Nf4> {
        self.quantized.get(j).and_then(Option::as_ref)
    }

    /// Parameter `j` as float32 values (an NF4 weight dequantized).
    pub fn weight(&self, j: usize) -> Tensor {
        match self.nf4(j) {
            Some(q) => q.dequantize(Kind::Float),
            None => self.params[j].shallow_clone(),
        }
    }

    /// Logits (B, T, vocab) for token ids (B, T).
    pub fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.forward_aux(tokens, train).0
    }

    /// Logits and the statistics (with auxiliary losses) of every mixture-of-experts layer.
    pub fn forward_aux(&self, tokens: &Tensor, train: bool) -> (Tensor, Vec<MoeStats>) {
        let (_, logits, stats) = self.forward_full(tokens, train);
        (logits, stats)
    }

    /// The final hidden states (B, T, d) (the head's input, after the last norm), the logits
    /// and the MoE statistics. Reward and value heads read the hidden states.
    pub fn forward_full(&self, tokens: &Tensor, train: bool) -> (Tensor, Tensor, Vec<MoeStats>) {
        self.walk(tokens, train, false, None, None)
    }

    /// Logits (B, T, vocab) of rows that each hold several sequences, as `packing` lays them out:
    /// every sequence gets the logits it would get alone.
    pub fn forward_packed(&self, tokens: &Tensor, packing: &Packing, train: bool) -> Tensor {
        self.walk(tokens, train, false, None, Some(&packing.for_pass(self.compute, self.spec().window))).1
    }

    /// Logits (B, T, vocab) for tokens (B, T) that continue what `cache` holds (empty: a fresh
    /// sequence), in evaluation mode; the tokens' keys and values join the cache. The caller
    /// keeps `cache.len` plus T within the context.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = tokens.size()[1] as usize;
        debug_assert!(cache.len + t <= self.spec().context, "the cache holds at most the context");
        let logits = self.walk(tokens, false, false, Some(cache), None).1;
        cache.len += t;
        logits
    }

    /// `forward_cached`'s logits at the last position only, (B, vocab): the next token's, without
    /// the head's matmul and a row of the vocabulary for every earlier position (generation).
    pub fn forward_next(&self, tokens: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = tokens.size()[1] as usize;
        debug_assert!(cache.len + t <= self.spec().context, "the cache holds at most the context");
        let logits = self.walk_with(tokens, false, false, Some(cache), None, true).1;
        cache.len += t;
        logits.squeeze_dim(1)
    }

    /// Compute in bfloat16 (float32 master weights) or float32. On CUDA in bf16 the loss's head
    /// matmul is padded (`pad_vocab`) unless `ROUX_PAD_VOCAB=0` (for benchmarks).
    pub fn set_precision(&mut self, kind: Kind) {
        self.drop_casts();
        self.compute = kind;
        self.pad_vocab = self.device.is_cuda() && kind == Kind::BFloat16 && std::env::var("ROUX_PAD_VOCAB").map_or(true, |v| v != "0");
        self.hold_frozen_in_compute_kind();
    }

    /// This model computing at a recipe's `precision` (bf16: bfloat16 compute, float32 weights).
    pub fn computing(mut self, p: crate::recipe::Precision) -> Model {
        if p == crate::recipe::Precision::Bf16 {
            self.set_precision(Kind::BFloat16);
        }
        self
    }

    /// Columns of padding for the head's matmul when it computes logits only for the loss.
    fn head_padding(&self, vocab: usize) -> Option<i64> {
        // (A soft cap would turn the padding's −∞ into −c.)
        (self.pad_vocab && !vocab.is_multiple_of(64) && self.spec().logit_softcap.is_none()).then(|| (64 - vocab % 64) as i64)
    }

    /// Mean next-token cross-entropy in nats.
    pub fn loss(&self, x: &Tensor, y: &Tensor, train: bool) -> Tensor {
        self.loss_parts(x, y, train).1
    }

    /// (cross-entropy + weighted auxiliary losses, cross-entropy, MoE statistics). In training,
    /// `z_loss` > 0 adds PaLM's z-loss, z_loss · mean(log² Z).
    pub fn loss_parts(&self, x: &Tensor, y: &Tensor, train: bool) -> (Tensor, Tensor, Vec<MoeStats>) {
        let (_, logits, stats) = self.walk(x, train, true, None, None);
        let v = logits.size()[2];
        let logits = logits.view([-1, v]);
        // log_softmax reads bf16 logits and writes float32 log-probabilities in one pass (no
        // float32 copy of the logits, the largest activation of a model with a big vocabulary).
        let (ce, z) = if train && self.z_loss > 0.0 {
            let (logp, y) = (logits.log_softmax(-1, Kind::Float), y.view([-1, 1]));
            let picked = logp.gather(1, &y, false);
            // log Z = a logit less its log-probability, read at the target: no second pass.
            let log_z = logits.gather(1, &y, false).to_kind(Kind::Float) - &picked;
            (-picked.mean(Kind::Float), Some(log_z.square().mean(Kind::Float) * self.z_loss))
        } else {
            (logits.cross_entropy_for_logits(&y.view([-1])), None)
        };
        let total = stats.iter().fold(ce.shallow_clone(), |acc, s| acc + &s.aux);
        (z.map_or(total.shallow_clone(), |z| total + z), ce, stats)
    }

    /// Add PaLM's z-loss with this weight in training passes (0: off).
    pub fn set_z_loss(&mut self, weight: f64) {
        self.z_loss = weight;
    }

    /// The parameters, named (an NF4 weight as float32 values).
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.names.iter().enumerate().map(|(j, n)| (n.clone(), self.weight(j))).collect()
    }

    /// Make this a frozen copy: no parameter takes gradients.
    pub fn freeze(&mut self) {
        for p in self.params.iter_mut() {
            let _ = p.set_requires_grad(false);
        }
        self.hold_frozen_in_compute_kind();
    }
}

/// NEFTune (Jain et al. 2023): token embeddings (B, T, d) plus noise drawn uniformly from
/// ±α/√(T·d), as transformers' `neftune_post_forward_hook` adds it in training.
pub fn neftune_noise(embeddings: &Tensor, alpha: f64) -> Tensor {
    let size = embeddings.size();
    let scale = alpha / ((size[1] * size[2]) as f64).sqrt();
    embeddings + embeddings.zeros_like().uniform_(-scale, scale)
}
