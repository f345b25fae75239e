//! What a `compare` stage runs, forward only, each policy after the other: generation on held-out
//! prompts, on a multiple-choice set one pass per choice (`posttrain::choices::ROWS` choices
//! at a time), or on a corpus's held-out split one window of the context per `stride` tokens
//! (`ROWS` windows at a time), each of up to the context.

use crate::posttrain::choices::ROWS;
use crate::recipe::{CompareSpec, ExampleSource, Recipe};

/// (steps, tokens, FLOPs, trainable, memory) of `c`, given each architecture's parameters, the
/// activations of a forward pass over some rows of it, and its context.
pub fn plan(r: &Recipe, c: &CompareSpec, n_of: &dyn Fn(&str) -> u64, activations: &dyn Fn(&str, usize) -> u64, ctx_of: &dyn Fn(&str) -> u64) -> (u64, u64, f64, u64, u64) {
    if let Some(d) = r.data(&c.data) {
        // The held-out tokens (bounded by its bytes), each window a context of them.
        let held = (d.tokens as f64 * (1.0 - d.split)).ceil() as u64;
        let windows = |arch: &str| held.div_ceil(c.stride.map_or(ctx_of(arch), |s| (s as u64).min(ctx_of(arch))).max(1));
        let tokens = |arch: &str| windows(arch).saturating_mul(ctx_of(arch));
        let t = c.policies.iter().fold(0u64, |a, (_, p)| a.saturating_add(tokens(&p.arch)));
        let flops = c.policies.iter().map(|(_, p)| 2.0 * n_of(&p.arch) as f64 * tokens(&p.arch) as f64).sum();
        let memory = c.policies.iter().map(|(_, p)| 4 * n_of(&p.arch) + activations(&p.arch, ROWS.min(windows(&p.arch).max(1) as usize))).max().unwrap_or(0);
        return (0, t, flops, 0, memory.saturating_add(9 << 20));
    }
    // Choices scored (at most: every question offering the most), or prompts answered.
    let (rows, passes, batch) = match r.example_set(&c.data).map(|s| &s.source) {
        Some(ExampleSource::Choices { questions, most, .. }) => ((*questions).min(c.examples) * most, 1.0, ROWS),
        _ => (c.examples, c.max_new as f64, 1),
    };
    let tokens = |arch: &str| (rows as u64).saturating_mul(ctx_of(arch));
    let t = c.policies.iter().fold(0u64, |a, (_, p)| a.saturating_add(tokens(&p.arch)));
    let flops = c.policies.iter().map(|(_, p)| 2.0 * n_of(&p.arch) as f64 * tokens(&p.arch) as f64 * passes).sum();
    let memory = c.policies.iter().map(|(_, p)| 4 * n_of(&p.arch) + activations(&p.arch, batch.min(rows.max(1)))).max().unwrap_or(0);
    (0, t, flops, 0, memory.saturating_add(9 << 20))
}
