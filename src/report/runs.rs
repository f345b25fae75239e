//! The runs a comparison reads: which directories a path names (a stage's run, an experiment's
//! stages, a sweep's points), what each holds, and the short labels that tell them apart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::html::MAX_FILE_BYTES;

/// A run directory as the comparison reads it.
pub struct Run {
    pub label: String,
    pub dir: PathBuf,
    pub(super) report: Value,
    pub(super) metrics: Vec<Value>,
    pub(super) resolved: Value,
}

impl Run {
    /// The experiment the run belongs to, as its definition names it.
    pub fn experiment(&self) -> &str {
        self.resolved["experiment"].as_str().unwrap_or("-")
    }
}

#[cfg(test)]
impl Run {
    pub(super) fn from_parts(label: &str, report: Value, resolved: Value) -> Run {
        Run { label: label.into(), dir: PathBuf::from(label), report, metrics: vec![], resolved }
    }
}

/// Most runs one page compares.
const MAX_RUNS: usize = 64;

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&crate::fsio::read_text(path, MAX_FILE_BYTES).ok()?).ok()
}

fn is_run(dir: &Path) -> bool {
    dir.join("report.json").is_file() || dir.join("metrics.jsonl").is_file()
}

/// The stage directories of an experiment directory, sorted by name.
/// The stage directories of an experiment directory in pipeline order: a stage after the
/// stages its report names as upstream, by name otherwise.
fn stages_of(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut left: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|d| d.is_dir() && is_run(d)).take(MAX_RUNS + 1).collect();
    left.sort();
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let upstream: Vec<Vec<String>> = left.iter().map(|d| read_json(&d.join("report.json")).and_then(|r| r["upstream"].as_object().map(|o| o.keys().cloned().collect())).unwrap_or_default()).collect();
    let mut upstream: Vec<(PathBuf, Vec<String>)> = left.drain(..).zip(upstream).collect();
    let mut order = vec![];
    while !upstream.is_empty() {
        let present: Vec<String> = upstream.iter().map(|(d, _)| name(d)).collect();
        // The first whose upstream stages here are all placed (a cycle, impossible in a recipe, takes the first).
        let next = upstream.iter().position(|(_, up)| up.iter().all(|u| !present.contains(u))).unwrap_or(0);
        order.push(upstream.remove(next).0);
    }
    Ok(order)
}

/// The stage directories of a sweep's points: `runs/width-sweep` stands for the experiments
/// `runs/width-sweep-d_model=64,…` beside it whose definitions say they are its points.
fn sweep_points(p: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else { return vec![] };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let Ok(entries) = std::fs::read_dir(parent) else { return vec![] };
    let mut experiments: Vec<PathBuf> = entries.filter_map(|e| e.ok()).filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{name}-")))).map(|e| e.path()).filter(|d| d.is_dir()).collect();
    experiments.sort();
    experiments.iter().flat_map(|e| stages_of(e).unwrap_or_default()).filter(|s| read_json(&s.join("resolved.json")).is_some_and(|r| r["sweep"].as_object().is_some_and(|o| !o.is_empty()))).collect()
}

/// The runs named: a stage directory is one run; an experiment directory stands for its stage
/// directories (sorted by name); a sweep's name for its points' stage directories.
pub fn runs_of(paths: &[PathBuf]) -> Result<Vec<Run>, String> {
    let mut dirs = vec![];
    for p in paths {
        if is_run(p) {
            dirs.push(p.clone());
            continue;
        }
        let stages = if p.exists() { stages_of(p)? } else { sweep_points(p) };
        if stages.is_empty() {
            return Err(format!("{} is neither a run directory (report.json or metrics.jsonl) nor an experiment's or a sweep's directories of them", p.display()));
        }
        dirs.extend(stages);
    }
    if dirs.len() > MAX_RUNS {
        return Err(format!("{} runs named; a comparison shows at most {MAX_RUNS}", dirs.len()));
    }
    let labels = labels(&dirs);
    Ok(dirs
        .into_iter()
        .zip(labels)
        .map(|(dir, label)| {
            let metrics = super::plots::read_metrics(&dir).unwrap_or_default();
            Run { label, report: read_json(&dir.join("report.json")).unwrap_or(Value::Null), resolved: read_json(&dir.join("resolved.json")).unwrap_or(Value::Null), metrics, dir }
        })
        .collect())
}

/// Short names that tell the runs apart: the fewest trailing path components that are unique.
fn labels(dirs: &[PathBuf]) -> Vec<String> {
    let parts: Vec<Vec<String>> = dirs.iter().map(|d| d.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()).collect();
    let tail = |p: &[String], n: usize| p[p.len().saturating_sub(n)..].join("/");
    let longest = parts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    for n in 2..=longest {
        let names: Vec<String> = parts.iter().map(|p| tail(p, n)).collect();
        if names.iter().collect::<BTreeSet<_>>().len() == names.len() {
            return names;
        }
    }
    parts.iter().enumerate().map(|(i, p)| format!("{} #{}", tail(p, longest), i + 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_shortest_unique_tails() {
        let d = |s: &str| PathBuf::from(s);
        assert_eq!(labels(&[d("runs/a/tiny/pretrain"), d("runs/b/tiny/pretrain")]), ["a/tiny/pretrain", "b/tiny/pretrain"]);
        assert_eq!(labels(&[d("runs/x/sft"), d("runs/x/rm")]), ["x/sft", "x/rm"]);
        assert_eq!(labels(&[d("same"), d("same")]), ["same #1", "same #2"]);
    }
}
