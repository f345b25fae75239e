//! `roux report A B …` and `roux report runs/<experiment>`: runs side by side on one page. For
//! each metric the runs log, one chart with a line per run; a table of their results; and what
//! differs between their resolved definitions (the learning rate of a sweep, a changed width),
//! so the page says both what changed and what it did.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::html::{esc, figures, human, page, MAX_FILE_BYTES};
use super::svg::{line_chart, Series};

/// A run directory as the comparison reads it.
pub struct Run {
    pub label: String,
    pub dir: PathBuf,
    report: Value,
    metrics: Vec<Value>,
    resolved: Value,
}

/// Most runs one page compares, and most metric charts it draws.
const MAX_RUNS: usize = 64;
const MAX_CHARTS: usize = 24;

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&crate::fsio::read_text(path, MAX_FILE_BYTES).ok()?).ok()
}

fn is_run(dir: &Path) -> bool {
    dir.join("report.json").is_file() || dir.join("metrics.jsonl").is_file()
}

/// The runs named: a stage directory is one run; an experiment directory stands for its stage
/// directories (sorted by name).
pub fn runs_of(paths: &[PathBuf]) -> Result<Vec<Run>, String> {
    let mut dirs = vec![];
    for p in paths {
        if is_run(p) {
            dirs.push(p.clone());
            continue;
        }
        let mut stages: Vec<PathBuf> = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|d| d.is_dir() && is_run(d)).collect();
        if stages.is_empty() {
            return Err(format!("{} is neither a run directory (report.json or metrics.jsonl) nor an experiment's directory of them", p.display()));
        }
        stages.sort();
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

/// Every leaf of a JSON value by its dotted path (arrays as one value: a list of betas or budgets
/// is one setting).
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                leaves(x, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out);
            }
        }
        other if !prefix.is_empty() => {
            out.insert(prefix.to_string(), other.to_string());
        }
        _ => {}
    }
}

fn table(head: &[String], rows: &[(String, Vec<String>)]) -> String {
    let th: String = head.iter().map(|h| format!("<th>{}</th>", esc(h))).collect();
    let body: String = rows.iter().map(|(k, vs)| format!("<tr><th>{}</th>{}</tr>", esc(k), vs.iter().map(|v| format!("<td>{}</td>", esc(v))).collect::<String>())).collect();
    format!("<table><tr><th></th>{th}</tr>{body}</table>")
}

/// The comparison page of `runs`.
pub fn compare_html(runs: &[Run], title: &str) -> String {
    let head: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    // What differs between the definitions: every setting whose value is not the same in all runs.
    let defs: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            leaves(&r.resolved, "", &mut m);
            m
        })
        .collect();
    let keys: BTreeSet<&String> = defs.iter().flat_map(|d| d.keys()).collect();
    let differs: Vec<(String, Vec<String>)> = keys
        .into_iter()
        .filter(|k| defs.iter().map(|d| d.get(*k)).collect::<BTreeSet<_>>().len() > 1)
        .map(|k| (k.clone(), defs.iter().map(|d| d.get(k).cloned().unwrap_or_else(|| "-".into())).collect()))
        .collect();
    let differs = if differs.is_empty() { "<p>The definitions are identical.</p>".to_string() } else { table(&head, &differs) };
    // Results: every plain value of the reports, as people read it.
    let result_keys: BTreeSet<String> = runs.iter().filter_map(|r| r.report.as_object()).flat_map(|o| o.iter().filter(|(k, v)| !v.is_object() && !v.is_array() && k.as_str() != "hash").map(|(k, _)| k.clone())).collect();
    let results: Vec<(String, Vec<String>)> = result_keys.iter().map(|k| (k.replace('_', " "), runs.iter().map(|r| human(k, &r.report[k.as_str()])).collect())).collect();
    // Charts: each numeric metric, a line per run, the most common first.
    let mut metric_runs: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs {
        let keys: BTreeSet<&String> = r.metrics.iter().filter_map(|m| m.as_object()).flat_map(|o| o.iter().filter(|(k, v)| v.is_number() && !matches!(k.as_str(), "step" | "tokens")).map(|(k, _)| k)).collect();
        for k in keys {
            *metric_runs.entry(k.clone()).or_default() += 1;
        }
    }
    let preferred = ["loss", "val_loss", "lr", "grad_norm", "accuracy", "reward", "gold", "kl", "tokens_per_s"];
    let mut metrics: Vec<(String, usize)> = metric_runs.into_iter().collect();
    metrics.sort_by_key(|(k, n)| (preferred.iter().position(|p| p == k).unwrap_or(preferred.len()), usize::MAX - n, k.clone()));
    let svgs: Vec<(String, String)> = metrics
        .iter()
        .take(MAX_CHARTS)
        .map(|(key, _)| {
            let series: Vec<Series> = runs
                .iter()
                .map(|r| Series { name: r.label.clone(), points: r.metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m[key.as_str()].as_f64()?))).collect(), dashed: false })
                .filter(|s| !s.points.is_empty())
                .collect();
            (format!("{key}.svg"), line_chart(key, "step", key, &series, false))
        })
        .collect();
    let dirs: String = runs.iter().map(|r| format!("<li><b>{}</b>: {}</li>", esc(&r.label), esc(&r.dir.display().to_string()))).collect();
    page(
        title,
        &format!(
            "<p>{} runs.</p><ul>{dirs}</ul><h2>What differs</h2>{differs}<h2>Plots</h2><div class=\"plots\">{}</div><h2>Results</h2>{}",
            runs.len(),
            figures(&svgs),
            table(&head, &results)
        ),
    )
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

    #[test]
    fn definitions_flatten_to_dotted_settings() {
        let mut m = BTreeMap::new();
        leaves(&serde_json::json!({"train": {"optimizer": {"lr": 0.001, "betas": [0.9, 0.95]}}, "seed": 1}), "", &mut m);
        assert_eq!(m.get("train.optimizer.lr").map(String::as_str), Some("0.001"));
        assert_eq!(m.get("train.optimizer.betas").map(String::as_str), Some("[0.9,0.95]"));
        assert_eq!(m.get("seed").map(String::as_str), Some("1"));
    }
}
