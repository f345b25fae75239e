//! Stage 5, run (feature `torch`): execute the stage DAG on libtorch, CPU or CUDA.
//!
//! | file            | what it does                                                     |
//! |-----------------|------------------------------------------------------------------|
//! | `model.rs`      | builds tch parameters from the model graph and walks it forward  |
//! | `adamw.rs`      | AdamW on flat buffers of plain tensors; checkpointable state     |
//! | `data.rs`       | byte corpus, train/validation split, seeded batch sampling      |
//! | `train.rs`      | the training loop of a `train` stage, written out               |
//! | `moe.rs`        | routers, sparse expert dispatch, auxiliary losses                |
//! | `mixture.rs`    | a `mixture` stage: Jacobs et al. 1991 on a synthetic task        |
//! | `isoflop.rs`    | an `isoflop` stage: sweep, fit, predict, check the prediction    |
//! | `checkpoint.rs` | atomic safetensors writes, run state, resume                     |
//! | `progress.rs`   | the progress line and metrics.jsonl                              |
//! | `sample.rs`     | `roux sample`: generation from a trained run                     |
//! | `bench.rs`      | `roux bench`: step-time comparisons measured in one run          |
//! | `lora.rs`       | LoRA adapters on the model's linears: attach, load, merge        |
//! | `seqs.rs`       | padded variable-length batches, generation, policy scores        |
//! | `stage_run.rs`  | stage caching by content hash, resume, artifact loading          |
//! | `finetune.rs`   | a `finetune` stage (SFT, full or LoRA)                           |
//! | `reward.rs`     | a `reward_model` stage (Bradley–Terry)                           |
//! | `ppo.rs`        | a `ppo` stage (RLHF with a KL penalty, GAE, clipping)            |
//! | `dpo.rs`        | a `dpo` stage                                                    |
//! | `rl_losses.rs`  | Bradley–Terry, DPO, clipped PPO and value losses, entropy        |
//! | `compare.rs`    | a `compare` stage: the table of policies                         |
//! | `tokenize.rs`   | byte-level BPE: train on the corpus, save tokenizer.json         |
//! | `export.rs`     | `roux export --to hf`: GPT-2 / Llama layout Hugging Face files   |

/// glibc's malloc hands large blocks back to the kernel as soon as they are freed (mmap/munmap,
/// heap trimming), so every training step faults in and zeroes its activation memory anew:
/// 6–8% of a small CPU model's step time here. By default roux keeps freed memory in the process
/// (the next step reuses it); the price is fragmentation: peak RSS exceeds the live tensors (bench's
/// tiny model: 102 MiB against ~70 live). `ROUX_MALLOC` chooses otherwise:
/// - `compact`: as the default, and glibc's per-thread cache off (`exec_compact_malloc`): tiny
///   76 MiB, the others 5–12% lower, for ~10% of the medium model's speed;
/// - `exact`: every block of 1 MiB or more is mapped and returned on its own, so RSS tracks the
///   live tensors (what the plan's memory estimate counts), at a large cost in speed (tiny 1.8×);
/// - `system`: glibc as it comes.
///
/// Called once, before any tensor exists.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        match std::env::var("ROUX_MALLOC").as_deref() {
            Ok("exact") => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
            Ok("system") => {}
            _ => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

/// `ROUX_MALLOC=compact`: glibc's per-thread cache (tcache) keeps freed small chunks marked in
/// use; one left between two freed activation blocks stops them merging, so the heap creeps up
/// step after step (tiny: 84 → 102 MiB over 60 steps). With the cache off it holds at 76 MiB.
/// Only `GLIBC_TUNABLES` at process start can turn it off, so the command re-executes itself
/// once with it set (same pid, arguments and streams; ~0.4 s to load libtorch again). Not the
/// default: the medium model measured 8–13% slower without the cache, with 5× the page faults
/// and the same syscalls (malloc returns nothing to the kernel; cause not found).
pub fn exec_compact_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var("ROUX_MALLOC").map_or(true, |v| v != "compact") || tunables.contains("glibc.malloc.tcache_count") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let tunables = if tunables.is_empty() { TCACHE_OFF.to_string() } else { format!("{tunables}:{TCACHE_OFF}") };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        let err = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
        tracing::warn!("ROUX_MALLOC=compact: could not re-execute with glibc's tcache off ({err}); going on without");
    }
}

pub mod adamw;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod dpo;
pub mod export;
pub mod finetune;
pub mod lora;
pub mod ppo;
pub mod reward;
pub mod rl_losses;
pub mod seqs;
pub mod stage_run;
pub mod data;
pub mod isoflop;
pub mod mixture;
pub mod model;
pub mod moe;
pub mod progress;
pub mod sample;
pub mod tokenize;
pub mod train;

use anyhow::Result;
use std::path::Path;

use crate::lower::lower_stages;
use crate::recipe::{Device as DeviceChoice, Recipe, StageKind};

/// Pick the device for a stage: `auto` is CUDA when available.
pub fn device(choice: DeviceChoice) -> Result<tch::Device> {
    Ok(match choice {
        DeviceChoice::Cpu => tch::Device::Cpu,
        DeviceChoice::Cuda if !tch::Cuda::is_available() => anyhow::bail!("the recipe asks for `device = cuda` but no CUDA device is available"),
        DeviceChoice::Cuda => tch::Device::Cuda(0),
        DeviceChoice::Auto => tch::Device::cuda_if_available(),
    })
}

/// How `roux run` treats what earlier runs left.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Set existing runs of the stages aside (renamed) and start over.
    pub fresh: bool,
    /// Resume a checkpoint even though the stage's definition changed since it was written.
    pub force: bool,
}

/// Run the stages of a checked recipe in dependency order; `only` restricts to named stages.
pub fn run_recipe(recipe: &Recipe, source: &str, out: &Path, only: &[String], opts: &RunOptions) -> Result<()> {
    let graph = lower_stages(recipe);
    let runs = out.join(&recipe.experiment);
    for stage in graph.order() {
        if !only.is_empty() && !only.contains(&stage.name) {
            continue;
        }
        let dir = out.join(&recipe.experiment).join(&stage.name);
        match &stage.kind {
            StageKind::Train(t) => train::run_train(recipe, source, &stage.name, t, &dir, opts)?,
            StageKind::Isoflop(iso) => isoflop::run_isoflop(recipe, source, &stage.name, iso, &dir, opts)?,
            StageKind::Mixture(m) => {
                if opts.fresh && dir.exists() {
                    train::set_aside(&dir)?;
                }
                mixture::run_mixture(recipe, &stage.name, m, &dir)?
            }
            StageKind::Finetune(f) => finetune::run_finetune(recipe, source, stage, f, &runs, opts)?,
            StageKind::RewardModel(r) => reward::run_reward_model(recipe, source, stage, r, &runs, opts)?,
            StageKind::Ppo(p) => ppo::run_ppo(recipe, source, stage, p, &runs, opts)?,
            StageKind::Dpo(d) => dpo::run_dpo(recipe, source, stage, d, &runs, opts)?,
            StageKind::Compare(c) => compare::run_compare(recipe, source, stage, c, &runs, opts)?,
        }
    }
    Ok(())
}
