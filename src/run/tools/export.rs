//! `roux export RUN --to hf`: a dense model as a Hugging Face checkpoint (`config.json` +
//! `model.safetensors`) that `transformers` loads: an imported model as the architecture it came
//! in as (tokenizer files included), a roux model as GPT-2 (learned positions + layernorm + GELU)
//! or Llama (RoPE + RMSNorm + SwiGLU; Qwen2 with q/k/v-only biases, Qwen3 with QK-norm). Names
//! come from the one table import reads (`hf::names`); GPT-2's Conv1D weights are transposed and
//! absent biases written as zeros (the same function).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

use crate::hf::{self, names};
use crate::recipe::{Activation, Family, ModelSpec, Norm, Position};
use crate::run::kit::files::{read_capped, read_tensors, write_atomic, write_tensors_atomic};
use crate::run::kit::tokenize;

/// Which Hugging Face architecture computes the same function as `spec`: the one it was imported
/// from, else GPT-2 or a Llama-like layout by its options.
pub fn family_for(spec: &ModelSpec) -> Result<Family> {
    if let Some(c) = &spec.checkpoint {
        return Ok(c.family);
    }
    if spec.moe.is_some() {
        bail!("model `{}` has mixture-of-experts layers; the Hugging Face export covers dense GPT-2 and Llama layouts", spec.name);
    }
    let layout = plain_layout(spec)?;
    // QK-norm over the whole projections with norms after the sublayers is OLMo 2; either alone
    // has no dense layout (OLMoE's whole QK-norm comes with experts; Qwen3's is per head).
    let gemma = spec.norm_placement == crate::recipe::NormPlacement::Sandwich || spec.norm_offset || spec.embed_scale;
    if gemma || spec.window_rope_theta.is_some() || spec.attn_softcap.is_some() || spec.logit_softcap.is_some() {
        bail!("model `{}` has Gemma's options (sandwich norms, offset norm gains, scaled embeddings, soft caps or a windowed rope base), which only an imported Gemma exports as", spec.name);
    }
    match (layout, spec.qk_norm_whole, spec.norm_placement == crate::recipe::NormPlacement::Post) {
        (Family::Qwen3, true, true) if !spec.bias && spec.window.is_none() => return Ok(Family::Olmo2),
        (_, false, false) => {}
        (f, whole, post) => bail!(
            "model `{}` has {}, which the {} layout has no setting for (OLMo 2 is rope + rmsnorm + swiglu with both, no biases and no window)",
            spec.name,
            match (whole, post) {
                (true, true) => "QK-norm over the whole projections and norms after its sublayers",
                (true, false) => "QK-norm over the whole projections",
                _ => "norms after its sublayers",
            },
            f.name()
        ),
    }
    match (layout, spec.window.is_some()) {
        (f, false) | (f @ (Family::Qwen2 | Family::Qwen3), true) => Ok(f),
        // Mistral is Llama with a window in every block (and no biases).
        (Family::Llama, true) if spec.window_layers.is_none() && !spec.bias => Ok(Family::Mistral),
        (f, true) => bail!(
            "model `{}` has sliding-window attention{}, which the {} layout has no setting for (Mistral's windows every block of a model without biases; Qwen2's and Qwen3's name blocks)",
            spec.name,
            if spec.window_layers.is_some() { " in some blocks" } else { "" },
            f.name()
        ),
    }
}

/// GPT-2 or a Llama-like layout for a model roux defined, by its options (attention windows aside).
fn plain_layout(spec: &ModelSpec) -> Result<Family> {
    match (spec.position, spec.norm, spec.ffn.act) {
        (Position::Learned, Norm::Layernorm, Activation::Gelu) if spec.kv_heads == spec.heads && spec.head_size.is_none() && !spec.qkv_bias && !spec.qk_norm => Ok(Family::Gpt2),
        (Position::Rope, Norm::Rmsnorm, Activation::Swiglu) if spec.qk_norm => Ok(Family::Qwen3),
        (Position::Rope, Norm::Rmsnorm, Activation::Swiglu) if spec.qkv_bias && !spec.bias => Ok(Family::Qwen2),
        (Position::Rope, Norm::Rmsnorm, Activation::Swiglu) if !spec.qkv_bias => Ok(Family::Llama),
        _ => bail!(
            "model `{}` ({} positions, {}, {}, {} of {} key/value heads) matches no layout: GPT-2 is learned + layernorm + gelu \
             with full attention heads, Llama is rope + rmsnorm + swiglu (Qwen2 adds q/k/v biases, Qwen3 QK-norm)",
            spec.name,
            crate::recipe::keyword(&spec.position),
            crate::recipe::keyword(&spec.norm),
            crate::recipe::keyword(&spec.ffn.act),
            spec.kv_heads,
            spec.heads
        ),
    }
}

/// What marks a run directory, which an export never writes into.
const RUN_MARKERS: [&str; 4] = ["report.json", "state.json", "metrics.jsonl", "resolved.json"];

/// The resolved definition of run directory `run` and its model, for an export into `out` (which
/// must not be a run directory: an export never overwrites one).
pub fn run_definition(run: &Path, out: &Path) -> Result<(serde_json::Value, ModelSpec)> {
    crate::run::kit::lifecycle::refuse_to_overwrite(out, &RUN_MARKERS)?;
    let v = read_resolved(run)?;
    let spec = language_model(run, &v)?;
    Ok((v, spec))
}

/// A run directory's resolved.json.
fn read_resolved(run: &Path) -> Result<serde_json::Value> {
    let resolved = run.join("resolved.json");
    let text = read_capped(&resolved, 64 << 20).with_context(|| format!("{} is not a run directory (no resolved.json)", run.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", resolved.display()))
}

/// The language model a run's resolved definition `v` records, or why there is none.
fn language_model(run: &Path, v: &serde_json::Value) -> Result<ModelSpec> {
    if v["model"].is_null() {
        let kind = v["stage"]["kind"].as_str().unwrap_or("this");
        if kind == "reward_model" {
            bail!("{} records no language model to export (a reward_model stage, written with any adapter merged): `roux export {} --to hf` writes it as a sequence classifier", run.display(), run.display());
        }
        bail!("{} records no language model to export (a {kind} stage); export a stage that trains one, or a `roux merge` of a LoRA stage", run.display());
    }
    ModelSpec::from_run_json(&v["model"]).map_err(|e| anyhow::anyhow!("{}: {e}", run.join("resolved.json").display()))
}

/// The weights a finished run wrote (model.safetensors), by name.
fn run_weights(run: &Path) -> Result<HashMap<String, Tensor>> {
    let weights = run.join("model.safetensors");
    if !weights.exists() {
        bail!("{} has no model.safetensors (is the stage finished? a LoRA stage holds an adapter: `roux merge {}` first)", run.display(), run.display());
    }
    Ok(read_tensors(&weights)?.into_iter().collect())
}

/// Export the model of a run directory (its `resolved.json` names the model, `model.safetensors`
/// holds the weights) into `out`, as the architecture it was imported from or the layout that
/// computes the same function; a reward model as a sequence classifier.
pub fn export_hf(run: &Path, out: &Path) -> Result<String> {
    crate::run::kit::lifecycle::refuse_to_overwrite(out, &RUN_MARKERS)?;
    let resolved = read_resolved(run)?;
    if resolved["model"].is_null() && !resolved["reward_trunk"].is_null() {
        return export_reward_hf(run, out, &resolved);
    }
    let spec = language_model(run, &resolved)?;
    let family = export_model(run, out, &resolved, &spec, &run_weights(run)?, &|_, _| {})?;
    Ok(format!("{} layout: config.json, model.safetensors", family.name()))
}

/// Write `spec`'s weights `given` (from run directory `run`) into `out` as its `family_for`
/// checkpoint, with its config and tokenizer; `finish` may change the tensors and the config first.
fn export_model(run: &Path, out: &Path, resolved: &serde_json::Value, spec: &ModelSpec, given: &HashMap<String, Tensor>, finish: &dyn Fn(&mut Vec<(String, Tensor)>, &mut serde_json::Value)) -> Result<Family> {
    let weights = run.join("model.safetensors");
    let family = family_for(spec)?;
    let mut tensors = checkpoint_tensors(spec, family, given).with_context(|| format!("exporting {}", weights.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut config = hf::emit::config(spec, family);
    config["roux_model"] = json!(ModelSpec { checkpoint: None, ..spec.clone() });
    // An imported model takes its tokenizer files along; a BPE run's tokenizer is already in the
    // Hugging Face format; a byte-level model gets the byte tokenizer (token i is byte i), the
    // data's end marker "\n" (byte 10) as its end token.
    let copy = |from: &Path, name: &str| crate::fsio::copy_atomic(from, &out.join(name), tokenize::MAX_BYTES).map_err(anyhow::Error::msg);
    match &spec.checkpoint {
        Some(c) => {
            tokenizer_files(c, resolved, out)?;
            // Its special token ids too (`generate` stops at `eos_token_id`; the family's
            // defaults would name other tokens).
            let path = c.dir.join(hf::CONFIG);
            let original: serde_json::Value = serde_json::from_str(&read_capped(&path, hf::MAX_CONFIG)?).with_context(|| format!("{} is not valid JSON", path.display()))?;
            for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
                if let Some(v) = original.get(key) {
                    config[key] = v.clone();
                }
            }
        }
        None if run.join(tokenize::FILE).exists() => copy(&run.join(tokenize::FILE), "tokenizer.json")?,
        None if spec.vocab >= 256 => {
            let json = tokenize::bytes()?.to_string(true).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
            let tk = json!({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "Ċ", "model_max_length": spec.context, "clean_up_tokenization_spaces": false});
            write_atomic(&out.join("tokenizer_config.json"), serde_json::to_string_pretty(&tk)?.as_bytes())?;
            config["eos_token_id"] = json!(10);
            config["bos_token_id"] = serde_json::Value::Null;
            config["roux_byte_level"] = json!(true);
        }
        None => {}
    }
    finish(&mut tensors, &mut config);
    write_tensors_atomic(&out.join(hf::WEIGHTS), &tensors)?;
    write_atomic(&out.join(hf::CONFIG), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(family)
}


/// A reward model as transformers' `…ForSequenceClassification` with one label (what TRL's
/// RewardTrainer trains and saves): the trunk's tensors (`reward_trunk` in `resolved`) without
/// the language-model head, and `score.weight`, read at the last token that is not padding.
/// transformers' score layer has no bias; roux's head's is a constant every score shares, so its
/// scores are roux's less it (their differences, the preferences, the same): said when written,
/// and kept as `roux_reward_bias`.
fn export_reward_hf(run: &Path, out: &Path, resolved: &serde_json::Value) -> Result<String> {
    let trunk = ModelSpec::from_run_json(&resolved["reward_trunk"]).map_err(|e| anyhow::anyhow!("{}: {e}", run.join("resolved.json").display()))?;
    let family = family_for(&trunk)?;
    let Some(class) = hf::emit::classifier_class(family) else {
        bail!("{}: transformers has no {}ForSequenceClassification to load this reward model as", run.display(), hf::emit::class(family).trim_end_matches("ForCausalLM"));
    };
    let given = run_weights(run)?;
    let weights = run.join("model.safetensors");
    let head = |leaf: &str| given.get(&format!("reward_head.{leaf}")).with_context(|| format!("{} holds no reward head `reward_head.{leaf}`", weights.display()));
    let (w, b) = (head("weight")?.to_kind(Kind::Float), head("bias")?.double_value(&[0]));
    export_model(run, out, resolved, &trunk, &given, &|tensors, config| {
        tensors.retain(|(n, _)| n != "lm_head.weight");
        tensors.push(("score.weight".into(), w.shallow_clone()));
        config["architectures"] = json!([class]);
        config["id2label"] = json!({"0": "LABEL_0"});
        config["label2id"] = json!({"LABEL_0": 0});
        config["roux_reward_bias"] = json!(b);
        // The score is read at the last token that is not padding: a byte model pads with
        // byte 0, which no text holds (its end of sequence, a newline, ends every response).
        if config["pad_token_id"].is_null() {
            config["pad_token_id"] = if config["roux_byte_level"] == json!(true) { json!(0) } else { config["eos_token_id"].clone() };
        }
    })?;
    let bias = if b == 0.0 { String::new() } else { format!("; transformers' score layer has no bias, so its scores are roux's less the head's bias {b:.6} (their differences, the preferences, are the same)") };
    Ok(format!("{} reward model: config.json, model.safetensors{bias}", family.name()))
}

/// An imported checkpoint's tokenizer files into `out`, and the chat template the run's model was
/// trained in (the recipe may name its own; transformers prefers chat_template.jinja to the
/// config's template), as TRL saves its tokenizer beside a model or an adapter.
pub fn tokenizer_files(c: &crate::recipe::Checkpoint, resolved: &serde_json::Value, out: &Path) -> Result<()> {
    for f in hf::TOKENIZER_FILES.iter().filter(|f| c.dir.join(f).is_file()) {
        crate::fsio::copy_atomic(&c.dir.join(f), &out.join(f), tokenize::MAX_BYTES).map_err(anyhow::Error::msg)?;
    }
    if let Some(source) = resolved["chat_template"]["source"].as_str() {
        write_atomic(&out.join("chat_template.jinja"), source.as_bytes())?;
    }
    Ok(())
}

/// The checkpoint's tensors (float32, by their Hugging Face names) from roux's `given` ones.
/// GPT-2 has a bias on every linear and norm: a model without biases exports zeros there.
fn checkpoint_tensors(spec: &ModelSpec, family: Family, given: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let full = if family == Family::Gpt2 { ModelSpec { bias: true, ..spec.clone() } } else { spec.clone() };
    let shapes: HashMap<String, Vec<i64>> = crate::arith::lower_model(&full).params().into_iter().map(|p| (p.name, p.shape.iter().map(|&d| d as i64).collect())).collect();
    let mut parts: BTreeMap<String, Vec<(usize, bool, Tensor)>> = BTreeMap::new();
    for (name, place) in names::places(&full, family) {
        let t = match given.get(&name) {
            Some(t) => t.to_kind(Kind::Float),
            None if name.ends_with(".bias") && !spec.bias => Tensor::zeros(shapes[&name].as_slice(), (Kind::Float, tch::Device::Cpu)),
            None => bail!("no tensor `{name}`"),
        };
        if place.experts.is_some() {
            // One checkpoint tensor per expert.
            for (n, e) in place.names().into_iter().zip(t.unbind(0)) {
                parts.entry(n).or_default().push((0, false, e));
            }
            continue;
        }
        parts.entry(place.hf).or_default().push((place.rows.map_or(0, |r| r.0), place.transposed, t));
    }
    Ok(parts
        .into_iter()
        .map(|(hf_name, mut ps)| {
            ps.sort_by_key(|p| p.0);
            let transposed = ps[0].1;
            let t = Tensor::cat(&ps.into_iter().map(|p| p.2).collect::<Vec<_>>(), 0);
            (hf_name, if transposed { t.tr().contiguous() } else { t.contiguous() })
        })
        .collect())
}
