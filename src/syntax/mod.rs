//! Stage 1, parse: recipe text → AST with spans. Pure: no I/O, no libtorch.

pub mod ast;
mod parse;
pub mod print;

pub use parse::parse;
