//! Plots of a run directory, from its metrics.jsonl: the loss curves (train and validation),
//! the learning rate, for mixture-of-experts models the load of every expert over training, and
//! for post-training stages accuracy, reward against gold reward, KL and held-out behaviour.

use std::path::{Path, PathBuf};

use super::svg::{chart, line_chart, Series};

/// A metrics file larger than this is not one roux wrote (a line every `log_every` steps).
const MAX_METRICS_BYTES: u64 = 256 << 20;

pub(crate) fn read_metrics(dir: &Path) -> Result<Vec<serde_json::Value>, String> {
    let path = dir.join("metrics.jsonl");
    let text = crate::fsio::read_text(&path, MAX_METRICS_BYTES)?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

fn series(m: &[serde_json::Value], name: &str, key: &str, dashed: bool) -> Series {
    Series {
        name: name.into(),
        points: m.iter().filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?))).collect(),
        dashed,
    }
}

/// The `PREFIX/NAME` keys the metrics log (`eval_data`: `val_loss/NAME`, `val_accuracy/NAME`),
/// sorted; at most 16.
fn other_sets(m: &[serde_json::Value], prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = m.iter().filter_map(|v| v.as_object()).flat_map(|o| o.keys().filter(|k| k.strip_prefix(prefix).is_some_and(|n| n.starts_with('/'))).cloned()).collect();
    keys.sort();
    keys.dedup();
    keys.truncate(16);
    keys
}

/// Write the run's SVG plots next to its metrics; returns their paths.
pub fn write_run_plots(dir: &Path, title: &str) -> Result<Vec<PathBuf>, String> {
    let m = read_metrics(dir)?;
    let mut written = vec![];
    let mut put = |name: String, svg: String| -> Result<(), String> {
        let p = dir.join(name);
        crate::fsio::write_atomic(&p, svg.as_bytes())?;
        written.push(p);
        Ok(())
    };
    let has = |key: &str| m.iter().any(|v| v[key].is_number());
    // One chart per group of keys a stage logs: pretraining and SFT losses, reward-model and DPO
    // accuracy, PPO's reward and KL, held-out scores. A chart is drawn when any of its keys is.
    let charts: &[(&str, &str, &str, &[(&str, &str, bool)])] = &[
        ("loss", "loss", "nats per token", &[("train", "loss", false), ("validation", "val_loss", true)]),
        ("lr", "learning rate", "lr", &[("lr", "lr", false)]),
        ("accuracy", "pairwise accuracy", "share of pairs", &[("batch", "accuracy", false), ("held-out", "val_accuracy", true), ("held-out", "eval_rewards/accuracies", true)]),
        (
            "rewards",
            "DPO's implicit rewards β·(log π − log π_ref)",
            "reward",
            &[("chosen", "rewards/chosen", false), ("rejected", "rewards/rejected", false), ("held-out chosen", "eval_rewards/chosen", true), ("held-out rejected", "eval_rewards/rejected", true)],
        ),
        ("reward", "reward", "reward", &[("training reward", "reward", false), ("training reward", "objective/scores", false), ("gold", "gold", false), ("held-out gold", "val_sampled_gold", true)]),
        ("kl", "KL to the reference", "nats per response", &[("KL", "kl", false), ("KL", "objective/kl", false), ("held-out KL", "val_kl", true), ("KL coefficient", "kl_coef", true)]),
        ("ppo", "policy-update internals", "value", &[("entropy", "entropy", false), ("clip fraction", "clip_fraction", false), ("value loss", "value_loss", true)]),
        ("groups", "GRPO's learning signal", "share of groups", &[("groups whose rewards are all equal", "flat_groups", false)]),
        ("on_policy", "distillation: steps on the student's own responses", "share of steps", &[("on-policy", "on_policy", false)]),
        ("choices", "multiple-choice accuracy (eval_choices)", "share of questions", &[("accuracy", "val_choices_acc", false), ("per character", "val_choices_acc_norm", true)]),
        (
            "held_out",
            "held-out behaviour",
            "share of prompts",
            &[
                ("exact (greedy)", "exact", false),
                ("exact (sampled)", "sampled_exact", true),
                ("verbose (sampled)", "sampled_verbose", true),
                ("exact (greedy)", "val_exact", false),
                ("exact (sampled)", "val_sampled_exact", true),
                ("verbose (sampled)", "val_sampled_verbose", true),
            ],
        ),
    ];
    for (file, what, unit, keys) in charts {
        if !keys.iter().any(|(_, k, _)| has(k)) {
            continue;
        }
        let mut series: Vec<Series> = keys.iter().filter(|(_, k, _)| has(k)).map(|(name, k, dashed)| series(&m, name, k, *dashed)).collect();
        // `eval_data`'s corpora or sets, each a dashed line under its name.
        let prefixes: &[&str] = match *file {
            "loss" => &["val_loss"],
            "accuracy" => &["val_accuracy", "eval_rewards/accuracies"],
            _ => &[],
        };
        for p in prefixes {
            for k in other_sets(&m, p) {
                series.push(self::series(&m, &k[p.len() + 1..], &k, true));
            }
        }
        put(format!("{file}.svg"), line_chart(&format!("{title}: {what}"), "step", unit, &series, false))?;
    }
    // Expert load: one chart per MoE layer, one line per expert.
    let layers = m.last().and_then(|v| v["moe"].as_array().cloned()).unwrap_or_default();
    for (li, layer) in layers.iter().enumerate() {
        let name = layer["layer"].as_str().unwrap_or("moe").to_string();
        let experts = layer["load"].as_array().map_or(0, |a| a.len());
        let mut per_expert: Vec<Series> = (0..experts.min(16))
            .map(|e| Series {
                name: format!("expert {e}"),
                points: m.iter().filter_map(|v| Some((v["step"].as_f64()?, v["moe"][li]["load"][e].as_f64()?))).collect(),
                dashed: false,
            })
            .collect();
        // The balanced share every expert would take.
        let steps: Vec<f64> = m.iter().filter_map(|v| v["step"].as_f64()).collect();
        if let (Some(&a), Some(&b), true) = (steps.first(), steps.last(), experts > 0) {
            per_expert.push(Series { name: "1/E (balanced)".into(), points: vec![(a, 1.0 / experts as f64), (b, 1.0 / experts as f64)], dashed: true });
        }
        put(format!("expert_load.{name}.svg"), line_chart(&format!("{title}: expert load, {name}"), "step", "fraction of routed tokens", &per_expert, false))?;
        // The router's own numbers: dropped share, entropy and every auxiliary-loss part it logs.
        let keys: Vec<String> = layer.as_object().map(|o| o.keys().filter(|k| !matches!(k.as_str(), "layer" | "load")).cloned().collect()).unwrap_or_default();
        let router: Vec<Series> = keys
            .iter()
            .map(|k| Series { name: k.replace('_', " "), points: m.iter().filter_map(|v| Some((v["step"].as_f64()?, v["moe"][li][k.as_str()].as_f64()?))).collect(), dashed: k != "dropped" && k != "entropy" })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !router.is_empty() {
            put(format!("router.{name}.svg"), line_chart(&format!("{title}: router, {name}"), "step", "value", &router, false))?;
        }
    }
    Ok(written)
}

/// A perplexity table's held-out loss against the context before each predicted token, a line
/// per policy (`by_position`: each span of context lengths and its mean loss): a model that
/// uses its context falls to the right.
pub fn by_position_svg(title: &str, policies: &[(String, Vec<(usize, usize, f64, u64)>)]) -> String {
    let series: Vec<Series> = policies
        .iter()
        .map(|(name, spans)| Series { name: name.clone(), points: spans.iter().map(|&(a, b, loss, _)| ((a + b) as f64 / 2.0, loss)).collect(), dashed: false })
        .collect();
    line_chart(&format!("{title}: held-out loss by context"), "tokens before the predicted one", "nats per token", &series, false)
}

/// Loss against parameters for every IsoFLOP budget, with its fitted parabola (dashed).
pub fn isoflop_svg(f: &crate::scaling::fit::Fit, pts: &[crate::scaling::fit::Point]) -> Option<String> {
    let a2 = f.approach2.as_ref()?;
    let mut series = vec![];
    for m in &a2.minima {
        let mut own: Vec<(f64, f64)> =
            pts.iter().filter(|p| (6.0 * p.params * p.tokens / m.flops - 1.0).abs() < 0.02).map(|p| (p.params, p.loss)).collect();
        own.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (lo, hi) = (own.first()?.0.ln(), own.last()?.0.ln());
        let curve: Vec<(f64, f64)> = (0..=40)
            .map(|i| {
                let x = lo + (hi - lo) * i as f64 / 40.0;
                (x.exp(), m.parabola[0] + m.parabola[1] * x + m.parabola[2] * x * x)
            })
            .collect();
        series.push(Series { name: format!("C={:.1e}", m.flops), points: own, dashed: false });
        series.push(Series { name: "  parabola".into(), points: curve, dashed: true });
    }
    series.push(Series { name: "minima".into(), points: a2.minima.iter().map(|m| (m.params_opt, m.loss_min)).collect(), dashed: true });
    Some(line_chart("IsoFLOP profiles", "parameters (log)", "loss", &series, true))
}

/// Iso-loss contours of a fitted L(N, D) over parameters × tokens (log-log), the efficient
/// frontier (N_opt(C), D_opt(C)), and the measured points.
pub fn contour_svg(f: &crate::scaling::fit::Fit, pts: &[crate::scaling::fit::Point]) -> String {
    let law = f.law();
    let (nmin, nmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.params), b.max(p.params)));
    let (lo, hi) = ((nmin / 4.0).ln(), (nmax * 4.0).ln());
    let (lmin, lmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.loss), b.max(p.loss)));
    let mut series = vec![];
    // D on the curve L(N, D) = level: D = (B / (level − E − A/N^α))^(1/β), where that is positive.
    for i in 0..6 {
        let level = lmin - 0.05 + (lmax - lmin + 0.1) * i as f64 / 5.0;
        let curve: Vec<(f64, f64)> = (0..=80)
            .filter_map(|k| {
                let n = (lo + (hi - lo) * k as f64 / 80.0).exp();
                let rest = level - law.e - law.a / n.powf(law.alpha);
                (rest > 0.0).then(|| (n, (law.b / rest).powf(1.0 / law.beta))).filter(|(_, d)| d.is_finite() && *d < 1e30)
            })
            .collect();
        if curve.len() > 1 {
            series.push(Series { name: format!("L = {level:.3}"), points: curve, dashed: true });
        }
    }
    let (cmin, cmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        let c = 6.0 * p.params * p.tokens;
        (a.min(c), b.max(c))
    });
    let frontier: Vec<(f64, f64)> = (0..=40).map(|k| law.optimum((cmin / 3.0) * (cmax * 30.0 / (cmin / 3.0)).powf(k as f64 / 40.0))).collect();
    series.push(Series { name: "efficient frontier".into(), points: frontier, dashed: false });
    let mut measured: Vec<(f64, f64)> = pts.iter().map(|p| (p.params, p.tokens)).collect();
    measured.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, p) in measured.iter().enumerate() {
        series.push(Series { name: if i == 0 { "runs".into() } else { String::new() }, points: vec![*p], dashed: false });
    }
    chart("Fitted loss contours and the efficient frontier", "parameters (log)", "tokens (log)", &series, true, true)
}
