//! `roux budget` and `roux fit`.

use std::path::Path;

use roux::report::plots::isoflop_svg;
use roux::scaling::fit::{fit as fit_points, read_csv};
use roux::scaling::law::{solve, Law};
use roux::syntax::parse_number;

/// A law by name, or a fitted law from a `roux fit --json` file.
pub fn law_named(name: &str) -> Result<Law, String> {
    Ok(match name {
        "chinchilla" => Law::Chinchilla,
        "chinchilla.approach3" => Law::ChinchillaApproach3,
        "kaplan" => Law::Kaplan,
        file => {
            let text = roux::fsio::read_text(Path::new(file), 1 << 20).map_err(|e| format!("--law {file}: not a known law (chinchilla, chinchilla.approach3, kaplan) nor a readable fit file ({e})"))?;
            let p: roux::scaling::law::Parametric = serde_json::from_str(&text).map_err(|e| format!("{file}: not a `roux fit --json` file: {e}"))?;
            Law::Fitted(p)
        }
    })
}

fn number(flag: &str, v: Option<String>) -> Result<Option<f64>, String> {
    v.map(|s| match parse_number(&s) {
        Some(x) if x > 0.0 => Ok(x),
        _ => Err(format!("--{flag} {s}: expected a positive number such as 1e21 or 70B")),
    })
    .transpose()
}

pub fn budget(flops: Option<String>, params: Option<String>, tokens: Option<String>, law: &str, json: bool) -> u8 {
    let run = || -> Result<(), String> {
        let law = law_named(law)?;
        let b = solve(&law, number("flops", flops)?, number("params", params)?, number("tokens", tokens)?)?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&b).unwrap_or_default());
        } else {
            outln!("law     {}", law.name());
            outln!("params  {:.4e}", b.params);
            outln!("tokens  {:.4e}  ({:.1} tokens per parameter)", b.tokens, b.tokens / b.params);
            outln!("flops   {:.4e}", b.flops);
            outln!("loss    {:.4}  (predicted)", b.loss);
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// A points file larger than this is not a sweep's results.
const MAX_POINTS_BYTES: u64 = 16 << 20;

pub fn fit(points: &Path, json: bool, bootstrap: usize, out: Option<&Path>) -> u8 {
    let run = || -> Result<(), String> {
        let text = roux::fsio::read_text(points, MAX_POINTS_BYTES)?;
        let pts = read_csv(&text).map_err(|e| format!("{}: {e}", points.display()))?;
        let f = fit_points(&pts, bootstrap, 0)?;
        if let Some(dir) = out {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            roux::fsio::write_atomic(&dir.join("fit.json"), serde_json::to_string_pretty(&f).unwrap_or_default().as_bytes())?;
            if let Some(svg) = isoflop_svg(&f, &pts) {
                roux::fsio::write_atomic(&dir.join("isoflop.svg"), svg.as_bytes())?;
            }
            roux::fsio::write_atomic(&dir.join("contours.svg"), roux::report::plots::contour_svg(&f, &pts).as_bytes())?;
        }
        if json {
            outln!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            return Ok(());
        }
        let iv = |k: &str| f.intervals.get(k).map_or(String::new(), |i| format!("  [{:.4}, {:.4}]", i.lo, i.hi));
        outln!("Approach 3 (Huber δ=1e-3 on log loss, L-BFGS, {} points, 90% bootstrap intervals):", f.points);
        outln!("  L(N, D) = {:.4} + {:.4}/N^{:.4} + {:.4}/D^{:.4}", f.e, f.a_coef, f.alpha, f.b_coef, f.beta);
        outln!("  alpha {:.4}{}", f.alpha, iv("alpha"));
        outln!("  beta  {:.4}{}", f.beta, iv("beta"));
        outln!("  N_opt ∝ C^{:.4}{},  D_opt ∝ C^{:.4}{}", f.a, iv("a"), f.b, iv("b"));
        match &f.approach2 {
            Some(a2) => {
                outln!("Approach 2 (parabola per IsoFLOP budget): N_opt ∝ C^{:.4}, D_opt ∝ C^{:.4}", a2.a, a2.b);
                for m in &a2.minima {
                    outln!("  C = {:.3e}: N_opt {:.4e}, D_opt {:.4e}, loss {:.4}", m.flops, m.params_opt, m.tokens_opt, m.loss_min);
                }
            }
            None => outln!("Approach 2: needs ≥ 2 budgets with ≥ 3 sizes each (C = 6ND within 2%)"),
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

