//! The arithmetic of a model, below check in the pipeline: its ops and named parameters as a
//! graph (`graph.rs`), LoRA's targets (`lora.rs`), the scalar heads post-training adds
//! (`heads.rs`), and what it costs: parameters, FLOPs, memory, sizing to a parameter count
//! (`count.rs`). Check uses it to size `params = N` models and test budgets; lower and plan
//! build on it; run builds its parameters from the same list. Pure: no I/O, no libtorch.

pub mod count;
pub mod graph;
pub mod heads;
pub mod lora;

pub use count::{plan_model, size_model, ModelPlan};
pub use graph::{lower_model, Dim, ModelGraph, Op, OpKind, Param, ParamInit};
pub use heads::ScalarHead;
pub use lora::{lora_linears, lora_matches, lora_params, lora_targetable, lora_targets, Linear};

/// The largest value of each size key: far beyond any published model, small enough that a
/// model's graph, parameter count and memory plan stay cheap to build and exact to count.
pub const SIZE_LIMITS: &[(&str, u64)] = &[
    ("layers", 10_000),
    ("d_model", 1 << 20),
    ("hidden", 1 << 24),
    ("heads", 1 << 16),
    ("kv_heads", 1 << 16),
    ("head_dim", 1 << 16),
    ("vocab", 1 << 24),
    ("context", 1 << 24),
    ("experts", 1 << 16),
    ("k", 1 << 16),
    ("batch", 1 << 24),
    ("rank", 1 << 20),
    ("epochs", 1 << 20),
    ("minibatches", 1 << 20),
    ("max_new", 1 << 20),
    // Synthetic sets are generated in memory.
    ("examples", 1 << 24),
    ("pairs", 1 << 24),
    // Each is a model an isoflop sweep trains per budget, and that check and plan size.
    ("sizes", 100),
    ("eval_examples", 1 << 24),
    ("tasks", 1 << 16),
    // Best-of-n's responses a prompt, each sampled and scored every step.
    ("n", 1024),
    ("dim", 1 << 20),
    ("outputs", 1 << 20),
    // Muon's Newton–Schulz iterations per update (torch.optim.Muon refuses 100 or more).
    ("ns_steps", 99),
    // An attention window (also below the context).
    ("window", 1 << 24),
    // How far `compare` moves its window over a corpus (at most a context).
    ("stride", 1 << 24),
];


/// The largest value of size key `key` (`SIZE_LIMITS`).
pub fn size_limit(key: &str) -> u64 {
    SIZE_LIMITS.iter().find(|(k, _)| *k == key).map_or(1 << 40, |(_, m)| *m)
}
