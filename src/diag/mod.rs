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

/// A count with thousands separators, as messages, tables and reports print them: 1,228,800.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    Lines::new(src).line_col(offset)
}

/// A source text with its line starts indexed once: locating many diagnostics in one file costs
/// a binary search each, not a scan from the top (100k diagnostics of a 2 MB file).
pub struct Lines<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub fn new(src: &'a str) -> Self {
        Lines { src, starts: std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect() }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.src, offset.min(self.src.len()));
        let line = self.starts.partition_point(|&s| s <= offset);
        (line, self.src[self.starts[line - 1]..offset].chars().count() + 1)
    }

    /// The text of 1-based line `n`, without its line break.
    pub fn line(&self, n: usize) -> &'a str {
        let Some(&start) = self.starts.get(n.wrapping_sub(1)) else { return "" };
        let end = self.starts.get(n).map_or(self.src.len(), |&e| e - 1);
        self.src[start..end].trim_end_matches('\r')
    }
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

pub fn locate(file: &str, src: &str, d: &Diagnostic) -> Located {
    locate_in(file, &Lines::new(src), d)
}

/// `locate` in a file whose lines are indexed.
pub fn locate_in(file: &str, lines: &Lines, d: &Diagnostic) -> Located {
    // A `--set` argument's diagnostic counts in the argument's text.
    let own;
    let lines = match &d.origin {
        Some(set) => {
            own = Lines::new(set);
            &own
        }
        None => lines,
    };
    let (line, col) = lines.line_col(d.span.start);
    let (end_line, end_col) = lines.line_col(d.span.end.max(d.span.start));
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
    render_text_in(file, &Lines::new(src), d)
}

/// `render_text` in a file whose lines are indexed.
pub fn render_text_in(file: &str, lines: &Lines, d: &Diagnostic) -> String {
    let l = locate_in(file, lines, d);
    let sev = d.severity.word();
    let place = match &d.origin {
        Some(set) => format!("{file}, {set}"),
        None => format!("{}:{}:{}", file, l.line, l.col),
    };
    let mut out = format!("{}: {}[{}]: {}\n", visible(&place), sev, d.code, visible(&d.message));
    let text = match &d.origin {
        Some(set) => set.as_str(),
        None => lines.line(l.line),
    };
    // Very long lines are cut around the span so the caret stays readable.
    let (shown, shift) = clip_line(&stand_in(text), l.col);
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
        out += &format!("{:gutter$} = hint: {}\n", "", visible(h));
    }
    out
}

/// Whether `c`, written raw to a terminal or a log viewer, would do more than show itself: a
/// control character (an escape sequence recolours or rewrites the screen), one that breaks a
/// line, or a bidirectional control that reorders the text around it.
fn hidden(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Recipe text in a message, with each such character (but line feeds, which lay messages out)
/// written as `\u{…}`.
pub fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, |c| hidden(c) && c != '\n')
}

fn escaped(s: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(&escape) {
        return s.into();
    }
    s.chars().map(|c| if escape(c) { format!("\\u{{{:x}}}", c as u32) } else { c.to_string() }).collect::<String>().into()
}

/// A source line under a caret: each such character as one `�`, so the columns stay.
fn stand_in(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars().map(|c| if hidden(c) { '\u{FFFD}' } else { c }).collect::<String>().into()
}

/// `::error file=…,line=…,col=…::message` for GitHub Actions.
pub fn render_github(file: &str, src: &str, d: &Diagnostic) -> String {
    render_github_in(file, &Lines::new(src), d)
}

/// `render_github` in a file whose lines are indexed.
pub fn render_github_in(file: &str, lines: &Lines, d: &Diagnostic) -> String {
    let l = locate_in(file, lines, d);
    // GitHub's annotation levels are error, warning and notice.
    let sev = if d.severity == Severity::Note { "notice" } else { d.severity.word() };
    // Line breaks are the workflow command's own escapes' (`github_data`); the rest as `\u{…}`.
    let shown = |t: &str| escaped(t, |c| hidden(c) && c != '\n' && c != '\r').into_owned();
    let mut msg = format!("[{}] {}", d.code, shown(&d.message));
    if let Some(h) = &d.hint {
        msg += &format!(" (hint: {})", shown(h));
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
