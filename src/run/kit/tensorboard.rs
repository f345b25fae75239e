//! TensorBoard event files beside metrics.jsonl: what TRL, torchtune and axolotl users open their
//! curves in. The format is TensorFlow's: TFRecord framing (length, masked CRC-32C of the
//! length, data, masked CRC-32C of the data) around `Event` protocol buffers, the first holding
//! the file version, each later one a step's `Summary` of scalars or of one text (the text
//! plugin's string tensor: a model's samples, a table of its completions). Written by hand: a
//! handful of messages and fields do not call for a protobuf compiler.

use anyhow::Result;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The event file of a run directory (the name must contain `tfevents` for TensorBoard to read it).
pub const FILE: &str = "events.out.tfevents.0.roux";

/// A step's scalars, named as TensorBoard shows them (`loss`, `moe/blocks.0.ffn/dropped`).
pub type Scalars = Vec<(String, f32)>;

/// What TensorBoard's Text tab shows under a tag: one string (Markdown) or a table of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    One(String),
    /// Rows of equal length, the first the header.
    Table(Vec<Vec<String>>),
}

pub struct EventWriter {
    file: File,
    path: PathBuf,
    /// The (step, tag) of each text in the file: a step's text is shown once (a resumed stage
    /// writes its starting point's again).
    texts: std::sync::Mutex<std::collections::BTreeSet<(u64, String)>>,
}

impl EventWriter {
    /// Write `dir`'s event file afresh, atomically, with the given steps (a resume keeps those
    /// up to its checkpoint) and texts (tag, text), and keep it open for more.
    pub fn create(dir: &Path, steps: &[(u64, f64, Scalars)], texts: &[(u64, String, Text)]) -> Result<EventWriter> {
        let path = dir.join(FILE);
        let mut bytes = record(&event(now(), 0, Body::Version("brain.Event:2")));
        for (step, wall, scalars) in steps {
            bytes.extend(record(&event(*wall, *step, Body::Scalars(scalars))));
        }
        for (step, tag, text) in texts {
            bytes.extend(record(&event(0.0, *step, Body::Text(tag, text))));
        }
        let texts = texts.iter().map(|(step, tag, _)| (*step, tag.clone())).collect();
        super::files::write_atomic(&path, &bytes)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        Ok(EventWriter { file, path, texts: std::sync::Mutex::new(texts) })
    }

    /// Append one step's scalars.
    pub fn write(&mut self, step: u64, scalars: &Scalars) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        self.append(&event(now(), step, Body::Scalars(scalars)))
    }

    /// Append a text under `tag` at `step` (through `&self`: a `File` writes through a shared
    /// reference, so the stage's helpers that hold the run directory immutably can call it).
    pub fn text(&self, step: u64, tag: &str, text: &Text) -> Result<()> {
        if !self.texts.lock().unwrap_or_else(|e| e.into_inner()).insert((step, tag.to_string())) {
            return Ok(());
        }
        self.append(&event(now(), step, Body::Text(tag, text)))
    }

    fn append(&self, event: &[u8]) -> Result<()> {
        (&self.file).write_all(&record(event)).and_then(|_| (&self.file).flush()).map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))
    }
}

/// The scalars of a metrics row: every number but the step, and each mixture-of-experts layer's
/// numbers under `moe/<layer>/`.
pub fn scalars(row: &serde_json::Value) -> Scalars {
    let mut out = vec![];
    let Some(o) = row.as_object() else { return out };
    for (k, v) in o {
        match v {
            serde_json::Value::Number(n) if k != "step" => out.extend(n.as_f64().map(|x| (k.clone(), x as f32))),
            serde_json::Value::Array(layers) if k == "moe" => {
                for l in layers {
                    let name = l["layer"].as_str().unwrap_or("moe");
                    for (lk, lv) in l.as_object().into_iter().flatten() {
                        if let Some(x) = lv.as_f64() {
                            out.push((format!("moe/{name}/{lk}"), x as f32));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

enum Body<'a> {
    Version(&'a str),
    Scalars(&'a Scalars),
    Text(&'a str, &'a Text),
}

/// An `Event`: wall_time (field 1, double), step (2, varint), then file_version (3, string) or
/// summary (5, message).
fn event(wall: f64, step: u64, body: Body) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend(wall.to_le_bytes());
    e.push(0x10);
    varint(&mut e, step);
    match body {
        Body::Version(v) => bytes_field(&mut e, 3, v.as_bytes()),
        Body::Scalars(values) => {
            // Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2 }.
            let mut summary = vec![];
            for (tag, x) in values {
                let mut value = vec![];
                bytes_field(&mut value, 1, tag.as_bytes());
                value.push(0x15);
                value.extend(x.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut e, 5, &summary);
        }
        Body::Text(tag, text) => {
            let mut summary = vec![];
            bytes_field(&mut summary, 1, &text_value(tag, text));
            bytes_field(&mut e, 5, &summary);
        }
    }
    e
}

/// A `Summary.Value` the text plugin reads: tag (1), metadata (9: plugin_data (1) { plugin_name
/// (1) = "text" }, data_class (4) = DATA_CLASS_TENSOR (2)) and tensor (8: dtype (1) = DT_STRING
/// (7), tensor_shape (2) { dim (2) { size (1) } … }, string_val (8) per element, row-major).
fn text_value(tag: &str, text: &Text) -> Vec<u8> {
    let (dims, strings): (Vec<usize>, Vec<&String>) = match text {
        Text::One(s) => (vec![], vec![s]),
        Text::Table(rows) => (vec![rows.len(), rows.first().map_or(0, Vec::len)], rows.iter().flatten().collect()),
    };
    let mut plugin = vec![];
    bytes_field(&mut plugin, 1, b"text");
    let mut metadata = vec![];
    bytes_field(&mut metadata, 1, &plugin);
    metadata.extend([4 << 3, 2]);
    let mut shape = vec![];
    for d in dims {
        let mut dim = vec![1 << 3];
        varint(&mut dim, d as u64);
        bytes_field(&mut shape, 2, &dim);
    }
    let mut tensor = vec![1 << 3, 7];
    bytes_field(&mut tensor, 2, &shape);
    for s in strings {
        bytes_field(&mut tensor, 8, s.as_bytes());
    }
    let mut value = vec![];
    bytes_field(&mut value, 1, tag.as_bytes());
    bytes_field(&mut value, 9, &metadata);
    bytes_field(&mut value, 8, &tensor);
    value
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// TFRecord framing of one record.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(len);
    out.extend(masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend(masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_crcs_by_hand() {
        let mut v = vec![];
        varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]); // the protobuf documentation's example
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }
}
