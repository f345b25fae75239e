//! `patience = N` on a post-training stage: stop once N evaluations in a row have not bettered
//! the stage's held-out measure (higher is better: accuracy, gold reward), as Hugging Face's
//! EarlyStoppingCallback does. The count and the best survive a resume: they ride in the
//! checkpoint's state under `patience`.

use serde_json::{json, Value};

pub struct Patience {
    limit: Option<u64>,
    /// What is watched, as report.json and the log name it.
    measure: &'static str,
    best: Option<(f64, u64)>,
    since: u64,
}

impl Patience {
    /// A watch of `measure`, continued from a checkpoint's state when the stage resumes.
    pub fn new(limit: Option<u64>, measure: &'static str, resumed: &Value) -> Patience {
        let p = &resumed["patience"];
        let best = p["best"].as_f64().zip(p["best_step"].as_u64());
        Patience { limit, measure, best, since: p["since"].as_u64().unwrap_or(0) }
    }

    /// Records the evaluation at `step`; true when the stage should stop here.
    pub fn observe(&mut self, step: u64, value: f64) -> bool {
        if value.is_finite() && self.best.is_none_or(|(b, _)| value > b) {
            (self.best, self.since) = (Some((value, step)), 0);
        } else {
            self.since += 1; // not better (equal, lower, or not a number)
        }
        self.exhausted()
    }

    /// Whether the stage has run out of patience (a resumed run that had stops at once).
    pub fn exhausted(&self) -> bool {
        self.limit.is_some_and(|n| self.since >= n)
    }

    /// The watch's state, for the checkpoint: `extra` with `patience` added.
    pub fn save_into(&self, mut extra: Value) -> Value {
        if self.limit.is_none() {
            return extra;
        }
        let state = json!({"best": self.best.map(|b| b.0), "best_step": self.best.map(|b| b.1), "since": self.since});
        match extra.as_object_mut() {
            Some(o) => {
                o.insert("patience".into(), state);
                extra
            }
            None => json!({ "patience": state }),
        }
    }

    /// The log line of a stop at `step` of `steps`.
    pub fn stop_message(&self, label: &str, step: u64, steps: u64) -> String {
        let (best, at) = self.best.unwrap_or((f64::NAN, 0));
        format!("{label}: stopping early at step {step} of {steps}: no better held-out {} in {} evaluations (the best, {best:.4}, at step {at})", self.measure.replace('_', " "), self.since)
    }

    /// Adds to a stage's report.json the step it stopped at (null: it ran to the end) and, with a
    /// limit, the watch: its measure, the best value and its step.
    pub fn report_into(&self, report: &mut Value, stopped: Option<u64>) {
        report["stopped_early_at"] = json!(stopped);
        if let Some(n) = self.limit {
            report["patience"] = json!({"evaluations": n, "measure": self.measure, "best": self.best.map(|b| b.0), "best_step": self.best.map(|b| b.1)});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_n_evaluations_without_a_better_value_and_resumes_counting() {
        let mut p = Patience::new(Some(2), "accuracy", &Value::Null);
        assert!(!p.observe(10, 0.5));
        assert!(!p.observe(20, 0.6));
        assert!(!p.observe(30, 0.6)); // equal is not better
        let saved = p.save_into(json!({"kl_coef": 0.1}));
        assert_eq!(saved["kl_coef"], 0.1);
        assert_eq!(saved["patience"], json!({"best": 0.6, "best_step": 20, "since": 1}));
        // Resumed from that checkpoint: one more evaluation without progress stops it.
        let mut q = Patience::new(Some(2), "accuracy", &saved);
        assert!(q.observe(40, f64::NAN)); // a non-finite value is no progress
        assert!(q.exhausted());
        assert_eq!(q.stop_message("rm", 40, 100), "rm: stopping early at step 40 of 100: no better held-out accuracy in 2 evaluations (the best, 0.6000, at step 20)");
        let mut report = json!({"kind": "reward_model"});
        q.report_into(&mut report, Some(40));
        assert_eq!(report, json!({"kind": "reward_model", "stopped_early_at": 40, "patience": {"evaluations": 2, "measure": "accuracy", "best": 0.6, "best_step": 20}}));
    }

    #[test]
    fn without_a_limit_it_never_stops_and_saves_nothing() {
        let mut p = Patience::new(None, "gold", &Value::Null);
        assert!((0..100).all(|s| !p.observe(s, 0.0)));
        assert_eq!(p.save_into(Value::Null), Value::Null);
        let mut report = json!({});
        p.report_into(&mut report, None);
        assert_eq!(report, json!({"stopped_early_at": null}));
    }
}
