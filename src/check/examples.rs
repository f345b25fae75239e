//! Post-training data: `synthetic.instructions`, `synthetic.preferences`, `synthetic.feedback`,
//! `instructions("file.jsonl")`, `preferences("file.jsonl")` and `feedback("file.jsonl")`, each
//! with a prompt template.

use super::fields::{Fields, Min};
use super::loader::PathKind;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::{ExampleKind, ExampleSet, ExampleSource, Task};
use crate::syntax::ast::{Arg, Block, Decl, ExprKind};

pub const EXAMPLE_SOURCES: &[&str] = &["synthetic.instructions", "synthetic.preferences", "synthetic.feedback", "instructions", "preferences", "feedback", "choices"];
const TASKS: &[&str] = &["reverse", "sort", "add", "uppercase"];
pub const DEFAULT_TEMPLATE: &str = "Q: {prompt}\nA: ";

/// Bad lines a check lists of a JSONL file, with why.
pub const LISTED_LINES: usize = 10;

/// What reading a JSONL file found: its first bad lines (line, why), how many in all, how many
/// good `items`.
pub struct JsonlLines<'p> {
    pub bad: &'p [(usize, String)],
    pub bad_total: usize,
    pub good: usize,
    pub items: &'static str,
}

/// What the checker learns of example sets as it reads them.
#[derive(Default)]
pub struct Facts {
    /// Byte lengths of the examples of each JSONL data set, and where the recipe names its file.
    pub lengths: std::collections::HashMap<String, (Vec<usize>, Span)>,
    /// Byte lengths of the rendered prompts of each JSONL data set.
    pub prompts: std::collections::HashMap<String, Vec<usize>>,
    /// A feedback set's desirable and undesirable examples (a synthetic set's expected counts).
    pub feedback: std::collections::HashMap<String, (usize, usize)>,
}

impl<'a> Checker<'a> {
    pub(super) fn check_examples(&mut self, d: &'a Decl, kind: &str, at: Span, args: Option<&'a [Arg]>, block: Option<&'a Block>) -> Option<ExampleSet> {
        if kind == "choices" {
            return self.check_choices(d, at, args, block);
        }
        let what = format!("data `{}`", d.name.name);
        let mut f = Fields::new(block, &self.top_scope(), what, at);
        let template_field = f.field("template");
        let end_field = f.field("end");
        let tokenizer = f.field("tokenizer").map(|t| self.model_tokenizer(&t.value));
        let chat_template = f.field("chat_template");
        let date = f.field("date");
        let held_out = f.ranged(self, "held_out", Some(0.1), 0.0, true, 1.0, false);
        // The rows of a JSONL file, read now so that a bad line is a check error, not a failed run.
        let mut rows: Option<Vec<Vec<String>>> = None;
        let (ekind, source) = match kind {
            "synthetic.instructions" | "synthetic.preferences" | "synthetic.feedback" => {
                let ekind = example_kind(kind);
                let tasks = self.task_list(&mut f);
                let count_key = if ekind == ExampleKind::Preferences { "pairs" } else { "examples" };
                let count = f.size(self, count_key, Some(4000));
                let verbose = if ekind == ExampleKind::Instructions { f.ranged(self, "verbose", Some(0.0), 0.0, false, 1.0, true) } else { Some(0.0) };
                let desirable = if ekind == ExampleKind::Feedback { f.ranged(self, "desirable", Some(0.5), 0.0, true, 1.0, true) } else { Some(0.0) };
                let max_len = f.int(self, "max_len", Some(5), Min::One);
                let len_span = f.value_span("max_len");
                if let Some(m) = max_len.filter(|m| !(2..=32).contains(m)) {
                    self.error(Diagnostic::error(Code::E0201, len_span, format!("max_len = {m} is out of range")).with_hint("task strings have 2 to 32 letters"));
                }
                if let (Some(c), Some(p)) = (count, desirable.filter(|_| ekind == ExampleKind::Feedback)) {
                    // The expected counts: the balance KTO's weights are judged against.
                    let good = (c as f64 * p).round() as usize;
                    self.example_facts.feedback.insert(d.name.name.clone(), (good, c - good.min(c)));
                }
                let src = ExampleSource::Synthetic { tasks: tasks?, count: count?, verbose: verbose?, max_len: max_len?.clamp(2, 32) as usize, desirable: desirable? };
                (ekind, Some(src))
            }
            _ => {
                let ekind = example_kind(kind);
                let names: &[(&'static str, &str)] = match ekind {
                    ExampleKind::Instructions => &[("prompt", "prompt"), ("response", "response")],
                    ExampleKind::Preferences => &[("prompt", "prompt"), ("chosen", "chosen"), ("rejected", "rejected")],
                    ExampleKind::Feedback => &[("prompt", "prompt"), ("completion", "completion"), ("label", "label")],
                    ExampleKind::Choices => unreachable!("checked by check_choices"),
                };
                let fields: Vec<Option<String>> = names.iter().map(|(k, def)| self.string_field(&mut f, k, def)).collect();
                let path = self.jsonl_path(d, kind, args);
                // Conversations are rendered with a chat template (see check/chat.rs).
                if let Some(p) = path.as_ref().filter(|p| self.is_chat_file(p, ekind)) {
                    let template = match chat_template {
                        None => Some(None),
                        Some(t) => self.chat_template_file(&t.value).map(Some),
                    };
                    let date = match date {
                        None => Some(None),
                        Some(d) => self.template_date(&d.value).map(Some),
                    };
                    (ekind, template.zip(date).map(|(template, date)| ExampleSource::Chat { path: p.clone(), template, date }))
                } else {
                    let src = fields.into_iter().collect::<Option<Vec<_>>>().zip(path).map(|(fields, path)| ExampleSource::Jsonl { path, fields });
                    if let Some(ExampleSource::Jsonl { path, fields }) = &src {
                        rows = self.jsonl_rows(path, fields, ekind, super::paths::single_path_arg(args).map_or(at, |a| a.1));
                    }
                    (ekind, src)
                }
            }
        };
        f.finish(self);
        if let (Some(t), false) = (chat_template.or(date), matches!(source, Some(ExampleSource::Chat { .. }) | None)) {
            self.error(Diagnostic::error(Code::E0252, t.key.span, format!("data `{}` holds no conversations: `{}` is for a chat template, which renders `messages`", d.name.name, t.key.name))
                .with_hint("rows of a prompt and a response take `template = \"…{prompt}…\"`; conversations are lines of {\"messages\": [{\"role\": …, \"content\": …}, …]}"));
            return None;
        }
        let template = match template_field {
            None => DEFAULT_TEMPLATE.to_string(),
            Some(t) => match &t.value.kind {
                ExprKind::Str(s) if s.matches("{prompt}").count() == 1 => s.clone(),
                ExprKind::Str(_) => {
                    self.error(Diagnostic::error(Code::E0250, t.value.span, "a prompt template must contain `{prompt}` exactly once")
                        .with_hint(format!("for example `template = \"{}\"`", DEFAULT_TEMPLATE.escape_default())));
                    return None;
                }
                _ => {
                    self.error(Diagnostic::error(Code::E0120, t.value.span, format!("`template` expects a string, found {}", super::eval::describe(&t.value)))
                        .with_hint("write `template = \"Q: {prompt}\\nA: \"`"));
                    return None;
                }
            },
        };
        let tokenizer = match tokenizer {
            Some(None) => return None,
            Some(Some(m)) => Some(m),
            None => None,
        };
        let end = match end_field {
            // With a model's tokenizer, the end is its end-of-sequence token (the empty marker).
            None if tokenizer.is_some() => String::new(),
            None => "\n".to_string(),
            Some(e) => match &e.value.kind {
                ExprKind::Str(s) if !s.is_empty() => s.clone(),
                _ => {
                    self.error(Diagnostic::error(Code::E0251, e.value.span, "`end` must be a non-empty string")
                        .with_hint("the end marker closes every response and stops generation; the default is \"\\n\""));
                    return None;
                }
            },
        };
        if let Some(rows) = rows {
            self.note_rows(&d.name.name, ekind, &rows, &template, &end, super::paths::single_path_arg(args).map_or(at, |a| a.1));
        }
        Some(ExampleSet { name: d.name.name.clone(), kind: ekind, source: source?, template, end, held_out: held_out?, tokenizer, chat: None })
    }

    /// N0404: what a JSONL set of rows holds (for feedback, how many of each label) and how long
    /// its examples are, kept for the stages' W0403.
    fn note_rows(&mut self, name: &str, ekind: ExampleKind, rows: &[Vec<String>], template: &str, end: &str, span: Span) {
        // The longest sequence each example makes (of a pair, its longer side), in bytes.
        let replies = match ekind {
            ExampleKind::Instructions | ExampleKind::Feedback | ExampleKind::Choices => 1..2,
            // (A fourth field is the pair's margin.)
            ExampleKind::Preferences => 1..3,
        };
        let prompts: Vec<usize> = rows.iter().map(|r| crate::posttrain::examples::render(template, &r[0]).len()).collect();
        let lengths: Vec<usize> = rows.iter().zip(&prompts).map(|(r, p)| r[replies.clone()].iter().map(|resp| p + resp.len() + end.len()).max().unwrap_or(0)).collect();
        let longest = lengths.iter().max().copied().unwrap_or(0);
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        let held = match ekind {
            ExampleKind::Instructions | ExampleKind::Choices => format!("{} examples", lengths.len()),
            ExampleKind::Preferences => {
                let margins: Vec<f64> = rows.iter().filter_map(|r| r.get(3)?.parse::<f64>().ok()).collect();
                format!("{} pairs{}", lengths.len(), margins_note(&margins))
            }
            ExampleKind::Feedback => {
                let good = rows.iter().filter(|r| r[2] == "true").count();
                self.example_facts.feedback.insert(name.to_string(), (good, rows.len() - good));
                format!("{} examples ({good} desirable, {} not)", lengths.len(), rows.len() - good)
            }
        };
        self.error(Diagnostic::note(Code::N0404, span, format!("data `{}`: {held}, {:.0} bytes each on average, the longest {longest} (prompt template, response and end marker)", name, mean))
            .with_hint("a stage warns when some are longer than its model's context"));
        self.example_facts.lengths.insert(name.to_string(), (lengths, span));
        self.example_facts.prompts.insert(name.to_string(), prompts);
    }

    /// Whether PPO's or GRPO's prompts of `set` leave `max_new` positions of `model`'s context for
    /// a response: E0228 for synthetic data, whose longest prompt is known; W0408 for a file read
    /// in bytes, some of whose prompts the run cuts on the left (a tokenizer's sets are measured
    /// when the run encodes them). False after an error.
    pub(super) fn prompt_room(&mut self, set: &ExampleSet, model: &str, max_new: usize, new_span: Span) -> bool {
        let Some(context) = self.models.get(model).map(|m| m.context) else { return true };
        if let Some(longest) = super::grpo::longest_prompt(set).filter(|l| l + max_new > context) {
            self.error(
                Diagnostic::error(Code::E0228, new_span, format!("the longest prompt of `{}` ({longest} tokens) and `max_new` = {max_new} need {} positions, beyond the model's context of {context}", set.name, longest + max_new))
                    .with_hint(format!("use `max_new = {}` at most, or a model with a longer context", context.saturating_sub(longest))),
            );
            return false;
        }
        let room = crate::posttrain::examples::prompt_room(context, max_new);
        let (Some(prompts), None) = (self.example_facts.prompts.get(&set.name), &set.tokenizer) else { return true };
        let long = prompts.iter().filter(|&&p| p > room).count();
        if long > 0 {
            let span = self.example_facts.lengths.get(&set.name).map_or(new_span, |(_, s)| *s);
            self.error(
                Diagnostic::warning(Code::W0408, span, format!("{long} of the {} prompts of `{}` are longer than the {room} tokens that model `{model}`'s context of {context} leaves beside `max_new` = {max_new}: each keeps its last {room}", prompts.len(), set.name))
                    .with_hint("a stage cuts such prompts on the left, as TRL's max_prompt_length does; use a smaller `max_new`, a model with a longer context, or shorter prompts"),
            );
        }
        true
    }

    /// `tokenizer = base.tokenizer`: the model whose tokenizer encodes a data set.
    pub(super) fn model_tokenizer(&mut self, e: &'a crate::syntax::ast::Expr) -> Option<String> {
        match e.as_path() {
            Some([m, t]) if t.name == "tokenizer" && self.decl(&m.name).is_some_and(|d| d.kind == crate::syntax::ast::DeclKind::Model) => Some(m.name.clone()),
            _ => {
                self.error(Diagnostic::error(Code::E0120, e.span, format!("`tokenizer` expects a model's tokenizer, found {}", super::eval::describe(e)))
                    .with_hint("write `tokenizer = base.tokenizer`, where `model base = hf(\"…\")`"));
                None
            }
        }
    }

    /// The rows of a JSONL file through the loader; every bad line (the first ten listed) and an
    /// empty file are errors at the file's name in the recipe.
    fn jsonl_rows(&mut self, path: &std::path::Path, fields: &[String], kind: ExampleKind, span: Span) -> Option<Vec<Vec<String>>> {
        let text = self.jsonl_text(path, span)?;
        let parsed = crate::posttrain::jsonl::parse_jsonl(&text, fields, kind, LISTED_LINES);
        let hint = match kind {
            ExampleKind::Feedback => format!("every non-empty line is one JSON object whose fields `{}` and `{}` are strings and `{}` is true or false", fields[0], fields[1], fields[2]),
            _ => format!("every non-empty line is one JSON object whose fields {} are strings", fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")),
        };
        let lines = JsonlLines { bad: &parsed.bad, bad_total: parsed.bad_total, good: parsed.rows.len(), items: "examples" };
        self.refuse_bad_lines(path, span, &lines, hint).then_some(parsed.rows)
    }

    /// A JSONL data file's text through the loader (a regular file of at most MAX_JSONL_BYTES),
    /// or E0214 at its name in the recipe.
    pub(super) fn jsonl_text(&mut self, path: &std::path::Path, span: Span) -> Option<String> {
        match self.loader.read_text(path, crate::posttrain::examples::MAX_JSONL_BYTES) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(Diagnostic::error(Code::E0214, span, e).with_hint("a JSONL data set is a UTF-8 text file of one JSON object per line"));
                None
            }
        }
    }

    /// E0214 for a JSONL file with bad lines (the first ten listed, with why) or none good;
    /// whether it passed.
    pub(super) fn refuse_bad_lines(&mut self, path: &std::path::Path, span: Span, lines: &JsonlLines, hint: String) -> bool {
        let file = file_name(path);
        if lines.bad_total > 0 {
            let listed: Vec<String> = lines.bad.iter().map(|(l, why)| format!("line {l}: {why}")).collect();
            let more = if lines.bad_total > listed.len() { format!("; and {} more", lines.bad_total - listed.len()) } else { String::new() };
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` has {} bad line(s) of {}: {}{more}", lines.bad_total, lines.bad_total + lines.good, listed.join("; "))).with_hint(hint));
            return false;
        }
        if lines.good == 0 {
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` holds no {}", lines.items)).with_hint("write one JSON object per line"));
            return false;
        }
        true
    }

    /// W0403 when some examples of `data` are longer than `context` (they will be cut).
    pub(super) fn warn_truncation(&mut self, data: &str, model: &str, context: usize) {
        let Some((lengths, span)) = self.example_facts.lengths.get(data) else { return };
        let cut = lengths.iter().filter(|&&l| l > context + 1).count();
        if cut == 0 {
            return;
        }
        let (n, span) = (lengths.len(), *span);
        self.error(Diagnostic::warning(Code::W0403, span, format!("{cut} of {n} examples of `{data}` ({:.1}%) are longer than model `{model}`'s context of {context} and will be cut", 100.0 * cut as f64 / n as f64))
            .with_hint("use a model with a longer context, or shorten or drop those examples"));
    }

    /// `tasks = [reverse, sort, add, uppercase]` (default: all four).
    fn task_list(&mut self, f: &mut Fields<'a>) -> Option<Vec<Task>> {
        let Some(field) = f.field("tasks") else { return Some(Task::ALL.to_vec()) };
        let ExprKind::List(items) = &field.value.kind else {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`tasks` expects a list, found {}", super::eval::describe(&field.value)))
                .with_hint("write `tasks = [reverse, sort, add, uppercase]`"));
            return None;
        };
        if items.is_empty() {
            self.error(Diagnostic::error(Code::E0201, field.value.span, "`tasks` is empty").with_hint("name at least one of reverse, sort, add, uppercase"));
            return None;
        }
        let mut out = vec![];
        for it in items {
            let t = match self.eval_sym(it, "task", TASKS, None)? {
                "reverse" => Task::Reverse,
                "sort" => Task::Sort,
                "add" => Task::Add,
                _ => Task::Uppercase,
            };
            out.push(t);
        }
        Some(out)
    }

    /// A string-valued key such as `prompt = "instruction"` (a JSONL field name).
    pub(super) fn string_field(&mut self, f: &mut Fields<'a>, key: &'static str, default: &str) -> Option<String> {
        let Some(field) = f.field(key) else { return Some(default.to_string()) };
        match (&field.value.kind, field.value.as_path()) {
            (ExprKind::Str(s), _) if !s.is_empty() => Some(s.clone()),
            // YAML writes a string bare: `prompt: instruction`.
            (_, Some([id])) if self.yaml() => Some(id.name.clone()),
            _ => {
                self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`{key}` expects the name of a JSON field, as a string"))
                    .with_hint(format!("write `{key} = \"{default}\"`")));
                None
            }
        }
    }

    /// Whether a JSONL file holds conversations, judged by its first line (the first MiB read).
    fn is_chat_file(&self, path: &std::path::Path, kind: ExampleKind) -> bool {
        let PathKind::File(size) = self.loader.entry(path) else { return false };
        let head = self.loader.read_range(path, 0, size.min(1 << 20)).unwrap_or_default();
        crate::posttrain::rows::is_chat(&String::from_utf8_lossy(&head), kind)
    }

    /// `chat_template = "chatml.jinja"`: a Jinja file beside the recipe that renders a data set's
    /// conversations in place of the checkpoint's template.
    fn chat_template_file(&mut self, e: &crate::syntax::ast::Expr) -> Option<std::path::PathBuf> {
        let ExprKind::Str(file) = &e.kind else {
            self.error(Diagnostic::error(Code::E0120, e.span, format!("`chat_template` expects the path of a Jinja file, found {}", super::eval::describe(e)))
                .with_hint("write `chat_template = \"templates/chatml.jinja\"`"));
            return None;
        };
        let full = self.confined(file, e.span)?;
        if !matches!(self.loader.entry(&full), PathKind::File(_)) {
            self.error(Diagnostic::error(Code::E0252, e.span, format!("chat template file `{file}` not found"))
                .with_hint(format!("paths are relative to the recipe's folder; looked for {}", full.display())));
            return None;
        }
        Some(self.loader.absolute(&full))
    }

    /// `date = "2025-03-07"`: the day a chat template's `strftime_now` formats.
    fn template_date(&mut self, e: &crate::syntax::ast::Expr) -> Option<String> {
        match &e.kind {
            ExprKind::Str(s) if crate::posttrain::strftime::Day::parse(s).is_some() => Some(s.clone()),
            _ => {
                self.error(Diagnostic::error(Code::E0253, e.span, format!("`date` expects a calendar day as \"YYYY-MM-DD\", found {}", super::eval::describe(e)))
                    .with_hint("write `date = \"2025-03-07\"`: the day the chat template's `strftime_now` writes"));
                None
            }
        }
    }

    pub(super) fn jsonl_path(&mut self, d: &'a Decl, kind: &str, args: Option<&'a [Arg]>) -> Option<std::path::PathBuf> {
        let Some((file, span)) = super::paths::single_path_arg(args) else {
            self.error(Diagnostic::error(Code::E0104, d.value.span, format!("`{kind}` takes one argument: the path of a JSONL file"))
                .with_hint(format!("write `{kind}(\"data/{kind}.jsonl\") {{ … }}`")));
            return None;
        };
        let full = self.confined(&file, span)?;
        if !matches!(self.loader.entry(&full), PathKind::File(_)) {
            self.error(Diagnostic::error(Code::E0210, span, format!("data file `{file}` not found"))
                .with_hint(format!("paths are relative to the recipe's folder; looked for {}", full.display())));
            return None;
        }
        Some(self.loader.absolute(&full))
    }
}

/// A data file as messages name it: its file name.
pub(super) fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
}

/// What a data constructor's examples are.
fn example_kind(constructor: &str) -> ExampleKind {
    match constructor.trim_start_matches("synthetic.") {
        "instructions" => ExampleKind::Instructions,
        "preferences" => ExampleKind::Preferences,
        _ => ExampleKind::Feedback,
    }
}

/// What N0404 says of a preference set's margins (nothing when it has none): their range and
/// mean, to three decimals.
pub(super) fn margins_note(m: &[f64]) -> String {
    if m.is_empty() {
        return String::new();
    }
    let show = |x: f64| super::fields::fmt_num((x * 1000.0).round() / 1000.0);
    let (low, high) = (m.iter().copied().fold(f64::INFINITY, f64::min), m.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    format!(" (margins {} to {}, mean {})", show(low), show(high), show(m.iter().sum::<f64>() / m.len() as f64))
}
