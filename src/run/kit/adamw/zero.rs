//! AdamW across the processes of a run: gradients averaged after backward, the leader's state
//! given to everyone at the start, and the moments sharded (ZeRO stage 1, Rajbhandari et al.
//! 2020; `shard_optimizer = true`): each process keeps the first and second moments of one
//! 1/world slice of the flat buffers only. A step then reduce-scatters the gradients (each
//! process receives the average of its slice), updates its slice of the weights with its
//! moments, and all-gathers the weights. The numbers are plain data parallel's; the moments take
//! 2/world of the memory. A checkpoint gathers the whole moments for the leader to write
//! (`consolidate`), so a run resumes on any number of processes.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{norm, Flat, Optimizer};
use crate::run::kit::dist::{Reduce, World};

/// This process's share: elements [lo, lo + len) of the flat buffers, in slices of `chunk`
/// elements per process (a multiple of norm::BLOCK; the last padded: collectives need equal
/// slices).
pub struct Zero {
    /// Elements in the flat buffers before padding.
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
    /// The buffers the update reads and writes: this process's slice of each.
    pub(super) fn share(&self, full: &Flat) -> Flat {
        let own = |t: &Tensor| t.narrow(0, 0, self.len);
        Flat {
            p: full.p.narrow(0, self.lo, self.len),
            g: own(&self.g),
            m: own(&self.m),
            v: own(&self.v),
            scratch: own(&self.scratch),
            decayed: (full.decayed - self.lo).clamp(0, self.len),
        }
    }

    /// The global norm, and the slice scaled so that it is at most `clip` (as `clip_grad_norm`).
    pub(super) fn clip(&self, clip: Option<f64>) -> Tensor {
        if let Some(c) = clip {
            let total = self.norm.double_value(&[]);
            if total > c && total.is_finite() {
                let _ = self.g.shallow_clone().g_mul_scalar_(c / (total + 1e-6));
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
        if self.divided.is_some() {
            return self.exchange_divided(world);
        }
        let Some(z) = &mut self.zero else {
            world.all_reduce(&self.flat.g, Reduce::Sum)?;
            tch::no_grad(|| {
                let _ = self.flat.g.g_div_scalar_(world.size as f64);
            });
            return Ok(());
        };
        world.reduce_scatter(&z.g, &self.flat.g)?;
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
        Ok(())
    }

    /// After an update with sharded moments: every process's slice of the weights to all.
    pub fn all_gather_params(&mut self, world: &World) -> Result<()> {
        let Some(z) = &self.zero else { return Ok(()) };
        tch::no_grad(|| z.p_out.shallow_clone().copy_(&self.flat.p.narrow(0, z.lo, z.chunk)));
        world.all_gather(&self.flat.p, &z.p_out)?;
        self.refresh_shadow();
        Ok(())
    }

    /// The leader's weights and moments on every process (after a start or resume, so that
    /// every process trains the same model whatever it initialised or read).
    pub fn broadcast_state(&mut self, world: &World) -> Result<()> {
        if world.size > 1 {
            for t in [&self.flat.p, &self.flat.m, &self.flat.v] {
                world.broadcast(t, 0)?;
            }
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
        let (n, w) = (self.flat.p.numel() as i64, world.size as i64);
        // Slices start at block boundaries, so each holds whole blocks of the norm (norm.rs).
        let chunk = crate::arith::count::shard_chunk(n as u64, w as u64) as i64;
        let lo = (world.rank as i64 * chunk).min(n);
        let len = chunk.min(n - lo);
        let opts = (self.flat.p.kind(), self.flat.p.device());
        let own = |t: &Tensor| {
            let s = Tensor::zeros([chunk], opts);
            tch::no_grad(|| s.narrow(0, 0, len).copy_(&t.narrow(0, lo, len)));
            s
        };
        let (m, v) = (own(&self.flat.m), own(&self.flat.v));
        let shapes = self.m.iter().map(|t| t.size()).collect();
        let empty = || Tensor::zeros([0], opts);
        (self.flat.m, self.flat.v, self.flat.scratch) = (empty(), empty(), empty());
        for (i, span) in self.spans.iter().enumerate() {
            if span.is_some() {
                self.m[i] = Tensor::new();
                self.v[i] = Tensor::new();
            }
        }
        let (p, g) = (Tensor::zeros([w * chunk], opts), Tensor::zeros([w * chunk], opts));
        tch::no_grad(|| {
            let _ = p.narrow(0, 0, n).copy_(&self.flat.p);
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
        self.zero = Some(Zero { n, lo, len, chunk, p_out: zeros(), g: zeros(), m, v, scratch: zeros(), norm: Tensor::zeros([], (Kind::Float, opts.1)), shapes });
    }

    /// The whole moments, gathered from every process, behind the per-parameter views a
    /// checkpoint writes (every process calls it; `release` lets them go again).
    pub fn consolidate(&mut self, world: &World) -> Result<()> {
        self.gather_divided()?;
        let Some(z) = &self.zero else { return Ok(()) };
        let opts = (self.flat.p.kind(), self.flat.p.device());
        let n = self.flat.p.numel() as i64;
        let whole = |part: &Tensor| -> Result<Tensor> {
            let all = Tensor::zeros([world.size as i64 * z.chunk], opts);
            world.all_gather(&all, part)?;
            Ok(all.narrow(0, 0, n))
        };
        let (m, v) = (whole(&z.m)?, whole(&z.v)?);
        for (i, span) in self.spans.iter().enumerate() {
            if let Some((off, len)) = *span {
                self.m[i] = m.narrow(0, off, len).view(z.shapes[i].as_slice());
                self.v[i] = v.narrow(0, off, len).view(z.shapes[i].as_slice());
            }
        }
        Ok(())
    }

    /// Bytes this process holds of AdamW's moments (its slice of them when sharded).
    pub fn moment_bytes(&self) -> u64 {
        let (m, v) = match &self.zero {
            Some(z) => (&z.m, &z.v),
            None => (&self.flat.m, &self.flat.v),
        };
        ((m.numel() + v.numel()) * m.kind().elt_size_in_bytes()) as u64
    }

    /// Let the whole moments `consolidate` gathered go.
    pub fn release(&mut self) {
        self.release_divided();
        if self.zero.is_some() {
            for (i, span) in self.spans.iter().enumerate() {
                if span.is_some() {
                    self.m[i] = Tensor::new();
                    self.v[i] = Tensor::new();
                }
            }
        }
    }
}
