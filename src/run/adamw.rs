//! AdamW (Loshchilov & Hutter 2019) on plain tensors. tch's optimizer cannot save its state;
//! this one keeps the moments as named tensors, so a checkpoint holds them and a resumed run
//! continues exactly.

use tch::Tensor;

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Number of updates taken (bias correction uses it).
    pub t: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Decoupled weight decay applies to matrices (weights, embeddings), not to biases or gains.
    pub decay: Vec<bool>,
}

impl AdamW {
    pub fn new(params: &[Tensor], cfg: &crate::recipe::AdamW) -> AdamW {
        AdamW {
            beta1: cfg.betas.0,
            beta2: cfg.betas.1,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            t: 0,
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
            decay: params.iter().map(|p| p.dim() >= 2).collect(),
        }
    }

    /// One update with learning rate `lr`:
    ///   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
    ///   p ← p·(1 − lr·λ) − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)
    /// computed, as PyTorch's AdamW does, with the bias corrections folded into the step size:
    ///   p ← p − (lr·sqrt(1−β2ᵗ)/(1−β1ᵗ)) · m / (sqrt(v) + ε·sqrt(1−β2ᵗ)),
    /// which is the same number and saves passes over the weights.
    pub fn step(&mut self, params: &mut [Tensor], lr: f64) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powf(self.t as f64);
        let bc2 = 1.0 - self.beta2.powf(self.t as f64);
        let step = lr * bc2.sqrt() / bc1;
        let eps = self.eps * bc2.sqrt();
        tch::no_grad(|| {
            for (i, p) in params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = self.m[i].lerp_(&g, 1.0 - self.beta1);
                let _ = self.v[i].lerp_(&g.square(), 1.0 - self.beta2);
                if self.decay[i] && self.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // p += m / denom with denom = −(sqrt(v) + ε')/step: one addcdiv, no extra temporary.
                let mut denom = self.v[i].sqrt();
                let _ = denom.g_add_scalar_(eps);
                let _ = denom.g_div_scalar_(-step);
                let _ = p.addcdiv_(&self.m[i], &denom);
            }
        });
    }
}
