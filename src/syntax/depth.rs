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

/// Flow collections (`[`, `{`) of a YAML recipe, counted everywhere but in whole-line comments
/// (inside a quoted string they are counted too: a string of 65 unclosed brackets is refused
/// rather than a quote misread letting deep nesting through).
pub fn check_yaml_flow(src: &str) -> Result<(), Diagnostic> {
    let (mut depth, mut at) = (0usize, 0);
    for line in src.split_inclusive('\n') {
        if !line.trim_start().starts_with('#') {
            for (i, b) in line.bytes().enumerate() {
                match b {
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(too_deep(at + i, format!("nesting deeper than {MAX_DEPTH} levels")));
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
        at += line.len();
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
        assert!(check_yaml_flow(&format!("a: {}{}\n", "[".repeat(64), "]".repeat(64))).is_ok());
        assert_eq!(check_yaml_flow(&format!("a: {}\n", "{a: ".repeat(65))).unwrap_err().span.start, 3 + 4 * 64);
        assert!(check_yaml_flow(&format!("# {}\na: 1\n", "[".repeat(100))).is_ok());
    }
}
