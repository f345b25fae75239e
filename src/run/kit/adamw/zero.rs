//! AdamW across the processes of a run: gradients averaged after backward, the leader's state
//! given to everyone at the start, and the moments sharded (ZeRO stage 1, Rajbhandari et al.
//! 2020; `shard_optimizer = true`): each process keeps the first and second moments of one
//! 1/world slice of the flat buffers only. A step then reduce-scatters the gradients (each
//! process receives the average of its slice), updates its slice of the weights with its
//! moments, and all-gathers the weights. The numbers are plain data parallel's; the moments take
//! 2/world of the memory, from the start: the whole moments are never allocated (a resume copies
//! each process's part of every checkpoint tensor, a checkpoint assembles each tensor's moments
//! as its turn to be written comes: `moments.rs`), and a run resumes on any number of processes.
//! With divided experts (`divided.rs`), their part of the buffers (the first `base` elements) is
//! this process's own and stays whole; the rest is sharded.

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
    /// The processes the moments are sharded over.
    world: World,
}

impl Zero {
    /// This process's share of `n` elements sharded over `world` after `base` unsharded ones,
    /// its buffers zero. Slices start at block boundaries, so each holds whole blocks of the
    /// norm (norm.rs).
    pub(super) fn new(world: &World, base: i64, n: i64, opts: (Kind, tch::Device)) -> Zero {
        let chunk = crate::arith::count::shard_chunk(n as u64, world.size as u64) as i64;
        let (lo, len) = Self::slice(n, chunk, world.rank as i64);
        let zeros = || Tensor::zeros([chunk], opts);
        Zero { base, n, lo, len, chunk, p_out: zeros(), g: zeros(), m: zeros(), v: zeros(), scratch: zeros(), norm: Tensor::zeros([], (Kind::Float, opts.1)), world: world.clone() }
    }

    /// The slice (first element after `base`, length) of the process of rank `rank`.
    fn slice(n: i64, chunk: i64, rank: i64) -> (i64, i64) {
        let lo = (rank * chunk).min(n);
        (lo, chunk.min(n - lo))
    }

    /// Elements at the front of the buffers that are not sharded.
    pub(super) fn base(&self) -> i64 {
        self.base
    }

    /// The length of the weight and gradient buffers: the front, then world × chunk.
    pub(super) fn padded(&self) -> i64 {
        self.base + self.world.size as i64 * self.chunk
    }

    /// Copy this process's part of the flat elements [off, off + t.numel()) (a checkpoint's whole
    /// moment `t`, of a sharded parameter) into its slice of `first` or the second moment.
    pub(super) fn restore(&self, off: i64, t: &Tensor, first: bool) {
        let (a, b) = ((off - self.base).max(self.lo), (off - self.base + t.numel() as i64).min(self.lo + self.len));
        if a < b {
            let mine = if first { &self.m } else { &self.v };
            tch::no_grad(|| mine.narrow(0, a - self.lo, b - a).copy_(&t.reshape([-1]).narrow(0, a - (off - self.base), b - a)));
        }
    }

    /// The whole first (`first`) or second moment of the sharded flat elements [off, off + k),
    /// assembled from the processes whose slices hold them (each broadcasts its part; every
    /// process calls it for the same elements).
    pub(super) fn whole(&self, off: i64, k: i64, first: bool) -> Result<Tensor> {
        let mine = if first { &self.m } else { &self.v };
        let out = Tensor::zeros([k], (mine.kind(), mine.device()));
        let start = off - self.base;
        for r in 0..self.world.size {
            let (lo, len) = Self::slice(self.n, self.chunk, r as i64);
            let (a, b) = (start.max(lo), (start + k).min(lo + len));
            if a >= b {
                continue;
            }
            let part = out.narrow(0, a - start, b - a);
            if r == self.world.rank {
                tch::no_grad(|| part.shallow_clone().copy_(&mine.narrow(0, a - lo, b - a)));
            }
            self.world.broadcast(&part, r)?;
        }
        Ok(out)
    }

    /// The buffers the update reads and writes: the unsharded front (whose moments are the flat
    /// buffers', sized for it alone) and this process's slice of the rest.
    pub(super) fn parts(&self, full: &Flat) -> Vec<Flat> {
        let own = |t: &Tensor| t.narrow(0, 0, self.len);
        let front = |t: &Tensor| t.narrow(0, 0, self.base);
        let mut parts = vec![];
        if self.base > 0 {
            let c = Tensor::shallow_clone;
            parts.push(Flat { p: front(&full.p), g: front(&full.g), m: c(&full.m), v: c(&full.v), scratch: c(&full.scratch), decayed: full.decayed.min(self.base), fast: full.fast.min(self.base) });
        }
        parts.push(Flat {
            p: full.p.narrow(0, self.base + self.lo, self.len),
            g: own(&self.g),
            m: own(&self.m),
            v: own(&self.v),
            scratch: own(&self.scratch),
            decayed: (full.decayed - self.base - self.lo).clamp(0, self.len),
            fast: (full.fast - self.base - self.lo).clamp(0, self.len),
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

    /// The kind of the moments (and of every buffer).
    pub fn moment_kind(&self) -> Kind {
        self.flat.m.kind()
    }

    /// Bytes this process holds of AdamW's moments (its slice of them when sharded).
    pub fn moment_bytes(&self) -> u64 {
        let numel = self.flat.m.numel() + self.flat.v.numel() + self.zero.as_ref().map_or(0, |z| z.m.numel() + z.v.numel());
        (numel * self.flat.m.kind().elt_size_in_bytes()) as u64
    }
}
