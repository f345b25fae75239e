//! Where each of roux's parameters lives in a Hugging Face checkpoint of a family: one table,
//! read in both directions (import gathers roux's tensors from the checkpoint's, export writes
//! the checkpoint's from roux's).

use std::collections::BTreeMap;

use crate::arith::lower_model;
use crate::recipe::{Family, ModelSpec};

/// A roux parameter's place in a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    /// The checkpoint tensor holding it.
    pub hf: String,
    /// GPT-2's Conv1D layers store (in, out): the transpose of roux's (out, in).
    pub transposed: bool,
    /// Rows `start..start + len` of the (transposed) checkpoint tensor: GPT-2's fused `c_attn`
    /// holds q, k and v one after another.
    pub rows: Option<(usize, usize)>,
    /// Stacked experts: roux's (experts, …) tensor is the checkpoint's tensors `hf` with `{}`
    /// replaced by 0, 1, … (Mixtral stores each expert's matrices apart).
    pub experts: Option<usize>,
}

impl Place {
    fn whole(hf: String) -> Place {
        Place { hf, transposed: false, rows: None, experts: None }
    }

    /// The checkpoint tensors this place reads: `hf`, or each expert's.
    pub fn names(&self) -> Vec<String> {
        match self.experts {
            Some(n) => (0..n).map(|j| self.hf.replace("{}", &j.to_string())).collect(),
            None => vec![self.hf.clone()],
        }
    }
}

/// Every parameter of `spec` (roux's name) with its place in a `family` checkpoint.
pub fn places(spec: &ModelSpec, family: Family) -> Vec<(String, Place)> {
    let d = spec.d_model;
    lower_model(spec)
        .params()
        .into_iter()
        .map(|p| {
            let place = match family {
                Family::Gpt2 => gpt2(&p.name, d, p.shape.len()),
                _ => llama(&p.name, p.shape[0], family, spec),
            };
            (p.name, place)
        })
        .collect()
}

fn gpt2(name: &str, d: usize, rank: usize) -> Place {
    let fixed = |s: &str| Place::whole(s.to_string());
    match name {
        "tok_emb.weight" => return fixed("transformer.wte.weight"),
        "pos_emb.weight" => return fixed("transformer.wpe.weight"),
        "head.weight" => return fixed("lm_head.weight"),
        _ => {}
    }
    if let Some(leaf) = name.strip_prefix("norm_f.") {
        return Place::whole(format!("transformer.ln_f.{leaf}"));
    }
    let (block, rest) = split_block(name);
    let h = format!("transformer.h.{block}");
    let (module, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
    // Conv1D weights are transposed; biases are vectors either way.
    let conv = |m: &str| Place { hf: format!("{h}.{m}.{leaf}"), transposed: rank == 2, rows: None, experts: None };
    match module {
        "norm1" => Place::whole(format!("{h}.ln_1.{leaf}")),
        "norm2" => Place::whole(format!("{h}.ln_2.{leaf}")),
        "attn.q" | "attn.k" | "attn.v" => {
            let i = ["attn.q", "attn.k", "attn.v"].iter().position(|m| *m == module).unwrap_or(0);
            Place { rows: Some((i * d, d)), ..conv("attn.c_attn") }
        }
        "attn.o" => conv("attn.c_proj"),
        "ffn.w1" => conv("mlp.c_fc"),
        "ffn.w2" => conv("mlp.c_proj"),
        other => Place::whole(format!("{h}.{other}.{leaf}")),
    }
}

/// Llama's names (Mistral, Qwen2 and Qwen3 share them), and Mixtral's sparse MLP; `rows` is the
/// parameter's first dimension (the number of experts of a stacked expert tensor).
fn llama(name: &str, rows: usize, family: Family, spec: &ModelSpec) -> Place {
    let fixed = |s: &str| Place::whole(s.to_string());
    match name {
        "tok_emb.weight" => return fixed("model.embed_tokens.weight"),
        "norm_f.weight" => return fixed("model.norm.weight"),
        "head.weight" => return fixed("lm_head.weight"),
        _ => {}
    }
    let (block, rest) = split_block(name);
    // Mixtral names its sparse MLP block_sparse_moe with w1/w2/w3; OLMoE keeps Llama's mlp names.
    let (moe, w1, w2, w3) = match family {
        Family::Mixtral => (format!("model.layers.{block}.block_sparse_moe"), "w1", "w2", "w3"),
        _ => (format!("model.layers.{block}.mlp"), "gate_proj", "down_proj", "up_proj"),
    };
    let stacked = |m: &str| Place { experts: Some(rows), ..Place::whole(format!("{moe}.experts.{{}}.{m}.weight")) };
    // Qwen2-MoE's one shared expert is a plain MLP (a stack of one in roux).
    let shared = |m: &str| Place { experts: Some(1), ..Place::whole(format!("{moe}.shared_expert.{m}.weight")) };
    match rest {
        "ffn.router.weight" => return Place::whole(format!("{moe}.gate.weight")),
        "ffn.experts.w1" => return stacked(w1),
        "ffn.experts.w2" => return stacked(w2),
        "ffn.experts.w3" => return stacked(w3),
        "ffn.shared.w1" => return shared(w1),
        "ffn.shared.w2" => return shared(w2),
        "ffn.shared.w3" => return shared(w3),
        "ffn.shared_gate.weight" => return Place::whole(format!("{moe}.shared_expert_gate.weight")),
        _ => {}
    }
    let (module, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
    if family == Family::Phi3 {
        if let Some(p) = phi3_fused(module, block, spec) {
            return p;
        }
    }
    let theirs = match module {
        // OLMo 2 normalises the sublayers' outputs: its norms are named after what they follow.
        "norm1" if family == Family::Olmo2 => "post_attention_layernorm",
        "norm2" if family == Family::Olmo2 => "post_feedforward_layernorm",
        // Gemma's four: before and after each sublayer.
        "norm2" if matches!(family, Family::Gemma2 | Family::Gemma3) => "pre_feedforward_layernorm",
        "post_norm1" => "post_attention_layernorm",
        "post_norm2" => "post_feedforward_layernorm",
        "norm1" => "input_layernorm",
        "norm2" => "post_attention_layernorm",
        "attn.q" => "self_attn.q_proj",
        "attn.k" => "self_attn.k_proj",
        "attn.v" => "self_attn.v_proj",
        "attn.o" => "self_attn.o_proj",
        "attn.q_norm" => "self_attn.q_norm",
        "attn.k_norm" => "self_attn.k_norm",
        "ffn.w1" => "mlp.gate_proj",
        "ffn.w3" => "mlp.up_proj",
        "ffn.w2" => "mlp.down_proj",
        other => other,
    };
    Place::whole(format!("model.layers.{block}.{theirs}.{leaf}"))
}

/// Phi-3 keeps q, k and v in one `qkv_proj` and the gate and up projections in one
/// `gate_up_proj`, one after another along the output rows.
fn phi3_fused(module: &str, block: &str, spec: &ModelSpec) -> Option<Place> {
    let (q, kv, h) = (spec.heads * spec.head_dim(), spec.kv_heads * spec.head_dim(), spec.ffn.hidden);
    let (fused, rows) = match module {
        "attn.q" => ("self_attn.qkv_proj", (0, q)),
        "attn.k" => ("self_attn.qkv_proj", (q, kv)),
        "attn.v" => ("self_attn.qkv_proj", (q + kv, kv)),
        "ffn.w1" => ("mlp.gate_up_proj", (0, h)),
        "ffn.w3" => ("mlp.gate_up_proj", (h, h)),
        _ => return None,
    };
    Some(Place { rows: Some(rows), ..Place::whole(format!("model.layers.{block}.{fused}.weight")) })
}

/// `blocks.3.attn.q.weight` → ("3", "attn.q.weight").
fn split_block(name: &str) -> (&str, &str) {
    let rest = name.strip_prefix("blocks.").unwrap_or(name);
    rest.split_once('.').unwrap_or(("?", rest))
}

/// A multimodal checkpoint's tensor `name` as its text model alone names it, or None for the
/// vision tower's and the projector's, which roux leaves unread: `language_model.model.X` (as
/// Gemma 3's checkpoints store it) or `model.language_model.X` (as transformers 5 holds it) is
/// `model.X`, `language_model.lm_head.weight` is `lm_head.weight`. Other names stay as they are
/// (and are then reported as extra).
pub fn text_model(name: &str) -> Option<String> {
    const UNREAD: &[&str] = &["vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."];
    if UNREAD.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let text = [("language_model.model.", "model."), ("model.language_model.", "model."), ("language_model.lm_head.", "lm_head.")];
    Some(text.iter().find_map(|(theirs, ours)| name.strip_prefix(theirs).map(|rest| format!("{ours}{rest}"))).unwrap_or_else(|| name.to_string()))
}

/// Tensors a checkpoint may hold that are not parameters: GPT-2's causal-mask buffers, rotary
/// frequency buffers, and the head of a model whose head is its embedding.
pub fn ignorable(name: &str, spec: &ModelSpec) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq") || (spec.tie_embeddings && name == "lm_head.weight")
}

/// How many tensors the checkpoint of `spec` holds, counted without naming them (a config can
/// describe 10,000 layers of 65,536 experts kept apart: billions of names).
pub fn tensor_count(spec: &ModelSpec, family: Family) -> u64 {
    let places = places(spec, family);
    let whole: std::collections::HashSet<&str> = places.iter().filter(|(_, p)| p.experts.is_none()).map(|(_, p)| p.hf.as_str()).collect();
    whole.len() as u64 + places.iter().filter_map(|(_, p)| p.experts).map(|e| e as u64).sum::<u64>()
}

/// The checkpoint's tensors and their shapes, as the places of `spec`'s parameters make them.
pub fn expected_shapes(spec: &ModelSpec, family: Family) -> BTreeMap<String, Vec<usize>> {
    let shapes: BTreeMap<String, Vec<usize>> = lower_model(spec).params().into_iter().map(|p| (p.name, p.shape)).collect();
    // Built in roux's (out, in) orientation, stacking fused rows; transposed at the end.
    let mut out: BTreeMap<String, (Vec<usize>, bool)> = BTreeMap::new();
    for (name, place) in places(spec, family) {
        let shape = &shapes[&name];
        if place.experts.is_some() {
            for n in place.names() {
                out.insert(n, (shape[1..].to_vec(), false));
            }
            continue;
        }
        let e = out.entry(place.hf).or_insert_with(|| {
            let mut s = shape.clone();
            if place.rows.is_some() {
                s[0] = 0;
            }
            (s, place.transposed)
        });
        if let Some((_, len)) = place.rows {
            e.0[0] += len;
        }
    }
    out.into_iter()
        .map(|(k, (mut s, transposed))| {
            if transposed {
                s.reverse();
            }
            (k, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{Activation, MlpSpec, Norm, Position};

    #[test]
    fn gpt2_fuses_q_k_v_into_c_attn_stored_in_by_out() {
        let spec = ModelSpec { d_model: 8, heads: 2, kv_heads: 2, layers: 1, vocab: 10, context: 4, ffn: MlpSpec { hidden: 32, act: Activation::Gelu }, ..ModelSpec::default() };
        let p: BTreeMap<String, Place> = places(&spec, Family::Gpt2).into_iter().collect();
        assert_eq!(p["blocks.0.attn.k.weight"], Place { hf: "transformer.h.0.attn.c_attn.weight".into(), transposed: true, rows: Some((8, 8)), experts: None });
        assert_eq!(p["blocks.0.attn.v.bias"], Place { hf: "transformer.h.0.attn.c_attn.bias".into(), transposed: false, rows: Some((16, 8)), experts: None });
        let s = expected_shapes(&spec, Family::Gpt2);
        assert_eq!(s["transformer.h.0.attn.c_attn.weight"], vec![8, 24]);
        assert_eq!(s["transformer.h.0.attn.c_attn.bias"], vec![24]);
        assert_eq!(s["transformer.h.0.mlp.c_fc.weight"], vec![8, 32]);
        assert!(!s.contains_key("lm_head.weight"), "tied");
    }

    #[test]
    fn qwen3_has_per_head_norms_and_a_wider_attention() {
        let spec = ModelSpec {
            d_model: 16, heads: 4, kv_heads: 2, head_size: Some(8), layers: 1, vocab: 10, context: 4, qk_norm: true, bias: false,
            ffn: MlpSpec { hidden: 32, act: Activation::Swiglu }, norm: Norm::Rmsnorm, position: Position::Rope, tie_embeddings: false,
            ..ModelSpec::default()
        };
        let s = expected_shapes(&spec, Family::Qwen3);
        assert_eq!(s["model.layers.0.self_attn.q_proj.weight"], vec![32, 16]);
        assert_eq!(s["model.layers.0.self_attn.k_proj.weight"], vec![16, 16]);
        assert_eq!(s["model.layers.0.self_attn.o_proj.weight"], vec![16, 32]);
        assert_eq!(s["model.layers.0.self_attn.q_norm.weight"], vec![8]);
        assert_eq!(s["lm_head.weight"], vec![10, 16]);
        assert_eq!(s.len(), 1 + 11 + 1 + 1);
    }
}
