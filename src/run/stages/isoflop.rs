//! An `isoflop` stage: Hoffmann et al.'s Approach 2 on your own corpus. Train every point of the
//! sweep (each a cached, resumable train run of its own), gather (params, tokens, val loss) into
//! points.csv, fit, predict the compute-optimal size at `predict` × the largest budget, train
//! that model, and report the predicted against the achieved loss.

//!
//! The sweep itself keeps no checkpoint: each point is a run of its own under the one lifecycle
//! (`ctx.train`), so a rerun reuses every finished point and resumes an interrupted one.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;

use crate::recipe::IsoflopSpec;
use crate::run::kit::files::write_atomic;
use crate::run::kit::lifecycle;
use crate::run::kit::StageCtx;
use crate::scaling::fit::{fit, Point};

fn val_loss(dir: &Path) -> Result<f64> {
    let run = lifecycle::finished(dir)?;
    run.report["final_val_loss"].as_f64().with_context(|| format!("{} lacks final_val_loss", dir.join("report.json").display()))
}

pub fn run(ctx: &StageCtx, iso: &IsoflopSpec) -> Result<()> {
    let (recipe, name, dir) = (ctx.recipe, ctx.label.as_str(), ctx.dir.as_path());
    // The leader owns the sweep's directory; the other processes train the points beside it.
    let leads = ctx.world.leads();
    if leads {
        if ctx.opts.fresh && dir.exists() {
            lifecycle::set_aside(dir)?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut pts = vec![];
    let mut rows = vec![];
    for (i, p) in iso.points.iter().enumerate() {
        let n = crate::plan::plan_model(&crate::lower::lower_model(&p.model), p.train.batch, p.train.context).params_active;
        let tokens = p.train.steps * p.train.tokens_per_step();
        tracing::info!("{name}: point {}/{}: C = {:.1e}, N = {n}, D = {tokens}", i + 1, iso.points.len(), p.budget);
        let pdir = dir.join("points").join(format!("{i:02}"));
        (ctx.train)(&ctx.sub(format!("{name}.{i:02}"), pdir.clone()), &p.model, &p.train)?;
        // The point's report is the leader's to write: read it once written.
        ctx.world.barrier()?;
        let loss = val_loss(&pdir)?;
        pts.push(Point { params: n as f64, tokens: tokens as f64, loss });
        rows.push(json!({"budget": p.budget, "params": n, "tokens": tokens, "d_model": p.model.d_model, "layers": p.model.layers, "val_loss": loss}));
    }
    if !leads {
        return Ok(());
    }
    let csv: String = std::iter::once("params,tokens,loss\n".to_string()).chain(pts.iter().map(|p| format!("{},{},{}\n", p.params, p.tokens, p.loss))).collect();
    write_atomic(&dir.join("points.csv"), csv.as_bytes())?;

    let f = fit(&pts, 50, recipe.seed).map_err(|e| anyhow::anyhow!("{name}: fitting the sweep: {e}"))?;
    let a2 = f.approach2.clone().context("the sweep's budgets did not each give a valley (a parabola opening upward); widen `spread` or add sizes")?;
    // Approach 2's power law through the minima, extrapolated to the check budget.
    let largest = iso.points.iter().map(|p| p.budget).fold(0.0, f64::max);
    let target_c = iso.predict * largest;
    let (lc, ln): (Vec<f64>, Vec<f64>) = a2.minima.iter().map(|m| (m.flops.ln(), m.params_opt.ln())).unzip();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let n_pred = (mean(&ln) + a2.a * (target_c.ln() - mean(&lc))).exp();
    // The minima's losses on a power law in C give Approach 2's loss prediction; Approach 3's
    // fitted L(N, D) gives a second one.
    let ll: Vec<f64> = a2.minima.iter().map(|m| m.loss_min.ln()).collect();
    let slope = {
        let (mx, my) = (mean(&lc), mean(&ll));
        lc.iter().zip(&ll).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / lc.iter().map(|x| (x - mx).powi(2)).sum::<f64>()
    };
    let loss_pred_a2 = (mean(&ll) + slope * (target_c.ln() - mean(&lc))).exp();

    let (mut model, n) = crate::plan::size_model(&iso.template, n_pred, iso.aspect, iso.head_dim);
    model.name = format!("{}-predicted", iso.template.name);
    let mut t = iso.train.clone();
    t.model = model.name.clone();
    t.steps = (target_c / (6.0 * n as f64 * t.tokens_per_step() as f64)).round().max(1.0) as u64;
    t.eval_every = t.steps;
    let loss_pred_a3 = f.law().loss(n as f64, (t.steps * t.tokens_per_step()) as f64);
    tracing::info!("{name}: predicted optimum at C = {target_c:.1e}: N ≈ {n_pred:.0} (sized {n}), {} steps; predicted loss {loss_pred_a2:.4} (Approach 2), {loss_pred_a3:.4} (Approach 3)", t.steps);
    let pdir = dir.join("predicted");
    (ctx.train)(&ctx.sub(format!("{name}.predicted"), pdir.clone()), &model, &t)?;
    let achieved = val_loss(&pdir)?;

    let report = json!({
        "experiment": recipe.experiment,
        "stage": name,
        "kind": "isoflop",
        "points": rows,
        "fit": f,
        "prediction": {
            "flops": target_c,
            "params_predicted": n_pred,
            "params_trained": n,
            "tokens": t.steps * t.tokens_per_step(),
            "loss_predicted_approach2": loss_pred_a2,
            "loss_predicted_approach3": loss_pred_a3,
            "loss_achieved": achieved,
        },
    });
    write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    if let Some(svg) = crate::report::plots::isoflop_svg(&f, &pts) {
        write_atomic(&dir.join("isoflop.svg"), svg.as_bytes())?;
    }
    write_atomic(&dir.join("contours.svg"), crate::report::plots::contour_svg(&f, &pts).as_bytes())?;
    tracing::info!("{name}: Approach 2: N_opt ∝ C^{:.3}, D_opt ∝ C^{:.3}; Approach 3: α = {:.3}, β = {:.3}", a2.a, a2.b, f.alpha, f.beta);
    tracing::info!("{name}: at {target_c:.1e} FLOPs: predicted loss {loss_pred_a2:.4} (A2) / {loss_pred_a3:.4} (A3), achieved {achieved:.4}; wrote {}", dir.display());
    Ok(())
}
