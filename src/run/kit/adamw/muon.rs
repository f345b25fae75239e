//! Muon's share of the optimizer (Jordan et al. 2024), as torch.optim.Muon computes it: the
//! transformer blocks' matrices sit last in the flat buffers; each keeps one moment, its
//! momentum (in the first-moment buffer, so a checkpoint names it `adam.m.…`; its `adam.v.…` is
//! zeros), and takes the momentum orthogonalised by Newton–Schulz iterations as its update.
//! Everything else is AdamW's, over the buffers' front.

use tch::{Kind, Tensor};

use super::Optimizer;
use crate::recipe::{AdamW, Muon};

/// torch.optim.Muon's Newton–Schulz coefficients (Keller Jordan's quintic) and its ε.
const NS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
const EPS: f64 = 1e-7;

pub(super) struct MuonPart {
    cfg: Muon,
    /// Muon's rate over AdamW's: the schedule's rate for AdamW times this is Muon's.
    ratio: f64,
    /// Where Muon's matrices start in the flat buffers.
    pub(super) start: i64,
    /// Each matrix (or stack of experts' matrices): its offset, length and shape.
    mats: Vec<(i64, i64, Vec<i64>)>,
}

impl MuonPart {
    /// Muon over the matrices at `mats` (offset, length, shape), from `start` on; none without
    /// `muon` in `cfg` or without matrices.
    pub(super) fn new(cfg: &AdamW, start: i64, mats: Vec<(i64, i64, Vec<i64>)>) -> Option<MuonPart> {
        let muon = cfg.muon.clone()?;
        (!mats.is_empty()).then(|| MuonPart { ratio: muon.lr / cfg.lr, cfg: muon, start, mats })
    }

    /// One update of every matrix at AdamW's rate `lr` (Muon's own is `lr` × its ratio), on the
    /// whole flat weights `p`, gradients `g` and first moments `m`:
    ///   m ← μ·m + (1 − μ)·g;  u ← NS(nesterov ? (1 − μ)·g + μ·m : m)
    ///   p ← p·(1 − lr·λ) − adjusted(lr)·u
    pub(super) fn step(&self, p: &Tensor, g: &Tensor, m: &Tensor, lr: f64) {
        let (mu, lr) = (self.cfg.momentum, lr * self.ratio);
        tch::no_grad(|| {
            for (off, n, shape) in &self.mats {
                let view = |t: &Tensor| t.narrow(0, *off, *n).view(shape.as_slice());
                let (p, g, mut m) = (view(p), view(g), view(m));
                let _ = m.lerp_(&g, 1.0 - mu);
                let update = if self.cfg.nesterov { g.lerp(&m, mu) } else { m.shallow_clone() };
                let update = orthogonalize(&update, self.cfg.ns_steps);
                let (out, input) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                let rate = self.cfg.adjusted(lr, out, input);
                let mut p = p;
                let _ = p.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
                let _ = p.g_add_(&(update.to_kind(p.kind()) * -rate));
            }
        });
    }
}

impl Optimizer {
    /// Whether trainable parameter `i` is one of Muon's matrices (which keep no second moment).
    pub(super) fn is_muon(&self, i: usize) -> bool {
        matches!((self.spans[i], &self.muon), (Some((off, _)), Some(mu)) if off >= mu.start)
    }
}

/// The orthogonalised update of `g` (a matrix, or a stack of them over its leading dimension):
/// torch.optim.Muon's `_zeropower_via_newtonschulz` in bfloat16, each matrix scaled to Frobenius
/// norm 1, wide (transposed when tall), then `steps` quintic iterations
///   A = X·Xᵀ;  B = b·A + c·A·A;  X ← a·X + B·X,
/// which drive its singular values towards 1 (to about 0.7–1.2: enough for Muon, and fast).
pub fn orthogonalize(g: &Tensor, steps: usize) -> Tensor {
    let (a, b, c) = NS;
    let two = g.dim() == 2;
    // One matrix runs as a stack of one.
    let mut x = if two { g.unsqueeze(0) } else { g.shallow_clone() }.to_kind(Kind::BFloat16);
    let tall = x.size()[1] > x.size()[2];
    if tall {
        x = x.transpose(1, 2);
    }
    x = &x / x.norm_scalaropt_dim(2, [1, 2], true).clamp_min(EPS);
    for _ in 0..steps {
        let gram = x.bmm(&x.transpose(1, 2));
        let poly = gram.baddbmm(&gram, &gram, b, c);
        x = x.baddbmm(&poly, &x, a, 1.0);
    }
    if tall {
        x = x.transpose(1, 2);
    }
    if two { x.squeeze_dim(0) } else { x }
}
