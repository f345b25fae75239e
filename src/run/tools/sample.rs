//! `roux sample RUN`: generate bytes from a trained stage's model.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

use crate::recipe::ModelSpec;
use crate::run::kit::files::read_capped;
use crate::run::kit::tokenize;
use crate::run::model::{KvCache, Model};

pub fn sample_run(run: &Path, prompt: &str, tokens: usize, temperature: f64, top_k: i64, seed: u64) -> Result<String> {
    let resolved = run.join("resolved.json");
    let text = read_capped(&resolved, 64 << 20).with_context(|| format!("{} is not a run directory (no resolved.json)", run.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", resolved.display()))?;
    let spec = ModelSpec::from_run_json(&v["model"]).map_err(|e| anyhow::anyhow!("{}: {e}", resolved.display()))?;
    let weights = run.join("model.safetensors");
    if !weights.exists() {
        bail!("{} has no model.safetensors yet (is the stage finished?)", run.display());
    }
    if !(temperature >= 0.0 && temperature.is_finite()) {
        bail!("--temperature must be a finite number ≥ 0");
    }
    let device = tch::Device::cuda_if_available();
    let mut model = Model::new(&spec, device)?;
    model.load(&Tensor::read_safetensors(&weights).with_context(|| format!("reading {}", weights.display()))?)?;
    tch::manual_seed(seed as i64);
    // A BPE run keeps its tokenizer beside the model; otherwise tokens are bytes.
    let tk_path = run.join(tokenize::FILE);
    let tk = if tk_path.exists() { Some(tokenize::read(&tk_path)?) } else { None };
    let mut ids: Vec<i64> = match &tk {
        Some(tk) => tokenize::encode(tk, prompt)?.into_iter().map(i64::from).collect(),
        None => prompt.bytes().map(|b| b as i64).collect(),
    };
    if ids.is_empty() {
        ids.push(b'\n' as i64);
    }
    let start = ids.len();
    tch::no_grad(|| {
        // Tokens go through the model once each (KV cache); once the context is full, the last
        // `context` tokens are fed afresh each step, as a model with learned positions needs.
        let mut cache = KvCache::default();
        let mut fed = 0; // how many of `ids` the cache holds
        for _ in 0..tokens {
            if cache.len + (ids.len() - fed) > spec.context {
                cache = KvCache::default();
                fed = ids.len() - spec.context;
            }
            let x = Tensor::from_slice(&ids[fed..]).view([1, -1]).to_device(device);
            fed = ids.len();
            let logits = model.forward_cached(&x, &mut cache).select(1, -1).squeeze_dim(0).to_kind(Kind::Float); // (vocab)
            let next = if temperature == 0.0 {
                logits.argmax(0, false).int64_value(&[])
            } else {
                // Shifted by the maximum first, so a tiny temperature is greedy rather than NaN.
                let mut l = (&logits - logits.max()) / temperature;
                if top_k > 0 && top_k < spec.vocab as i64 {
                    let (vals, _) = l.topk(top_k, 0, true, true);
                    let cut = vals.double_value(&[top_k - 1]);
                    l = l.where_self(&l.ge(cut), &Tensor::from(f64::NEG_INFINITY).to_device(device));
                }
                l.softmax(0, Kind::Float).multinomial(1, true).int64_value(&[0])
            };
            ids.push(next);
        }
    });
    if let Some(tk) = &tk {
        let new: Vec<u32> = ids[start..].iter().map(|&i| i as u32).collect();
        return Ok(format!("{}{}", prompt, tokenize::decode(tk, &new)?));
    }
    let bytes: Vec<u8> = ids.iter().map(|&i| i.clamp(0, 255) as u8).collect();
    Ok(format!("{}{}", prompt, String::from_utf8_lossy(&bytes[start..])))
}
