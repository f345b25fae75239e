//! What a run page shows of what its policies said: the first held-out prompts with their answers
//! and the greedy responses at a stage's first and last evaluations (`completions/step-N.jsonl`),
//! or of each policy a `compare` stage scored (`completions/LABEL.jsonl`), written by the run,
//! the last rollouts an RL stage kept (`rollouts/step-N.jsonl`) and held-out pairs a reward model
//! scored (`scores/step-N.jsonl`), and the first and last text a
//! `train` stage sampled (`samples/step-N.txt`), read here and drawn,
//! escaped, by `html.rs`.

use std::path::{Path, PathBuf};

/// Prompts the table shows.
const ROWS: usize = 12;
/// Step files a run directory's folder is searched among.
const MAX_FILES: usize = 100_000;
/// The largest completions, rollouts, scores or samples file read.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A greedy response and whether it is the answer.
pub type Said = (String, bool);

/// The table: its response columns (`step 0` and the last step's, or a `compare` stage's
/// policies), and each prompt's answer and responses in them.
pub struct Shown {
    pub columns: Vec<String>,
    /// (prompt, answer, a response a column).
    pub rows: Vec<(String, String, Vec<Option<Said>>)>,
}

/// The files in `dir`'s `folder` named `*.ext`, as (name without the extension, path), sorted
/// by name.
fn files(dir: &Path, folder: &str, ext: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir.join(folder)) else { return vec![] };
    let suffix = format!(".{ext}");
    let mut found: Vec<(String, PathBuf)> = entries
        .take(MAX_FILES)
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.strip_suffix(suffix.as_str())?.to_string(), e.path())))
        .collect();
    found.sort();
    found
}

/// The `step-N` files among `found`, as (N, path), sorted by step.
fn steps(found: &[(String, PathBuf)]) -> Vec<(u64, PathBuf)> {
    let mut steps: Vec<(u64, PathBuf)> = found.iter().filter_map(|(n, p)| Some((n.strip_prefix("step-")?.parse().ok()?, p.clone()))).collect();
    steps.sort();
    steps
}

/// The first and the last of `steps` (one when there is one).
fn ends(steps: &[(u64, PathBuf)]) -> Vec<&(u64, PathBuf)> {
    match (steps.first(), steps.last()) {
        (Some(a), Some(b)) if a.0 != b.0 => vec![a, b],
        (Some(a), _) => vec![a],
        _ => vec![],
    }
}

/// The first `ROWS` lines of a completions file, parsed (none if it cannot be read).
fn rows(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = crate::fsio::read_text(path, MAX_FILE_BYTES) else { return vec![] };
    text.lines().take(ROWS).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn said(row: &serde_json::Value) -> Said {
    (row["greedy"].as_str().unwrap_or("").to_string(), row["exact"].as_bool() == Some(true))
}

/// The columns: a training stage's first and last evaluation (`step-N`), or else every file,
/// ordered as `order` names them (a `compare` stage's policies), the others after.
fn columns(found: Vec<(String, PathBuf)>, order: &[String]) -> Vec<(String, PathBuf)> {
    let steps = steps(&found);
    if !steps.is_empty() {
        return ends(&steps).into_iter().map(|(n, p)| (format!("step {n}"), p.clone())).collect();
    }
    let mut named = found;
    named.sort_by_key(|(n, _)| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    named
}

/// What `dir`'s completions show, if it has any; `order`: a `compare` stage's policies.
pub fn shown(dir: &Path, order: &[String]) -> Option<Shown> {
    let columns = columns(files(dir, "completions", "jsonl"), order);
    let read: Vec<Vec<serde_json::Value>> = columns.iter().map(|(_, p)| rows(p)).collect();
    let first = read.first()?;
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let rows: Vec<_> = first.iter().enumerate().map(|(i, r)| (text(r, "prompt"), text(r, "answer"), read.iter().map(|c| c.get(i).map(said)).collect())).collect();
    (!rows.is_empty()).then(|| Shown { columns: columns.into_iter().map(|(c, _)| c).collect(), rows })
}

/// The last step's file in `folder` (`rollouts/step-N.jsonl`, `scores/step-N.jsonl`), its first
/// `ROWS` lines: the step and the lines, if the run kept any.
pub fn last_lines(dir: &Path, folder: &str) -> Option<(u64, Vec<serde_json::Value>)> {
    let (step, path) = steps(&files(dir, folder, "jsonl")).pop()?;
    let lines = rows(&path);
    (!lines.is_empty()).then_some((step, lines))
}

/// The first and the last of a `train` stage's samples (`samples/step-N.txt`), as (step, text).
pub fn samples(dir: &Path) -> Vec<(u64, String)> {
    let steps = steps(&files(dir, "samples", "txt"));
    ends(&steps).into_iter().filter_map(|(step, p)| Some((*step, crate::fsio::read_text(p, MAX_FILE_BYTES).ok()?))).collect()
}
