//! `data NAME = text("file") { tokenizer = bytes, context = 128, split = 0.9 }`

use super::fields::Fields;
use super::loader::PathKind;
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{DataSpec, Generator, SyntheticSpec, Tokenizer};
use crate::syntax::ast::Decl;

impl<'a> Checker<'a> {
    /// The checked data set of a `data` declaration (memoized: other items read its attributes).
    pub fn data_spec(&mut self, d: &'a Decl) -> Option<DataSpec> {
        if let Some(s) = self.data.get(&d.name.name) {
            return s.clone();
        }
        // Insert first so a reference cycle through this data set ends here.
        self.data.insert(d.name.name.clone(), None);
        self.checking.push(d.name.name.clone());
        let spec = self.check_data(d);
        self.checking.pop();
        self.data.insert(d.name.name.clone(), spec.clone());
        spec
    }

    /// True when `d` declares generated regression data (`synthetic.regions`).
    pub fn is_synthetic(&self, d: &Decl) -> bool {
        d.value.as_ctor_name().is_some_and(|n| n == "synthetic.regions")
    }

    /// True when `d` declares instruction or preference examples.
    pub fn is_examples(&self, d: &Decl) -> bool {
        d.value.as_ctor_name().is_some_and(|n| super::examples::EXAMPLE_SOURCES.contains(&n.as_str()))
    }

    fn check_data(&mut self, d: &'a Decl) -> Option<DataSpec> {
        let mut sources = vec!["text", "mix", "synthetic.regions"];
        sources.extend(super::examples::EXAMPLE_SOURCES);
        let (kind, path, args, block) = self.ctor(&d.value, "data source", &sources)?;
        let at = Checker::span_of_path(path);
        if super::examples::EXAMPLE_SOURCES.contains(&kind) {
            let set = self.check_examples(d, kind, at, args, block);
            self.examples.insert(d.name.name.clone(), set);
            return None;
        }
        if kind == "mix" {
            return self.check_mix(d, at, args, block);
        }
        if kind == "synthetic.regions" {
            let spec = self.check_regions(d, block, at);
            self.synthetic.insert(d.name.name.clone(), spec);
            return None;
        }
        let mut f = Fields::new(block, &self.top_scope(), format!("data `{}`", d.name.name), at);
        let tokenizer = self.check_tokenizer(&mut f);
        let context = f.size(self, "context", None);
        let split = f.ranged(self, "split", Some(0.9), 0.0, true, 1.0, true);
        let field = f.field("field");
        f.finish(self);

        let Some((file, file_span)) = super::paths::single_path_arg(args) else {
            self.error(Diagnostic::error(Code::E0104, d.value.span, "`text` takes one argument: the path of the corpus")
                .with_hint("write `text(\"data/corpus.txt\") { … }`"));
            return None;
        };
        let full = self.confined(&file, file_span)?;
        let tokens = match self.loader.entry(&full) {
            PathKind::File(n) => n,
            PathKind::Other => {
                self.error(Diagnostic::error(Code::E0210, file_span, format!("`{file}` is not a file")).with_hint("name a text file, relative to the recipe's folder"));
                return None;
            }
            PathKind::Missing => {
                self.error(Diagnostic::error(Code::E0210, file_span, format!("data file `{file}` not found"))
                    .with_hint(format!("paths are relative to the recipe's folder; looked for {}", full.display())));
                return None;
            }
        };
        // A .jsonl corpus holds documents: its first lines are read now, so a bad file is a check
        // error; the rest when the run reads it.
        let documents = if file.ends_with(".jsonl") { Some(self.document_field(field, &full, &file, file_span)?) } else { None };
        if let (Some(f), None) = (field, &documents) {
            self.error(Diagnostic::error(Code::E0214, f.key.span, format!("`field` names the key of a document in a .jsonl corpus; `{file}` is read as plain text"))
                .with_hint("remove `field`, or give a .jsonl file of {\"text\": …} lines"));
            return None;
        }
        let (context, split) = (context?, split?);
        let (train, val) = ((tokens as f64 * split) as u64, tokens - (tokens as f64 * split) as u64);
        if train <= context as u64 || val <= context as u64 {
            self.error(
                Diagnostic::error(Code::E0211,
                    f_span(block, "context").unwrap_or(file_span),
                    format!("context {context} is not shorter than the data: `{file}` splits into {train} training and {val} validation tokens"),
                )
                .with_hint("each split needs more tokens than the context; use a shorter context or more data"),
            );
            return None;
        }
        let tokenizer = tokenizer?;
        Some(DataSpec {
            name: d.name.name.clone(),
            path: std::path::absolute(&full).unwrap_or(full),
            vocab: match tokenizer {
                Tokenizer::Bytes => 256,
                Tokenizer::Bpe { vocab } | Tokenizer::Model { vocab, .. } => vocab,
            },
            tokenizer,
            context,
            split,
            tokens,
            field: documents,
            mix: vec![],
        })
    }

    /// The key a .jsonl corpus's documents are under (`field`, else "text"), its first MiB of
    /// lines checked to hold it as a string.
    fn document_field(&mut self, field: Option<&crate::syntax::ast::Field>, full: &std::path::Path, file: &str, span: crate::diag::Span) -> Option<String> {
        let key = match field.map(|f| &f.value.kind) {
            None => "text".to_string(),
            Some(crate::syntax::ast::ExprKind::Str(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                let f = field?;
                self.error(Diagnostic::error(Code::E0120, f.value.span, format!("`field` expects the name of a JSON field, as a string, found {}", super::eval::describe(&f.value)))
                    .with_hint("write `field = \"text\"`"));
                return None;
            }
        };
        let PathKind::File(size) = self.loader.entry(full) else { return None };
        let head = match self.loader.read_range(full, 0, size.min(1 << 20)) {
            Ok(h) => h,
            Err(e) => {
                self.error(Diagnostic::error(Code::E0210, span, format!("`{file}` cannot be read: {e}")).with_hint("name a readable .jsonl file"));
                return None;
            }
        };
        let text = String::from_utf8_lossy(&head);
        // The last line of a cut head may be cut itself.
        let whole = if size > head.len() as u64 { text.rsplit_once('\n').map_or("", |(w, _)| w) } else { &text };
        let bad = crate::documents::document_lines(whole, &key).find_map(|l| l.doc.err().map(|why| (l.number, why)));
        if let Some((line, why)) = bad {
            self.error(Diagnostic::error(Code::E0214, span, format!("`{file}` line {line}: {why}"))
                .with_hint(format!("a .jsonl corpus holds one document a line: {{\"{}\": \"…\"}}", key.escape_default())));
            return None;
        }
        Some(key)
    }
}

impl<'a> Checker<'a> {
    /// `tokenizer = bytes`, `tokenizer = bpe { vocab = N }` (N in 257..=65536: every byte plus
    /// at least one merge, ids that fit 16 bits) or `tokenizer = base.tokenizer` (an imported
    /// model's; its vocabulary is filled in once the models are checked: `model_tokenizers`).
    fn check_tokenizer(&mut self, f: &mut Fields<'a>) -> Option<Tokenizer> {
        let Some(field) = f.field("tokenizer") else { return Some(Tokenizer::Bytes) };
        if field.value.as_path().is_some_and(|p| p.len() == 1 && p[0].name == "bytes") {
            return Some(Tokenizer::Bytes);
        }
        if field.value.as_path().is_some_and(|p| p.len() == 2) {
            return self.model_tokenizer(&field.value).map(|model| Tokenizer::Model { model, vocab: 0 });
        }
        let (kind, path, _, block) = self.ctor(&field.value, "tokenizer", &["bytes", "bpe"])?;
        if kind == "bytes" {
            return Some(Tokenizer::Bytes);
        }
        let mut b = Fields::new(block, &f.scope, "bpe", Checker::span_of_path(path));
        let vocab = b.ranged(self, "vocab", Some(1024.0), 257.0, false, 65536.0, false);
        let span = b.value_span("vocab");
        b.finish(self);
        let vocab = vocab?;
        if vocab.fract() != 0.0 {
            self.error(Diagnostic::error(Code::E0123, span, format!("`vocab` must be a whole number, found {vocab}")).with_hint("a vocabulary size such as 1024"));
            return None;
        }
        Some(Tokenizer::Bpe { vocab: vocab as usize })
    }
}

impl Checker<'_> {
    /// E0111 for `corpus.vocab` read while the vocabulary of the model whose tokenizer the corpus
    /// takes is not known yet (a model declaration reading it); true when so.
    pub(super) fn vocab_unknown(&mut self, s: &DataSpec, attr: &crate::syntax::ast::Ident) -> bool {
        let Tokenizer::Model { model, vocab: 0 } = &s.tokenizer else { return false };
        self.error(Diagnostic::error(Code::E0111, attr.span, format!("`{}.vocab` is the vocabulary of `{model}`'s tokenizer, which a model declaration cannot read", s.name))
            .with_hint(format!("train `{model}` itself on this data, or write the vocabulary as a number")));
        true
    }

    /// A corpus read with an imported model's tokenizer takes that model's vocabulary; the model
    /// must have been imported with its tokenizer.json.
    pub(super) fn model_tokenizers(&mut self) {
        let names: Vec<String> = self.data.iter().filter(|(_, d)| d.as_ref().is_some_and(|d| matches!(d.tokenizer, Tokenizer::Model { .. }))).map(|(n, _)| n.clone()).collect();
        for name in names {
            let Some(Some(spec)) = self.data.get(&name).cloned() else { continue };
            let Tokenizer::Model { model, .. } = &spec.tokenizer else { continue };
            let vocab = self.models.get(model).filter(|m| m.checkpoint.as_ref().is_some_and(|c| c.tokenizer && !c.byte_level)).map(|m| m.vocab);
            let fixed = match vocab {
                Some(vocab) => Some(DataSpec { vocab, tokenizer: Tokenizer::Model { model: model.clone(), vocab }, ..spec }),
                None => {
                    let span = self.decl(&name).map_or(self.ast.name_span, |d| d.value.span);
                    self.error(Diagnostic::error(Code::E0315, span, format!("data `{name}` takes the tokenizer of `{model}`, which has none: only a model imported with `hf(\"…\")` from a folder with tokenizer.json does"))
                        .with_hint("leave `tokenizer` out to read the text as bytes, or write `tokenizer = bpe { vocab = 1024 }`"));
                    None
                }
            };
            self.data.insert(name, fixed);
        }
    }
}

fn f_span(block: Option<&crate::syntax::ast::Block>, key: &str) -> Option<crate::diag::Span> {
    block.and_then(|b| b.field(key)).map(|f| f.value.span)
}

impl<'a> Checker<'a> {
    /// `synthetic.regions { tasks, dim, outputs, examples, noise }`
    fn check_regions(&mut self, d: &'a Decl, block: Option<&'a crate::syntax::ast::Block>, at: crate::diag::Span) -> Option<SyntheticSpec> {
        let mut f = Fields::new(block, &self.top_scope(), format!("data `{}`", d.name.name), at);
        let tasks = f.size(self, "tasks", Some(4));
        let dim = f.size(self, "dim", Some(2));
        let outputs = f.size(self, "outputs", Some(1));
        let examples = f.size(self, "examples", Some(4000));
        let noise = f.ranged(self, "noise", Some(0.0), 0.0, false, f64::INFINITY, true);
        let dim_span = f.value_span("dim");
        f.finish(self);
        if dim? < 2 {
            self.error(Diagnostic::error(Code::E0201, dim_span, "`dim` must be at least 2: the regions are sectors of the first two inputs")
                .with_hint("set `dim = 2` or more"));
            return None;
        }
        Some(SyntheticSpec {
            name: d.name.name.clone(),
            generator: Generator::Regions { tasks: tasks?, dim: dim?, outputs: outputs?, examples: examples?, noise: noise? },
        })
    }
}
