//! Files a run writes: atomically (a temporary file in the same directory, fsync, rename, fsync
//! the directory), so a reader never sees a torn file; and the stable content hash.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path);
    Ok(())
}

/// Named tensors to a safetensors file, atomically.
pub fn write_tensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = tmp_path(path);
    let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&cpu, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path);
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// FNV-1a, 64 bit: a stable content hash (std's hasher is not stable across releases).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A run's own small file (JSON state, reports, a tokenizer) as text: a regular file of at most
/// `cap` bytes, or an error naming it. Run directories can be shared or copied from elsewhere;
/// a FIFO or a huge file there must not hang or exhaust the process.
pub fn read_capped(path: &Path, cap: u64) -> Result<String> {
    use std::io::Read;
    // Look before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    if meta.len() > cap {
        anyhow::bail!("{} is {} bytes, more than the {cap} expected of it", path.display(), meta.len());
    }
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    f.take(cap).read_to_string(&mut text).with_context(|| format!("reading {} (not UTF-8 text?)", path.display()))?;
    Ok(text)
}
