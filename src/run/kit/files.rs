//! Files a run writes and reads: atomically and with size caps (`crate::fsio`), named tensors as
//! safetensors, and the stable content hash.

use anyhow::{Context, Result};
use std::path::{Component, Path, PathBuf};
use std::io::Write;
use tch::{Kind, Tensor};

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
    // (Each of fsio's messages begins with the path.)
    crate::fsio::read_text(path, cap).map_err(anyhow::Error::msg)
}

/// One tensor of a file `write_streamed` writes.
pub struct FileTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub kind: Kind,
}

/// A safetensors file written one tensor at a time, atomically: the header from `entries`, then
/// each tensor's bytes as `fetch(k)` gives it (on any device, of entry k's shape and kind), so
/// that no more than one tensor is ever held for the file. With `path` None nothing is written,
/// but every tensor is fetched in the same order: a process that does not write takes part in
/// the collectives that fetching runs (gathering a divided expert stack).
pub fn write_streamed(path: Option<&Path>, entries: &[FileTensor], mut fetch: impl FnMut(usize) -> Result<Tensor>) -> Result<()> {
    let Some(path) = path else {
        return (0..entries.len()).try_for_each(|k| fetch(k).map(drop));
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for e in entries {
        let dtype = dtype(e.kind).with_context(|| format!("{}: tensor `{}`", path.display(), e.name))?;
        let shape: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
        let bytes = shape.iter().product::<usize>() * e.kind.elt_size_in_bytes();
        let info = safetensors::tensor::TensorInfo { dtype, shape, data_offsets: (offset, offset + bytes) };
        header.insert(e.name.clone(), serde_json::to_value(info)?);
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&header)?;
    // The data starts 8-byte aligned, as the safetensors crate writes it.
    head.resize(head.len().next_multiple_of(8), b' ');
    // A fetch that fails leaves its error here and the temporary file behind it removed.
    let mut failed = None;
    crate::fsio::write_atomic_with(path, |tmp| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        out.write_all(&(head.len() as u64).to_le_bytes())?;
        out.write_all(&head)?;
        for (k, e) in entries.iter().enumerate() {
            let t = match fetch(k) {
                Ok(t) => t.to_device(tch::Device::Cpu).contiguous(),
                Err(err) => return Err(std::io::Error::other(failed.insert(err).to_string())),
            };
            if t.size() != e.shape || t.kind() != e.kind {
                return Err(std::io::Error::other(format!("tensor `{}` came as shape {} of another kind or shape than its header's {}", e.name, shape(&t.size()), shape(&e.shape))));
            }
            if t.numel() == 0 {
                continue;
            }
            // SAFETY: `t` is a contiguous CPU tensor of this many elements of its kind, alive
            // while the slice is written (no copy of a tensor that may be a whole expert stack).
            let bytes = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, t.numel() * e.kind.elt_size_in_bytes()) };
            out.write_all(bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
    .map_err(|e| match failed.take() {
        Some(err) => err.context(format!("{}: not written", path.display())),
        None => anyhow::Error::msg(e),
    })
}

/// The safetensors name of a tensor kind roux writes.
fn dtype(kind: Kind) -> Result<safetensors::Dtype> {
    Ok(match kind {
        Kind::Float => safetensors::Dtype::F32,
        Kind::BFloat16 => safetensors::Dtype::BF16,
        Kind::Half => safetensors::Dtype::F16,
        Kind::Int64 => safetensors::Dtype::I64,
        _ => anyhow::bail!("only float32, bfloat16, float16 and int64 tensors are written"),
    })
}

/// A shape as people write it: `(512, 64)`.
pub fn shape(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("({})", parts.join(", "))
}

/// Run `use_them` on the tensors of safetensors file `path` as views into a read-only mapping of
/// it (no copy is made: a caller that copies some rows of a tensor reads only those pages, so
/// a process of an expert-parallel run reads its experts of a checkpoint, not the whole file).
/// The views are valid only inside `use_them`, which must copy what it keeps. A tensor whose
/// bytes are not aligned for its type is copied out instead.
pub fn with_mapped<R>(path: &Path, use_them: impl FnOnce(&[(String, Tensor)]) -> Result<R>) -> Result<R> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: a read-only mapping, dropped after the views made from it (which `use_them` may
    // not keep); a file truncated meanwhile by another process would fault, as for any reader.
    let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file: {e}", path.display()))?;
    let mut views = vec![];
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::I64 => Kind::Int64,
            other => anyhow::bail!("{}: tensor `{name}` is {other}, not float32, bfloat16, float16 or int64", path.display()),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        // SAFETY: the safetensors crate checked that the bytes are the tensor's; the mapping
        // outlives the views (see above).
        views.push((name, unsafe { view_of(view.data(), &shape, kind)? }));
    }
    let out = use_them(&views);
    drop(views);
    out
}

/// A CPU tensor over `data` (little-endian elements of `kind`, row-major, `shape`): a view when
/// the bytes are aligned for their type, else a copy.
///
/// # Safety
/// `data` must hold exactly the tensor's bytes and outlive the returned tensor's use.
pub unsafe fn view_of(data: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor> {
    if !(data.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes()) {
        return Ok(Tensor::f_from_data_size(data, shape, kind)?);
    }
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    Ok(Tensor::f_from_blob(data.as_ptr(), shape, &strides, kind, tch::Device::Cpu)?)
}

/// The tensors of safetensors file `path`, copied out of a mapping of it (`with_mapped`: a
/// regular file only; a FIFO or device put in a run directory is refused, not read forever).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    with_mapped(path, |views| Ok(views.iter().map(|(n, t)| (n.clone(), t.copy())).collect()))
}

/// Where stage `name` of the experiment in `runs` keeps its run: `runs/name`, for a name that is
/// one plain path component (a name read from a file must not lead elsewhere).
pub fn stage_dir(runs: &Path, name: &str) -> Result<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains(['/', '\\']) => Ok(runs.join(name)),
        _ => anyhow::bail!("`{name}` is not a stage name (one path component)"),
    }
}
