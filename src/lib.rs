//! roux: a declarative language for language-model experiments.
//!
//! ```text
//!  recipe text ─parse─▶ AST ─check─▶ Recipe ─lower─▶ graphs ─run─▶ artifacts
//!                                        └─plan─▶ params, FLOPs, memory
//! ```
//! `syntax` (parse), `check`, `lower` and `plan` are pure and build without libtorch;
//! `run` (feature `torch`) executes the graphs on tch.

pub mod check;
pub mod diag;
pub mod frontend;
pub mod logging;
pub mod lower;
pub mod plan;
pub mod posttrain;
pub mod recipe;
pub mod report;
pub mod rng;
pub mod scaling;
pub mod schedule;
pub mod sweep;
pub mod synthetic;
pub mod syntax;

#[cfg(feature = "torch")]
pub mod run;
