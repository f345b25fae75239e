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
    /// Present when there were no errors (for a sweep: its first point).
    pub recipe: Option<Recipe>,
    /// Every point of a `sweep` (empty without one), present when no point had errors.
    pub points: Vec<Recipe>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
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
    let text = crate::fsio::read_text(path, MAX_RECIPE_BYTES).map_err(|e| format!("{e}; a recipe is a UTF-8 text file of at most {MAX_RECIPE_BYTES} bytes"))?;
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

/// Compile with options. Overrides' text is appended to the source (as `--set …` lines) so their
/// diagnostics render with the override shown.
pub fn compile_source_with(mut source: Source, opts: &Options) -> Compiled {
    let allowed = opts.allowed.as_slice();
    let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let mut ast = match parse_source(&source) {
        Err(d) => return Compiled { source, recipe: None, points: vec![], diagnostics: vec![d] },
        Ok(ast) => ast,
    };
    if !opts.overrides.is_empty() {
        let at = source.text.len();
        source.text.push_str(&crate::syntax::overrides::source_lines(&opts.overrides));
        let diagnostics = crate::syntax::overrides::apply(&mut ast, &opts.overrides, at);
        if !diagnostics.is_empty() {
            return Compiled { source, recipe: None, points: vec![], diagnostics };
        }
    }
    if !ast.body.entries.iter().any(|e| matches!(e, crate::syntax::ast::Entry::Sweep(_))) {
        let checked = crate::check::check_with(&ast, &base, &[], allowed, &crate::check::loader::FileSystem);
        return Compiled { source, recipe: checked.recipe, points: vec![], diagnostics: checked.diagnostics };
    }
    let expanded = match crate::sweep::expand(&ast) {
        Ok(v) => v,
        Err(diagnostics) => return Compiled { source, recipe: None, points: vec![], diagnostics },
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
    for (point, label) in &expanded {
        let checked = crate::check::check_with(point, &base, &variables, allowed, &crate::check::loader::FileSystem);
        failed |= checked.recipe.is_none();
        points.extend(checked.recipe);
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
    Compiled { source, recipe: points.first().cloned(), points, diagnostics }
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
