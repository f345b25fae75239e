//! Confinement: a recipe is data from possibly someone else, so the files it names resolve
//! relative to it and must stay inside its project (the nearest enclosing folder with `.git`,
//! `Cargo.toml` or `roux.toml`, else the recipe's own folder), or inside a folder the user allowed
//! on the command line (`--allow-path`).

use std::path::{Path, PathBuf};

use super::loader::Loader;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};

/// The project folder of a recipe in `dir`.
pub fn project_root(loader: &dyn Loader, dir: &Path) -> PathBuf {
    let dir = loader.real_path(dir).unwrap_or_else(|| dir.to_path_buf());
    let mut cur = Some(dir.as_path());
    while let Some(d) = cur {
        if loader.is_project_root(d) {
            return d.to_path_buf();
        }
        cur = d.parent();
    }
    dir
}

/// The constructors whose one string argument names a file, relative to the recipe's folder
/// (the kept copy of a run's recipe names it absolutely): every example source not generated,
/// `text` and `fitted`.
pub const PATH_CONSTRUCTORS: &[&str] = &["text", "instructions", "preferences", "feedback", "choices", "fitted"];

/// The one positional string argument of `text("…")` or `fitted("…")`, with its span.
pub fn single_path_arg(args: Option<&[crate::syntax::ast::Arg]>) -> Option<(String, Span)> {
    match args {
        Some([a]) if a.name.is_none() => match &a.value.kind {
            crate::syntax::ast::ExprKind::Str(s) => Some((s.clone(), a.value.span)),
            _ => None,
        },
        _ => None,
    }
}

impl Checker<'_> {
    /// Resolve `file` (as written in the recipe) and check it stays where it may. Returns the
    /// resolved path, or None after reporting E0212.
    pub fn confined(&mut self, file: &str, span: Span) -> Option<PathBuf> {
        let full = self.base_dir.join(file);
        // A missing file is reported by the caller; confinement judges what exists.
        let Some(real) = self.loader.real_path(&full) else { return Some(full) };
        let root = project_root(self.loader, &self.base_dir);
        if real.starts_with(&root) || self.allowed_paths.iter().any(|a| self.loader.real_path(a).is_some_and(|a| real.starts_with(a))) {
            return Some(full);
        }
        self.error(
            Diagnostic::error(Code::E0212, span, format!("`{file}` is outside the recipe's project ({})", root.display()))
                .with_hint(format!("a recipe may only read files inside its project; to allow this one, pass `--allow-path {}`", real.parent().unwrap_or(&real).display())),
        );
        None
    }
}

/// Longest experiment name: it names a directory (most file systems allow 255 bytes).
const MAX_NAME: usize = 255;

impl Checker<'_> {
    /// The experiment's name becomes the directory of its runs (`runs/<experiment>/`): one plain
    /// path component, so no recipe writes outside `--out`.
    /// The names that become directories: the experiment's, and its stages'.
    pub fn check_directory_names(&mut self) {
        self.check_experiment_name();
        self.check_stage_names_apart_in_any_case();
    }

    fn check_experiment_name(&mut self) {
        let name = &self.ast.name;
        let plain = !name.is_empty() && name.len() <= MAX_NAME && !name.starts_with('.') && !name.chars().any(|c| matches!(c, '/' | '\\') || c.is_control());
        if !plain {
            self.error(
                Diagnostic::error(Code::E0213, self.ast.name_span, format!("the experiment's name {name:?} is not a plain name: it names the directory its runs go to"))
                    .with_hint(format!("a name has no `/`, `\\`, or control characters, does not start with `.`, and has at most {MAX_NAME} bytes: `experiment \"my-run\"`")),
            );
        }
    }

    /// Stage names become run directories: two that differ only in case (`sft`, `SFT`) would be
    /// one directory on a file system that ignores case (macOS's and Windows' defaults), and one
    /// stage's run would overwrite or refuse the other's.
    fn check_stage_names_apart_in_any_case(&mut self) {
        let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let stages: Vec<(String, Span)> = self.decls.iter().filter(|d| d.kind == crate::syntax::ast::DeclKind::Stage).map(|d| (d.name.name.clone(), d.name.span)).collect();
        for (name, span) in stages {
            if let Some(first) = seen.insert(name.to_ascii_lowercase(), name.clone()) {
                self.error(
                    Diagnostic::error(Code::E0102, span, format!("stages `{first}` and `{name}` differ only in case: on a file system that ignores case (macOS's, Windows') their run directories would be one"))
                        .with_hint("give one of them another name"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A data source read from a file and missing here would be kept relative in a run's
    /// recipe copy, which then no longer finds its file.
    #[test]
    fn every_example_source_read_from_a_file_is_a_path_constructor() {
        for source in super::super::examples::EXAMPLE_SOURCES.iter().filter(|s| !s.starts_with("synthetic.")) {
            assert!(super::PATH_CONSTRUCTORS.contains(source), "{source}");
        }
    }
}
