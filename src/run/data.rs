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

/// SplitMix64: tiny, fast, and its whole state is one u64 that a checkpoint can store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0), without modulo bias worth caring about at these sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

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
