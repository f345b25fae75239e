//! Reading and writing a user's files safely, for every part of roux (the front end, reports,
//! the command line; `run::kit::files` adds tensors). Reads are regular files only, with a size
//! cap: a FIFO would block, `/dev/zero` never ends. Writes are atomic: a temporary file in the
//! same directory, fsync, rename, fsync the directory, so a crash or a full disk leaves either
//! the old file or the new one, never a torn one. Errors name the file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The text of a regular file of at most `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String, String> {
    let bytes = read_bytes(path, cap)?;
    String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to()))
}

/// The bytes of a regular file of at most `cap` bytes.
pub fn read_bytes(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    // Look before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > cap {
        return Err(format!("{}: {} bytes, more than the {cap} allowed", path.display(), meta.len()));
    }
    // A file that grows while it is read is still cut at the cap.
    let mut bytes = vec![];
    let file = File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(format!("{}: more than the {cap} bytes allowed", path.display()));
    }
    Ok(bytes)
}

/// `len` bytes of a regular file from `offset` (a header at the front of a large file).
pub fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    use std::io::{Seek, SeekFrom};
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if offset.checked_add(len).is_none_or(|end| end > meta.len()) {
        return Err(format!("{}: {} bytes, too short to hold bytes {offset} to {}", path.display(), meta.len(), offset.saturating_add(len)));
    }
    let mut file = File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut bytes = vec![0; len as usize];
    file.read_exact(&mut bytes).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Ok(bytes)
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_atomic_with(path, |tmp| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Copy a file of at most `cap` bytes to `to` atomically: a kill mid-copy leaves no torn copy.
pub fn copy_atomic(from: &Path, to: &Path, cap: u64) -> Result<(), String> {
    let bytes = read_bytes(from, cap)?;
    write_atomic(to, &bytes)
}

/// Write `path` atomically through `write`, which fills (and should fsync) the temporary file
/// it is given. On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), String> {
    let tmp = tmp_path(path);
    // A process killed mid-write (SIGKILL runs no cleanup) left its temporary file; the next
    // write of the same file removes it.
    if let Some(dir) = path.parent() {
        remove_stale_tmp(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }, path.file_name());
    }
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: cannot write: {e}", path.display()));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: cannot write (renaming {} into place): {e}", path.display(), tmp.display()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Remove the temporary files (`NAME.<pid>.tmp`) in `dir` that processes no longer running left
/// behind — of the file `only`, or of every file. Best effort: what cannot be removed stays.
pub fn remove_stale_tmp(dir: &Path, only: Option<&std::ffi::OsStr>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".tmp")) else { continue };
        let Some((file, pid)) = stem.rsplit_once('.') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if only.is_some_and(|o| o != std::ffi::OsStr::new(file)) || pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// `NAME.<pid>.tmp` beside `path`: unique per process, on the same file system.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}
