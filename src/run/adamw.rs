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
    pub fn step(&mut self, params: &mut [Tensor], lr: f64) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powf(self.t as f64);
        let bc2 = 1.0 - self.beta2.powf(self.t as f64);
        tch::no_grad(|| {
            for (i, p) in params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = self.m[i].lerp_(&g, 1.0 - self.beta1);
                let _ = self.v[i].g_mul_scalar_(self.beta2);
                let _ = self.v[i].addcmul_(&(&g * (1.0 - self.beta2)), &g);
                if self.decay[i] && self.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let mut denom = self.v[i].sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt());
                let _ = denom.g_add_scalar_(self.eps);
                let _ = p.addcdiv_(&(&self.m[i] * (-lr / bc1)), &denom);
            }
        });
    }
}
