//! What changed in a stage's definition since its run directory was written, as the lines
//! `roux run` prints when it keeps an old run aside or refuses to resume one.

use serde_json::Value;
use std::path::Path;

/// What changed between the definition a run directory holds and `now`, as `path: old → new`.
pub fn changes_since(dir: &Path, now: &Value) -> Vec<String> {
    let before: Value = super::files::read_capped(&dir.join("resolved.json"), 64 << 20).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let mut changes = vec![];
    diff("", &before, now, &mut changes);
    if changes.is_empty() {
        changes.push("an upstream stage's output".into());
    }
    changes
}

/// The leaves that differ between two JSON values, as `path: old → new`.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}
