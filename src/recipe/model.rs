//! Model definitions: a transformer's dimensions, attention, MLPs and mixtures of experts.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
    Swiglu,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Layernorm,
    Rmsnorm,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Learned,
    Rope,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlpSpec {
    pub hidden: usize,
    pub act: Activation,
}

/// How a mixture-of-experts layer picks experts for each token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouterSpec {
    /// Jacobs et al. 1991: a dense softmax gate over all experts; output Σ p_j·expert_j(x).
    Softmax,
    /// Shazeer et al. 2017: H = x·W_g + N(0,1)·softplus(x·W_noise), softmax over the top k.
    NoisyTopk { k: usize, importance_loss: f64, load_loss: f64 },
    /// Fedus et al. 2022: top-1 with a capacity; over-capacity tokens are dropped.
    Switch { capacity_factor: f64, eval_capacity_factor: f64, balance_loss: f64, z_loss: f64, jitter: f64 },
    /// Mixtral: top-k, dropless; `normalize` renormalises the k gates to sum to 1.
    Topk { k: usize, normalize: bool, balance_loss: f64, z_loss: f64 },
    /// Zhou et al. 2022: each expert takes its top tokens; capacity = tokens·factor/experts.
    ExpertChoice { capacity_factor: f64 },
}

impl RouterSpec {
    /// The router a `moe { … }` block gets by default, and Switch's own defaults (Fedus et al.
    /// 2022): capacity factor 1.25 in training and 2.0 in evaluation, balance loss 0.01.
    pub const SWITCH: RouterSpec = RouterSpec::Switch { capacity_factor: 1.25, eval_capacity_factor: 2.0, balance_loss: 0.01, z_loss: 0.0, jitter: 0.0 };

    pub fn name(&self) -> &'static str {
        match self {
            RouterSpec::Softmax => "softmax",
            RouterSpec::NoisyTopk { .. } => "noisy_topk",
            RouterSpec::Switch { .. } => "switch",
            RouterSpec::Topk { .. } => "topk",
            RouterSpec::ExpertChoice { .. } => "expert_choice",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MoeSpec {
    pub experts: usize,
    pub expert: MlpSpec,
    /// Blocks (0-based) whose FFN is this mixture; the others use a dense `expert`-sized MLP.
    pub layers: Vec<usize>,
    /// Always-on experts every token passes through besides the routed ones.
    pub shared: usize,
    /// Dropout inside experts.
    pub expert_dropout: f64,
    pub router: RouterSpec,
}

impl MoeSpec {
    /// Experts a token passes through on average (for active parameters and FLOPs).
    pub fn active_experts(&self) -> f64 {
        match &self.router {
            RouterSpec::Softmax => self.experts as f64,
            RouterSpec::NoisyTopk { k, .. } | RouterSpec::Topk { k, .. } => *k as f64,
            RouterSpec::Switch { .. } => 1.0,
            RouterSpec::ExpertChoice { capacity_factor } => *capacity_factor,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub vocab: usize,
    /// Longest sequence the model accepts (the size of learned position tables).
    pub context: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// The dense FFN (in every block without a mixture).
    pub ffn: MlpSpec,
    pub moe: Option<MoeSpec>,
    pub norm: Norm,
    pub position: Position,
    pub tie_embeddings: bool,
    pub dropout: f64,
    pub bias: bool,
}

impl ModelSpec {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// A model definition read back from a run directory (`resolved.json`'s `model`), which is a
    /// file anyone may have edited: the invariants the checker guarantees for recipes, checked
    /// again so that building the model cannot panic.
    pub fn from_run_json(v: &serde_json::Value) -> Result<ModelSpec, String> {
        let s: ModelSpec = serde_json::from_value(v.clone()).map_err(|e| format!("not a model definition: {e}"))?;
        const MAX: usize = 1 << 20;
        let dims = [("vocab", s.vocab), ("context", s.context), ("d_model", s.d_model), ("heads", s.heads), ("kv_heads", s.kv_heads), ("ffn.hidden", s.ffn.hidden)];
        for (name, v) in dims.iter().chain(&[("layers", s.layers)]) {
            if *v == 0 || *v > MAX {
                return Err(format!("`{name}` = {v} is out of range (1 to {MAX})"));
            }
        }
        if s.d_model % s.heads != 0 || s.heads % s.kv_heads != 0 {
            return Err(format!("heads {} must divide d_model {} and kv_heads {} must divide heads", s.heads, s.d_model, s.kv_heads));
        }
        if s.position == Position::Rope && s.head_dim() % 2 != 0 {
            return Err(format!("rope needs an even head size, not {}", s.head_dim()));
        }
        if !(0.0..1.0).contains(&s.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", s.dropout));
        }
        if let Some(m) = &s.moe {
            let k = match &m.router {
                RouterSpec::NoisyTopk { k, .. } | RouterSpec::Topk { k, .. } => *k,
                _ => 1,
            };
            if m.experts == 0 || m.experts > MAX || m.expert.hidden == 0 || m.expert.hidden > MAX || k == 0 || k > m.experts || m.layers.iter().any(|&l| l >= s.layers) {
                return Err("its mixture of experts is inconsistent (experts, expert size, k or layers)".into());
            }
        }
        Ok(s)
    }
}
