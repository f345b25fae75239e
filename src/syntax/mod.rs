//! Stage 1, parse: recipe text → AST with spans. Pure: no I/O, no libtorch.

pub mod ast;
mod breaks;
mod depth;
mod grammar;
pub mod overrides;
mod parse;
pub mod print;
pub mod yaml;
pub mod yaml_comments;

pub use parse::{parse, parse_expr};

/// A number as recipes write it (`1e9`, `20M`, `1.5B`), for command-line flags.
pub fn parse_number(text: &str) -> Option<f64> {
    let v = parse::number_value(text.trim());
    v.is_finite().then_some(v)
}
