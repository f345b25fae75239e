//! `roux run`, `roux sample` and `roux chat`; without the `torch` feature they explain how to get them.

use std::path::Path;

#[cfg(feature = "torch")]
#[allow(clippy::too_many_arguments)]
pub fn run(file: &Path, out: &Path, only: &[String], fresh: bool, force: bool, tensorboard: bool, profile: Option<(u64, u64)>, resume_from: Option<u64>) -> u8 {
    let c = match super::check::load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A sweep's points run one after another, each its own experiment (cached and resumable).
    for recipe in c.recipes() {
        if let Err(e) = roux::run::run_recipe(recipe, c.text_to_keep(), out, only, &roux::run::RunOptions { fresh, force, tensorboard, profile, resume_from }) {
            eprintln!("error: {e:#}");
            return 2;
        }
    }
    0
}

pub use roux::hf::generation::Draw;

/// The command line's sampling flags, for `sample` and `chat`.
#[cfg_attr(not(feature = "torch"), allow(dead_code))] // read only where they can run
pub struct Sampling {
    pub tokens: usize,
    pub draw: Draw,
    pub seed: u64,
    pub bf16: bool,
    pub chat: bool,
}

#[cfg(feature = "torch")]
impl Sampling {
    fn options(&self) -> roux::run::tools::sample::SampleOptions {
        let precision = if self.bf16 { roux::recipe::Precision::Bf16 } else { roux::recipe::Precision::Fp32 };
        roux::run::tools::sample::SampleOptions { tokens: self.tokens, draw: self.draw, seed: self.seed, precision, chat: self.chat }
    }
}

/// Generated text, streamed: each piece printed as it comes.
#[cfg(feature = "torch")]
fn print_piece(piece: &str) {
    use std::io::Write;
    out!("{piece}");
    let _ = std::io::stdout().flush();
}

#[cfg(feature = "torch")]
pub fn sample(run: &Path, prompt: &str, prompt_file: Option<&Path>, system: Option<&str>, s: &Sampling) -> u8 {
    let prompt = match prompt_file {
        Some(f) => match roux::fsio::read_text(f, 1 << 20) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        None => unescape(prompt),
    };
    match roux::run::tools::sample::sample_run(run, &prompt, system, &s.options(), &mut print_piece) {
        Ok(_) => {
            outln!();
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// `roux chat`: each line of standard input a user's message (`/exit` or the end of input ends
/// the conversation), each reply printed as it comes; on a terminal, a `> ` before each message.
#[cfg(feature = "torch")]
pub fn chat(run: &Path, system: Option<&str>, s: &Sampling) -> u8 {
    use std::io::{BufRead, IsTerminal, Write};
    let interactive = std::io::stdin().is_terminal();
    let mut lines = std::io::stdin().lock().lines();
    let mut next = || loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        match lines.next() {
            Some(Ok(line)) if line.trim() == "/exit" => return None,
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => return Some(line),
            _ => return None,
        }
    };
    let mut note = |n: &str| eprintln!("{n}");
    match roux::run::tools::sample::chat(run, system, &s.options(), &mut next, &mut print_piece, &mut note) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// A prompt as typed on a command line: `\n`, `\t` and `\\` are escapes; any other backslash stays.
#[cfg_attr(not(feature = "torch"), allow(dead_code))] // only `sample` reads prompts
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(not(feature = "torch"))]
#[allow(clippy::too_many_arguments)]
pub fn run(_: &Path, _: &Path, _: &[String], _: bool, _: bool, _: bool, _: Option<(u64, u64)>, _: Option<u64>) -> u8 {
    no_torch("run")
}

#[cfg(not(feature = "torch"))]
pub fn sample(_: &Path, _: &str, _: Option<&Path>, _: Option<&str>, _: &Sampling) -> u8 {
    no_torch("sample")
}

#[cfg(not(feature = "torch"))]
pub fn chat(_: &Path, _: Option<&str>, _: &Sampling) -> u8 {
    no_torch("chat")
}

#[cfg(not(feature = "torch"))]
fn no_torch(cmd: &str) -> u8 {
    eprintln!("error: `roux {cmd}` needs libtorch; this roux was built without the `torch` feature (check, plan and graph work)");
    2
}

#[cfg(feature = "torch")]
pub fn bench(which: &str, config: &str, reps: usize, steps: usize, recipe: Option<&std::path::Path>) -> u8 {
    use roux::run::tools::bench;
    let r = match which {
        "import" => match recipe {
            Some(r) => roux::run::tools::import_bench::bench_import(r).map(|b| outln!("{}", serde_json::json!(b))),
            None => Err(anyhow::anyhow!("`roux bench import` needs --recipe R (a recipe whose first model is hf(\"…\"))")),
        },
        "moe" => bench::bench_moe(reps.max(1), steps.max(1)).map(|b| show_moe(&b)),
        "generate" => bench::bench_generate(config, reps.max(1)).map(|b| show_generate(&b)),
        "recompute" => bench::bench_recompute(config, reps.max(1), steps.max(1)).map(|b| show_recompute(&b)),
        "muon" => bench::bench_muon(config, reps.max(1), steps.max(1)).map(|b| show_muon(&b)),
        _ => bench::bench_config(config, steps.max(1)).map(|v| outln!("{v}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(feature = "torch")]
fn show_moe(b: &roux::run::tools::bench::MoeBench) {
    let (reps, steps) = (b.reps, b.steps);
    outln!("roux bench moe — {}, {} threads, batch {} × {} tokens, {reps} interleaved reps × {steps} steps, median", b.device, b.threads, b.batch, b.context);
    outln!("{:<12} {:>12} {:>12} {:>12} {:>10}", "model", "params", "active", "ms/step", "tok/s");
    let tokens = (b.batch * b.context) as f64;
    for r in &b.rows {
        outln!("{:<12} {:>12} {:>12} {:>12.1} {:>10.0}", r.name, r.params, r.active, r.secs * 1e3, tokens / r.secs);
    }
    let t: Vec<f64> = b.rows.iter().map(|r| r.secs).collect();
    outln!("64 vs 8 experts: {:.2}× (target ≤ 1.3×)", t[2] / t[1]);
    outln!("8 experts vs dense of equal active parameters: {:.2}× (target ≤ 1.6×)", t[1] / t[0]);
    outln!("64 experts vs dense: {:.2}×", t[2] / t[0]);
}

#[cfg(feature = "torch")]
fn show_recompute(b: &roux::run::tools::bench::RecomputeBench) {
    let mib = |x: u64| x as f64 / 1048576.0;
    let s = &b.setup;
    outln!("roux bench recompute — {} on {}, batch {} × {} tokens, {} interleaved reps × {} steps, median", s.config, s.device, s.batch, s.context, s.reps, s.steps);
    outln!("  without activation checkpointing {:>9.1} ms/step, activations {:>8.1} MiB (plan)", b.secs[0] * 1e3, mib(b.activation_bytes[0]));
    outln!("  with activation checkpointing    {:>9.1} ms/step, activations {:>8.1} MiB (plan)", b.secs[1] * 1e3, mib(b.activation_bytes[1]));
    outln!("  {:.2}× the time (one more forward pass: expect about 1.33×) for {:.2}× the activations", b.secs[1] / b.secs[0], b.activation_bytes[1] as f64 / b.activation_bytes[0].max(1) as f64);
}

#[cfg(feature = "torch")]
fn show_muon(b: &roux::run::tools::bench::MuonBench) {
    let s = &b.setup;
    outln!("roux bench muon — {} on {}, batch {} × {} tokens, {} interleaved reps × {} steps from the same weights, median", s.config, s.device, s.batch, s.context, s.reps, s.steps);
    outln!("  AdamW (lr 1e-3)                       {:>9.1} ms/step, held-out loss {:.4}", b.secs[0] * 1e3, b.val_loss[0]);
    outln!("  Muon (lr 0.02) on the blocks' matrices {:>8.1} ms/step, held-out loss {:.4}", b.secs[1] * 1e3, b.val_loss[1]);
    outln!("  {:.2}× the time per step (its Newton–Schulz iterations) for {:+.4} nats of held-out loss", b.secs[1] / b.secs[0], b.val_loss[1] - b.val_loss[0]);
}

#[cfg(feature = "torch")]
fn show_generate(b: &roux::run::tools::bench::GenerateBench) {
    let tokens = (b.rows * b.new) as f64;
    outln!("{}: {} rows × {} new tokens (prompt {}, context {}), greedy, median of {}", b.config, b.rows, b.new, b.prompt, b.context, b.reps);
    outln!("  KV cache      {:>10.0} tokens/s", tokens / b.cached);
    outln!("  whole prefix  {:>10.0} tokens/s", tokens / b.uncached);
    outln!("  speed-up {:.2}×; same tokens: {}", b.uncached / b.cached, if b.same { "yes" } else { "NO" });
}

#[cfg(not(feature = "torch"))]
pub fn bench(_: &str, _: &str, _: usize, _: usize, _: Option<&std::path::Path>) -> u8 {
    no_torch("bench")
}

#[cfg(feature = "torch")]
pub fn export(run: &Path, to: &str, output: Option<&Path>, base: Option<&str>) -> u8 {
    let out = output.map_or_else(|| run.join(to), Path::to_path_buf);
    let done = match to {
        "peft" => roux::run::tools::peft::export_peft(run, &out, base).map(|l| format!("{} layout: adapter_config.json, adapter_model.safetensors", l.name())),
        _ => roux::run::tools::export::export_hf(run, &out),
    };
    match done {
        Ok(what) => {
            eprintln!("wrote {} ({what})", out.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(not(feature = "torch"))]
pub fn export(_: &Path, _: &str, _: Option<&Path>, _: Option<&str>) -> u8 {
    no_torch("export")
}

#[cfg(feature = "torch")]
pub fn merge(run: &Path, output: Option<&Path>) -> u8 {
    let out = output.map_or_else(|| run.join("merged"), Path::to_path_buf);
    match roux::run::tools::merge::merge_run(run, &out) {
        Ok(m) => {
            eprintln!("wrote {} (model.safetensors, resolved.json): `{}`'s adapter merged into {}", out.display(), m.stage, m.base);
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
