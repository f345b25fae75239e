//! A Hugging Face `config.json` as a model definition: each supported architecture mapped onto
//! the options of `transformer { … }` that compute the same function. A config file is someone
//! else's data: every number is range-checked and anything the mapping cannot express exactly
//! is refused by name, never approximated.

use serde_json::Value;

use super::keys::{attention_window, rope, Reader};
use crate::recipe::{Activation, Family, MlpSpec, MoeSpec, ModelSpec, Norm, NormPlacement, Position, RouterSpec};

/// The `architectures` entries roux reads, with their family.
pub const SUPPORTED: &[(&str, Family)] = &[
    ("GPT2LMHeadModel", Family::Gpt2),
    ("LlamaForCausalLM", Family::Llama),
    ("MistralForCausalLM", Family::Mistral),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("Qwen3ForCausalLM", Family::Qwen3),
    ("MixtralForCausalLM", Family::Mixtral),
    ("OlmoeForCausalLM", Family::Olmoe),
    ("Qwen2MoeForCausalLM", Family::Qwen2Moe),
    ("Qwen3MoeForCausalLM", Family::Qwen3Moe),
    ("Phi3ForCausalLM", Family::Phi3),
    ("Olmo2ForCausalLM", Family::Olmo2),
    ("Gemma2ForCausalLM", Family::Gemma2),
    ("Gemma3ForCausalLM", Family::Gemma3),
    // Gemma 3 4B, 12B and 27B: their text model (`text_config`), the vision tower left unread.
    (MULTIMODAL, Family::Gemma3),
];

/// The multimodal architecture whose text model roux imports (`multimodal`).
const MULTIMODAL: &str = "Gemma3ForConditionalGeneration";

/// Whether `c` is a multimodal checkpoint's config: its text model's settings are under
/// `text_config`, its tensors under `language_model.` (`names::text_model`).
pub fn multimodal(c: &Value) -> bool {
    c["architectures"].as_array().is_some_and(|a| a.len() == 1 && a[0] == MULTIMODAL)
}

/// The family a config's `architectures` names.
pub fn family(c: &Value) -> Result<Family, String> {
    let names: Vec<&str> = c["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let supported = SUPPORTED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    match names.as_slice() {
        [] => Err(format!("names no `architectures`; roux reads {supported}")),
        [one] => SUPPORTED.iter().find(|(n, _)| n == one).map(|(_, f)| *f).ok_or_else(|| format!("architecture `{}` is not supported; roux reads {supported}", one.escape_debug())),
        _ => Err(format!("names {} architectures; roux reads one of {supported}", names.len())),
    }
}

/// The definition of model `name` that `config.json` (parsed) describes.
pub fn model_from_config(name: &str, c: &Value) -> Result<(ModelSpec, Family), String> {
    let family = family(c)?;
    if multimodal(c) && !c["text_config"].is_object() {
        return Err(format!("names {MULTIMODAL} but has no `text_config` object"));
    }
    let r = Reader(if multimodal(c) { &c["text_config"] } else { c });
    let spec = match family {
        Family::Gpt2 => gpt2(name, &r)?,
        Family::Gemma2 | Family::Gemma3 => super::gemma::gemma(name, &r, family)?,
        _ => llama_like(name, family, &r)?,
    };
    spec.check_options()?;
    Ok((spec, family))
}


fn gpt2(name: &str, r: &Reader) -> Result<ModelSpec, String> {
    let d = r.size("n_embd", "d_model", None)?;
    let heads = r.size("n_head", "heads", None)?;
    let act = r.text("activation_function", "gelu_new")?;
    if !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
        return Err(format!("`activation_function` = \"{}\": roux's GELU is the tanh approximation (gelu_new)", act.escape_debug()));
    }
    r.only("scale_attn_by_inverse_layer_idx", Value::Bool(false), "roux scales attention by 1/√head size only")?;
    r.only("reorder_and_upcast_attn", Value::Bool(false), "not supported")?;
    r.only("scale_attn_weights", Value::Bool(true), "roux always scales attention scores")?;
    if d % heads != 0 {
        return Err(format!("`n_head` = {heads} does not divide `n_embd` = {d}"));
    }
    Ok(ModelSpec {
        name: name.into(),
        vocab: r.size("vocab_size", "vocab", None)?,
        context: r.size("n_positions", "context", None)?,
        d_model: d,
        layers: r.size("n_layer", "layers", None)?,
        heads,
        kv_heads: heads,
        ffn: MlpSpec { hidden: r.size("n_inner", "hidden", Some(4 * d))?, act: Activation::Gelu },
        norm: Norm::Layernorm,
        position: Position::Learned,
        tie_embeddings: r.flag("tie_word_embeddings", true)?,
        bias: true,
        norm_eps: Some(r.float("layer_norm_epsilon", 1e-5)?),
        ..ModelSpec::default()
    })
}

/// What transformers assumes for a key that a family's config leaves out, where families differ
/// (tests/hf_check.rs compares every key left out with transformers' own reading).
struct Defaults {
    /// None: as many as the query heads.
    kv_heads: Option<usize>,
    /// None: `hidden_size` / heads.
    head_dim: Option<usize>,
    norm_eps: f64,
    rope_theta: f64,
    /// Mistral's window when `sliding_window` is absent (an explicit null means none).
    sliding_window: Option<usize>,
    experts_per_token: usize,
    aux_loss: f64,
    /// Qwen2-MoE's shared expert.
    shared_hidden: Option<usize>,
}

fn defaults(family: Family) -> Defaults {
    let base = Defaults { kv_heads: None, head_dim: None, norm_eps: 1e-6, rope_theta: 1e4, sliding_window: None, experts_per_token: 2, aux_loss: 0.001, shared_hidden: None };
    match family {
        Family::Mistral => Defaults { kv_heads: Some(8), sliding_window: Some(4096), ..base },
        Family::Qwen2 => Defaults { kv_heads: Some(32), ..base },
        Family::Qwen3 => Defaults { kv_heads: Some(32), head_dim: Some(128), ..base },
        Family::Mixtral => Defaults { kv_heads: Some(8), norm_eps: 1e-5, rope_theta: 1e6, ..base },
        Family::Olmoe => Defaults { norm_eps: 1e-5, experts_per_token: 8, aux_loss: 0.01, ..base },
        Family::Qwen2Moe => Defaults { kv_heads: Some(16), experts_per_token: 4, shared_hidden: Some(5632), ..base },
        Family::Qwen3Moe => Defaults { kv_heads: Some(4), experts_per_token: 8, ..base },
        Family::Phi3 | Family::Olmo2 => Defaults { norm_eps: 1e-5, ..base },
        Family::Gpt2 | Family::Llama | Family::Gemma2 | Family::Gemma3 => base,
    }
}

/// Llama 2 and 3, Mistral, Qwen2, Qwen3 and Phi-3 (and the MoE families built on them): RoPE,
/// RMSNorm, SwiGLU, grouped-query attention.
fn llama_like(name: &str, family: Family, r: &Reader) -> Result<ModelSpec, String> {
    let dft = defaults(family);
    let d = r.size("hidden_size", "d_model", None)?;
    let heads = r.size("num_attention_heads", "heads", None)?;
    let kv_heads = r.size("num_key_value_heads", "kv_heads", Some(dft.kv_heads.unwrap_or(heads)))?;
    let act = r.text("hidden_act", "silu")?;
    if act != "silu" {
        return Err(format!("`hidden_act` = \"{}\": roux's gated MLP is SwiGLU (silu)", act.escape_debug()));
    }
    if heads % kv_heads != 0 {
        return Err(format!("`num_key_value_heads` = {kv_heads} does not divide `num_attention_heads` = {heads}"));
    }
    let default_head = (d % heads == 0).then_some(d / heads);
    // An explicit null means the derived size; absent, the family's default.
    let head = r.size("head_dim", "head_dim", if r.0.get("head_dim").is_some() { default_head } else { dft.head_dim.or(default_head) })?;
    if head % 2 != 0 {
        return Err(format!("rope needs an even head size, not `head_dim` = {head}"));
    }
    let context = r.size("max_position_embeddings", "context", None)?;
    let layers = r.size("num_hidden_layers", "layers", None)?;
    let (window, window_layers) = attention_window(family, r, context, layers, dft.sliding_window)?;
    r.only("pretraining_tp", Value::from(1), "tensor-parallel slicing of the projections is not supported")?;
    whole_rotary(r)?;
    // Qwen2 always has biases on q, k, v (none on o or the MLP); Llama and Qwen3 say which.
    let (attn_bias, mlp_bias) = match family {
        Family::Qwen2 | Family::Qwen2Moe | Family::Mistral | Family::Mixtral => (false, false),
        Family::Olmoe | Family::Qwen3Moe | Family::Olmo2 => (r.flag("attention_bias", false)?, false),
        Family::Phi3 => (false, false),
        _ => (r.flag("attention_bias", false)?, r.flag("mlp_bias", false)?),
    };
    if attn_bias != mlp_bias {
        return Err(format!("`attention_bias` = {attn_bias} with `mlp_bias` = {mlp_bias}: roux's `bias` covers both"));
    }
    let (theta, scaling) = rope(r, dft.rope_theta)?;
    let moe = match family {
        Family::Mixtral => Some(sparse_moe(r, &dft, "num_local_experts", "intermediate_size", true, (0..layers).collect())?),
        Family::Olmoe => {
            r.only("clip_qkv", Value::Null, "roux does not clip queries, keys and values")?;
            Some(sparse_moe(r, &dft, "num_experts", "intermediate_size", r.flag("norm_topk_prob", false)?, (0..layers).collect())?)
        }
        Family::Qwen2Moe => Some(qwen_moe(r, &dft, layers, true)?),
        Family::Qwen3Moe => Some(qwen_moe(r, &dft, layers, false)?),
        _ => None,
    };
    Ok(ModelSpec {
        name: name.into(),
        vocab: r.size("vocab_size", "vocab", None)?,
        context,
        d_model: d,
        layers: r.size("num_hidden_layers", "layers", None)?,
        heads,
        kv_heads,
        ffn: MlpSpec { hidden: r.size("intermediate_size", "hidden", None)?, act: Activation::Swiglu },
        norm: Norm::Rmsnorm,
        position: Position::Rope,
        tie_embeddings: r.flag("tie_word_embeddings", false)?,
        bias: attn_bias,
        qkv_bias: family == Family::Qwen2 || (family == Family::Qwen2Moe && r.flag("qkv_bias", true)?),
        qk_norm: matches!(family, Family::Qwen3 | Family::Qwen3Moe | Family::Olmoe | Family::Olmo2),
        qk_norm_whole: matches!(family, Family::Olmoe | Family::Olmo2),
        norm_placement: if family == Family::Olmo2 { NormPlacement::Post } else { NormPlacement::Pre },
        head_size: (Some(head) != default_head).then_some(head),
        norm_eps: Some(r.float("rms_norm_eps", dft.norm_eps)?),
        rope_theta: Some(theta),
        rope_scaling: scaling,
        moe,
        window,
        window_layers,
        ..ModelSpec::default()
    })
}

/// The sparse MLP in every block of Mixtral and OLMoE: top-k of the SwiGLU experts counted by
/// `experts_key`, the k gates renormalised or not (Mixtral always; OLMoE's `norm_topk_prob`).
/// Their auxiliary loss coefficient is k times roux's balance loss (see the reference), so
/// balance_loss = k · router_aux_loss_coef.
fn sparse_moe(r: &Reader, dft: &Defaults, experts_key: &str, hidden_key: &str, normalize: bool, layers: Vec<usize>) -> Result<MoeSpec, String> {
    let experts = r.size(experts_key, "experts", None)?;
    let k = r.size("num_experts_per_tok", "k", Some(dft.experts_per_token))?;
    if k > experts {
        return Err(format!("`num_experts_per_tok` = {k} exceeds `{experts_key}` = {experts}"));
    }
    if r.float("router_jitter_noise", 0.0)? != 0.0 {
        return Err("`router_jitter_noise` is not 0: roux's top-k router has no jitter".into());
    }
    let coef = r.float("router_aux_loss_coef", dft.aux_loss)?;
    if !(0.0..=1e3).contains(&coef) {
        return Err(format!("`router_aux_loss_coef` = {coef} is not in [0, 1000]"));
    }
    Ok(MoeSpec {
        experts,
        expert: MlpSpec { hidden: r.size(hidden_key, "hidden", None)?, act: Activation::Swiglu },
        layers,
        shared: 0,
        shared_hidden: None,
        shared_gate: false,
        expert_dropout: 0.0,
        router: RouterSpec::Topk { k, normalize, balance_loss: coef * k as f64, z_loss: 0.0 },
    })
}

/// Qwen2-MoE and Qwen3-MoE: experts of `moe_intermediate_size` in the blocks
/// `decoder_sparse_step` picks (less `mlp_only_layers`, dense with `intermediate_size`); with
/// `shared` (Qwen2-MoE), one shared expert of `shared_expert_intermediate_size` whose output a
/// sigmoid gate scales. transformers 5 writes Qwen3-MoE's `num_experts` as `num_local_experts`.
fn qwen_moe(r: &Reader, dft: &Defaults, layers: usize, shared: bool) -> Result<MoeSpec, String> {
    let step = r.size("decoder_sparse_step", "layers", Some(1))?;
    let dense: std::collections::HashSet<u64> = r.get("mlp_only_layers").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
    let picked = (0..layers).filter(|l| !dense.contains(&(*l as u64)) && (l + 1) % step == 0).collect();
    let experts_key = if shared || r.get("num_experts").is_some() { "num_experts" } else { "num_local_experts" };
    let mut m = sparse_moe(r, dft, experts_key, "moe_intermediate_size", r.flag("norm_topk_prob", false)?, picked)?;
    if shared {
        let width = r.size("shared_expert_intermediate_size", "hidden", dft.shared_hidden)?;
        (m.shared, m.shared_hidden, m.shared_gate) = (1, Some(width), true);
    }
    Ok(m)
}

/// Rotary embedding over every feature of a head: Phi-3's `partial_rotary_factor` (in
/// `rope_parameters` or beside it) must be 1.
fn whole_rotary(r: &Reader) -> Result<(), String> {
    let params = r.get("rope_parameters").or_else(|| r.get("rope_scaling"));
    let factor = params.and_then(|p| p.get("partial_rotary_factor")).filter(|v| !v.is_null()).or_else(|| r.get("partial_rotary_factor"));
    match factor {
        Some(v) if v.as_f64() != Some(1.0) => Err(format!("`partial_rotary_factor` = {v}: roux rotates every feature of a head")),
        _ => Ok(()),
    }
}
