//! `roux bench import --recipe R`: the time and peak memory of importing the first model of
//! recipe R (a `hf("…")` checkpoint), for bench/import.py to set against `transformers`'
//! `from_pretrained` of the same files in the same run.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

/// What one import cost.
#[derive(serde::Serialize)]
pub struct ImportBench {
    pub params: u64,
    pub seconds: f64,
    /// Peak resident memory of the process before and after the import, in bytes.
    pub peak_before: u64,
    pub peak_after: u64,
}

pub fn bench_import(recipe: &Path) -> Result<ImportBench> {
    let c = crate::frontend::compile(recipe).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(r) = c.recipe else { bail!("{} does not check: {}", recipe.display(), c.diagnostics.first().map_or("", |d| d.message.as_str())) };
    let spec = r.models.first().filter(|m| m.checkpoint.is_some()).context("the recipe's first model is not `hf(\"…\")`")?;
    let peak_before = peak_rss()?;
    let t = Instant::now();
    let model = crate::run::kit::hf::load(spec, tch::Device::Cpu, None)?;
    let seconds = t.elapsed().as_secs_f64();
    Ok(ImportBench { params: model.numel(), seconds, peak_before, peak_after: peak_rss()? })
}

/// The process's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss() -> Result<u64> {
    crate::run::kit::device::process_memory("VmHWM:").context("no VmHWM in /proc/self/status")
}
