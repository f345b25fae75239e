//! What a run page shows of what the policy said: the first held-out prompts with their answers
//! and the greedy responses at the stage's first and last evaluations (`completions/step-N.jsonl`,
//! written by the run), read here and drawn, escaped, by `html.rs`.

use std::path::Path;

/// Prompts the table shows.
const ROWS: usize = 12;
/// Step files a run directory's folder is searched among.
const MAX_FILES: usize = 100_000;
/// The largest completions file read.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A greedy response and whether it is the answer.
pub type Said = (String, bool);

/// The rows of the table: the first and the last evaluation's step (the last none when there
/// was one), and each prompt's answer and responses.
pub struct Shown {
    pub first: u64,
    pub last: Option<u64>,
    /// (prompt, answer, at the first evaluation, at the last).
    pub rows: Vec<(String, String, Said, Option<Said>)>,
}

/// The evaluations in `dir`'s `completions/`, as (step, file) sorted by step.
fn evaluations(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir.join("completions")) else { return vec![] };
    let mut found: Vec<(u64, std::path::PathBuf)> = entries
        .take(MAX_FILES)
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name.strip_prefix("step-")?.strip_suffix(".jsonl")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The first `ROWS` lines of a completions file, parsed (none if it cannot be read).
fn rows(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = crate::fsio::read_text(path, MAX_FILE_BYTES) else { return vec![] };
    text.lines().take(ROWS).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn said(row: &serde_json::Value) -> Said {
    (row["greedy"].as_str().unwrap_or("").to_string(), row["exact"].as_bool() == Some(true))
}

/// What `dir`'s completions show, if it has any.
pub fn shown(dir: &Path) -> Option<Shown> {
    let found = evaluations(dir);
    let (first, last) = (found.first()?, found.last()?);
    let before = rows(&first.1);
    let after = if last.0 == first.0 { vec![] } else { rows(&last.1) };
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let rows: Vec<_> = before.iter().enumerate().map(|(i, b)| (text(b, "prompt"), text(b, "answer"), said(b), after.get(i).map(said))).collect();
    (!rows.is_empty()).then_some(Shown { first: first.0, last: (!after.is_empty()).then_some(last.0), rows })
}
