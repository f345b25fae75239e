//! The low-precision weights a bf16 stage computes with: copies of the trainable weights made
//! once per step in one flat buffer, whose gradients land in one flat bf16 buffer.

use tch::{Kind, Tensor};

use super::Optimizer;

/// The trainable weights cast to bf16 in one flat buffer, refreshed by one cast after every
/// update, whose gradients land in a flat bf16 buffer copied into the float32 one in one pass:
/// three whole-buffer kernels a step instead of a cast, a cast back and an accumulation per
/// parameter (for Switch-64's 1.9B parameters the per-parameter way moved about 19 GB a step).
pub(super) struct Shadow {
    w: Tensor,
    g: Tensor,
    /// Flat ranges whose gradients come from the shadow; the rest (`holes`) from autograd as before.
    spans: Vec<(i64, i64)>,
    holes: Vec<(i64, i64)>,
    /// Whether this step's shadow gradients were copied into the float32 buffer yet.
    gathered: bool,
}

impl Optimizer {
    /// Keep bf16 (`kind`) copies of the trainable `params` (those this optimizer was made with)
    /// except `exclude`: returns, per parameter, the copy to compute with (a leaf whose gradient
    /// is a view into a flat buffer). A parameter read more than once per forward pass (a tied
    /// embedding) or read other than through these copies (a router in float32) must be excluded:
    /// its gradient then reaches the float32 buffer through autograd as before.
    pub fn shadow(&mut self, params: &[Tensor], kind: Kind, exclude: &[usize]) -> Vec<Option<Tensor>> {
        let (w, g) = tch::no_grad(|| (self.flat.p.to_kind(kind), Tensor::zeros([self.flat.p.numel() as i64], (kind, self.flat.p.device()))));
        let mut leaves: Vec<Option<Tensor>> = (0..params.len()).map(|_| None).collect();
        let (mut spans, mut holes) = (vec![], vec![]);
        for (i, span) in self.spans.iter().enumerate() {
            let Some((off, n)) = *span else { continue };
            if exclude.contains(&i) {
                holes.push((off, n));
                continue;
            }
            spans.push((off, n));
            leaves[i] = Some(w.narrow(0, off, n).view(params[i].size().as_slice()).detach().set_requires_grad(true));
        }
        for (leaf, span) in leaves.iter().zip(&self.spans) {
            if let (Some(leaf), Some((off, n))) = (leaf, span) {
                super::super::native::set_grad(leaf, &g.narrow(0, *off, *n).view(leaf.size().as_slice())).expect("a leaf takes a gradient of its shape");
            }
        }
        self.shadow = Some(Shadow { w, g, spans, holes, gathered: false });
        leaves
    }

    /// Zero every gradient (in place: autograd keeps accumulating into the flat buffers).
    pub fn zero_grad(&mut self) {
        match &mut self.shadow {
            Some(s) => {
                let _ = s.g.zero_();
                for &(off, n) in &s.holes {
                    let _ = self.flat.g.narrow(0, off, n).zero_();
                }
                s.gathered = false;
            }
            None => {
                let _ = self.flat.g.zero_();
            }
        }
    }

    /// The shadow's gradients into the float32 buffer (once per step).
    pub(super) fn gather(&mut self) {
        if let Some(s) = self.shadow.as_mut().filter(|s| !s.gathered) {
            tch::no_grad(|| {
                for &(off, n) in &s.spans {
                    self.flat.g.narrow(0, off, n).copy_(&s.g.narrow(0, off, n));
                }
            });
            s.gathered = true;
        }
    }

    /// Copy the weights into the shadow (after an update, or weights restored from a checkpoint).
    pub fn refresh_shadow(&mut self) {
        if let Some(s) = &self.shadow {
            tch::no_grad(|| s.w.shallow_clone().copy_(&self.flat.p));
        }
    }
}
