//! A transformer on tch, built from the lowered model graph and executed by walking it.
//!
//! Parameters are created from `ModelGraph::params()` (names, shapes and init come from the
//! graph), so the planner's count is by construction the count of what runs; a test checks it.

use anyhow::{bail, Result};
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use crate::lower::{lower_model, ModelGraph, OpKind, ParamInit};
use super::moe::{self, Experts, MoeStats};
use crate::recipe::{Activation, ModelSpec, Norm, RouterSpec};

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
    pub device: Device,
    /// Kind the forward pass computes in. Parameters stay float32 (the master weights AdamW
    /// updates); with bfloat16 each is cast where it is used, so gradients flow back to float32.
    pub compute: Kind,
    /// LoRA adapters, by the index of the weight they modify (see `lora.rs`).
    pub lora: super::lora::Adapters,
    /// Pad the vocabulary of the loss's head matmul to a multiple of 64. A vocabulary like
    /// GPT-2's 50257 leaves the logits' rows misaligned for the fastest CUDA tensor-core kernels;
    /// the weight gets zero rows and the extra logits a −∞ bias, so their probability and
    /// gradient are exactly 0 and the loss is unchanged.
    pub pad_vocab: bool,
}

/// Keys and values of every attention layer for the tokens fed so far, so that generation
/// computes one new position per step instead of the whole sequence again (O(T) per token, not
/// O(T²)). Keys are stored after the rotary embedding and before grouped-query repetition.
#[derive(Default)]
pub struct KvCache {
    /// By op index: (B, kv_heads, T, head_dim) each.
    layers: HashMap<usize, (Tensor, Tensor)>,
    /// Positions already fed; the next token's position.
    pub len: usize,
}

impl Model {
    /// Fresh parameters, initialised as the graph says, from libtorch's (seeded) generator.
    pub fn new(spec: &ModelSpec, device: Device) -> Model {
        Self::build(spec, device, true)
    }

    /// The same model with every parameter a stride-0 view of one element: real tch tensors of
    /// the real shapes, no memory. For checking the structure of models too large to allocate
    /// (Mixtral's 46.7B parameters); it cannot be trained.
    pub fn shapes_only(spec: &ModelSpec) -> Model {
        Self::build(spec, Device::Cpu, false)
    }

    fn build(spec: &ModelSpec, device: Device, materialize: bool) -> Model {
        let graph = lower_model(spec);
        let mut names = vec![];
        let mut params = vec![];
        tch::no_grad(|| {
            for p in graph.params() {
                let shape: Vec<i64> = p.shape.iter().map(|&d| d as i64).collect();
                if !materialize {
                    names.push(p.name);
                    params.push(Tensor::zeros([1], (Kind::Float, device)).expand(&shape, false));
                    continue;
                }
                let t = match p.init {
                    ParamInit::Zeros => Tensor::zeros(&shape, (Kind::Float, device)),
                    ParamInit::Ones => Tensor::ones(&shape, (Kind::Float, device)),
                    ParamInit::Normal { std } => Tensor::randn(&shape, (Kind::Float, device)) * std,
                };
                names.push(p.name);
                params.push(t.set_requires_grad(true));
            }
        });
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
        let rope = (spec.position == crate::recipe::Position::Rope).then(|| rope_tables(spec.context, spec.head_dim(), device));
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let node_params = order
            .iter()
            .map(|&n| {
                let prefix = format!("{}.", graph.graph[n].path);
                names.iter().enumerate().filter_map(|(j, name)| name.strip_prefix(&prefix).map(|rest| (rest.to_string(), j))).collect()
            })
            .collect();
        Model { graph, names, params, index, node_params, order, inputs, last_use, rope, device, compute: Kind::Float, lora: Default::default(), pad_vocab: false }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.graph.spec
    }

    pub fn numel(&self) -> u64 {
        self.params.iter().map(|p| p.numel() as u64).sum()
    }

    fn p(&self, name: &str) -> &Tensor {
        &self.params[self.index[name]]
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
        self.find(i, sub, leaf).expect("the graph lists every parameter an op uses").to_kind(self.compute)
    }

    fn w_opt(&self, i: usize, sub: &str, leaf: &str) -> Option<Tensor> {
        self.find(i, sub, leaf).map(|t| t.to_kind(self.compute))
    }

    fn linear(&self, x: &Tensor, i: usize, sub: &str) -> Tensor {
        let y = x.linear(&self.w(i, sub, "weight"), self.w_opt(i, sub, "bias").as_ref());
        match self.find_index(i, sub, "weight").and_then(|j| self.lora.get(j)) {
            Some(ad) => y + self.lora.delta(ad, x, self.compute),
            None => y,
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
        self.walk(tokens, train, false, None)
    }

    /// Logits (B, T, vocab) for tokens (B, T) that continue what `cache` holds (empty: a fresh
    /// sequence), in evaluation mode; the tokens' keys and values join the cache. The caller
    /// keeps `cache.len` plus T within the context.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = tokens.size()[1] as usize;
        debug_assert!(cache.len + t <= self.spec().context, "the cache holds at most the context");
        let logits = self.walk(tokens, false, false, Some(cache)).1;
        cache.len += t;
        logits
    }

    /// Compute in bfloat16 (float32 master weights) or float32. On CUDA in bf16 the loss's head
    /// matmul is padded (`pad_vocab`) unless `ROUX_PAD_VOCAB=0` (for benchmarks).
    pub fn set_precision(&mut self, kind: Kind) {
        self.compute = kind;
        self.pad_vocab = self.device.is_cuda() && kind == Kind::BFloat16 && std::env::var("ROUX_PAD_VOCAB").map_or(true, |v| v != "0");
    }

    /// Columns of padding for the head's matmul when it computes logits only for the loss.
    fn head_padding(&self, vocab: usize) -> Option<i64> {
        (self.pad_vocab && vocab % 64 != 0).then(|| (64 - vocab % 64) as i64)
    }

    /// The forward pass; with `loss_only`, the head's logits may carry padding columns (see
    /// `head_padding`) that only a softmax over them tolerates.
    fn walk(&self, tokens: &Tensor, train: bool, loss_only: bool, mut cache: Option<&mut KvCache>) -> (Tensor, Tensor, Vec<MoeStats>) {
        let offset = cache.as_ref().map_or(0, |c| c.len) as i64;
        let mut hidden = None;
        let mut moe_stats = vec![];
        self.lora.train.set(train);
        let mut vals: Vec<Option<Tensor>> = (0..self.order.len()).map(|_| None).collect();
        for (i, &n) in self.order.iter().enumerate() {
            let op = &self.graph.graph[n];
            let arg = |k: usize| vals[self.inputs[i][k]].as_ref().expect("input computed before use");
            let out = match &op.kind {
                OpKind::Tokens => tokens.shallow_clone(),
                OpKind::Embedding { .. } => Tensor::embedding(&self.w(i, "", "weight"), arg(0), -1, false, false),
                OpKind::PosEmbedding { .. } => {
                    let t = arg(0).size()[1];
                    self.w(i, "", "weight").narrow(0, offset, t) // (T, d), broadcast over B
                }
                OpKind::Dropout { p } => arg(0).dropout(*p, train),
                OpKind::Add => arg(0) + arg(1),
                OpKind::Norm { kind, dim, .. } => {
                    let w = self.w(i, "", "weight");
                    match kind {
                        Norm::Layernorm => arg(0).layer_norm([*dim as i64], Some(&w), self.w_opt(i, "", "bias").as_ref(), 1e-5, true),
                        Norm::Rmsnorm => arg(0).rms_norm([*dim as i64], Some(&w), 1e-6),
                    }
                }
                OpKind::Attention { heads, dropout, .. } => {
                    let layer = cache.as_deref_mut().map(|c| (c.len as i64, c.layers.entry(i)));
                    self.attention(arg(0), i, *heads as i64, if train { *dropout } else { 0.0 }, layer)
                }
                OpKind::Mlp { act, dropout, .. } => {
                    let h = self.linear(arg(0), i, "w1");
                    let h = match act {
                        Activation::Gelu => h.gelu("tanh"),
                        Activation::Relu => h.relu(),
                        Activation::Swiglu => h.silu() * self.linear(arg(0), i, "w3"),
                    };
                    self.linear(&h, i, "w2").dropout(*dropout, train)
                }
                OpKind::Moe { .. } => {
                    let (y, st) = self.moe(arg(0), i, &op.path, &op.kind, train);
                    moe_stats.push(st);
                    y
                }
                OpKind::Head { tied, vocab, dim } => {
                    hidden = Some(arg(0).shallow_clone());
                    let w = if *tied { self.p("tok_emb.weight") } else { self.find(i, "", "weight").expect("untied head weight") }.to_kind(self.compute);
                    match self.head_padding(*vocab).filter(|_| loss_only) {
                        Some(pad) => {
                            let opts = (self.compute, self.device);
                            let w = Tensor::cat(&[w, Tensor::zeros([pad, *dim as i64], opts)], 0);
                            let bias = Tensor::cat(&[Tensor::zeros([*vocab as i64], opts), Tensor::full([pad], f64::NEG_INFINITY, opts)], 0);
                            arg(0).linear(&w, Some(&bias))
                        }
                        None => arg(0).linear::<Tensor>(&w, None),
                    }
                }
            };
            // Free inputs this node was the last user of.
            for k in 0..self.inputs[i].len() {
                let j = self.inputs[i][k];
                if self.last_use[j] == i {
                    vals[j] = None;
                }
            }
            vals[i] = Some(out);
        }
        (hidden.expect("the head reads the hidden states"), vals.pop().flatten().expect("head is the last op"), moe_stats)
    }

    fn moe(&self, x: &Tensor, i: usize, path: &str, op: &OpKind, train: bool) -> (Tensor, MoeStats) {
        let OpKind::Moe { experts, act, shared, dropout, router, .. } = op else { unreachable!("moe op") };
        let (b, t, d) = x.size3().expect("(B, T, d)");
        let xf = x.reshape([-1, d]); // (N, d)
        let mut xr = xf.to_kind(Kind::Float); // router math in float32 whatever the model's precision
        if let RouterSpec::Switch { jitter, .. } = router {
            if train && *jitter > 0.0 {
                xr = &xr * xr.empty_like().uniform_(1.0 - jitter, 1.0 + jitter);
            }
        }
        let gate = self.find(i, "router", "weight").expect("router weight");
        let logits = xr.linear::<Tensor>(&gate.to_kind(Kind::Float), None); // (N, E)
        let noise = self.find(i, "router.noise", "weight").map(|w| xr.linear::<Tensor>(&w.to_kind(Kind::Float), None));
        let r = moe::route(router, &logits, noise.as_ref(), train);
        let weights = |g: &str| (self.w(i, g, "w1"), self.w_opt(i, g, "w3"), self.w(i, g, "w2"));
        let (w1, w3, w2) = weights("experts");
        let mut y = moe::dispatch(&xf, &r, &Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act }, *experts as i64);
        if *shared > 0 {
            let (s, n) = (*shared as i64, xf.size()[0]);
            let (w1, w3, w2) = weights("shared");
            let sh = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act };
            y = y + sh.apply(&xf.unsqueeze(0).expand([s, n, d], false).contiguous()).sum_dim_intlist(0, false, xf.kind());
        }
        let y = y.dropout(*dropout, train).view([b, t, d]);
        (y, moe::stats(path, &r))
    }

    /// Causal self-attention over `x` (B, T, d). With `cache` (the position of x's first token,
    /// this layer's entry), x's keys and values are appended to the cached ones and x attends
    /// to all of them.
    fn attention(&self, x: &Tensor, i: usize, heads: i64, dropout: f64, cache: Option<(i64, Entry<'_, usize, (Tensor, Tensor)>)>) -> Tensor {
        let (b, t, d) = x.size3().expect("(B, T, d)");
        let hs = d / heads;
        let split = |y: Tensor| y.view([b, t, heads, hs]).transpose(1, 2); // (B, nh, T, hs)
        let kv_heads = (self.spec().kv_heads as i64).min(heads);
        let split_kv = |y: Tensor| y.view([b, t, kv_heads, hs]).transpose(1, 2); // (B, nkv, T, hs)
        let (q, k, v) = self.qkv(x, i);
        let (mut q, mut k, mut v) = (split(q), split_kv(k), split_kv(v));
        let offset = cache.as_ref().map_or(0, |(o, _)| *o);
        if let Some((cos, sin)) = &self.rope {
            q = apply_rope(&q, cos, sin, offset, t);
            k = apply_rope(&k, cos, sin, offset, t);
        }
        if let Some((_, entry)) = cache {
            let (ck, cv) = match entry {
                Entry::Occupied(mut e) => {
                    let (pk, pv) = e.get();
                    let kv = (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2));
                    let _previous = e.insert(kv);
                    e.into_mut()
                }
                Entry::Vacant(e) => e.insert((k, v)),
            };
            (k, v) = (ck.shallow_clone(), cv.shallow_clone());
        }
        if kv_heads < heads {
            // Grouped-query attention: each key/value head serves heads / kv_heads query heads.
            let rep = heads / kv_heads;
            k = k.repeat_interleave_self_int(rep, 1, None); // (B, nh, T, hs)
            v = v.repeat_interleave_self_int(rep, 1, None);
        }
        // Query j (position offset + j) sees keys 0..=offset + j. Without a cache, or at a fresh
        // one, that is the plain causal mask; one new token sees every key, so no mask; several
        // new tokens after cached ones need it written out (SDPA's causal flag aligns top-left).
        let keys = k.size()[2];
        let y = if offset == 0 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, dropout, true, None, false)
        } else {
            let mask = (t > 1).then(|| Tensor::ones([t, keys], (Kind::Bool, x.device())).tril(offset));
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), dropout, false, None, false)
        }; // (B, nh, T, hs)
        let y = y.transpose(1, 2).contiguous().view([b, t, d]); // (B, T, d)
        self.linear(&y, i, "o")
    }

    /// The query, key and value projections. Without LoRA on them they run as one matmul over
    /// the concatenated weights: the input is read once and the three input gradients come out
    /// summed, which saves time on small models (the weights stay separate parameters).
    fn qkv(&self, x: &Tensor, i: usize) -> (Tensor, Tensor, Tensor) {
        let idx = |s: &str| self.find_index(i, s, "weight").expect("attention has q, k, v");
        if ["q", "k", "v"].iter().any(|s| self.lora.get(idx(s)).is_some()) {
            return (self.linear(x, i, "q"), self.linear(x, i, "k"), self.linear(x, i, "v"));
        }
        let ws: Vec<Tensor> = ["q", "k", "v"].iter().map(|s| self.w(i, s, "weight")).collect();
        let sizes: Vec<i64> = ws.iter().map(|w| w.size()[0]).collect();
        let bias: Option<Vec<Tensor>> = ["q", "k", "v"].iter().map(|s| self.w_opt(i, s, "bias")).collect();
        let y = x.linear(&Tensor::cat(&ws, 0), bias.map(|b| Tensor::cat(&b, 0)).as_ref());
        let mut parts = y.split_with_sizes(&sizes, -1).into_iter();
        let mut next = || parts.next().expect("three parts");
        (next(), next(), next())
    }

    /// Mean next-token cross-entropy in nats.
    pub fn loss(&self, x: &Tensor, y: &Tensor, train: bool) -> Tensor {
        self.loss_parts(x, y, train).1
    }

    /// (cross-entropy + weighted auxiliary losses, cross-entropy, MoE statistics).
    pub fn loss_parts(&self, x: &Tensor, y: &Tensor, train: bool) -> (Tensor, Tensor, Vec<MoeStats>) {
        let (_, logits, stats) = self.walk(x, train, true, None);
        let v = logits.size()[2];
        // log_softmax reads bf16 logits and writes float32 log-probabilities in one pass (no
        // float32 copy of the logits, the largest activation of a model with a big vocabulary).
        let ce = logits.view([-1, v]).cross_entropy_for_logits(&y.view([-1]));
        let total = stats.iter().fold(ce.shallow_clone(), |acc, s| acc + &s.aux);
        (total, ce, stats)
    }

    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.params.iter().map(|p| p.shallow_clone())).collect()
    }

    /// Copy weights in from named tensors; every parameter must be present with its shape.
    pub fn load(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, p) in self.names.iter().zip(self.params.iter_mut()) {
            let Some(t) = given.get(name.as_str()) else { bail!("checkpoint has no tensor `{name}`") };
            if t.size() != p.size() {
                bail!("checkpoint tensor `{name}` has shape {:?}, the model expects {:?}", t.size(), p.size());
            }
            if t.kind() != Kind::Float {
                bail!("checkpoint tensor `{name}` is {:?}, expected float32", t.kind());
            }
            tch::no_grad(|| p.copy_(t));
        }
        Ok(())
    }
}

/// cos and sin tables (T, hs/2) for rotary embeddings, base 10000 (Su et al. 2021).
fn rope_tables(context: usize, hs: usize, device: Device) -> (Tensor, Tensor) {
    let half = (hs / 2) as i64;
    let inv = Tensor::arange(half, (Kind::Float, device)).g_mul_scalar(-2.0 / hs as f64 * (10000f64).ln()).exp();
    let pos = Tensor::arange(context as i64, (Kind::Float, device));
    let angles = pos.outer(&inv); // (T, hs/2)
    (angles.cos(), angles.sin())
}

/// Rotate pairs (x1, x2) = (first half, second half) of each head's features, for the `t`
/// positions from `offset`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: i64, t: i64) -> Tensor {
    let half = x.size()[3] / 2;
    let (cos, sin) = (cos.narrow(0, offset, t).to_kind(x.kind()), sin.narrow(0, offset, t).to_kind(x.kind())); // (T, hs/2), broadcast over B, nh
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x1 * &sin + &x2 * &cos], 3)
}
