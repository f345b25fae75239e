//! A model definition as the `config.json` of a Hugging Face architecture (for export): the
//! inverse of `config.rs`, so an imported model goes back out as what it came in as.

use serde_json::{json, Value};

use crate::recipe::{Family, ModelSpec};

/// The class name `transformers` instantiates for a family.
pub fn class(family: Family) -> &'static str {
    super::config::SUPPORTED.iter().find(|(_, f)| *f == family).map_or("?", |(n, _)| n)
}

/// The family's `…ForSequenceClassification` (a reward model's export), where transformers has
/// one: OLMoE has none.
pub fn classifier_class(family: Family) -> Option<String> {
    // Gemma 3's text classifier is its own class (Gemma3ForSequenceClassification is multimodal).
    let class = if family == Family::Gemma3 { "Gemma3TextForCausalLM" } else { class(family) };
    (family != Family::Olmoe).then(|| class.replace("LMHeadModel", "ForSequenceClassification").replace("ForCausalLM", "ForSequenceClassification"))
}

/// The attention window as the family's config says it (`config.rs` reads it back): Mistral,
/// Mixtral, Phi-3 and Qwen3-MoE window every block by `sliding_window`; the Qwen families with
/// `layer_types` name the blocks (written out, so `max_window_layers` does not matter).
fn window(c: &mut Value, spec: &ModelSpec, family: Family) {
    match family {
        Family::Mistral | Family::Mixtral | Family::Phi3 => c["sliding_window"] = json!(spec.window),
        Family::Qwen2 | Family::Qwen3 | Family::Qwen2Moe | Family::Qwen3Moe => {
            c["use_sliding_window"] = json!(spec.window.is_some());
            c["sliding_window"] = json!(spec.window);
            if family != Family::Qwen3Moe {
                let kind = |b: usize| if spec.window_of(b).is_some() { "sliding_attention" } else { "full_attention" };
                c["layer_types"] = json!((0..spec.layers).map(kind).collect::<Vec<_>>());
                c["max_window_layers"] = json!(spec.layers);
            }
        }
        _ => {}
    }
}

/// `config.json` for `spec` as a `family` checkpoint stored in float32.
pub fn config(spec: &ModelSpec, family: Family) -> Value {
    let mut c = match family {
        Family::Gpt2 => json!({
            "model_type": "gpt2",
            "vocab_size": spec.vocab, "n_positions": spec.context, "n_embd": spec.d_model,
            "n_layer": spec.layers, "n_head": spec.heads, "n_inner": spec.ffn.hidden,
            "activation_function": "gelu_new", "layer_norm_epsilon": spec.norm_eps(),
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            // GPT-2's defaults name token 50256, outside a smaller vocabulary.
            "bos_token_id": (spec.vocab > 50256).then_some(50256), "eos_token_id": (spec.vocab > 50256).then_some(50256),
        }),
        _ => {
            let name = match family {
                Family::Mistral => "mistral",
                Family::Qwen2 => "qwen2",
                Family::Qwen3 => "qwen3",
                Family::Mixtral => "mixtral",
                Family::Olmoe => "olmoe",
                Family::Qwen2Moe => "qwen2_moe",
                Family::Qwen3Moe => "qwen3_moe",
                Family::Phi3 => "phi3",
                Family::Olmo2 => "olmo2",
                Family::Gemma2 => "gemma2",
                Family::Gemma3 => "gemma3_text",
                _ => "llama",
            };
            let mut rope = json!({"rope_type": "default", "rope_theta": spec.rope_theta()});
            if let Some(r) = &spec.rope_scaling {
                rope = json!({"rope_type": "llama3", "rope_theta": spec.rope_theta(), "factor": r.factor,
                    "low_freq_factor": r.low_freq_factor, "high_freq_factor": r.high_freq_factor,
                    "original_max_position_embeddings": r.original_context});
            }
            let mut c = json!({
                "model_type": name,
                "vocab_size": spec.vocab, "hidden_size": spec.d_model, "intermediate_size": spec.ffn.hidden,
                "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.kv_heads, "head_dim": spec.head_dim(),
                "max_position_embeddings": spec.context, "rms_norm_eps": spec.norm_eps(), "hidden_act": "silu",
                "rope_theta": spec.rope_theta(), "rope_parameters": rope,
            });
            if matches!(family, Family::Llama | Family::Qwen3 | Family::Olmoe | Family::Qwen3Moe | Family::Olmo2) {
                c["attention_bias"] = json!(spec.bias);
            }
            if family == Family::Llama {
                c["mlp_bias"] = json!(spec.bias);
            }
            window(&mut c, spec, family);
            if matches!(family, Family::Gemma2 | Family::Gemma3) {
                super::gemma::emit(&mut c, spec, family);
                let o = c.as_object_mut().expect("an object");
                o.remove("hidden_act");
                o.remove("rope_theta");
            }
            let moe = spec.moe.as_ref().and_then(|m| match &m.router {
                crate::recipe::RouterSpec::Topk { k, balance_loss, normalize, .. } => Some((m, *k, *balance_loss, *normalize)),
                _ => None,
            });
            if let Some((m, k, balance_loss, normalize)) = moe {
                c[if family == Family::Mixtral { "num_local_experts" } else { "num_experts" }] = json!(m.experts);
                c["norm_topk_prob"] = json!(normalize);
                c["num_experts_per_tok"] = json!(k);
                c["router_aux_loss_coef"] = json!(balance_loss / k as f64);
                if matches!(family, Family::Qwen2Moe | Family::Qwen3Moe) {
                    // Experts in the blocks `moe.layers` names, the rest dense (Qwen2-MoE: one
                    // gated shared expert).
                    c["moe_intermediate_size"] = json!(m.expert.hidden);
                    c["decoder_sparse_step"] = json!(1);
                    c["mlp_only_layers"] = json!((0..spec.layers).filter(|l| !m.layers.contains(l)).collect::<Vec<_>>());
                }
                if family == Family::Qwen2Moe {
                    c["shared_expert_intermediate_size"] = json!(m.shared_hidden.unwrap_or(m.expert.hidden));
                    c["qkv_bias"] = json!(spec.qkv_bias);
                } else if family != Family::Qwen3Moe {
                    c["intermediate_size"] = json!(m.expert.hidden);
                }
            }
            c
        }
    };
    c["architectures"] = json!([class(family)]);
    c["tie_word_embeddings"] = json!(spec.tie_embeddings);
    c["torch_dtype"] = json!("float32");
    c
}
