//! Model definitions: a transformer's dimensions, attention, MLPs and mixtures of experts.

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
    Swiglu,
    /// GELU-gated (Shazeer 2020's GEGLU, Gemma's MLP): gelu(x W1) ⊙ (x W3), then W2.
    Geglu,
}

impl Activation {
    /// Gated: a third matrix (w3) whose output the activated one multiplies.
    pub fn gated(self) -> bool {
        matches!(self, Activation::Swiglu | Activation::Geglu)
    }
}

/// Where each block's norms sit around its attention and its MLP.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// On each sublayer's input (GPT-2, Llama).
    #[default]
    Pre,
    /// On each sublayer's output, before the residual adds it (OLMo 2).
    Post,
    /// Both (Gemma 2 and 3): four norms a block.
    Sandwich,
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
    /// The shared experts' hidden width, when not the routed experts' (Qwen2-MoE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_hidden: Option<usize>,
    /// The shared experts' output scaled by sigmoid(x·g), a learned gate (Qwen2-MoE).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared_gate: bool,
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
    /// Biases on the query, key and value projections only (Qwen2), whatever `bias` says.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
    /// RMSNorm over each head's queries and keys before the rotary embedding (Qwen3, OLMo 2).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// With `qk_norm`: one RMSNorm over the whole query (and key) projection, not each head's
    /// (OLMoE, OLMo 2).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm_whole: bool,
    /// Where each block's norms sit (`norm_placement`).
    #[serde(default, skip_serializing_if = "is_pre")]
    pub norm_placement: NormPlacement,
    /// Every norm's gain stored as its offset from 1 (scale = 1 + weight; weights start at 0),
    /// as Gemma's RMSNorm.
    #[serde(default, skip_serializing_if = "is_false")]
    pub norm_offset: bool,
    /// The token embeddings multiplied by √d_model on the way in (Gemma).
    #[serde(default, skip_serializing_if = "is_false")]
    pub embed_scale: bool,
    /// The rotary base of the blocks with an attention window, when it differs from the others'
    /// (Gemma 3: 10,000 local, 1,000,000 global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_rope_theta: Option<f64>,
    /// Gemma 2's soft caps: attention scores, and the output logits, pass through c·tanh(x / c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_softcap: Option<f64>,
    /// Each head's size when it is not d_model / heads (Qwen3: 128 at any width).
    #[serde(default, rename = "head_dim", skip_serializing_if = "Option::is_none")]
    pub head_size: Option<usize>,
    /// The norms' ε; absent, 1e-5 for layernorm and 1e-6 for rmsnorm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
    /// The rotary embedding's base; absent, 10000 (Su et al. 2021).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Llama 3's stretching of the rotary embedding's low frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Sliding-window attention (Mistral, Longformer's local attention): each token attends to
    /// itself and the `window − 1` tokens before it, in the blocks `window_layers` names (all
    /// when absent); the others attend to every earlier token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_layers: Option<Vec<usize>>,
    /// Where the initial weights come from, for a model imported with `hf("…")`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

impl Default for ModelSpec {
    /// A one-layer dense GPT-2-style model with every option at its default: the base that
    /// code building a definition by hand (`..ModelSpec::default()`) fills in.
    fn default() -> Self {
        ModelSpec {
            name: String::new(),
            vocab: 256,
            context: 64,
            d_model: 64,
            layers: 1,
            heads: 1,
            kv_heads: 1,
            ffn: MlpSpec { hidden: 256, act: Activation::Gelu },
            moe: None,
            norm: Norm::Layernorm,
            position: Position::Learned,
            tie_embeddings: true,
            dropout: 0.0,
            bias: true,
            qkv_bias: false,
            qk_norm: false,
            qk_norm_whole: false,
            norm_placement: NormPlacement::Pre,
            norm_offset: false,
            embed_scale: false,
            window_rope_theta: None,
            attn_softcap: None,
            logit_softcap: None,
            head_size: None,
            norm_eps: None,
            rope_theta: None,
            rope_scaling: None,
            window: None,
            window_layers: None,
            checkpoint: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_pre(p: &NormPlacement) -> bool {
    *p == NormPlacement::Pre
}

/// Llama 3.1's rope scaling (`rope_type = "llama3"`): wavelengths longer than
/// `original_context / low_freq_factor` are divided by `factor`, shorter than
/// `original_context / high_freq_factor` kept, and those between interpolated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: usize,
}

impl ModelSpec {
    pub fn head_dim(&self) -> usize {
        self.head_size.unwrap_or(self.d_model / self.heads)
    }

    /// The width attention works in: heads × head size (d_model unless `head_dim` is set).
    pub fn attn_dim(&self) -> usize {
        self.heads * self.head_dim()
    }

    pub fn norm_eps(&self) -> f64 {
        self.norm_eps.unwrap_or(match self.norm {
            Norm::Layernorm => 1e-5,
            Norm::Rmsnorm => 1e-6,
        })
    }

    /// The options an imported checkpoint sets, in range (a config file is someone else's data).
    pub fn check_options(&self) -> Result<(), String> {
        if let Some(e) = self.norm_eps.filter(|e| !(*e > 0.0 && *e < 1.0)) {
            return Err(format!("norm ε {e} is not in (0, 1)"));
        }
        if let Some(t) = [self.rope_theta, self.window_rope_theta].into_iter().flatten().find(|t| !(*t >= 1.0 && *t <= 1e12)) {
            return Err(format!("rope θ {t} is not in [1, 1e12]"));
        }
        if let Some(c) = [self.attn_softcap, self.logit_softcap].into_iter().flatten().find(|c| !(*c > 0.0 && *c <= 1e6)) {
            return Err(format!("soft cap {c} is not in (0, 1e6]"));
        }
        if self.window_rope_theta.is_some() && (self.window.is_none() || self.position != Position::Rope) {
            return Err("a windowed blocks' rope θ needs a window and `position = rope`".into());
        }
        if let Some(r) = &self.rope_scaling {
            let ok = (1.0..=1e6).contains(&r.factor) && r.low_freq_factor > 0.0 && r.high_freq_factor > r.low_freq_factor && r.high_freq_factor <= 1e6 && (1..=1 << 20).contains(&r.original_context);
            if !ok {
                return Err(format!(
                    "rope scaling (factor {}, low_freq_factor {}, high_freq_factor {}, original context {}) is out of range: factor in [1, 1e6], 0 < low < high ≤ 1e6",
                    r.factor, r.low_freq_factor, r.high_freq_factor, r.original_context
                ));
            }
        }
        if (self.rope_scaling.is_some() || self.rope_theta.is_some()) && self.position != Position::Rope {
            return Err("rope θ and rope scaling need `position = rope`".into());
        }
        if let Some(w) = self.window.filter(|w| *w == 0 || *w >= self.context) {
            return Err(format!("attention window {w} is not from 1 to the context less one ({})", self.context.saturating_sub(1)));
        }
        if self.window_layers.as_ref().is_some_and(|l| self.window.is_none() || l.iter().any(|b| *b >= self.layers)) {
            let named: Vec<String> = self.window_layers.iter().flatten().map(usize::to_string).collect();
            return Err(format!("windowed blocks [{}] are not blocks of this model of {} with a window", named.join(", "), self.layers));
        }
        Ok(())
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(10000.0)
    }

    /// The attention window of block `block`, if it has one.
    pub fn window_of(&self, block: usize) -> Option<usize> {
        self.window.filter(|_| self.window_layers.as_ref().is_none_or(|l| l.contains(&block)))
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
        if (s.head_size.is_none() && !s.d_model.is_multiple_of(s.heads)) || !s.heads.is_multiple_of(s.kv_heads) || s.head_size.is_some_and(|h| h == 0 || h > MAX) {
            return Err(format!("heads {} must divide d_model {} and kv_heads {} must divide heads", s.heads, s.d_model, s.kv_heads));
        }
        if s.position == Position::Rope && !s.head_dim().is_multiple_of(2) {
            return Err(format!("rope needs an even head size, not {}", s.head_dim()));
        }
        s.check_options()?;
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
