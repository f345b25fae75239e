//! The end of a run: its outputs written (none with non-finite weights), then report.json,
//! which marks the run finished, then the plots. Large outputs are written a tensor at a time
//! (`write_output`) before `finish` lists them.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tch::Tensor;

use super::files::{write_atomic, write_streamed, write_tensors_atomic, FileTensor};
use super::lifecycle::RunDir;

impl RunDir {
    /// Write output `file` a tensor at a time (`files::write_streamed`: every process calls it,
    /// the leading one writes), refusing a non-finite tensor: then nothing is written and the
    /// stage cannot finish. `finish` lists it with the outputs reuse verifies.
    pub fn write_output(&mut self, file: &str, entries: &[FileTensor], mut fetch: impl FnMut(usize) -> Result<Tensor>) -> Result<()> {
        let label = self.label.clone();
        let path = self.leads.then(|| self.dir.join(file));
        write_streamed(path.as_deref(), entries, |k| {
            let t = fetch(k)?;
            if !crate::run::model::all_finite(&t) {
                bail!("{label}: `{}` has non-finite values, so the stage is not marked finished (lower the learning rate or set `grad_clip`)", entries[k].name);
            }
            Ok(t)
        })?;
        self.list_output(file);
        Ok(())
    }

    /// List `file`, already in the run directory (written by `write_output`, perhaps before a
    /// resume), with the outputs `finish` records.
    pub fn list_output(&mut self, file: &str) {
        if !self.streamed.iter().any(|f| f == file) {
            self.streamed.push(file.to_string());
        }
    }

    /// Write the outputs (refusing non-finite weights), then report.json with the stage's name,
    /// hash and inputs (which marks the run finished), then the plots.
    pub fn finish(self, outputs: &[(&str, Vec<(String, Tensor)>)], mut report: Value, title: &str) -> Result<()> {
        if !self.leads {
            return Ok(());
        }
        let mut written = serde_json::Map::new();
        for file in &self.streamed {
            let path = self.dir.join(file);
            let bytes = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
            written.insert(file.to_string(), json!({"bytes": bytes}));
        }
        for (file, tensors) in outputs {
            if let Some((name, _)) = tensors.iter().find(|(_, t)| !bool::try_from(t.isfinite().all()).unwrap_or(false)) {
                bail!("{}: `{name}` has non-finite values; not writing {file} or marking the stage finished (lower the learning rate or set `grad_clip`)", self.label);
            }
            let path = self.dir.join(file);
            write_tensors_atomic(&path, tensors)?;
            let bytes = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
            written.insert(file.to_string(), json!({"bytes": bytes}));
        }
        // What reuse verifies before calling the run up to date.
        report["outputs"] = written.into();
        // Health signals from the logged curves: warned of now and kept with the result.
        let rows: Vec<Value> = crate::fsio::read_text(&self.dir.join("metrics.jsonl"), 1 << 30)
            .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
            .unwrap_or_default();
        let signals = super::health::signals(&rows, &report, &self.health);
        for s in &signals {
            tracing::warn!("{}: {}", self.label, s.message);
        }
        report["warnings"] = signals.iter().map(|s| json!({"signal": s.name, "message": s.message})).collect::<Vec<_>>().into();
        report["stage"] = json!(self.label);
        report["hash"] = json!(self.hash);
        // The leading process's peak resident memory (host; on a GPU, not the device's).
        report["peak_host_memory_bytes"] = json!(super::device::process_memory("VmHWM:"));
        if !self.upstream.is_empty() {
            report["upstream"] = self.upstream.iter().map(|(s, h)| (s.clone(), json!(h))).collect::<serde_json::Map<_, _>>().into();
        }
        write_atomic(&self.dir.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
        if let Err(e) = crate::report::plots::write_run_plots(&self.dir, title) {
            tracing::warn!("{}: could not draw plots: {e}", self.label);
        }
        Ok(())
    }
}
