//! `roux report A B …` and `roux report runs/<experiment>`: runs side by side on one page. For
//! each metric the runs log, one chart with a line per run; a table of their results; and what
//! differs between their resolved definitions (the learning rate of a sweep, a changed width),
//! so the page says both what changed and what it did.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::html::{esc, figures, human, page};
use super::runs::Run;
use super::svg::{line_chart, Series};

/// Most metric charts one page draws.
const MAX_CHARTS: usize = 24;

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
            // A string as people read it, without JSON's quotes.
            out.insert(prefix.to_string(), other.as_str().map_or_else(|| other.to_string(), str::to_string));
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
    let differs = if differs.is_empty() { "<p>The definitions are identical.</p>".to_string() } else { format!("<div class=\"wide\">{}</div>", table(&head, &differs)) };
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
    // A sweep's summary comes first: the best point, and the loss against each swept value.
    let sweep = super::sweep::section(runs).map_or_else(String::new, |(html, plots)| format!("<h2>Sweep</h2>{html}<div class=\"plots\">{}</div>", figures(&plots)));
    let (plots, results) = (figures(&svgs), table(&head, &results));
    // An experiment's stages are of different kinds: its summary leads, and the setting-by-setting
    // comparison of their definitions is there to open, not to read first.
    if super::stages::one_experiment(runs) {
        let summary = super::stages::summary(runs);
        return page(title, &format!("<h2>Stages</h2>{summary}<h2>Plots</h2><div class=\"plots\">{plots}</div><details><summary>Where the stages' definitions differ</summary>{differs}</details><details><summary>Every result</summary>{results}</details><ul>{dirs}</ul>"));
    }
    page(title, &format!("<p>{} runs.</p>{sweep}<ul>{dirs}</ul><h2>What differs</h2>{differs}<h2>Plots</h2><div class=\"plots\">{plots}</div><h2>Results</h2>{results}", runs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_flatten_to_dotted_settings() {
        let mut m = BTreeMap::new();
        leaves(&serde_json::json!({"train": {"optimizer": {"lr": 0.001, "betas": [0.9, 0.95]}}, "seed": 1, "norm": "rmsnorm"}), "", &mut m);
        assert_eq!(m.get("norm").map(String::as_str), Some("rmsnorm"), "strings without JSON's quotes");
        assert_eq!(m.get("train.optimizer.lr").map(String::as_str), Some("0.001"));
        assert_eq!(m.get("train.optimizer.betas").map(String::as_str), Some("[0.9,0.95]"));
        assert_eq!(m.get("seed").map(String::as_str), Some("1"));
    }
}
