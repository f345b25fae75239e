//! AdamW over parameters divided between processes: under expert parallelism each process holds
//! only its own experts' weights (`Model::divide_experts`), so their gradients, moments and
//! updates are its own. They sit at the front of the flat buffers (`local` elements); the rest
//! is replicated. After backward the replicated part is averaged over the processes as in data
//! parallel. An owner's gradient of its experts already sums the losses of its group's processes
//! (the all-to-all's backward brought it): summed over the groups' replicas of those experts and
//! divided by the processes, it is the one-process gradient. The global norm adds the squares of
//! the divided part over one group (which holds every expert once). Checkpoints gather the whole
//! moments from the group (`consolidate`), so they are one process's.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{norm, Optimizer};
use crate::run::kit::dist::{Reduce, World};

pub struct Divided {
    /// Elements at the front of the flat buffers that are this process's alone.
    local: i64,
    /// The processes that together hold every expert once, and those holding this one's experts
    /// in the other groups (None: one group).
    group: World,
    replicas: Option<World>,
    /// The divided parameters (indices), and their moments' own views while whole ones are out.
    idx: Vec<usize>,
    views: Vec<(Tensor, Tensor)>,
    /// This step's sum over the processes of the divided gradients' squared norms (float64).
    squares: Tensor,
}

impl Optimizer {
    /// The optimizer of `params` after `Model::divide_experts` divided those at `divided` over
    /// `group`, from this one (made over the whole parameters, restored and broadcast): the
    /// divided moments keep this process's rows of each stack, the others whole, and the step
    /// count carries over.
    pub fn divide(self, params: &[Tensor], cfg: &crate::recipe::AdamW, divided: &[usize], group: World, replicas: Option<World>) -> Optimizer {
        let mut opt = Optimizer::build(params, cfg, divided);
        let (w, q) = (group.size as i64, group.rank as i64);
        tch::no_grad(|| {
            for i in 0..params.len() {
                for (old, new) in [(&self.m[i], &opt.m[i]), (&self.v[i], &opt.v[i])] {
                    let rows = |t: &Tensor| t.size()[0] / w;
                    let mine = if divided.contains(&i) { old.narrow(0, q * rows(old), rows(old)) } else { old.shallow_clone() };
                    new.shallow_clone().copy_(&mine);
                }
            }
        });
        opt.t = self.t;
        let local = divided.iter().filter(|&&i| params[i].requires_grad()).map(|&i| params[i].numel() as i64).sum();
        let squares = Tensor::zeros([], (Kind::Double, opt.flat.g.device()));
        opt.divided = Some(Divided { local, group, replicas, idx: divided.to_vec(), views: vec![], squares });
        opt
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

    /// The divided parameters' whole moments, gathered from the group, in place of this
    /// process's for a checkpoint to write (every process calls it; `release` puts them back).
    pub(super) fn gather_divided(&mut self) -> Result<()> {
        let Some(d) = self.divided.as_mut() else { return Ok(()) };
        let group = &d.group;
        for &i in &d.idx {
            let whole = |t: &Tensor| -> Result<Tensor> {
                let mut size = t.size();
                size[0] *= group.size as i64;
                let all = Tensor::zeros(size.as_slice(), (t.kind(), t.device()));
                group.all_gather(&all, &t.contiguous())?;
                Ok(all)
            };
            let (m, v) = (whole(&self.m[i])?, whole(&self.v[i])?);
            d.views.push((std::mem::replace(&mut self.m[i], m), std::mem::replace(&mut self.v[i], v)));
        }
        Ok(())
    }

    /// This process's moments back in place of the whole ones `gather_divided` put there.
    pub(super) fn release_divided(&mut self) {
        let Some(d) = self.divided.as_mut() else { return };
        for (&i, (m, v)) in d.idx.iter().zip(d.views.drain(..)) {
            (self.m[i], self.v[i]) = (m, v);
        }
    }
}
