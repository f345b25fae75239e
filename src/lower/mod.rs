//! Stage 3, lower: typed recipe → graphs. A model becomes a petgraph DAG of ops with shapes and
//! named parameters (built in `arith`, re-exported here); the stages become a second DAG; both
//! render as DOT and JSON. Pure: no libtorch.

pub mod render;
pub mod stage_graph;

pub use crate::arith::graph::{lower_model, Dim, Edge, ModelGraph, Op, OpKind, Param, ParamInit};
pub use crate::arith::heads::ScalarHead;
pub use crate::arith::lora::{lora_linears, lora_matches, lora_params, lora_targetable, lora_targets, trained_and_held, Linear};
pub use stage_graph::{lower_stages, StageGraph};
