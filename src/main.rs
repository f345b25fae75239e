//! The `roux` command line. Exit codes: 0 success, 1 invalid recipe, 2 usage or I/O error.

/// println!/print! that end quietly when stdout is closed (`roux plan | head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        if write!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod cli;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "roux", version, about = "A declarative language for language-model experiments")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Let recipes read files under DIR, outside their project (repeatable).
    #[arg(long = "allow-path", global = true, value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Override a recipe value, checked like the file: `--set lm.d_model=256`,
    /// `--set pretrain.optimizer.lr=1e-3` (repeatable).
    #[arg(long = "set", global = true, value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Only warnings and errors; no progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Debug events too.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// `json`: one JSON object per log event and progress interval, on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Form {
    Roux,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DiagFormat {
    Text,
    Json,
    Github,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check recipes: every error of every file, with file:line:col and a hint.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: DiagFormat,
    },
    /// Format recipes in place in the canonical layout (comments kept); `--check` only reports.
    /// `--to yaml|roux` converts one recipe between the two forms (to stdout, or `-o FILE`).
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing; exit 1 when a file is not formatted, naming it.
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum)]
        to: Option<Form>,
        #[arg(short, long, requires = "to")]
        output: Option<PathBuf>,
    },
    /// Shell completions for bash, zsh, fish, elvish or powershell, on stdout.
    Completions {
        shell: clap_complete::Shell,
    },
    /// Parameters, FLOPs and memory of every model and stage, without running anything.
    Plan {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also plan every train stage on N data-parallel processes: per process its batch,
        /// memory and the bytes its collectives send per step.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
        world: Option<u32>,
    },
    /// The model graphs and the stage graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Run every stage of a recipe in dependency order.
    Run {
        file: PathBuf,
        /// Where runs go (runs/<experiment>/<stage>/ under it).
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Only run these stages (their inputs must already be trained).
        #[arg(long)]
        stage: Vec<String>,
        /// Set existing runs of these stages aside (renamed, not deleted) and train from scratch.
        /// Without it, a finished identical stage is reused and an interrupted one resumes.
        #[arg(long)]
        fresh: bool,
        /// Resume checkpoints even where the stage's definition changed since they were written.
        #[arg(long, conflicts_with = "fresh")]
        force: bool,
        /// Do not write TensorBoard event files beside metrics.jsonl.
        #[arg(long)]
        no_tensorboard: bool,
        /// Profile training steps A to B (`--profile 11..13`, or one step): libtorch's profiler
        /// writes a Chrome trace (operators, and CUDA kernels on a GPU) as trace.json in the
        /// stage's directory; open it in Perfetto or chrome://tracing.
        #[arg(long, value_name = "A..B", value_parser = step_range)]
        profile: Option<(u64, u64)>,
        /// Run as N processes on this machine, one per device, under torchrun (data parallel:
        /// each takes its share of every batch). For several machines, start torchrun yourself.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        nproc: Option<u16>,
        /// Resume from this kept checkpoint rather than the newest (`ckpt-40`, as in the
        /// stage's directory; with several stages, name one with --stage).
        #[arg(long, value_name = "ckpt-N", value_parser = checkpoint_step, conflicts_with = "fresh")]
        resume_from: Option<u64>,
    },
    /// Compute-optimal parameters, tokens, FLOPs and predicted loss for a budget.
    Budget {
        /// Training compute in FLOPs (1e21, 2.5e20, …).
        #[arg(long)]
        flops: Option<String>,
        /// Parameters (1e9, 70B, …).
        #[arg(long)]
        params: Option<String>,
        /// Training tokens (20B, 1.4T, …).
        #[arg(long)]
        tokens: Option<String>,
        /// chinchilla | chinchilla.approach3 | kaplan | a `roux fit --json` file.
        #[arg(long, default_value = "chinchilla")]
        law: String,
        #[arg(long)]
        json: bool,
    },
    /// Fit a scaling law (Approaches 2 and 3 of Hoffmann et al.) to params,tokens,loss points.
    Fit {
        points: PathBuf,
        #[arg(long)]
        json: bool,
        /// Bootstrap resamples for the intervals.
        #[arg(long, default_value_t = 100)]
        bootstrap: usize,
        /// Write isoflop.svg and fit.json here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmarks measured as ratios in one run: `moe` (64 vs 8 experts vs dense).
    Bench {
        /// `moe`; `transformer` with --config for one line of bench/compare.py's table;
        /// `generate` (--config) for generation with and without the KV cache; `recompute`
        /// (--config) for training steps with and without activation checkpointing; `muon`
        /// (--config) for steps and held-out loss under AdamW and Muon; `import` (--recipe) for
        /// the time and peak memory of importing a recipe's `hf("…")` model.
        #[arg(value_parser = ["moe", "transformer", "generate", "recompute", "muon", "import"])]
        which: String,
        /// tiny | small | medium | switch-8 | switch-64 (with `transformer`, `generate`, `recompute`, `muon`).
        #[arg(long, default_value = "tiny")]
        config: String,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// With `import`: a recipe whose first model is `hf("…")`.
        #[arg(long)]
        recipe: Option<PathBuf>,
    },
    /// Redraw a run directory's plots (loss, learning rate, expert load) and its report.html;
    /// with several runs, or an experiment's directory, one page comparing them (a chart per
    /// metric with a line per run, their results, and what differs between their definitions).
    Report {
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Where the comparison page goes (default: compare.html in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write a run's model in another ecosystem's format: `--to hf` gives config.json and
    /// model.safetensors in GPT-2 or Llama layout, loadable by `transformers`.
    Export {
        run: PathBuf,
        /// hf: the model as a Hugging Face checkpoint; peft: a LoRA stage's adapter as a PEFT
        /// adapter for the Hugging Face export of its base.
        #[arg(long, value_parser = ["hf", "peft"], default_value = "hf")]
        to: String,
        /// Output folder (default: RUN/hf, RUN/peft).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// With --to peft: the base model's Hugging Face folder, written into the adapter's
        /// config as `base_model_name_or_path`.
        #[arg(long)]
        base: Option<String>,
    },
    /// Fold a LoRA fine-tuning stage's adapter into its base: a plain model in RUN/merged
    /// (or -o DIR) that `sample` and `export` read.
    Merge {
        run: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Generate text from a trained stage's model.
    Sample {
        /// A run directory, such as runs/demo/pretrain.
        run: PathBuf,
        /// The text to continue; `\n`, `\t` and `\\` are escapes.
        #[arg(long, default_value = "\\n")]
        prompt: String,
        /// Read the prompt from a file instead (as it is, no escapes).
        #[arg(long, conflicts_with = "prompt")]
        prompt_file: Option<PathBuf>,
        #[command(flatten)]
        sampling: Sampling,
        /// The prompt is a user's message: apply the imported model's chat template, print the
        /// reply alone and stop at its end-of-sequence token.
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user's.
        #[arg(long, requires = "chat")]
        system: Option<String>,
    },
    /// Converse with a finished stage's model through its chat template: each line of standard
    /// input is a user's message, each reply is printed as it comes and joins the conversation.
    Chat {
        /// A run directory of an imported model's stage (or a `roux merge` of one).
        run: PathBuf,
        /// A system message at the start of the conversation.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: Sampling,
    },
}

/// How `sample` and `chat` draw each token. Unset, a model imported with `hf(…)` draws as its
/// checkpoint's generation_config.json says (as `transformers`' generate does); others sample at
/// temperature 0.8.
#[derive(clap::Args)]
struct Sampling {
    /// Tokens to generate (at most 1,000,000), printed as they come.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tokens: u64,
    /// 0 is greedy [default: 0.8, or the checkpoint's]
    #[arg(long)]
    temperature: Option<f64>,
    /// Keep the k most likely tokens (0: all) [default: 0, or the checkpoint's]
    #[arg(long)]
    top_k: Option<i64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability (1: all) [default:
    /// 1, or the checkpoint's]
    #[arg(long)]
    top_p: Option<f64>,
    /// Keep the tokens at least this share of the most likely one's probability (0: all)
    /// [default: 0, or the checkpoint's]
    #[arg(long)]
    min_p: Option<f64>,
    /// Divide the positive logits (multiply the negative ones) of tokens already in the text by
    /// this, greedy or not, as transformers' `repetition_penalty` (1: none) [default: 1, or the
    /// checkpoint's]
    #[arg(long)]
    repetition_penalty: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute precision of the forward passes: fp32, or bf16 (bfloat16, as a stage's
    /// `precision = bf16`; about twice as fast on a GPU).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16"])]
    precision: String,
}

fn main() -> ExitCode {
    #[cfg(feature = "torch")]
    roux::run::tune_allocator();
    let cli = Cli::parse();
    let _ = cli::ALLOWED_PATHS.set(cli.allow_path.clone());
    let _ = cli::OVERRIDES.set(cli.set.clone());
    if let Command::Run { nproc: Some(n), file, .. } = &cli.command {
        if *n > 1 {
            return ExitCode::from(cli::launch::exec_under_torchrun(file, *n));
        }
    }
    // In a torchrun job rank 0 speaks for the run; the others print warnings and errors only.
    let follower = std::env::var("RANK").ok().and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r > 0);
    roux::logging::init(cli.quiet || follower, cli.log_format == LogFormat::Json, cli.verbose);
    #[cfg(feature = "torch")]
    if matches!(cli.command, Command::Run { .. } | Command::Bench { .. }) {
        roux::run::exec_compact_malloc();
    }
    let code = match cli.command {
        Command::Check { files, format } => cli::check::run(&files, format),
        Command::Fmt { files, check, to, output } => cli::fmt::run(&files, check, to, output.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "roux", &mut std::io::stdout());
            0
        }
        Command::Plan { file, json, world } => cli::plan::run(&file, json, world.map(|w| w as usize)),
        Command::Graph { file, format } => cli::plan::graph(&file, format),
        Command::Run { file, out, stage, fresh, force, no_tensorboard, profile, nproc: _, resume_from } => cli::exec::run(&file, &out, &stage, fresh, force, !no_tensorboard, profile, resume_from),
        Command::Budget { flops, params, tokens, law, json } => cli::scaling::budget(flops, params, tokens, &law, json),
        Command::Fit { points, json, bootstrap, out } => cli::scaling::fit(&points, json, bootstrap, out.as_deref()),
        Command::Bench { which, config, reps, steps, recipe } => cli::exec::bench(&which, &config, reps, steps, recipe.as_deref()),
        Command::Report { runs, output } => cli::plan::report(&runs, output.as_deref()),
        Command::Export { run, to, output, base } => cli::exec::export(&run, &to, output.as_deref(), base.as_deref()),
        Command::Merge { run, output } => cli::exec::merge(&run, output.as_deref()),
        Command::Sample { run, prompt, prompt_file, sampling, chat, system } => cli::exec::sample(&run, &prompt, prompt_file.as_deref(), system.as_deref(), &sampling.options(chat)),
        Command::Chat { run, system, sampling } => cli::exec::chat(&run, system.as_deref(), &sampling.options(true)),
    };
    ExitCode::from(code)
}

/// `ckpt-N` (or `ckpt-N.safetensors`, or `N`): the step of a kept checkpoint.
fn checkpoint_step(s: &str) -> Result<u64, String> {
    let n = s.trim().trim_end_matches(".safetensors");
    let n = n.strip_prefix("ckpt-").unwrap_or(n);
    n.parse::<u64>().ok().filter(|&n| (1..=1_000_000_000_000).contains(&n)).ok_or_else(|| format!("`{s}` is not a checkpoint like `ckpt-40` (the file names in the stage's directory)"))
}

/// `A..B` or `A` (steps counted from 1, A ≤ B).
fn step_range(s: &str) -> Result<(u64, u64), String> {
    let step = |t: &str| t.trim().parse::<u64>().ok().filter(|&n| (1..=1_000_000_000_000).contains(&n));
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (step(a), step(b.trim_start_matches('='))),
        None => (step(s), step(s)),
    };
    match (a, b) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        _ => Err(format!("`{s}` is not a range of steps like `11..13` (steps from 1, the first not after the last)")),
    }
}

impl Sampling {
    fn options(&self, chat: bool) -> cli::exec::Sampling {
        let draw = cli::exec::Draw { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, min_p: self.min_p, repetition_penalty: self.repetition_penalty };
        cli::exec::Sampling { tokens: self.tokens as usize, draw, seed: self.seed, bf16: self.precision == "bf16", chat }
    }
}
