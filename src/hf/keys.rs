//! Reading a Hugging Face `config.json`: its values in range, and what transformers derives from
//! several keys (the rotary embedding, the attention windows), shared by the families' mappings
//! (`config.rs`, `gemma.rs`).

use serde_json::Value;

use crate::recipe::{Family, RopeScaling};

/// A parsed config, read key by key.
pub(super) struct Reader<'a>(pub(super) &'a Value);

impl Reader<'_> {
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A whole number from 1 to the limit a recipe has for the size it gives (`as_`, a key of
    /// `arith::SIZE_LIMITS`: the same model is as cheap to check written either way); absent,
    /// `default`.
    pub(super) fn size(&self, key: &str, as_: &str, default: Option<usize>) -> Result<usize, String> {
        let max = crate::arith::size_limit(as_);
        match self.get(key) {
            // A default derived from other sizes (`head_dim` = hidden_size / heads) has the
            // same range as a value written out, so that what is read can be written back.
            None => match default {
                Some(n) if (1..=max).contains(&(n as u64)) => Ok(n),
                Some(n) => Err(format!("`{key}` (absent: {n}, from the other sizes) is not a whole number from 1 to {max}")),
                None => Err(format!("has no `{key}`")),
            },
            Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).map(|n| n as usize).ok_or_else(|| format!("`{key}` = {v} is not a whole number from 1 to {max}")),
        }
    }

    pub(super) fn float(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("`{key}` = {v} is not a number")),
        }
    }

    pub(super) fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("`{key}` = {v} is not true or false")),
        }
    }

    pub(super) fn text(&self, key: &str, default: &str) -> Result<String, String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(str::to_string).ok_or_else(|| format!("`{key}` = {v} is not a string")),
        }
    }

    /// Refuse `key` unless absent or equal to `want` (a setting roux does not implement).
    pub(super) fn only(&self, key: &str, want: Value, why: &str) -> Result<(), String> {
        match self.get(key) {
            Some(v) if *v != want => Err(format!("`{key}` = {v}: {why}")),
            _ => Ok(()),
        }
    }
}

/// The attention window and the blocks it applies to (None: every block), as transformers reads
/// the family's config: Mistral, Mixtral, Phi-3 and Qwen3-MoE window every block by
/// `sliding_window`; Qwen2, Qwen3 and Qwen2-MoE the blocks `layer_types` names
/// "sliding_attention", which absent follow from `max_window_layers` (Qwen2-MoE: the even blocks
/// below it), all only with `use_sliding_window`. A window as long as the context is none.
pub(super) fn attention_window(family: Family, r: &Reader, context: usize, layers: usize, default_window: Option<usize>) -> Result<(Option<usize>, Option<Vec<usize>>), String> {
    let explicit_null = r.0.get("sliding_window").is_some_and(Value::is_null);
    let window = match family {
        Family::Mistral | Family::Mixtral | Family::Phi3 | Family::Gemma2 | Family::Gemma3 if r.get("sliding_window").is_some() || (!explicit_null && default_window.is_some()) => Some(r.size("sliding_window", "window", default_window)?),
        Family::Qwen2 | Family::Qwen3 | Family::Qwen2Moe | Family::Qwen3Moe if r.flag("use_sliding_window", false)? && !explicit_null => Some(r.size("sliding_window", "window", Some(4096))?),
        _ => None,
    };
    let per_block = matches!(family, Family::Qwen2 | Family::Qwen3 | Family::Qwen2Moe | Family::Gemma2 | Family::Gemma3);
    let types: Option<Vec<&str>> = match r.get("layer_types") {
        None => None,
        Some(v) => Some(v.as_array().and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>()).ok_or_else(|| format!("`layer_types` = {v} is not a list of strings"))?),
    };
    let typed = types.is_some();
    let sliding: Vec<usize> = match types {
        Some(t) => {
            if t.len() != layers {
                return Err(format!("`layer_types` names {} blocks; the model has {layers}", t.len()));
            }
            if let Some(bad) = t.iter().find(|k| !matches!(**k, "full_attention" | "sliding_attention") || (!per_block && **k != "full_attention")) {
                return Err(format!("`layer_types` holds \"{}\"; roux's blocks attend fully or through `sliding_window`", bad.escape_debug()));
            }
            (0..layers).filter(|i| t[*i] == "sliding_attention").collect()
        }
        None if per_block && window.is_some() => {
            let max = match r.get("max_window_layers") {
                None => 28,
                Some(v) => v.as_u64().filter(|n| *n <= crate::arith::size_limit("layers")).ok_or_else(|| format!("`max_window_layers` = {v} is not a whole number from 0 to {}", crate::arith::size_limit("layers")))?,
            } as usize;
            match family {
                Family::Qwen2Moe => (0..layers.min(max)).filter(|i| i % 2 == 0).collect(),
                // Gemma 2: the even blocks windowed.
                Family::Gemma2 => (0..layers).filter(|i| i % 2 == 0).collect(),
                // Gemma 3: every `sliding_window_pattern`-th block full, the others windowed.
                Family::Gemma3 => {
                    let key = if r.get("sliding_window_pattern").is_some() { "sliding_window_pattern" } else { "_sliding_window_pattern" };
                    let pattern = r.size(key, "layers", Some(6))?;
                    (0..layers).filter(|i| (i + 1) % pattern != 0).collect()
                }
                _ => (max.min(layers)..layers).collect(),
            }
        }
        None => (0..layers).collect(),
    };
    match window {
        Some(w) if w < context && !sliding.is_empty() => Ok((Some(w), (sliding.len() < layers).then_some(sliding))),
        None if per_block && !sliding.is_empty() && typed => Err("`layer_types` names sliding-attention blocks, but `use_sliding_window` is false".into()),
        _ => Ok((None, None)),
    }
}

/// The rotary embedding's base and scaling: `rope_parameters` (transformers 5) or the older
/// `rope_theta` and `rope_scaling`.
pub(super) fn rope(r: &Reader, default_theta: f64) -> Result<(f64, Option<RopeScaling>), String> {
    let params = r.get("rope_parameters").or_else(|| r.get("rope_scaling"));
    let theta = match params.and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null()) {
        Some(v) => v.as_f64().ok_or_else(|| format!("`rope_theta` = {v} is not a number"))?,
        None => r.float("rope_theta", default_theta)?,
    };
    let Some(p) = params else { return Ok((theta, None)) };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str, default: Option<f64>| match p.get(k).filter(|v| !v.is_null()) {
        Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("rope `{k}` = {v} is not a number")),
        None => default.ok_or_else(|| format!("llama3 rope scaling has no `{k}`")),
    };
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let original = num("original_max_position_embeddings", None)?;
            let max = crate::arith::size_limit("context");
            if !(original >= 1.0 && original <= max as f64 && original.fract() == 0.0) {
                return Err(format!("rope `original_max_position_embeddings` = {original} is not a whole number from 1 to {max}"));
            }
            let s = RopeScaling { factor: num("factor", None)?, low_freq_factor: num("low_freq_factor", Some(1.0))?, high_freq_factor: num("high_freq_factor", Some(4.0))?, original_context: original as usize };
            Ok((theta, Some(s)))
        }
        other => Err(format!("rope type `{}` is not supported (roux has default and llama3)", other.escape_debug())),
    }
}
