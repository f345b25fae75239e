//! `patience = N` on a post-training stage: stop once N evaluations in a row have not bettered
//! the stage's held-out measure (higher is better: accuracy, gold reward; lower for a loss), as
//! Hugging Face's EarlyStoppingCallback does. The count and the best survive a resume: they ride
//! in the checkpoint's state under `patience`, with the measure they are of.

use serde_json::{json, Value};

pub struct Patience {
    limit: Option<u64>,
    /// What is watched, as report.json and the log name it.
    measure: &'static str,
    /// A loss: lower is better.
    lower: bool,
    best: Option<(f64, u64)>,
    since: u64,
}

impl Patience {
    /// A watch of `measure` (higher is better), continued from a checkpoint's state when the
    /// stage resumes.
    pub fn new(limit: Option<u64>, measure: &'static str, resumed: &Value) -> Patience {
        Patience::watching(limit, measure, false, resumed)
    }

    /// A watch of a loss: lower is better.
    pub fn lowest(limit: Option<u64>, measure: &'static str, resumed: &Value) -> Patience {
        Patience::watching(limit, measure, true, resumed)
    }

    fn watching(limit: Option<u64>, measure: &'static str, lower: bool, resumed: &Value) -> Patience {
        let p = &resumed["patience"];
        // A state of another measure (a stage that watched its gold reward before it watched
        // its loss) is not continued; one written before states named theirs was higher-is-better.
        let same = p["measure"].as_str().map_or(!lower, |m| m == measure);
        let best = p["best"].as_f64().zip(p["best_step"].as_u64()).filter(|_| same);
        let since = p["since"].as_u64().filter(|_| same).unwrap_or(0);
        Patience { limit, measure, lower, best, since }
    }

    /// Records the evaluation at `step`; true when the stage should stop here.
    pub fn observe(&mut self, step: u64, value: f64) -> bool {
        let better = |b: f64| if self.lower { value < b } else { value > b };
        if value.is_finite() && self.best.is_none_or(|(b, _)| better(b)) {
            (self.best, self.since) = (Some((value, step)), 0);
        } else {
            self.since += 1; // not better (equal, worse, or not a number)
        }
        self.exhausted()
    }

    /// An evaluation's end: the watch sees `value` at step `done` (of `steps`), `save` checkpoints
    /// with the watch's state beside the stage's `extra`, and a stop is said (`label`'s). True:
    /// the stage stops here.
    pub fn evaluated(&mut self, label: &str, (done, steps): (u64, u64), value: f64, extra: Value, save: impl FnOnce(Value) -> anyhow::Result<()>) -> anyhow::Result<bool> {
        let stop = self.observe(done, value);
        save(self.save_into(extra))?;
        if stop {
            tracing::info!("{}", self.stop_message(label, done, steps));
        }
        Ok(stop)
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
        let state = json!({"measure": self.measure, "best": self.best.map(|b| b.0), "best_step": self.best.map(|b| b.1), "since": self.since});
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
        assert_eq!(saved["patience"], json!({"measure": "accuracy", "best": 0.6, "best_step": 20, "since": 1}));
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
    fn a_loss_is_better_lower_and_another_measures_state_is_not_continued() {
        let mut p = Patience::lowest(Some(2), "loss", &Value::Null);
        assert!(!p.observe(10, 2.0));
        assert!(!p.observe(20, 1.5));
        assert!(!p.observe(30, 1.7)); // higher is worse
        let saved = p.save_into(Value::Null);
        assert!(Patience::lowest(Some(2), "loss", &saved).observe(40, 1.6));
        // A state of the gold reward (or one without a measure: higher-is-better, from before)
        // does not carry over to a watch of the loss.
        let old = json!({"patience": {"best": 0.9, "best_step": 10, "since": 1}});
        let mut q = Patience::lowest(Some(2), "loss", &old);
        assert!(!q.observe(20, 5.0) && !q.observe(30, 4.0));
        assert!(Patience::new(Some(2), "gold_reward", &old).observe(20, 0.5));
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
