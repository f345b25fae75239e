//! A checkpoint's config.json is someone else's data: bytes → a config of the keys roux reads,
//! each given a value from a set of interesting ones (sizes, zero, negatives, huge numbers,
//! floats, null, wrong types, rope objects). Reading it must not panic; a model read must count
//! its tensors as it names them, lower (what `plan` counts), and go back out (`roux export`'s
//! config.json) as a config that reads as the same model. The remaining bytes are also read as
//! a safetensors header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roux::hf::{config, emit, header, names};
use serde_json::{json, Value};

const KEYS: &[&str] = &[
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
    "tie_word_embeddings", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "layer_types",
    "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
    "decoder_sparse_step", "mlp_only_layers", "norm_topk_prob", "router_aux_loss_coef", "router_jitter_noise", "clip_qkv",
    "qkv_bias", "pretraining_tp", "hidden_act", "n_embd", "n_head", "n_layer", "n_positions", "n_inner",
    "activation_function", "layer_norm_epsilon", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
    "scale_attn_weights", "architectures",
];

fn value(kind: u8, n: u8) -> Value {
    let n64 = n as u64;
    match kind % 16 {
        0..=5 => json!(1 + n64 % 64),
        6 => json!(0),
        7 => json!(-(n as i64)),
        8 => json!([1u64 << 20, 1u64 << 31, 1u64 << 53, u64::MAX, 10_000, 10_001][n as usize % 6]),
        9 => json!([1e-5, 1e-6, 0.5, 1.0, 2.0, 1e300, -0.0, 500000.0][n as usize % 8]),
        10 => Value::Null,
        11 => json!(n % 2 == 0),
        12 => json!(["silu", "gelu_new", "gelu", "full_attention", "x"][n as usize % 5]),
        13 => [json!([]), json!([0]), json!([0, 1]), json!([n64 % 4]), json!(["full_attention", "sliding_attention"])][n as usize % 5].clone(),
        14 => {
            let kind = ["default", "llama3", "yarn"][n as usize % 3];
            json!({"rope_type": kind, "rope_theta": 1e4 + n as f64, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 1 + n64 % 32})
        }
        _ => json!([config::SUPPORTED[n as usize % config::SUPPORTED.len()].0]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let family = config::SUPPORTED[first as usize % config::SUPPORTED.len()].0;
    let mut c = json!({"architectures": [family]});
    let pairs = rest.len().min(96) / 3;
    for t in rest[..pairs * 3].chunks(3) {
        c[KEYS[t[0] as usize % KEYS.len()]] = value(t[1], t[2]);
    }
    if let Ok((spec, fam)) = config::model_from_config("m", &c) {
        let count = names::tensor_count(&spec, fam);
        if count <= 20_000 {
            assert_eq!(names::expected_shapes(&spec, fam).len() as u64, count, "{c}");
            let _ = roux::arith::lower_model(&spec).params();
        }
        let back = config::model_from_config("m", &emit::config(&spec, fam));
        assert_eq!(back.as_ref().map(|b| &b.0), Ok(&spec), "{c}");
    }
    let _ = header::header_len(&rest[..rest.len().min(8)]);
    let _ = header::parse(rest, rest.len() as u64 + 8);
});
