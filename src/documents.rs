//! A `.jsonl` pretraining corpus: one JSON object a line, a document's text under one key
//! (`{"text": …}`, as Hugging Face datasets and torchtune's text-completion sets hold them).
//! Check reads the first lines through its loader; a run reads them all.

/// A line of a .jsonl corpus.
#[derive(Debug, PartialEq)]
pub struct Line {
    /// From 1, counting blank lines.
    pub number: usize,
    /// The byte of the file it starts at.
    pub start: usize,
    /// Its document's text, or why it has none.
    pub doc: Result<String, String>,
}

/// Each non-blank line of `text` with its document under `key`.
pub fn document_lines<'t>(text: &'t str, key: &'t str) -> impl Iterator<Item = Line> + 't {
    text.split_inclusive('\n')
        .scan(0, |start, line| {
            let at = *start;
            *start += line.len();
            Some((at, line))
        })
        .enumerate()
        .filter(|(_, (_, l))| !l.trim().is_empty())
        .map(move |(i, (start, line))| Line { number: i + 1, start, doc: document(line, key) })
}

fn document(line: &str, key: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object ({e})"))?;
    match v.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{}` is not a string", key.escape_debug())),
        None if v.is_object() => Err(format!("no field `{}`", key.escape_debug())),
        None => Err("not a JSON object".into()),
    }
}

/// The words of a text as lm-evaluation-harness counts them for word perplexity,
/// `len(re.split(r"\s+", doc))`: the pieces between runs of whitespace, an empty one at each
/// end that starts or ends with whitespace counted too.
pub fn words(text: &str) -> u64 {
    let mut runs = 0;
    let mut space = false;
    for c in text.chars() {
        let now = c.is_whitespace();
        runs += (now && !space) as u64;
        space = now;
    }
    runs + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_are_counted_as_lm_eval_splits_them() {
        // Python: len(re.split(r"\s+", s)) for each.
        for (s, n) in [("", 1), ("a", 1), ("a b", 2), (" = Title = \n", 5), ("a  \n\t b\n", 3), ("\n", 2), ("é è", 2)] {
            assert_eq!(super::words(s), n, "{s:?}");
        }
    }

    #[test]
    fn each_line_is_a_document_or_says_why_not() {
        let text = "{\"text\": \"one\\ntwo\"}\n\n{\"body\": \"x\"}\n{\"text\": 3}\n[1]\n{\"text\": \"é\"}";
        let got: Vec<(usize, usize, Result<String, String>)> = super::document_lines(text, "text").map(|l| (l.number, l.start, l.doc)).collect();
        assert_eq!(
            got,
            vec![
                (1, 0, Ok("one\ntwo".into())),
                (3, 22, Err("no field `text`".into())),
                (4, 36, Err("`text` is not a string".into())),
                (5, 48, Err("not a JSON object".into())),
                (6, 52, Ok("é".into())),
            ]
        );
    }
}
