//! `choices("file.jsonl") { prompt, choices, answer, template, delimiter, fewshot, description, … }`: a
//! multiple-choice benchmark that `compare` scores as lm-evaluation-harness does. The file is
//! read now, so a bad line is a check error rather than a failed run.

use super::examples::{JsonlLines, LISTED_LINES};
use super::fields::Fields;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::posttrain::choices::{parse, tokenized_bytes, MAX_TOKENIZED};
use crate::recipe::{ExampleKind, ExampleSet, ExampleSource};
use crate::syntax::ast::{Arg, Block, Decl, DeclKind, Expr, ExprKind};

/// How a question is shown to the model unless `template` says otherwise: as it is written.
const QUESTION: &str = "{prompt}";

impl<'a> Checker<'a> {
    pub(super) fn check_choices(&mut self, d: &'a Decl, at: Span, args: Option<&'a [Arg]>, block: Option<&'a Block>) -> Option<ExampleSet> {
        let name = d.name.name.clone();
        let mut f = Fields::new(block, &self.top_scope(), format!("data `{name}`"), at);
        let fields: Vec<Option<String>> = [("prompt", "prompt"), ("choices", "choices"), ("answer", "answer")].iter().map(|(k, def)| self.string_field(&mut f, k, def)).collect();
        let tokenizer = f.field("tokenizer").map(|t| self.model_tokenizer(&t.value));
        let template = self.text_key(&mut f, "template", QUESTION, |s| s.matches("{prompt}").count() == 1, "a question template must contain `{prompt}` exactly once");
        let delimiter = self.text_key(&mut f, "delimiter", " ", |s| s.len() <= 64, "`delimiter` is at most 64 bytes");
        let fewshot = f.int(self, "fewshot", Some(0), super::fields::Min::Zero);
        let fewshot_span = f.value_span("fewshot");
        let between = self.text_key(&mut f, "fewshot_delimiter", "\n\n", |s| s.len() <= 64, "`fewshot_delimiter` is at most 64 bytes");
        let description = self.text_key(&mut f, "description", "", |s| s.len() <= 4096, "`description` is at most 4,096 bytes");
        f.finish(self);
        let path = self.jsonl_path(d, "choices", args)?;
        let span = super::paths::single_path_arg(args).map_or(at, |a| a.1);
        let fields: [String; 3] = fields.into_iter().collect::<Option<Vec<_>>>()?.try_into().ok()?;
        let text = self.jsonl_text(&path, span)?;
        let parsed = parse(&text, &fields, LISTED_LINES);
        let [p, c, a] = &fields;
        let hint = format!("every non-empty line is one JSON object: `{p}` a string, `{c}` a list of strings, `{a}` the right one's index (0, 1, …) or letter (A, B, …)");
        let lines = JsonlLines { bad: &parsed.bad, bad_total: parsed.bad_total, good: parsed.questions.len(), items: "questions" };
        if !self.refuse_bad_lines(&path, span, &lines, hint) {
            return None;
        }
        let (template, delimiter, between, description) = (template?, delimiter?, between?, description?);
        let fewshot = fewshot? as usize;
        if fewshot >= parsed.questions.len() {
            self.error(Diagnostic::error(Code::E0202, fewshot_span, format!("`fewshot` = {fewshot} leaves none of the {} questions to score", parsed.questions.len()))
                .with_hint("the first `fewshot` questions are the examples shown before each of the others: fewer than the file holds"));
            return None;
        }
        let work = tokenized_bytes(&parsed.questions, template.len() - "{prompt}".len(), delimiter.len(), (fewshot, between.len()), description.len());
        if work > MAX_TOKENIZED {
            let file = super::examples::file_name(&path);
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` would have its scorer tokenize {work} bytes (every choice after its whole question), more than the {MAX_TOKENIZED} allowed"))
                .with_hint("split it into several sets, or shorten its longest questions"));
            return None;
        }
        let counts: Vec<usize> = parsed.questions.iter().map(|q| q.choices.len()).collect();
        let (fewest, most) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        let each = if fewest == most { format!("{most} choices each") } else { format!("{fewest} to {most} choices each") };
        let shown = if fewshot > 0 { format!(", each after the first {fewshot} answered") } else { String::new() };
        self.error(Diagnostic::note(Code::N0404, span, format!("data `{name}`: {} questions, {each}{shown}", parsed.questions.len() - fewshot)).with_hint("`compare(…) { data = … }` scores every choice's likelihood"));
        let tokenizer = tokenizer.unwrap_or(Some(String::new()))?;
        let tokenizer = Some(tokenizer).filter(|t| !t.is_empty());
        let source = ExampleSource::Choices { path, fields: fields.to_vec(), delimiter, questions: parsed.questions.len() - fewshot, most, fewshot, fewshot_delimiter: between, description };
        Some(ExampleSet { name, kind: ExampleKind::Choices, source, template, end: String::new(), held_out: 0.0, tokenizer, chat: None })
    }

    /// A string key with a default, `ok` saying whether a value is allowed (else `why`).
    fn text_key(&mut self, f: &mut Fields<'a>, key: &'static str, default: &str, ok: impl Fn(&str) -> bool, why: &str) -> Option<String> {
        let Some(field) = f.field(key) else { return Some(default.to_string()) };
        match &field.value.kind {
            ExprKind::Str(s) if ok(s) => Some(s.clone()),
            ExprKind::Str(_) => {
                self.error(Diagnostic::error(Code::E0250, field.value.span, why.to_string()).with_hint(format!("for example `{key} = \"{}\"`", default.escape_default())));
                None
            }
            _ => {
                self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`{key}` expects a string, found {}", super::eval::describe(&field.value))).with_hint(format!("write `{key} = \"{}\"`", default.escape_default())));
                None
            }
        }
    }
}

impl<'a> Checker<'a> {
    /// `eval_choices = quiz` on `train`: a `choices(…)` set (E0313 for another kind), read with
    /// the tokens the stage trains on whatever its own `tokenizer`.
    pub(super) fn eval_choices(&mut self, e: &'a Expr) -> Option<String> {
        let d = self.decl_ref(e, DeclKind::Data, "a data set")?;
        let Some(set) = self.examples.get(&d.name.name).cloned().flatten().filter(|s| s.kind == ExampleKind::Choices) else {
            self.error(Diagnostic::error(Code::E0313, e.span, format!("`eval_choices` takes multiple-choice questions, but `{}` is not a `choices(…)` set", d.name.name))
                .with_hint("declare `data quiz = choices(\"questions.jsonl\") { … }` and write `eval_choices = quiz`"));
            return None;
        };
        Some(set.name)
    }
}
