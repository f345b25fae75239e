//! The stage DAG: an edge from each stage to the stages that consume its artifacts.
//! The checker has already rejected cycles, so the topological order always exists.

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use std::collections::BTreeSet;
use std::collections::HashMap;

use crate::recipe::{Recipe, StageSpec};

pub struct StageGraph {
    pub graph: DiGraph<StageSpec, ()>,
}

impl StageGraph {
    /// Stages in an order where every stage comes after the stages it reads from; among the
    /// stages ready to run, the one declared first goes first (Kahn's algorithm), so the order
    /// is the recipe's wherever dependencies allow.
    pub fn order(&self) -> Vec<&StageSpec> {
        let mut indegree: Vec<usize> = self.graph.node_indices().map(|n| self.graph.neighbors_directed(n, Direction::Incoming).count()).collect();
        let mut ready: BTreeSet<usize> = (0..indegree.len()).filter(|&i| indegree[i] == 0).collect();
        let mut out = vec![];
        while let Some(i) = ready.pop_first() {
            let n = NodeIndex::new(i);
            out.push(&self.graph[n]);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.insert(m.index());
                }
            }
        }
        assert_eq!(out.len(), indegree.len(), "checked recipes have acyclic stage graphs");
        out
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
