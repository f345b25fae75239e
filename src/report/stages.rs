//! The summary that leads an experiment's report (`roux report runs/<experiment>`): one row per
//! stage with its kind, its headline result, its time and its warnings, before any curve.

use serde_json::Value;

use super::html::{esc, human};
use super::runs::Run;

/// Whether `runs` are the stages of one experiment (its directory, or its stages named one by
/// one): then definitions of different kinds are not compared setting by setting.
pub fn one_experiment(runs: &[Run]) -> bool {
    let names: Vec<&str> = runs.iter().filter_map(|r| r.resolved["experiment"].as_str()).collect();
    let stages: std::collections::BTreeSet<&str> = runs.iter().filter_map(|r| r.report["stage"].as_str()).collect();
    runs.len() > 1 && names.len() == runs.len() && names.iter().all(|n| *n == names[0]) && stages.len() == runs.len()
}

/// A stage's result in a few words: what its kind is judged by.
fn headline(r: &Value) -> String {
    let pct = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
    match r["kind"].as_str().unwrap_or_default() {
        "train" => {
            let mut parts = vec![format!("validation loss {}", human("final_val_loss", &r["final_val_loss"]))];
            if r["final_choices_acc"].is_number() {
                parts.push(format!("multiple-choice accuracy {}", pct(&r["final_choices_acc"])));
            }
            if let Some(other) = r["final_val_losses"].as_object().filter(|o| !o.is_empty()) {
                parts.push(format!("held-out loss on {}", other.iter().map(|(k, v)| format!("{k} {}", num(v))).collect::<Vec<_>>().join(", ")));
            }
            parts.join("; ")
        }
        "finetune" => format!("held-out exact match {} (was {})", pct(&r["after"]["exact"]), pct(&r["before"]["exact"])),
        "reward_model" => format!("held-out pairwise accuracy {}", pct(&r["held_out_accuracy"])),
        "dpo" if r["held_out_feedback"].is_u64() => format!("held-out reward margin {}; sampled gold reward {} (was {})", num(&r["held_out_rewards"]["margin"]), num(&r["after"]["sampled_gold"]), num(&r["before"]["sampled_gold"])),
        "dpo" => format!("held-out pairwise accuracy {}; sampled gold reward {} (was {})", pct(&r["held_out_rewards"]["accuracy"]), num(&r["after"]["sampled_gold"]), num(&r["before"]["sampled_gold"])),
        "distill" => format!("held-out exact match {} (was {}; the teacher's {})", pct(&r["after"]["exact"]), pct(&r["before"]["exact"]), pct(&r["teacher_score"]["exact"])),
        "ppo" | "grpo" | "online_dpo" | "best_of_n" => format!("sampled gold reward {} (was {})", num(&r["after"]["sampled_gold"]), num(&r["before"]["sampled_gold"])),
        "compare" if r["rows"][0]["choices"].is_object() => {
            let accs: Vec<String> = r["rows"].as_array().into_iter().flatten().map(|row| format!("{} {}", row["policy"].as_str().unwrap_or("?"), pct(&row["choices"]["acc"]))).collect();
            format!("multiple-choice accuracy on {} questions: {}", human("examples", &r["examples"]), accs.join(", "))
        }
        // Policies of several tokenizers: the measure they share.
        "compare" if r["rows"][0]["perplexity"].is_object() && r["tokenizers"].as_u64() > Some(1) => {
            let bpb: Vec<String> = r["rows"].as_array().into_iter().flatten().map(|row| format!("{} {}", row["policy"].as_str().unwrap_or("?"), num(&row["perplexity"]["bits_per_byte"]))).collect();
            format!("held-out bits per byte on {} bytes: {}", human("bytes", &r["bytes"]), bpb.join(", "))
        }
        "compare" if r["rows"][0]["perplexity"].is_object() => {
            let ppl: Vec<String> = r["rows"].as_array().into_iter().flatten().map(|row| format!("{} {}", row["policy"].as_str().unwrap_or("?"), num(&row["perplexity"]["perplexity"]))).collect();
            format!("held-out perplexity on {} tokens: {}", human("tokens", &r["tokens"]), ppl.join(", "))
        }
        "compare" => format!("{} policies on {} held-out examples", r["rows"].as_array().map_or(0, Vec::len), human("examples", &r["examples"])),
        _ => "-".into(),
    }
}

/// The table of stages, in the order given.
pub fn summary(runs: &[Run]) -> String {
    let rows: String = runs
        .iter()
        .map(|run| {
            let r = &run.report;
            let warnings: Vec<String> = r["warnings"].as_array().into_iter().flatten().filter_map(|w| w["message"].as_str()).map(esc).collect();
            let warned = if warnings.is_empty() { "none".to_string() } else { warnings.join("<br>") };
            let steps = match r["stopped_early_at"].as_u64() {
                Some(at) => format!("{at} of {} (stopped early)", human("steps", &r["steps"])),
                None => human("steps", &r["steps"]),
            };
            format!(
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{warned}</td></tr>",
                esc(r["stage"].as_str().unwrap_or(&run.label)),
                esc(r["kind"].as_str().unwrap_or("-")),
                esc(&steps),
                esc(&headline(r)),
                esc(&human("wall_seconds", &r["wall_seconds"])),
            )
        })
        .collect();
    format!("<table class=\"stages\"><tr><th>stage</th><th>kind</th><th>steps</th><th>result</th><th>time</th><th>warnings</th></tr>{rows}</table>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_kind_is_summed_up_by_its_own_measure() {
        assert_eq!(headline(&json!({"kind": "train", "final_val_loss": 1.90271})), "validation loss 1.903 nats/token");
        assert_eq!(headline(&json!({"kind": "train", "final_val_loss": 1.90271, "final_choices_acc": 0.525})), "validation loss 1.903 nats/token; multiple-choice accuracy 52.5%");
        assert_eq!(headline(&json!({"kind": "train", "final_val_loss": 2.434, "final_val_losses": {"docs": 3.9679, "wiki": 3.1}})), "validation loss 2.434 nats/token; held-out loss on docs 3.968, wiki 3.100");
        let rows = json!([{"policy": "fresh", "choices": {"acc": 0.275}}, {"policy": "trained", "choices": {"acc": 0.525}}]);
        assert_eq!(headline(&json!({"kind": "compare", "examples": 200, "rows": rows})), "multiple-choice accuracy on 200 questions: fresh 27.5%, trained 52.5%");
        let rows = json!([{"policy": "fresh", "perplexity": {"perplexity": 251.2}}, {"policy": "trained", "perplexity": {"perplexity": 6.8613}}]);
        assert_eq!(headline(&json!({"kind": "compare", "tokens": 111539, "rows": rows})), "held-out perplexity on 111,539 tokens: fresh 251.200, trained 6.861");
        let rows = json!([{"policy": "bytes", "perplexity": {"bits_per_byte": 3.4517}}, {"policy": "bpe", "perplexity": {"bits_per_byte": 2.9}}]);
        assert_eq!(headline(&json!({"kind": "compare", "tokens": 111539, "tokenizers": 2, "bytes": 111540, "rows": rows})), "held-out bits per byte on 111,540 bytes: bytes 3.452, bpe 2.900");
        assert_eq!(headline(&json!({"kind": "reward_model", "held_out_accuracy": 0.9874})), "held-out pairwise accuracy 98.7%");
        assert_eq!(headline(&json!({"kind": "finetune", "before": {"exact": 0.0}, "after": {"exact": 0.995}})), "held-out exact match 99.5% (was 0.0%)");
        assert_eq!(headline(&json!({"kind": "ppo", "before": {"sampled_gold": 0.846}, "after": {"sampled_gold": 0.8891}})), "sampled gold reward 0.889 (was 0.846)");
        let runs = vec![
            Run::from_parts("a", json!({"stage": "pretrain", "kind": "train", "steps": 400, "final_val_loss": 2.0371, "wall_seconds": 75.2, "warnings": []}), json!({"experiment": "x"})),
            Run::from_parts("b", json!({"stage": "rm", "kind": "reward_model", "steps": 600, "stopped_early_at": 300, "held_out_accuracy": 0.5, "warnings": [{"signal": "loss_not_falling", "message": "the training loss <rose>"}]}), json!({"experiment": "x"})),
        ];
        assert!(one_experiment(&runs));
        let html = summary(&runs);
        assert!(html.contains("<tr><th>pretrain</th><td>train</td><td>400</td><td>validation loss 2.037 nats/token</td><td>75.20 s</td><td>none</td></tr>"), "{html}");
        assert!(html.contains("<td>300 of 600 (stopped early)</td>") && html.contains("the training loss &lt;rose&gt;"), "{html}");
        assert!(!one_experiment(&[Run::from_parts("a", json!({"stage": "s"}), json!({"experiment": "x"})), Run::from_parts("b", json!({"stage": "s"}), json!({"experiment": "y"}))]));
    }
}
