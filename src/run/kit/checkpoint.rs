//! Checkpoints of named trainable tensors and their AdamW moments: written atomically, the last
//! few kept, and a small JSON state that names the newest one. A run killed at any instant leaves
//! either the previous complete checkpoint or the new complete one, never a torn file.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

use super::adamw::Optimizer;
use super::files::{shape, with_mapped, write_atomic, write_streamed, FileTensor};
use crate::rng::Rng;


#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct State {
    /// Steps completed.
    pub step: u64,
    pub adam_t: u64,
    pub data_rng: Rng,
    /// Hash of the resolved stage definition; resuming under a different one is refused.
    pub recipe_hash: String,
    /// The checkpoint file (in the run directory) holding weights and optimizer moments.
    pub file: String,
    pub best_val: Option<f64>,
    /// The training-loss accumulator of the current logging window (sum, steps), so the
    /// first metrics line after a resume averages the same steps as without the interruption.
    #[serde(default)]
    pub window_loss: (f64, u64),
    /// Stage-specific state (PPO's adaptive KL coefficient).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Save named trainable tensors and their AdamW moments, then the state naming the file; the
/// newest `keep` checkpoints stay (older ones are deleted once a newer one is safely written).
/// The file is written a tensor at a time: `weight(i)` gives tensor i whole (`held[i]` is this
/// process's, whose kind it has), and a divided one is gathered when its turn comes, so every
/// process calls `save` and only the one given `dir` writes.
/// `companions` (named, whole) follow the trained tensors and their moments.
#[allow(clippy::too_many_arguments)]
pub fn save(dir: Option<&Path>, names: &[String], held: &[Tensor], weight: &dyn Fn(usize) -> Result<Tensor>, opt: &Optimizer, state: &State, keep: usize, companions: &[(String, Tensor)]) -> Result<()> {
    let n = names.len();
    let mut entries = vec![];
    for (prefix, kind) in [("", None), ("adam.m.", Some(opt.moment_kind())), ("adam.v.", Some(opt.moment_kind()))] {
        for (i, name) in names.iter().enumerate() {
            let shape = opt.whole_shape(i, &held[i].size());
            entries.push(FileTensor { name: format!("{prefix}{name}"), shape, kind: kind.unwrap_or(held[i].kind()) });
        }
    }
    entries.extend(companions.iter().map(|(name, t)| FileTensor { name: name.clone(), shape: t.size(), kind: t.kind() }));
    let path = dir.map(|d| d.join(&state.file));
    write_streamed(path.as_deref(), &entries, |k| match k / n {
        _ if k >= 3 * n => Ok(companions[k - 3 * n].1.shallow_clone()),
        0 => weight(k),
        part => opt.whole_moment(k % n, part == 1),
    })?;
    let Some(dir) = dir else { return Ok(()) };
    // Each checkpoint keeps its own state beside it, so a resume can fall back to the older one.
    let text = serde_json::to_string_pretty(state)?;
    write_atomic(&dir.join(state_file(state.step)), text.as_bytes())?;
    write_atomic(&dir.join("state.json"), text.as_bytes())?;
    // Only now that the state names the new file may older checkpoints go.
    let old = kept_steps(dir)?;
    for step in old.iter().take(old.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_file(dir.join(format!("ckpt-{step}.safetensors")));
        let _ = std::fs::remove_file(dir.join(state_file(*step)));
    }
    Ok(())
}

/// The state of the checkpoint of step `step`.
fn state_file(step: u64) -> String {
    format!("state-{step}.json")
}

/// Steps of the checkpoints in `dir`, oldest first.
fn kept_steps(dir: &Path) -> Result<Vec<u64>> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?.parse().ok())
        .collect();
    steps.sort();
    Ok(steps)
}

/// The states of the checkpoints older than `step` that kept theirs, newest first: where a
/// resume goes when the newest checkpoint cannot be read.
pub fn older_states(dir: &Path, step: u64) -> Vec<State> {
    let steps = kept_steps(dir).unwrap_or_default();
    steps
        .into_iter()
        .rev()
        .filter(|s| *s < step)
        .filter_map(|s| super::files::read_capped(&dir.join(state_file(s)), 1 << 20).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

/// The state of the kept checkpoint of step `step` (`roux run --resume-from ckpt-N`), or an error
/// naming the checkpoints `dir` keeps.
pub fn state_at(dir: &Path, step: u64) -> Result<State> {
    let path = dir.join(state_file(step));
    let kept = kept_steps(dir).unwrap_or_default();
    if !kept.contains(&step) || !path.is_file() {
        let names: Vec<String> = kept.iter().map(|s| format!("ckpt-{s}")).collect();
        anyhow::bail!(
            "{} has no checkpoint ckpt-{step} to resume from; it keeps {}",
            dir.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
    }
    let text = super::files::read_capped(&path, 1 << 20)?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a valid run state (corrupt?): {e}", path.display()))
}

/// The checkpoint a run resumes from: the kept one of step `from` (`--resume-from`), else the
/// newest (None: a fresh start).
pub fn resume_state(dir: &Path, from: Option<u64>) -> Result<Option<State>> {
    match from {
        Some(step) => Ok(Some(state_at(dir, step)?)),
        None => read_state(dir),
    }
}

/// Make the checkpoint `state` names the one the run resumes from from now on (state.json).
pub fn choose(dir: &Path, state: &State) -> Result<()> {
    write_atomic(&dir.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())
}

pub fn read_state(dir: &Path) -> Result<Option<State>> {
    let p = dir.join("state.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = super::files::read_capped(&p, 1 << 20)?;
    match serde_json::from_str(&text) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            // The newest checkpoint's own copy of the state, when state.json was damaged.
            let newest = kept_steps(dir).unwrap_or_default().into_iter().rev().find_map(|s| {
                let t = super::files::read_capped(&dir.join(state_file(s)), 1 << 20).ok()?;
                serde_json::from_str::<State>(&t).ok()
            });
            match newest {
                Some(s) => {
                    tracing::warn!("{} is not a valid run state ({e}); using the state kept with checkpoint {}", p.display(), s.file);
                    Ok(Some(s))
                }
                None => Err(anyhow::anyhow!("{} is not a valid run state (corrupt?): {e}", p.display())),
            }
        }
    }
}

/// Restore named trainable tensors and their moments, and the `companions` in place, from the
/// checkpoint a state names.
pub fn load(dir: &Path, state: &State, names: &[String], params: &[Tensor], opt: &mut Optimizer, companions: &[(String, Tensor)]) -> Result<()> {
    let path = dir.join(&state.file);
    // Mapped: each process copies out the rows it holds, nothing more.
    let read = |tensors: &[(String, Tensor)]| {
        restore(&path, tensors, names, params, opt)?;
        restore_companions(&path, tensors, companions)
    };
    with_mapped(&path, read).with_context(|| format!("reading checkpoint {}", path.display()))?;
    opt.t = state.adam_t;
    Ok(())
}

fn restore(path: &Path, tensors: &[(String, Tensor)], names: &[String], params: &[Tensor], opt: &mut Optimizer) -> Result<()> {
    let by_name: std::collections::HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (i, n) in names.iter().enumerate() {
        // The weight first: a checkpoint of another model fails on it, with its shape. Each
        // tensor is whole; a process takes what it holds of it.
        let whole = opt.whole_shape(i, &params[i].size());
        for (part, key) in [n.clone(), format!("adam.m.{n}"), format!("adam.v.{n}")].into_iter().enumerate() {
            let Some(t) = by_name.get(key.as_str()) else { bail!("checkpoint {} has no tensor `{key}`", path.display()) };
            if t.size() != whole {
                bail!("checkpoint {}: `{key}` has shape {}, the run expects {}", path.display(), shape(&t.size()), shape(&whole));
            }
            match part {
                0 => {
                    let (mine, _) = opt.own_rows(i, t, &params[i].size());
                    tch::no_grad(|| params[i].shallow_clone().copy_(&mine));
                }
                _ => opt.restore_moment(i, part == 1, t),
            }
        }
    }
    Ok(())
}

fn restore_companions(path: &Path, tensors: &[(String, Tensor)], companions: &[(String, Tensor)]) -> Result<()> {
    for (name, t) in companions {
        let Some((_, saved)) = tensors.iter().find(|(n, _)| n == name) else { bail!("checkpoint {} has no tensor `{name}`", path.display()) };
        if saved.size() != t.size() {
            bail!("checkpoint {}: `{name}` has shape {}, the run expects {}", path.display(), shape(&saved.size()), shape(&t.size()));
        }
        tch::no_grad(|| t.shallow_clone().copy_(saved));
    }
    Ok(())
}
