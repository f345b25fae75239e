//! `roux export RUN --to peft`: a LoRA fine-tuning stage's adapter as a PEFT adapter
//! (`adapter_config.json` + `adapter_model.safetensors`) for the Hugging Face export of its base
//! (`roux export BASE_RUN --to hf`), which `peft.PeftModel.from_pretrained` loads; with an
//! imported base, its tokenizer files and the chat template trained in beside it.
//!
//! Names follow the export's layout. GPT-2 keeps q, k and v in one Conv1D (`c_attn`): adapters
//! on several of them become one adapter of the summed rank on it, the A matrices stacked and
//! each B placed at its projection's rows (a block matrix with the same product), with alpha
//! scaled alike so that alpha/rank, the scale, is unchanged (`rank_pattern`, `alpha_pattern`).
//! Under DoRA the module's magnitude covers all its rows: a row no roux adapter covers (GPT-2's
//! k rows when only q and v are adapted) keeps ‖W‖ of that row, read from the base export
//! (`--base`), so PEFT's factor m/‖W‖ is exactly 1 there.
//! An adapter on stacked experts goes out as one adapter per expert (`expert_parts`), the form
//! PEFT converts onto transformers 5's fused experts as it loads.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

use super::export::{family_for, run_definition};
use crate::hf::{self, names};
use crate::recipe::{Family, LoraSpec, ModelSpec};
use crate::run::kit::files::{read_capped, read_tensors, with_mapped, write_atomic, write_tensors_atomic};

/// One roux adapter inside a PEFT module: the rows of the module's output it covers, A and B.
struct Part {
    rows: (i64, i64),
    a: Tensor,
    b: Tensor,
    /// DoRA's magnitude of these rows.
    magnitude: Option<Tensor>,
}

/// Where a roux adapter path (`blocks.3.attn.q`) lives in the architecture: the Hugging Face
/// module and the first row of its output that the projection writes (the import's name table).
fn module_of(family: Family, path: &str, spec: &ModelSpec) -> Result<(String, i64)> {
    let weight = format!("{path}.weight");
    let place = names::places(spec, family).into_iter().find(|(n, _)| *n == weight).map(|(_, p)| p);
    let found = place.and_then(|p| Some((p.hf.strip_suffix(".weight")?.to_string(), p.rows.map_or(0, |r| r.0 as i64))));
    found.with_context(|| format!("adapter `{path}` has no module in the {} layout", family.name()))
}

/// Rows of a module's output (its weight's `out` dimension; GPT-2 stores weights as (in, out)).
fn module_rows(family: Family, module: &str, spec: &ModelSpec) -> i64 {
    let shapes = names::expected_shapes(spec, family);
    let s = shapes.get(&format!("{module}.weight")).map_or(&[][..], Vec::as_slice);
    let out = if family == Family::Gpt2 { s.get(1) } else { s.first() };
    out.copied().unwrap_or(0) as i64
}

/// Export the adapter of a finished LoRA stage (`run`) into `out`; `base` is written into the
/// config as `base_model_name_or_path` (the base's Hugging Face export).
pub fn export_peft(run: &Path, out: &Path, base: Option<&str>) -> Result<Family> {
    let (v, spec) = run_definition(run, out)?;
    let resolved = run.join("resolved.json");
    let lora: LoraSpec = match v["stage"].get("lora").filter(|l| !l.is_null()) {
        Some(l) => serde_json::from_value(l.clone()).map_err(|e| anyhow::anyhow!("{}: the stage's `lora`: {e}", resolved.display()))?,
        None => bail!("{} is not a LoRA stage (no adapter); `roux export {} --to hf` exports a full model", run.display(), run.display()),
    };
    let file = run.join("adapter.safetensors");
    if !file.exists() {
        bail!("{} has no adapter.safetensors yet (is the stage finished?)", run.display());
    }
    let layout = family_for(&spec)?;
    let tensors: BTreeMap<String, Tensor> = read_tensors(&file)?.into_iter().collect();
    // Group the adapters by the module they land in.
    let mut modules: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (name, a) in &tensors {
        let Some(path) = name.strip_suffix(".lora_A.weight") else { continue };
        let b = tensors.get(&format!("{path}.lora_B.weight")).with_context(|| format!("{}: `{path}` has lora_A but no lora_B", file.display()))?;
        if a.dim() == 3 {
            for (module, part) in expert_parts(layout, path, a, b, &spec, run)? {
                modules.entry(module).or_default().push(part);
            }
            continue;
        }
        let (module, first_row) = module_of(layout, path, &spec)?;
        let magnitude = match tensors.get(&format!("{path}.lora_magnitude_vector")) {
            Some(m) => Some(m.to_kind(Kind::Float)),
            None if lora.dora => bail!("{}: the DoRA adapter `{path}` has no lora_magnitude_vector", file.display()),
            None => None,
        };
        let part = Part { rows: (first_row, b.size()[0]), a: a.to_kind(Kind::Float), b: b.to_kind(Kind::Float), magnitude };
        modules.entry(module).or_default().push(part);
    }
    if modules.is_empty() {
        bail!("{} holds no adapter tensors", file.display());
    }
    refuse_remapped_mlp(layout, &modules, run)?;
    refuse_half_fused_experts(layout, &modules, &lora, run)?;
    let rank = lora.rank as i64;
    let (mut named, mut rank_pattern, mut alpha_pattern) = (vec![], serde_json::Map::new(), serde_json::Map::new());
    for (module, mut parts) in modules {
        parts.sort_by_key(|p| p.rows.0);
        let n = parts.len() as i64;
        let a = Tensor::cat(&parts.iter().map(|p| p.a.shallow_clone()).collect::<Vec<_>>(), 0); // (n·r, in)
        let rows = module_rows(layout, &module, &spec);
        let b = Tensor::zeros([rows, n * rank], (Kind::Float, tch::Device::Cpu));
        for (k, p) in parts.iter().enumerate() {
            b.narrow(0, p.rows.0, p.rows.1).narrow(1, k as i64 * rank, rank).copy_(&p.b);
        }
        if lora.dora {
            let covered: i64 = parts.iter().map(|p| p.rows.1).sum();
            let magnitude = if covered == rows { Tensor::zeros([rows], (Kind::Float, tch::Device::Cpu)) } else { base_row_norms(base, &module, layout)? };
            for p in &parts {
                magnitude.narrow(0, p.rows.0, p.rows.1).copy_(p.magnitude.as_ref().expect("read above under DoRA"));
            }
            named.push((format!("base_model.model.{module}.lora_magnitude_vector"), magnitude));
        }
        if n > 1 {
            rank_pattern.insert(module.clone(), json!(n * rank));
            // PEFT scales the block of rank n·r by its alpha over n·r (over √(n·r) under
            // rsLoRA): an alpha of n·α (√n·α) keeps each part's α/r (α/√r).
            alpha_pattern.insert(module.clone(), json!(if lora.rslora { (n as f64).sqrt() } else { n as f64 } * lora.alpha));
        }
        named.push((format!("base_model.model.{module}.lora_A.weight"), a.contiguous()));
        named.push((format!("base_model.model.{module}.lora_B.weight"), b.contiguous()));
    }
    let targets: Vec<String> = named.iter().filter_map(|(n, _)| n.strip_suffix(".lora_A.weight")?.strip_prefix("base_model.model.").map(str::to_string)).collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": layout == Family::Gpt2,
        "bias": "none",
        "use_rslora": lora.rslora,
        "use_dora": lora.dora,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
    });
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_tensors_atomic(&out.join("adapter_model.safetensors"), &named)?;
    write_atomic(&out.join("adapter_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    if let Some(c) = &spec.checkpoint {
        super::export::tokenizer_files(c, &v, out)?;
    }
    Ok(layout)
}

/// A stack's adapter as PEFT reads one for transformers 5's fused experts: an adapter per expert
/// on the checkpoint's per-expert linear (`…experts.3.w1`, Mixtral's; OLMoE's and Qwen3-MoE's
/// `…experts.3.gate_proj`), which PEFT fuses as it loads (`_convert_peft_config_moe`: the experts
/// stacked, gate and up side by side with their B matrices block-diagonal).
fn expert_parts(layout: Family, path: &str, a: &Tensor, b: &Tensor, spec: &ModelSpec, run: &Path) -> Result<Vec<(String, Part)>> {
    let whole = || {
        format!("Export the fine-tuned model whole instead: `roux merge {}`, then `roux export {} --to hf`", run.display(), run.join("merged").display())
    };
    if !matches!(layout, Family::Mixtral | Family::Olmoe | Family::Qwen3Moe) {
        bail!("{}: the adapter on the stacked experts `{path}` cannot be written for PEFT in the {} layout: PEFT converts the expert adapters of Mixtral, OLMoE and Qwen3-MoE only. {}", run.display(), layout.name(), whole());
    }
    let place = names::places(spec, layout).into_iter().find(|(n, _)| n == path).map(|(_, p)| p);
    // (Those families have no shared expert: every stack is one checkpoint linear per expert.)
    let module = place.as_ref().filter(|p| p.hf.contains("{}")).and_then(|p| p.hf.strip_suffix(".weight"));
    let module = module.with_context(|| format!("adapter `{path}` has no per-expert module in the {} layout", layout.name()))?;
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    Ok((0..a.size()[0]).map(|e| (module.replace("{}", &e.to_string()), Part { rows: (0, b.size()[1]), a: a.get(e), b: b.get(e), magnitude: None })).collect())
}

/// PEFT fuses the experts' gate and up projections as it loads, so it takes adapters on both or
/// on neither (and, under rsLoRA, rescales the fused pair by √2).
fn refuse_half_fused_experts(layout: Family, modules: &BTreeMap<String, Vec<Part>>, lora: &LoraSpec, run: &Path) -> Result<()> {
    let (gate, up) = if layout == Family::Mixtral { ("w1", "w3") } else { ("gate_proj", "up_proj") };
    let experts = |leaf: &str| -> std::collections::BTreeSet<String> {
        modules.keys().filter_map(|m| m.strip_suffix(&format!(".{leaf}")).filter(|p| p.contains(".experts.")).map(str::to_string)).collect()
    };
    let (gates, ups) = (experts(gate), experts(up));
    let whole = format!("or export the fine-tuned model whole: `roux merge {}`, then `roux export {} --to hf`", run.display(), run.join("merged").display());
    if let Some(m) = gates.symmetric_difference(&ups).next() {
        bail!("{}: `{m}` has an adapter on one of {gate} and {up}, which PEFT fuses as it loads a {} model's experts: target `experts.w1` and `experts.w3` together, {whole}", run.display(), layout.name());
    }
    if lora.rslora && !gates.is_empty() {
        bail!("{}: PEFT scales the experts' fused {gate} and {up} adapters of a {} model by twice the alpha over √(twice the rank), not rsLoRA's alpha over √rank: leave `rslora` out, {whole}", run.display(), layout.name());
    }
    Ok(())
}

/// With transformers 5, PEFT (0.21) reads every target named as a Mixtral, OLMoE or Qwen3-MoE
/// MLP projection as the experts' fused weights (`_convert_peft_config_moe`), so an adapter on a
/// dense block's MLP (Qwen3-MoE's `mlp_only_layers`) would load onto the experts, or not at all.
fn refuse_remapped_mlp(layout: Family, modules: &BTreeMap<String, Vec<Part>>, run: &Path) -> Result<()> {
    const REMAPPED: [&str; 6] = ["gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"];
    if !matches!(layout, Family::Mixtral | Family::Olmoe | Family::Qwen3Moe) {
        return Ok(());
    }
    if let Some(m) = modules.keys().find(|m| REMAPPED.iter().any(|leaf| m.ends_with(&format!(".mlp.{leaf}")))) {
        bail!(
            "{}: the adapter on `{m}` (a dense block's MLP) cannot be loaded by PEFT as trained: with transformers 5 it reads every MLP projection \
             target of a {} model as the experts' fused weights. Export the fine-tuned model whole instead: `roux merge {}`, then \
             `roux export {} --to hf`",
            run.display(),
            layout.name(),
            run.display(),
            run.join("merged").display()
        );
    }
    Ok(())
}

/// ‖W‖ of each output row of `module` in the base export `base` (a Hugging Face directory).
fn base_row_norms(base: Option<&str>, module: &str, layout: Family) -> Result<Tensor> {
    let dir = base.map(Path::new).filter(|d| d.is_dir()).with_context(|| {
        format!("DoRA on part of `{module}` needs the base's weights for the rows no adapter covers: pass --base DIR, the base's `roux export … --to hf` directory")
    })?;
    let weight = format!("{module}.weight");
    let index = dir.join(hf::INDEX);
    let file = if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&read_capped(&index, hf::MAX_CONFIG)?).with_context(|| format!("{}: not JSON", index.display()))?;
        hf::shards(&v).map_err(|e| anyhow::anyhow!("{}: {e}", index.display()))?;
        let shard = v["weight_map"][&weight].as_str().with_context(|| format!("{} maps no `{weight}`", index.display()))?;
        dir.join(shard)
    } else {
        dir.join(hf::WEIGHTS)
    };
    with_mapped(&file, |tensors| {
        let (_, w) = tensors.iter().find(|(n, _)| *n == weight).with_context(|| format!("{} has no tensor `{weight}`", file.display()))?;
        // GPT-2's Conv1D stores (in, out): its rows are columns.
        let dim = if layout == Family::Gpt2 { 0 } else { 1 };
        Ok(w.to_kind(Kind::Float).linalg_norm(2.0, &[dim][..], false, None::<Kind>))
    })
}
