//! Where a stage runs: the device a recipe asks for, and whether the planned memory fits.

use anyhow::{bail, Result};

use crate::recipe::Device as DeviceChoice;

/// Pick the device for a stage: `auto` is CUDA when available; `cuda` (and `auto` on a GPU
/// machine) is this process's GPU, cuda:LOCAL_RANK when torchrun started one process per GPU.
pub fn device(choice: DeviceChoice) -> Result<tch::Device> {
    let local = local_rank();
    Ok(match choice {
        DeviceChoice::Cpu => tch::Device::Cpu,
        DeviceChoice::Cuda | DeviceChoice::CudaIndex(_) if !tch::Cuda::is_available() => bail!("the recipe asks for `device = {}` but no CUDA device is available", spelled(choice)),
        DeviceChoice::CudaIndex(i) if std::env::var_os("WORLD_SIZE").is_some_and(|w| w != "1") => {
            bail!("`device = \"cuda:{i}\"` names one GPU, but torchrun started several processes; write `device = cuda`: each process takes cuda:LOCAL_RANK")
        }
        DeviceChoice::CudaIndex(i) if i as i64 >= tch::Cuda::device_count() => {
            bail!("the recipe asks for `device = \"cuda:{i}\"` but this machine has {} CUDA device(s), cuda:0 to cuda:{}", tch::Cuda::device_count(), tch::Cuda::device_count() - 1)
        }
        DeviceChoice::CudaIndex(i) => tch::Device::Cuda(i as usize),
        DeviceChoice::Cuda => gpu(local)?,
        DeviceChoice::Auto if tch::Cuda::is_available() => gpu(local)?,
        DeviceChoice::Auto => tch::Device::Cpu,
    })
}

/// cuda:`local`, if this machine has it.
fn gpu(local: usize) -> Result<tch::Device> {
    let count = tch::Cuda::device_count().max(0) as usize;
    if local >= count {
        bail!("this process is local rank {local} (LOCAL_RANK) but the machine has {count} CUDA device(s); start at most {count} processes per node");
    }
    Ok(tch::Device::Cuda(local))
}

/// LOCAL_RANK as torchrun sets it (0 when absent or not a small number).
fn local_rank() -> usize {
    std::env::var("LOCAL_RANK").ok().and_then(|v| v.parse::<usize>().ok()).filter(|r| *r < 65_536).unwrap_or(0)
}

/// The device as the recipe spells it.
fn spelled(choice: DeviceChoice) -> String {
    match choice {
        DeviceChoice::CudaIndex(i) => format!("\"cuda:{i}\""),
        DeviceChoice::Cuda => "cuda".into(),
        DeviceChoice::Cpu => "cpu".into(),
        DeviceChoice::Auto => "auto".into(),
    }
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

/// Refuse a run whose planned memory (`need`, of one process) exceeds what its device has free:
/// the machine's available memory for the CPU (shared by the run's processes on it), the GPU's
/// free memory (read from the CUDA runtime) for CUDA. `splits`: the stage takes `accumulate`,
/// which the advice then names first.
pub fn memory_guard(name: &str, need: u64, device: tch::Device, splits: bool) -> Result<()> {
    let split = if splits { "split the batch into micro-batches (`accumulate`), " } else { "" };
    if let tch::Device::Cuda(i) = device {
        let Some((free, total)) = cuda_mem_info(i) else { return Ok(()) };
        if need > free {
            bail!(
                "stage `{name}` needs about {:.2} GiB on cuda:{i} (the plan's memory estimate: weights, gradients, AdamW moments, activations and any frozen models beside them; `roux plan` shows it) \
                 but only {:.2} GiB of its {:.2} GiB is free; {split}lower `batch`, the context or the LoRA rank, set `precision = bf16`, or use a larger GPU",
                gib(need),
                gib(free),
                gib(total)
            );
        }
        return Ok(());
    }
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else { return Ok(()) };
    let available = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    // The processes of a run on this machine (torchrun's LOCAL_WORLD_SIZE) share its memory.
    let here = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse::<u64>().ok()).filter(|n| (1..=1 << 16).contains(n)).unwrap_or(1);
    let each = if here > 1 { format!(" for its {here} processes on this machine, {:.2} GiB each", gib(need)) } else { String::new() };
    if let Some(avail) = available {
        if need * here > avail {
            bail!(
                "stage `{name}` needs about {:.2} GiB{each} (the plan's memory estimate: weights, gradients, AdamW moments, activations and any frozen models beside them; `roux plan` shows it) \
                 but only {:.2} GiB is available; {split}lower `batch`, the context or the LoRA rank, or run on a larger machine",
                gib(need * here),
                gib(avail)
            );
        }
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// (free, total) bytes of CUDA device `index`, from the CUDA runtime libtorch already loaded
/// (`cudaMemGetInfo`, found by name: roux links no CUDA library itself). None where it is absent.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cuda_mem_info(index: usize) -> Option<(u64, u64)> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present, are
    // the CUDA runtime's functions of these signatures.
    unsafe {
        let set = libc::dlsym(libc::RTLD_DEFAULT, c"cudaSetDevice".as_ptr());
        let get = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if set.is_null() || get.is_null() {
            return None;
        }
        let (set, get): (SetDevice, MemGetInfo) = (std::mem::transmute::<*mut libc::c_void, SetDevice>(set), std::mem::transmute::<*mut libc::c_void, MemGetInfo>(get));
        let (mut free, mut total) = (0usize, 0usize);
        (set(index as i32) == 0 && get(&mut free, &mut total) == 0).then_some((free as u64, total as u64))
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cuda_mem_info(_: usize) -> Option<(u64, u64)> {
    None
}

/// A figure of this process's memory from /proc/self/status, in bytes: `VmHWM:` its peak
/// resident memory so far, `VmRSS:` its present one. None where the system keeps none.
pub fn process_memory(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}
