//! Progress of a loop (step, ETA, the loop's numbers; drawn by `logging::progress`) and
//! metrics.jsonl.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

#[derive(Serialize, Debug, Clone)]
pub struct Metric {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Weighted sum of the auxiliary losses (routers', the z-loss), when the stage has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_loss: Option<f64>,
    /// Per mixture-of-experts layer: expert load, dropped fraction, router entropy, aux losses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moe: Vec<serde_json::Value>,
    /// Accuracy on the `eval_choices` set at an evaluation: (acc, per character).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_choices_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_choices_acc_norm: Option<f64>,
    /// The loss on each `eval_data` corpus at an evaluation, keyed `val_loss/NAME`.
    #[serde(flatten)]
    pub val_sets: std::collections::BTreeMap<String, f64>,
}

pub struct Metrics {
    /// None in a process that does not lead a multi-process run: it writes nothing.
    file: Option<File>,
    path: std::path::PathBuf,
    /// TensorBoard's copy of every row (`tensorboard.rs`), when the run writes one.
    events: Option<super::tensorboard::EventWriter>,
}

/// The largest metrics.jsonl a resume reads back.
const MAX_METRICS_BYTES: u64 = 1 << 30;

impl Metrics {
    /// Open metrics.jsonl, keeping only lines up to `keep_through` (a resume point).
    pub fn open(dir: &Path, keep_through: Option<u64>, tensorboard: bool) -> anyhow::Result<Metrics> {
        let path = dir.join("metrics.jsonl");
        let kept: Vec<String> = match (keep_through, path.exists()) {
            (Some(s), true) => crate::fsio::read_text(&path, MAX_METRICS_BYTES)
                .map_err(anyhow::Error::msg)?
                .lines()
                .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|st| st <= s))
                .map(str::to_string)
                .collect(),
            _ => vec![],
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        super::files::write_atomic(&path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        // The event file holds exactly the kept rows, as metrics.jsonl does, and the texts of the
        // files kept up to the same step.
        let events = if tensorboard {
            let rows: Vec<(u64, f64, super::tensorboard::Scalars)> = kept
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| Some((v["step"].as_u64()?, 0.0, super::tensorboard::scalars(&v))))
                .collect();
            let mut texts = super::event_texts::definition(dir);
            texts.extend(keep_through.map_or(vec![], |s| super::event_texts::kept(dir, s)));
            Some(super::tensorboard::EventWriter::create(dir, &rows, &texts)?)
        } else {
            None
        };
        Ok(Metrics { file: Some(file), path, events })
    }

    /// Metrics that go nowhere (the processes of a run other than its leader).
    pub fn discard() -> Metrics {
        Metrics { file: None, path: Default::default(), events: None }
    }

    /// Whether this run writes TensorBoard events.
    pub fn tensorboard(&self) -> bool {
        self.events.is_some()
    }

    /// Show `text` under `tag` at `step` in TensorBoard, when the run writes events.
    pub fn text(&self, step: u64, tag: &str, text: &super::tensorboard::Text) -> anyhow::Result<()> {
        self.events.as_ref().map_or(Ok(()), |e| e.text(step, tag, text))
    }

    pub fn write_json(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        self.line(&v.to_string())?;
        if let Some(events) = &mut self.events {
            events.write(v["step"].as_u64().unwrap_or(0), &super::tensorboard::scalars(v))?;
        }
        Ok(())
    }

    pub fn write(&mut self, m: &Metric) -> anyhow::Result<()> {
        // metrics.jsonl keeps the struct's field order; the events need the value only when written.
        self.line(&serde_json::to_string(m)?)?;
        if let Some(events) = &mut self.events {
            events.write(m.step, &super::tensorboard::scalars(&serde_json::to_value(m)?))?;
        }
        Ok(())
    }

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        writeln!(file, "{text}").and_then(|_| file.flush()).map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))
    }
}

pub struct Progress {
    label: String,
    total: u64,
    start: Instant,
    start_step: u64,
    quiet: bool,
}

impl Progress {
    pub fn new(label: &str, start_step: u64, total: u64) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            start: Instant::now(),
            start_step,
            quiet: crate::logging::mode().quiet || std::env::var_os("ROUX_QUIET").is_some(),
        }
    }

    /// A progress line never drawn (the processes of a run other than its leader).
    pub fn silent(label: &str, total: u64) -> Progress {
        Progress { quiet: true, ..Progress::new(label, 0, total) }
    }

    /// The steps the stage runs in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn eta(&self, step: u64) -> String {
        let done = step.saturating_sub(self.start_step).max(1) as f64;
        let per = self.start.elapsed().as_secs_f64() / done;
        let left = (self.total.saturating_sub(step)) as f64 * per;
        format_secs(left)
    }

    /// Called every step; prints on a terminal, or every `every` steps into a log.
    pub fn update(&self, step: u64, every: u64, loss: f64, lr: f64, tok_s: f64, val: Option<f64>) {
        let evaluated = val.is_some();
        let val = val.map_or(String::new(), |v| format!(" val {v:.4}"));
        // Between log points a GPU loop has not read its loss yet (NaN here): shown as "-".
        let loss = if loss.is_nan() { "-".to_string() } else { format!("{loss:.4}") };
        self.line(step, every, &format!("loss {loss}{val} lr {lr:.2e} {:.1}k tok/s", tok_s / 1e3), evaluated);
    }

    /// The step count, `body` and the ETA: drawn every step on a terminal, logged every `every`
    /// steps (and at evaluations and the end) elsewhere.
    pub fn line(&self, step: u64, every: u64, body: &str, evaluated: bool) {
        if self.quiet {
            return;
        }
        let periodic = step.is_multiple_of(every) || step == self.total || evaluated;
        let line = crate::logging::ProgressLine { label: &self.label, step, total: self.total, eta: self.eta(step), body };
        crate::logging::progress(&line, periodic, evaluated || step == self.total);
    }
}

pub fn format_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
