//! `roux run --profile A..B`: libtorch's profiler (the one behind `torch.profiler`) around
//! steps A to B of a training loop, written as a Chrome trace (open it in Perfetto or
//! chrome://tracing) with each operator and, on CUDA, each kernel.

use anyhow::Result;
use std::path::PathBuf;
use tch::Device;

use super::native;

pub struct Profiler {
    label: String,
    steps: (u64, u64),
    cuda: bool,
    path: PathBuf,
    on: bool,
}

impl Profiler {
    pub fn new(label: &str, steps: (u64, u64), device: Device, path: PathBuf) -> Profiler {
        Profiler { label: label.to_string(), steps, cuda: device.is_cuda(), path, on: false }
    }

    /// Before step `step` (counted from 1) begins.
    pub fn at_step_start(&mut self, step: u64) -> Result<()> {
        if step == self.steps.0 && !self.on {
            self.sync();
            native::profiler_start(self.cuda)?;
            self.on = true;
            tracing::info!("{}: profiling steps {}..{}", self.label, self.steps.0, self.steps.1);
        }
        Ok(())
    }

    /// After step `step`'s update was queued.
    pub fn at_step_end(&mut self, step: u64) -> Result<()> {
        if step >= self.steps.1 && self.on {
            self.sync();
            self.on = false;
            // Written beside, then renamed: a trace is whole or absent.
            let tmp = self.path.with_extension("json.tmp");
            native::profiler_stop(&tmp)?;
            std::fs::rename(&tmp, &self.path).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
            tracing::info!("{}: wrote the profile of steps {}..{} to {}", self.label, self.steps.0, self.steps.1, self.path.display());
        }
        Ok(())
    }

    /// The kernels of the profiled steps, and only those, inside the window.
    fn sync(&self) {
        if self.cuda {
            tch::Cuda::synchronize(0);
        }
    }
}
