//! A multiple-choice set (`choices("file.jsonl")`), as lm-evaluation-harness scores one: each
//! line a question (`prompt`), its possible answers (`choices`, a list of strings) and the index
//! of the right one (`answer`: a whole number, digits as HellaSwag's `label` holds them, or a
//! letter as ARC's `answerKey`, A the first). Read line by line, each bad line with why.

use super::jsonl::{bad_line, json_kind};

/// The most choices a question may offer.
pub const MAX_CHOICES: usize = 1024;

/// Choices a forward pass scores at once (run/kit/choices.rs; the plan's activations).
pub const ROWS: usize = 16;

/// The most text a set may make its scorer tokenize, in bytes: each choice is tokenized after
/// its whole question, so a long question with many choices costs their product (MMLU's 14k
/// questions of four choices make about 60 MB).
pub const MAX_TOKENIZED: u64 = 1 << 30;

/// Bytes of text scoring `questions` tokenizes: each choice after its question shown through a
/// template of `template` bytes besides `{prompt}`, with a `delimiter` of so many bytes, and
/// after a description of `description` bytes and the `fewshot` first questions answered, each
/// followed by `between` bytes.
pub fn tokenized_bytes(questions: &[Question], template: usize, delimiter: usize, (fewshot, between): (usize, usize), description: usize) -> u64 {
    let (shown, scored) = questions.split_at(fewshot.min(questions.len()));
    let prefix: u64 = description as u64 + shown.iter().map(|q| (template + q.prompt.len() + delimiter + q.choices[q.answer].len() + between) as u64).sum::<u64>();
    let each = |q: &Question| q.choices.iter().map(|c| prefix.saturating_add((template + q.prompt.len() + delimiter + c.len()) as u64)).fold(0u64, u64::saturating_add);
    scored.iter().map(each).fold(0u64, u64::saturating_add)
}

/// The text shown before every scored question with `fewshot` examples (lm-eval's few-shot
/// context): each of `shown` through `template`, then `delimiter` and its right choice, each
/// followed by `between` (lm-eval's `fewshot_delimiter`). (`examples::render`'s substitution,
/// written here: examples.rs reads this file.)
pub fn fewshot_prefix(shown: &[Question], template: &str, delimiter: &str, between: &str) -> String {
    shown.iter().map(|q| format!("{}{delimiter}{}{between}", template.replace("{prompt}", &q.prompt), q.choices[q.answer])).collect()
}

/// One question.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub prompt: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// The questions of a file's good lines, the first bad lines (1-based line, why), and how many
/// were bad.
pub struct Questions {
    pub questions: Vec<Question>,
    pub bad: Vec<(usize, String)>,
    pub bad_total: usize,
}

/// Read JSONL text whose lines hold fields `[prompt, choices, answer]` as named.
pub fn parse(text: &str, fields: &[String; 3], max_bad: usize) -> Questions {
    let mut out = Questions { questions: vec![], bad: vec![], bad_total: 0 };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line).map_err(|e| format!("not JSON (column {}: {e})", e.column())).and_then(|v| question(&v, fields)) {
            Ok(q) => out.questions.push(q),
            Err(why) => bad_line(&mut out.bad, &mut out.bad_total, i + 1, why, max_bad),
        }
    }
    out
}

fn question(v: &serde_json::Value, [prompt, choices, answer]: &[String; 3]) -> Result<Question, String> {
    if !v.is_object() {
        return Err("not a JSON object".to_string());
    }
    let field = |f: &String| v.get(f).ok_or_else(|| format!("no field `{f}` (the data set reads fields {prompt}, {choices}, {answer})"));
    let p = match field(prompt)? {
        serde_json::Value::String(s) => s.clone(),
        other => return Err(format!("field `{prompt}` is {}, expected a string", json_kind(other))),
    };
    let list = match field(choices)? {
        serde_json::Value::Array(items) if (2..=MAX_CHOICES).contains(&items.len()) => items,
        serde_json::Value::Array(items) => return Err(format!("field `{choices}` holds {} choice{}; a question needs 2 to {MAX_CHOICES}", items.len(), if items.len() == 1 { "" } else { "s" })),
        other => return Err(format!("field `{choices}` is {}, expected a list of strings", json_kind(other))),
    };
    let c = list
        .iter()
        .map(|c| match c {
            serde_json::Value::String(s) => Ok(s.clone()),
            other => Err(format!("a choice in `{choices}` is {}, expected a string", json_kind(other))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let a = field(answer)?;
    let index = match a {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        serde_json::Value::String(s) if s.len() == 1 && s.as_bytes()[0].is_ascii_uppercase() => Some((s.as_bytes()[0] - b'A') as usize),
        _ => None,
    };
    match index {
        Some(i) if i < c.len() => Ok(Question { prompt: p, choices: c, answer: i }),
        Some(i) => Err(format!("field `{answer}` is {i}, but there are {} choices (0 to {})", c.len(), c.len() - 1)),
        None => Err(format!("field `{answer}` is {a}, expected the right choice's index (0, 1, …, as a number or digits) or letter (A, B, …)")),
    }
}

/// lm-evaluation-harness's split of a question and one of its choices into the context and the
/// continuation whose likelihood is scored: the continuation is `delimiter` + the choice, and
/// whitespace ending the context moves to the continuation's start (a tokenizer whose tokens
/// carry their leading space then sees the space where it sees it in running text).
pub fn context_and_continuation(context: &str, delimiter: &str, choice: &str) -> (String, String) {
    let kept = context.trim_end();
    (kept.to_string(), format!("{}{delimiter}{choice}", &context[kept.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> [String; 3] {
        ["q".to_string(), "c".to_string(), "a".to_string()]
    }

    #[test]
    fn answers_are_indices_digits_or_letters_and_bad_lines_say_why() {
        let text = [
            r#"{"q": "2+2=", "c": ["3", "4"], "a": 1}"#,
            r#"{"q": "ctx", "c": ["x", "y", "z"], "a": "2"}"#,
            r#"{"q": "sky?", "c": ["red", "blue"], "a": "B"}"#,
            "",
            r#"{"q": "one", "c": ["only"], "a": 0}"#,
            r#"{"q": "far", "c": ["a", "b"], "a": 2}"#,
            r#"{"q": "what", "c": ["a", "b"], "a": "b"}"#,
            r#"{"q": 3, "c": ["a", "b"], "a": 0}"#,
            r#"{"q": "x", "c": ["a", 1], "a": 0}"#,
        ]
        .join("\n");
        let p = parse(&text, &fields(), 10);
        let answers: Vec<(usize, usize)> = p.questions.iter().map(|q| (q.choices.len(), q.answer)).collect();
        assert_eq!(answers, [(2, 1), (3, 2), (2, 1)]);
        assert_eq!(p.bad_total, 5);
        let why: Vec<String> = p.bad.iter().map(|(l, w)| format!("{l}: {w}")).collect();
        assert_eq!(
            why,
            [
                "5: field `c` holds 1 choice; a question needs 2 to 1024",
                "6: field `a` is 2, but there are 2 choices (0 to 1)",
                "7: field `a` is \"b\", expected the right choice's index (0, 1, …, as a number or digits) or letter (A, B, …)",
                "8: field `q` is a number, expected a string",
                "9: a choice in `c` is a number, expected a string",
            ]
        );
    }

    #[test]
    fn the_text_a_set_makes_its_scorer_tokenize_is_every_choice_after_its_question() {
        let q = |p: &str, c: &[&str]| Question { prompt: p.into(), choices: c.iter().map(|s| s.to_string()).collect(), answer: 0 };
        // "Q: " + 5 + " " + 1, twice; "Q: " + 2 + " " + 3 and + 4.
        assert_eq!(tokenized_bytes(&[q("hello", &["a", "b"]), q("hi", &["cat", "door"])], 3, 1, (0, 2), 0), 2 * 10 + 9 + 10);
        // One shot: "Q: hello a" and "\n\n" (12 bytes) before each of "hi"'s two choices.
        assert_eq!(tokenized_bytes(&[q("hello", &["a", "b"]), q("hi", &["cat", "door"])], 3, 1, (1, 2), 0), 9 + 10 + 2 * 12);
        // And a description of 20 bytes before that, for each choice scored.
        assert_eq!(tokenized_bytes(&[q("hello", &["a", "b"]), q("hi", &["cat", "door"])], 3, 1, (1, 2), 20), 9 + 10 + 2 * 12 + 2 * 20);
    }

    #[test]
    fn few_shot_examples_are_each_question_with_its_right_choice() {
        let q = |p: &str, c: &[&str], a| Question { prompt: p.into(), choices: c.iter().map(|s| s.to_string()).collect(), answer: a };
        let shown = [q("2+2=", &["3", "4"], 1), q("sky?", &["red", "blue"], 1)];
        assert_eq!(fewshot_prefix(&shown, "Q: {prompt}\nA:", " ", "\n\n"), "Q: 2+2=\nA: 4\n\nQ: sky?\nA: blue\n\n");
        assert_eq!(fewshot_prefix(&[], "Q: {prompt}\nA:", " ", "\n\n"), "");
    }

    #[test]
    fn trailing_spaces_of_the_context_move_to_the_continuation() {
        assert_eq!(context_and_continuation("Question: 2+2?\nAnswer:", " ", "4"), ("Question: 2+2?\nAnswer:".to_string(), " 4".to_string()));
        assert_eq!(context_and_continuation("The cat sat on the ", " ", "mat"), ("The cat sat on the".to_string(), "  mat".to_string()));
        assert_eq!(context_and_continuation("a\n", "", "b"), ("a".to_string(), "\nb".to_string()));
    }
}
