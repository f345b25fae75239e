//! A finished run's outputs, verified before a stage is reused as "up to date": each file its
//! report lists is there, of the size it wrote, and still a safetensors file.

use serde_json::Value;
use std::path::Path;

/// Why a finished run's outputs are not what it wrote, if they are not: a file its report lists
/// is missing, of another size, or not a safetensors file any more.
pub fn changed(dir: &Path, report: &Value) -> Option<String> {
    for (file, v) in report["outputs"].as_object()? {
        let path = super::files::stage_dir(dir, file).ok()?;
        match std::fs::metadata(&path) {
            Err(_) => return Some(format!("{file} is missing")),
            Ok(m) if Some(m.len()) != v["bytes"].as_u64() => return Some(format!("{file} has {} bytes, it wrote {}", m.len(), v["bytes"])),
            Ok(_) if safetensors_header(&path).is_none() => return Some(format!("{file} is no longer a safetensors file")),
            Ok(_) => {}
        }
    }
    None
}

/// The JSON header of a safetensors file (8-byte little-endian length, then the header), if it
/// has one.
fn safetensors_header(path: &Path) -> Option<Value> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    serde_json::from_slice(&header).ok()
}
