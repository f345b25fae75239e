//! The moments as a checkpoint holds them: each parameter's whole, whatever part of it this
//! process holds (all of it; its rows of a divided expert stack, `divided.rs`; its slice of the
//! sharded buffers, `zero.rs`). A checkpoint is written a moment at a time and read into what
//! each process holds, so no process ever holds the whole moments of the model. Muon's matrices
//! keep no second moment: theirs is written as zeros.

use anyhow::Result;
use tch::Tensor;

use super::Optimizer;

impl Optimizer {
    /// The elements of trainable parameter `i` in the sharded part of the flat buffers: its
    /// offset there, when its moments are sharded.
    fn sharded_offset(&self, i: usize) -> Option<i64> {
        let z = self.zero.as_ref()?;
        self.spans[i].map(|(off, _)| off).filter(|off| *off >= z.base())
    }

    /// Parameter `i`'s first (`first`) or second moment whole, for a checkpoint (every process
    /// calls it for the same `i`: a divided or sharded moment is gathered from its holders).
    pub(crate) fn whole_moment(&self, i: usize, first: bool) -> Result<Tensor> {
        if !first && self.is_muon(i) {
            return Ok(Tensor::zeros(self.shapes[i].as_slice(), (self.moment_kind(), tch::Device::Cpu)));
        }
        if let (Some(off), Some(z), Some((_, k))) = (self.sharded_offset(i), &self.zero, self.spans[i]) {
            return Ok(z.whole(off, k, first)?.view(self.shapes[i].as_slice()));
        }
        let t = if first { &self.m[i] } else { &self.v[i] };
        Ok(self.gather_divided(i, t)?.unwrap_or_else(|| t.shallow_clone()))
    }

    /// Parameter `i`'s first (`first`) or second moment from a checkpoint's whole tensor `t`
    /// (of the shape `whole_shape` gives): what this process holds of it.
    pub(crate) fn restore_moment(&mut self, i: usize, first: bool, t: &Tensor) {
        if !first && self.is_muon(i) {
            return; // (zeros: Muon keeps one moment)
        }
        if let (Some(off), Some(z)) = (self.sharded_offset(i), &self.zero) {
            z.restore(off, t, first);
            return;
        }
        let slot = if first { &self.m[i] } else { &self.v[i] };
        let (mine, _) = self.own_rows(i, t, &slot.size());
        tch::no_grad(|| slot.shallow_clone().copy_(&mine));
    }
}
