//! What a policy said at each held-out evaluation: `completions/step-N.jsonl` in the stage's
//! directory, a line per held-out prompt with its answer, the greedy and the sampled response and
//! how each scored (TRL's `log_completions`, lm-eval's `--log_samples`): step 0 is the policy the
//! stage started from; a `compare` stage's, each policy's as `completions/LABEL.jsonl`; and what
//! an RL stage sampled for training at each evaluation step, `rollouts/step-N.jsonl` (a reward
//! model's held-out pairs as it scores them: `scores/step-N.jsonl`). Written
//! whole and atomically by the leading process, so a resumed run writes an evaluation's file
//! again rather than appending twice. Each `step-N` file is also shown in TensorBoard
//! (`event_texts.rs`).

use anyhow::Result;

use super::files::write_atomic;
use super::lifecycle::RunDir;
use super::score::Score;

/// The folder in a stage's directory.
const DIR: &str = "completions";

/// Write `score`'s completions as the evaluation after `step` steps.
pub fn write(run: &RunDir, step: u64, score: &Score) -> Result<()> {
    write_as(run, &format!("step-{step}"), score)
}

/// Write `score`'s completions as `name.jsonl` (a `compare` stage's policy label: an identifier,
/// so one path component).
pub fn write_as(run: &RunDir, name: &str, score: &Score) -> Result<()> {
    let lines: Vec<serde_json::Value> = score.completions.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
    write_jsonl(run, DIR, name, &lines)
}

/// What an RL stage sampled and how it was rewarded at a step, in `rollouts/step-N.jsonl`.
pub fn write_rollouts(run: &RunDir, step: u64, lines: &[serde_json::Value]) -> Result<()> {
    write_jsonl(run, "rollouts", &format!("step-{step}"), lines)
}

/// `lines` as `folder/name.jsonl` in the run's directory (nothing for no lines).
pub fn write_jsonl(run: &RunDir, folder: &str, name: &str, lines: &[serde_json::Value]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for l in lines {
        text.push_str(&serde_json::to_string(l)?);
        text.push('\n');
    }
    write_text(run, folder, &format!("{name}.jsonl"), &text)
}

/// `text` as `folder/file` in the run's directory, from the leading process, whole and
/// atomically.
pub fn write_text(run: &RunDir, folder: &str, file: &str, text: &str) -> Result<()> {
    if !run.leads {
        return Ok(());
    }
    let dir = run.dir.join(folder);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    write_atomic(&dir.join(file), text.as_bytes())?;
    match super::event_texts::of(folder, file, text) {
        Some((step, t)) => run.metrics.text(step, folder, &t),
        None => Ok(()),
    }
}
