//! AST → canonical recipe text. Parsing the output gives back the same AST (modulo spans).
//!
//! `print` lays out an AST alone; `format` also keeps the source's comments (own-line comments
//! before the entry they precede, end-of-line comments after theirs), single blank lines between
//! groups of entries, and blocks written on one line stay on one line when they are short and
//! simple. Formatting formatted text changes nothing.

use super::ast::*;

/// A `// …` or `/* … */` comment of the source.
#[derive(Clone, Debug)]
struct Comment {
    start: usize,
    text: String,
}

/// Comments of `src`, in order (outside string literals).
fn comments(src: &str) -> Vec<Comment> {
    let b = src.as_bytes();
    let (mut i, mut out) = (0, vec![]);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = src[i..].find('\n').map_or(b.len(), |n| i + n);
                out.push(Comment { start: i, text: src[i..end].trim_end().to_string() });
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                out.push(Comment { start: i, text: src[i..end].to_string() });
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

pub fn print(r: &SourceFile) -> String {
    Printer { out: String::new(), src: None, comments: vec![], next: 0, trailing: vec![] }.recipe(r)
}

/// Format recipe source: parse it and print it back with its comments.
pub fn format(src: &str) -> Result<String, crate::diag::Diagnostic> {
    let r = super::parse::parse(src)?;
    Ok(Printer { out: String::new(), src: Some(src), comments: comments(src), next: 0, trailing: vec![] }.recipe(&r))
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // What a recipe may not hold raw (syntax/breaks.rs): escaped, so printing reads back.
            c if super::breaks::shown_otherwise(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Consecutive lines with end-of-line comments get their comments in one column, one space
/// after the longest code among them (as gofmt does). `at` holds, per such line, its index and
/// the byte offset in it where the comment starts (kept aside while printing: strings in a
/// recipe may hold any character, so no in-band marker is safe).
fn align_trailing_comments(text: &str, at: &[(usize, usize)]) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let cut: std::collections::HashMap<usize, usize> = at.iter().copied().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if !cut.contains_key(&i) {
            out.push(lines[i].to_string());
            i += 1;
            continue;
        }
        let run_end = (i..lines.len()).find(|j| !cut.contains_key(j)).unwrap_or(lines.len());
        let width = (i..run_end).map(|j| lines[j][..cut[&j]].chars().count()).max().unwrap_or(0);
        for j in i..run_end {
            let (code, comment) = lines[j].split_at(cut[&j]);
            out.push(format!("{code}{} {comment}", " ".repeat(width - code.chars().count())));
        }
        i = run_end;
    }
    out.join("\n")
}

/// Longest line an inline block may make.
const WIDTH: usize = 100;

struct Printer<'s> {
    out: String,
    src: Option<&'s str>,
    comments: Vec<Comment>,
    /// The first comment not yet printed.
    next: usize,
    /// (line, byte column) of every end-of-line comment printed.
    trailing: Vec<(usize, usize)>,
}

fn entry_span(e: &Entry) -> (usize, usize) {
    match e {
        Entry::Field(f) => (f.key.span.start, f.value.span.end),
        Entry::Decl(d) => (d.kind_span.start, d.value.span.end),
        Entry::Sweep(s) => (s.span.start, s.span.end),
    }
}

impl<'s> Printer<'s> {
    fn recipe(mut self, r: &SourceFile) -> String {
        self.own_line_comments_before(r.name_span.start, 0);
        self.out.push_str(&format!("experiment {} ", quote(&r.name)));
        self.block(&r.body, 0, false);
        self.out.push('\n');
        self.own_line_comments_before(usize::MAX, 0);
        align_trailing_comments(&self.out, &self.trailing)
    }

    fn indent(&mut self, n: usize) {
        self.out.push_str(&"  ".repeat(n));
    }

    /// Print, each on its own line, the comments that start before `pos`.
    fn own_line_comments_before(&mut self, pos: usize, indent: usize) {
        while self.next < self.comments.len() && self.comments[self.next].start < pos {
            let c = self.comments[self.next].clone();
            if self.blank_line_before(c.start) && !self.out.ends_with("{\n") && !self.out.is_empty() {
                self.out.push('\n');
            }
            self.indent(indent);
            self.out.push_str(&c.text);
            self.out.push('\n');
            self.next += 1;
        }
    }

    /// Whether the source has an empty line just before `pos` (a group boundary to keep).
    fn blank_line_before(&self, pos: usize) -> bool {
        let Some(src) = self.src else { return false };
        let before = &src[..pos.min(src.len())];
        let trimmed = before.trim_end_matches([' ', '\t']);
        trimmed.ends_with("\n\n") || trimmed.ends_with("\n\r\n")
    }

    /// A comment on the same source line after `end`, printed after the entry.
    fn trailing_comment(&mut self, end: usize) {
        let Some(src) = self.src else { return };
        if let Some(c) = self.comments.get(self.next) {
            if c.start >= end && !src[end..c.start].contains('\n') && !c.text.contains('\n') {
                let line = self.out.matches('\n').count();
                let col = self.out.len() - self.out.rfind('\n').map_or(0, |n| n + 1);
                self.trailing.push((line, col));
                self.out.push_str(&c.text);
                self.next += 1;
            }
        }
    }

    /// A block on one line: when the source wrote it so, it holds only short plain fields, no
    /// comment falls inside, and the line stays within the width.
    fn inline(&self, b: &Block) -> Option<String> {
        let src = self.src?;
        let text = src.get(b.span.start..b.span.end)?;
        if text.contains('\n') || b.entries.is_empty() || b.entries.len() > 6 {
            return None;
        }
        if self.comments.iter().any(|c| c.start > b.span.start && c.start < b.span.end) {
            return None;
        }
        let mut parts = vec![];
        for e in &b.entries {
            let Entry::Field(f) = e else { return None };
            if matches!(&f.value.kind, ExprKind::Ctor { block: Some(_), .. }) {
                return None;
            }
            let mut p = Printer { out: String::new(), src: None, comments: vec![], next: 0, trailing: vec![] };
            p.expr(&f.value, 0);
            parts.push(format!("{} = {}", f.key.name, p.out));
        }
        let s = format!("{{ {} }}", parts.join(", "));
        let line_len = self.out.rsplit('\n').next().map_or(0, |l| l.chars().count());
        (line_len + s.chars().count() <= WIDTH).then_some(s)
    }

    fn block(&mut self, b: &Block, indent: usize, may_inline: bool) {
        if b.entries.is_empty() && !self.comments.iter().skip(self.next).any(|c| c.start < b.span.end) {
            self.out.push_str("{}");
            return;
        }
        if may_inline {
            if let Some(s) = self.inline(b) {
                self.out.push_str(&s);
                return;
            }
        }
        self.out.push_str("{\n");
        for (i, e) in b.entries.iter().enumerate() {
            let (start, end) = entry_span(e);
            let had_comment = self.comments.get(self.next).is_some_and(|c| c.start < start);
            if i > 0 && !had_comment && self.blank_line_before(start) {
                self.out.push('\n');
            }
            self.own_line_comments_before(start, indent + 1);
            self.indent(indent + 1);
            self.entry(e, indent + 1);
            self.trailing_comment(end);
            self.out.push('\n');
        }
        self.own_line_comments_before(b.span.end.saturating_sub(1), indent + 1);
        self.indent(indent);
        self.out.push('}');
    }

    fn entry(&mut self, e: &Entry, indent: usize) {
        match e {
            Entry::Field(f) => {
                self.out.push_str(&f.key.name);
                self.out.push_str(" = ");
                self.expr(&f.value, indent);
            }
            Entry::Decl(d) => {
                self.out.push_str(d.kind.keyword());
                self.out.push(' ');
                self.out.push_str(&d.name.name);
                match &d.value.kind {
                    ExprKind::Ctor { path, args: None, block: Some(b) } if path.is_empty() => {
                        self.out.push(' ');
                        self.block(b, indent, true);
                    }
                    _ => {
                        self.out.push_str(" = ");
                        self.expr(&d.value, indent);
                    }
                }
            }
            Entry::Sweep(s) => {
                self.out.push_str("sweep ");
                self.out.push_str(&s.var.name);
                self.out.push_str(" in ");
                self.expr(&s.values, indent);
            }
        }
    }

    fn list(&mut self, items: &[Expr], indent: usize) {
        for (i, e) in items.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.expr(e, indent);
        }
    }

    fn expr(&mut self, e: &Expr, indent: usize) {
        match &e.kind {
            ExprKind::Num { text, .. } => self.out.push_str(text),
            ExprKind::Str(s) => self.out.push_str(&quote(s)),
            ExprKind::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            ExprKind::List(items) => {
                self.out.push('[');
                self.list(items, indent);
                self.out.push(']');
            }
            ExprKind::Tuple(items) => {
                self.out.push('(');
                self.list(items, indent);
                self.out.push(')');
            }
            ExprKind::Paren(inner) => {
                self.out.push('(');
                self.expr(inner, indent);
                self.out.push(')');
            }
            ExprKind::Neg(inner) => {
                self.out.push('-');
                self.expr(inner, indent);
            }
            ExprKind::Binary(op, a, b) => {
                self.expr(a, indent);
                self.out.push_str(&format!(" {} ", op.symbol()));
                self.expr(b, indent);
            }
            ExprKind::Ctor { path, args, block: blk } => {
                self.out.push_str(&Expr::path_string(path));
                if let Some(args) = args {
                    self.out.push('(');
                    for (i, a) in args.iter().enumerate() {
                        if i > 0 {
                            self.out.push_str(", ");
                        }
                        if let Some(n) = &a.name {
                            self.out.push_str(&n.name);
                            self.out.push_str(" = ");
                        }
                        self.expr(&a.value, indent);
                    }
                    self.out.push(')');
                }
                if let Some(b) = blk {
                    self.out.push(' ');
                    self.block(b, indent, true);
                }
            }
        }
    }
}

/// One expression as recipe text.
pub fn expr(out: &mut String, e: &Expr, indent: usize) {
    let mut p = Printer { out: std::mem::take(out), src: None, comments: vec![], next: 0, trailing: vec![] };
    p.expr(e, indent);
    *out = p.out;
}
