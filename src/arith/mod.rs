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
pub use lora::{lora_linears, lora_matches, lora_params, lora_targets, Linear};
