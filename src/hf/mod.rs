//! Hugging Face checkpoints, in the front end (no libtorch): what `hf("dir")` reads at check time
//! and what export writes. Pure: the caller reads the files (check through its `Loader`, run
//! through `run/kit`) and hands the bytes in.
//!
//! | file        | what it does                                                            |
//! |-------------|-------------------------------------------------------------------------|
//! | `config.rs` | `config.json` → a model definition, per supported architecture          |
//! | `emit.rs`   | a model definition → `config.json` of its architecture (export)          |
//! | `gemma.rs`  | Gemma 3's text model, both directions (its config differs the most)      |
//! | `keys.rs`   | reading a config's values in range, and the rope and windows they imply  |
//! | `names.rs`  | where each roux parameter lives in a checkpoint (both directions)       |
//! | `header.rs` | safetensors headers, and what differs from the tensors a model expects  |
//! | `generation.rs` | how sample and chat draw tokens: flags, else generation_config.json |

pub mod config;
pub mod emit;
mod gemma;
mod keys;
pub mod generation;
pub mod header;
pub mod names;

/// The files of a checkpoint directory roux reads.
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";
pub const GENERATION: &str = "generation_config.json";
/// The tokenizer and generation files an export copies beside the weights.
pub const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"];
/// The most shard files an index may name.
pub const MAX_SHARDS: usize = 4096;
/// The largest `config.json` or index read.
pub const MAX_CONFIG: u64 = 16 << 20;

/// The shard files an index (`model.safetensors.index.json`, parsed) names, each one path
/// component ending in `.safetensors`, in order of first appearance.
pub fn shards(index: &serde_json::Value) -> Result<Vec<String>, String> {
    let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or("has no `weight_map` object")?;
    let mut out: Vec<String> = vec![];
    let mut seen = std::collections::HashSet::new();
    for (tensor, file) in map {
        let Some(f) = file.as_str() else { return Err(format!("maps `{}` to {file}, not a file name", tensor.escape_debug())) };
        let plain = !f.is_empty() && f.ends_with(".safetensors") && !f.contains(['/', '\\', '\0']) && f != ".." && !f.starts_with('.');
        if !plain {
            return Err(format!("names shard \"{}\"; a shard must be a `.safetensors` file in the same directory", f.escape_debug()));
        }
        // (A set, and the count checked as it grows: a large index of distinct names stays linear.)
        if seen.insert(f) {
            out.push(f.to_string());
            if out.len() > MAX_SHARDS {
                return Err(format!("names more than {MAX_SHARDS} shards; roux reads at most {MAX_SHARDS}"));
            }
        }
    }
    if out.is_empty() {
        return Err("maps no tensors".into());
    }
    Ok(out)
}

/// A tokenizer's configuration as transformers reads it: tokenizer_config.json (parsed; `Null`
/// when absent), its special tokens (`bos_token`, `eos_token`, …) replaced by those of
/// special_tokens_map.json where the config has no `added_tokens_decoder` (the older layout,
/// whose map transformers lets win; with one, it reads the config alone).
pub fn tokenizer_config(config: serde_json::Value, special_map: Option<serde_json::Value>) -> serde_json::Value {
    let mut config = if config.is_object() { config } else { serde_json::json!({}) };
    if config.get("added_tokens_decoder").is_none() {
        if let Some(serde_json::Value::Object(map)) = special_map {
            for (key, value) in map.into_iter().filter(|(k, _)| k.ends_with("_token")) {
                config[key] = value;
            }
        }
    }
    config
}

/// The chat template of a checkpoint: `jinja`, the text of chat_template.jinja, which
/// transformers prefers to the config's; else tokenizer_config.json's (parsed; `Null` when
/// absent) `chat_template` as a string, or the one named `default` in a list. With the bos and
/// eos tokens a template may print.
pub fn chat_template(config: &serde_json::Value, jinja: Option<String>) -> Result<crate::recipe::ChatTemplate, String> {
    let token = |k: &str| config[k].as_str().or_else(|| config[k]["content"].as_str()).unwrap_or("").to_string();
    let source = match (jinja, &config["chat_template"]) {
        (Some(text), _) => text,
        (None, serde_json::Value::String(s)) => s.clone(),
        (None, serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .ok_or("lists chat templates but none named `default`")?
            .to_string(),
        _ => return Err("has no chat template".into()),
    };
    Ok(crate::recipe::ChatTemplate { source, bos: token("bos_token"), eos: token("eos_token"), date: None })
}

#[cfg(test)]
mod tests {
    use crate::hf::{chat_template, shards};

    #[test]
    fn special_tokens_map_wins_where_the_config_lists_no_added_tokens() {
        use serde_json::json;
        let map = json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "additional_special_tokens": ["<x>"]});
        let old = crate::hf::tokenizer_config(json!({"eos_token": "<old>", "chat_template": "t"}), Some(map.clone()));
        assert_eq!((old["bos_token"].clone(), old["eos_token"]["content"].clone(), old["chat_template"].clone()), (json!("<s>"), json!("</s>"), json!("t")));
        assert!(old.get("additional_special_tokens").is_none(), "only the named special tokens");
        let new = crate::hf::tokenizer_config(json!({"eos_token": "<new>", "added_tokens_decoder": {}}), Some(map));
        assert_eq!((new["eos_token"].clone(), new.get("bos_token")), (json!("<new>"), None));
        assert_eq!(crate::hf::tokenizer_config(serde_json::Value::Null, None), json!({}));
    }

    #[test]
    fn chat_template_jinja_comes_before_the_configs_as_in_transformers() {
        let config = serde_json::json!({"chat_template": "config's", "eos_token": {"content": "</s>"}});
        assert_eq!(chat_template(&config, Some("file's".into())).unwrap().source, "file's");
        let t = chat_template(&config, None).unwrap();
        assert_eq!((t.source.as_str(), t.eos.as_str()), ("config's", "</s>"));
        let listed = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]});
        assert_eq!(chat_template(&listed, None).unwrap().source, "d");
        assert_eq!(chat_template(&serde_json::Value::Null, None).unwrap_err(), "has no chat template");
    }

    #[test]
    fn an_index_names_plain_shards_and_not_too_many() {
        let index = |map: serde_json::Value| serde_json::json!({ "weight_map": map });
        let two = index(serde_json::json!({"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}));
        assert_eq!(shards(&two).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        assert_eq!(shards(&index(serde_json::json!({"a": "../x.safetensors"}))).unwrap_err(), "names shard \"../x.safetensors\"; a shard must be a `.safetensors` file in the same directory");
        // 200,000 tensors each in a shard of its own (a 7 MB index): refused at the 4,097th, in
        // one pass (each name was compared with every earlier one).
        let many: serde_json::Map<String, serde_json::Value> = (0..200_000).map(|i| (format!("t{i}"), format!("s{i}.safetensors").into())).collect();
        assert_eq!(shards(&index(many.into())).unwrap_err(), "names more than 4096 shards; roux reads at most 4096");
    }
}
