//! Stage 2, check: AST → typed [`Recipe`]. Resolves names, evaluates arithmetic, checks types,
//! ranges and cross-item invariants, and reports every error of the file in one pass.
//!
//! Pure: the files a recipe names (data sizes, fit files, path confinement) are looked up
//! through a `Loader` passed in (`loader.rs`); the command line passes the real file system.

mod budget;
mod chat;
mod choices;
mod compare;
mod data;
mod eval;
mod eval_data;
mod examples;
mod feedback;
mod artifact;
mod posttrain;
pub mod fields;
mod distill;
mod grpo;
mod online;
mod health;
mod hf;
mod isoflop;
mod lora;
pub mod loader;
mod mix;
mod mixture;
mod model;
pub mod paths;
mod moe;
mod optimizer;
mod processes;
mod ref_sync;
mod repeats;
mod sampling;
mod stage;
mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{self, Decl, DeclKind, Entry, Expr, ExprKind, Ident};
use eval::Scope;
use loader::Loader;
use fields::{Fields, Min};
use crate::diag::suggest::did_you_mean;

pub struct Checker<'a> {
    ast: &'a ast::SourceFile,
    /// Directory that relative paths in the recipe resolve against.
    base_dir: PathBuf,
    diags: Vec<Diagnostic>,
    decls: Vec<&'a Decl>,
    /// Where each declared name sits in `decls` (40k declarations: names looked up 10^5 times).
    decl_index: HashMap<String, usize>,
    /// The architecture each stage trains, once found (a chain of stages is walked once).
    stage_archs: HashMap<String, Option<String>>,
    data: HashMap<String, Option<DataSpec>>,
    synthetic: HashMap<String, Option<SyntheticSpec>>,
    examples: HashMap<String, Option<ExampleSet>>,
    budgets: HashMap<String, Option<BudgetSpec>>,
    /// Checked models, for stages that build on a model's definition (isoflop sweeps).
    models: HashMap<String, ModelSpec>,
    /// Key spans of the fields being evaluated, to catch `a = b, b = a`.
    visiting: Vec<usize>,
    /// Data sets and budgets being checked, to catch one read through its own attributes.
    checking: Vec<String>,
    /// Did-you-means still to give (a person reads the first; 25k would cost 25k searches each).
    suggestions_left: usize,
    /// What the example sets hold: lengths of JSONL examples, feedback's labels.
    example_facts: examples::Facts,
    /// Top-level keys that sweeps define.
    variables: Vec<String>,
    /// Folders outside the project that the user allowed the recipe to read (`--allow-path`).
    allowed_paths: Vec<PathBuf>,
    /// Where the files the recipe names are looked up.
    loader: &'a dyn Loader,
}

/// The result of checking: the typed recipe when there were no errors, and every diagnostic.
pub struct Checked {
    pub recipe: Option<Recipe>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Check a parsed recipe. `base_dir` is the directory holding the recipe file.
pub fn check(ast: &ast::SourceFile, base_dir: &Path) -> Checked {
    check_with(ast, base_dir, &[], &[], &loader::FileSystem)
}

/// Check with extra top-level keys allowed (the variables of an expanded `sweep`), extra
/// folders the recipe may read from, and the loader its files are looked up through.
pub fn check_with(ast: &ast::SourceFile, base_dir: &Path, variables: &[String], allowed_paths: &[PathBuf], loader: &dyn Loader) -> Checked {
    let mut ck = Checker {
        ast,
        base_dir: base_dir.to_path_buf(),
        diags: vec![],
        decls: vec![],
        decl_index: HashMap::new(),
        stage_archs: HashMap::new(),
        data: HashMap::new(),
        synthetic: HashMap::new(),
        examples: HashMap::new(),
        budgets: HashMap::new(),
        models: HashMap::new(),
        visiting: vec![],
        checking: vec![],
        example_facts: Default::default(),
        suggestions_left: 100,
        variables: variables.to_vec(),
        allowed_paths: allowed_paths.to_vec(),
        loader,
    };
    let recipe = ck.run();
    // Every rejection names its reason; should a path ever give up silently, say so rather than
    // print "ok" and fail.
    if recipe.is_none() && !ck.diags.iter().any(|d| d.is_error()) {
        ck.error(Diagnostic::error(Code::E0009, Span::new(0, 0), "the recipe was rejected without a diagnostic")
            .with_hint("this is a fault in roux: please report it with the recipe"));
    }
    if ast.yaml {
        for d in &mut ck.diags {
            if let Some(h) = &mut d.hint {
                *h = yaml_spelling(h);
            }
        }
    }
    let failed = ck.diags.iter().any(|d| d.is_error());
    ck.diags.sort_by_key(|d| (d.span.start, d.span.end));
    ck.diags.dedup();
    Checked { recipe: if failed { None } else { recipe }, diagnostics: ck.diags }
}

/// A hint rewritten for a YAML recipe: every `` `key = value` `` it suggests becomes
/// `` `key: value` ``.
fn yaml_spelling(hint: &str) -> String {
    let mut out = String::with_capacity(hint.len());
    let mut rest = hint;
    while let Some(i) = rest.find('`') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let Some(close) = rest.find('`') else { break };
        let quoted = &rest[..close];
        match quoted.split_once(" = ") {
            Some((key, value)) if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') => {
                out.push_str(key);
                out.push_str(": ");
                out.push_str(value);
            }
            _ => out.push_str(quoted),
        }
        out.push('`');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

impl<'a> Checker<'a> {
    /// Whether the recipe was written in the YAML form.
    pub fn yaml(&self) -> bool {
        self.ast.yaml
    }

    pub fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    pub fn decl(&self, name: &str) -> Option<&'a Decl> {
        self.decl_index.get(name).map(|&i| self.decls[i])
    }

    pub fn decl_names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.decls.iter().map(|d| d.name.name.as_str())
    }

    /// Whether did-you-means over declared names are still given.
    pub fn suggestions_left(&self) -> bool {
        self.suggestions_left > 0
    }

    /// The declared name (of kind `kind`, or any) nearest to `name`, while suggestions last.
    pub fn suggest_decl(&mut self, name: &str, kind: Option<DeclKind>, extra: &[&'a str]) -> Option<&'a str> {
        if self.suggestions_left == 0 {
            return None;
        }
        self.suggestions_left -= 1;
        let decls = self.decls.iter().filter(|d| kind.is_none_or(|k| d.kind == k)).map(|d| d.name.name.as_str());
        did_you_mean(name, extra.iter().copied().chain(decls))
    }

    fn top_scope(&self) -> Scope<'a> {
        vec![&self.ast.body]
    }

    fn run(&mut self) -> Option<Recipe> {
        let body = &self.ast.body;
        for e in &body.entries {
            match e {
                Entry::Decl(d) => {
                    if let Some(prev) = self.decl(&d.name.name) {
                        let kind = prev.kind.keyword();
                        self.error(Diagnostic::error(Code::E0102, d.name.span, format!("`{}` is already declared (as a {kind})", d.name.name))
                            .with_hint("every data set, model, budget and stage needs its own name"));
                    } else {
                        self.decl_index.insert(d.name.name.clone(), self.decls.len());
                        self.decls.push(d);
                    }
                }
                // The front end expands top-level sweeps before checking; none reach here.
                Entry::Sweep(_) => {}
                Entry::Field(_) => {}
            }
        }
        self.check_directory_names();
        // Top-level keys.
        let mut top = Fields::new(None, &vec![], "the experiment", self.ast.name_span);
        top.block = Some(body);
        top.top_level = true;
        let seed = top.int(self, "seed", Some(0), Min::Zero);
        let health = self.check_health(&mut top);
        top.allowed = self.variables.clone();
        top.finish(self);

        let decls = self.decls.clone();
        for d in decls.iter().filter(|d| d.kind == DeclKind::Data) {
            self.data_spec(d);
        }
        let mut models = vec![];
        for d in decls.iter().filter(|d| d.kind == DeclKind::Model) {
            let m = self.check_model(d);
            if let Some(m) = &m {
                self.models.insert(m.name.clone(), m.clone());
            }
            models.push(m);
        }
        self.model_tokenizers();
        let budgets: Vec<Option<BudgetSpec>> = decls.iter().filter(|d| d.kind == DeclKind::Budget).map(|d| self.budget_spec(d)).collect();
        let stages = self.check_stages(&decls);

        let mut data: Vec<Option<DataSpec>> = vec![];
        let mut synthetic: Vec<Option<SyntheticSpec>> = vec![];
        let mut examples: Vec<Option<ExampleSet>> = vec![];
        for d in decls.iter().filter(|d| d.kind == DeclKind::Data) {
            if let Some(s) = self.synthetic.get(&d.name.name) {
                synthetic.push(s.clone());
            } else if let Some(e) = self.examples.get(&d.name.name) {
                examples.push(e.clone());
            } else {
                data.push(self.data.get(&d.name.name).cloned().flatten());
            }
        }
        Some(Recipe {
            experiment: self.ast.name.clone(),
            seed: seed?,
            data: data.into_iter().collect::<Option<Vec<_>>>()?,
            models: models.into_iter().collect::<Option<Vec<_>>>()?,
            stages: stages?,
            synthetic: synthetic.into_iter().collect::<Option<Vec<_>>>()?,
            examples: examples.into_iter().collect::<Option<Vec<_>>>()?,
            budgets: budgets.into_iter().collect::<Option<Vec<_>>>()?,
            health: health?,
            sweep: vec![],
        })
        .map(|mut r| {
            self.attach_chat_templates(&mut r);
            r
        })
        .map(|mut r| {
            self.check_budget_departures(&r);
            self.check_repeats(&r);
            self.check_tokenizers(&mut r);
            r
        })
    }

    /// Check that `e` is a constructor named one of `names`; returns its name, args and block.
    pub fn ctor(
        &mut self,
        e: &'a Expr,
        what: &str,
        names: &[&'static str],
    ) -> Option<(&'static str, &'a [Ident], Option<&'a [ast::Arg]>, Option<&'a ast::Block>)> {
        let ExprKind::Ctor { path, args, block } = &e.kind else {
            self.error(Diagnostic::error(Code::E0120, e.span, format!("expected {what} ({}), found {}", names.join(" | "), eval::describe(e))).with_hint(format!("write `{} {{ … }}`", names[0])));
            return None;
        };
        let full = Expr::path_string(path);
        let span = path.first().map_or(e.span, |p| p.span.join(path[path.len() - 1].span));
        let Some(name) = names.iter().copied().find(|n| *n == full) else {
            // Not one of the names: perhaps a top-level key holding one (`router = r` under
            // `sweep r in [switch, topk]`), read once (a key naming itself is no answer).
            if let ([id], None, None) = (path.as_slice(), args, block) {
                if let Some(f) = self.ast.body.field(&id.name).filter(|f| !std::ptr::eq(&f.value, e) && !self.visiting.contains(&f.key.span.start)) {
                    self.visiting.push(f.key.span.start);
                    let found = self.ctor(&f.value, what, names);
                    self.visiting.pop();
                    return found;
                }
            }
            let mut d = Diagnostic::error(Code::E0130, span, format!("unknown {what} `{full}`"));
            d = match did_you_mean(&full, names.iter().copied()) {
                // `model m = merge(sft.adapter)`: the merged model is written where it is used.
                _ if full == "merge" => d.with_hint("`merge(STAGE.adapter)` is written where a stage takes a model, as in `dpo(merge(sft.adapter), prefs)`; a `model` is declared as `transformer { … }` or `hf(\"dir\")`"),
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("one of {}", names.join(", "))),
            };
            self.error(d);
            return None;
        };
        Some((name, path, args.as_deref(), block.as_ref()))
    }

    /// `decl.key`: computed attributes first (a data set's `vocab`), then the keys of its block.
    fn attribute(&mut self, decl: &'a Decl, attr: &'a Ident) -> Option<f64> {
        // A computed attribute (a data set's `tokens`, a budget's `params`) needs the whole
        // declaration checked; a plain key of its block is evaluated on its own.
        let computed = match decl.kind {
            DeclKind::Data => ["vocab", "context", "tokens"].contains(&attr.name.as_str()),
            DeclKind::Budget => ["params", "tokens", "flops", "loss"].contains(&attr.name.as_str()),
            _ => false,
        };
        if let Some(at) = self.checking.iter().position(|n| *n == decl.name.name).filter(|_| computed) {
            let ring: Vec<&str> = self.checking[at..].iter().map(String::as_str).chain([decl.name.name.as_str()]).collect();
            let through = if ring.len() > 2 { format!(" (through {})", ring.join(" → ")) } else { String::new() };
            self.error(Diagnostic::error(Code::E0112, attr.span, format!("`{}.{}` is read while {} `{}` is being defined{through}", decl.name.name, attr.name, decl.kind.keyword(), decl.name.name))
                .with_hint("break the cycle by giving one of these values as a number"));
            return None;
        }
        if decl.kind == DeclKind::Data {
            let spec = self.data_spec(decl);
            let computed: &[&str] = &["vocab", "context", "tokens"];
            if computed.contains(&attr.name.as_str()) {
                let s = spec?;
                return Some(match attr.name.as_str() {
                    "vocab" if self.vocab_unknown(&s, attr) => return None,
                    "vocab" => s.vocab as f64,
                    "context" => s.context as f64,
                    _ => s.tokens as f64,
                });
            }
        }
        if decl.kind == DeclKind::Budget && ["params", "tokens", "flops", "loss"].contains(&attr.name.as_str()) {
            let b = self.budget_spec(decl)?;
            return Some(match attr.name.as_str() {
                "params" => b.params,
                "tokens" => b.tokens,
                "flops" => b.flops,
                _ => b.loss,
            });
        }
        if let ExprKind::Ctor { block: Some(b), .. } = &decl.value.kind {
            if let Some(f) = b.field(&attr.name) {
                return self.eval_field(f, &vec![&self.ast.body, b]);
            }
            let mut names: Vec<&str> = b.fields().map(|f| f.key.name.as_str()).collect();
            if decl.kind == DeclKind::Data {
                names.extend(["vocab", "context", "tokens"]);
            }
            let mut d = Diagnostic::error(Code::E0111, attr.span, format!("{} `{}` has no attribute `{}`", decl.kind.keyword(), decl.name.name, attr.name));
            d = match did_you_mean(&attr.name, names.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{}.{s}`?", decl.name.name)),
                None => d.with_hint(format!("available: {}", names.join(", "))),
            };
            self.error(d);
            return None;
        }
        self.error(Diagnostic::error(Code::E0111, attr.span, format!("{} `{}` has no attribute `{}`", decl.kind.keyword(), decl.name.name, attr.name))
            .with_hint("only keys of its `{ … }` block can be read"));
        None
    }

    fn example_attr(&self, d: &Decl) -> &'static str {
        match d.kind {
            DeclKind::Data => "vocab",
            DeclKind::Model => "d_model",
            DeclKind::Stage => "model",
            DeclKind::Budget => "tokens",
        }
    }

    pub fn span_of_path(path: &[Ident]) -> Span {
        path[0].span.join(path[path.len() - 1].span)
    }
}
