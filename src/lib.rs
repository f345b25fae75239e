//! roux: a declarative language for language-model experiments.
//!
//! ```text
//!  recipe text ─parse─▶ AST ─check─▶ Recipe ─lower─▶ graphs ─run─▶ artifacts
//!                                        └─plan─▶ params, FLOPs, memory
//! ```
//! `syntax` (parse, print/format, the YAML form, `--set` overrides), `check`, `lower` and `plan`
//! are pure and build without libtorch, each importing only the stages before it; `arith` (a
//! model's ops, parameters and costs) sits below check so that check can size and count models.
//! `posttrain` (synthetic tasks, example sets, loss masks, GAE), `scaling` and `report` are pure
//! too. `run` (feature `torch`) executes the graphs on tch; `logging` renders its events. The
//! rooms and their rules: docs/architecture.md.

pub mod arith;
pub mod bounded;
pub mod check;
pub mod diag;
pub mod documents;
pub mod frontend;
pub mod fsio;
pub mod hf;
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

/// The system allocator, counting what a chat template allocates (`bounded`).
#[global_allocator]
static ALLOCATOR: bounded::Counting = bounded::Counting;
