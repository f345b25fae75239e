//! `roux export RUN --to hf`: a dense model as a Hugging Face checkpoint (`config.json` +
//! `model.safetensors`) that `transformers` loads: GPT-2 layout for learned positions +
//! layernorm + GELU, Llama layout for RoPE + RMSNorm + SwiGLU. Weights are renamed and, for
//! GPT-2's Conv1D layers, transposed; absent biases are written as zeros (the same function).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use tch::{Kind, Tensor};

use crate::recipe::{Activation, ModelSpec, Norm, Position};
use crate::run::kit::files::{read_capped, write_atomic, write_tensors_atomic};
use crate::run::kit::tokenize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    Gpt2,
    Llama,
}

impl Layout {
    /// The architecture's name as Hugging Face spells it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Gpt2 => "GPT-2",
            Layout::Llama => "Llama",
        }
    }
}

/// Which Hugging Face architecture computes the same function as `spec`, if any.
pub fn layout_for(spec: &ModelSpec) -> Result<Layout> {
    if spec.moe.is_some() {
        bail!("model `{}` has mixture-of-experts layers; the Hugging Face export covers dense GPT-2 and Llama layouts", spec.name);
    }
    match (spec.position, spec.norm, spec.ffn.act) {
        (Position::Learned, Norm::Layernorm, Activation::Gelu) if spec.kv_heads == spec.heads => Ok(Layout::Gpt2),
        (Position::Rope, Norm::Rmsnorm, Activation::Swiglu) => Ok(Layout::Llama),
        _ => bail!(
            "model `{}` ({} positions, {}, {}, {} of {} key/value heads) matches neither layout: GPT-2 is learned + layernorm + gelu \
             with full attention heads, Llama is rope + rmsnorm + swiglu",
            spec.name,
            crate::recipe::keyword(&spec.position),
            crate::recipe::keyword(&spec.norm),
            crate::recipe::keyword(&spec.ffn.act),
            spec.kv_heads,
            spec.heads
        ),
    }
}

/// The resolved definition of run directory `run` and its model, for an export into `out` (which
/// must not be a run directory: an export never overwrites one).
pub fn run_definition(run: &Path, out: &Path) -> Result<(serde_json::Value, ModelSpec)> {
    crate::run::kit::lifecycle::refuse_to_overwrite(out, &["report.json", "state.json", "metrics.jsonl", "resolved.json"])?;
    let resolved = run.join("resolved.json");
    let text = read_capped(&resolved, 64 << 20).with_context(|| format!("{} is not a run directory (no resolved.json)", run.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", resolved.display()))?;
    let spec = ModelSpec::from_run_json(&v["model"]).map_err(|e| anyhow::anyhow!("{}: {e}", resolved.display()))?;
    Ok((v, spec))
}

/// Export the model of a run directory (its `resolved.json` names the model, `model.safetensors`
/// holds the weights) into `out`.
pub fn export_hf(run: &Path, out: &Path) -> Result<Layout> {
    let (_, spec) = run_definition(run, out)?;
    let weights = run.join("model.safetensors");
    if !weights.exists() {
        bail!("{} has no model.safetensors (is the stage finished? a LoRA stage holds an adapter: `roux merge {}` first)", run.display(), run.display());
    }
    let given: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&weights)?.into_iter().collect();
    let get = |n: &str| given.get(n).map(|t| t.to_kind(Kind::Float)).with_context(|| format!("{} has no `{n}`", weights.display()));
    let zeros = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    let bias = |n: &str, len: i64| given.get(n).map_or_else(|| zeros(len), |t| t.to_kind(Kind::Float));
    let layout = layout_for(&spec)?;
    let (d, hidden) = (spec.d_model as i64, spec.ffn.hidden as i64);
    let mut t: Vec<(String, Tensor)> = vec![];
    let config = match layout {
        Layout::Gpt2 => {
            t.push(("transformer.wte.weight".into(), get("tok_emb.weight")?));
            t.push(("transformer.wpe.weight".into(), get("pos_emb.weight")?));
            for i in 0..spec.layers {
                let (p, h) = (format!("blocks.{i}"), format!("transformer.h.{i}"));
                // Conv1D stores (in, out): the transposes of our (out, in) linears.
                let qkv = Tensor::cat(&[get(&format!("{p}.attn.q.weight"))?, get(&format!("{p}.attn.k.weight"))?, get(&format!("{p}.attn.v.weight"))?], 0).tr();
                let qkv_b = Tensor::cat(&[bias(&format!("{p}.attn.q.bias"), d), bias(&format!("{p}.attn.k.bias"), d), bias(&format!("{p}.attn.v.bias"), d)], 0);
                t.push((format!("{h}.ln_1.weight"), get(&format!("{p}.norm1.weight"))?));
                t.push((format!("{h}.ln_1.bias"), bias(&format!("{p}.norm1.bias"), d)));
                t.push((format!("{h}.attn.c_attn.weight"), qkv));
                t.push((format!("{h}.attn.c_attn.bias"), qkv_b));
                t.push((format!("{h}.attn.c_proj.weight"), get(&format!("{p}.attn.o.weight"))?.tr()));
                t.push((format!("{h}.attn.c_proj.bias"), bias(&format!("{p}.attn.o.bias"), d)));
                t.push((format!("{h}.ln_2.weight"), get(&format!("{p}.norm2.weight"))?));
                t.push((format!("{h}.ln_2.bias"), bias(&format!("{p}.norm2.bias"), d)));
                t.push((format!("{h}.mlp.c_fc.weight"), get(&format!("{p}.ffn.w1.weight"))?.tr()));
                t.push((format!("{h}.mlp.c_fc.bias"), bias(&format!("{p}.ffn.w1.bias"), hidden)));
                t.push((format!("{h}.mlp.c_proj.weight"), get(&format!("{p}.ffn.w2.weight"))?.tr()));
                t.push((format!("{h}.mlp.c_proj.bias"), bias(&format!("{p}.ffn.w2.bias"), d)));
            }
            t.push(("transformer.ln_f.weight".into(), get("norm_f.weight")?));
            t.push(("transformer.ln_f.bias".into(), bias("norm_f.bias", d)));
            let head = if spec.tie_embeddings { get("tok_emb.weight")? } else { get("head.weight")? };
            t.push(("lm_head.weight".into(), head));
            json!({
                "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": spec.vocab, "n_positions": spec.context, "n_embd": spec.d_model,
                "n_layer": spec.layers, "n_head": spec.heads, "n_inner": spec.ffn.hidden,
                "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "tie_word_embeddings": spec.tie_embeddings,
                // GPT-2's defaults name token 50256, outside a smaller vocabulary.
                "bos_token_id": (spec.vocab > 50256).then_some(50256), "eos_token_id": (spec.vocab > 50256).then_some(50256),
            })
        }
        Layout::Llama => {
            t.push(("model.embed_tokens.weight".into(), get("tok_emb.weight")?));
            for i in 0..spec.layers {
                let (p, h) = (format!("blocks.{i}"), format!("model.layers.{i}"));
                t.push((format!("{h}.input_layernorm.weight"), get(&format!("{p}.norm1.weight"))?));
                for (ours, theirs) in [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")] {
                    t.push((format!("{h}.self_attn.{theirs}.weight"), get(&format!("{p}.attn.{ours}.weight"))?));
                    if let Some(b) = given.get(&format!("{p}.attn.{ours}.bias")) {
                        t.push((format!("{h}.self_attn.{theirs}.bias"), b.to_kind(Kind::Float)));
                    }
                }
                t.push((format!("{h}.post_attention_layernorm.weight"), get(&format!("{p}.norm2.weight"))?));
                for (ours, theirs) in [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")] {
                    t.push((format!("{h}.mlp.{theirs}.weight"), get(&format!("{p}.ffn.{ours}.weight"))?));
                    if let Some(b) = given.get(&format!("{p}.ffn.{ours}.bias")) {
                        t.push((format!("{h}.mlp.{theirs}.bias"), b.to_kind(Kind::Float)));
                    }
                }
            }
            t.push(("model.norm.weight".into(), get("norm_f.weight")?));
            if !spec.tie_embeddings {
                t.push(("lm_head.weight".into(), get("head.weight")?));
            }
            json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "vocab_size": spec.vocab, "hidden_size": spec.d_model, "intermediate_size": spec.ffn.hidden,
                "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim(),
                "max_position_embeddings": spec.context, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                "attention_bias": spec.bias, "mlp_bias": spec.bias,
                "tie_word_embeddings": spec.tie_embeddings,
            })
        }
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let t: Vec<(String, Tensor)> = t.into_iter().map(|(n, x)| (n, x.contiguous())).collect();
    write_tensors_atomic(&out.join("model.safetensors"), &t)?;
    let mut config = config;
    config["torch_dtype"] = json!("float32");
    config["roux_model"] = json!(spec);
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    // A BPE run's tokenizer is already in the Hugging Face format.
    let tk = run.join(tokenize::FILE);
    if tk.exists() {
        crate::fsio::copy_atomic(&tk, &out.join("tokenizer.json"), tokenize::MAX_BYTES).map_err(anyhow::Error::msg)?;
    }
    Ok(layout)
}
