//! LoRA (Hu et al. 2021) on the graph-walking model: a target linear computes
//! W·x + (alpha/rank)·B·A·dropout(x), with W frozen, A (rank × in) small random and B (out × rank)
//! zero, so training starts from the base model's function. Adapter tensors are named after
//! their module (`blocks.0.attn.q.lora_A.weight`, as peft names them).

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

    /// (alpha/rank)·B·A·dropout(x), in the compute kind.
    pub fn delta(&self, i: usize, x: &Tensor, kind: Kind) -> Tensor {
        let x = x.dropout(self.dropout, self.train.get());
        x.linear::<Tensor>(&self.a[i].to_kind(kind), None).linear::<Tensor>(&self.b[i].to_kind(kind), None) * self.scale
    }

    /// The adapter tensors, named; A then B for each module.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, p) in self.paths.iter().enumerate() {
            out.push((format!("{p}.lora_A.weight"), self.a[i].shallow_clone()));
            out.push((format!("{p}.lora_B.weight"), self.b[i].shallow_clone()));
        }
        out
    }

    /// How far the adapters moved their weights: the mean over targets of
    /// ‖(alpha/rank)·B·A‖ / ‖W‖ (Frobenius norms), given each target's weight.
    pub fn update_ratio(&self, weight_of: impl Fn(usize) -> f64) -> f64 {
        let ratios: Vec<f64> = (0..self.paths.len())
            .map(|i| {
                let delta = tch::no_grad(|| self.b[i].matmul(&self.a[i]).norm().double_value(&[])) * self.scale.abs();
                delta / weight_of(i).max(1e-12)
            })
            .collect();
        ratios.iter().sum::<f64>() / ratios.len().max(1) as f64
    }

    pub fn numel(&self) -> u64 {
        self.a.iter().chain(&self.b).map(|t| t.numel() as u64).sum()
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
        // (In float32: a bf16 model's frozen base is held in bf16.)
        self.lora.update_ratio(|i| tch::no_grad(|| self.params[weights[i]].to_kind(Kind::Float).norm().double_value(&[])))
    }

    /// Attach fresh adapters to the linears `spec` targets and freeze every base weight.
    pub fn attach_lora(&mut self, spec: &LoraSpec) -> Result<()> {
        let scale = if spec.rslora { spec.alpha / (spec.rank as f64).sqrt() } else { spec.alpha / spec.rank as f64 };
        let mut ad = Adapters { scale, dropout: spec.dropout, ..Default::default() };
        tch::no_grad(|| -> Result<()> {
            for l in crate::lower::lora_targets(self.spec(), spec) {
                let w = self.param_index(&format!("{}.weight", l.path)).expect("lora targets are model linears");
                let bound = 1.0 / (l.inp as f64).sqrt();
                // Sizes from the recipe: an allocation libtorch refuses is an error, not a panic.
                let fail = |e| anyhow::anyhow!("could not allocate the rank-{} adapter of `{}`: {e}", spec.rank, l.path);
                let a = Tensor::f_empty([spec.rank as i64, l.inp as i64], (Kind::Float, self.device)).map_err(fail)?.uniform_(-bound, bound);
                let b = Tensor::f_zeros([l.out as i64, spec.rank as i64], (Kind::Float, self.device)).map_err(fail)?;
                ad.by_weight.insert(w, ad.paths.len());
                ad.paths.push(l.path);
                ad.a.push(a.set_requires_grad(true));
                ad.b.push(b.set_requires_grad(true));
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

    /// Fold the adapters into their weights (W ← W + (alpha/rank)·B·A) and remove them: a plain
    /// model with the same function.
    pub fn merge_lora(&mut self) {
        let ad = std::mem::take(&mut self.lora);
        tch::no_grad(|| {
            for (&w, &i) in &ad.by_weight {
                let delta = ad.b[i].matmul(&ad.a[i]) * ad.scale; // (out, in)
                let _ = self.params[w].g_add_(&delta);
            }
        });
        for p in self.params.iter_mut() {
            let _ = p.set_requires_grad(true);
        }
        self.drop_casts();
    }
}
