//! `roux graph --format dot|json`: the model graphs and the stage graph of a recipe.

use petgraph::visit::EdgeRef;
use serde_json::{json, Value};

use super::{Edge, ModelGraph};
use super::stage_graph::StageGraph;

fn shape(op: &super::Op) -> String {
    op.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

/// Text inside a DOT double-quoted string: backslashes and quotes escaped, line breaks as `\n`.
fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\r', "").replace('\n', "\\n")
}

pub fn dot(models: &[ModelGraph], stages: &StageGraph, experiment: &str) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n", dot_escape(experiment));
    for (mi, m) in models.iter().enumerate() {
        out += &format!("  subgraph cluster_model_{mi} {{\n    label=\"model {}\";\n", m.spec.name);
        for n in m.graph.node_indices() {
            let op = &m.graph[n];
            let kind = serde_json::to_value(&op.kind).ok().and_then(|v| v["op"].as_str().map(String::from)).unwrap_or_default();
            out += &format!("    m{mi}_{} [label=\"{}\\n{}  [{}]\"];\n", n.index(), op.path, kind, shape(op));
        }
        for e in m.graph.edge_references() {
            let style = if *e.weight() == Edge::Residual { " [style=dashed, label=\"residual\"]" } else { "" };
            out += &format!("    m{mi}_{} -> m{mi}_{}{};\n", e.source().index(), e.target().index(), style);
        }
        out += "  }\n";
    }
    out += "  subgraph cluster_stages {\n    label=\"stages\";\n";
    for n in stages.graph.node_indices() {
        let s = &stages.graph[n];
        out += &format!("    s{} [label=\"{} = {}\", shape=ellipse];\n", n.index(), s.name, s.kind.name());
    }
    for e in stages.graph.edge_references() {
        let label = artifact_label(&stages.graph[e.source()].name, &stages.graph[e.target()]);
        out += &format!("    s{} -> s{} [label=\"{label}\"];\n", e.source().index(), e.target().index());
    }
    out += "  }\n}\n";
    out
}

/// What flows along a stage edge: the typed artifact the consumer reads from the producer.
fn artifact_label(producer: &str, consumer: &crate::recipe::StageSpec) -> String {
    use crate::recipe::{ModelRef, StageKind, Weights};
    let of = |r: &ModelRef| match &r.weights {
        Weights::Stage { stage } if stage == producer => Some("model"),
        Weights::Merged { stage } if stage == producer => Some("merged adapter"),
        _ => None,
    };
    let mut labels: Vec<&str> = match &consumer.kind {
        StageKind::Train(t) => t.init_from.iter().filter(|s| *s == producer).map(|_| "model").collect(),
        StageKind::Finetune(f) => of(&f.model).into_iter().collect(),
        StageKind::RewardModel(r) => of(&r.model).into_iter().collect(),
        StageKind::Ppo(p) => of(&p.policy).into_iter().map(|_| "policy").chain((p.reward == producer).then_some("reward model")).collect(),
        StageKind::Dpo(d) => of(&d.policy).into_iter().map(|_| "policy").collect(),
        StageKind::Distill(k) => of(&k.student).into_iter().map(|_| "student").chain(of(&k.teacher).map(|_| "teacher")).collect(),
        StageKind::OnlineDpo(o) => of(&o.policy).into_iter().map(|_| "policy").chain(o.reward.model_stages().contains(&producer).then_some("reward model")).collect(),
        StageKind::BestOfN(b) => of(&b.policy).into_iter().map(|_| "policy").chain(b.reward.model_stages().contains(&producer).then_some("reward model")).collect(),
        StageKind::Grpo(g) => of(&g.policy).into_iter().map(|_| "policy").chain(g.reward.model_stages().contains(&producer).then_some("reward model")).collect(),
        StageKind::Compare(c) => c.policies.iter().chain(std::iter::once(&(String::new(), c.reference.clone()))).filter_map(|(_, r)| of(r)).collect(),
        StageKind::Mixture(_) | StageKind::Isoflop(_) => vec![],
    };
    labels.sort();
    labels.dedup();
    labels.join(", ")
}

pub fn json(models: &[ModelGraph], stages: &StageGraph, experiment: &str) -> Value {
    let models: Vec<Value> = models
        .iter()
        .map(|m| {
            let nodes: Vec<Value> = m
                .graph
                .node_indices()
                .map(|n| {
                    let op = &m.graph[n];
                    let mut v = serde_json::to_value(op).unwrap_or(Value::Null);
                    v["id"] = json!(n.index());
                    v["shape"] = json!(op.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>());
                    v["params"] = json!(op.params(m.spec.layers).iter().map(|p| json!({"name": p.name, "shape": p.shape})).collect::<Vec<_>>());
                    v
                })
                .collect();
            let edges: Vec<Value> = m
                .graph
                .edge_references()
                .map(|e| json!({"from": e.source().index(), "to": e.target().index(), "residual": *e.weight() == Edge::Residual}))
                .collect();
            json!({"name": m.spec.name, "nodes": nodes, "edges": edges})
        })
        .collect();
    let stage_nodes: Vec<Value> =
        stages.graph.node_indices().map(|n| json!({"id": n.index(), "name": stages.graph[n].name, "kind": stages.graph[n].kind.name()})).collect();
    let stage_edges: Vec<Value> = stages.graph.edge_references().map(|e| json!({"from": e.source().index(), "to": e.target().index()})).collect();
    json!({"experiment": experiment, "models": models, "stages": {"nodes": stage_nodes, "edges": stage_edges}})
}

#[cfg(test)]
mod tests {
    /// A name that ends in a backslash or holds a quote or a line break stays inside its string.
    #[test]
    fn dot_strings_are_escaped() {
        assert_eq!(super::dot_escape("a\\"), "a\\\\");
        assert_eq!(super::dot_escape("say \"hi\"\nthen"), "say \\\"hi\\\"\\nthen");
    }
}
