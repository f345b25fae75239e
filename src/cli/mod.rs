//! Subcommands. Only this layer prints; everything below returns data.

pub mod check;
pub mod exec;
pub mod plan;
pub mod scaling;

/// Folders recipes may read outside their project (`--allow-path`), set once in main.
pub static ALLOWED_PATHS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

pub fn allowed_paths() -> &'static [std::path::PathBuf] {
    ALLOWED_PATHS.get().map_or(&[], |v| v.as_slice())
}
