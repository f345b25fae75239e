//! The sweep part of an experiment report: when the runs compared are the points of a `sweep`
//! (their resolved.json says where each lies), a table of the points with the best one marked,
//! and the final loss plotted against each numeric swept value, a line per setting of the others.

use std::collections::BTreeMap;

use super::runs::Run;
use super::html::{esc, human};
use super::svg::{line_chart, Series};

/// A point: its swept values in the recipe's order, and the run.
struct Row<'a> {
    values: Vec<(String, String)>,
    run: &'a Run,
}

/// The swept values of a run, None when it is no sweep's point.
fn swept(run: &Run) -> Option<Vec<(String, String)>> {
    let o = run.resolved.get("sweep")?.as_object()?;
    let v: Vec<(String, String)> = o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
    (!v.is_empty()).then_some(v)
}

/// The metric that ranks the points: validation loss where every point has one, else the
/// training loss; lower is better for both.
fn ranking(points: &[Row]) -> Option<&'static str> {
    ["final_val_loss", "final_loss"].into_iter().find(|k| points.iter().all(|p| p.run.report[*k].as_f64().is_some_and(f64::is_finite)))
}

/// Sorts values numerically where they are numbers, else as text.
fn order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

/// The stage a run's definition names.
fn stage_of(run: &Run) -> String {
    run.resolved["stage"]["name"].as_str().or_else(|| run.resolved["stage"].as_str()).unwrap_or("run").to_string()
}

/// The points by stage and the swept names, when the runs are all points of one sweep.
fn grouped(runs: &[Run]) -> Option<(BTreeMap<String, Vec<Row<'_>>>, Vec<String>)> {
    let mut by_stage: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for run in runs {
        by_stage.entry(stage_of(run)).or_default().push(Row { values: swept(run)?, run });
    }
    let names: Vec<String> = by_stage.values().next()?[0].values.iter().map(|(k, _)| k.clone()).collect();
    if by_stage.values().flatten().any(|p| p.values.iter().map(|(k, _)| k).ne(names.iter())) {
        return None; // points of different sweeps
    }
    Some((by_stage, names))
}

/// The sweep section (HTML) and its plots, one section per stage the points ran; None when the
/// runs are not all points of one sweep.
pub fn section(runs: &[Run]) -> Option<(String, Vec<(String, String)>)> {
    let (by_stage, names) = grouped(runs)?;
    let (mut html, mut svgs) = (String::new(), vec![]);
    for (stage, mut points) in by_stage {
        points.sort_by(|a, b| a.values.iter().zip(&b.values).map(|((_, x), (_, y))| order(x, y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal));
        let metric = ranking(&points);
        let best = metric.and_then(|m| points.iter().enumerate().min_by(|a, b| a.1.run.report[m].as_f64().unwrap_or(f64::INFINITY).total_cmp(&b.1.run.report[m].as_f64().unwrap_or(f64::INFINITY))).map(|(i, _)| i));
        html += &format!("<h3>Stage <code>{}</code>: {} points</h3>", esc(&stage), points.len());
        if let (Some(m), Some(b)) = (metric, best) {
            let p = &points[b];
            html += &format!("<p><b>Best point</b>: {} with {} {}.</p>", esc(&label(&p.values)), m.replace('_', " "), esc(&human(m, &p.run.report[m])));
        }
        html += &table(&names, &points, best);
        if let Some(m) = metric {
            svgs.extend(plots(&stage, &names, &points, m));
        }
    }
    Some((html, svgs))
}

fn label(values: &[(String, String)]) -> String {
    values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// When the runs are the points of one sweep: its title, and each run labelled by its point
/// (and stage, when the points ran several) rather than by its long directory name.
pub fn relabel(runs: &mut [Run]) -> Option<String> {
    let stages = grouped(runs)?.0.len();
    let values = swept(&runs[0])?;
    let point = values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let experiment = runs[0].resolved["experiment"].as_str().unwrap_or_default();
    let name = experiment.strip_suffix(&format!("-{}", crate::sweep::name_suffix(&point))).unwrap_or(experiment).to_string();
    for r in runs.iter_mut() {
        let values = swept(r)?;
        r.label = if stages > 1 { format!("{} ({})", label(&values), stage_of(r)) } else { label(&values) };
    }
    Some(format!("Sweep {name}: {} points", runs.len() / stages.max(1)))
}

/// One row per point: its values, then the results people compare a sweep by.
fn table(names: &[String], points: &[Row], best: Option<usize>) -> String {
    let columns = ["final_val_loss", "final_loss", "params", "tokens", "tokens_per_s", "wall_seconds"];
    let shown: Vec<&str> = columns.into_iter().filter(|c| points.iter().any(|p| !p.run.report[*c].is_null())).collect();
    let head: String = names.iter().map(|n| format!("<th>{}</th>", esc(n))).chain(shown.iter().map(|c| format!("<th>{}</th>", c.replace('_', " ")))).collect();
    let rows: String = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cells: String = p.values.iter().map(|(_, v)| format!("<td>{}</td>", esc(v))).chain(shown.iter().map(|c| format!("<td>{}</td>", esc(&human(c, &p.run.report[*c]))))).collect();
            let mark = if Some(i) == best { " class=\"best\" style=\"font-weight:bold;background:#eef7ee\"" } else { "" };
            format!("<tr{mark}>{cells}</tr>")
        })
        .collect();
    format!("<table class=\"sweep\"><tr>{head}</tr>{rows}</table>")
}

/// For each swept name whose values are all numbers: `metric` against it, a line per setting of
/// the other names (log x when the values span a factor of 20 or more, as learning rates do).
fn plots(stage: &str, names: &[String], points: &[Row], metric: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for (axis, name) in names.iter().enumerate() {
        let xs: Option<Vec<f64>> = points.iter().map(|p| p.values[axis].1.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
        let Some(xs) = xs else { continue };
        let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        if lo == hi {
            continue;
        }
        // A line per setting of the other names, in the points' (numeric) order.
        let mut series: Vec<Series> = vec![];
        for (p, &x) in points.iter().zip(&xs) {
            let others: Vec<(String, String)> = p.values.iter().enumerate().filter(|(i, _)| *i != axis).map(|(_, v)| v.clone()).collect();
            let name = label(&others);
            let y = p.run.report[metric].as_f64().unwrap_or(f64::NAN);
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push((x, y)),
                None => series.push(Series { name, points: vec![(x, y)], dashed: false }),
            }
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let y = metric.trim_start_matches("final_").replace('_', " ");
        // Values a decade or more apart (learning rates, widths by powers) read best on a log axis.
        let log_x = lo > 0.0 && hi / lo >= 10.0;
        out.push((format!("{stage}-{y} vs {name}.svg").replace(' ', "_"), line_chart(&format!("{stage}: {y} against {name}"), name, &y, &series, log_x)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn run(values: Value, val: f64) -> Run {
        Run::from_parts("x", json!({"final_val_loss": val, "final_loss": val + 0.1, "params": 1000}), json!({"stage": {"name": "pretrain"}, "sweep": values}))
    }

    #[test]
    fn the_best_point_is_the_lowest_validation_loss_and_each_numeric_axis_is_plotted() {
        let runs = vec![
            run(json!({"d_model": "64", "norm": "layernorm"}), 2.0),
            run(json!({"d_model": "128", "norm": "layernorm"}), 1.8),
            run(json!({"d_model": "64", "norm": "rmsnorm"}), 1.95),
            run(json!({"d_model": "128", "norm": "rmsnorm"}), 1.7),
        ];
        let (html, svgs) = section(&runs).unwrap();
        assert!(html.contains("<b>Best point</b>: d_model=128, norm=rmsnorm with final val loss 1.700 nats/token."), "{html}");
        // Numeric order, not text order (64 before 128), and the best row marked.
        assert!(html.find("<td>64</td>").unwrap() < html.find("<td>128</td>").unwrap());
        assert_eq!(html.matches("class=\"best\"").count(), 1);
        // d_model is numeric (one chart, a line per norm); norm is not (no chart).
        assert_eq!(svgs.len(), 1, "{:?}", svgs.iter().map(|s| &s.0).collect::<Vec<_>>());
        assert_eq!(svgs[0].0, "pretrain-val_loss_vs_d_model.svg");
        assert_eq!(svgs[0].1.matches("<polyline").count(), 2);
        assert!(svgs[0].1.contains("norm=rmsnorm"));
    }

    #[test]
    fn runs_that_are_not_all_points_of_one_sweep_get_no_sweep_section() {
        let plain = Run::from_parts("y", json!({"final_val_loss": 1.0}), json!({"stage": {"name": "pretrain"}}));
        assert!(section(&[run(json!({"lr": "0.001"}), 2.0), plain]).is_none());
        assert!(section(&[run(json!({"lr": "0.001"}), 2.0), run(json!({"d_model": "64"}), 2.0)]).is_none());
    }

    #[test]
    fn a_learning_rate_sweep_is_plotted_on_a_log_axis() {
        let runs: Vec<Run> = [("0.0001", 2.5), ("0.001", 2.0), ("0.01", 2.2)].iter().map(|(lr, v)| run(json!({ "lr": lr }), *v)).collect();
        let (html, svgs) = section(&runs).unwrap();
        assert!(html.contains("<b>Best point</b>: lr=0.001"), "{html}");
        assert!(svgs[0].1.contains("1e-3"), "log ticks expected: {}", svgs[0].1);
    }
}
