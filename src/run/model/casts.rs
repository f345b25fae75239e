//! Parameters in the compute kind (room `run/model`). The weights stay float32 (AdamW's master
//! copy); a bf16 model reads each through `cast`: the optimizer's once-per-step copy where it
//! keeps one (`use_shadow`), a cached cast where the weight cannot change (frozen, or during
//! generation), else a fresh cast whose backward returns the gradient to the float32 weight.

use tch::{Kind, Tensor};

use super::Model;

impl Model {
    /// Parameter `j` in the compute kind, from the cache where it cannot have changed.
    pub(super) fn cast(&self, j: usize) -> Tensor {
        if let Some(q) = self.nf4(j) {
            // Never cached: the point of NF4 is not to hold the weight whole.
            return q.dequantize(self.compute);
        }
        if let Some(Some(s)) = self.shadow.get(j).filter(|_| self.compute != Kind::Float) {
            return s.shallow_clone();
        }
        let p = &self.params[j];
        // Already in the compute kind, or trainable outside generation: no cached copy.
        if p.kind() == self.compute || (p.requires_grad() && !self.cache_all.get()) {
            return p.to_kind(self.compute);
        }
        let mut casts = self.casts.borrow_mut();
        casts[j].get_or_insert_with(|| tch::no_grad(|| p.to_kind(self.compute))).shallow_clone()
    }

    /// Run `f` (which must not update the weights) with every weight cast once, in no-grad
    /// mode; the trainable weights' copies are dropped when it returns.
    pub fn with_cached_casts<R>(&self, f: impl FnOnce() -> R) -> R {
        self.cache_all.set(true);
        let out = tch::no_grad(f);
        self.cache_all.set(false);
        for (c, p) in self.casts.borrow_mut().iter_mut().zip(&self.params) {
            if p.requires_grad() {
                *c = None;
            }
        }
        out
    }

    /// Compute with the optimizer's copies (`Optimizer::shadow`) of the parameters that have one.
    pub fn use_shadow(&mut self, copies: Vec<Option<Tensor>>) {
        self.shadow = copies;
    }

    /// Parameters a shadow copy cannot stand in for: read more than once per forward pass (a tied
    /// embedding: the lookup and the head) or not through `cast` (routers compute in float32).
    pub fn shadow_exclusions(&self) -> Vec<usize> {
        let tied = self.spec().tie_embeddings.then(|| self.index["tok_emb.weight"]);
        let routers = self.names.iter().enumerate().filter(|(_, n)| n.contains(".router.")).map(|(i, _)| i);
        tied.into_iter().chain(routers).collect()
    }

    /// In a bf16 model, the frozen float32 weights become their bf16 casts and the float32 ones
    /// are let go: a frozen weight is read only through `cast`, whose cached copy it was, so every
    /// number computed is the same and a frozen weight holds 2 bytes instead of 4 + 2 (a bf16
    /// checkpoint's frozen base or reference stays bf16). Routers, read in float32 (not through
    /// `cast`), keep theirs. `ROUX_FROZEN_F32=1` keeps every float32 weight, to compare.
    pub(super) fn hold_frozen_in_compute_kind(&mut self) {
        if self.compute == Kind::Float || std::env::var("ROUX_FROZEN_F32").is_ok_and(|v| v == "1") {
            return;
        }
        let quantized: Vec<bool> = (0..self.params.len()).map(|j| self.nf4(j).is_some()).collect();
        for ((p, name), q) in self.params.iter_mut().zip(&self.names).zip(quantized) {
            if !p.requires_grad() && p.kind() == Kind::Float && !name.contains(".router.") && !q {
                *p = tch::no_grad(|| p.to_kind(self.compute));
            }
        }
        self.drop_casts();
    }

    /// Bytes the weights take (an NF4 weight its codes and scales), with the compute-kind copies
    /// cached beside them.
    pub fn weight_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        let held = |(j, p): (usize, &Tensor)| self.nf4(j).map_or_else(|| bytes(p), super::nf4::Nf4::bytes);
        self.params.iter().enumerate().map(held).sum::<u64>() + self.casts.borrow().iter().flatten().map(bytes).sum::<u64>()
    }

    /// TR-DPO's reference update: each weight becomes α·`policy`'s + (1 − α)·its own, computed in
    /// float32 and kept in its own kind (a bf16 reference stays bf16); the cached casts go.
    pub fn mix_toward(&self, policy: &Model, alpha: f64) {
        assert_eq!(self.names, policy.names, "a reference mixes with a policy of its own architecture");
        tch::no_grad(|| {
            for (r, p) in self.params.iter().zip(&policy.params) {
                let mixed = r.to_kind(Kind::Float) * (1.0 - alpha) + p.to_kind(Kind::Float) * alpha;
                r.shallow_clone().copy_(&mixed);
            }
        });
        self.drop_casts();
    }

    /// Forget every cast copy (the weights changed in place).
    pub(super) fn drop_casts(&self) {
        self.casts.borrow_mut().iter_mut().for_each(|c| *c = None);
    }
}
