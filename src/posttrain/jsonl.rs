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
/// feedback's third, its label, a boolean (kept as "true" or "false"). A preference pair may
/// carry a `margin` (a number, kept as a fourth field: TRL's RewardTrainer column), every pair
/// or none. The one reading both `roux check` (every bad line, counted) and a run (the first) use.
pub fn parse_jsonl(text: &str, fields: &[String], kind: ExampleKind, max_bad: usize) -> Jsonl {
    let label = (kind == ExampleKind::Feedback).then_some(2);
    let mut out = Jsonl { rows: vec![], bad: vec![], bad_total: 0 };
    // Each good row with its line.
    let mut rows: Vec<(usize, Vec<String>)> = vec![];
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
                .collect::<Result<Vec<_>, _>>()
                .and_then(|mut r| {
                    if kind == ExampleKind::Preferences {
                        r.extend(margin(v.get("margin"))?);
                    }
                    Ok(r)
                }),
        };
        match row {
            Ok(r) => rows.push((i + 1, r)),
            Err(why) => bad_line(&mut out.bad, &mut out.bad_total, i + 1, why, max_bad),
        }
    }
    margins_on_every_pair_or_none(&mut rows, |r| r.len() > fields.len(), &mut out.bad, &mut out.bad_total, max_bad);
    out.rows = rows.into_iter().map(|(_, r)| r).collect();
    out
}

/// One bad line: counted, and listed while fewer than `listed` are.
pub fn bad_line(bad: &mut Vec<(usize, String)>, total: &mut usize, line: usize, why: String, listed: usize) {
    *total += 1;
    if bad.len() < listed {
        bad.push((line, why));
    }
}

/// Margins on some pairs only: the rows without one (`has` says which have) become bad lines, as
/// a 0 in their place would be silent; the list stays in line order.
pub fn margins_on_every_pair_or_none<R>(rows: &mut Vec<(usize, R)>, has: impl Fn(&R) -> bool, bad: &mut Vec<(usize, String)>, total: &mut usize, listed: usize) {
    if !(rows.iter().any(|(_, r)| has(r)) && rows.iter().any(|(_, r)| !has(r))) {
        return;
    }
    let (kept, missing): (Vec<_>, Vec<_>) = std::mem::take(rows).into_iter().partition(|(_, r)| has(r));
    for (line, _) in missing {
        bad_line(bad, total, line, "has no `margin`, which other pairs have (a margin on every pair or on none)".into(), listed);
    }
    *rows = kept;
    bad.sort();
    bad.truncate(listed);
}

/// A pair's `margin`, if it has one: a finite number, kept as its decimal text.
pub fn margin(v: Option<&serde_json::Value>) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_f64().filter(|m| m.is_finite() && m.abs() <= 1e6) {
            Some(m) => Ok(Some(m.to_string())),
            None => Err(format!("field `margin` is {n}, beyond the ±1e6 a margin may be")),
        },
        Some(other) => Err(format!("field `margin` is {}, expected a number", json_kind(other))),
    }
}

/// What kind of JSON value this is, in words.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
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

    /// A margin on every pair or none: one without it among pairs with one is a bad line, and
    /// so is a margin that is no number; the good pairs keep theirs as a fourth field.
    #[test]
    fn a_pair_margin_is_a_number_on_every_pair_or_none() {
        let fields: Vec<String> = ["prompt", "chosen", "rejected"].map(String::from).to_vec();
        let line = |m: &str| format!("{{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"{m}}}\n");
        let none = parse_jsonl(&[line(""), line("")].concat(), &fields, ExampleKind::Preferences, 5);
        assert_eq!((none.rows[0].len(), none.bad_total), (3, 0));
        let text = [line(", \"margin\": 1.5"), line(""), line(", \"margin\": \"big\""), line(", \"margin\": 2")].concat();
        let parsed = parse_jsonl(&text, &fields, ExampleKind::Preferences, 5);
        assert_eq!(parsed.rows, vec![vec!["p".to_string(), "c".into(), "r".into(), "1.5".into()], vec!["p".to_string(), "c".into(), "r".into(), "2".into()]]);
        assert_eq!(
            parsed.bad,
            vec![(2, "has no `margin`, which other pairs have (a margin on every pair or on none)".to_string()), (3, "field `margin` is a string, expected a number".to_string())]
        );
    }
}
