//! A training loop's per-step numbers kept on the device between the steps it logs, so the GPU
//! never waits for the host (nanoGPT reads the loss every `log_interval` steps the same way):
//! the sum of the losses, and the first step whose loss or gradient norm was not finite.

use tch::{Device, Kind, Tensor};

pub struct Deferred {
    /// Sum of the losses since the last `take_sum`.
    sum: Tensor,
    /// (step, loss, gradient norm, lr) of the first non-finite step; step 0 while there is none.
    first_bad: Tensor,
}

impl Deferred {
    pub fn new(device: Device) -> Deferred {
        let opts = (Kind::Double, device);
        Deferred { sum: Tensor::zeros([], opts), first_bad: Tensor::zeros([4], opts) }
    }

    /// Note step `step`'s loss and gradient norm (device scalars); returns the flag AdamW's
    /// fused kernel reads (float32, 1 when either is not finite: the update is skipped).
    pub fn record(&mut self, step: u64, lr: f64, loss: &Tensor, norm: &Tensor) -> Tensor {
        let (loss, norm) = (loss.detach().to_kind(Kind::Double), norm.detach().to_kind(Kind::Double));
        let bad = loss.isfinite().logical_and(&norm.isfinite()).logical_not();
        let _ = self.sum.g_add_(&loss);
        let first = bad.logical_and(&self.first_bad.get(0).eq(0.0));
        let row = Tensor::stack(&[loss.zeros_like() + step as f64, loss, norm, self.sum.zeros_like() + lr], 0);
        self.first_bad = row.where_self(&first, &self.first_bad);
        bad.to_kind(Kind::Float)
    }

    /// (step, loss, gradient norm, lr) of the first non-finite step, if any (reads the device).
    pub fn first_bad(&self) -> Option<(u64, f64, f64, f64)> {
        let v: Vec<f64> = Vec::try_from(&self.first_bad.to_device(Device::Cpu)).unwrap_or_default();
        (v.len() == 4 && v[0] > 0.0).then(|| (v[0] as u64, v[1], v[2], v[3]))
    }

    /// The losses summed since the last call (reads the device), and a fresh sum.
    pub fn take_sum(&mut self) -> f64 {
        let s = self.sum.double_value(&[]);
        let _ = self.sum.zero_();
        s
    }
}
