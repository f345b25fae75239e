//! Which linear layers a LoRA adapter attaches to, and how many parameters it adds.
//! Pure (no libtorch), so `roux plan` reports trainable parameters before anything runs.
//!
//! A mixture-of-experts layer's stacked experts (`experts.w1|w2|w3`, a shared expert's
//! `shared.w1|w2|w3`) take adapters too, one A and B per expert (PEFT's `target_parameters` on a
//! model's 3-D expert weights): each expert's weight becomes W_e + s·B_e·A_e.

use super::graph::{lower_model, OpKind};
use crate::recipe::{LoraSpec, ModelSpec};

/// A linear layer an adapter can target: its module path and (out, in) features; for a stack
/// of experts, their number (0 for a plain linear).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub path: String,
    pub out: usize,
    pub inp: usize,
    pub experts: usize,
}

impl Linear {
    /// The model parameter the adapter adds to: a linear's `PATH.weight`, a stack's `PATH`.
    pub fn param(&self) -> String {
        if self.experts == 0 { format!("{}.weight", self.path) } else { self.path.clone() }
    }

    /// Its adapter's parameters at `rank`: A (rank × in) and B (out × rank), one of each per expert.
    pub fn adapter_params(&self, rank: usize) -> usize {
        self.experts.max(1) * rank * (self.inp + self.out)
    }
}

/// The attention and MLP projections of a model (not embeddings, the head, or stacked experts).
pub fn lora_linears(spec: &ModelSpec) -> Vec<Linear> {
    let g = lower_model(spec);
    let mut out = vec![];
    for n in g.topo() {
        let op = &g.graph[n];
        if !matches!(op.kind, OpKind::Attention { .. } | OpKind::Mlp { .. }) {
            continue;
        }
        for p in op.params(spec.layers) {
            if let (Some(path), [o, i]) = (p.name.strip_suffix(".weight"), p.shape.as_slice()) {
                out.push(Linear { path: path.to_string(), out: *o, inp: *i, experts: 0 });
            }
        }
    }
    out
}

/// The stacked experts of a model's mixture-of-experts layers (routed and shared): each a
/// `Linear` of its experts' (out, in).
pub fn lora_stacks(spec: &ModelSpec) -> Vec<Linear> {
    let g = lower_model(spec);
    let mut out = vec![];
    for n in g.topo() {
        let op = &g.graph[n];
        if !matches!(op.kind, OpKind::Moe { .. }) {
            continue;
        }
        for p in op.params(spec.layers) {
            let stacked = p.name.rsplit('.').nth(1).is_some_and(|g| g == "experts" || g == "shared");
            if let (true, [e, o, i]) = (stacked, p.shape.as_slice()) {
                out.push(Linear { path: p.name.clone(), out: *o, inp: *i, experts: *e });
            }
        }
    }
    out
}

/// Everything an adapter can target: the linears, then the expert stacks.
pub fn lora_targetable(spec: &ModelSpec) -> Vec<Linear> {
    lora_linears(spec).into_iter().chain(lora_stacks(spec)).collect()
}

/// Whether `pattern` names the module at `path`: the pattern's segments match the path's last
/// segments, `*` matching any one segment (`attn.q` and `blocks.*.attn.q` both name
/// `blocks.3.attn.q`).
pub fn lora_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = path.split('.').collect();
    p.len() <= s.len() && p.iter().zip(&s[s.len() - p.len()..]).all(|(a, b)| *a == "*" || a == b)
}

/// The linears and expert stacks an adapter targets.
pub fn lora_targets(spec: &ModelSpec, lora: &LoraSpec) -> Vec<Linear> {
    lora_targetable(spec).into_iter().filter(|l| lora.targets.iter().any(|t| lora_matches(t, &l.path))).collect()
}

/// Trainable parameters of an adapter: Σ rank·(in + out) over the targeted linears and experts
/// (A is rank × in, B is out × rank), plus DoRA's magnitude of `out` per target.
pub fn lora_params(spec: &ModelSpec, lora: &LoraSpec) -> u64 {
    let magnitude = |l: &Linear| if lora.dora { l.out } else { 0 };
    lora_targets(spec, lora).iter().map(|l| (l.adapter_params(lora.rank) + magnitude(l)) as u64).sum()
}

/// What a stage of a model of `n` parameters trains and holds, as (trainable, weights): every
/// weight, or with `lora` only the adapters, held beside the frozen `n`.
pub fn trained_and_held(spec: &ModelSpec, lora: Option<&LoraSpec>, n: u64) -> (u64, u64) {
    match lora {
        Some(l) => {
            let a = lora_params(spec, l);
            (a, n + a)
        }
        None => (n, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_path_suffixes() {
        assert!(lora_matches("attn.q", "blocks.3.attn.q"));
        assert!(lora_matches("blocks.*.attn.q", "blocks.3.attn.q"));
        assert!(lora_matches("blocks.3.ffn.w1", "blocks.3.ffn.w1"));
        assert!(!lora_matches("attn.q", "blocks.3.attn.qq"));
        assert!(!lora_matches("blocks.2.attn.q", "blocks.3.attn.q"));
        assert!(!lora_matches("x.blocks.3.attn.q", "blocks.3.attn.q"));
    }
}
