//! `model NAME = transformer { … }`

use super::fields::Fields;
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::*;
use crate::syntax::ast::Decl;

/// The most parameters a model may have: a thousand times the largest published dense models,
/// and far enough below 2^64 that every count and byte total of a plan is exact.
pub const MAX_PARAMS: f64 = 1e15;

impl<'a> Checker<'a> {
    pub fn check_model(&mut self, d: &'a Decl) -> Option<ModelSpec> {
        let (kind, path, args, block) = self.ctor(&d.value, "model architecture", &["transformer", "hf"])?;
        if kind == "hf" {
            return self.check_hf(d, args, block);
        }
        if let Some(a) = args {
            if !a.is_empty() {
                self.error(Diagnostic::error(Code::E0104, d.value.span, "`transformer` takes no arguments")
                    .with_hint("configure it in its `{ … }` block"));
            }
        }
        let at = Checker::span_of_path(path);
        let mut f = Fields::new(block, &self.top_scope(), format!("transformer `{}`", d.name.name), at);
        let vocab = f.size(self, "vocab", None);
        let context = f.size(self, "context", None);
        // `params = N` sizes the model: width, depth and heads are derived, not given.
        let sized = f.field("params").is_some();
        let target = if sized { f.ranged(self, "params", None, 0.0, true, MAX_PARAMS, false) } else { None };
        let aspect = f.positive(self, "aspect", Some(32.0));
        let head_dim = f.size(self, "head_dim", Some(32));
        if sized {
            for key in ["d_model", "layers", "heads"] {
                if f.field(key).is_some() {
                    self.error(Diagnostic::error(Code::E0107, f.key_span(key), format!("give `params` or `{key}`, not both"))
                        .with_hint("with `params`, roux derives d_model, layers and heads from `aspect` (d_model / layers) and `head_dim`"));
                }
            }
        }
        let d_model = if sized { Some(1) } else { f.size(self, "d_model", None) };
        let layers = if sized { Some(1) } else { f.size(self, "layers", None) };
        let heads = if sized { Some(1) } else { f.size(self, "heads", None) };
        let kv_heads = f.field("kv_heads").map(|_| ()).and_then(|_| f.size(self, "kv_heads", None));
        let kv_span = f.value_span("kv_heads");
        let norm = f.sym(self, "norm", &["layernorm", "rmsnorm"], Some("layernorm"));
        let position = f.sym(self, "position", &["learned", "rope"], Some("learned"));
        let tie = f.bool(self, "tie_embeddings", true);
        let dropout = f.ranged(self, "dropout", Some(0.0), 0.0, false, 1.0, true);
        let bias = f.bool(self, "bias", true);
        let options = self.pretrained_options(&mut f);
        let window = self.check_window(&mut f, context, layers, sized);
        let explicit_head = !sized && f.field("head_dim").is_some();
        let (ffn, moe) = match f.field("ffn") {
            Some(field) if matches!(field.value.as_ctor_name().as_deref(), Some("moe")) => {
                f.field("ffn");
                let moe = self.check_moe(field, &f.scope, d_model, layers);
                (moe.as_ref().map(|m| m.expert.clone()), moe.map(Some))
            }
            _ => (self.check_ffn(&mut f, d_model), Some(None)),
        };
        let heads_span = f.value_span("heads");
        let pos_span = f.value_span("position");
        f.finish(self);

        let user_hidden = block.and_then(|b| b.field("ffn")).is_some_and(|ffn| {
            matches!(&ffn.value.kind, crate::syntax::ast::ExprKind::Ctor { block: Some(b), .. } if b.field("hidden").is_some())
        });
        let (d_model, heads) = (d_model?, heads?);
        if !explicit_head && d_model % heads != 0 {
            let near: Vec<String> = (1..=d_model.min(4096)).filter(|h| d_model % h == 0).map(|h| h.to_string()).collect();
            let near = nearest(&near, heads);
            self.error(Diagnostic::error(Code::E0220, heads_span, format!("heads = {heads} does not divide d_model = {d_model}"))
                .with_hint(format!("each head gets d_model / heads dimensions; try heads = {near}")));
            return None;
        }
        let kv_heads = kv_heads.unwrap_or(heads);
        if heads % kv_heads != 0 {
            self.error(Diagnostic::error(Code::E0226, kv_span, format!("kv_heads = {kv_heads} does not divide heads = {heads}"))
                .with_hint("each key/value head serves heads / kv_heads query heads"));
            return None;
        }
        let position = match position? {
            "rope" => Position::Rope,
            _ => Position::Learned,
        };
        // Sized models: heads = d_model / head_dim, so rope needs an even head_dim.
        let head_size = if sized || explicit_head { head_dim? } else { d_model / heads };
        if position == Position::Rope && head_size % 2 != 0 {
            self.error(Diagnostic::error(Code::E0221, pos_span, format!("rope needs an even head size, but it is {head_size}"))
                .with_hint("choose heads so that d_model / heads is even"));
            return None;
        }
        let spec = ModelSpec {
            name: d.name.name.clone(),
            vocab: vocab?,
            context: context?,
            d_model,
            layers: layers?,
            heads,
            kv_heads,
            ffn: ffn?,
            moe: moe?,
            norm: if norm? == "rmsnorm" { Norm::Rmsnorm } else { Norm::Layernorm },
            position,
            tie_embeddings: tie?,
            dropout: dropout?,
            bias: bias?,
            head_size: explicit_head.then_some(head_size),
            checkpoint: None,
            window: window.clone()?.0,
            window_layers: window?.1,
            ..options?
        };
        if (spec.rope_theta.is_some() || spec.rope_scaling.is_some()) && spec.position != Position::Rope {
            return self.rope_options_without_rope(pos_span);
        }
        if spec.window_rope_theta.is_some() && (spec.window.is_none() || spec.position != Position::Rope) {
            self.error(Diagnostic::error(Code::E0221, pos_span, "`window_rope_theta` sets the rotary base of the blocks with an attention window, but this model has no window or no rope")
                .with_hint("add `window = …` and `position = rope`, or leave it out"));
            return None;
        }
        if !sized {
            return self.countable(spec, d.name.span);
        }
        if user_hidden {
            self.error(Diagnostic::error(Code::E0107, pos_span, "a model sized by `params` derives its FFN width (4 × d_model)")
                .with_hint("leave `hidden` out of `ffn`, or give d_model, layers and heads instead of params"));
            return None;
        }
        self.size_model(spec, target?, aspect?, head_dim?, d.name.span)
    }

    /// A list of 0-based block indices of a model of `n` blocks (`field`'s value), sorted, each
    /// once; `what` names the option in the hint.
    pub(super) fn block_list(&mut self, field: &'a crate::syntax::ast::Field, scope: &super::eval::Scope<'a>, n: usize, what: &str) -> Option<Vec<usize>> {
        let key = &field.key.name;
        let crate::syntax::ast::ExprKind::List(items) = &field.value.kind else {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`{key}` expects a list of block indices")).with_hint(format!("write `{key} = [1, 3]`")));
            return None;
        };
        let mut out = vec![];
        for it in items {
            let v = self.eval_num(it, scope)?;
            if v.fract() != 0.0 || v < 0.0 || v >= n as f64 {
                self.error(Diagnostic::error(Code::E0231, it.span, format!("block {v} does not exist: the model has {n} blocks (0 to {})", n - 1))
                    .with_hint(format!("{what} names blocks by 0-based index")));
                return None;
            }
            out.push(v as usize);
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// `window = W` (every block, or those `window_layers` names) for a model of `context`
    /// positions and `layers` blocks (`sized`: derived from `params`, so no block can be named):
    /// W from 1 to the context less one (a window as long as the context is full attention).
    fn check_window(&mut self, f: &mut Fields<'a>, context: Option<usize>, layers: Option<usize>, sized: bool) -> Option<(Option<usize>, Option<Vec<usize>>)> {
        let list = f.field("window_layers");
        if f.field("window").is_none() {
            if let Some(l) = list {
                self.error(Diagnostic::error(Code::E0107, l.key.span, "`window_layers` names the blocks with an attention window, but there is no `window`")
                    .with_hint("add `window = 4096` (each token attends to itself and the 4095 before it)"));
                return None;
            }
            return Some((None, None));
        }
        let w = f.size(self, "window", None)?;
        let context = context?;
        if w >= context {
            self.error(Diagnostic::error(Code::E0202, f.value_span("window"), format!("window = {w} is not shorter than the context ({context}): every token already attends to all before it"))
                .with_hint("leave `window` out for full attention"));
            return None;
        }
        let blocks = match (list, layers) {
            (Some(l), _) if sized => {
                self.error(Diagnostic::error(Code::E0107, l.key.span, "a model sized by `params` derives its depth, so `window_layers` cannot name its blocks")
                    .with_hint("give d_model, layers and heads instead of params, or leave `window_layers` out (a window in every block)"));
                return None;
            }
            (Some(l), Some(n)) => Some(self.block_list(l, &f.scope.clone(), n, "`window_layers`")?),
            // (The depth was refused already.)
            (Some(_), None) => return None,
            (None, _) => None,
        };
        Some((Some(w), blocks))
    }

    /// The model, if its parameter count stays within what plans count exactly.
    pub(super) fn countable(&mut self, spec: ModelSpec, span: crate::diag::Span) -> Option<ModelSpec> {
        let n: f64 = crate::arith::lower_model(&spec).params().iter().map(|p| p.shape.iter().map(|&d| d as f64).product::<f64>()).sum();
        if n > MAX_PARAMS {
            self.error(Diagnostic::error(Code::E0202, span, format!("model `{}` has {n:.3e} parameters", spec.name))
                .with_hint(format!("roux plans models of up to {MAX_PARAMS:.0e} parameters; make it narrower or shallower")));
            return None;
        }
        Some(spec)
    }

    /// Size a model to `target` parameters (see `plan::size_model`); reported as a note.
    fn size_model(&mut self, base: ModelSpec, target: f64, aspect: f64, head_dim: usize, span: crate::diag::Span) -> Option<ModelSpec> {
        let (s, n) = crate::arith::size_model(&base, target, aspect, head_dim);
        self.error(
            Diagnostic::note(Code::N0402, span, format!("sized `{}` for params = {target:.4e}: d_model = {}, layers = {}, heads = {} → {n} parameters", s.name, s.d_model, s.layers, s.heads))
                .with_hint(format!("d_model ≈ aspect ({aspect}) × layers, in multiples of head_dim ({head_dim})")),
        );
        Some(s)
    }

    /// The options pretrained architectures need (`qkv_bias`, `qk_norm`, `qk_norm_whole`,
    /// `norm_placement`, `norm_offset`, `embed_scale`, `window_rope_theta`, `attn_softcap`,
    /// `logit_softcap`, `norm_eps`, `rope_theta`, `rope_scaling`), as a definition holding only them.
    fn pretrained_options(&mut self, f: &mut Fields<'a>) -> Option<ModelSpec> {
        let qkv_bias = f.bool(self, "qkv_bias", false);
        let qk_norm = f.bool(self, "qk_norm", false);
        let qk_norm_whole = f.bool(self, "qk_norm_whole", false);
        let placement = f.sym(self, "norm_placement", &["pre", "post", "sandwich"], Some("pre"));
        let norm_offset = f.bool(self, "norm_offset", false);
        let embed_scale = f.bool(self, "embed_scale", false);
        let window_rope_theta = f.field("window_rope_theta").map(|_| f.ranged(self, "window_rope_theta", None, 1.0, false, 1e12, false));
        let attn_softcap = f.field("attn_softcap").map(|_| f.ranged(self, "attn_softcap", None, 0.0, true, 1e6, false));
        let logit_softcap = f.field("logit_softcap").map(|_| f.ranged(self, "logit_softcap", None, 0.0, true, 1e6, false));
        let norm_eps = f.field("norm_eps").map(|_| f.ranged(self, "norm_eps", None, 0.0, true, 1.0, true));
        let rope_theta = f.field("rope_theta").map(|_| f.ranged(self, "rope_theta", None, 1.0, false, 1e12, false));
        let rope_scaling = f.field("rope_scaling").map(|field| self.check_rope_scaling(&field.value, &f.scope));
        Some(ModelSpec {
            qkv_bias: qkv_bias?,
            // One norm over the whole projection is a kind of QK-norm: it implies it.
            qk_norm: qk_norm? || qk_norm_whole?,
            qk_norm_whole: qk_norm_whole?,
            norm_placement: match placement? {
                "post" => crate::recipe::NormPlacement::Post,
                "sandwich" => crate::recipe::NormPlacement::Sandwich,
                _ => crate::recipe::NormPlacement::Pre,
            },
            norm_offset: norm_offset?,
            embed_scale: embed_scale?,
            window_rope_theta: window_rope_theta.map(|e| e.ok_or(())).transpose().ok()?,
            attn_softcap: attn_softcap.map(|e| e.ok_or(())).transpose().ok()?,
            logit_softcap: logit_softcap.map(|e| e.ok_or(())).transpose().ok()?,
            norm_eps: norm_eps.map(|e| e.ok_or(())).transpose().ok()?,
            rope_theta: rope_theta.map(|e| e.ok_or(())).transpose().ok()?,
            rope_scaling: rope_scaling.map(|e| e.ok_or(())).transpose().ok()?,
            ..ModelSpec::default()
        })
    }

    fn rope_options_without_rope(&mut self, span: crate::diag::Span) -> Option<ModelSpec> {
        self.error(Diagnostic::error(Code::E0221, span, "`rope_theta` and `rope_scaling` set the rotary embedding, but this model has learned positions")
            .with_hint("add `position = rope`, or leave them out"));
        None
    }

    /// `rope_scaling = llama3 { factor = 8, low_freq_factor = 1, high_freq_factor = 4, original_context = 8192 }`.
    fn check_rope_scaling(&mut self, e: &'a crate::syntax::ast::Expr, scope: &super::eval::Scope<'a>) -> Option<RopeScaling> {
        let (_, path, _, block) = self.ctor(e, "rope scaling", &["llama3"])?;
        let mut f = Fields::new(block, scope, "llama3 rope scaling", Checker::span_of_path(path));
        let factor = f.ranged(self, "factor", None, 1.0, false, 1e6, false);
        let low = f.ranged(self, "low_freq_factor", Some(1.0), 0.0, true, 1e6, false);
        let high = f.ranged(self, "high_freq_factor", Some(4.0), 0.0, true, 1e6, false);
        let original = f.size(self, "original_context", None);
        let span = f.value_span("high_freq_factor");
        f.finish(self);
        let (low, high) = (low?, high?);
        if high <= low {
            self.error(Diagnostic::error(Code::E0202, span, format!("`high_freq_factor` = {high} is not above `low_freq_factor` = {low}"))
                .with_hint("Llama 3.1 uses low_freq_factor = 1, high_freq_factor = 4"));
            return None;
        }
        Some(RopeScaling { factor: factor?, low_freq_factor: low, high_freq_factor: high, original_context: original? })
    }

    /// `ffn = mlp { hidden = 4 * d_model, act = gelu }`; absent, it is that default.
    fn check_ffn(&mut self, outer: &mut Fields<'a>, d_model: Option<usize>) -> Option<MlpSpec> {
        let Some(field) = outer.field("ffn") else {
            return Some(MlpSpec { hidden: 4 * d_model?, act: Activation::Gelu });
        };
        self.check_mlp(&field.value, &outer.scope, d_model, &["mlp", "moe"])
    }

    /// `mlp { hidden = …, act = … }`.
    pub fn check_mlp(&mut self, e: &'a crate::syntax::ast::Expr, scope: &super::eval::Scope<'a>, d_model: Option<usize>, kinds: &[&'static str]) -> Option<MlpSpec> {
        let (_, path, _, block) = self.ctor(e, "feed-forward layer", kinds)?;
        let mut f = Fields::new(block, scope, "mlp", Checker::span_of_path(path));
        let hidden = match d_model {
            Some(d) => f.size(self, "hidden", Some(4 * d as u64)),
            None => f.size(self, "hidden", None),
        };
        let act = f.sym(self, "act", &["gelu", "relu", "swiglu", "geglu"], Some("gelu"));
        f.finish(self);
        Some(MlpSpec {
            hidden: hidden?,
            act: match act? {
                "swiglu" => Activation::Swiglu,
                "geglu" => Activation::Geglu,
                "relu" => Activation::Relu,
                _ => Activation::Gelu,
            },
        })
    }
}

fn nearest(options: &[String], target: usize) -> String {
    options
        .iter()
        .min_by_key(|s| s.parse::<usize>().map_or(usize::MAX, |v| v.abs_diff(target)))
        .cloned()
        .unwrap_or_else(|| "1".into())
}
