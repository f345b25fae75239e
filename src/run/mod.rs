//! Stage 5, run (feature `torch`): execute the stage DAG on libtorch, CPU or CUDA.
//!
//! | file            | what it does                                                     |
//! |-----------------|------------------------------------------------------------------|
//! | `model.rs`      | builds tch parameters from the model graph and walks it forward  |
//! | `adamw.rs`      | AdamW on plain tensors, so its state can be checkpointed         |
//! | `data.rs`       | byte corpus, train/validation split, seeded batch sampling      |
//! | `train.rs`      | the training loop of a `train` stage, written out               |
//! | `moe.rs`        | routers, sparse expert dispatch, auxiliary losses                |
//! | `mixture.rs`    | a `mixture` stage: Jacobs et al. 1991 on a synthetic task        |
//! | `isoflop.rs`    | an `isoflop` stage: sweep, fit, predict, check the prediction    |
//! | `checkpoint.rs` | atomic safetensors writes, run state, resume                     |
//! | `progress.rs`   | the progress line and metrics.jsonl                              |
//! | `sample.rs`     | `roux sample`: generation from a trained run                     |
//! | `bench.rs`      | `roux bench`: step-time comparisons measured in one run          |

pub mod adamw;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod isoflop;
pub mod mixture;
pub mod model;
pub mod moe;
pub mod progress;
pub mod sample;
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
        }
    }
    Ok(())
}
