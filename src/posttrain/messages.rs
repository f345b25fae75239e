//! A conversation's messages as OpenAI and TRL write them (`{"role", "content", …}`, tool calls
//! included) and what else a line hands the chat template (`tools`, `chat_template_kwargs`).
//! JSON is read into minijinja values, so objects keep their keys' order as Python's `json` does.

use minijinja::context;
use minijinja::value::{Value, ValueKind};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: String,
    /// Its text: `content`, OpenAI's text parts joined, or nothing for an assistant's tool calls.
    pub content: String,
    /// The message as written (`content` as given, `tool_calls`, `tool_call_id`, `name`, …, its
    /// keys in their order), handed to the template as transformers hands it.
    pub value: Value,
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl Message {
    /// A message of plain text.
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into(), value: context! { role => role, content => content } }
    }
}

/// A line of JSON as the template reads it: objects keep their keys' order, as Python's `json`
/// keeps them (`tojson` of a tool's schema writes them so).
pub fn ordered(json: &str) -> Result<Value, String> {
    serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))
}

/// The roles a message may have.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// The messages of a JSON array of `{"role", "content", …}` objects, or why not.
pub fn messages(v: &Value) -> Result<Vec<Message>, String> {
    if v.kind() != ValueKind::Seq {
        return Err("is not a list of messages".into());
    }
    let list = v.try_iter().map_err(|e| e.to_string())?;
    list.enumerate()
        .map(|(i, m)| {
            let field = |k: &str| m.get_attr(k).ok().filter(|x| !x.is_undefined());
            let role = field("role").and_then(|r| r.as_str().map(String::from)).ok_or_else(|| format!("message {} has no string `role`", i + 1))?;
            if !ROLES.contains(&role.as_str()) {
                return Err(format!("message {} has role \"{}\" (one of {})", i + 1, role.escape_debug(), ROLES.join(", ")));
            }
            let calls = field("tool_calls").is_some_and(|c| c.kind() == ValueKind::Seq);
            let content = match field("content") {
                Some(c) if c.as_str().is_some() => c.as_str().unwrap_or_default().to_string(),
                // OpenAI's content parts: a text model reads their text.
                Some(parts) if parts.kind() == ValueKind::Seq => parts
                    .try_iter()
                    .map_err(|e| e.to_string())?
                    .map(|p| match (p.get_attr("type").ok().and_then(|t| t.as_str().map(String::from)), p.get_attr("text").ok().and_then(|t| t.as_str().map(String::from))) {
                        (Some(t), Some(text)) if t == "text" => Ok(text),
                        _ => Err(format!("message {} has a content part that is not {{\"type\": \"text\", \"text\": …}}", i + 1)),
                    })
                    .collect::<Result<String, String>>()?,
                None if calls => String::new(),
                Some(c) if c.is_none() && calls => String::new(),
                _ => return Err(format!("message {} has no string `content`{}", i + 1, if role == "assistant" { " (nor `tool_calls`)" } else { "" })),
            };
            if m.kind() != ValueKind::Map {
                return Err(format!("message {} is not an object", i + 1));
            }
            Ok(Message { role, content, value: m })
        })
        .collect()
}

/// What a line hands the template besides its messages: the tools its assistant is offered, and
/// TRL's `chat_template_kwargs` (Qwen3's `enable_thinking`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extra {
    pub tools: Option<Value>,
    pub kwargs: Option<Value>,
}

/// What the template gets from the line itself, which `chat_template_kwargs` may not name (in
/// transformers, a second value for the same argument).
const GIVEN: &[&str] = &["messages", "tools", "documents", "add_generation_prompt"];

/// A line's `tools` and `chat_template_kwargs`, or why not.
pub fn extra(line: &Value) -> Result<Extra, String> {
    let kwargs = match line.get_attr("chat_template_kwargs").ok().filter(|k| !k.is_undefined() && !k.is_none()) {
        None => None,
        Some(k) if k.kind() == ValueKind::Map => {
            if let Some(name) = GIVEN.iter().find(|n| k.get_attr(n).is_ok_and(|v| !v.is_undefined())) {
                return Err(format!("has `chat_template_kwargs` naming `{name}`, which the template gets from the line itself"));
            }
            Some(k)
        }
        Some(_) => return Err("has `chat_template_kwargs` that is not an object".into()),
    };
    Ok(Extra { tools: tools(line)?, kwargs })
}

/// A line's `tools` (the functions its assistant may call, as JSON schemas), or why not.
pub fn tools(line: &Value) -> Result<Option<Value>, String> {
    match line.get_attr("tools").ok().filter(|t| !t.is_undefined() && !t.is_none()) {
        None => Ok(None),
        Some(t) if t.kind() == ValueKind::Seq && t.try_iter().is_ok_and(|mut it| it.all(|x| x.kind() == ValueKind::Map)) => Ok(Some(t)),
        Some(_) => Err("has `tools` that is not a list of objects (function schemas)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_openais_format_keep_what_the_template_reads() {
        let text = r#"[{"role": "user", "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}]}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "42"}]"#;
        let m = messages(&ordered(text).unwrap()).unwrap();
        assert_eq!((m[0].content.as_str(), m[1].content.as_str(), m[2].content.as_str()), ("Two parts", "", "42"));
        // The template gets each message as written, its keys in order: content null, the calls.
        assert_eq!(serde_json::to_string(&m).unwrap(), text.replace(": ", ":").replace(", ", ","));
        let bad = |s: &str| messages(&ordered(s).unwrap()).unwrap_err();
        assert_eq!(bad(r#"[{"role": "assistant", "content": null}]"#), "message 1 has no string `content` (nor `tool_calls`)");
        assert_eq!(bad(r#"[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]"#), "message 1 has a content part that is not {\"type\": \"text\", \"text\": …}");
        assert_eq!(bad(r#"{"role": "user"}"#), "is not a list of messages");
        assert_eq!(tools(&ordered(r#"{"tools": [1]}"#).unwrap()).unwrap_err(), "has `tools` that is not a list of objects (function schemas)");
        assert_eq!(tools(&ordered(r#"{"tools": null}"#).unwrap()), Ok(None));
        let extra_err = |s: &str| extra(&ordered(s).unwrap()).unwrap_err();
        assert_eq!(extra_err(r#"{"chat_template_kwargs": [1]}"#), "has `chat_template_kwargs` that is not an object");
        assert_eq!(extra_err(r#"{"chat_template_kwargs": {"x": 1, "messages": []}}"#), "has `chat_template_kwargs` naming `messages`, which the template gets from the line itself");
    }
}
