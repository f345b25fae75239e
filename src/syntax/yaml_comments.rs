//! Comments of a YAML recipe, carried from the file onto its canonical layout (`roux fmt`): each
//! comment is tied to the key (or list item) it stands above or beside, and put back above or
//! beside that key in the new text. One whose key is gone goes at the end: none is lost.

/// Where a line sits in the document: its keys from the top, a list item as `#<index>`.
type Path = Vec<String>;

/// `formatted` with the comments of `source` put back.
pub fn carry(source: &str, formatted: &str) -> String {
    let (notes, trailing_end) = collect(source);
    if notes.is_empty() && trailing_end.is_empty() {
        return formatted.to_string();
    }
    // Each key's notes in source order, found by path in one look-up (linear in the lines).
    let mut by_path: std::collections::HashMap<Path, std::collections::VecDeque<usize>> = std::collections::HashMap::new();
    for (i, n) in notes.iter().enumerate() {
        by_path.entry(n.path.clone()).or_default().push_back(i);
    }
    let mut notes: Vec<Option<Note>> = notes.into_iter().map(Some).collect();
    let mut out = String::with_capacity(formatted.len() + source.len() / 4);
    let mut walk = Walker::default();
    for line in formatted.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(path) = walk.step(line) {
            if let Some(note) = by_path.get_mut(&path).and_then(|q| q.pop_front()).and_then(|i| notes[i].take()) {
                for c in &note.above {
                    out.push_str(&" ".repeat(indent));
                    out.push_str(c);
                    out.push('\n');
                }
                out.push_str(line);
                if let Some(t) = &note.beside {
                    out.push_str("  ");
                    out.push_str(t);
                }
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    // Comments whose key the layout no longer has, then those after the last key.
    for n in notes.into_iter().flatten() {
        for c in n.above.iter().chain(&n.beside) {
            out.push_str(c);
            out.push('\n');
        }
    }
    for c in trailing_end {
        out.push_str(&c);
        out.push('\n');
    }
    out
}

/// The comments tied to one key.
struct Note {
    path: Path,
    above: Vec<String>,
    beside: Option<String>,
}

/// Every key's comments, and the comments after the last key. Lines inside a scalar that
/// spans lines (quoted, or a `|`/`>` block) are its text, not keys or comments.
fn collect(source: &str) -> (Vec<Note>, Vec<String>) {
    let mut notes: Vec<Note> = vec![];
    let mut pending: Vec<String> = vec![];
    let mut walk = Walker::default();
    // A quoted scalar left open at the end of a line; the indent of a key whose value is a block.
    let mut open: Option<u8> = None;
    let mut block: Option<usize> = None;
    for line in lines(source) {
        let t = line.trim();
        let indent = line.len() - line.trim_start().len();
        if let Some(key_indent) = block {
            if t.is_empty() || indent > key_indent {
                continue;
            }
            block = None;
        }
        let continued = open.is_some();
        let (code, comment, still_open) = split_comment(line, open);
        open = still_open;
        if continued {
            // The rest of a quoted scalar: only a comment after its closing quote counts.
            if let Some(c) = comment {
                pending.push(c.to_string());
            }
            continue;
        }
        if t.starts_with('#') {
            pending.push(t.to_string());
            continue;
        }
        if let Some(path) = walk.step(code) {
            if !pending.is_empty() || comment.is_some() {
                notes.push(Note { path, above: std::mem::take(&mut pending), beside: comment.map(str::to_string) });
            }
            if open.is_none() && starts_block(code) {
                block = Some(indent);
            }
        } else if let Some(c) = comment {
            pending.push(c.to_string());
        }
    }
    (notes, pending)
}

/// The lines of `text` as YAML breaks them: at `\n`, `\r\n` or a lone `\r`.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

/// Whether a key or item line's value starts a block scalar (`key: |`, `- >-`, `key: |2`).
fn starts_block(code: &str) -> bool {
    let value = code.trim_end().rsplit_once(": ").map_or_else(|| code.trim().trim_start_matches('-').trim(), |(_, v)| v.trim());
    value.starts_with(['|', '>']) && value[1..].chars().all(|c| matches!(c, '+' | '-' | '1'..='9'))
}

/// A line's text and its trailing `# comment` (a `#` after a blank, outside quoted scalars),
/// and the quote still open at its end; `open`, the quote a line before left open. A quote opens
/// a scalar only where a value starts (the line's start, after `- `, `? `, `: `, and in a flow
/// collection after `[`, `{` or `,`): inside a plain scalar (`a: d"o # c`, `a: b[['c`) quotes
/// and brackets are ordinary characters. In double quotes a backslash escapes the next
/// character; in single quotes `''` is a quote.
fn split_comment(line: &str, open: Option<u8>) -> (&str, Option<&str>, Option<u8>) {
    let b = line.as_bytes();
    let blank = |i: usize| b.get(i).is_none_or(|c| *c == b' ' || *c == b'\t');
    let mut quote = open;
    let (mut escaped, mut plain, mut depth) = (false, false, 0usize);
    for (i, &c) in b.iter().enumerate() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(b'"') if c == b'\\' => escaped = true,
            Some(b'\'') if c == b'\'' && b.get(i + 1) == Some(&b'\'') => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'#' && (i == 0 || blank(i - 1)) => return (line[..i].trim_end(), Some(line[i..].trim_end()), None),
            // A value ends at `: ` (its key's), and in a flow collection at `,`, `]` or `}`.
            None if plain => match c {
                b':' if blank(i + 1) => plain = false,
                b',' if depth > 0 => plain = false,
                b']' | b'}' if depth > 0 => (plain, depth) = (false, depth - 1),
                _ => {}
            },
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                b' ' | b'\t' | b',' => {}
                b'-' | b'?' | b':' if blank(i + 1) => {}
                _ => plain = true,
            },
        }
    }
    (line, None, quote)
}

/// Follows the block structure line by line: the key path of each key or list-item line.
#[derive(Default)]
struct Walker {
    /// (indent, key) of the enclosing keys; list items as `#<n>`.
    stack: Vec<(usize, String)>,
    /// Items seen so far under each path, to number list items.
    items: std::collections::HashMap<Path, usize>,
}

impl Walker {
    fn step(&mut self, line: &str) -> Option<Path> {
        let t = line.trim_start();
        if t.is_empty() || t == "---" {
            return None;
        }
        let indent = line.len() - t.len();
        while self.stack.last().is_some_and(|(i, _)| *i >= indent) {
            self.stack.pop();
        }
        let parent: Path = self.stack.iter().map(|(_, k)| k.clone()).collect();
        if let Some(rest) = t.strip_prefix("- ").or(if t == "-" { Some("") } else { None }) {
            let n = self.items.entry(parent).or_insert(0);
            let key = format!("#{n}");
            *n += 1;
            self.stack.push((indent, key));
            // `- key: value`: the item's first key sits two columns in.
            if let Some(c) = key_of(rest) {
                self.stack.push((indent + 2, c));
            }
        } else if let Some(k) = key_of(t) {
            self.stack.push((indent, k));
        } else {
            return None; // a continuation of a multi-line value
        }
        Some(self.stack.iter().map(|(_, k)| k.clone()).collect())
    }
}

/// The key a `key: value` line starts with.
fn key_of(t: &str) -> Option<String> {
    super::yaml::key_colon(t).map(|i| t[..i].trim().trim_matches(|c| c == '"' || c == '\'').to_string())
}

#[cfg(test)]
mod tests {
    use super::carry;

    #[test]
    fn comments_follow_their_keys_into_the_new_layout() {
        let source = "# the experiment\nexperiment: x   # its name\nmodel lm:\n  $: transformer\n  # width\n  d_model:   32  # small\n  tasks: [a, b]\n# the end\n";
        let formatted = "experiment: x\nmodel lm:\n  $: transformer\n  d_model: 32\n  tasks:\n  - a\n  - b\n";
        assert_eq!(
            carry(source, formatted),
            "# the experiment\nexperiment: x  # its name\nmodel lm:\n  $: transformer\n  # width\n  d_model: 32  # small\n  tasks:\n  - a\n  - b\n# the end\n"
        );
    }

    #[test]
    fn a_comment_whose_key_is_gone_is_kept_at_the_end() {
        assert_eq!(carry("a: 1\n# about b\nb: 2\n", "a: 1\n"), "a: 1\n# about b\n");
        // A `#` inside quotes is no comment.
        assert_eq!(carry("t: '\"a # b\"'\n", "t: '\"a # b\"'\n"), "t: '\"a # b\"'\n");
    }

    #[test]
    fn quotes_inside_a_plain_value_or_escaped_open_nothing() {
        // (Found by the fuzzer: the comment was lost, and `fmt` was not at a fixed point.)
        assert_eq!(carry("a: d\"o # c\n", "a: 'd\"o'\n"), "a: 'd\"o'  # c\n");
        assert_eq!(carry("a: \"x\\\" # y\" # c\n", "a: \"x\\\" # y\"\n"), "a: \"x\\\" # y\"  # c\n");
        assert_eq!(carry("a: 'it''s # no' # c\n", "a: 'it''s # no'\n"), "a: 'it''s # no'  # c\n");
        assert_eq!(carry("a: [x, \"y # no\"] # c\n", "a: [x, \"y # no\"]\n"), "a: [x, \"y # no\"]  # c\n");
        assert_eq!(carry("a: b[['c\"d # c\n", "a: b[['c\"d\n"), "a: b[['c\"d  # c\n");
        assert_eq!(carry("- 'x # no' # c\n", "- 'x # no'\n"), "- 'x # no'  # c\n");
        // A comment's trailing blanks go, beside a key as above it: `fmt` again changes nothing.
        assert_eq!(carry("a: 1 # c  \nb: 2 # d \t\n", "a: 1\n"), "a: 1  # c\n# d\n");
    }

    #[test]
    fn text_of_a_scalar_over_several_lines_is_no_comment() {
        // (Found by the fuzzer: a `#` line inside a quoted scalar became a comment, and a lone
        // carriage return, a line break to YAML, split it into a line that did not parse.)
        assert_eq!(carry("a: 'x\n  # not\r y' # c\nb: 1\n", "a: 'x # not y'\nb: 1\n"), "a: 'x # not y'\n# c\nb: 1\n");
        assert_eq!(carry("t: |\n  # not\n  Q\n# c\nb: 1\n", "t: |-\n  # not\n  Q\nb: 1\n"), "t: |-\n  # not\n  Q\n# c\nb: 1\n");
        assert_eq!(carry("a: 1 # c\r\nb: 2\r# d\rc: 3\n", "a: 1\nb: 2\nc: 3\n"), "a: 1  # c\nb: 2\n# d\nc: 3\n");
    }

    #[test]
    fn keys_the_layout_lost_keep_their_comments_in_order() {
        // 20,000 of them beside 20,000 other keys (each key's look-up once scanned every note).
        let source: String = (0..20_000).map(|i| format!("k{i}: 1  # c{i}\n")).collect();
        let formatted: String = (0..20_000).map(|i| format!("j{i}: 1\n")).collect();
        let comments: String = (0..20_000).map(|i| format!("# c{i}\n")).collect();
        assert_eq!(carry(&source, &formatted), format!("{formatted}{comments}"));
    }
}
