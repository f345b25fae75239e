//! Diagnostics are data: a span, a code, a message and a hint. Only the CLI renders them.

pub mod codes;
pub mod suggest;

pub use codes::Code;

use serde::Serialize;

/// Byte range into the recipe source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    pub fn join(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Information the checker derived (such as the width and depth it chose for a model).
    Note,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// `Code::as_str` of the code it was made with: the code as users and tools see it.
    pub code: &'static str,
    pub span: Span,
    pub message: String,
    pub hint: Option<String>,
    /// Where the span points when not into the file: the text of a `--set` argument
    /// (`--set lm.layers=0`), the span then being an offset into it.
    pub origin: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, code: code.as_str(), span, message: message.into(), hint: None, origin: None }
    }
    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, code: code.as_str(), span, message: message.into(), hint: None, origin: None }
    }
    pub fn note(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Note, code: code.as_str(), span, message: message.into(), hint: None, origin: None }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, src[line_start..offset].chars().count() + 1)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A diagnostic located in a file, as `--format json` prints it. A diagnostic about a `--set`
/// argument names it in `set`, and its line and column count within `--set ARG`.
#[derive(Serialize, Debug, Clone)]
pub struct Located {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    pub line: usize,
    pub col: usize,
    pub end_line: usize,
    pub end_col: usize,
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

/// The text a diagnostic's span points into: the file's, or its `--set` argument's.
fn text_of<'a>(src: &'a str, d: &'a Diagnostic) -> &'a str {
    d.origin.as_deref().unwrap_or(src)
}

pub fn locate(file: &str, src: &str, d: &Diagnostic) -> Located {
    let src = text_of(src, d);
    let (line, col) = line_col(src, d.span.start);
    let (end_line, end_col) = line_col(src, d.span.end.max(d.span.start));
    Located {
        file: file.to_string(),
        set: d.origin.clone(),
        line,
        col,
        end_line,
        end_col,
        severity: d.severity,
        code: d.code,
        message: d.message.clone(),
        hint: d.hint.clone(),
    }
}

/// `file:line:col: error[CODE]: message`, the source line, a caret underline, and the hint. A
/// `--set` argument's diagnostic says `file, --set ARG: error[CODE]: …` over the argument.
pub fn render_text(file: &str, src: &str, d: &Diagnostic) -> String {
    let l = locate(file, src, d);
    let src = text_of(src, d);
    let sev = d.severity.word();
    let place = match &d.origin {
        Some(set) => format!("{file}, {set}"),
        None => format!("{}:{}:{}", file, l.line, l.col),
    };
    let mut out = format!("{place}: {}[{}]: {}\n", sev, d.code, d.message);
    let text = src.lines().nth(l.line - 1).unwrap_or("");
    // Very long lines are cut around the span so the caret stays readable.
    let (shown, shift) = clip_line(text, l.col);
    let number = if d.origin.is_some() { String::new() } else { l.line.to_string() };
    let gutter = number.len();
    let width = if l.end_line == l.line { l.end_col.saturating_sub(l.col).max(1) } else { 1 };
    out += &format!("{:gutter$} |\n", "");
    out += &format!("{number} | {}\n", shown);
    out += &format!(
        "{:gutter$} | {}{}\n",
        "",
        " ".repeat(l.col - 1 - shift),
        "^".repeat(width.min(120))
    );
    if let Some(h) = &d.hint {
        out += &format!("{:gutter$} = hint: {}\n", "", h);
    }
    out
}

/// `::error file=…,line=…,col=…::message` for GitHub Actions.
pub fn render_github(file: &str, src: &str, d: &Diagnostic) -> String {
    let l = locate(file, src, d);
    // GitHub's annotation levels are error, warning and notice.
    let sev = if d.severity == Severity::Note { "notice" } else { d.severity.word() };
    let mut msg = format!("[{}] {}", d.code, d.message);
    if let Some(h) = &d.hint {
        msg += &format!(" (hint: {h})");
    }
    // A `--set` argument is no line of the file: annotate the file as a whole.
    if let Some(set) = &d.origin {
        return format!("::{sev} file={}::{}\n", github_property(file), github_data(&format!("{set}: {msg}")));
    }
    format!("::{sev} file={},line={},col={},endLine={},endColumn={}::{}\n", github_property(file), l.line, l.col, l.end_line, l.end_col, github_data(&msg))
}

/// A workflow command's message, escaped as GitHub's toolkit does (`escapeData`): `%`, CR, LF.
fn github_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// A workflow command's property value (`escapeProperty`): as the message, and `:` and `,`, which
/// would otherwise end the value or the properties.
fn github_property(s: &str) -> String {
    github_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn clip_line(text: &str, col: usize) -> (String, usize) {
    let n = text.chars().count();
    if n <= 160 {
        return (text.to_string(), 0);
    }
    let start = col.saturating_sub(60);
    let s: String = text.chars().skip(start).take(140).collect();
    (s, start)
}
