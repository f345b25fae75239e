//! A corpus split into training and validation tokens (bytes, BPE ids, or an imported model's
//! tokenizer's ids), and seeded batch
//! sampling.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::recipe::{DataSpec, Tokenizer};
use crate::rng::Rng;

/// The largest corpus read (it is held in memory, with its tokens).
const MAX_CORPUS_BYTES: u64 = 8 << 30;

pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    /// Read and tokenize; a BPE tokenizer is trained on the training split (bytes before the cut)
    /// and kept in `dir`, or read from there when a run resumes.
    pub fn load(spec: &DataSpec, dir: &Path) -> Result<Corpus> {
        let bytes = crate::fsio::read_bytes(&spec.path, MAX_CORPUS_BYTES).map_err(anyhow::Error::msg).with_context(|| format!("reading data `{}`", spec.name))?;
        let cut = (bytes.len() as f64 * spec.split) as usize;
        let (train, val) = match &spec.tokenizer {
            Tokenizer::Bytes => (bytes[..cut].iter().map(|&b| b as u32).collect(), bytes[cut..].iter().map(|&b| b as u32).collect()),
            Tokenizer::Bpe { vocab } => {
                let (a, b) = (String::from_utf8_lossy(&bytes[..cut]), String::from_utf8_lossy(&bytes[cut..]));
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let tk = super::tokenize::load_or_train(dir, &a, *vocab)?;
                (super::tokenize::encode(&tk, &a)?, super::tokenize::encode(&tk, &b)?)
            }
            // The checkpoint's tokenizer, which the stage copied beside its model.
            Tokenizer::Model { .. } => {
                let (a, b) = (String::from_utf8_lossy(&bytes[..cut]), String::from_utf8_lossy(&bytes[cut..]));
                let tk = super::tokenize::read(&dir.join(super::tokenize::FILE))?;
                // Someone else's tokenizer (its normalizers and patterns) encodes the corpus whole,
                // which no fixed bound fits; it is first tried, bounded, on the corpus's first
                // 64 KB, where a tokenizer that multiplies its input shows itself.
                let mut probe = a.len().min(64 << 10);
                while !a.is_char_boundary(probe) {
                    probe -= 1;
                }
                super::tokenize::encode_bounded(&tk, &a[..probe])?;
                (super::tokenize::encode(&tk, &a)?, super::tokenize::encode(&tk, &b)?)
            }
        };
        let (train, val): (Vec<u32>, Vec<u32>) = (train, val);
        if train.len() <= spec.context + 1 || val.len() <= spec.context + 1 {
            bail!("data `{}` ({} training and {} validation tokens) is too short for context {} with split {}", spec.name, train.len(), val.len(), spec.context, spec.split);
        }
        Ok(Corpus { train, val })
    }
}

/// `batch` random windows of `context + 1` tokens: inputs (B, T) and next-token targets (B, T).
pub fn batch(tokens: &[u32], batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
    let mut x = Vec::with_capacity(batch * context);
    let mut y = Vec::with_capacity(batch * context);
    let span = (tokens.len() - context - 1) as u64;
    for _ in 0..batch {
        let o = rng.below(span) as usize;
        x.extend(tokens[o..o + context].iter().map(|&b| b as i64));
        y.extend(tokens[o + 1..o + context + 1].iter().map(|&b| b as i64));
    }
    let shape = [batch as i64, context as i64];
    x.extend(y);
    let xy = Tensor::from_slice(&x).view([2, shape[0], shape[1]]);
    // To a GPU from page-locked memory, without waiting: the copy is queued behind the previous
    // step's kernels and the host goes on to queue this step's (pageable memory would stall it).
    let xy = match device.is_cuda().then(|| super::native::pin_memory(&xy)) {
        Some(Ok(pinned)) => pinned.to_device_(device, Kind::Int64, true, false),
        _ => xy.to_device(device),
    };
    (xy.get(0), xy.get(1))
}
