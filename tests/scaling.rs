//! An IsoFLOP sweep end to end: every point trains, the fit runs, the predicted optimum is
//! trained at the larger budget, and the report holds predicted and achieved losses.
#![cfg(feature = "torch")]

use std::path::Path;

#[test]
fn a_miniature_isoflop_sweep_runs_fits_and_checks_its_prediction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/test-runs/isoflop");
    let _ = std::fs::remove_dir_all(&out);
    let recipe = root.join("tests/fixtures/tiny-isoflop.roux");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .env("ROUX_QUIET", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = out.join("tiny-isoflop/sweep");
    let csv = std::fs::read_to_string(dir.join("points.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "{csv}"); // 2 budgets × 3 sizes
    // Every point spends its budget: 6·N·D within 5% of C (steps are whole).
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for p in r["points"].as_array().unwrap() {
        let c = 6.0 * p["params"].as_f64().unwrap() * p["tokens"].as_f64().unwrap();
        assert!((c / p["budget"].as_f64().unwrap() - 1.0).abs() < 0.05, "{p}");
    }
    let pred = &r["prediction"];
    assert_eq!(pred["flops"].as_f64(), Some(9e10));
    let (predicted, achieved) = (pred["loss_predicted_approach2"].as_f64().unwrap(), pred["loss_achieved"].as_f64().unwrap());
    assert!(predicted.is_finite() && achieved.is_finite() && achieved < 3.5, "{pred}");
    assert!(dir.join("isoflop.svg").exists());
    // Rerunning reuses every point and the predicted run.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()]).env("ROUX_QUIET", "1").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stderr).matches("up to date").count(), 7);
}
