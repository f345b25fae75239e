//! Bounds on nesting, checked before anything recurses into a recipe: brackets in the text (pest
//! recurses per level), operators in the parse tree (`1 + 1 + … + 1` builds a tree as deep as it
//! is long, which checking, printing and dropping then recurse through), and flow collections
//! in the YAML form (the YAML scanner's time grows with the square of their depth). A recipe is
//! someone else's text: each bound is a diagnostic, never a stack overflow or a hang.

use pest::iterators::Pair;

use super::grammar::Rule;
use crate::diag::{Code, Diagnostic, Span};

/// Deepest bracket nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Deepest expression tree accepted, operators and minus signs counted.
pub const MAX_TREE: usize = 256;
/// Deepest flow nesting of the YAML form: a recipe's 64 levels take up to two each there (a
/// constructor with arguments is a mapping holding a list), and the YAML parser's own limit,
/// 128, stops what is deeper still; this bound only keeps its scanner from quadratic time.
pub const MAX_YAML_FLOW: usize = 256;

fn too_deep(at: usize, what: String) -> Diagnostic {
    Diagnostic::error(Code::E0002, Span::new(at, at + 1), what).with_hint("flatten the expression; recipes never need this much nesting")
}

/// Brackets of the recipe text, outside strings.
pub fn check_brackets(src: &str) -> Result<(), Diagnostic> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, c) in src.char_indices() {
        if in_str {
            // `"\\"` ends at its third quote: an escape covers one character.
            (in_str, escaped) = match (escaped, c) {
                (true, _) => (true, false),
                (false, '\\') => (true, true),
                (false, '"') => (false, false),
                _ => (true, false),
            };
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '(' | '[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep(i, format!("nesting deeper than {MAX_DEPTH} levels")));
                }
            }
            '}' | ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The depth of the expression tree the parse tree under `root` becomes: each expression counts
/// one and its operators (`a + b + c` nests two deep), each operand its minus signs. Linear: one
/// pass over the pairs in order, with the stack of those that enclose the current one.
pub fn check_tree(root: &Pair<Rule>) -> Result<(), Diagnostic> {
    let mut open: Vec<(usize, usize)> = vec![]; // (end, depth) of the enclosing pairs
    for p in root.clone().into_inner().flatten() {
        let (start, end) = (p.as_span().start(), p.as_span().end());
        while open.last().is_some_and(|&(e, _)| e <= start) {
            open.pop();
        }
        let weight = match p.as_rule() {
            Rule::expr | Rule::unary => 1 + p.clone().into_inner().filter(|q| matches!(q.as_rule(), Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::pow | Rule::neg)).count(),
            _ => 0,
        };
        let depth = open.last().map_or(0, |o| o.1) + weight;
        if depth > MAX_TREE {
            return Err(too_deep(start, format!("an expression nested deeper than {MAX_TREE} levels (each operator and minus sign is one)")));
        }
        open.push((end, depth));
    }
    Ok(())
}

/// Flow collections (`[`, `{`) of a YAML recipe, outside quoted scalars and comments. What
/// matters is never to count fewer than the YAML scanner nests: a bracket counts inside a flow
/// collection and wherever a word starts (so a plain scalar's `a [b` counts too: more, never
/// fewer); a quote opens a scalar only where YAML's can (a word starting after `:`, `-`, `?`,
/// `[`, `{`, `,` or at a line's start), so text in it is text to both.
pub fn check_yaml_flow(src: &str) -> Result<(), Diagnostic> {
    let (mut depth, mut quote, mut escaped) = (0usize, None::<u8>, false);
    let b = src.as_bytes();
    let (mut word_start, mut after): (bool, Option<u8>) = (true, None); // `after`: the last non-blank byte of the line
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            match (q, c, escaped) {
                (b'"', _, true) => escaped = false,
                (b'"', b'\\', false) => escaped = true,
                (b'\'', b'\'', _) if b.get(i + 1) == Some(&b'\'') => i += 1,
                (q, c, _) if c == q => quote = None,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'\n' | b'\r' => (word_start, after) = (true, None),
            b' ' | b'\t' => word_start = true,
            b'#' if word_start => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if word_start && matches!(after, None | Some(b':' | b'-' | b'?' | b'[' | b'{' | b',')) => quote = Some(c),
            b'[' | b'{' if depth > 0 || word_start => {
                depth += 1;
                if depth > MAX_YAML_FLOW {
                    return Err(too_deep(i, format!("nesting deeper than {MAX_YAML_FLOW} levels")));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            // After a flow indicator a word starts at once (`[[`, `,"x"`).
            word_start = matches!(c, b'[' | b'{' | b',') && depth > 0;
            after = Some(c);
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escaped_backslash_ends_its_string() {
        let deep = format!("x = \"\\\\\" {}", "(".repeat(65));
        assert_eq!(check_brackets(&deep).unwrap_err().message, "nesting deeper than 64 levels");
        assert!(check_brackets(&format!("x = \"\\\" {}\"", "(".repeat(65))).is_ok(), "an escaped quote does not end the string");
    }

    #[test]
    fn yaml_flow_nesting_is_bounded_outside_whole_line_comments() {
        assert!(check_yaml_flow(&format!("a: {}{}\n", "[".repeat(256), "]".repeat(256))).is_ok());
        assert_eq!(check_yaml_flow(&format!("a: {}\n", "{a: ".repeat(257))).unwrap_err().span.start, 3 + 4 * 256);
        assert!(check_yaml_flow(&format!("# {}\na: 1\n", "[".repeat(300))).is_ok());
        // Brackets in quoted scalars and comments are text; a quote inside a word opens nothing.
        assert!(check_yaml_flow(&format!("a: \"x{}\\\" {}\"\nb: [ '{}''{}', 1 ]  # {}\n", "[".repeat(300), "{".repeat(300), "[".repeat(300), "[".repeat(300), "[".repeat(300))).is_ok());
        assert!(check_yaml_flow(&format!("a: x\"y {}\n", "[".repeat(257))).is_err());
        assert!(check_yaml_flow(&format!("a: [{}\n", "[".repeat(256))).is_err());
    }
}
