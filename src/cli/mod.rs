//! Subcommands. Only this layer prints; everything below returns data.

pub mod check;
pub mod exec;
pub mod fmt;
pub mod launch;
pub mod plan;
pub mod scaling;

/// Folders recipes may read outside their project (`--allow-path`), set once in main.
pub static ALLOWED_PATHS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

pub fn allowed_paths() -> &'static [std::path::PathBuf] {
    ALLOWED_PATHS.get().map_or(&[], |v| v.as_slice())
}

/// `--set path=value` overrides, set once in main.
pub static OVERRIDES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// How every subcommand compiles a recipe: allowed paths and overrides from the command line.
pub fn options() -> roux::frontend::Options {
    roux::frontend::Options { allowed: allowed_paths().to_vec(), overrides: OVERRIDES.get().cloned().unwrap_or_default() }
}
