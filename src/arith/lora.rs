//! Which linear layers a LoRA adapter attaches to, and how many parameters it adds.
//! Pure (no libtorch), so `roux plan` reports trainable parameters before anything runs.

use super::graph::{lower_model, OpKind};
use crate::recipe::{LoraSpec, ModelSpec};

/// A linear layer an adapter can target: its module path and (out, in) features.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub path: String,
    pub out: usize,
    pub inp: usize,
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
                out.push(Linear { path: path.to_string(), out: *o, inp: *i });
            }
        }
    }
    out
}

/// Whether `pattern` names the module at `path`: the pattern's segments match the path's last
/// segments, `*` matching any one segment (`attn.q` and `blocks.*.attn.q` both name
/// `blocks.3.attn.q`).
pub fn lora_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = path.split('.').collect();
    p.len() <= s.len() && p.iter().zip(&s[s.len() - p.len()..]).all(|(a, b)| *a == "*" || a == b)
}

/// The linears an adapter targets.
pub fn lora_targets(spec: &ModelSpec, lora: &LoraSpec) -> Vec<Linear> {
    lora_linears(spec).into_iter().filter(|l| lora.targets.iter().any(|t| lora_matches(t, &l.path))).collect()
}

/// Trainable parameters of an adapter: Σ rank·(in + out) over the targeted linears
/// (A is rank × in, B is out × rank), plus DoRA's magnitude of `out` per target.
pub fn lora_params(spec: &ModelSpec, lora: &LoraSpec) -> u64 {
    let magnitude = |l: &Linear| if lora.dora { l.out } else { 0 };
    lora_targets(spec, lora).iter().map(|l| (lora.rank * (l.inp + l.out) + magnitude(l)) as u64).sum()
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
