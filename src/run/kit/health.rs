//! Training-health signals, read from a stage's metrics: what a person would look for in the
//! curves and might miss. Each analyser takes the logged rows (metrics.jsonl) and returns the
//! signals that fire, as words; `RunDir::finish` logs them as warnings and writes them into
//! report.json, whose page shows them first.

use serde_json::Value;

pub use crate::recipe::Thresholds;

/// One signal: a short name and the sentence for people.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub name: &'static str,
    pub message: String,
}

fn signal(name: &'static str, message: String) -> Signal {
    Signal { name, message }
}

/// The finite values of `key` in the rows, in order.
fn series(rows: &[Value], key: &str) -> Vec<f64> {
    rows.iter().filter_map(|r| r[key].as_f64()).filter(|v| v.is_finite()).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// First and last quarter means of a series of at least 8 values.
fn quarters(v: &[f64]) -> Option<(f64, f64)> {
    (v.len() >= 8).then(|| {
        let q = v.len() / 4;
        (mean(&v[..q]), mean(&v[v.len() - q..]))
    })
}

/// Every signal the rows show, with `report` for the signals read from a stage's result.
pub fn signals(rows: &[Value], report: &Value, th: &Thresholds) -> Vec<Signal> {
    let mut out = vec![];
    // A policy-gradient loss need not fall (its scale follows the advantages), nor online DPO's
    // or best-of-n's (every step's responses are new, written by the policy as it learns): only
    // losses on fixed data are judged.
    if !matches!(report["kind"].as_str(), Some("ppo" | "grpo" | "online_dpo" | "best_of_n")) {
        out.extend(loss_not_falling(rows, th));
    }
    out.extend(grad_spikes(rows, th));
    out.extend(moe(rows, th));
    out.extend(rl(rows, th));
    if let Some(f) = report["flat_groups_last_quarter"].as_f64().filter(|f| *f >= th.flat_groups) {
        out.push(signal("flat_groups", format!("{:.0}% of the groups in the last quarter of the steps had rewards all equal, which gives no learning signal; raise `temperature` or `group`, or add a graded term to `reward`", 100.0 * f)));
    }
    if let Some(r) = report["lora_update_ratio"].as_f64() {
        if r < th.lora_update {
            out.push(signal("lora_frozen", format!("the LoRA adapters barely moved: ‖ΔW‖/‖W‖ = {r:.1e}, below {:.0e} (raise the learning rate or the rank)", th.lora_update)));
        }
    }
    out
}

/// The training loss's last quarter is not below its first (a flat or rising curve).
pub fn loss_not_falling(rows: &[Value], th: &Thresholds) -> Option<Signal> {
    let (first, last) = quarters(&series(rows, "loss"))?;
    (last > th.loss_fall * first).then(|| {
        let how = if last > first { "rose" } else { "stayed flat" };
        signal("loss_not_falling", format!("the training loss {how}: {first:.4} in the first quarter of the logged steps, {last:.4} in the last"))
    })
}

/// Gradient norms far above the median of the logs before them (the last 20; at least 5, so
/// the large norms of the first steps are not measured against nothing) that had not come back
/// by the next log: instability. A lone norm that falls back at once is one hard batch (a
/// reward model near convergence meets a misranked pair), which clipping absorbs.
pub fn grad_spikes(rows: &[Value], th: &Thresholds) -> Option<Signal> {
    let g: Vec<(u64, f64)> = rows.iter().filter_map(|r| Some((r["step"].as_u64()?, r["grad_norm"].as_f64()?))).filter(|(_, v)| v.is_finite()).collect();
    let median = |w: &[(u64, f64)]| {
        let mut v: Vec<f64> = w.iter().map(|x| x.1).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let spikes: Vec<(u64, f64, f64)> = (5..g.len())
        .filter_map(|i| {
            let m = median(&g[i.saturating_sub(20)..i]);
            let stays = g.get(i + 1).is_none_or(|next| next.1 > th.grad_spike / 2.0 * m);
            (m > 0.0 && g[i].1 > th.grad_spike * m && stays).then_some((g[i].0, g[i].1, m))
        })
        .collect();
    let (step, worst, m) = spikes.iter().copied().max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)))?;
    Some(signal("grad_spike", format!("{} gradient-norm spike(s) above {}× the median of the logs before, not back by the next log; the largest {worst:.3} at step {step} (median before {m:.3})", spikes.len(), th.grad_spike)))
}

/// Mixture-of-experts layers that drop tokens, favour one expert, or collapse their router,
/// judged on the last logged row.
pub fn moe(rows: &[Value], th: &Thresholds) -> Vec<Signal> {
    let mut out = vec![];
    let Some(layers) = rows.iter().rev().find_map(|r| r["moe"].as_array().filter(|a| !a.is_empty())) else { return out };
    for l in layers {
        // The layer's module path (`blocks.1.ffn`), named as the block it sits in.
        let block = l["layer"].as_str().map_or_else(|| l["layer"].to_string(), |p| p.trim_end_matches(".ffn").replace("blocks.", ""));
        let load: Vec<f64> = l["load"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
        if let Some(d) = l["dropped"].as_f64().filter(|d| *d > th.drop_rate) {
            out.push(signal("moe_dropping", format!("block {block} drops {:.0}% of its tokens (above {:.0}%): raise the capacity factor", 100.0 * d, 100.0 * th.drop_rate)));
        }
        let total: f64 = load.iter().sum();
        if load.len() > 1 && total > 0.0 {
            let (e, top) = load.iter().enumerate().fold((0, 0.0f64), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            if top / total > th.expert_share {
                out.push(signal("moe_imbalance", format!("block {block}: expert {e} takes {:.0}% of the assignments (above {:.0}%; balanced is {:.0}%)", 100.0 * top / total, 100.0 * th.expert_share, 100.0 / load.len() as f64)));
            }
            if let Some(h) = l["entropy"].as_f64() {
                let max = (load.len() as f64).ln();
                if h < th.entropy_floor * max {
                    out.push(signal("router_collapse", format!("block {block}: the router's entropy is {h:.3} nats, below {:.0}% of its maximum {max:.3}: it routes almost every token the same way", 100.0 * th.entropy_floor)));
                }
            }
        }
    }
    out
}

/// Reinforcement learning: the reward-model score falling, the KL to the reference too large
/// (PPO's and GRPO's `reward` and `kl`; online DPO's `objective/scores` and `objective/kl`).
pub fn rl(rows: &[Value], th: &Thresholds) -> Vec<Signal> {
    let mut out = vec![];
    let either = |a: &str, b: &str| Some(series(rows, a)).filter(|s| !s.is_empty()).unwrap_or_else(|| series(rows, b));
    if let Some((first, last)) = quarters(&either("reward", "objective/scores")) {
        if first - last > th.reward_fall * first.abs().max(1e-9) {
            out.push(signal("reward_falling", format!("the reward-model score fell from {first:.3} (first quarter) to {last:.3} (last quarter)")));
        }
    }
    let kl = either("kl", "objective/kl");
    if let Some(&k) = kl.iter().max_by(|a, b| a.total_cmp(b)).filter(|k| **k > th.kl_max) {
        out.push(signal("kl_high", format!("the KL to the reference reached {k:.3} nats per sequence (above {}): the policy drifts far from where it started", th.kl_max)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(key: &str, v: &[f64]) -> Vec<Value> {
        v.iter().enumerate().map(|(i, x)| json!({"step": i as u64 * 10, key: x})).collect()
    }

    #[test]
    fn a_falling_loss_is_healthy_a_flat_or_rising_one_is_not() {
        let th = Thresholds::default();
        let falling: Vec<f64> = (0..20).map(|i| 5.0 - 0.1 * i as f64).collect();
        assert_eq!(loss_not_falling(&rows("loss", &falling), &th), None);
        // First quarter (5 values) mean 3.0, last 3.0: flat.
        let flat = vec![3.0; 20];
        assert_eq!(loss_not_falling(&rows("loss", &flat), &th).unwrap().message, "the training loss stayed flat: 3.0000 in the first quarter of the logged steps, 3.0000 in the last");
        let rising: Vec<f64> = (0..20).map(|i| 2.0 + 0.1 * i as f64).collect();
        // First quarter 2.0..2.4 (mean 2.2), last 3.5..3.9 (mean 3.7).
        assert!(loss_not_falling(&rows("loss", &rising), &th).unwrap().message.contains("rose: 2.2000 in the first quarter of the logged steps, 3.7000"));
    }

    #[test]
    fn a_spike_is_named_with_its_step() {
        let th = Thresholds::default();
        // Norms of 1, then 25 at step 60 still 8 at step 70 (above 10/2 × 1): unstable.
        let mut g = vec![1.0; 10];
        (g[6], g[7]) = (25.0, 8.0);
        let s = grad_spikes(&rows("grad_norm", &g), &th).unwrap();
        assert_eq!(s.message, "1 gradient-norm spike(s) above 10× the median of the logs before, not back by the next log; the largest 25.000 at step 60 (median before 1.000)");
        assert_eq!(grad_spikes(&rows("grad_norm", &[1.0; 10]), &th), None);
        // One hard batch: back to 1.2 at the next log.
        g[7] = 1.2;
        assert_eq!(grad_spikes(&rows("grad_norm", &g), &th), None);
        // The large norms of the first steps have nothing before them to be a spike against.
        let early = [46.0, 3.0, 1.0, 0.8, 0.7, 0.7, 0.7, 0.6];
        assert_eq!(grad_spikes(&rows("grad_norm", &early), &th), None);
        // A spike in the last log counts: nothing shows it came back.
        let mut last = vec![1.0; 8];
        last[7] = 30.0;
        assert!(grad_spikes(&rows("grad_norm", &last), &th).is_some());
    }

    #[test]
    fn moe_layers_that_drop_favour_or_collapse_are_named() {
        let th = Thresholds::default();
        // Four experts, one takes 81% of the assignments; 56% of tokens dropped; entropy 0.05
        // nats against ln 4 = 1.386.
        let r = vec![json!({"step": 10, "moe": [{"layer": "blocks.0.ffn", "load": [81.0, 9.0, 5.0, 5.0], "dropped": 0.56, "entropy": 0.05}]})];
        let names: Vec<&str> = moe(&r, &th).iter().map(|s| s.name).collect();
        assert_eq!(names, ["moe_dropping", "moe_imbalance", "router_collapse"]);
        assert_eq!(moe(&r, &th)[1].message, "block 0: expert 0 takes 81% of the assignments (above 60%; balanced is 25%)");
        let healthy = vec![json!({"step": 10, "moe": [{"layer": "blocks.1.ffn", "load": [26.0, 24.0, 25.0, 25.0], "dropped": 0.02, "entropy": 1.3}]})];
        assert!(moe(&healthy, &th).is_empty());
    }

    #[test]
    fn a_falling_reward_and_a_large_kl_are_named() {
        let th = Thresholds::default();
        // PPO's reward-model score from 2.51 down to 0.45 while KL spikes to 5.
        let r: Vec<Value> = (0..12).map(|i| json!({"step": i, "reward": 2.51 - (2.06 / 11.0) * i as f64, "kl": if i == 9 { 5.0 } else { 0.1 }})).collect();
        let names: Vec<&str> = rl(&r, &th).iter().map(|s| s.name).collect();
        assert_eq!(names, ["reward_falling", "kl_high"]);
        let ok: Vec<Value> = (0..12).map(|i| json!({"step": i, "reward": 0.5 + 0.1 * i as f64, "kl": 0.2})).collect();
        assert!(rl(&ok, &th).is_empty());
        // Online DPO logs them under TRL's names.
        let online: Vec<Value> = (0..12).map(|i| json!({"step": i, "objective/scores": 2.51 - (2.06 / 11.0) * i as f64, "objective/kl": if i == 9 { 5.0 } else { 0.1 }})).collect();
        let names: Vec<&str> = rl(&online, &th).iter().map(|s| s.name).collect();
        assert_eq!(names, ["reward_falling", "kl_high"]);
    }
}
