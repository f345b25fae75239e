//! The forward pass: the lowered graph's ops run in topological order, each value dropped after
//! its last use. A whole pass, or (for activation checkpointing, `recompute.rs`) a stretch of it.

use std::ops::Range;
use tch::Tensor;

use super::moe::MoeStats;
use super::{neftune_noise, KvCache, Model, Packing};
use crate::lower::OpKind;
use crate::recipe::{Activation, Norm};

/// What a pass carries besides the values: its inputs, and what it collects on the way.
pub(super) struct Walk<'a> {
    pub tokens: &'a Tensor,
    pub train: bool,
    /// The head's logits may carry padding columns (see `head_padding`) that only a softmax over
    /// them tolerates.
    pub loss_only: bool,
    /// The head reads only the last position (generation: the next token's logits, without a
    /// row of the vocabulary for every prompt position).
    pub last_only: bool,
    pub cache: Option<&'a mut KvCache>,
    pub packing: Option<&'a Packing>,
    /// Position of the first token (what the cache holds before it).
    pub offset: i64,
    /// The head's input, once the head has run.
    pub hidden: Option<Tensor>,
    pub moe_stats: Vec<MoeStats>,
}

impl Model {
    /// The forward pass: (the final hidden states, the logits, the MoE statistics).
    pub(super) fn walk(&self, tokens: &Tensor, train: bool, loss_only: bool, cache: Option<&mut KvCache>, packing: Option<&Packing>) -> (Tensor, Tensor, Vec<MoeStats>) {
        self.walk_with(tokens, train, loss_only, cache, packing, false)
    }

    /// `walk`, with the head on the last position only when `last_only`.
    pub(super) fn walk_with(&self, tokens: &Tensor, train: bool, loss_only: bool, cache: Option<&mut KvCache>, packing: Option<&Packing>, last_only: bool) -> (Tensor, Tensor, Vec<MoeStats>) {
        self.lora.train.set(train);
        if cache.is_none() && self.recomputes() {
            return self.walk_recomputed(tokens, train, loss_only, packing);
        }
        let offset = cache.as_ref().map_or(0, |c| c.len) as i64;
        let mut w = Walk { tokens, train, loss_only, last_only, cache, packing, offset, hidden: None, moe_stats: vec![] };
        let mut vals: Vec<Option<Tensor>> = (0..self.order.len()).map(|_| None).collect();
        self.run_ops(0..self.order.len(), &mut vals, &mut w);
        (w.hidden.expect("the head reads the hidden states"), vals.pop().flatten().expect("head is the last op"), w.moe_stats)
    }

    /// Ops `range` of the topological order; each reads its inputs from `vals` and leaves its
    /// output there, and an input is dropped after its last use.
    pub(super) fn run_ops(&self, range: Range<usize>, vals: &mut [Option<Tensor>], pass: &mut Walk) {
        for i in range {
            let n = self.order[i];
            let op = &self.graph.graph[n];
            let arg = |k: usize| vals[self.inputs[i][k]].as_ref().expect("input computed before use");
            let out = match &op.kind {
                OpKind::Tokens => pass.tokens.shallow_clone(),
                OpKind::Embedding { .. } => {
                    let e = Tensor::embedding(&self.w(i, "", "weight"), arg(0), -1, false, false);
                    // Gemma's embeddings are scaled by √d_model (a float32 constant, as its).
                    let e = if self.spec().embed_scale { &e * (self.spec().d_model as f32).sqrt() as f64 } else { e };
                    if pass.train && self.neftune > 0.0 { neftune_noise(&e, self.neftune) } else { e }
                }
                OpKind::PosEmbedding { .. } => match pass.packing {
                    Some(p) => Tensor::embedding(&self.w(i, "", "weight"), &p.positions, -1, false, false), // (B, T, d)
                    None => self.w(i, "", "weight").narrow(0, pass.offset, arg(0).size()[1]), // (T, d), broadcast over B
                },
                OpKind::Dropout { p } => arg(0).dropout(*p, pass.train),
                OpKind::Add => arg(0) + arg(1),
                OpKind::Norm { kind, dim, offset, .. } => {
                    let w = self.w(i, "", "weight");
                    // Gemma's gains are offsets from 1.
                    let w = if *offset { w + 1.0 } else { w };
                    let eps = self.spec().norm_eps();
                    match kind {
                        Norm::Layernorm => arg(0).layer_norm([*dim as i64], Some(&w), self.w_opt(i, "", "bias").as_ref(), eps, true),
                        Norm::Rmsnorm => arg(0).rms_norm([*dim as i64], Some(&w), eps),
                    }
                }
                OpKind::Attention { heads, dropout, .. } => {
                    let layer = pass.cache.as_deref_mut().map(|c| (c.len as i64, c.layers.entry(i)));
                    self.attention(arg(0), i, *heads as i64, if pass.train { *dropout } else { 0.0 }, layer, pass.packing)
                }
                OpKind::Mlp { act, dropout, .. } => {
                    let h = self.linear(arg(0), i, "w1");
                    let h = match act {
                        Activation::Gelu => h.gelu("tanh"),
                        Activation::Relu => h.relu(),
                        Activation::Swiglu => h.silu() * self.linear(arg(0), i, "w3"),
                        Activation::Geglu => h.gelu("tanh") * self.linear(arg(0), i, "w3"),
                    };
                    self.linear(&h, i, "w2").dropout(*dropout, pass.train)
                }
                OpKind::Moe { .. } => {
                    let (y, st) = self.moe(arg(0), i, &op.path, &op.kind, pass.train);
                    pass.moe_stats.push(st);
                    y
                }
                OpKind::Head { tied, vocab, dim } => {
                    let h = if pass.last_only { arg(0).narrow(1, -1, 1) } else { arg(0).shallow_clone() };
                    pass.hidden = Some(h.shallow_clone());
                    let w = self.cast(if *tied { self.index["tok_emb.weight"] } else { self.find_index(i, "", "weight").expect("untied head weight") });
                    let logits = match self.head_padding(*vocab).filter(|_| pass.loss_only) {
                        Some(pad) => {
                            let opts = (self.compute, self.device);
                            let w = Tensor::cat(&[w, Tensor::zeros([pad, *dim as i64], opts)], 0);
                            let bias = Tensor::cat(&[Tensor::zeros([*vocab as i64], opts), Tensor::full([pad], f64::NEG_INFINITY, opts)], 0);
                            h.linear(&w, Some(&bias))
                        }
                        None => h.linear::<Tensor>(&w, None),
                    };
                    // Gemma 2's soft cap on the logits (no padding then: `head_padding`).
                    match self.spec().logit_softcap {
                        Some(c) => (logits / c).tanh() * c,
                        None => logits,
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
    }
}
