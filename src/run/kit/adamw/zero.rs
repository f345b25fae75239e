//! AdamW across the processes of a run: gradients averaged after backward, the leader's state
//! given to everyone at the start, and the moments sharded (ZeRO stage 1, Rajbhandari et al.
//! 2020; `shard_optimizer = true`): each process keeps the first and second moments of one
//! 1/world slice of the flat buffers only. A step then reduce-scatters the gradients (each
//! process receives the average of its slice), updates its slice of the weights with its
//! moments, and all-gathers the weights. The numbers are plain data parallel's; the moments take
//! 2/world of the memory. A checkpoint gathers the whole moments for the leader to write
//! (`consolidate`), so a run resumes on any number of processes. With divided experts
//! (`divided.rs`), their part of the buffers (the first `base` elements) is this process's own
//! and stays whole; the rest is sharded.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{norm, Flat, Optimizer};
use crate::run::kit::dist::{Reduce, World};

/// This process's share: elements [lo, lo + len) of the flat buffers, in slices of `chunk`
/// elements per process (a multiple of norm::BLOCK; the last padded: collectives need equal
/// slices).
pub struct Zero {
    /// Elements at the front of the buffers that are not sharded (divided experts), and the
    /// sharded elements after them, before padding.
    base: i64,
    n: i64,
    lo: i64,
    len: i64,
    chunk: i64,
    /// This process's slice of the weights, copied out to be all-gathered into the flat buffer
    /// (a collective's input may not alias its output).
    p_out: Tensor,
    /// This process's averaged gradient slice, and its moments (chunk elements each).
    g: Tensor,
    m: Tensor,
    v: Tensor,
    scratch: Tensor,
    /// The global gradient norm of this step (all processes' slices), as a float32 scalar.
    norm: Tensor,
    /// Per parameter, its shape (to view whole moments for a checkpoint).
    shapes: Vec<Vec<i64>>,
}

impl Zero {
    /// The buffers the update reads and writes: the unsharded front (whose moments are the
    /// full buffers' after sharding) and this process's slice of the rest.
    pub(super) fn parts(&self, full: &Flat) -> Vec<Flat> {
        let own = |t: &Tensor| t.narrow(0, 0, self.len);
        let front = |t: &Tensor| t.narrow(0, 0, self.base);
        let mut parts = vec![];
        if self.base > 0 {
            let c = Tensor::shallow_clone;
            parts.push(Flat { p: front(&full.p), g: front(&full.g), m: c(&full.m), v: c(&full.v), scratch: c(&full.scratch), decayed: full.decayed.min(self.base) });
        }
        parts.push(Flat {
            p: full.p.narrow(0, self.base + self.lo, self.len),
            g: own(&self.g),
            m: own(&self.m),
            v: own(&self.v),
            scratch: own(&self.scratch),
            decayed: (full.decayed - self.base - self.lo).clamp(0, self.len),
        });
        parts
    }

    /// The global norm, and the gradients (the slice, and `front`: the unsharded ones) scaled
    /// so that it is at most `clip` (as `clip_grad_norm`).
    pub(super) fn clip(&self, clip: Option<f64>, front: Option<Tensor>) -> Tensor {
        if let Some(c) = clip {
            let total = self.norm.double_value(&[]);
            if total > c && total.is_finite() {
                for g in std::iter::once(self.g.shallow_clone()).chain(front) {
                    let _ = g.shallow_clone().g_mul_scalar_(c / (total + 1e-6));
                }
            }
        }
        self.norm.shallow_clone()
    }
}

impl Optimizer {
    /// The gradients summed over the run's processes and divided by their number, after
    /// backward: one all-reduce of the flat buffer (a single bucket), or with sharded moments a
    /// reduce-scatter that leaves each process the average of its slice.
    pub fn all_reduce_grads(&mut self, world: &World) -> Result<()> {
        self.gather();
        if !world.grouped() {
            return Ok(());
        }
        self.check_replicas(world)?;
        // This process's own experts first (nothing without them), then the replicated rest.
        self.exchange_divided_part(world)?;
        let squares = self.divided_squares();
        let Some(z) = &mut self.zero else {
            let local = self.divided_len();
            let replicated = self.flat.g.narrow(0, local, self.flat.g.numel() as i64 - local);
            world.all_reduce(&replicated, Reduce::Sum)?;
            let _ = tch::no_grad(|| replicated.shallow_clone().g_div_scalar_(world.size as f64));
            return Ok(());
        };
        world.reduce_scatter(&z.g, &self.flat.g.narrow(0, z.base, world.size as i64 * z.chunk))?;
        let _ = z.g.g_div_scalar_(world.size as f64);
        // Every block's norm in its place (the others' zero), summed over the processes: each
        // then holds the whole vector and combines it as one process would (norm.rs).
        let blocks = Tensor::zeros([norm::count(z.n)], (Kind::Float, z.g.device()));
        if z.len > 0 {
            let mine = norm::blocks(&z.g.narrow(0, 0, z.len));
            tch::no_grad(|| blocks.narrow(0, z.lo / norm::BLOCK, mine.size()[0]).copy_(&mine));
        }
        world.all_reduce(&blocks, Reduce::Sum)?;
        z.norm = norm::combine(&blocks);
        if let Some(sq) = squares {
            z.norm = (z.norm.to_kind(Kind::Double).square() + sq).sqrt().to_kind(Kind::Float);
        }
        Ok(())
    }

    /// After an update with sharded moments: every process's slice of the weights to all.
    pub fn all_gather_params(&mut self, world: &World) -> Result<()> {
        let Some(z) = &self.zero else { return Ok(()) };
        tch::no_grad(|| z.p_out.shallow_clone().copy_(&self.flat.p.narrow(0, z.base + z.lo, z.chunk)));
        world.all_gather(&self.flat.p.narrow(0, z.base, world.size as i64 * z.chunk), &z.p_out)?;
        self.refresh_shadow();
        Ok(())
    }

    /// The leader's weights and moments on every process (after a start or resume, so that
    /// every process trains the same model whatever it initialised or read).
    pub fn broadcast_state(&mut self, world: &World) -> Result<()> {
        if world.size > 1 {
            self.broadcast_divided(world)?;
            self.refresh_shadow();
        }
        Ok(())
    }

    /// Keep only this process's slice of the moments (after the start or resume filled the
    /// whole ones, before any bf16 shadow is made): the whole buffers and their per-parameter
    /// views are let go, and the weights and gradients `params` (those the optimizer was made
    /// with) move into buffers padded to world × chunk, which the collectives read and write
    /// in place.
    pub fn shard_moments(&mut self, world: &World, params: &[Tensor]) {
        if world.size == 1 || self.zero.is_some() {
            return;
        }
        let (base, w) = (self.divided_len(), world.size as i64);
        let (total, n) = (self.flat.p.numel() as i64, self.flat.p.numel() as i64 - base);
        // Slices start at block boundaries, so each holds whole blocks of the norm (norm.rs).
        let chunk = crate::arith::count::shard_chunk(n as u64, w as u64) as i64;
        let lo = (world.rank as i64 * chunk).min(n);
        let len = chunk.min(n - lo);
        let opts = (self.flat.p.kind(), self.flat.p.device());
        let own = |t: &Tensor| {
            let s = Tensor::zeros([chunk], opts);
            tch::no_grad(|| s.narrow(0, 0, len).copy_(&t.narrow(0, base + lo, len)));
            s
        };
        let (m, v) = (own(&self.flat.m), own(&self.flat.v));
        let shapes: Vec<Vec<i64>> = self.m.iter().map(|t| t.size()).collect();
        // The unsharded front's moments, copied out of the whole buffers (which then go).
        let front = |t: &Tensor| tch::no_grad(|| t.narrow(0, 0, base).copy());
        (self.flat.m, self.flat.v, self.flat.scratch) = (front(&self.flat.m), front(&self.flat.v), Tensor::zeros([base], opts));
        for (i, span) in self.spans.iter().enumerate() {
            match *span {
                Some((off, k)) if off < base => {
                    self.m[i] = self.flat.m.narrow(0, off, k).view(shapes[i].as_slice());
                    self.v[i] = self.flat.v.narrow(0, off, k).view(shapes[i].as_slice());
                }
                Some(_) => {
                    self.m[i] = Tensor::new();
                    self.v[i] = Tensor::new();
                }
                None => {}
            }
        }
        let (p, g) = (Tensor::zeros([base + w * chunk], opts), Tensor::zeros([base + w * chunk], opts));
        tch::no_grad(|| {
            let _ = p.narrow(0, 0, total).copy_(&self.flat.p);
            for (param, span) in params.iter().zip(&self.spans) {
                if let Some((off, k)) = *span {
                    let view = |t: &Tensor| t.narrow(0, off, k).view(param.size().as_slice());
                    param.shallow_clone().set_data(&view(&p));
                    param.grad().set_data(&view(&g));
                }
            }
        });
        (self.flat.p, self.flat.g) = (p, g);
        let zeros = || Tensor::zeros([chunk], opts);
        self.zero = Some(Zero { base, n, lo, len, chunk, p_out: zeros(), g: zeros(), m, v, scratch: zeros(), norm: Tensor::zeros([], (Kind::Float, opts.1)), shapes });
    }

    /// The whole moments, gathered from every process, behind the per-parameter views a
    /// checkpoint writes (every process calls it; `release` lets them go again).
    pub fn consolidate(&mut self, world: &World) -> Result<()> {
        let Some(z) = &self.zero else { return Ok(()) };
        let opts = (self.flat.p.kind(), self.flat.p.device());
        let whole = |part: &Tensor| -> Result<Tensor> {
            let all = Tensor::zeros([world.size as i64 * z.chunk], opts);
            world.all_gather(&all, part)?;
            Ok(all.narrow(0, 0, z.n))
        };
        let (m, v) = (whole(&z.m)?, whole(&z.v)?);
        for (i, span) in self.spans.iter().enumerate() {
            if let Some((off, len)) = span.filter(|(off, _)| *off >= z.base) {
                self.m[i] = m.narrow(0, off - z.base, len).view(z.shapes[i].as_slice());
                self.v[i] = v.narrow(0, off - z.base, len).view(z.shapes[i].as_slice());
            }
        }
        Ok(())
    }

    /// The kind of the moments (and of every buffer).
    pub fn moment_kind(&self) -> Kind {
        self.flat.m.kind()
    }

    /// Bytes this process holds of AdamW's moments (its slice of them when sharded).
    pub fn moment_bytes(&self) -> u64 {
        let numel = self.flat.m.numel() + self.flat.v.numel() + self.zero.as_ref().map_or(0, |z| z.m.numel() + z.v.numel());
        (numel * self.flat.m.kind().elt_size_in_bytes()) as u64
    }

    /// Let the whole moments `consolidate` gathered go.
    pub fn release(&mut self) {
        if let Some(z) = &self.zero {
            for (i, span) in self.spans.iter().enumerate() {
                if span.is_some_and(|(off, _)| off >= z.base) {
                    self.m[i] = Tensor::new();
                    self.v[i] = Tensor::new();
                }
            }
        }
    }
}
