//! Stage 3, lower: typed recipe → graphs. A model becomes a petgraph DAG of ops with shapes and
//! named parameters; the stages become a second DAG. Pure: no libtorch.

pub mod heads;
pub mod lora;
pub mod model_graph;
pub mod render;
pub mod stage_graph;

pub use model_graph::{lower_model, Dim, ModelGraph, Op, OpKind, Param, ParamInit};
pub use heads::ScalarHead;
pub use lora::{lora_linears, lora_matches, lora_params, lora_targets, Linear};
pub use stage_graph::{lower_stages, StageGraph};
