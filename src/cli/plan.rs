//! `roux plan` and `roux graph`.

use std::path::Path;

use crate::GraphFormat;
use roux::lower::{lower_model, lower_stages, render};
use roux::plan::{plan, plan_world};

pub fn run(file: &Path, json: bool, world: Option<usize>) -> u8 {
    let c = match super::check::load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let plans: Vec<_> = c.recipes().into_iter().map(plan).collect();
    let mut layouts = vec![];
    if let Some(w) = world {
        for r in c.recipes() {
            match plan_world(r, w) {
                Ok(l) => layouts.push(l),
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
        }
    }
    if json {
        let mut values: Vec<serde_json::Value> = plans.iter().map(|p| serde_json::to_value(p).unwrap_or_default()).collect();
        for (v, l) in values.iter_mut().zip(&layouts) {
            v["processes"] = serde_json::to_value(l).unwrap_or_default();
        }
        // One object for a recipe, an array for the points of a sweep.
        let v = if c.points.is_empty() { values.swap_remove(0) } else { values.into() };
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    for (i, p) in plans.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        print_plan(p);
        if let Some(l) = layouts.get(i) {
            print_world(l);
        }
    }
    0
}

fn print_world(l: &[roux::plan::ProcessPlan]) {
    let Some(first) = l.first() else { return };
    outln!("\nper process, {} data-parallel processes:", first.processes);
    outln!("{:<12} {:>11} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>12}", "stage", "micro×acc", "weights", "grads", "moments", "opt other", "activations", "total", "sent/step");
    for p in l {
        let moments = if p.sharded_optimizer { format!("{}*", bytes(p.moment_bytes)) } else { bytes(p.moment_bytes) };
        outln!(
            "{:<12} {:>11} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>12}",
            p.stage,
            format!("{} × {}", p.micro_batch, p.accumulate),
            bytes(p.weight_bytes),
            bytes(p.gradient_bytes),
            moments,
            bytes(p.optimizer_other_bytes),
            bytes(p.activation_bytes),
            bytes(p.total_bytes),
            bytes(p.sent_bytes_per_step)
        );
    }
    if l.iter().any(|p| p.sharded_optimizer) {
        outln!("* sharded over the processes (shard_optimizer = true, ZeRO-1)");
    }
    for p in l.iter().filter(|p| p.expert_parallel > 1) {
        outln!(
            "{}: experts divided over {} groups of {} processes: each holds {} of the {} parameters and also sends {} a step for them (router logits, tokens to experts and back)",
            p.stage,
            p.processes / p.expert_parallel,
            p.expert_parallel,
            group(p.held_params),
            group(p.params),
            bytes(p.expert_sent_bytes_per_step)
        );
    }
}

fn print_plan(p: &roux::plan::Plan) {
    outln!("experiment \"{}\"\n", p.experiment);
    outln!(
        "{:<12} {:>15} {:>15} {:>15} {:>12} {:>12} {:>11}",
        "model", "params", "active", "non-embedding", "6N/token", "AppF/token", "train mem"
    );
    for m in &p.models {
        outln!(
            "{:<12} {:>15} {:>15} {:>15} {:>12} {:>12} {:>11}",
            m.name,
            group(m.params_total),
            group(m.params_active),
            group(m.params_non_embedding),
            sci(m.flops_per_token_6n),
            sci(m.flops_per_token_appendix_f),
            bytes(m.train_memory_bytes)
        );
    }
    outln!("\n{:<12} {:<12} {:<16} {:>10} {:>14} {:>12} {:>14} {:>11}", "stage", "kind", "after", "steps", "tokens", "FLOPs", "trainable", "memory");
    for s in &p.stages {
        let after = if s.after.is_empty() { "-".to_string() } else { s.after.join(",") };
        outln!("{:<12} {:<12} {:<16} {:>10} {:>14} {:>12} {:>14} {:>11}", s.name, s.kind, after, group(s.steps), group(s.tokens), sci(s.flops), group(s.trainable), bytes(s.memory_bytes));
    }
}

pub fn graph(file: &Path, format: GraphFormat) -> u8 {
    let c = match super::check::load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let recipe = c.recipe.clone().expect("checked");
    let models: Vec<_> = recipe.models.iter().map(lower_model).collect();
    let stages = lower_stages(&recipe);
    match format {
        GraphFormat::Dot => out!("{}", render::dot(&models, &stages, &recipe.experiment)),
        GraphFormat::Json => outln!("{}", serde_json::to_string_pretty(&render::json(&models, &stages, &recipe.experiment)).unwrap_or_default()),
    }
    0
}

pub fn group(n: u64) -> String {
    roux::diag::thousands(n)
}

pub fn sci(x: f64) -> String {
    format!("{x:.3e}")
}

pub fn bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

pub fn report(runs: &[std::path::PathBuf], output: Option<&Path>) -> u8 {
    let single = runs.len() == 1 && (runs[0].join("report.json").is_file() || runs[0].join("metrics.jsonl").is_file());
    if !single {
        return compare(runs, output);
    }
    let run = runs[0].as_path();
    let title = run.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(" / ");
    let result = roux::report::plots::write_run_plots(run, &title).and_then(|mut files| {
        files.extend(roux::report::html::write_pngs(run)?);
        let html = roux::report::html::report_html(run, &title)?;
        let page = run.join("report.html");
        roux::fsio::write_atomic(&page, html.as_bytes())?;
        files.push(page);
        Ok(files)
    });
    match result {
        Ok(files) => {
            for f in files {
                outln!("{}", f.display());
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `roux report A B …`: one page comparing runs.
fn compare(runs: &[std::path::PathBuf], output: Option<&Path>) -> u8 {
    let page = output.map_or_else(|| std::path::PathBuf::from("compare.html"), Path::to_path_buf);
    let result = roux::report::runs::runs_of(runs).and_then(|mut rs| {
        let experiment = roux::report::stages::one_experiment(&rs).then(|| format!("Experiment {}: {} stages", rs[0].experiment(), rs.len()));
        let title = roux::report::sweep::relabel(&mut rs).or(experiment).unwrap_or_else(|| format!("{} runs compared", rs.len()));
        roux::fsio::write_atomic(&page, roux::report::compare::compare_html(&rs, &title).as_bytes())
    });
    match result {
        Ok(()) => {
            outln!("{}", page.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
