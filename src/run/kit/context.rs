//! What the runner hands every stage: the recipe, where its run directory is, and the user's
//! options for what earlier runs left.

use anyhow::Result;
use std::path::PathBuf;

use crate::recipe::{ModelSpec, Recipe, StageSpec, TrainSpec};

/// How `roux run` treats what earlier runs left.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Set existing runs of the stages aside (renamed) and start over.
    pub fresh: bool,
    /// Resume a checkpoint even though the stage's definition changed since it was written.
    pub force: bool,
    /// Write TensorBoard event files beside metrics.jsonl (`--no-tensorboard` turns them off).
    pub tensorboard: bool,
    /// Profile training steps A..=B (`--profile A..B`): a Chrome trace in the stage's directory.
    pub profile: Option<(u64, u64)>,
    /// Resume from the kept checkpoint of this step rather than the newest (`--resume-from
    /// ckpt-N`; the runner passes it to the one stage it names).
    pub resume_from: Option<u64>,
}

/// Trains one model as a `train` stage does. The runner passes `stages::train::run_model`, so
/// a sweep (isoflop) trains its points without one stage importing another.
pub type TrainFn = fn(&StageCtx<'_>, &ModelSpec, &TrainSpec) -> Result<()>;

/// One stage's context.
pub struct StageCtx<'a> {
    pub recipe: &'a Recipe,
    /// The recipe's text, kept in every run directory beside the resolved definition.
    pub source: &'a str,
    pub stage: &'a StageSpec,
    /// The experiment's directory: stage `s` runs in `runs/s`.
    pub runs: PathBuf,
    /// This run's directory and the label its messages carry: `runs/<stage>` and the stage's
    /// name, or a sweep point's own (`sub`).
    pub dir: PathBuf,
    pub label: String,
    pub opts: RunOptions,
    pub train: TrainFn,
    /// The plan's peak memory for this stage, checked against the machine before a post-training
    /// stage allocates (0: the stage checks each model it trains itself, as `train` does).
    pub memory: u64,
    /// The processes of this run (one unless torchrun started several); rank 0 leads.
    pub world: &'a super::dist::World,
}

impl StageCtx<'_> {
    /// The same stage, running a part of itself (a sweep point) in `dir` under `label`.
    pub fn sub(&self, label: String, dir: PathBuf) -> StageCtx<'_> {
        StageCtx { recipe: self.recipe, source: self.source, stage: self.stage, runs: self.runs.clone(), dir, label, opts: self.opts, train: self.train, memory: self.memory, world: self.world }
    }

    /// Where another stage of this experiment keeps its outputs.
    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.runs.join(stage)
    }

    /// The title of this run's plots.
    pub fn title(&self) -> String {
        format!("{} / {}", self.recipe.experiment, self.label)
    }
}
