//! Stage 5, run (feature `torch`): execute the stage DAG on libtorch, CPU or CUDA.
//!
//! Four rooms, each with one rule (docs/architecture.md; tests/architecture.rs checks them):
//! - `model/`: the network on tch; imports nothing else in `run/`;
//! - `kit/`: what stage loops share (the run-directory lifecycle, checkpoints, AdamW, data,
//!   tokenizers, progress, sequences, losses); imports `model/`, never `stages/` or `tools/`;
//! - `stages/`: one file per stage kind, `run(ctx, spec)`; a stage never imports another;
//! - `tools/`: commands on finished runs that return data; only the CLI prints.
//!
//! This file walks the stage DAG and hands each stage its context.

pub mod kit;
pub mod model;
pub mod stages;
pub mod tools;

use anyhow::Result;
use std::path::Path;

pub use kit::alloc::{exec_compact_malloc, tune_allocator};
pub use kit::RunOptions;
use kit::StageCtx;
use crate::lower::lower_stages;
use crate::recipe::{Recipe, StageKind};

/// Run the stages of a checked recipe in dependency order; `only` restricts to named stages.
pub fn run_recipe(recipe: &Recipe, source: &str, out: &Path, only: &[String], opts: &RunOptions) -> Result<()> {
    // A name in `--stage` that is no stage would otherwise run nothing and succeed.
    if let Some(name) = only.iter().find(|n| recipe.stage(n).is_none()) {
        let names: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
        let hint = match crate::diag::suggest::did_you_mean(name, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("its stages: {}", names.join(", ")),
        };
        anyhow::bail!("--stage {name}: experiment `{}` has no stage `{name}`; {hint}", recipe.experiment);
    }
    // A checkpoint step names one stage's checkpoint: `--stage` says which, unless there is one.
    let resumed: Option<&str> = match (opts.resume_from, only, recipe.stages.as_slice()) {
        (None, _, _) => None,
        (Some(_), [one], _) => Some(one.as_str()),
        (Some(_), [], [one]) => Some(one.name.as_str()),
        (Some(step), _, _) => anyhow::bail!("--resume-from ckpt-{step} names one stage's checkpoint; say which stage with --stage NAME"),
    };
    let graph = lower_stages(recipe);
    // Names become directories: each must be one plain path component (check says so too).
    let runs = kit::lifecycle::stage_dir(out, &recipe.experiment)?;
    // (`device = auto` as it runs here.)
    let plan = crate::plan::plan_on(recipe, tch::Cuda::is_available());
    let world = kit::dist::World::from_env()?;
    for stage in graph.order() {
        if !only.is_empty() && !only.contains(&stage.name) {
            continue;
        }
        let dir = kit::lifecycle::stage_dir(&runs, &stage.name)?;
        // Every process starts a stage once the leader has written the last one's outputs, which
        // this one may read before its lifecycle begins (upstream hashes, weights).
        world.barrier()?;
        let memory = match stage.kind {
            StageKind::Train(_) | StageKind::Isoflop(_) => 0,
            _ => plan.stages.iter().find(|s| s.name == stage.name).map_or(0, |s| s.memory_bytes),
        };
        let opts = RunOptions { resume_from: opts.resume_from.filter(|_| resumed == Some(stage.name.as_str())), ..*opts };
        let ctx = StageCtx { recipe, source, stage, runs: runs.clone(), dir, label: stage.name.clone(), opts, train: stages::train::run_model, memory, world: &world };
        match &stage.kind {
            StageKind::Train(t) => stages::train::run(&ctx, t)?,
            StageKind::Isoflop(iso) => stages::isoflop::run(&ctx, iso)?,
            StageKind::Mixture(m) => stages::mixture::run(&ctx, m)?,
            StageKind::Finetune(f) => stages::finetune::run(&ctx, f)?,
            StageKind::RewardModel(r) => stages::reward::run(&ctx, r)?,
            StageKind::Ppo(p) => stages::ppo::run(&ctx, p)?,
            StageKind::Dpo(d) => stages::dpo::run(&ctx, d)?,
            StageKind::Grpo(g) => stages::grpo::run(&ctx, g)?,
            StageKind::Distill(k) => stages::distill::run(&ctx, k)?,
            StageKind::OnlineDpo(o) => stages::online_dpo::run(&ctx, o)?,
            StageKind::BestOfN(b) => stages::best_of_n::run(&ctx, b)?,
            StageKind::Compare(c) => stages::compare::run(&ctx, c)?,
        }
    }
    Ok(())
}
