//! A JSONL data set of rows (not conversations), line by line: the string fields it names, a
//! feedback label a boolean; each bad line with why.

use crate::recipe::ExampleKind;

/// A JSONL data set read line by line: the rows of its good lines, and its bad ones.
pub struct Jsonl {
    /// The named fields of each good line, in order.
    pub rows: Vec<Vec<String>>,
    /// The first bad lines (1-based line number, why), at most the number asked for.
    pub bad: Vec<(usize, String)>,
    /// Every bad line, listed or not.
    pub bad_total: usize,
}

/// Read JSONL text: every non-empty line one JSON object whose `fields` are strings — but
/// feedback's third, its label, a boolean (kept as "true" or "false"). The one reading both
/// `roux check` (every bad line, counted) and a run (the first) use.
pub fn parse_jsonl(text: &str, fields: &[String], kind: ExampleKind, max_bad: usize) -> Jsonl {
    let label = (kind == ExampleKind::Feedback).then_some(2);
    let mut out = Jsonl { rows: vec![], bad: vec![], bad_total: 0 };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<serde_json::Value>(line) {
            Err(e) => Err(format!("not JSON (column {}: {e})", e.column())),
            Ok(v) if !v.is_object() => Err("not a JSON object".to_string()),
            Ok(v) => fields
                .iter()
                .enumerate()
                .map(|(i, f)| match v.get(f) {
                    Some(serde_json::Value::Bool(b)) if label == Some(i) => Ok(b.to_string()),
                    Some(other) if label == Some(i) => Err(format!("field `{f}` is {}, expected true (desirable) or false", json_kind(other))),
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(format!("field `{f}` is {}, expected a string", json_kind(other))),
                    None => Err(format!("no field `{f}` (the data set reads fields {})", fields.join(", "))),
                })
                .collect::<Result<Vec<_>, _>>(),
        };
        match row {
            Ok(r) => out.rows.push(r),
            Err(why) => {
                out.bad_total += 1;
                if out.bad.len() < max_bad {
                    out.bad.push((i + 1, why));
                }
            }
        }
    }
    out
}

/// What kind of JSON value this is, in words.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feedback_label_is_a_json_boolean() {
        let fields: Vec<String> = ["prompt", "completion", "label"].map(String::from).to_vec();
        let text = "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": false}\n{\"prompt\": \"a\", \"completion\": \"b\", \"label\": \"yes\"}\n";
        let parsed = parse_jsonl(text, &fields, ExampleKind::Feedback, 5);
        assert_eq!(parsed.rows, vec![vec!["a".to_string(), "b".into(), "false".into()]]);
        assert_eq!(parsed.bad, vec![(2, "field `label` is a string, expected true (desirable) or false".to_string())]);
    }
}
