//! The process's allocator, tuned for training loops (`ROUX_MALLOC`).

/// glibc's malloc hands large blocks back to the kernel as soon as they are freed (mmap/munmap,
/// heap trimming), so every training step faults in and zeroes its activation memory anew:
/// 6–8% of a small CPU model's step time here. By default roux keeps freed memory in the process
/// (the next step reuses it); the price is fragmentation: peak RSS exceeds the live tensors (bench's
/// tiny model: 102 MiB against ~70 live). `ROUX_MALLOC` chooses otherwise:
/// - `compact`: as the default, and glibc's per-thread cache off (`exec_compact_malloc`): tiny
///   76 MiB, the others 5–12% lower, for ~10% of the medium model's speed;
/// - `exact`: every block of 1 MiB or more is mapped and returned on its own, so RSS tracks the
///   live tensors (what the plan's memory estimate counts), at a large cost in speed (tiny 1.8×);
/// - `system`: glibc as it comes.
///
/// Called once, before any tensor exists.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        match std::env::var("ROUX_MALLOC").as_deref() {
            Ok("exact") => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
            Ok("system") => {}
            _ => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

/// `ROUX_MALLOC=compact`: glibc's per-thread cache (tcache) keeps freed small chunks marked in
/// use; one left between two freed activation blocks stops them merging, so the heap creeps up
/// step after step (tiny: 84 → 102 MiB over 60 steps). With the cache off it holds at 76 MiB.
/// Only `GLIBC_TUNABLES` at process start can turn it off, so the command re-executes itself
/// once with it set (same pid, arguments and streams; ~0.4 s to load libtorch again). Not the
/// default: the medium model measured 8–13% slower without the cache, with 5× the page faults
/// and the same syscalls (malloc returns nothing to the kernel; cause not found).
pub fn exec_compact_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var("ROUX_MALLOC").map_or(true, |v| v != "compact") || tunables.contains("glibc.malloc.tcache_count") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let tunables = if tunables.is_empty() { TCACHE_OFF.to_string() } else { format!("{tunables}:{TCACHE_OFF}") };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        let err = cmd.args(args).env("GLIBC_TUNABLES", tunables).exec();
        tracing::warn!("ROUX_MALLOC=compact: could not re-execute with glibc's tcache off ({err}); going on without");
    }
}
