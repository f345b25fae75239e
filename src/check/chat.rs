//! Conversational data sets (`{"messages": …}`): each takes its model's chat template (the
//! checkpoint's `tokenizer_config.json` or `chat_template.jinja`), every conversation is rendered
//! now so that a line the template refuses, or one with no assistant turn, is a check error, and
//! a note says what the set holds in the model's tokens: examples, tokens, the assistant share
//! (what the loss covers), and how many the model's context cuts.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::loader::{Loader, PathKind};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::posttrain::chat::{self, Renderer};
use crate::recipe::{ChatTemplate, ExampleSet, ExampleSource, Recipe, StageSpec};

impl Checker<'_> {
    /// Give every conversational set its model's chat template, or say why it cannot have one.
    pub(super) fn attach_chat_templates(&mut self, r: &mut Recipe) {
        for i in 0..r.examples.len() {
            let ExampleSource::Chat { path, template, date } = r.examples[i].source.clone() else { continue };
            let name = r.examples[i].name.clone();
            let span = self.decl(&name).map_or(self.ast.name_span, |d| d.value.span);
            let model = r.examples[i].tokenizer.clone().and_then(|m| r.model(&m).cloned());
            let Some((spec, dir)) = model.and_then(|m| m.checkpoint.clone().map(|c| (m, c.dir))) else {
                self.error(Diagnostic::error(Code::E0214, span, format!("data `{name}` holds conversations (`messages`), which need an imported model's tokenizer"))
                    .with_hint("add `tokenizer = base.tokenizer`, where `model base = hf(\"…\")`"));
                continue;
            };
            if r.examples[i].template != super::examples::DEFAULT_TEMPLATE {
                let by = if template.is_some() { "its `chat_template`".to_string() } else { format!("the chat template of `{}`", spec.name) };
                self.error(Diagnostic::error(Code::E0250, span, format!("data `{name}` holds conversations: {by} renders them, not `template`"))
                    .with_hint("remove `template`"));
                continue;
            }
            let t = match chat_template(self.loader, &dir, template.as_deref()) {
                Ok(t) => t,
                Err(e) if template.is_some() => {
                    self.error(Diagnostic::error(Code::E0252, span, format!("data `{name}` {e}")));
                    continue;
                }
                Err(e) => {
                    self.error(Diagnostic::error(Code::E0214, span, format!("data `{name}` holds conversations, but model `{}` {e}", spec.name))
                        .with_hint("a checkpoint saved with its tokenizer's chat template has it in tokenizer_config.json or chat_template.jinja; or name a template file: `chat_template = \"chatml.jinja\"`"));
                    continue;
                }
            };
            let set = &mut r.examples[i];
            set.template = "{prompt}".into();
            set.chat = Some(crate::recipe::ChatTemplate { date, ..t });
            if let Some(counts) = self.render_all(set, &path, span, spec.context, &dir) {
                let set = r.examples[i].clone();
                self.balance_for_stages(r, &set, counts);
            }
        }
    }

    /// Render every conversation of `set`: bad lines are errors, and a note gives its size.
    /// Unpaired feedback's counts of desirable and undesirable completions come back.
    fn render_all(&mut self, set: &ExampleSet, path: &Path, span: crate::diag::Span, context: usize, dir: &Path) -> Option<(usize, usize)> {
        let Ok(text) = self.loader.read_text(path, crate::posttrain::examples::MAX_JSONL_BYTES) else { return None };
        let renderer = match set.chat.as_ref().map(Renderer::new) {
            Some(Ok(r)) => r,
            why => {
                let why = match why {
                    Some(Err(e)) => e,
                    _ => "there is no chat template".into(),
                };
                let (code, whose) = match &set.source {
                    ExampleSource::Chat { template: Some(file), .. } => (Code::E0252, file.display().to_string()),
                    _ => (Code::E0214, format!("{}'s tokenizer_config.json or chat_template.jinja", dir.display())),
                };
                self.error(Diagnostic::error(code, span, format!("data `{}`: {why}", set.name)).with_hint(format!("the template is in {whose}")));
                return None;
            }
        };
        renderer.limit_work(text.len());
        const LISTED: usize = 10;
        let parsed = crate::posttrain::rows::parse_jsonl(&text, set.kind, LISTED);
        let file = path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
        let (mut bad, mut bad_total) = (parsed.bad, parsed.bad_total);
        let mut turns = vec![];
        for (line, row) in &parsed.rows {
            match row.turns(&renderer) {
                Ok(t) => turns.push(t),
                Err(why) if renderer.spent() => {
                    self.error(Diagnostic::error(Code::E0214, span, format!("data `{}`: `{file}` line {line}: {why}", set.name)));
                    return None;
                }
                Err(why) => {
                    bad_total += 1;
                    if bad.len() < LISTED {
                        bad.push((*line, why));
                    }
                }
            }
        }
        if bad_total > 0 {
            bad.sort();
            let listed: Vec<String> = bad.iter().map(|(l, why)| format!("line {l}: {why}")).collect();
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` has {bad_total} bad conversation(s) of {}: {}", parsed.rows.len() + parsed.bad_total, listed.join("; ")))
                .with_hint(match set.kind {
                    crate::recipe::ExampleKind::Feedback => "each line is {\"prompt\": [messages], \"completion\": [{\"role\": \"assistant\", …}], \"label\": true or false}",
                    _ => "each line is {\"messages\": [{\"role\": …, \"content\": …}, …]} with at least one assistant turn",
                }));
            return None;
        }
        if turns.is_empty() {
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` holds no conversations")).with_hint("write one JSON object per line"));
            return None;
        }
        if renderer.last_only() > 0 {
            self.error(Diagnostic::warning(Code::W0406, span, format!("data `{}`: the chat template renders earlier turns otherwise once later ones follow (as Qwen3's drops their reasoning): {} of {} conversations train on their last assistant turn only", set.name, renderer.last_only(), turns.len()))
                .with_hint("the turns before it are context; split a conversation into one line per assistant turn to train each"));
        }
        // Unpaired feedback says how many of its completions are desirable.
        let judged = parsed.rows.iter().filter_map(|(_, r)| match r.kind {
            crate::posttrain::rows::RowKind::Judged { desirable, .. } => Some(desirable),
            _ => None,
        });
        let (good, all) = judged.fold((0, 0), |(g, n), d| (g + d as usize, n + 1));
        let mut labels = if all > 0 { format!(" ({good} desirable, {} not)", all - good) } else { String::new() };
        // Preference pairs, the range of their margins.
        let margins: Vec<f64> = parsed.rows.iter().filter_map(|(_, r)| if let crate::posttrain::rows::RowKind::Pair { margin, .. } = r.kind { margin } else { None }).collect();
        labels.push_str(&super::examples::margins_note(&margins));
        let stats = self.loader.read_text(&dir.join("tokenizer.json"), 256 << 20).ok().and_then(|t| t.parse::<tokenizers::Tokenizer>().ok()).map(|tk| token_stats(&tk, &turns, context));
        let msg = match stats {
            Some(s) => format!(
                "data `{}`: {} conversations{labels}, {} tokens, {:.1}% of them in assistant turns (what the loss covers); {} longer than the context of {context}",
                set.name, turns.len(), s.tokens, 100.0 * s.assistant as f64 / s.tokens.max(1) as f64, s.cut
            ),
            None => format!("data `{}`: {} conversations{labels}", set.name, turns.len()),
        };
        self.error(Diagnostic::note(Code::N0404, span, msg).with_hint("a stage cuts each conversation to its model's context"));
        (all > 0).then_some((good, all - good))
    }
}

/// Where a model last learned to converse: the stage, its conversational data set, the template.
type Learned<'r> = Option<(&'r str, &'r str, &'r ChatTemplate)>;

/// The chat template each stage's model answers in: that of the conversations it was last
/// trained on, found by following its model back (each stage walked once, iteratively).
struct Answers<'r> {
    r: &'r Recipe,
    stages: HashMap<&'r str, &'r StageSpec>,
    known: HashMap<&'r str, Learned<'r>>,
}

impl<'r> Answers<'r> {
    fn of(&mut self, name: &'r str) -> Learned<'r> {
        let (mut seen, mut at) = (HashSet::new(), name);
        let found = loop {
            if let Some(l) = self.known.get(at) {
                break *l;
            }
            let Some(stage) = self.stages.get(at).filter(|_| seen.insert(at)) else { break None };
            let set = super::tokens::stage_set(&stage.kind).and_then(|n| self.r.example_set(n));
            if let Some(t) = set.and_then(|s| s.chat.as_ref().map(|t| (s, t))) {
                break Some((stage.name.as_str(), t.0.name.as_str(), t.1));
            }
            match super::tokens::inputs(&stage.kind).first().and_then(|m| m.stage()) {
                Some(up) => at = up,
                None => break None,
            }
        };
        for s in seen {
            self.known.insert(s, found);
        }
        found
    }
}

impl Checker<'_> {
    /// W0405 for a stage that renders its conversations with another chat template than its
    /// model was trained in: the turns it learned would be marked otherwise.
    pub(super) fn check_template_lineage(&mut self, r: &Recipe) {
        let mut answers = Answers { r, stages: r.stages.iter().map(|s| (s.name.as_str(), s)).collect(), known: HashMap::new() };
        for s in &r.stages {
            let Some(set) = super::tokens::stage_set(&s.kind).and_then(|n| r.example_set(n)) else { continue };
            let Some(mine) = &set.chat else { continue };
            for up in super::tokens::inputs(&s.kind).into_iter().filter_map(|m| m.stage()) {
                let Some((stage, data, theirs)) = answers.of(up) else { continue };
                let what = if theirs.source != mine.source {
                    "another chat template"
                } else if theirs.date != mine.date {
                    "another `date`"
                } else {
                    continue;
                };
                let span = self.decl(&s.name).map_or(self.ast.name_span, |d| d.value.span);
                self.error(Diagnostic::warning(Code::W0405, span, format!("stage `{}` renders `{}` with {what} than stage `{stage}` trained its model in (data `{data}`)", s.name, set.name))
                    .with_hint("a model answers in the template it learned: give both data sets the same `chat_template` and `date`, or leave both to the checkpoint's"));
                break;
            }
        }
    }
}

struct Stats {
    tokens: usize,
    assistant: usize,
    cut: usize,
}

fn token_stats(tk: &tokenizers::Tokenizer, turns: &[Vec<(String, bool)>], context: usize) -> Stats {
    let mut s = Stats { tokens: 0, assistant: 0, cut: 0 };
    // The tokenizer is someone else's code too (its normalizers and patterns): bounded.
    let guard = crate::bounded::Guard::new("a checkpoint's tokenizer");
    guard.allow_bytes(turns.iter().flatten().map(|(t, _)| t.len()).sum());
    for conv in turns {
        // As the run encodes it: the whole conversation as one text, tokens to turns by offset.
        let text: String = conv.iter().map(|(t, _)| t.as_str()).collect();
        let offsets = guard.run(|| tk.encode(text.as_str(), false).map(|e| e.get_offsets().to_vec()).unwrap_or_default()).0;
        let lens: Vec<usize> = conv.iter().map(|(t, _)| t.len()).collect();
        s.assistant += chat::parts_of(&lens, &offsets).into_iter().filter(|&p| conv[p].1).count();
        s.tokens += offsets.len();
        s.cut += (offsets.len() > context + 1) as usize;
    }
    s
}

/// The chat template of the checkpoint in `dir`, or the recipe's `file` with that checkpoint's
/// special tokens; files read through the loader.
fn chat_template(loader: &dyn Loader, dir: &Path, file: Option<&Path>) -> Result<ChatTemplate, String> {
    let json = |name: &str| -> Result<Option<serde_json::Value>, String> {
        let path = dir.join(name);
        match loader.entry(&path) {
            PathKind::File(_) => serde_json::from_str(&loader.read_text(&path, crate::hf::MAX_CONFIG)?).map(Some).map_err(|e| format!("has a {name} that is not valid JSON: {e}")),
            _ => Ok(None),
        }
    };
    let config = crate::hf::tokenizer_config(json("tokenizer_config.json")?.unwrap_or_default(), json("special_tokens_map.json")?);
    if let Some(file) = file {
        let source = loader.read_text(file, crate::hf::MAX_CONFIG).map_err(|e| format!("cannot use the recipe's chat template: {e}"))?;
        return crate::hf::chat_template(&config, Some(source));
    }
    let file = dir.join("chat_template.jinja");
    let jinja = match loader.entry(&file) {
        PathKind::File(_) => Some(loader.read_text(&file, crate::hf::MAX_CONFIG)?),
        _ => None,
    };
    crate::hf::chat_template(&config, jinja)
}
