//! A byte corpus split into training and validation tokens, and seeded batch sampling.

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use crate::recipe::DataSpec;

pub struct Corpus {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
}

impl Corpus {
    pub fn load(spec: &DataSpec) -> Result<Corpus> {
        let bytes = std::fs::read(&spec.path).with_context(|| format!("reading data `{}` from {}", spec.name, spec.path.display()))?;
        let cut = (bytes.len() as f64 * spec.split) as usize;
        if cut <= spec.context + 1 || bytes.len() - cut <= spec.context + 1 {
            bail!("data `{}` ({} bytes) is too short for context {} with split {}", spec.name, bytes.len(), spec.context, spec.split);
        }
        Ok(Corpus { train: bytes[..cut].to_vec(), val: bytes[cut..].to_vec() })
    }
}

pub use crate::rng::Rng;

/// `batch` random windows of `context + 1` tokens: inputs (B, T) and next-token targets (B, T).
pub fn batch(tokens: &[u8], batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
    let mut x = Vec::with_capacity(batch * context);
    let mut y = Vec::with_capacity(batch * context);
    let span = (tokens.len() - context - 1) as u64;
    for _ in 0..batch {
        let o = rng.below(span) as usize;
        x.extend(tokens[o..o + context].iter().map(|&b| b as i64));
        y.extend(tokens[o + 1..o + context + 1].iter().map(|&b| b as i64));
    }
    let shape = [batch as i64, context as i64];
    (Tensor::from_slice(&x).view(shape).to_device(device), Tensor::from_slice(&y).view(shape).to_device(device))
}
