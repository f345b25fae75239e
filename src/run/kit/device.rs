//! Where a stage runs: the device a recipe asks for, and whether the planned memory fits.

use anyhow::{bail, Result};

use crate::recipe::Device as DeviceChoice;

/// Pick the device for a stage: `auto` is CUDA when available.
pub fn device(choice: DeviceChoice) -> Result<tch::Device> {
    Ok(match choice {
        DeviceChoice::Cpu => tch::Device::Cpu,
        DeviceChoice::Cuda if !tch::Cuda::is_available() => bail!("the recipe asks for `device = cuda` but no CUDA device is available"),
        DeviceChoice::Cuda => tch::Device::Cuda(0),
        DeviceChoice::Auto => tch::Device::cuda_if_available(),
    })
}

/// A device as users write it: `cpu`, `cuda:0`.
pub fn name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// Refuse a CPU run whose planned memory exceeds what the machine has available.
pub fn memory_guard(name: &str, need: u64) -> Result<()> {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else { return Ok(()) };
    let available = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    if let Some(avail) = available {
        if need > avail {
            bail!(
                "stage `{name}` needs about {:.2} GiB (the plan's memory estimate: weights, gradients, AdamW moments, activations and any frozen models beside them; `roux plan` shows it) \
                 but only {:.2} GiB is available; lower `batch`, the context or the LoRA rank, or run on a larger machine",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}
