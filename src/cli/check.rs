//! `roux check`: diagnostics for every file, in text, JSON or GitHub annotations.

use std::path::PathBuf;

use crate::DiagFormat;
use roux::diag::{locate_in, render_github_in, render_text_in, Lines, Located};
use roux::frontend::{compile_with, Compiled};

/// Compile a file for a subcommand that needs a valid recipe; prints diagnostics on failure.
/// Err carries the exit code.
pub fn load(file: &std::path::Path) -> Result<Compiled, u8> {
    let c = compile_with(file, &super::options()).map_err(|e| {
        eprintln!("error: {e}");
        2u8
    })?;
    let name = file.display().to_string();
    let lines = Lines::new(&c.source.text);
    for (i, d) in c.diagnostics.iter().enumerate() {
        match i {
            SHOWN => eprintln!("… and {} more diagnostic(s) not shown (`roux check --format json` lists them all)", c.diagnostics.len() - SHOWN),
            i if i > SHOWN => {}
            _ => eprint!("{}", render_text_in(&name, &lines, d)),
        }
    }
    if c.recipe.is_none() {
        eprintln!("{}: {} error(s); nothing was run", name, c.diagnostics.iter().filter(|d| d.is_error()).count());
        return Err(1);
    }
    Ok(c)
}

/// Diagnostics shown per file in text.
const SHOWN: usize = 200;

pub fn run(files: &[PathBuf], format: DiagFormat) -> u8 {
    let mut code = 0u8;
    let mut all: Vec<Located> = vec![];
    for file in files {
        let name = file.display().to_string();
        let c = match compile_with(file, &super::options()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                code = 2;
                continue;
            }
        };
        if c.recipe.is_none() && code == 0 {
            code = 1;
        }
        let lines = Lines::new(&c.source.text);
        for (i, d) in c.diagnostics.iter().enumerate() {
            match format {
                // A person reads the first ones; the rest is counted (JSON and GitHub list all).
                DiagFormat::Text if i == SHOWN => eprintln!("… and {} more diagnostic(s) not shown (`--format json` lists them all)", c.diagnostics.len() - SHOWN),
                DiagFormat::Text if i > SHOWN => {}
                DiagFormat::Text => eprint!("{}", render_text_in(&name, &lines, d)),
                DiagFormat::Github => out!("{}", render_github_in(&name, &lines, d)),
                DiagFormat::Json => all.push(locate_in(&name, &lines, d)),
            }
        }
        if format == DiagFormat::Text {
            let errors = c.diagnostics.iter().filter(|d| d.is_error()).count();
            let warnings = c.diagnostics.iter().filter(|d| d.severity == roux::diag::Severity::Warning).count();
            if errors > 0 {
                eprintln!("{name}: {errors} error(s), {warnings} warning(s)");
            } else {
                eprintln!("{name}: ok{}", if warnings > 0 { format!(" ({warnings} warning(s))") } else { String::new() });
            }
        }
    }
    if format == DiagFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into()));
    }
    code
}
