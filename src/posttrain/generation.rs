//! transformers' `{% generation %}…{% endgeneration %}` tag, which marks what the assistant writes
//! (`return_assistant_tokens_mask`, TRL's `assistant_only_loss`). minijinja has no such tag: a
//! template's are rewritten as `{% filter roux_generation %}…{% endfilter %}`, a block tag with the
//! same whitespace control, which renders its body, between two private-use marks when the render
//! asks for them (`MARKS` true). Rendered once with the marks, a conversation's assistant text is
//! what they enclose, as transformers finds it.

use minijinja::State;

pub const START: char = '\u{E000}';
pub const END: char = '\u{E001}';
/// The context variable that asks for the marks.
pub const MARKS: &str = "roux_generation_marks";

/// `source` with its generation tags rewritten, and whether it had any.
pub fn generation_blocks(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let inner = &rest[2..];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let word_at = body.len() - body.trim_start().len();
        let word = body.trim_start();
        let (name, replacement) = if word.starts_with("endgeneration") {
            ("endgeneration", "endfilter")
        } else if word.starts_with("generation") {
            ("generation", "filter roux_generation")
        } else {
            ("", "")
        };
        let after = &word[name.len()..];
        let tail = after.trim_start();
        match ["-%}", "+%}", "%}"].into_iter().find(|c| tail.starts_with(c)).filter(|_| !name.is_empty()) {
            Some(close) => {
                out.push_str(&format!("{{%{open} {replacement} {close}"));
                rest = &rest[2 + open.len() + word_at + name.len() + (after.len() - tail.len()) + close.len()..];
                found = true;
            }
            None => {
                out.push_str("{%");
                rest = &rest[2..];
            }
        }
    }
    out.push_str(rest);
    (out, found)
}

/// The `roux_generation` filter: its body, between the marks when the render asks for them.
pub fn filter(state: &State, body: String) -> String {
    if state.lookup(MARKS).is_some_and(|v| v.is_true()) {
        format!("{START}{body}{END}")
    } else {
        body
    }
}

/// A render with the marks as segments (text, trained), or why its marks do not pair.
pub fn segments(marked: &str) -> Result<Vec<(String, bool)>, String> {
    let (mut out, mut text, mut inside) = (vec![], String::new(), false);
    for c in marked.chars() {
        match c {
            START if !inside => {
                out.push((std::mem::take(&mut text), false));
                inside = true;
            }
            END if inside => {
                out.push((std::mem::take(&mut text), true));
                inside = false;
            }
            START | END => return Err("the chat template's generation blocks nest".into()),
            c => text.push(c),
        }
    }
    if inside {
        return Err("a generation block of the chat template is not closed".into());
    }
    out.push((text, false));
    out.retain(|(t, _)| !t.is_empty());
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generation_tags_become_blocks_with_their_whitespace_control() {
        let t = "{%- for m in messages %}{% if m.role == 'assistant' %}{%- generation -%}\n{{ m.content }}{%+ endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}{% generation_x %}";
        let want = "{%- for m in messages %}{% if m.role == 'assistant' %}{%- filter roux_generation -%}\n{{ m.content }}{%+ endfilter %}{% else %}{{ m.content }}{% endif %}{% endfor %}{% generation_x %}";
        assert_eq!(super::generation_blocks(t), (want.to_string(), true));
        assert_eq!(super::generation_blocks("{% generation_x %}{{ 1 }}"), ("{% generation_x %}{{ 1 }}".to_string(), false));
    }

    #[test]
    fn marks_divide_a_render_into_trained_segments() {
        let (s, e) = (super::START, super::END);
        assert_eq!(super::segments(&format!("a{s}b{e}{s}c{e}d")).unwrap(), vec![("a".into(), false), ("b".into(), true), ("c".into(), true), ("d".into(), false)]);
        assert!(super::segments(&format!("{s}a{s}b{e}{e}")).unwrap_err().contains("nest"));
        assert!(super::segments(&format!("{s}a")).unwrap_err().contains("not closed"));
    }
}
