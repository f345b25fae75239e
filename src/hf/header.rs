//! A safetensors file's header (its first 8 + n bytes) read without its data, through the
//! `safetensors` crate, and compared with the tensors a model definition expects.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, Metadata};

/// The most header bytes read (the format's own limit).
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor's element type and shape, as the header gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The header's length `n` from the file's first 8 bytes.
pub fn header_len(first8: &[u8]) -> Result<u64, String> {
    let arr: [u8; 8] = first8.try_into().map_err(|_| "is shorter than a safetensors header".to_string())?;
    let n = u64::from_le_bytes(arr);
    if n == 0 || n > MAX_HEADER {
        return Err(format!("declares a header of {n} bytes (a safetensors header has 1 to {MAX_HEADER})"));
    }
    Ok(n)
}

/// The tensors a header (`header` = the n bytes after the length) describes, checked against
/// the file's size: offsets contiguous, sizes matching shapes, the data ending at the file's end.
pub fn parse(header: &[u8], file_size: u64) -> Result<BTreeMap<String, TensorEntry>, String> {
    let text = std::str::from_utf8(header).map_err(|_| "has a header that is not UTF-8".to_string())?;
    let meta: Metadata = serde_json::from_str(text).map_err(|e| format!("has an unreadable safetensors header: {e}"))?;
    let end = 8 + header.len() as u64 + meta.data_len() as u64;
    if end != file_size {
        return Err(format!("is {file_size} bytes but its header describes {end} (truncated or not a safetensors file)"));
    }
    Ok(meta.tensors().into_iter().map(|(name, info)| (name, TensorEntry { dtype: dtype_name(info.dtype), shape: info.shape.clone() })).collect())
}

/// PyTorch's name for a safetensors element type.
fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::F32 => "float32".into(),
        Dtype::BF16 => "bfloat16".into(),
        Dtype::F16 => "float16".into(),
        Dtype::F64 => "float64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The element types weights may be stored in.
pub const FLOAT_TYPES: &[&str] = &["float32", "bfloat16", "float16"];

/// What differs between the tensors `found` and those `expected`: each missing or extra tensor,
/// wrong shape or unsupported type named, at most `limit` lines and a count of the rest.
pub fn differences(expected: &BTreeMap<String, Vec<usize>>, found: &BTreeMap<String, TensorEntry>, ignorable: impl Fn(&str) -> bool, limit: usize) -> Vec<String> {
    let mut out = vec![];
    for (name, shape) in expected {
        match found.get(name) {
            None => out.push(format!("has no tensor `{}` (shape {})", name.escape_debug(), dims(shape))),
            Some(e) if &e.shape != shape => out.push(format!("tensor `{}` has shape {}, the model expects {}", name.escape_debug(), dims(&e.shape), dims(shape))),
            Some(e) if !FLOAT_TYPES.contains(&e.dtype.as_str()) => out.push(format!("tensor `{}` is {}; weights must be float32, bfloat16 or float16", name.escape_debug(), e.dtype)),
            _ => {}
        }
    }
    for name in found.keys().filter(|n| !expected.contains_key(*n) && !ignorable(n)) {
        out.push(format!("has a tensor `{}` the model does not use", name.escape_debug()));
    }
    if out.len() > limit {
        let rest = out.len() - limit;
        out.truncate(limit);
        out.push(format!("and {rest} more"));
    }
    out
}

/// `[8, 24]`.
pub fn dims(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}
