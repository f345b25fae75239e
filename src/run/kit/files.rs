//! Files a run writes and reads: atomically and with size caps (`crate::fsio`), named tensors as
//! safetensors, and the stable content hash.

use anyhow::{Context, Result};
use std::path::Path;
use tch::Tensor;

/// Write `bytes` to `path` atomically (`fsio::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsio::write_atomic(path, bytes).map_err(anyhow::Error::msg)
}

/// Named tensors to a safetensors file, atomically.
pub fn write_tensors_atomic(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    crate::fsio::write_atomic_with(path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).map_err(std::io::Error::other)?;
        std::fs::File::open(tmp)?.sync_all()
    })
    .map_err(anyhow::Error::msg)
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
    crate::fsio::read_text(path, cap).map_err(anyhow::Error::msg).with_context(|| format!("reading {}", path.display()))
}
