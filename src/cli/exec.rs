//! `roux run` and `roux sample`; without the `torch` feature they explain how to get them.

use std::path::{Path, PathBuf};

#[cfg(feature = "torch")]
pub fn run(file: &Path, out: &Path, only: &[String], fresh: bool, force: bool) -> u8 {
    let c = match super::check::load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A sweep's points run one after another, each its own experiment (cached and resumable).
    for recipe in c.recipes() {
        if let Err(e) = roux::run::run_recipe(recipe, &c.source.text, out, only, &roux::run::RunOptions { fresh, force }) {
            eprintln!("error: {e:#}");
            return 2;
        }
    }
    0
}

#[cfg(feature = "torch")]
pub fn sample(run: &PathBuf, prompt: &str, tokens: usize, temperature: f64, top_k: i64, seed: u64) -> u8 {
    match roux::run::sample::sample_run(run, prompt, tokens, temperature, top_k, seed) {
        Ok(text) => {
            outln!("{text}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(not(feature = "torch"))]
pub fn run(_: &Path, _: &Path, _: &[String], _: bool, _: bool) -> u8 {
    no_torch("run")
}

#[cfg(not(feature = "torch"))]
pub fn sample(_: &PathBuf, _: &str, _: usize, _: f64, _: i64, _: u64) -> u8 {
    no_torch("sample")
}

#[cfg(not(feature = "torch"))]
fn no_torch(cmd: &str) -> u8 {
    eprintln!("error: `roux {cmd}` needs libtorch; this roux was built without the `torch` feature (check, plan and graph work)");
    2
}

#[cfg(feature = "torch")]
pub fn bench(which: &str, config: &str, reps: usize, steps: usize) -> u8 {
    let r = match which {
        "moe" => roux::run::bench::bench_moe(reps.max(1), steps.max(1)),
        "generate" => roux::run::bench::bench_generate(config, reps.max(1)),
        _ => roux::run::bench::bench_config(config, steps.max(1)),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(not(feature = "torch"))]
pub fn bench(_: &str, _: &str, _: usize, _: usize) -> u8 {
    no_torch("bench")
}

#[cfg(feature = "torch")]
pub fn export(run: &Path, output: Option<&Path>) -> u8 {
    let out = output.map_or_else(|| run.join("hf"), Path::to_path_buf);
    match roux::run::export::export_hf(run, &out) {
        Ok(layout) => {
            eprintln!("wrote {} ({layout:?} layout: config.json, model.safetensors)", out.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(not(feature = "torch"))]
pub fn export(_: &Path, _: Option<&Path>) -> u8 {
    no_torch("export")
}

#[cfg(feature = "torch")]
pub fn merge(run: &Path, output: Option<&Path>) -> u8 {
    let out = output.map_or_else(|| run.join("merged"), Path::to_path_buf);
    match roux::run::lora::merge_run(run, &out) {
        Ok(()) => {
            eprintln!("wrote {} (model.safetensors, resolved.json)", out.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(not(feature = "torch"))]
pub fn merge(_: &Path, _: Option<&Path>) -> u8 {
    no_torch("merge")
}
