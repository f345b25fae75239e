//! `model base = hf("models/qwen-tiny")`: a Hugging Face checkpoint directory as a model. Check
//! reads `config.json` and the safetensors headers only (never the weights), maps the config to
//! a definition (`hf::config`) and holds every tensor's name, shape and type against it.

use std::collections::BTreeMap;
use std::path::Path;

use super::loader::{Loader, PathKind};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::hf::{self, header};
use crate::recipe::{Checkpoint, ModelSpec};
use crate::syntax::ast::{Arg, Block, Decl};

/// A reason a checkpoint cannot be used: code, message, hint.
type Refusal = (Code, String, String);

impl<'a> Checker<'a> {
    pub(super) fn check_hf(&mut self, d: &'a Decl, args: Option<&'a [Arg]>, block: Option<&'a Block>) -> Option<ModelSpec> {
        let Some((file, at)) = super::paths::single_path_arg(args) else {
            self.error(Diagnostic::error(Code::E0104, d.value.span, "`hf` takes one argument: a checkpoint directory")
                .with_hint("write `hf(\"models/qwen-tiny\")`: a folder with config.json and model.safetensors, as `save_pretrained` leaves it"));
            return None;
        };
        if block.is_some() {
            self.error(Diagnostic::error(Code::E0104, d.value.span, "`hf(…)` takes no `{ … }` block: the checkpoint's config.json defines the model")
                .with_hint("remove the block"));
            return None;
        }
        let dir = self.confined(&file, at)?;
        match read(self.loader, &dir, &file, &d.name.name) {
            Ok(spec) => self.countable(spec, d.name.span),
            Err((code, msg, hint)) => {
                self.error(Diagnostic::error(code, at, msg).with_hint(hint));
                None
            }
        }
    }
}

/// The model the checkpoint in `dir` (written `file` in the recipe) holds, named `name`.
fn read(loader: &dyn Loader, dir: &Path, file: &str, name: &str) -> Result<ModelSpec, Refusal> {
    let unreadable = |msg: String| (Code::E0215, msg, "hf(…) names a folder as `save_pretrained` leaves it: config.json, and model.safetensors or model.safetensors.index.json with its shards".to_string());
    let shown = file.escape_debug().to_string();
    let config_path = dir.join(hf::CONFIG);
    if !matches!(loader.entry(&config_path), PathKind::File(_)) {
        return Err(unreadable(format!("checkpoint `{shown}` has no config.json")));
    }
    let text = loader.read_text(&config_path, hf::MAX_CONFIG).map_err(|e| unreadable(format!("checkpoint `{shown}`: {e}")))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| unreadable(format!("`{shown}/config.json` is not valid JSON: {e}")))?;
    let (mut spec, family) = hf::config::model_from_config(name, &config)
        .map_err(|e| (Code::E0216, format!("`{shown}/config.json` {e}"), "roux imports GPT-2, Llama, Mistral, Qwen2, Qwen3, Mixtral, OLMoE and Qwen2-MoE checkpoints whose settings it computes exactly".to_string()))?;
    let files = weight_files(loader, dir).map_err(|e| unreadable(format!("checkpoint `{shown}`: {e}")))?;
    let multimodal = hf::config::multimodal(&config);
    let mut found: BTreeMap<String, header::TensorEntry> = BTreeMap::new();
    let mut bytes = 0;
    for f in &files {
        let path = dir.join(f);
        let (tensors, size) = read_header(loader, &path).map_err(|e| unreadable(format!("`{shown}/{}` {e}", f.escape_debug())))?;
        bytes += size;
        for (t, entry) in tensors {
            let Some(t) = (if multimodal { hf::names::text_model(&t) } else { Some(t) }) else { continue };
            if found.insert(t.clone(), entry).is_some() {
                return Err(unreadable(format!("checkpoint `{shown}` holds tensor `{}` in two shards", t.escape_debug())));
            }
        }
    }
    if !files.is_empty() {
        // Naming every tensor the config describes costs what it describes: compared only when
        // that is of the order of what the files hold (their headers are capped).
        let described = hf::names::tensor_count(&spec, family);
        if described > 2 * found.len() as u64 + 1000 {
            return Err((Code::E0217, format!("checkpoint `{shown}` holds {} tensor(s), but its config.json describes {described}", found.len()), "config.json and the weights must come from the same model".into()));
        }
        let expected = hf::names::expected_shapes(&spec, family);
        let diffs = header::differences(&expected, &found, |n| hf::names::ignorable(n, &spec), 6);
        if let Some((first, rest)) = diffs.split_first() {
            let hint = if rest.is_empty() { "config.json and the weights must come from the same model".to_string() } else { rest.join("; ") };
            return Err((Code::E0217, format!("checkpoint `{shown}` {first}"), hint));
        }
    }
    let dtype = dominant_dtype(&found);
    let tokenizer = matches!(loader.entry(&dir.join("tokenizer.json")), PathKind::File(_));
    // roux's byte-level exports say so (their tokenizer.json is the byte tokenizer).
    let byte_level = config.get("roux_byte_level") == Some(&serde_json::Value::Bool(true)) || (config.get("roux_model").is_some() && !tokenizer && spec.vocab >= 256);
    spec.checkpoint = Some(Checkpoint { dir: dir.to_path_buf(), family, files, dtype, bytes, byte_level, tokenizer, multimodal });
    Ok(spec)
}

/// The largest token id of the tokenizer.json in `dir`: its model's vocabulary (a map of tokens to
/// ids; a Unigram model's list, by position) and its added tokens, read from the JSON alone. None
/// when the file does not read as such (the run, which loads it, says why).
pub fn tokenizer_top_id(loader: &dyn Loader, dir: &Path) -> Option<u64> {
    let text = loader.read_text(&dir.join("tokenizer.json"), 256 << 20).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let vocab = match &v["model"]["vocab"] {
        serde_json::Value::Object(map) => map.values().filter_map(serde_json::Value::as_u64).max(),
        serde_json::Value::Array(list) => (list.len() as u64).checked_sub(1),
        _ => None,
    };
    let added = v["added_tokens"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_u64()).max();
    vocab.max(added)
}

/// `model.safetensors`, the shards the index names, or none (a config alone: plan only).
fn weight_files(loader: &dyn Loader, dir: &Path) -> Result<Vec<String>, String> {
    let index = dir.join(hf::INDEX);
    if matches!(loader.entry(&index), PathKind::File(_)) {
        let text = loader.read_text(&index, hf::MAX_CONFIG)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", hf::INDEX))?;
        return hf::shards(&v).map_err(|e| format!("{} {e}", hf::INDEX));
    }
    Ok(match loader.entry(&dir.join(hf::WEIGHTS)) {
        PathKind::Missing => vec![],
        _ => vec![hf::WEIGHTS.to_string()],
    })
}

/// A safetensors file's tensors and its size, from its header alone.
fn read_header(loader: &dyn Loader, path: &Path) -> Result<(BTreeMap<String, header::TensorEntry>, u64), String> {
    let PathKind::File(size) = loader.entry(path) else { return Err("is missing or not a regular file".into()) };
    let first = loader.read_range(path, 0, 8.min(size))?;
    let n = header::header_len(&first)?;
    let head = loader.read_range(path, 8, n).map_err(|_| format!("declares a {n}-byte header but is only {size} bytes"))?;
    Ok((header::parse(&head, size)?, size))
}

/// The element type most weights are stored in (what `plan` and the report show).
fn dominant_dtype(found: &BTreeMap<String, header::TensorEntry>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in found.values() {
        *counts.entry(e.dtype.as_str()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map_or_else(|| "none".to_string(), |(d, _)| d.to_string())
}
