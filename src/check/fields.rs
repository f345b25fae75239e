//! Reading a constructor's `{ key = value }` block with types, defaults and ranges.
//!
//! Each getter records the key as known; `finish` then reports every key that no getter asked
//! for, with a did-you-mean over the known ones. Getters return None after reporting an error,
//! so a checker reads every field and reports every problem before giving up on the block.

use super::eval::{describe, Scope};
use crate::diag::suggest::did_you_mean;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::syntax::ast::*;

pub struct Fields<'a> {
    pub block: Option<&'a Block>,
    pub scope: Scope<'a>,
    /// What the block configures, for messages: "transformer", "adamw", …
    pub what: String,
    /// Where to point when a required key is missing.
    pub at: Span,
    known: Vec<&'static str>,
    /// Keys accepted beyond the getters' (sweep variables at the top level).
    pub allowed: Vec<String>,
    /// The experiment body, where declarations and sweeps belong.
    pub top_level: bool,
}


/// Integer range check applied by `Fields::int`.
#[derive(Clone, Copy)]
pub enum Min {
    Zero,
    One,
}

impl<'a> Fields<'a> {
    pub fn new(block: Option<&'a Block>, outer: &Scope<'a>, what: impl Into<String>, at: Span) -> Self {
        let mut scope = outer.clone();
        if let Some(b) = block {
            scope.push(b);
        }
        Fields { block, scope, what: what.into(), at, known: vec![], allowed: vec![], top_level: false }
    }

    pub fn field(&mut self, key: &'static str) -> Option<&'a Field> {
        self.known.push(key);
        self.block.and_then(|b| b.field(key))
    }

    /// A key that may be left out: `Some(None)` when it is, else what `read` makes of it (`None`
    /// after an error it reported).
    pub fn optional<T>(&mut self, ck: &mut Checker<'a>, key: &'static str, read: impl FnOnce(&mut Self, &mut Checker<'a>) -> Option<T>) -> Option<Option<T>> {
        if self.field(key).is_some() { read(self, ck).map(Some) } else { Some(None) }
    }

    fn missing(&self, ck: &mut Checker<'a>, key: &str) {
        ck.error(Diagnostic::error(Code::E0101, self.at, format!("{} is missing `{key}`", self.what))
            .with_hint(format!("add `{key} = …` to the block")));
    }

    pub fn num(&mut self, ck: &mut Checker<'a>, key: &'static str, default: Option<f64>) -> Option<f64> {
        match self.field(key) {
            Some(f) => ck.eval_field(f, &self.scope),
            None if default.is_some() => default,
            None => {
                self.missing(ck, key);
                None
            }
        }
    }

    /// A real number in `lo..hi` (`lo_open`: excluded). Reports E0202 otherwise.
    pub fn ranged(
        &mut self,
        ck: &mut Checker<'a>,
        key: &'static str,
        default: Option<f64>,
        lo: f64,
        lo_open: bool,
        hi: f64,
        hi_open: bool,
    ) -> Option<f64> {
        let v = self.num(ck, key, default)?;
        let ok = (if lo_open { v > lo } else { v >= lo }) && (if hi_open { v < hi } else { v <= hi });
        if !ok {
            let span = self.value_span(key);
            let hint = if hi.is_infinite() {
                format!("{key} must be {} {}", if lo_open { "above" } else { "at least" }, fmt_num(lo))
            } else {
                let (open, close) = (if lo_open { "(" } else { "[" }, if hi_open { ")" } else { "]" });
                format!("{key} must lie in {open}{}, {}{close}", fmt_num(lo), fmt_num(hi))
            };
            ck.error(Diagnostic::error(Code::E0202, span, format!("`{key}` = {} is out of range", fmt_num(v))).with_hint(hint));
            return None;
        }
        Some(v)
    }

    pub fn positive(&mut self, ck: &mut Checker<'a>, key: &'static str, default: Option<f64>) -> Option<f64> {
        self.ranged(ck, key, default, 0.0, true, f64::INFINITY, false)
    }

    pub fn int(&mut self, ck: &mut Checker<'a>, key: &'static str, default: Option<u64>, min: Min) -> Option<u64> {
        let v = self.num(ck, key, default.map(|d| d as f64))?;
        let span = self.value_span(key);
        if v.fract() != 0.0 {
            ck.error(Diagnostic::error(Code::E0123, span, format!("`{key}` must be a whole number, found {}", fmt_num(v))).with_hint(format!("use {} or {}", fmt_num(v.floor()), fmt_num(v.ceil()))));
            return None;
        }
        let lo = match min {
            Min::Zero => 0.0,
            Min::One => 1.0,
        };
        if v < lo {
            ck.error(Diagnostic::error(Code::E0201, span, format!("`{key}` must be at least {lo}, found {}", fmt_num(v)))
                .with_hint(format!("{} needs a {} {key}", self.what, if lo > 0.0 { "positive" } else { "non-negative" })));
            return None;
        }
        if v > 9.0e15 {
            ck.error(Diagnostic::error(Code::E0121, span, format!("`{key}` = {} is too large", fmt_num(v))).with_hint("whole numbers must be below 9e15"));
            return None;
        }
        Some(v as u64)
    }

    /// A positive whole number that sizes something, up to the key's limit in `arith::SIZE_LIMITS`.
    pub fn size(&mut self, ck: &mut Checker<'a>, key: &'static str, default: Option<u64>) -> Option<usize> {
        let v = self.int(ck, key, default, Min::One)?;
        let max = crate::arith::size_limit(key);
        if v > max {
            ck.error(Diagnostic::error(Code::E0202, self.value_span(key), format!("`{key}` = {v} is out of range"))
                .with_hint(format!("{key} must lie in [1, {max}]")));
            return None;
        }
        Some(v as usize)
    }

    pub fn bool(&mut self, ck: &mut Checker<'a>, key: &'static str, default: bool) -> Option<bool> {
        match self.field(key) {
            None => Some(default),
            Some(f) => match &f.value.kind {
                ExprKind::Bool(b) => Some(*b),
                _ => {
                    ck.error(Diagnostic::error(Code::E0120, f.value.span, format!("`{key}` expects true or false, found {}", describe(&f.value))).with_hint(format!("write `{key} = true` or `{key} = false`")));
                    None
                }
            },
        }
    }

    pub fn sym(
        &mut self,
        ck: &mut Checker<'a>,
        key: &'static str,
        allowed: &[&'static str],
        default: Option<&'static str>,
    ) -> Option<&'static str> {
        match self.field(key) {
            Some(f) => {
                let scope = self.scope.clone();
                ck.eval_sym(&f.value, key, allowed, Some(&scope))
            }
            None if default.is_some() => default,
            None => {
                self.missing(ck, key);
                None
            }
        }
    }

    pub fn value_span(&self, key: &str) -> Span {
        self.block.and_then(|b| b.field(key)).map_or(self.at, |f| f.value.span)
    }

    pub fn key_span(&self, key: &str) -> Span {
        self.block.and_then(|b| b.field(key)).map_or(self.at, |f| f.key.span)
    }

    /// Report unknown and repeated keys.
    pub fn finish(self, ck: &mut Checker<'a>) {
        let Some(b) = self.block else { return };
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for e in &b.entries {
            match e {
                Entry::Field(f) => {
                    let k = f.key.name.as_str();
                    if !seen.insert(k) {
                        ck.error(Diagnostic::error(Code::E0102, f.key.span, format!("`{k}` is set twice in {}", self.what))
                            .with_hint("remove one of the two"));
                    }
                    if !self.known.contains(&k) && !self.allowed.iter().any(|a| a == k) {
                        let mut d = Diagnostic::error(Code::E0100, f.key.span, format!("unknown key `{k}` in {}", self.what));
                        d = match did_you_mean(k, self.known.iter().copied()) {
                            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                            None => {
                                // A getter may ask for a key twice (`every` as a number, then as a list).
                                let mut known: Vec<&str> = vec![];
                                for k in &self.known {
                                    if !known.contains(k) {
                                        known.push(k);
                                    }
                                }
                                d.with_hint(format!("{} accepts: {}", self.what, known.join(", ")))
                            }
                        };
                        ck.error(d);
                    }
                }
                Entry::Decl(_) | Entry::Sweep(_) if self.top_level => {}
                Entry::Decl(d) => ck.error(Diagnostic::error(Code::E0103, d.kind_span, format!("`{}` declarations belong at the top of the experiment, not inside {}", d.kind.keyword(), self.what)).with_hint("move it out of this block, directly into `experiment { … }`")),
                Entry::Sweep(s) => ck.error(Diagnostic::error(Code::E0103, s.span, format!("`sweep` belongs at the top of the experiment, not inside {}", self.what)).with_hint("move it out of this block, directly into `experiment { … }`")),
            }
        }
    }
}

pub fn fmt_num(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
