//! AdamW (Loshchilov & Hutter 2019) on plain tensors. tch's optimizer cannot save its state;
//! this one keeps the moments as named tensors, so a checkpoint holds them and a resumed run
//! continues exactly.
//!
//! Speed: at construction the trainable parameters and their gradients are moved into one flat
//! buffer each (every parameter's data becomes a view into it; autograd accumulates into the
//! gradient views in place), so zeroing, the gradient norm, clipping and the update are a handful
//! of whole-buffer operations instead of several small ones per parameter — what PyTorch's
//! `foreach`/`fused` AdamW do. The update itself is one pass over the buffers: libtorch's
//! multi-tensor fused kernel (`torch._fused_adamw_`, through the shim in `native.rs`) on CUDA, one
//! of our own (`fused_cpu`) on the CPU. `ROUX_ADAMW=ops` uses libtorch's elementwise ops instead,
//! `ROUX_ADAMW=aten` the fused kernel on the CPU too (to compare them).

mod divided;
mod fused_cpu;
mod moments;
mod muon;
mod norm;
mod replicas;
mod shadow;
pub mod zero;

use tch::{Kind, Tensor};

use super::dist::World;

/// The AdamW optimizer: its moments and step count, over flat buffers of the tensors it trains.
pub struct Optimizer {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Number of updates taken (bias correction uses it).
    pub t: u64,
    /// LoRA+'s ratio: the buffers' elements from `Flat::fast` on learn at `lr` times this.
    fast_ratio: f64,
    /// Per parameter (in the order given): views into the flat moment buffers, for checkpoints.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    flat: Flat,
    /// t as a float32 scalar on the buffers' device, for the fused kernel.
    step_t: Option<Tensor>,
    /// The clipping the next fused update applies as it reads the gradient (g / scale).
    grad_scale: Option<Tensor>,
    /// Per parameter: its (offset, length) in the flat buffers, None for a frozen one, and its
    /// shape here.
    spans: Vec<Option<(i64, i64)>>,
    shapes: Vec<Vec<i64>>,
    /// This process's share of the moments when they are sharded (ZeRO-1, `zero.rs`).
    zero: Option<zero::Zero>,
    /// Low-precision copies of the weights, made once per step (see `shadow`).
    shadow: Option<shadow::Shadow>,
    how: Update,
    /// Gradient exchanges so far (`replicas.rs` checks every N-th).
    exchanges: u64,
    /// The parameters only this process holds (expert parallelism, `divided.rs`).
    divided: Option<divided::Divided>,
    /// Muon's matrices, at the buffers' end (`optimizer = muon`).
    muon: Option<muon::MuonPart>,
}

/// Which implementation of the update runs: the same formula three ways.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    /// libtorch's elementwise ops, ~8 passes over the buffers.
    Ops,
    /// libtorch's multi-tensor fused kernel (`torch._fused_adamw_`).
    Aten,
    /// One pass of our own over float32 buffers on the CPU.
    OwnCpu,
}

/// The default for buffers like `p`; `ROUX_ADAMW=ops|aten` overrides it.
fn default_update(p: &Tensor) -> Update {
    let own = p.device() == tch::Device::Cpu && p.kind() == Kind::Float;
    match std::env::var("ROUX_ADAMW").as_deref() {
        Ok("ops") => Update::Ops,
        Ok("aten") => Update::Aten,
        _ if own => Update::OwnCpu,
        _ => Update::Aten,
    }
}

/// The flat buffers: parameters, gradients, first and second moments, and scratch space for the
/// update. Decoupled weight decay applies to matrices (weights, embeddings), not to biases or
/// gains, so those come first and decay is one operation on the leading `decayed` elements.
/// Under LoRA+ the elements from `fast` on (the adapters' B matrices, then the vectors) learn
/// faster; without it `fast` is past the end.
struct Flat {
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    scratch: Tensor,
    decayed: i64,
    fast: i64,
}

impl Flat {
    fn shallow(&self) -> Flat {
        let c = Tensor::shallow_clone;
        Flat { p: c(&self.p), g: c(&self.g), m: c(&self.m), v: c(&self.v), scratch: c(&self.scratch), decayed: self.decayed, fast: self.fast }
    }

    /// AdamW's part when Muon's matrices take the buffers from `end` on.
    fn front(&self, end: i64) -> Flat {
        let part = |t: &Tensor| t.narrow(0, 0, end);
        Flat { p: part(&self.p), g: part(&self.g), m: part(&self.m), v: self.v.shallow_clone(), scratch: self.scratch.shallow_clone(), decayed: self.decayed, fast: self.fast.min(end) }
    }

    /// The spans of one rate and decay of the first `n` elements: (start, length, decayed, fast).
    fn spans(&self, n: i64) -> Vec<(i64, i64, bool, bool)> {
        let mut cuts = vec![0, self.decayed.clamp(0, n), self.fast.clamp(0, n), n];
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2).map(|w| (w[0], w[1] - w[0], w[0] < self.decayed, w[0] >= self.fast)).collect()
    }
}

impl Optimizer {
    /// Take over the storage of those of `params` that require grad (their values are kept); all
    /// must share one kind and device. With `optimizer = muon` the ones Muon takes (by `names`,
    /// `Muon::takes`) are Muon's.
    pub fn new(params: &[Tensor], names: &[String], cfg: &crate::recipe::AdamW) -> Optimizer {
        Self::build(params, names, cfg, &[], None)
    }

    /// `new` for a run of several processes: with `shard` (ZeRO-1, `zero.rs`) this process keeps
    /// only its slice of the moments, never allocating the whole ones.
    pub fn sharded(params: &[Tensor], names: &[String], cfg: &crate::recipe::AdamW, shard: Option<&World>) -> Optimizer {
        Self::build(params, names, cfg, &[], shard)
    }

    /// `new`, with the parameters at `front` first in the buffers (`divided.rs`) and, with
    /// `shard`, the moments of the rest sharded over its processes.
    fn build(params: &[Tensor], names: &[String], cfg: &crate::recipe::AdamW, front: &[usize], shard: Option<&World>) -> Optimizer {
        let (kind, device) = params.iter().find(|p| p.requires_grad()).map_or((Kind::Float, tch::Device::Cpu), |p| (p.kind(), p.device()));
        let muon = |i: usize| cfg.muon.is_some() && names.get(i).is_some_and(|n| crate::recipe::Muon::takes(n, params[i].dim()));
        // LoRA+ (PEFT's grouping): the B matrices and every vector learn at lr × ratio.
        let fast = |i: usize| cfg.loraplus_lr_ratio.is_some() && !muon(i) && (params[i].dim() < 2 || names.get(i).is_some_and(|n| n.contains("lora_B")));
        assert!(cfg.muon.is_none() || (front.is_empty() && shard.is_none_or(|w| w.size == 1)), "check refuses Muon with divided experts or sharded moments (E0257)");
        // AdamW's matrices first (stable order; under LoRA+ the faster ones last), then its
        // vectors, then Muon's matrices. A tensor that does not require grad (a frozen one) is
        // left where it is and never updated.
        let mut order: Vec<usize> = (0..params.len()).filter(|&i| params[i].requires_grad()).collect();
        order.sort_by_key(|&i| (muon(i), params[i].dim() < 2, fast(i), !front.contains(&i)));
        let numel: Vec<i64> = params.iter().map(|p| p.numel() as i64).collect();
        let total: i64 = order.iter().map(|&i| numel[i]).sum();
        let decayed: i64 = order.iter().filter(|&&i| params[i].dim() >= 2 && !muon(i)).map(|&i| numel[i]).sum();
        // Muon's matrices keep one moment (its momentum): AdamW's second moment and scratch end
        // where they begin.
        let adam: i64 = order.iter().filter(|&&i| !muon(i)).map(|&i| numel[i]).sum();
        // (The fast ones end AdamW's part: the slow matrices, the fast matrices, then the
        // vectors, all fast under LoRA+.)
        let slow: i64 = order.iter().filter(|&&i| !muon(i) && !fast(i)).map(|&i| numel[i]).sum();
        let fast_from = if cfg.loraplus_lr_ratio.is_some() { slow } else { total };
        let base: i64 = order.iter().filter(|i| front.contains(i)).map(|&i| numel[i]).sum();
        // Sharded: weights and gradients padded for the collectives, whole moments only for the front.
        let zero = shard.filter(|w| w.size > 1).map(|w| zero::Zero::new(w, base, total - base, (kind, device)));
        let (len, moments) = zero.as_ref().map_or((total, total), |z| (z.padded(), base));
        let buf = |n: i64| Tensor::zeros([n], (kind, device));
        // Allocated one buffer at a time, each parameter's old storage let go as it moves in:
        // at most the parameters once more than the buffers at any moment.
        let spans: Vec<Option<(i64, i64)>> = {
            let mut offset = 0;
            let mut spans = vec![None; params.len()];
            for &i in &order {
                spans[i] = Some((offset, numel[i]));
                offset += numel[i];
            }
            spans
        };
        let views = |flat: &Tensor, i: usize| spans[i].map(|(off, k)| flat.narrow(0, off, k).view(params[i].size().as_slice()));
        let p = buf(len);
        tch::no_grad(|| {
            for &i in &order {
                let pv = views(&p, i).expect("a trainable parameter has a span");
                pv.shallow_clone().copy_(&params[i]);
                params[i].shallow_clone().set_data(&pv);
            }
        });
        let g = buf(len);
        for &i in &order {
            super::native::set_grad(&params[i], &views(&g, i).expect("a trainable parameter has a span")).expect("a trainable leaf takes a gradient of its shape");
        }
        let second = moments - (total - adam);
        let flat = Flat { p, g, m: buf(moments), v: buf(second), scratch: buf(second), decayed, fast: fast_from };
        // Moments of frozen tensors stay zero (checkpoints name every tensor's); the others are
        // views (none for a sharded one, `zero.rs` holds its slice, nor for Muon's second).
        let moment = |flat: &Tensor, i: usize, end: i64| match spans[i] {
            None => params[i].zeros_like(),
            Some((off, _)) if off < end => views(flat, i).expect("span"),
            Some(_) => Tensor::new(),
        };
        let m = (0..params.len()).map(|i| moment(&flat.m, i, moments)).collect();
        let v = (0..params.len()).map(|i| moment(&flat.v, i, second)).collect();
        let mats = order.iter().filter(|&&i| muon(i)).map(|&i| (spans[i].expect("span").0, numel[i], params[i].size())).collect();
        let muon = muon::MuonPart::new(cfg, adam, mats);
        Optimizer { fast_ratio: cfg.loraplus_lr_ratio.unwrap_or(1.0), muon, beta1: cfg.betas.0, beta2: cfg.betas.1, eps: cfg.eps, weight_decay: cfg.weight_decay, t: 0, m, v, step_t: None, grad_scale: None, spans, shapes: params.iter().map(|p| p.size()).collect(), shadow: None, zero, how: default_update(&flat.p), exchanges: 0, divided: None, flat }
    }

    /// Choose the implementation of the update (tests compare them; `OwnCpu` needs float32 CPU
    /// buffers and falls back to `Ops` elsewhere).
    pub fn set_update(&mut self, how: Update) {
        self.how = how;
    }

    /// The global gradient norm; with `clip`, gradients are scaled so that it is at most `clip`
    /// (a non-finite norm is left alone for the caller to report).
    pub fn clip_grad_norm(&mut self, clip: Option<f64>) -> f64 {
        if let Some(z) = &self.zero {
            return z.clip(clip, self.divided_grads()).double_value(&[]);
        }
        self.gather();
        let total = self.global_norm().double_value(&[]);
        if let Some(c) = clip {
            self.scale_to(total, c);
        }
        total
    }

    /// Scale the gradients so that a norm of `total` becomes at most `clip` (a non-finite one is
    /// left for the caller to report).
    fn scale_to(&mut self, total: f64, clip: f64) {
        if total > clip && total.is_finite() {
            let _ = self.flat.g.g_mul_scalar_(clip / (total + 1e-6));
        }
    }

    /// The global gradient norm as a device scalar, clipping in place as PyTorch's
    /// `clip_grad_norm_` does (scale by min(1, clip/(norm + 1e-6))), with no host read: the loop
    /// reads it at log points only, so the GPU never waits for the host between steps.
    /// With the fused kernel the scaling is left to the update, which reads g / max(1, norm/clip)
    /// as it loads the gradient: one pass over the gradients fewer.
    pub fn grad_norm_clipped(&mut self, clip: Option<f64>) -> Tensor {
        if let Some(z) = &self.zero {
            return z.clip(clip, self.divided_grads());
        }
        self.gather();
        let total = self.global_norm();
        if let Some(c) = clip {
            tch::no_grad(|| {
                // (Muon reads the gradients too: they are scaled in place for it.)
                if self.how == Update::Aten && self.muon.is_none() {
                    self.grad_scale = Some(((&total + 1e-6) / c).clamp_min(1.0).to_kind(Kind::Float));
                } else if self.flat.g.device() == tch::Device::Cpu {
                    // Reading costs nothing on the CPU: the scale of `clip_grad_norm`, bit for bit.
                    self.scale_to(total.double_value(&[]), c);
                } else {
                    let coef = ((&total + 1e-6).reciprocal() * c).clamp_max(1.0);
                    let _ = self.flat.g.g_mul_(&coef);
                }
            });
        }
        total
    }

    /// One update with learning rate `lr`:
    ///   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
    ///   p ← p·(1 − lr·λ) − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)
    /// computed, as PyTorch's AdamW does, with the bias corrections folded into the step size:
    ///   p ← p − (lr·sqrt(1−β2ᵗ)/(1−β1ᵗ)) · m / (sqrt(v) + ε·sqrt(1−β2ᵗ)),
    /// which is the same number and saves passes over the weights.
    pub fn step(&mut self, lr: f64) -> anyhow::Result<()> {
        self.update(lr, None)
    }

    /// One update, skipped when `found_inf` (a float32 scalar on the buffers' device) is nonzero;
    /// t advances either way (a loop that skips steps on the host uses `step`). Deciding on the
    /// device keeps non-finite gradients out of the weights without a host read per step.
    pub fn step_unless(&mut self, lr: f64, found_inf: &Tensor) -> anyhow::Result<()> {
        self.update(lr, Some(found_inf))
    }

    fn update(&mut self, lr: f64, found_inf: Option<&Tensor>) -> anyhow::Result<()> {
        self.gather();
        self.apply(lr, found_inf)?;
        self.refresh_shadow();
        Ok(())
    }

    fn apply(&mut self, lr: f64, found_inf: Option<&Tensor>) -> anyhow::Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powf(self.t as f64);
        let bc2 = 1.0 - self.beta2.powf(self.t as f64);
        let step = lr * bc2.sqrt() / bc1;
        let eps = self.eps * bc2.sqrt();
        let own = self.flat.p.device() == tch::Device::Cpu && self.flat.p.kind() == Kind::Float;
        let how = if self.how == Update::OwnCpu && !own { Update::Ops } else { self.how };
        // The host decides where reading the flag costs nothing (the CPU) or the kernel cannot
        // (Muon's update).
        if how != Update::Aten || self.muon.is_some() {
            if let Some(inf) = found_inf {
                if inf.double_value(&[]) != 0.0 {
                    return Ok(());
                }
            }
        }
        let grad_scale = self.grad_scale.take();
        // Sharded moments: the update covers this process's share of the buffers only (and its
        // own experts' part, when they are divided).
        let parts = match (&self.zero, &self.muon) {
            (Some(z), _) => z.parts(&self.flat),
            (None, Some(mu)) => vec![self.flat.front(mu.start)],
            (None, None) => vec![self.flat.shallow()],
        };
        for f in &parts {
            self.apply_part(f, lr, [step, eps], how, grad_scale.as_ref(), found_inf)?;
        }
        if let Some(mu) = &self.muon {
            mu.step(&self.flat.p, &self.flat.g, &self.flat.m, lr);
        }
        Ok(())
    }

    /// The update of one part of the buffers (`apply`), span by span of one rate and decay.
    fn apply_part(&mut self, f: &Flat, lr: f64, [step, eps]: [f64; 2], how: Update, grad_scale: Option<&Tensor>, found_inf: Option<&Tensor>) -> anyhow::Result<()> {
        let n = f.p.numel() as i64;
        // (start, length, decayed, its lr)
        let spans: Vec<(i64, i64, bool, f64)> = f.spans(n).into_iter().map(|(lo, len, d, fast)| (lo, len, d, if fast { lr * self.fast_ratio } else { lr })).collect();
        // (Each span's step size: `step` is lr's, with the bias corrections folded in.)
        let step_of = |r: f64| if r == lr { step } else { step * r / lr };
        if how == Update::OwnCpu {
            let parts: Vec<_> = spans.iter().map(|&(lo, len, d, r)| (lo as usize, (lo + len) as usize, if d { 1.0 - r * self.weight_decay } else { 1.0 } as f32, step_of(r) as f32)).collect();
            fused_cpu::fused_cpu(f, [self.beta1, self.beta2, eps].map(|x| x as f32), &parts);
            return Ok(());
        }
        if how == Update::Aten {
            let step_t = self.step_t.get_or_insert_with(|| Tensor::zeros([], (Kind::Float, f.p.device())));
            let _ = step_t.fill_(self.t as f64);
            // One launch of the kernel a span (decayed matrices, then vectors without decay).
            for &(lo, len, d, r) in &spans {
                let part = |t: &Tensor| t.narrow(0, lo, len);
                let flags = super::native::AdamwFlags { step: step_t, grad_scale, found_inf };
                super::native::fused_adamw(&part(&f.p), &part(&f.g), &part(&f.m), &part(&f.v), &flags, r, (self.beta1, self.beta2), if d { self.weight_decay } else { 0.0 }, self.eps)?;
            }
            return Ok(());
        }
        let f = &mut f.shallow();
        tch::no_grad(|| {
            let _ = f.m.lerp_(&f.g, 1.0 - self.beta1);
            let _ = f.g.mul_out(&f.scratch, &f.g);
            let _ = f.v.lerp_(&f.scratch, 1.0 - self.beta2);
            // p += m / denom with denom = −(sqrt(v) + ε')/step: one addcdiv into the scratch space.
            let _ = f.v.sqrt_out(&f.scratch);
            let _ = f.scratch.g_add_scalar_(eps);
            for &(lo, len, d, r) in &spans {
                if d && self.weight_decay > 0.0 {
                    let _ = f.p.narrow(0, lo, len).g_mul_scalar_(1.0 - r * self.weight_decay);
                }
                let _ = f.scratch.narrow(0, lo, len).g_div_scalar_(-step_of(r));
            }
            let _ = f.p.addcdiv_(&f.m, &f.scratch);
        });
        Ok(())
    }
}
