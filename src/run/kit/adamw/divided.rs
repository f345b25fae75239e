//! AdamW over parameters divided between processes: under expert parallelism each process holds
//! only its own experts' weights (`Model::from_graph` with a share), so their gradients, moments and
//! updates are its own. They sit at the front of the flat buffers (`local` elements); the rest
//! is replicated. After backward the replicated part is averaged over the processes as in data
//! parallel. An owner's gradient of its experts already sums the losses of its group's processes
//! (the all-to-all's backward brought it): summed over the groups' replicas of those experts and
//! divided by the processes, it is the one-process gradient. The global norm adds the squares of
//! the divided part over one group (which holds every expert once). Checkpoints gather each whole
//! moment from the group as the file is written (`moments.rs`), so they are one process's.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{norm, Optimizer};
use crate::run::model::expert_parallel::Share;
use crate::run::kit::dist::{Reduce, World};

pub struct Divided {
    /// Elements at the front of the flat buffers that are this process's alone.
    local: i64,
    /// The processes that together hold every expert once, and those holding this one's experts
    /// in the other groups (None: one group).
    group: World,
    replicas: Option<World>,
    /// The divided parameters (indices).
    idx: Vec<usize>,
    /// This step's sum over the processes of the divided gradients' squared norms (float64).
    squares: Tensor,
}

impl Optimizer {
    /// The optimizer of `params`, of which those at `divided` hold this process's experts only
    /// (`Model::from_graph` with a share) over `group`, with their replicas in the other groups.
    /// With `shard`, the moments of the rest are sharded over its processes (ZeRO-1, `zero.rs`).
    pub fn divided(params: &[Tensor], cfg: &crate::recipe::AdamW, divided: &[usize], group: World, replicas: Option<World>, shard: Option<&World>) -> Optimizer {
        let mut opt = Optimizer::build(params, &[], cfg, divided, shard);
        let local = divided.iter().filter(|&&i| params[i].requires_grad()).map(|&i| params[i].numel() as i64).sum();
        let squares = Tensor::zeros([], (Kind::Double, opt.flat.g.device()));
        opt.divided = Some(Divided { local, group, replicas, idx: divided.to_vec(), squares });
        opt
    }

    /// This process's rows of a checkpoint's whole tensor `t` for parameter `i` (its weight or a
    /// moment), and the shape the checkpoint must hold for it (`held`: the shape here).
    pub(crate) fn own_rows(&self, i: usize, t: &Tensor, held: &[i64]) -> (Tensor, Vec<i64>) {
        let whole = self.whole_shape(i, held);
        match self.divided.as_ref().filter(|d| d.idx.contains(&i) && t.size() == whole) {
            // (The rows the model holds of the same stack: one definition of a share.)
            Some(d) => (Share { parts: d.group.size as i64, part: d.group.rank as i64 }.of(t), whole),
            None => (t.shallow_clone(), whole),
        }
    }

    /// Parameter `i`'s shape whole, given its shape `held` here.
    pub(crate) fn whole_shape(&self, i: usize, held: &[i64]) -> Vec<i64> {
        let mut whole = held.to_vec();
        if let Some(d) = self.divided.as_ref().filter(|d| d.idx.contains(&i)) {
            whole[0] *= d.group.size as i64;
        }
        whole
    }

    /// `t` (this process's rows of divided parameter `i`'s tensor) whole, gathered from the
    /// group; None when `i` is not divided (every process calls it for the same `i`).
    pub(super) fn gather_divided(&self, i: usize, t: &Tensor) -> Result<Option<Tensor>> {
        let Some(d) = self.divided.as_ref().filter(|d| d.idx.contains(&i)) else { return Ok(None) };
        let mut size = t.size();
        size[0] *= d.group.size as i64;
        let all = Tensor::zeros(size.as_slice(), (t.kind(), t.device()));
        d.group.all_gather(&all, &t.contiguous())?;
        Ok(Some(all))
    }

    /// The replicated part of the weights and moments made rank 0's everywhere, and the divided
    /// part each replica group's first process's (a start or resume read them alike; this
    /// makes sure). Without divided parameters, the whole buffers.
    pub(super) fn broadcast_divided(&mut self, world: &World) -> Result<()> {
        let local = self.divided_len();
        // (Sharded moments, `zero.rs`, are not here: each process read its own slice.)
        for t in [&self.flat.p, &self.flat.m, &self.flat.v] {
            let n = t.numel() as i64;
            if n > local {
                world.broadcast(&t.narrow(0, local, n - local), 0)?;
            }
            if let Some(r) = self.divided.as_ref().and_then(|d| d.replicas.as_ref()) {
                r.broadcast(&t.narrow(0, 0, local), 0)?;
            }
        }
        Ok(())
    }

    /// The divided gradients summed with their replicas', divided by the processes, and their
    /// share of the global norm summed over the group (nothing without divided parameters).
    pub(super) fn exchange_divided_part(&mut self, world: &World) -> Result<()> {
        let Some(d) = self.divided.as_mut() else { return Ok(()) };
        let g = self.flat.g.narrow(0, 0, d.local);
        if let Some(r) = &d.replicas {
            r.all_reduce(&g, Reduce::Sum)?;
        }
        let _ = tch::no_grad(|| g.shallow_clone().g_div_scalar_(world.size as f64));
        let squares = norm::global(&g).to_kind(Kind::Double).square().reshape([1]);
        d.group.all_reduce(&squares, Reduce::Sum)?;
        d.squares = squares.reshape([]);
        Ok(())
    }

    /// Elements of the buffers' divided front (0 without divided parameters).
    pub(super) fn divided_len(&self) -> i64 {
        self.divided.as_ref().map_or(0, |d| d.local)
    }

    /// This step's squares of the divided gradients over the group (`exchange_divided_part`).
    pub(super) fn divided_squares(&self) -> Option<Tensor> {
        self.divided.as_ref().map(|d| d.squares.shallow_clone())
    }

    /// The divided gradients (None without divided parameters).
    pub(super) fn divided_grads(&self) -> Option<Tensor> {
        self.divided.as_ref().map(|d| self.flat.g.narrow(0, 0, d.local))
    }

    /// The global gradient norm (float32 scalar): of the whole buffer, or with divided
    /// parameters of the replicated part and every process's divided part.
    pub(super) fn global_norm(&self) -> Tensor {
        let Some(d) = &self.divided else { return norm::global(&self.flat.g) };
        let n = self.flat.g.numel() as i64;
        let replicated = norm::global(&self.flat.g.narrow(0, d.local, n - d.local)).to_kind(Kind::Double);
        (replicated.square() + &d.squares).sqrt().to_kind(Kind::Float)
    }

    /// The weights every process holds alike (all of them unless some are divided).
    pub(super) fn replicated_weights(&self) -> Tensor {
        let local = self.divided.as_ref().map_or(0, |d| d.local);
        self.flat.p.narrow(0, local, self.flat.p.numel() as i64 - local)
    }
}
