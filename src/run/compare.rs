//! A `compare` stage: every listed policy on the same held-out prompts — mean gold reward,
//! exact-match accuracy (the preferred behaviour: right answer, nothing after it) and KL to the
//! reference — printed as a table and written to table.md and report.json.

use anyhow::Result;
use serde_json::json;
use std::path::Path;

use super::seqs::score;
use super::stage_run::{begin, freeze, instructions, load_lm};
use super::RunOptions;
use crate::recipe::{CompareSpec, Recipe, StageSpec};

pub fn run_compare(recipe: &Recipe, source: &str, stage: &StageSpec, c: &CompareSpec, runs: &Path, opts: &RunOptions) -> Result<()> {
    let Some(run) = begin(recipe, source, stage, runs, 1, c.device, opts)? else {
        // Cached: show the table again.
        if let Ok(t) = std::fs::read_to_string(runs.join(&stage.name).join("table.md")) {
            tracing::info!("{t}");
        }
        return Ok(());
    };
    let (set, split) = instructions(recipe, &c.data)?;
    let held: Vec<_> = split.held_out.into_iter().take(c.examples).collect();
    let mut reference = load_lm(recipe, runs, &c.reference, run.device)?;
    freeze(&mut reference);
    let mut rows = vec![];
    let mut table = format!(
        "| policy | greedy: gold reward | exact match | sampled: gold reward | preferred (exact) | verbose | KL to reference |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (label, r) in &c.policies {
        let m = load_lm(recipe, runs, r, run.device)?;
        let s = score(&m, Some(&reference), &set, &held, c.max_new);
        table.push_str(&format!(
            "| {label} | {:.3} | {:.1}% | {:.3} | {:.1}% | {:.1}% | {:.3} |\n",
            s.gold,
            100.0 * s.exact,
            s.sampled_gold,
            100.0 * s.sampled_exact,
            100.0 * s.sampled_verbose,
            s.kl.unwrap_or(0.0)
        ));
        tracing::info!("{}: {label}: gold {:.3}, exact {:.1}%, KL {:.3}; e.g. {:?}", stage.name, s.gold, 100.0 * s.exact, s.kl.unwrap_or(0.0), s.samples.first());
        rows.push(json!({"policy": label, "score": s}));
    }
    table.push_str(&format!("\n{} held-out prompts of `{}`; greedy decoding for the first two columns; then one response sampled at temperature 1 per prompt (the policy's behaviour): gold reward, preferred behaviour (the answer and nothing more), verbose (the answer, then more), and KL(π ‖ reference) per response.\n", held.len(), set.name));
    tracing::info!("\n{table}");
    super::checkpoint::write_atomic(&run.dir.join("table.md"), table.as_bytes())?;
    let report = json!({"experiment": recipe.experiment, "kind": "compare", "examples": held.len(), "rows": rows});
    let title = format!("{} / {}", recipe.experiment, stage.name);
    // No metrics: the stage is one evaluation. An empty metrics file keeps plots quiet.
    run.finish(&[], report, &title)
}
