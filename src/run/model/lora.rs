//! LoRA (Hu et al. 2021) on the graph-walking model: a target linear computes
//! W·x + (alpha/rank)·B·A·dropout(x), with W frozen, A (rank × in) small random and B (out × rank)
//! zero, so training starts from the base model's function. Adapter tensors are named after
//! their module (`blocks.0.attn.q.lora_A.weight`, as peft names them).
//!
//! DoRA (Liu et al. 2024) adds a magnitude m per output row, starting at ‖W‖ of that row:
//! y = m/‖W + s·B·A‖ ⊙ (W + s·B·A)·x + bias, computed as PEFT computes it (the base output plus
//! (m/n − 1)·W·x + (m/n)·s·B·A·x, the row norms n without gradient, section 4.3 of the paper),
//! so an export loads into `peft` with the same function.
//!
//! A stack of experts (E, out, in) takes an A (E × rank × in) and a B (E × out × rank): each
//! expert's rows go through W_e + s·B_e·A_e, as PEFT adapts a model's 3-D expert parameters
//! (`target_parameters`), computed on the rows by every dispatch path (`experts.rs`).

use anyhow::{bail, Result};
use std::cell::Cell;
use std::collections::HashMap;
use tch::{Kind, Tensor};

use super::Model;
use crate::recipe::LoraSpec;

#[derive(Default)]
pub struct Adapters {
    /// Weight parameter index → adapter index.
    by_weight: HashMap<usize, usize>,
    /// Module path of each adapter.
    pub paths: Vec<String>,
    pub a: Vec<Tensor>,
    pub b: Vec<Tensor>,
    /// DoRA's magnitudes, one (out) vector per adapter; empty for plain LoRA.
    pub magnitude: Vec<Tensor>,
    pub scale: f64,
    pub dropout: f64,
    /// Whether the current forward pass trains (dropout on the adapter input).
    pub train: Cell<bool>,
}

impl Adapters {
    pub fn get(&self, weight: usize) -> Option<usize> {
        self.by_weight.get(&weight).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The output of target `i` given its base output `y` = W·x + bias (`w` gives W in the
    /// compute kind, which only DoRA reads): y + (alpha/rank)·B·A·dropout(x) for LoRA, DoRA's
    /// rescaled sum for DoRA.
    pub fn apply(&self, i: usize, x: &Tensor, y: Tensor, w: impl FnOnce() -> Tensor, bias: Option<&Tensor>, kind: Kind) -> Tensor {
        let train = self.train.get();
        let dropped = x.dropout(self.dropout, train);
        let lora = dropped.linear::<Tensor>(&self.a[i].to_kind(kind), None).linear::<Tensor>(&self.b[i].to_kind(kind), None);
        let Some(m) = self.magnitude.get(i) else { return y + lora * self.scale };
        let w = &w();
        let norm = tch::no_grad(|| self.row_norms(i, w)).to_kind(kind);
        let factor = m.to_kind(kind) / norm; // (out): broadcast over the last dimension
        // W·dropout(x): the base output without its bias, unless dropout changed the input.
        let base = if train && self.dropout > 0.0 {
            dropped.linear::<Tensor>(w, None)
        } else {
            match bias {
                Some(b) => &y - b,
                None => y.shallow_clone(),
            }
        };
        y + (&factor - 1.0) * base + factor * lora * self.scale
    }

    /// ‖W + s·B·A‖ of each output row of target `i` (float32; PEFT's `get_weight_norm`).
    fn row_norms(&self, i: usize, w: &Tensor) -> Tensor {
        let merged = w.to_kind(Kind::Float) + self.b[i].matmul(&self.a[i]) * self.scale;
        merged.linalg_norm(2.0, &[1i64][..], false, None::<Kind>)
    }

    /// Target `i`'s weight with its adapter folded in: W + s·B·A, rescaled row by row to the
    /// magnitudes under DoRA (float32, no gradient).
    pub fn merged(&self, i: usize, w: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let sum = w.to_kind(Kind::Float) + self.b[i].matmul(&self.a[i]) * self.scale;
            match self.magnitude.get(i) {
                Some(m) => &sum * (m / self.row_norms(i, w)).unsqueeze(1),
                None => sum,
            }
        })
    }

    /// The adapter tensors, named; A then B for each module.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, p) in self.paths.iter().enumerate() {
            out.push((format!("{p}.lora_A.weight"), self.a[i].shallow_clone()));
            out.push((format!("{p}.lora_B.weight"), self.b[i].shallow_clone()));
            if let Some(m) = self.magnitude.get(i) {
                out.push((format!("{p}.lora_magnitude_vector"), m.shallow_clone()));
            }
        }
        out
    }

    /// How far the adapters moved their weights: the mean over targets of ‖W' − W‖ / ‖W‖
    /// (Frobenius norms, W' the merged weight), given each target's weight.
    pub fn update_ratio(&self, weight_of: impl Fn(usize) -> Tensor) -> f64 {
        let ratios: Vec<f64> = (0..self.paths.len())
            .map(|i| {
                let w = weight_of(i).to_kind(Kind::Float);
                tch::no_grad(|| (self.merged(i, &w) - &w).norm().double_value(&[]) / w.norm().double_value(&[]).max(1e-12))
            })
            .collect();
        ratios.iter().sum::<f64>() / ratios.len().max(1) as f64
    }

    /// `LoRA rank 4 on 1792 trainable parameters` (DoRA with magnitudes); none without adapters.
    pub fn describe(&self) -> Option<String> {
        let a = self.a.first()?.size();
        let rank = a[a.len() - 2]; // (a stack's A has its experts first)
        Some(format!("{} rank {rank} on {} trainable parameters", if self.magnitude.is_empty() { "LoRA" } else { "DoRA" }, self.numel()))
    }

    pub fn numel(&self) -> u64 {
        self.a.iter().chain(&self.b).chain(&self.magnitude).map(|t| t.numel() as u64).sum()
    }
}

impl Model {
    /// The adapters' mean relative update, ‖ΔW‖ / ‖W‖ over their targets (0 without adapters).
    pub fn lora_update_ratio(&self) -> f64 {
        let weights: Vec<usize> = {
            let mut w = vec![0; self.lora.paths.len()];
            for (&weight, &i) in &self.lora.by_weight {
                w[i] = weight;
            }
            w
        };
        self.lora.update_ratio(|i| self.weight(weights[i]))
    }

    /// Attach fresh adapters to the linears `spec` targets and freeze every base weight (its
    /// linears held as NF4 first when `spec` quantizes the base, QLoRA).
    pub fn attach_lora(&mut self, spec: &LoraSpec) -> Result<()> {
        if let Some(base) = spec.nf4_base() {
            self.quantize_base(base)?;
        }
        let scale = if spec.rslora { spec.alpha / (spec.rank as f64).sqrt() } else { spec.alpha / spec.rank as f64 };
        let mut ad = Adapters { scale, dropout: spec.dropout, ..Default::default() };
        tch::no_grad(|| -> Result<()> {
            for l in crate::lower::lora_targets(self.spec(), spec) {
                let w = self.param_index(&l.param()).expect("lora targets are model weights");
                let bound = 1.0 / (l.inp as f64).sqrt();
                // Sizes from the recipe: an allocation libtorch refuses is an error, not a panic.
                let fail = |e| anyhow::anyhow!("could not allocate the rank-{} adapter of `{}`: {e}", spec.rank, l.path);
                // A stack's experts first (one A and B each), a linear's none.
                let experts: Vec<i64> = (l.experts > 0).then_some(l.experts as i64).into_iter().collect();
                let shape = |dims: [usize; 2]| [&experts[..], &dims.map(|d| d as i64)].concat();
                let a = Tensor::f_empty(shape([spec.rank, l.inp]), (Kind::Float, self.device)).map_err(fail)?.uniform_(-bound, bound);
                let b = Tensor::f_zeros(shape([l.out, spec.rank]), (Kind::Float, self.device)).map_err(fail)?;
                ad.by_weight.insert(w, ad.paths.len());
                ad.paths.push(l.path);
                ad.a.push(a.set_requires_grad(true));
                ad.b.push(b.set_requires_grad(true));
                if spec.dora {
                    // ‖W‖ per row: with B = 0, DoRA starts from the base model's function too.
                    let m = self.weight(w).to_kind(Kind::Float).linalg_norm(2.0, &[1i64][..], false, None::<Kind>);
                    ad.magnitude.push(m.set_requires_grad(true));
                }
            }
            Ok(())
        })?;
        for p in self.params.iter_mut() {
            let _ = p.set_requires_grad(false);
        }
        self.lora = ad;
        self.hold_frozen_in_compute_kind();
        Ok(())
    }

    /// This model without its adapters, every weight shared (no copy): the reference of a stage
    /// that trains only adapters, which start at zero, so it is the policy as the stage began.
    pub fn base_view(&self) -> Model {
        // (Built with placeholder views, then given this model's tensors.)
        let mut m = Model::build(crate::lower::lower_model(self.spec()), self.device, false, self.share).expect("stride-0 views allocate one element");
        m.params = self.params.iter().map(|p| p.shallow_clone()).collect();
        m.quantized = self.quantized.iter().map(|q| q.as_ref().map(super::nf4::Nf4::share)).collect();
        (m.compute, m.pad_vocab) = (self.compute, self.pad_vocab);
        m.experts_across = self.experts_across.clone();
        m
    }

    /// Copy adapter weights in from named tensors (an `adapter.safetensors`).
    pub fn load_lora(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, t) in self.lora.named() {
            let Some(src) = given.get(name.as_str()) else { bail!("adapter file has no tensor `{name}`") };
            if src.size() != t.size() {
                bail!("adapter tensor `{name}` has shape {:?}, expected {:?}", src.size(), t.size());
            }
            let mut t = t;
            tch::no_grad(|| t.copy_(src));
        }
        Ok(())
    }

    /// Fold the adapters into their weights (W ← W + (alpha/rank)·B·A, rescaled under DoRA) and
    /// remove them: a plain model with the same function. An NF4 base becomes its float32
    /// values first: the weights the adapters were trained against.
    pub fn merge_lora(&mut self) {
        for (j, q) in std::mem::take(&mut self.quantized).into_iter().enumerate() {
            if let Some(q) = q {
                self.params[j] = q.dequantize(Kind::Float);
            }
        }
        let ad = std::mem::take(&mut self.lora);
        tch::no_grad(|| {
            for (&w, &i) in &ad.by_weight {
                let merged = ad.merged(i, &self.params[w]);
                self.params[w].copy_(&merged);
            }
        });
        for p in self.params.iter_mut() {
            let _ = p.set_requires_grad(true);
        }
        self.drop_casts();
    }
}
