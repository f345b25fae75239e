//! `tojson` as transformers defines it for chat templates: Python's `json.dumps` (its separators
//! `", "` and `": "`, non-ASCII text kept, nothing escaped for HTML, maps in the order written),
//! with the options `indent`, `ensure_ascii`, `separators` and `sort_keys`. minijinja's own
//! filter escapes `<`, `>`, `&` and `'`, writes no spaces and sorts keys: the same template gave
//! other text, so other tokens, than the checkpoint's authors trained on.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

pub fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be (item, key)")),
        // Python's defaults: no space before a line break when indenting.
        None => ((if indent.is_some() { "," } else { ", " }).to_string(), ": ".to_string()),
    };
    let w = Writer { indent, ascii: ensure_ascii.unwrap_or(false), sort: sort_keys.unwrap_or(false), item, key };
    let mut out = String::new();
    w.value(&value, 0, &mut out)?;
    Ok(out)
}

struct Writer {
    indent: Option<usize>,
    ascii: bool,
    sort: bool,
    item: String,
    key: String,
}

impl Writer {
    fn value(&self, v: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        // Python's json nests about a thousand deep before RecursionError; a template can build
        // a value deeper than any JSON line (`{% set ns.x = [ns.x] %}` in a loop).
        if level > 512 {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: a value nested too deep"));
        }
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => out.push_str(&float(f64::try_from(v.clone())?)),
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, out, |i, out| self.value(&items[i], level + 1, out))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort {
                    keys.sort();
                }
                self.container(('{', '}'), keys.len(), level, out, |i, out| {
                    self.string(&keys[i].to_string(), out);
                    out.push_str(&self.key);
                    self.value(&v.get_item(&keys[i])?, level + 1, out)
                })?;
            }
            _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: a {} is not JSON serializable", v.kind()))),
        }
        Ok(())
    }

    fn container(&self, (open, close): (char, char), n: usize, level: usize, out: &mut String, mut each: impl FnMut(usize, &mut String) -> Result<(), Error>) -> Result<(), Error> {
        out.push(open);
        if n > 0 {
            let line = |out: &mut String, depth: usize| {
                if let Some(k) = self.indent {
                    out.push('\n');
                    out.push_str(&" ".repeat(k * depth));
                }
            };
            for i in 0..n {
                if i > 0 {
                    out.push_str(&self.item);
                }
                line(out, level + 1);
                each(i, out)?;
            }
            line(out, level);
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A float as Python's `repr` writes it: the shortest digits that read back, positional for
/// exponents from -4 to 15 (`1.0`, `0.0001`), else `1e-05`, `1e+16`.
pub(super) fn float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "1.5e16", "1e-5"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = x.to_string();
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::float;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (x, py) in [(1.0, "1.0"), (0.1, "0.1"), (1e-5, "1e-05"), (0.0001, "0.0001"), (1e16, "1e+16"), (1.5e16, "1.5e+16"), (123456789012345.6, "123456789012345.6"), (-2.5e-7, "-2.5e-07"), (-0.0, "-0.0")] {
            assert_eq!(float(x), py, "{x}");
        }
    }
}
