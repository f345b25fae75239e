//! A stage's `adapter = lora { … }`: rank, scale, dropout, rsLoRA, DoRA, the frozen base's
//! quantization (QLoRA, and its double quantization), and targets that each match a linear layer
//! or a stack of experts of the model.

use super::eval::Scope;
use super::fields::Fields;
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::*;
use crate::syntax::ast::Expr;

impl<'a> Checker<'a> {
    /// `lora { rank, alpha, dropout, targets = [attn.q, attn.v] }`; every target must match a
    /// linear layer or a stack of experts of the model (E0312); a stack takes neither DoRA nor
    /// dropout (E0265).
    /// `adapter = none` says what leaving the key out means: a full fine-tune (Some(None)).
    pub(super) fn check_lora(&mut self, e: &'a Expr, scope: &Scope<'a>, model: Option<&ModelRef>) -> Option<Option<LoraSpec>> {
        let (kind, path, _, block) = self.ctor(e, "adapter", &["lora", "none"])?;
        if kind == "none" {
            return Some(None);
        }
        let mut f = Fields::new(block, scope, "lora", Checker::span_of_path(path));
        let rank = f.size(self, "rank", Some(8));
        let alpha = f.positive(self, "alpha", rank.map(|r| r as f64));
        let dropout = f.ranged(self, "dropout", Some(0.0), 0.0, false, 1.0, true);
        let rslora = f.bool(self, "rslora", false);
        let dora = f.bool(self, "dora", false);
        let quantize_base = f.sym(self, "quantize_base", &["none", "nf4"], Some("none")).map(|q| if q == "nf4" { QuantizeBase::Nf4 } else { QuantizeBase::None });
        let double_quant = f.bool(self, "double_quant", false);
        if double_quant == Some(true) && quantize_base == Some(QuantizeBase::None) {
            self.error(Diagnostic::error(Code::E0261, f.key_span("double_quant"), "`double_quant` holds an NF4 base's block scales in 8 bits, but this adapter's base is not quantized")
                .with_hint("add `quantize_base = nf4` (QLoRA), or leave `double_quant` out"));
            return None;
        }
        let targets_field = f.field("targets");
        f.finish(self);
        let mut targets = vec![];
        let targetable = model.and_then(|m| self.models.get(&m.arch)).map(crate::arith::lora_targetable).unwrap_or_default();
        let linears: Vec<String> = targetable.iter().map(|l| l.path.clone()).collect();
        match targets_field {
            None => targets = vec!["attn.q".to_string(), "attn.v".to_string()],
            Some(tf) => {
                // `all_linear` (PEFT's "all-linear", QLoRA's every layer): each kind of projection
                // the model has, experts included, by its last two segments.
                let all = match (&tf.value.kind, tf.value.as_path()) {
                    (crate::syntax::ast::ExprKind::Str(s), _) => s == "all-linear" || s == "all_linear",
                    (_, Some(p)) => Expr::path_string(p) == "all_linear",
                    _ => false,
                };
                let listed: Vec<(Option<String>, &Expr)> = match &tf.value.kind {
                    _ if all => {
                        let mut kinds: Vec<String> = vec![];
                        for l in &linears {
                            let short = short_name(l);
                            if !kinds.contains(&short) {
                                kinds.push(short);
                            }
                        }
                        kinds.into_iter().map(|k| (Some(k), &tf.value)).collect()
                    }
                    crate::syntax::ast::ExprKind::List(items) => items.iter().map(|it| (None, it)).collect(),
                    _ => {
                        self.error(Diagnostic::error(Code::E0120, tf.value.span, "`targets` expects a list of module paths, or `all_linear`").with_hint("write `targets = [attn.q, attn.v]`"));
                        return None;
                    }
                };
                for (expanded, it) in listed {
                    let pat = match (expanded, &it.kind, it.as_path()) {
                        (Some(p), _, _) => p,
                        (None, crate::syntax::ast::ExprKind::Str(s), _) => s.clone(),
                        (None, _, Some(p)) => Expr::path_string(p),
                        _ => {
                            self.error(Diagnostic::error(Code::E0120, it.span, "a LoRA target is a module path such as `attn.q` or \"blocks.*.ffn.w1\"").with_hint("write `targets = [attn.q, attn.v]`"));
                            return None;
                        }
                    };
                    if !linears.is_empty() && !linears.iter().any(|l| crate::arith::lora_matches(&pat, l)) {
                        let mut short: Vec<String> = linears.iter().map(|l| short_name(l)).collect();
                        short.sort();
                        short.dedup();
                        let mut err = Diagnostic::error(Code::E0312, it.span, format!("LoRA target `{pat}` matches no linear layer or stack of experts of model `{}`", model.map_or("", |m| &m.arch)));
                        err = match crate::diag::suggest::did_you_mean(&pat, short.iter().map(|s| s.as_str())) {
                            Some(s) => err.with_hint(format!("did you mean `{s}`?")),
                            None => err.with_hint(format!("linear layers: {}", short.join(", "))),
                        };
                        self.error(err);
                        return None;
                    }
                    // A stack's adapter is added to its weights, not to each expert's input.
                    if let Some(stack) = targetable.iter().find(|l| l.experts > 0 && crate::arith::lora_matches(&pat, &l.path)) {
                        let refused = [("dora", dora == Some(true), "DoRA's magnitudes"), ("dropout", dropout.is_some_and(|d| d > 0.0), "dropout on the adapter's input")];
                        if let Some((key, _, what)) = refused.iter().find(|r| r.1) {
                            self.error(Diagnostic::error(Code::E0265, it.span, format!("LoRA target `{pat}` matches the stacked experts `{}`, whose adapters change each expert's weight, W_e + s·B_e·A_e (PEFT's target_parameters), so it cannot take {what}", stack.path))
                                .with_hint(format!("leave `{key}` out, or target the attention and dense layers only")));
                            return None;
                        }
                    }
                    targets.push(pat);
                }
            }
        }
        Some(Some(LoraSpec { rank: rank?, alpha: alpha?, dropout: dropout?, rslora: rslora?, dora: dora?, targets, quantize_base: quantize_base?, double_quant: double_quant? }))
    }
}

/// A module path's last two segments (`blocks.3.attn.q` → `attn.q`): how targets name a kind of
/// projection in every block.
fn short_name(path: &str) -> String {
    path.rsplitn(3, '.').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".")
}
