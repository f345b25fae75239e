//! The model graph: one node per op, edges carry activations (residual edges are marked).
//!
//! Parameter names follow the graph path (`blocks.3.attn.q.weight`), so the executor, the
//! checkpoint and the planner all agree on what a parameter is called and how big it is.

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::recipe::{Activation, ModelSpec, Norm, NormPlacement, Position, RouterSpec};

/// A tensor dimension: the batch and sequence sizes are symbolic until run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Dim {
    B,
    T,
    N(usize),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::B => write!(f, "B"),
            Dim::T => write!(f, "T"),
            Dim::N(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Token ids, (B, T).
    Tokens,
    Embedding { vocab: usize, dim: usize },
    /// Learned absolute positions, added to the token embedding.
    PosEmbedding { context: usize, dim: usize },
    Dropout { p: f64 },
    /// Sum of the two inputs (residual connection).
    Add,
    /// With `offset`, the gain is 1 + weight (Gemma's), its weight starting at 0.
    Norm {
        kind: Norm,
        dim: usize,
        bias: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        offset: bool,
    },
    /// Causal multi-head self-attention with q, k, v, o projections; `kv_heads` < `heads` is
    /// grouped-query attention; heads of `head_dim` features each (d_model / heads unless the
    /// model says otherwise), q/k/v biases with `bias` or `qkv_bias`, per-head q/k RMSNorm.
    Attention {
        dim: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        rope: bool,
        bias: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        qkv_bias: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        qk_norm: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        qk_norm_whole: bool,
        dropout: f64,
        /// Sliding-window attention: each token sees itself and the `window − 1` before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<usize>,
        /// The QK-norms' gains as offsets from 1 (`norm_offset`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        norm_offset: bool,
    },
    Mlp { dim: usize, hidden: usize, act: Activation, bias: bool, dropout: f64 },
    /// Mixture of experts: a router and `experts` MLPs (stacked into one tensor per matrix, no
    /// biases), plus `shared` always-on experts.
    Moe {
        dim: usize,
        experts: usize,
        hidden: usize,
        act: Activation,
        shared: usize,
        /// The shared experts' width (`hidden` unless the model says otherwise).
        shared_hidden: usize,
        /// A sigmoid gate on the shared experts' output (Qwen2-MoE).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        shared_gate: bool,
        dropout: f64,
        router: RouterSpec,
        active: f64,
    },
    /// Output logits; `tied` reuses the token embedding matrix.
    Head { vocab: usize, dim: usize, tied: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamInit {
    Zeros,
    Ones,
    Normal { std: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: ParamInit,
    /// Embedding tables (token and position), excluded from Kaplan's non-embedding count.
    pub embedding: bool,
    /// Fraction of this tensor a token uses: k/experts for routed expert stacks, else 1.
    pub active: f64,
}

impl Param {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// A routed expert stack (`<moe>.experts.w1|w2|w3`, experts first), which expert
    /// parallelism divides over processes.
    pub fn routed_expert(&self) -> bool {
        routed_expert(&self.name)
    }
}

/// Whether parameter `name` is a routed expert stack (see `Param::routed_expert`).
pub fn routed_expert(name: &str) -> bool {
    name.rsplit('.').nth(1) == Some("experts")
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// Dotted path; parameters are named `<path>.<weight|bias>`.
    pub path: String,
    #[serde(flatten)]
    pub kind: OpKind,
    pub shape: Vec<Dim>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Edge {
    Data,
    Residual,
}

pub struct ModelGraph {
    pub spec: ModelSpec,
    pub graph: DiGraph<Op, Edge>,
    pub input: NodeIndex,
    pub output: NodeIndex,
}

/// GPT-2's init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2·layers).
const INIT_STD: f64 = 0.02;

impl Op {
    pub fn params(&self, layers: usize) -> Vec<Param> {
        let p = |name: &str, shape: Vec<usize>, init: ParamInit| Param {
            name: format!("{}.{name}", self.path),
            shape,
            init,
            embedding: false,
            active: 1.0,
        };
        let normal = ParamInit::Normal { std: INIT_STD };
        let resid = ParamInit::Normal { std: INIT_STD / (2.0 * layers as f64).sqrt() };
        let linear = |out: &mut Vec<Param>, sub: &str, o: usize, i: usize, bias: bool, init: ParamInit| {
            out.push(p(&format!("{sub}.weight"), vec![o, i], init));
            if bias {
                out.push(p(&format!("{sub}.bias"), vec![o], ParamInit::Zeros));
            }
        };
        let mut out = vec![];
        match &self.kind {
            OpKind::Embedding { vocab, dim } => out.push(Param { embedding: true, ..p("weight", vec![*vocab, *dim], normal) }),
            OpKind::PosEmbedding { context, dim } => out.push(Param { embedding: true, ..p("weight", vec![*context, *dim], normal) }),
            OpKind::Norm { kind, dim, bias, offset } => {
                out.push(p("weight", vec![*dim], if *offset { ParamInit::Zeros } else { ParamInit::Ones }));
                if *bias && *kind == Norm::Layernorm {
                    out.push(p("bias", vec![*dim], ParamInit::Zeros));
                }
            }
            OpKind::Attention { dim, heads, kv_heads, head_dim, bias, qkv_bias, qk_norm, qk_norm_whole, norm_offset, .. } => {
                let (q, kv) = (heads * head_dim, kv_heads * head_dim);
                linear(&mut out, "q", q, *dim, *bias || *qkv_bias, normal);
                linear(&mut out, "k", kv, *dim, *bias || *qkv_bias, normal);
                linear(&mut out, "v", kv, *dim, *bias || *qkv_bias, normal);
                if *qk_norm {
                    let (qn, kn) = if *qk_norm_whole { (q, kv) } else { (*head_dim, *head_dim) };
                    let gain = if *norm_offset { ParamInit::Zeros } else { ParamInit::Ones };
                    out.push(p("q_norm.weight", vec![qn], gain));
                    out.push(p("k_norm.weight", vec![kn], gain));
                }
                linear(&mut out, "o", *dim, q, *bias, resid);
            }
            OpKind::Moe { dim, experts, hidden, act, shared, shared_hidden, shared_gate, router, active, .. } => {
                out.push(p("router.weight", vec![*experts, *dim], normal));
                if matches!(router, RouterSpec::NoisyTopk { .. }) {
                    out.push(p("router.noise.weight", vec![*experts, *dim], ParamInit::Zeros));
                }
                for (group, n, frac, hidden) in [("experts", *experts, active / *experts as f64, *hidden), ("shared", *shared, 1.0, *shared_hidden)] {
                    if n == 0 {
                        continue;
                    }
                    let mut mats = vec![("w1", vec![n, hidden, *dim], normal)];
                    if act.gated() {
                        mats.push(("w3", vec![n, hidden, *dim], normal));
                    }
                    mats.push(("w2", vec![n, *dim, hidden], resid));
                    for (m, shape, init) in mats {
                        out.push(Param { active: frac, ..p(&format!("{group}.{m}"), shape, init) });
                    }
                }
                if *shared_gate && *shared > 0 {
                    out.push(p("shared_gate.weight", vec![1, *dim], normal));
                }
            }
            OpKind::Mlp { dim, hidden, act, bias, .. } => {
                linear(&mut out, "w1", *hidden, *dim, *bias, normal);
                if act.gated() {
                    linear(&mut out, "w3", *hidden, *dim, *bias, normal);
                }
                linear(&mut out, "w2", *dim, *hidden, *bias, resid);
            }
            OpKind::Head { vocab, dim, tied: false } => out.push(p("weight", vec![*vocab, *dim], normal)),
            OpKind::Head { tied: true, .. } | OpKind::Tokens | OpKind::Dropout { .. } | OpKind::Add => {}
        }
        out
    }

    /// Forward FLOPs per token at sequence length `seq`, op by op as in Chinchilla Appendix F:
    /// matmuls count 2 FLOPs per multiply-add; the embedding counts as a (one-hot) matmul,
    /// 2·vocab·d; attention counts the full seq×seq score matrix (no causal halving); norms,
    /// residual adds, dropout, biases and position embeddings are not counted.
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        let t = seq as f64;
        match &self.kind {
            OpKind::Embedding { vocab, dim } => 2.0 * (*vocab as f64) * (*dim as f64),
            OpKind::Attention { dim, heads, kv_heads, head_dim, .. } => {
                let d = *dim as f64;
                let h = *heads as f64;
                let (q, kv) = (h * *head_dim as f64, (*kv_heads * *head_dim) as f64);
                let qkv = 2.0 * d * (q + 2.0 * kv);
                let logits = 2.0 * t * q;
                let softmax = 3.0 * h * t;
                let reduce = 2.0 * t * q;
                let project = 2.0 * q * d;
                qkv + logits + softmax + reduce + project
            }
            OpKind::Mlp { dim, hidden, act, .. } => {
                let mats = if act.gated() { 3.0 } else { 2.0 };
                2.0 * mats * (*dim as f64) * (*hidden as f64)
            }
            OpKind::Moe { dim, experts, hidden, act, shared, shared_hidden, active, .. } => {
                let mats = if act.gated() { 3.0 } else { 2.0 };
                let expert = |h: usize| 2.0 * mats * (*dim as f64) * (h as f64);
                2.0 * (*dim as f64) * (*experts as f64) + active * expert(*hidden) + *shared as f64 * expert(*shared_hidden)
            }
            OpKind::Head { vocab, dim, .. } => 2.0 * (*vocab as f64) * (*dim as f64),
            _ => 0.0,
        }
    }
}

impl ModelGraph {
    /// Every parameter in creation order (topological order of the graph).
    pub fn params(&self) -> Vec<Param> {
        petgraph::algo::toposort(&self.graph, None)
            .expect("model graph is a DAG by construction")
            .into_iter()
            .flat_map(|n| self.graph[n].params(self.spec.layers))
            .collect()
    }

    pub fn topo(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.graph, None).expect("model graph is a DAG by construction")
    }
}

/// One sublayer between the stream `input` and the residual add `out`: pre-norm, `norm` then
/// `op` on the stream; post-norm, `op` on the stream then `norm` of its output; sandwich, `norm`,
/// `op`, then `post` (the edges in the same order for each, so a pre-norm model's graph is what
/// it always was).
fn sublayer(g: &mut DiGraph<Op, Edge>, placement: NormPlacement, input: NodeIndex, norm: NodeIndex, op: NodeIndex, post: Option<NodeIndex>, out: NodeIndex) {
    let (first, second) = if placement == NormPlacement::Post { (op, norm) } else { (norm, op) };
    g.add_edge(input, first, Edge::Data);
    g.add_edge(first, second, Edge::Data);
    g.add_edge(input, out, Edge::Residual);
    match post {
        Some(p) => {
            g.add_edge(second, p, Edge::Data);
            g.add_edge(p, out, Edge::Data);
        }
        None => {
            g.add_edge(second, out, Edge::Data);
        }
    }
}

pub fn lower_model(spec: &ModelSpec) -> ModelGraph {
    let mut g = DiGraph::new();
    let d = spec.d_model;
    let btd = vec![Dim::B, Dim::T, Dim::N(d)];
    let node = |g: &mut DiGraph<Op, Edge>, path: String, kind: OpKind, shape: Vec<Dim>| g.add_node(Op { path, kind, shape });

    let input = node(&mut g, "tokens".into(), OpKind::Tokens, vec![Dim::B, Dim::T]);
    let tok = node(&mut g, "tok_emb".into(), OpKind::Embedding { vocab: spec.vocab, dim: d }, btd.clone());
    g.add_edge(input, tok, Edge::Data);
    let mut x = tok;
    if spec.position == Position::Learned {
        let pos = node(&mut g, "pos_emb".into(), OpKind::PosEmbedding { context: spec.context, dim: d }, vec![Dim::T, Dim::N(d)]);
        g.add_edge(input, pos, Edge::Data);
        let add = node(&mut g, "embed".into(), OpKind::Add, btd.clone());
        g.add_edge(tok, add, Edge::Data);
        g.add_edge(pos, add, Edge::Data);
        x = add;
    }
    if spec.dropout > 0.0 {
        let drop = node(&mut g, "embed_drop".into(), OpKind::Dropout { p: spec.dropout }, btd.clone());
        g.add_edge(x, drop, Edge::Data);
        x = drop;
    }
    let norm = || OpKind::Norm { kind: spec.norm, dim: d, bias: spec.bias, offset: spec.norm_offset };
    for i in 0..spec.layers {
        let pre = format!("blocks.{i}");
        // Pre-norm: each sublayer reads its norm of the stream. Post-norm (OLMo 2): it reads the
        // stream, and its norm of its output joins it.
        let n1 = node(&mut g, format!("{pre}.norm1"), norm(), btd.clone());
        let attn = node(
            &mut g,
            format!("{pre}.attn"),
            OpKind::Attention {
                dim: d,
                heads: spec.heads,
                kv_heads: spec.kv_heads,
                head_dim: spec.head_dim(),
                rope: spec.position == Position::Rope,
                bias: spec.bias,
                qkv_bias: spec.qkv_bias,
                qk_norm: spec.qk_norm,
                qk_norm_whole: spec.qk_norm_whole,
                dropout: spec.dropout,
                window: spec.window_of(i),
                norm_offset: spec.norm_offset,
            },
            btd.clone(),
        );
        // Sandwich norms (Gemma): a second norm on the sublayer's output.
        let sandwich = spec.norm_placement == NormPlacement::Sandwich;
        let p1 = sandwich.then(|| node(&mut g, format!("{pre}.post_norm1"), norm(), btd.clone()));
        let r1 = node(&mut g, format!("{pre}.resid1"), OpKind::Add, btd.clone());
        sublayer(&mut g, spec.norm_placement, x, n1, attn, p1, r1);
        let n2 = node(&mut g, format!("{pre}.norm2"), norm(), btd.clone());
        let kind = match &spec.moe {
            Some(m) if m.layers.contains(&i) => OpKind::Moe {
                dim: d,
                experts: m.experts,
                hidden: m.expert.hidden,
                act: m.expert.act,
                shared: m.shared,
                shared_hidden: m.shared_hidden.unwrap_or(m.expert.hidden),
                shared_gate: m.shared_gate,
                dropout: m.expert_dropout,
                router: m.router.clone(),
                active: m.active_experts(),
            },
            _ => OpKind::Mlp { dim: d, hidden: spec.ffn.hidden, act: spec.ffn.act, bias: spec.bias, dropout: spec.dropout },
        };
        let ffn = node(&mut g, format!("{pre}.ffn"), kind, btd.clone());
        let p2 = sandwich.then(|| node(&mut g, format!("{pre}.post_norm2"), norm(), btd.clone()));
        let r2 = node(&mut g, format!("{pre}.resid2"), OpKind::Add, btd.clone());
        sublayer(&mut g, spec.norm_placement, r1, n2, ffn, p2, r2);
        x = r2;
    }
    let nf = node(&mut g, "norm_f".into(), norm(), btd);
    g.add_edge(x, nf, Edge::Data);
    let head = node(
        &mut g,
        "head".into(),
        OpKind::Head { vocab: spec.vocab, dim: d, tied: spec.tie_embeddings },
        vec![Dim::B, Dim::T, Dim::N(spec.vocab)],
    );
    g.add_edge(nf, head, Edge::Data);
    ModelGraph { spec: spec.clone(), graph: g, input, output: head }
}
