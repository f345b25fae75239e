//! Causal self-attention with rotary embeddings (Su et al. 2021), grouped-query heads, and the
//! key/value cache that lets generation feed each token once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use super::{Model, Packing};
use crate::arith::OpKind;

/// Keys and values of every attention layer for the tokens fed so far, so that generation
/// computes one new position per step instead of the whole sequence again (O(T) per token, not
/// O(T²)). Keys are stored after the rotary embedding and before grouped-query repetition.
#[derive(Default)]
pub struct KvCache {
    /// By op index: (B, kv_heads, T, head_dim) each.
    pub(super) layers: HashMap<usize, (Tensor, Tensor)>,
    /// Positions already fed; the next token's position.
    pub len: usize,
}

impl Model {
    /// Causal self-attention over `x` (B, T, d). With `cache` (the position of x's first token,
    /// this layer's entry), x's keys and values are appended to the cached ones and x attends
    /// to all of them. With `packing`, x's rows hold several sequences that do not see each other.
    pub(super) fn attention(&self, x: &Tensor, i: usize, heads: i64, dropout: f64, cache: Option<(i64, Entry<'_, usize, (Tensor, Tensor)>)>, packing: Option<&Packing>) -> Tensor {
        let (b, t, _) = x.size3().expect("(B, T, d)");
        let hs = self.spec().head_dim() as i64;
        let split = |y: Tensor| y.view([b, t, heads, hs]).transpose(1, 2); // (B, nh, T, hs)
        let kv_heads = (self.spec().kv_heads as i64).min(heads);
        let split_kv = |y: Tensor| y.view([b, t, kv_heads, hs]).transpose(1, 2); // (B, nkv, T, hs)
        let (mut q, mut k, v) = self.qkv(x, i);
        let whole = self.spec().qk_norm_whole;
        let window = match &self.graph.graph[self.order[i]].kind {
            OpKind::Attention { window, .. } => window.map(|w| w as i64),
            _ => None,
        };
        // Gemma's QK-norm gains are offsets from 1, as its other norms'.
        let gain = |name: &str| self.w_opt(i, name, "weight").map(|w| if self.spec().norm_offset { w + 1.0 } else { w });
        if let (true, Some(qn), Some(kn)) = (whole, gain("q_norm"), gain("k_norm")) {
            // OLMoE's QK-norm: over the whole projection, before it is split into heads.
            let eps = self.spec().norm_eps();
            q = q.rms_norm([heads * hs], Some(&qn), eps);
            k = k.rms_norm([kv_heads * hs], Some(&kn), eps);
        }
        let (mut q, mut k, mut v) = (split(q), split_kv(k), split_kv(v));
        if let (false, Some(qn), Some(kn)) = (whole, gain("q_norm"), gain("k_norm")) {
            // Qwen3's QK-norm: each head's queries and keys RMS-normalised before the rotation.
            let eps = self.spec().norm_eps();
            q = q.rms_norm([hs], Some(&qn), eps);
            k = k.rms_norm([hs], Some(&kn), eps);
        }
        let offset = cache.as_ref().map_or(0, |(o, _)| *o);
        // A windowed block turns by its own base when the model gives one (Gemma 3's local layers).
        let rope = if window.is_some() && self.rope_local.is_some() { &self.rope_local } else { &self.rope };
        if let Some((cos, sin)) = rope {
            let (cos, sin) = match packing {
                // Each token's own position's row: (B, 1, T, hs/2), broadcast over the heads.
                Some(p) => {
                    let at = |table: &Tensor| table.index_select(0, &p.positions.view([-1])).view([b, 1, t, -1]);
                    (at(cos), at(sin))
                }
                None => (cos.narrow(0, offset, t), sin.narrow(0, offset, t)), // (T, hs/2), broadcast over B, nh
            };
            q = apply_rope(&q, &cos, &sin);
            k = apply_rope(&k, &cos, &sin);
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
        // Without a cache, or at a fresh one, and no window: the plain causal mask (SDPA's flag,
        // which aligns top-left); otherwise written out.
        let keys = k.size()[2];
        let y = if let Some(cap) = self.spec().attn_softcap {
            // Gemma 2's soft cap on the scores, which SDPA has no place for: written out.
            let mask = match packing {
                Some(p) => Some(match (window, &p.windowed) {
                    (Some(_), Some(m)) => m.shallow_clone(),
                    _ => p.mask.shallow_clone(),
                }),
                None => (t > 1 || window.is_some_and(|w| w < keys)).then(|| self.shared_mask(t, keys, offset, window, (q.kind(), x.device()))),
            };
            capped_attention(&q, &k, &v, mask.as_ref(), cap, dropout)
        } else if let Some(p) = packing {
            let mask = match (window, &p.windowed) {
                (Some(_), Some(m)) => m,
                _ => &p.mask,
            };
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), dropout, false, None, false)
        } else if offset == 0 && window.is_none() {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, dropout, true, None, false)
        } else {
            // One new token with no window to cut sees every key: no mask.
            let mask = (t > 1 || window.is_some_and(|w| w < keys)).then(|| self.shared_mask(t, keys, offset, window, (q.kind(), x.device())));
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), dropout, false, None, false)
        }; // (B, nh, T, hs)
        let y = y.transpose(1, 2).contiguous().view([b, t, heads * hs]); // (B, T, heads·hs)
        self.linear(&y, i, "o")
    }
}

/// Attention whose scores pass through cap·tanh(s / cap) before the mask and the softmax
/// (Gemma 2's `attn_logit_softcapping`); the softmax in float32.
fn capped_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, cap: f64, dropout: f64) -> Tensor {
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    let scores = (q.matmul(&k.transpose(-2, -1)) * (scale / cap)).tanh() * cap;
    let scores = match mask {
        Some(m) => scores + m,
        None => scores,
    };
    let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    let probs = if dropout > 0.0 { probs.dropout(dropout, true) } else { probs };
    probs.matmul(v)
}

impl Model {
    /// `visible`'s mask as scores to add (0 or −∞, in `kind`: SDPA would turn a bool mask into
    /// that in every block, and keep each for the backward pass), made once for as long as the
    /// same one is asked for.
    fn shared_mask(&self, t: i64, keys: i64, offset: i64, window: Option<i64>, (kind, device): (Kind, Device)) -> Tensor {
        let key = (t, keys, offset, window.unwrap_or(0));
        let mut kept = self.window_mask.borrow_mut();
        match kept.as_ref() {
            Some((k, m)) if *k == key && m.kind() == kind => m.shallow_clone(),
            _ => {
                let scores = Tensor::zeros([t, keys], (kind, device)).masked_fill(&visible(t, keys, offset, window, device).logical_not(), f64::NEG_INFINITY);
                kept.insert((key, scores)).1.shallow_clone()
            }
        }
    }

    /// The query, key and value projections. Without LoRA on them (or NF4 weights) they run as
    /// one matmul over the concatenated weights: the input is read once and the three input
    /// gradients come out summed, which saves time on small models (the weights stay separate
    /// parameters).
    fn qkv(&self, x: &Tensor, i: usize) -> (Tensor, Tensor, Tensor) {
        let idx = |s: &str| self.find_index(i, s, "weight").expect("attention has q, k, v");
        if ["q", "k", "v"].iter().any(|s| self.lora.get(idx(s)).is_some() || self.nf4(idx(s)).is_some()) {
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
}

/// Which of `keys` keys each of `t` queries reads: query j sits at position offset + j and reads
/// the keys up to it, with a window only the last `window` of them (itself and the window − 1
/// before it, as Mistral's `sliding_window`).
pub(super) fn visible(t: i64, keys: i64, offset: i64, window: Option<i64>, device: Device) -> Tensor {
    let causal = Tensor::ones([t, keys], (Kind::Bool, device)).tril(offset);
    match window {
        Some(w) => causal.triu(offset - w + 1),
        None => causal,
    }
}

/// cos and sin tables (T, hs/2) for rotary embeddings (Su et al. 2021): frequencies θ^(−2i/hs),
/// θ = 10000 unless the model says otherwise, stretched as Llama 3 does when it has `rope_scaling`.
/// With `windowed`, the tables of the windowed blocks' own base (`window_rope_theta`, unscaled).
pub(super) fn rope_tables(spec: &crate::recipe::ModelSpec, windowed: bool, device: Device) -> (Tensor, Tensor) {
    let (context, hs) = (spec.context, spec.head_dim());
    let theta = if windowed { spec.window_rope_theta.unwrap_or(spec.rope_theta()) } else { spec.rope_theta() };
    let mut inv: Vec<f64> = (0..hs / 2).map(|i| theta.powf(-2.0 * i as f64 / hs as f64)).collect();
    if let Some(r) = spec.rope_scaling.as_ref().filter(|_| !windowed) {
        // transformers' `_compute_llama3_parameters`, wavelength by wavelength.
        let (low, high) = (r.original_context as f64 / r.low_freq_factor, r.original_context as f64 / r.high_freq_factor);
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen > low {
                *f /= r.factor;
            } else if wavelen >= high {
                let smooth = (r.original_context as f64 / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
                *f = (1.0 - smooth) * *f / r.factor + smooth * *f;
            }
        }
    }
    let inv = Tensor::from_slice(&inv).to_kind(Kind::Float).to_device(device);
    let pos = Tensor::arange(context as i64, (Kind::Float, device));
    let angles = pos.outer(&inv); // (T, hs/2)
    (angles.cos(), angles.sin())
}

/// Rotate pairs (x1, x2) = (first half, second half) of each head's features by the angles of
/// their positions (`cos`, `sin`: the tables' rows for x's tokens).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (cos, sin) = (cos.to_kind(x.kind()), sin.to_kind(x.kind()));
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x1 * &sin + &x2 * &cos], 3)
}
