//! The stage DAG: an edge from each stage to the stages that consume its artifacts.
//! The checker has already rejected cycles, so the topological order always exists.

use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

use crate::recipe::{Recipe, StageSpec};

pub struct StageGraph {
    pub graph: DiGraph<StageSpec, ()>,
}

impl StageGraph {
    /// Stages in an order where every stage comes after the stages it reads from.
    pub fn order(&self) -> Vec<&StageSpec> {
        petgraph::algo::toposort(&self.graph, None)
            .expect("checked recipes have acyclic stage graphs")
            .into_iter()
            .map(|n| &self.graph[n])
            .collect()
    }
}

pub fn lower_stages(r: &Recipe) -> StageGraph {
    let mut graph = DiGraph::new();
    let idx: HashMap<String, NodeIndex> = r.stages.iter().map(|s| (s.name.clone(), graph.add_node(s.clone()))).collect();
    for s in &r.stages {
        for dep in &s.after {
            if let (Some(&a), Some(&b)) = (idx.get(dep), idx.get(&s.name)) {
                graph.add_edge(a, b, ());
            }
        }
    }
    StageGraph { graph }
}
