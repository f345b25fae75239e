//! How Jinja2 prints a value in a chat template (`{{ x }}`, `x | string`): Python's `str`, so
//! `None`, `True` and `[1, 'a', None]` where minijinja writes `none`, `true` and `[1, "a", none]`.
//! A template that prints a tool call's null content or a flag gave other text, so other tokens,
//! than transformers renders.

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Output, State, Value};

/// Python nests `repr` about a thousand deep before RecursionError.
const MAX_DEPTH: usize = 512;

/// The environment's formatter: `str(value)` for what Python prints otherwise than minijinja.
pub fn formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => out.write_str(&text(value)?).map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `string` filter, as Python's `str`.
pub fn string(value: Value) -> Result<String, Error> {
    text(&value)
}

/// `str(value)`: a string itself, anything else its `repr`.
pub fn text(v: &Value) -> Result<String, Error> {
    if v.kind() == ValueKind::Undefined {
        return Ok(String::new());
    }
    if let Some(s) = v.as_str() {
        return Ok(s.to_string());
    }
    let mut out = String::new();
    repr(v, 0, &mut out)?;
    Ok(out)
}

fn repr(v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(ErrorKind::InvalidOperation, "a value nested too deep to print"));
    }
    match v.kind() {
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(v.clone())?;
            out.push_str(&match x {
                x if x.is_nan() => "nan".into(),
                x if x.is_infinite() => (if x > 0.0 { "inf" } else { "-inf" }).into(),
                x => super::pyjson::float(x),
            });
        }
        ValueKind::String => quoted(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&item, depth + 1, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&key, depth + 1, out)?;
                out.push_str(": ");
                repr(&v.get_item(&key)?, depth + 1, out)?;
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// Python's `repr` of a string: single quotes unless it holds one and no double quote; the
/// characters Python does not print (controls, separators, format characters) escaped.
fn quoted(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if !printable(c) => match c as u32 {
                n if n < 0x100 => out.push_str(&format!("\\x{n:02x}")),
                n if n < 0x10000 => out.push_str(&format!("\\u{n:04x}")),
                n => out.push_str(&format!("\\U{n:08x}")),
            },
            c => out.push(c),
        }
    }
    out.push(q);
}

/// Python's `str.isprintable` for one character, for the characters text holds: not a control,
/// a separator other than the space, or a common format character.
fn printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control() || c.is_whitespace() || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}'))
}

#[cfg(test)]
mod tests {
    use minijinja::Value;

    #[test]
    fn values_print_as_pythons_str_prints_them() {
        // Each right side is Python's str() of the same value.
        let v = |json: &str| -> Value { serde_json::from_str(json).unwrap() };
        for (json, py) in [
            ("null", "None"),
            ("true", "True"),
            ("[1, 2.5, 1e16, \"a\", null, false]", "[1, 2.5, 1e+16, 'a', None, False]"),
            ("{\"k\": \"it's\", \"b\": {\"q\": \"say \\\"hi\\\"\"}}", "{'k': \"it's\", 'b': {'q': 'say \"hi\"'}}"),
            ("[\"both ' and \\\"\", \"tab\\tnl\\n\\u0001\\u00a0é\\u200b\"]", "['both \\' and \"', 'tab\\tnl\\n\\x01\\xa0é\\u200b']"),
            ("\"plain\"", "plain"),
        ] {
            assert_eq!(super::text(&v(json)).unwrap(), py, "{json}");
        }
    }
}
