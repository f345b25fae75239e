//! The pest parser generated from grammar/roux.pest, and its `Rule`s.

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/roux.pest"]
pub struct RouxParser;
