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
    /// Present when there were no errors.
    pub recipe: Option<Recipe>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Largest recipe accepted; anything larger is not a hand-written recipe.
const MAX_RECIPE_BYTES: u64 = 4 << 20;

/// Errors reading the file (not the recipe's fault): exit code 2 at the CLI.
pub fn read(path: &Path) -> Result<Source, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if meta.len() > MAX_RECIPE_BYTES {
        return Err(format!("{}: {} bytes is too large for a recipe (limit {MAX_RECIPE_BYTES})", path.display(), meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!("{}: not UTF-8 text (invalid byte at offset {}); a recipe must be UTF-8", path.display(), e.utf8_error().valid_up_to())
    })?;
    Ok(Source { path: path.to_path_buf(), text })
}

pub fn compile_source(source: Source) -> Compiled {
    let base = source.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    match crate::syntax::parse(&source.text) {
        Err(d) => Compiled { source, recipe: None, diagnostics: vec![d] },
        Ok(ast) => {
            let checked = crate::check::check(&ast, &base);
            Compiled { source, recipe: checked.recipe, diagnostics: checked.diagnostics }
        }
    }
}

pub fn compile(path: &Path) -> Result<Compiled, String> {
    Ok(compile_source(read(path)?))
}
