//! One lock per run directory: a second `roux run` into the same directory is refused, naming
//! the process that holds it.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// An exclusive lock on a run directory: `.<stage>.lock` beside it (the directory itself is
/// renamed aside and recreated, its neighbour file stays). The operating system releases it when
/// the process ends, however it ends, so a killed run leaves no stale lock.
pub struct Lock {
    _file: std::fs::File,
}

/// Lock `dir` for this process, or refuse, naming the process that holds it.
pub fn lock(dir: &Path) -> Result<Lock> {
    use std::io::{Read, Seek, Write};
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let path = parent.join(format!(".{}.lock", dir.file_name().unwrap_or_default().to_string_lossy()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id())).with_context(|| format!("writing {}", path.display()))?;
            Ok(Lock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "{} is being written by another `roux run` (process {}); wait for it to finish or stop it, or use another `--out`",
                dir.display(),
                if pid.trim().is_empty() { "unknown".to_string() } else { pid.trim().to_string() }
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
