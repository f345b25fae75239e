//! Characters that make a recipe show otherwise than roux reads it. YAML 1.1 (libyaml, under
//! serde_yaml) also breaks lines at a lone carriage return, U+0085, U+2028 and U+2029, and editors
//! and code review show them as new lines; roux's grammar and its own readers of the text (spans,
//! `fmt`'s comments, the depth guard) break at `\n` only. The bidirectional controls reorder how a
//! line is shown (the "Trojan Source" attack; rustc refuses them too). A recipe with one is refused
//! where it stands, so that every reader sees the same text: otherwise `fmt` carried a YAML comment
//! ended by U+2028 together with the value after it (and wrote YAML that did not parse), and
//! `// lr = 1e-3⏎lr = 1` read as one comment where a reviewer sees a setting. A string that needs
//! such a character writes it as an escape (`\u{2028}`; YAML's double-quoted `\u2028`).

use crate::diag::{Code, Diagnostic, Span};

#[derive(Clone, Copy)]
pub enum Spelling {
    Recipe,
    Yaml,
}

/// Whether a recipe may not hold `c` raw (a lone carriage return aside, which `check` finds by
/// what follows it): a string writes these as escapes (`syntax/print.rs`).
pub fn shown_otherwise(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Refuses the first line break of `src` that is not `\n` or `\r\n`, and the first
/// bidirectional control.
pub fn check(src: &str, form: Spelling) -> Result<(), Diagnostic> {
    let bytes = src.as_bytes();
    let odd = src.char_indices().find_map(|(i, c)| match c {
        '\r' if bytes.get(i + 1) != Some(&b'\n') => Some((i, c, "a carriage return without a line feed")),
        '\u{85}' => Some((i, c, "U+0085 NEXT LINE")),
        '\u{2028}' => Some((i, c, "U+2028 LINE SEPARATOR")),
        '\u{2029}' => Some((i, c, "U+2029 PARAGRAPH SEPARATOR")),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Some((i, c, "a bidirectional control character")),
        _ => None,
    });
    let Some((at, c, what)) = odd else { return Ok(()) };
    let bidi = what.starts_with("a bidi");
    let (message, hint) = match (form, bidi) {
        (_, true) => (
            format!("{}syntax error: {what} (U+{:04X}), which reorders how the text is shown", if matches!(form, Spelling::Yaml) { "YAML " } else { "" }, c as u32),
            "remove it; write it as an escape in a string if it is meant",
        ),
        (Spelling::Yaml, false) => (format!("YAML syntax error: {what}, which YAML 1.1 reads as a line break"), "end lines with a line feed (\\n or \\r\\n); write the character as an escape in a double-quoted string if it is meant"),
        (Spelling::Recipe, false) => (format!("syntax error: {what}, which editors show as a line break and roux does not"), "end lines with a line feed (\\n or \\r\\n); write the character as an escape (`\\u{2028}`) in a string if it is meant"),
    };
    Err(Diagnostic::error(Code::E0001, Span::new(at, at + c.len_utf8()), message).with_hint(hint))
}
