//! Conversations rendered with a Hugging Face chat template: minijinja with its Python-compatible
//! methods, `trim_blocks` and `lstrip_blocks` on (as `transformers` and Rust inference servers
//! render them), bounded, as a template is someone else's code. A conversation becomes text
//! segments marked trained or not, so that the loss covers the assistant turns only.
//! Messages are in `messages.rs` and generation blocks in `generation.rs` (their names
//! re-exported here); a data set's lines, which this renders, in `rows.rs`.

use minijinja::value::Value;
use minijinja::{context, Environment, Error, ErrorKind};
use std::cell::Cell;

use crate::bounded::Guard;
use crate::recipe::ChatTemplate;

pub use super::generation::generation_blocks;
pub use super::messages::{extra, messages, ordered, tools, Extra, Message, ROLES};

/// The most template instructions one render may execute (a real chat template of a long
/// conversation needs a few thousand).
const FUEL: u64 = 10_000_000;

/// What rendering a data set's conversations may cost, in steps of template work (instructions
/// run, bytes handed to the template and bytes it writes): turn by turn, a conversation costs its
/// whole length once per assistant turn, so a line of thousands of tiny turns would take hours.
/// Linear in the file: a floor, and so much per byte of it.
const WORK_FLOOR: u64 = 16_000_000;
const WORK_PER_BYTE: u64 = 256;

pub struct Renderer {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Work done so far, and the most allowed (`limit_work`).
    work: Cell<u64>,
    /// Conversations whose template rewrote earlier turns (`turns`).
    last_only: Cell<usize>,
    /// Whether the template marks the assistant's text (`{% generation %}`).
    marks: bool,
    limit: Cell<u64>,
    /// Each render's memory, and the time of all (`bounded`).
    guard: Guard,
}

impl Renderer {
    pub fn new(t: &ChatTemplate) -> Result<Renderer, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template is someone else's code and check renders it: bounded, so that a loop over a
        // huge range ends in an error rather than a hang.
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_filter("tojson", super::pyjson::tojson);
        env.add_filter("string", super::pystr::string);
        env.set_formatter(super::pystr::formatter);
        if let Some(date) = &t.date {
            let day = super::strftime::Day::parse(date).ok_or_else(|| format!("`date = \"{}\"` is not a calendar day YYYY-MM-DD", date.escape_debug()))?;
            env.add_function("strftime_now", move |format: String| day.format(&format).map_err(|e| Error::new(ErrorKind::InvalidOperation, e)));
        }
        // Compiling folds constant expressions (`'x' * 10**8`): bounded too.
        let guard = Guard::new("a chat template");
        let (source, marks) = generation_blocks(&t.source);
        env.add_filter("roux_generation", super::generation::filter);
        guard.run(|| env.add_template_owned("chat", source)).0.map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(Renderer {
            env,
            marks,
            bos: t.bos.clone(),
            eos: t.eos.clone(),
            work: Cell::new(0),
            last_only: Cell::new(0),
            limit: Cell::new(u64::MAX),
            guard,
        })
    }

    /// Bound the work and time of all renders from here on by the size of the file they come from.
    pub fn limit_work(&self, file_bytes: usize) {
        self.limit.set(WORK_FLOOR.saturating_add(WORK_PER_BYTE.saturating_mul(file_bytes as u64)));
        self.guard.allow_bytes(file_bytes);
    }

    /// Whether the work allowed is spent (every render fails from then on).
    pub fn spent(&self) -> bool {
        self.work.get() > self.limit.get()
    }

    /// The template applied to `messages` (with the line's tools and keyword arguments); with
    /// `generation_prompt`, followed by what opens the assistant's next turn.
    pub fn render(&self, messages: &[Message], extra: &Extra, generation_prompt: bool) -> Result<String, String> {
        self.render_marked(messages, extra, generation_prompt, false)
    }

    /// `render`; with `marks`, the template's generation blocks between `generation::START` and `END`.
    fn render_marked(&self, messages: &[Message], extra: &Extra, generation_prompt: bool, marks: bool) -> Result<String, String> {
        if self.spent() {
            let limit = self.limit.get();
            return Err(format!(
                "rendered turn by turn, the file's conversations need more than the {} million steps of template work roux allows for its {} bytes ({} million and {WORK_PER_BYTE} a byte): a conversation costs its whole length once per assistant turn; split conversations of hundreds of turns",
                limit.div_ceil(1_000_000),
                (limit - WORK_FLOOR) / WORK_PER_BYTE,
                WORK_FLOOR / 1_000_000
            ));
        }
        // What the template is handed, as JSON text.
        let size = |v: &Value| serde_json::to_string(v).map_or(0, |s| s.len());
        let given: usize = messages.iter().map(|m| size(&m.value)).sum::<usize>() + extra.tools.as_ref().map_or(0, size) + extra.kwargs.as_ref().map_or(0, size);
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        // Bounded in memory (`bounded`), and the bytes it allocates count, a sixteenth each, as
        // work: a render that makes and drops large strings costs its time.
        let (out, allocated) = self.guard.run(|| {
            // No documents, as transformers passes them (None: `documents is not none` is false);
            // the keyword arguments may replace the special tokens, as in transformers.
            let given = context! { messages => messages, add_generation_prompt => generation_prompt, tools => &extra.tools, documents => (), roux_generation_marks => marks };
            let tokens = context! { bos_token => &self.bos, eos_token => &self.eos };
            // (The last map to hold a key gives its value.)
            let ctx = minijinja::value::merge_maps([tokens, extra.kwargs.clone().unwrap_or_default(), given]);
            t.render_captured(ctx).map(|c| (c.output().to_string(), c.state().fuel_levels().map_or(0, |(used, _)| used)))
        });
        let charge = |steps: u64, written: usize| self.work.set(self.work.get().saturating_add(steps + (given + written + allocated / 16) as u64));
        match out {
            Ok((text, steps)) => {
                charge(steps, text.len());
                Ok(text)
            }
            Err(e) => {
                charge(if e.kind() == ErrorKind::OutOfFuel { FUEL } else { 0 }, 0);
                if e.kind() == ErrorKind::UnknownFunction && e.to_string().contains("strftime_now") {
                    return Err(format!("the chat template fails: {e}: it writes today's date (transformers' `strftime_now`); set `date = \"YYYY-MM-DD\"` on the data, so that check, every run and a resumed one render the same text"));
                }
                Err(format!("the chat template fails: {e}"))
            }
        }
    }

    /// The conversation as segments (text, trained): what precedes each assistant turn with the
    /// generation prompt, untrained; each assistant turn as the template renders it (its
    /// end-of-turn marker included), trained. Each render must continue the one before; where a
    /// template renders earlier turns otherwise once more follow (Qwen3's drops their reasoning),
    /// the last assistant turn alone is trained, after the rest as it renders then (counted in
    /// `last_only`).
    pub fn turns(&self, messages: &[Message], extra: &Extra) -> Result<Vec<(String, bool)>, String> {
        if self.marks {
            return self.marked_turns(messages, extra);
        }
        let mut out = vec![];
        let mut before = String::new(); // everything rendered so far
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prefix = self.render(&messages[..i], extra, true)?;
            let upto = self.render(&messages[..=i], extra, false)?;
            if !upto.starts_with(&prefix) || !prefix.starts_with(&before) {
                return self.last_turn_only(messages, extra);
            }
            out.push((prefix[before.len()..].to_string(), false));
            out.push((upto[prefix.len()..].to_string(), true));
            before = upto;
        }
        if out.is_empty() {
            return Err("has no assistant turn to train on".into());
        }
        Ok(out)
    }

    /// A template with `{% generation %}` blocks: the conversation up to its last assistant turn
    /// rendered once, what its blocks enclose trained (as transformers' assistant mask, TRL's
    /// `assistant_only_loss`), whatever it does to earlier turns.
    fn marked_turns(&self, messages: &[Message], extra: &Extra) -> Result<Vec<(String, bool)>, String> {
        use super::generation::{segments, END, START};
        let last = messages.iter().rposition(|m| m.role == "assistant").ok_or("has no assistant turn to train on")?;
        let plain = self.render(&messages[..=last], extra, false)?;
        if plain.contains([START, END]) {
            return Err(format!("holds U+{:04X} or U+{:04X}, the private-use characters roux marks the template's generation blocks with", START as u32, END as u32));
        }
        let out = segments(&self.render_marked(&messages[..=last], extra, false, true)?)?;
        if out.iter().map(|s| s.0.as_str()).collect::<String>() != plain || !out.iter().any(|s| s.1) {
            return Err("the chat template's generation blocks mark no assistant text (or render otherwise when marked)".into());
        }
        Ok(out)
    }

    /// The conversation up to its last assistant turn as two segments: the rest, untrained, and
    /// that turn.
    fn last_turn_only(&self, messages: &[Message], extra: &Extra) -> Result<Vec<(String, bool)>, String> {
        let last = messages.iter().rposition(|m| m.role == "assistant").ok_or("has no assistant turn to train on")?;
        let prefix = self.render(&messages[..last], extra, true)?;
        let upto = self.render(&messages[..=last], extra, false)?;
        if !upto.starts_with(&prefix) {
            return Err(format!("the chat template does not render turn {} as a continuation of the conversation before it with the generation prompt", last + 1));
        }
        self.last_only.set(self.last_only.get() + 1);
        Ok(vec![(prefix.clone(), false), (upto[prefix.len()..].to_string(), true)])
    }

    /// How many conversations trained their last assistant turn only (`turns`).
    pub fn last_only(&self) -> usize {
        self.last_only.get()
    }
}

/// (prompt, response) of a conversation's last assistant turn from its segments: everything
/// before it, and the turn itself.
pub fn last_turn(turns: &[(String, bool)]) -> (String, String) {
    let last = turns.iter().rposition(|(_, trained)| *trained).unwrap_or(0);
    (turns[..last].iter().map(|(t, _)| t.as_str()).collect(), turns.get(last).map_or_else(String::new, |t| t.0.clone()))
}

/// Which of consecutive text parts (their byte lengths, in order) each token belongs to, by the
/// byte its offset starts at. A conversation is encoded as one text, as transformers tokenizes a
/// rendered chat (encoded apart, a SentencePiece-style tokenizer starts every part with a space
/// of its own: `▁cba` where the whole text has `cba` after `[/INST]`); its tokens then fall to
/// the turns by their offsets.
pub fn parts_of(part_lens: &[usize], offsets: &[(usize, usize)]) -> Vec<usize> {
    let (mut part, mut end) = (0, part_lens.first().copied().unwrap_or(0));
    offsets
        .iter()
        .map(|&(start, _)| {
            while start >= end && part + 1 < part_lens.len() {
                part += 1;
                end += part_lens[part];
            }
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML as Qwen2 writes it (its tokenizer_config.json's template, system turn simplified).
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn m(role: &str, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn values_built_deeper_than_python_prints_them_fail_the_render() {
        for print in ["ns.x | tojson", "ns.x", "ns.x | string"] {
            let src = format!("{{% set ns = namespace(x=1) %}}{{% for i in range(600) %}}{{% set ns.x = [ns.x] %}}{{% endfor %}}{{{{ {print} }}}}");
            let r = Renderer::new(&ChatTemplate { source: src, bos: String::new(), eos: String::new(), date: None }).unwrap();
            let err = r.render(&[], &Extra::default(), false).unwrap_err();
            assert!(err.contains("nested too deep"), "{print}: {err}");
        }
    }

    /// Qwen3's way: an assistant turn after the last user message keeps its reasoning, an earlier
    /// one loses it; rendered turn by turn, the first turn changes once the second follows.
    #[test]
    fn a_template_that_rewrites_earlier_turns_trains_the_last_turn_alone() {
        let src = "{%- set ns = namespace(q=-1) %}{%- for m in messages %}{% if m.role == 'user' %}{% set ns.q = loop.index0 %}{% endif %}{% endfor %}\
            {%- for m in messages %}{%- if m.role == 'assistant' %}{%- if loop.index0 > ns.q %}<a>{{ m.content }}</a>{%- else %}<a>{{ m.content.split('</think>')[-1] }}</a>{%- endif %}\
            {%- else %}<u>{{ m.content }}</u>{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<a>{%- endif %}";
        let r = Renderer::new(&ChatTemplate { source: src.into(), bos: String::new(), eos: String::new(), date: None }).unwrap();
        let conv = [m("user", "q1"), m("assistant", "<think>r1</think>é1"), m("user", "q2"), m("assistant", "<think>r2</think>a2")];
        let t = r.turns(&conv, &Extra::default()).unwrap();
        assert_eq!(t, vec![("<u>q1</u><a>é1</a><u>q2</u><a>".to_string(), false), ("<think>r2</think>a2</a>".to_string(), true)]);
        assert_eq!(t.iter().map(|s| s.0.as_str()).collect::<String>(), r.render(&conv, &Extra::default(), false).unwrap());
        assert_eq!(r.last_only(), 1);
        // One exchange is the same either way.
        assert_eq!(r.turns(&conv[..2], &Extra::default()).unwrap().len(), 2);
        assert_eq!(r.last_only(), 1);
    }

    #[test]
    fn assistant_turns_are_the_trained_segments() {
        let r = Renderer::new(&ChatTemplate { source: CHATML.into(), bos: String::new(), eos: "<|im_end|>".into(), date: None }).unwrap();
        let conv = [m("user", "hi"), m("assistant", "hello"), m("user", "2+2?"), m("assistant", "4")];
        let t = r.turns(&conv, &Extra::default()).unwrap();
        assert_eq!(
            t,
            vec![
                ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n".to_string(), false),
                ("hello<|im_end|>\n".to_string(), true),
                ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n".to_string(), false),
                ("4<|im_end|>\n".to_string(), true),
            ]
        );
        // Concatenated, the segments are the whole conversation as the template renders it.
        assert_eq!(t.iter().map(|s| s.0.as_str()).collect::<String>(), r.render(&conv, &Extra::default(), false).unwrap());
        let (prompt, response) = last_turn(&t);
        assert!(prompt.ends_with("2+2?<|im_end|>\n<|im_start|>assistant\n") && response == "4<|im_end|>\n");
        assert_eq!(r.turns(&[m("user", "hi")], &Extra::default()).unwrap_err(), "has no assistant turn to train on");
        assert_eq!(r.last_only(), 0, "each turn continued the ones before");
    }

    #[test]
    fn tokens_fall_to_the_part_their_first_byte_is_in() {
        // "ab" | "" | "cd" | "e": tokens "a", "bc" (across a boundary: the part it starts in), "d", "e".
        assert_eq!(parts_of(&[2, 0, 2, 1], &[(0, 1), (1, 3), (3, 4), (4, 5)]), vec![0, 0, 2, 3]);
        assert_eq!(parts_of(&[], &[]), Vec::<usize>::new());
    }

    #[test]
    fn python_methods_and_raise_exception_work_as_in_transformers() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{% for m in messages %}{{ m['content'].strip() | upper }}|{% endfor %}";
        let r = Renderer::new(&ChatTemplate { source: src.into(), bos: String::new(), eos: String::new(), date: None }).unwrap();
        assert_eq!(r.render(&[m("user", "  a "), m("assistant", "b")], &Extra::default(), false).unwrap(), "A|B|");
        assert!(r.render(&[m("system", "x")], &Extra::default(), false).unwrap_err().contains("first must be user"));
        let endless = Renderer::new(&ChatTemplate { source: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into(), bos: String::new(), eos: String::new(), date: None }).unwrap();
        assert!(endless.render(&[], &Extra::default(), false).is_err(), "a template that would run 10^10 steps is stopped");
    }

    #[test]
    fn rendering_turn_by_turn_is_bounded_by_the_size_of_the_file() {
        let r = Renderer::new(&ChatTemplate { source: CHATML.into(), bos: String::new(), eos: "<|im_end|>".into(), date: None }).unwrap();
        let conv = |turns: usize| (0..turns).flat_map(|i| [m("user", &format!("q{i}")), m("assistant", "a")]).collect::<Vec<_>>();
        let line = |c: &[Message]| serde_json::json!({ "messages": c }).to_string().len();
        // A line of 20 turns renders; so does a file of 500 of them, each under the same bound.
        let short = conv(20);
        r.limit_work(500 * line(&short));
        for _ in 0..500 {
            assert_eq!(r.turns(&short, &Extra::default()).unwrap().len(), 40);
        }
        // 3,000 tiny turns on one line: each turn renders the whole conversation before it again
        // (~5·10^8 steps in all); bounded by the line's 200 KB, the renders stop long before the end.
        let long = conv(3000);
        let r = Renderer::new(&ChatTemplate { source: CHATML.into(), bos: String::new(), eos: "<|im_end|>".into(), date: None }).unwrap();
        r.limit_work(line(&long));
        let err = r.turns(&long, &Extra::default()).unwrap_err();
        // 205,904 bytes: 16,000,000 + 256 × 205,904 = 68,711,424 steps.
        assert_eq!(line(&long), 205_904);
        assert_eq!(err, "rendered turn by turn, the file's conversations need more than the 69 million steps of template work roux allows for its 205904 bytes (16 million and 256 a byte): a conversation costs its whole length once per assistant turn; split conversations of hundreds of turns");
        assert!(r.spent() && r.render(&short, &Extra::default(), false).is_err());
    }
}
