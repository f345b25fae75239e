//! Gemma 2 and Gemma 3's text model (`Gemma2ForCausalLM`, `Gemma3ForCausalLM` as the 270M and 1B
//! checkpoints are) as model definitions: Llama's layout with GELU-gated MLPs, every norm's gain an
//! offset from 1, four norms a block, embeddings scaled by √d_model, and blocks that alternate
//! between a sliding window and full attention. Gemma 2 soft-caps its attention scores and
//! logits; Gemma 3 has per-head QK-norm instead, and gives its windowed blocks a rotary base of
//! their own.

use serde_json::{json, Value};

use super::keys::{attention_window, rope, Reader};
use crate::recipe::{Activation, Family, MlpSpec, ModelSpec, Norm, NormPlacement, Position};

/// What `Gemma3TextConfig` assumes for keys a config leaves out.
const DEFAULT_HEAD: usize = 256;
const DEFAULT_WINDOW: usize = 4096;
const GLOBAL_THETA: f64 = 1e6;
const LOCAL_THETA: f64 = 1e4;

pub(super) fn gemma(name: &str, r: &Reader, family: Family) -> Result<ModelSpec, String> {
    let gemma3 = family == Family::Gemma3;
    let act = r.text("hidden_activation", "gelu_pytorch_tanh")?;
    if act != "gelu_pytorch_tanh" {
        return Err(format!("`hidden_activation` = \"{}\": roux's GEGLU is the tanh GELU (gelu_pytorch_tanh)", act.escape_debug()));
    }
    // Gemma 2's caps (its defaults 50 and 30); Gemma 3 has none.
    let cap = |key: &str, default: f64| -> Result<Option<f64>, String> {
        match r.get(key) {
            None if gemma3 || r.0.get(key).is_some() => Ok(None),
            None => Ok(Some(default)),
            Some(v) => v.as_f64().filter(|c| *c > 0.0 && *c <= 1e6).map(Some).ok_or_else(|| format!("`{key}` = {v} is not a number in (0, 1e6]")),
        }
    };
    let (attn_softcap, logit_softcap) = (cap("attn_logit_softcapping", 50.0)?, cap("final_logit_softcapping", 30.0)?);
    r.only("use_bidirectional_attention", Value::Bool(false), "roux's attention is causal")?;
    let d = r.size("hidden_size", "d_model", None)?;
    let heads = r.size("num_attention_heads", "heads", None)?;
    let kv_heads = r.size("num_key_value_heads", "kv_heads", Some(4))?;
    if heads % kv_heads != 0 {
        return Err(format!("`num_key_value_heads` = {kv_heads} does not divide `num_attention_heads` = {heads}"));
    }
    let head = r.size("head_dim", "head_dim", Some(DEFAULT_HEAD))?;
    if head % 2 != 0 {
        return Err(format!("rope needs an even head size, not `head_dim` = {head}"));
    }
    // Scores are scaled by query_pre_attn_scalar^−½, roux's by head_dim^−½.
    let scalar = r.float("query_pre_attn_scalar", DEFAULT_HEAD as f64)?;
    if scalar != head as f64 {
        return Err(format!("`query_pre_attn_scalar` = {scalar} is not `head_dim` = {head}: roux scales attention scores by 1/√head_dim"));
    }
    if r.flag("attention_bias", false)? {
        return Err("`attention_bias` = true: roux's `bias` would put biases on the MLP too".into());
    }
    let context = r.size("max_position_embeddings", "context", None)?;
    let layers = r.size("num_hidden_layers", "layers", None)?;
    let (window, window_layers) = attention_window(family, r, context, layers, Some(DEFAULT_WINDOW))?;
    let ((theta, scaling), local) = if gemma3 { rotary(r)? } else { (rope(r, LOCAL_THETA)?, LOCAL_THETA) };
    // Its sliding-type blocks turn by the local base even where the window covers the context:
    // roux gives that base to windowed blocks only.
    let all_full = r.get("layer_types").and_then(Value::as_array).is_some_and(|t| t.iter().all(|k| k == "full_attention"));
    if gemma3 && window.is_none() && local != theta && !all_full {
        return Err(format!("`sliding_window` is not shorter than the context ({context}) while the sliding blocks' rope base ({local}) differs from the others' ({theta}): roux gives that base only to blocks with a window"));
    }
    Ok(ModelSpec {
        name: name.into(),
        vocab: r.size("vocab_size", "vocab", None)?,
        context,
        d_model: d,
        layers,
        heads,
        kv_heads,
        ffn: MlpSpec { hidden: r.size("intermediate_size", "hidden", None)?, act: Activation::Geglu },
        norm: Norm::Rmsnorm,
        position: Position::Rope,
        tie_embeddings: r.flag("tie_word_embeddings", true)?,
        bias: false,
        qk_norm: gemma3,
        attn_softcap,
        logit_softcap,
        norm_placement: NormPlacement::Sandwich,
        norm_offset: true,
        embed_scale: true,
        head_size: (d % heads != 0 || head != d / heads).then_some(head),
        norm_eps: Some(r.float("rms_norm_eps", 1e-6)?),
        rope_theta: Some(theta),
        rope_scaling: scaling,
        // The windowed blocks' base only matters when there are windowed blocks (Gemma 3's).
        window_rope_theta: window.filter(|_| gemma3).map(|_| local),
        window,
        window_layers,
        ..ModelSpec::default()
    })
}

/// The full-attention blocks' rotary base and scaling, and the windowed blocks' base:
/// transformers 5's `rope_parameters` by layer type, or the older `rope_theta`, `rope_scaling`
/// and `rope_local_base_freq`. The windowed blocks' rope is unscaled.
fn rotary(r: &Reader) -> Result<((f64, Option<crate::recipe::RopeScaling>), f64), String> {
    match r.get("rope_parameters").filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some()) {
        Some(p) => {
            let of = |kind: &str, theta: f64| {
                let part = p.get(kind).cloned().unwrap_or(Value::Null);
                rope(&Reader(&json!({ "rope_parameters": part })), theta)
            };
            let (local, local_scaling) = of("sliding_attention", LOCAL_THETA)?;
            if local_scaling.is_some() {
                return Err("the sliding-attention blocks' rope is scaled: roux scales only the full-attention blocks'".into());
            }
            Ok((of("full_attention", GLOBAL_THETA)?, local))
        }
        None => Ok((rope(r, GLOBAL_THETA)?, r.float("rope_local_base_freq", LOCAL_THETA)?)),
    }
}

/// `config.json`'s Gemma keys for `spec` (the rest as every family's: `emit.rs`).
pub(super) fn emit(c: &mut Value, spec: &ModelSpec, family: Family) {
    c["hidden_activation"] = json!("gelu_pytorch_tanh");
    c["query_pre_attn_scalar"] = json!(spec.head_dim());
    if family == Family::Gemma3 {
        let scaling = c["rope_parameters"].clone();
        c["rope_parameters"] = json!({
            "full_attention": scaling,
            "sliding_attention": {"rope_type": "default", "rope_theta": spec.window_rope_theta.unwrap_or(LOCAL_THETA)},
        });
    }
    c["sliding_window"] = json!(spec.window);
    let kind = |b: usize| if spec.window_of(b).is_some() { "sliding_attention" } else { "full_attention" };
    c["layer_types"] = json!((0..spec.layers).map(kind).collect::<Vec<_>>());
    c["attention_bias"] = json!(false);
    c["final_logit_softcapping"] = json!(spec.logit_softcap);
    c["attn_logit_softcapping"] = json!(spec.attn_softcap);
}
