//! A conversational JSONL data set, line by line: conversations (instructions), preference
//! pairs (a shared prompt, then chosen and rejected turns) or judged completions (a prompt, a
//! completion and its label), rendered into trained segments.

use minijinja::value::Value;

use super::chat::{last_turn, Renderer};
use super::messages::{extra, messages, ordered, Extra, Message};
use super::jsonl::{bad_line, margins_on_every_pair_or_none};
use crate::recipe::ExampleKind;

/// One line of a conversational data set, with what else it hands the template.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRow {
    pub kind: RowKind,
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RowKind {
    Conversation(Vec<Message>),
    /// A preference pair: the shared start, then each side's turns, and its `margin` if it has
    /// one (how much more the chosen side is preferred: TRL's RewardTrainer column).
    Pair { prompt: Vec<Message>, chosen: Vec<Message>, rejected: Vec<Message>, margin: Option<f64> },
    /// Unpaired feedback: a prompt, then a completion judged desirable or not.
    Judged { prompt: Vec<Message>, completion: Vec<Message>, desirable: bool },
}

impl ChatRow {
    /// The whole conversation (of a pair, the chosen one).
    pub fn conversation(&self) -> Vec<Message> {
        match &self.kind {
            RowKind::Conversation(m) => m.clone(),
            RowKind::Pair { prompt, chosen: reply, .. } | RowKind::Judged { prompt, completion: reply, .. } => prompt.iter().chain(reply).cloned().collect(),
        }
    }

    /// The segments of the conversation (`Renderer::turns`); of a pair, its prompt and the
    /// chosen reply.
    pub fn turns(&self, r: &Renderer) -> Result<Vec<(String, bool)>, String> {
        match &self.kind {
            RowKind::Conversation(m) => r.turns(m, &self.extra),
            RowKind::Pair { .. } => self.pair(r).map(|(p, c, _)| vec![(p, false), (c, true)]),
            RowKind::Judged { .. } => self.judged(r).map(|(p, c, _)| vec![(p, false), (c, true)]),
        }
    }

    /// (prompt, completion, desirable) of judged feedback: the rendered conversation before the
    /// completion's last assistant turn, and that turn.
    pub fn judged(&self, r: &Renderer) -> Result<(String, String, bool), String> {
        let RowKind::Judged { prompt, completion, desirable } = &self.kind else { return Err("is not a judged completion".into()) };
        let (p, c) = last_turn(&r.turns(&prompt.iter().chain(completion).cloned().collect::<Vec<_>>(), &self.extra)?);
        Ok((p, c, *desirable))
    }

    /// (prompt, chosen, rejected) of a pair: the rendered conversation before the last assistant
    /// turn, which both sides must share, and each side's last turn.
    pub fn pair(&self, r: &Renderer) -> Result<(String, String, String), String> {
        self.pair_with_margin(r).map(|(p, c, rj, _)| (p, c, rj))
    }

    /// `pair`, and the pair's margin (0 without one).
    pub fn pair_with_margin(&self, r: &Renderer) -> Result<(String, String, String, f64), String> {
        let RowKind::Pair { prompt, chosen, rejected, margin } = &self.kind else { return Err("is not a preference pair".into()) };
        let side = |s: &[Message]| -> Result<(String, String), String> { Ok(last_turn(&r.turns(&prompt.iter().chain(s).cloned().collect::<Vec<_>>(), &self.extra)?)) };
        let ((p, c), (q, rj)) = (side(chosen)?, side(rejected)?);
        if p != q {
            return Err("its chosen and rejected conversations differ before their last assistant turn".into());
        }
        Ok((p, c, rj, margin.unwrap_or(0.0)))
    }
}

/// Whether a JSONL data set holds conversations: its first line has `messages` (instructions),
/// a `chosen` list (preferences) or a `completion` list (feedback).
pub fn is_chat(text: &str, kind: ExampleKind) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match kind {
        ExampleKind::Instructions => first.is_some_and(|v| v.get("messages").is_some()),
        ExampleKind::Preferences => first.is_some_and(|v| v.get("chosen").is_some_and(|c| c.is_array())),
        ExampleKind::Feedback => first.is_some_and(|v| v.get("completion").is_some_and(|c| c.is_array())),
        ExampleKind::Choices => false,
    }
}

/// A conversational JSONL data set read line by line: its rows, and its bad lines (the first
/// `listed` of them, and how many in all).
pub struct ChatJsonl {
    pub rows: Vec<(usize, ChatRow)>,
    pub bad: Vec<(usize, String)>,
    pub bad_total: usize,
}

pub fn parse_jsonl(text: &str, kind: ExampleKind, listed: usize) -> ChatJsonl {
    let mut out = ChatJsonl { rows: vec![], bad: vec![], bad_total: 0 };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row = ordered(line).and_then(|v| row(&v, kind));
        match row {
            Ok(r) => out.rows.push((i + 1, r)),
            Err(why) => bad_line(&mut out.bad, &mut out.bad_total, i + 1, why, listed),
        }
    }
    let has = |r: &ChatRow| matches!(r.kind, RowKind::Pair { margin: Some(_), .. });
    margins_on_every_pair_or_none(&mut out.rows, has, &mut out.bad, &mut out.bad_total, listed);
    out
}

fn row(v: &Value, kind: ExampleKind) -> Result<ChatRow, String> {
    let has = |k: &str| v.get_attr(k).is_ok_and(|x| !x.is_undefined());
    let list = |k: &str| -> Result<Vec<Message>, String> {
        if !has(k) {
            return Err(format!("has no `{k}`"));
        }
        messages(&v.get_attr(k).map_err(|e| e.to_string())?).map_err(|e| format!("`{k}` {e}"))
    };
    let kind = match kind {
        ExampleKind::Choices => return Err("holds multiple-choice questions, not conversations".into()),
        ExampleKind::Instructions => RowKind::Conversation(list("messages")?),
        ExampleKind::Preferences => {
            let prompt = if has("prompt") { list("prompt")? } else { vec![] };
            let margin = match v.get_attr("margin").ok().filter(|m| !m.is_undefined()) {
                None => None,
                Some(m) if m.kind() == minijinja::value::ValueKind::Number => {
                    let m = f64::try_from(m).map_err(|e| e.to_string())?;
                    if !(m.is_finite() && m.abs() <= 1e6) {
                        return Err(format!("has a `margin` of {m}, beyond the ±1e6 a margin may be"));
                    }
                    Some(m)
                }
                Some(_) => return Err("has a `margin` that is not a number".into()),
            };
            RowKind::Pair { prompt, chosen: list("chosen")?, rejected: list("rejected")?, margin }
        }
        ExampleKind::Feedback => {
            let prompt = if has("prompt") { list("prompt")? } else { vec![] };
            let label = v.get_attr("label").ok().filter(|l| !l.is_undefined());
            let desirable = match label.as_ref().map(|l| (l.kind(), l.is_true())) {
                Some((minijinja::value::ValueKind::Bool, b)) => b,
                Some(_) => return Err("has a `label` that is not true (desirable) or false".into()),
                None => return Err("has no `label` (true: desirable, false: not)".into()),
            };
            RowKind::Judged { prompt, completion: list("completion")?, desirable }
        }
    };
    Ok(ChatRow { kind, extra: extra(v)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversational pair's `margin` is a number, on every pair or on none.
    #[test]
    fn a_conversational_pair_margin_is_a_number_on_every_pair_or_none() {
        let line = |m: &str| format!("{{\"chosen\": [{{\"role\": \"user\", \"content\": \"q\"}}, {{\"role\": \"assistant\", \"content\": \"a\"}}], \"rejected\": [{{\"role\": \"user\", \"content\": \"q\"}}, {{\"role\": \"assistant\", \"content\": \"b\"}}]{m}}}\n");
        let parsed = parse_jsonl(&[line(", \"margin\": 0.5"), line(""), line(", \"margin\": true"), line(", \"margin\": 3")].concat(), ExampleKind::Preferences, 5);
        let margins: Vec<_> = parsed.rows.iter().map(|(l, r)| (*l, if let RowKind::Pair { margin, .. } = r.kind { margin } else { None })).collect();
        assert_eq!(margins, vec![(1, Some(0.5)), (4, Some(3.0))]);
        assert_eq!(parsed.bad, vec![(2, "has no `margin`, which other pairs have (a margin on every pair or on none)".to_string()), (3, "has a `margin` that is not a number".to_string())]);
    }
}
