//! A conversational data set is someone else's data that `roux check` renders: bytes → a
//! template from a fixed set (ChatML, tool calls, Python printing, `{% generation %}` blocks,
//! `strftime_now`, one that rewrites earlier turns) and JSONL lines of conversations, preference pairs or judged completions. Parsing and rendering
//! must not panic; a conversation's trained segments, joined, must be the template's render of
//! it up to its last assistant turn. The bytes also go through the pieces that read templates
//! and values: `{% generation %}` rewriting, `strftime` formats, Python's `str`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roux::posttrain::chat::{self, Renderer};
use roux::posttrain::rows::{self, RowKind};
use roux::posttrain::{pystr, strftime::Day};
use roux::recipe::{ChatTemplate, ExampleKind};

const TEMPLATES: &[&str] = &[
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}{%- for m in messages %}{%- if m.tool_calls is defined %}<call>{% for c in m.tool_calls %}{{ c | tojson(indent=1) }}{% endfor %}</call>{% else %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    "{% for m in messages %}{{ m.role }}={{ m.content }}|{{ m }}|{{ m.content | string }}|{{ loop.index }};{% endfor %}{{ add_generation_prompt }}",
    "{%- for m in messages %}{%- if m.role == 'assistant' %}A:{%- generation -%}\n {{ m.content }}{%- endgeneration %}{% else %}{{ m.role[:1] | upper }}:{{ m.content | trim }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
    "{{ bos_token }}{{ strftime_now('%A %-d %B %Y %j %c') }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token if m.role == 'assistant' }}{% endfor %}",
    // Qwen3's way: earlier assistant turns lose their reasoning once a user turn follows.
    "{%- set ns = namespace(q=-1) %}{%- for m in messages %}{% if m.role == 'user' %}{% set ns.q = loop.index0 %}{% endif %}{% endfor %}{%- for m in messages %}{%- if m.role == 'assistant' and loop.index0 < ns.q %}<a>{{ m.content.split('</think>')[-1] }}</a>{%- elif m.role == 'assistant' %}<a>{{ m.content }}</a>{%- else %}<u>{{ m.content }}</u>{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<a>{%- endif %}",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let t = ChatTemplate { source: TEMPLATES[pick as usize % TEMPLATES.len()].into(), bos: "<s>".into(), eos: "</s>".into(), date: Some("2024-02-29".into()) };
    let r = Renderer::new(&t).expect("a fixed template parses");
    r.limit_work(text.len());
    let kind = match pick >> 6 {
        0 | 1 => ExampleKind::Instructions,
        2 => ExampleKind::Preferences,
        _ => ExampleKind::Feedback,
    };
    for (_, row) in rows::parse_jsonl(&text, kind, 10).rows {
        let Ok(turns) = row.turns(&r) else { continue };
        if let RowKind::Conversation(m) = &row.kind {
            let last = m.iter().rposition(|m| m.role == "assistant").expect("a conversation with turns has an assistant turn");
            let whole = r.render(&m[..=last], &row.extra, false).expect("renders once it rendered turn by turn");
            assert_eq!(turns.iter().map(|t| t.0.as_str()).collect::<String>(), whole);
        }
    }
    let _ = chat::generation_blocks(&text);
    let _ = Day::parse("2024-02-29").expect("a day").format(&text);
    for line in text.lines() {
        if let Ok(v) = chat::ordered(line) {
            let _ = pystr::text(&v);
        }
    }
});
