//! Read, parse and check a recipe file: the front half of the pipeline in one call.

use std::path::{Path, PathBuf};

use crate::diag::Diagnostic;
use crate::recipe::Recipe;

/// A recipe file with its source text kept for rendering diagnostics.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

pub struct Compiled {
    pub source: Source,
    /// The recipe with its `--set` overrides applied, or read from YAML, printed in roux's form
    /// (None for a `.roux` file without overrides): what a run stores as its `recipe.roux`, so
    /// that the stored file checks and reproduces the run.
    pub resolved: Option<String>,
    /// Present when there were no errors (for a sweep: its first point).
    pub recipe: Option<Recipe>,
    /// Every point of a `sweep` (empty without one), present when no point had errors.
    pub points: Vec<Recipe>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    /// The recipe text a run keeps: the file as written, or the resolved recipe of `--set`s.
    pub fn text_to_keep(&self) -> &str {
        self.resolved.as_deref().unwrap_or(&self.source.text)
    }

    /// The recipes to plan or run: the sweep's points, or the one recipe.
    pub fn recipes(&self) -> Vec<&Recipe> {
        if self.points.is_empty() {
            self.recipe.iter().collect()
        } else {
            self.points.iter().collect()
        }
    }
}

/// Largest recipe accepted; anything larger is not a hand-written recipe.
const MAX_RECIPE_BYTES: u64 = 4 << 20;

/// Errors reading the file (not the recipe's fault): exit code 2 at the CLI.
pub fn read(path: &Path) -> Result<Source, String> {
    let mut text = crate::fsio::read_text(path, MAX_RECIPE_BYTES).map_err(|e| format!("{e}; a recipe is a UTF-8 text file of at most {MAX_RECIPE_BYTES} bytes"))?;
    // A byte-order mark (some Windows editors write one) is no part of the recipe.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(Source { path: path.to_path_buf(), text })
}

pub fn compile_source(source: Source) -> Compiled {
    compile_source_with(source, &Options::default())
}

/// What a compile takes besides the file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Folders outside the recipe's project it may read (`--allow-path`).
    pub allowed: Vec<PathBuf>,
    /// `--set path=value` overrides, applied before checking.
    pub overrides: Vec<String>,
}

/// Whether a file is in the YAML form (by its extension).
pub fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Parse a recipe in either form.
pub fn parse_source(source: &Source) -> Result<crate::syntax::ast::SourceFile, Diagnostic> {
    if is_yaml(&source.path) {
        crate::syntax::yaml::from_yaml(&source.text)
    } else {
        crate::syntax::parse(&source.text)
    }
}

/// Compile, letting the recipe read files under `allowed` besides its own project.
pub fn compile_source_allowing(source: Source, allowed: &[PathBuf]) -> Compiled {
    compile_source_with(source, &Options { allowed: allowed.to_vec(), overrides: vec![] })
}

/// Compile with options. Overrides apply to the parsed recipe; their diagnostics point into the
/// `--set` argument (`Diagnostic::origin`), never past the end of the file.
pub fn compile_source_with(source: Source, opts: &Options) -> Compiled {
    let allowed = opts.allowed.as_slice();
    let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let mut ast = match parse_source(&source) {
        Err(d) => return Compiled { source, resolved: None, recipe: None, points: vec![], diagnostics: vec![d] },
        Ok(ast) => ast,
    };
    // A YAML recipe is kept as the recipe it reads as, in roux's own form.
    let mut resolved = is_yaml(&source.path).then(|| keepable(&ast, &base));
    let (recipe, points, mut diagnostics) = if opts.overrides.is_empty() {
        compile_ast(&ast, &base, allowed)
    } else {
        let diagnostics = crate::syntax::overrides::apply(&mut ast, &opts.overrides, source.text.len());
        if diagnostics.is_empty() {
            resolved = Some(keepable(&ast, &base));
            compile_ast(&ast, &base, allowed)
        } else {
            (None, vec![], diagnostics)
        }
    };
    for d in &mut diagnostics {
        crate::syntax::overrides::relocate(d, &opts.overrides, source.text.len());
    }
    Compiled { source, resolved, recipe, points, diagnostics }
}

/// The recipe printed in roux's form with every file it reads named by its absolute path, as
/// checking resolves it: the copy a run keeps checks from the run's directory and gives the
/// same content hashes as the original.
fn keepable(ast: &crate::syntax::ast::SourceFile, base: &Path) -> String {
    use crate::syntax::ast::ExprKind;
    let mut ast = ast.clone();
    crate::syntax::ast::walk_exprs_mut(&mut ast.body, &mut |e| {
        let ExprKind::Ctor { path, args: Some(args), .. } = &mut e.kind else { return };
        if !(path.len() == 1 && crate::check::paths::PATH_CONSTRUCTORS.contains(&path[0].name.as_str())) {
            return;
        }
        for a in args.iter_mut().filter(|a| a.name.is_none()) {
            if let ExprKind::Str(s) = &mut a.value.kind {
                let full = base.join(&*s);
                *s = std::path::absolute(&full).unwrap_or(full).to_string_lossy().into_owned();
            }
        }
    });
    crate::syntax::print::print(&ast)
}

/// Check a parsed recipe, expanding its sweeps: the recipe (a sweep's first point), every point,
/// and the diagnostics.
fn compile_ast(ast: &crate::syntax::ast::SourceFile, base: &Path, allowed: &[PathBuf]) -> (Option<Recipe>, Vec<Recipe>, Vec<Diagnostic>) {
    if !ast.body.entries.iter().any(|e| matches!(e, crate::syntax::ast::Entry::Sweep(_))) {
        let checked = crate::check::check_with(ast, base, &[], allowed, &crate::check::loader::FileSystem);
        return (checked.recipe, vec![], checked.diagnostics);
    }
    let expanded = match crate::sweep::expand(ast) {
        Ok(v) => v,
        Err(diagnostics) => return (None, vec![], diagnostics),
    };
    // Check every point; a diagnostic found at several points is reported once, naming the first.
    let mut diagnostics: Vec<Diagnostic> = vec![];
    let mut seen: Vec<(&'static str, crate::diag::Span, String)> = vec![];
    let mut points = vec![];
    let mut failed = false;
    let variables: Vec<String> = ast
        .body
        .entries
        .iter()
        .filter_map(|e| match e {
            crate::syntax::ast::Entry::Sweep(s) => Some(s.var.name.clone()),
            _ => None,
        })
        .collect();
    for point in &expanded {
        let label = point.label();
        let checked = crate::check::check_with(&point.ast, base, &variables, allowed, &crate::check::loader::FileSystem);
        failed |= checked.recipe.is_none();
        points.extend(checked.recipe.map(|r| Recipe { sweep: point.bindings.clone(), ..r }));
        for mut d in checked.diagnostics {
            let key = (d.code, d.span, d.message.clone());
            if !seen.contains(&key) {
                seen.push(key);
                d.message = format!("[sweep {label}] {}", d.message);
                diagnostics.push(d);
            }
        }
    }
    if failed {
        points.clear();
    }
    (points.first().cloned(), points, diagnostics)
}

pub fn compile(path: &Path) -> Result<Compiled, String> {
    Ok(compile_source(read(path)?))
}

pub fn compile_allowing(path: &Path, allowed: &[PathBuf]) -> Result<Compiled, String> {
    Ok(compile_source_allowing(read(path)?, allowed))
}

pub fn compile_with(path: &Path, opts: &Options) -> Result<Compiled, String> {
    Ok(compile_source_with(read(path)?, opts))
}
