//! Subcommands. Only this layer prints; everything below returns data.

pub mod check;
pub mod exec;
pub mod plan;
pub mod scaling;
