//! A corpus split into training and validation tokens (bytes, BPE ids, or an imported model's
//! tokenizer's ids), and seeded batch sampling. A text file is one text; a `.jsonl` corpus holds
//! documents, each ended by the end-of-sequence token (after a newline in bytes and BPE, whose
//! vocabularies have none) and, with a checkpoint's tokenizer, begun by its leading special
//! tokens, as `tokenizer(doc).input_ids + [eos]` (nanoGPT's and torchtune's preparation).

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
    /// The validation text's UTF-8 bytes (with one for the end of each document of a `.jsonl`
    /// corpus, whatever marks it) and words as lm-eval counts them (`documents::words`, per
    /// document): what perplexity per byte and per word divide by, the same for every tokenizer.
    pub val_bytes: u64,
    pub val_words: u64,
    /// Where each validation document starts in `val` (`[0]` for one text): a perplexity scores
    /// each document on its own.
    pub val_documents: Vec<usize>,
}

impl Corpus {
    /// Read and tokenize; a BPE tokenizer is trained on the training split (bytes before the cut)
    /// and kept in `dir`, or read from there when a run resumes. `checkpoint`: the folder of the
    /// model whose tokenizer reads the corpus (its end-of-sequence token ends documents).
    pub fn load(spec: &DataSpec, dir: &Path, checkpoint: Option<&Path>) -> Result<Corpus> {
        Corpus::read(spec, dir, checkpoint, false)
    }

    /// The validation split alone (`train` left empty, never tokenized): what a perplexity reads.
    /// Bytes, a checkpoint's tokenizer (in `checkpoint`), or BPE with the tokenizer a `train`
    /// stage trained in `bpe` (none is trained here: there is no training split to train it on).
    pub fn validation(spec: &DataSpec, bpe: Option<&Path>, checkpoint: Option<&Path>) -> Result<Corpus> {
        let dir = match (&spec.tokenizer, bpe) {
            (Tokenizer::Bpe { .. }, Some(dir)) if dir.join(super::tokenize::FILE).is_file() => dir,
            (Tokenizer::Bpe { .. }, _) => bail!("data `{}` is read as BPE tokens, which only the run that trained them holds", spec.name),
            _ => checkpoint.unwrap_or(Path::new("")),
        };
        Corpus::read(spec, dir, checkpoint, true)
    }

    fn read(spec: &DataSpec, dir: &Path, checkpoint: Option<&Path>, only_val: bool) -> Result<Corpus> {
        let bytes = crate::fsio::read_bytes(&spec.path, MAX_CORPUS_BYTES).map_err(anyhow::Error::msg).with_context(|| format!("reading data `{}`", spec.name))?;
        if let Some(key) = &spec.field {
            return Corpus::documents(spec, &bytes, key, dir, checkpoint, only_val);
        }
        let cut = (bytes.len() as f64 * spec.split) as usize;
        let b = String::from_utf8_lossy(&bytes[cut..]);
        let held = ((bytes.len() - cut) as u64, crate::documents::words(&b));
        // The training text read: whole, or for the validation split alone the first 64 KB a
        // checkpoint's tokenizer is tried on (not a copy of the whole training split).
        let train_text = || String::from_utf8_lossy(&bytes[..if only_val { cut.min(64 << 10) } else { cut }]);
        let (train, val) = match &spec.tokenizer {
            Tokenizer::Bytes => (if only_val { vec![] } else { bytes[..cut].iter().map(|&b| b as u32).collect() }, bytes[cut..].iter().map(|&b| b as u32).collect()),
            Tokenizer::Bpe { vocab } => {
                let a = train_text();
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let tk = super::tokenize::load_or_train(dir, &a, *vocab)?;
                (if only_val { vec![] } else { super::tokenize::encode(&tk, &a)? }, super::tokenize::encode(&tk, &b)?)
            }
            // The checkpoint's tokenizer, which the stage copied beside its model.
            Tokenizer::Model { .. } => {
                let a = train_text();
                let tk = super::tokenize::read(&dir.join(super::tokenize::FILE))?;
                // Someone else's tokenizer (its normalizers and patterns) encodes the corpus whole,
                // which no fixed bound fits; it is first tried, bounded, on the corpus's first
                // 64 KB, where a tokenizer that multiplies its input shows itself.
                let mut probe = a.len().min(64 << 10);
                while !a.is_char_boundary(probe) {
                    probe -= 1;
                }
                super::tokenize::encode_bounded(&tk, &a[..probe])?;
                (if only_val { vec![] } else { super::tokenize::encode(&tk, &a)? }, super::tokenize::encode(&tk, &b)?)
            }
        };
        Corpus::checked(spec, train, val, held, vec![0], only_val)
    }

    fn checked(spec: &DataSpec, train: Vec<u32>, val: Vec<u32>, (val_bytes, val_words): (u64, u64), val_documents: Vec<usize>, only_val: bool) -> Result<Corpus> {
        if (!only_val && train.len() <= spec.context + 1) || val.len() <= spec.context + 1 {
            bail!("data `{}` ({} training and {} validation tokens) is too short for context {} with split {}", spec.name, train.len(), val.len(), spec.context, spec.split);
        }
        Ok(Corpus { train, val, val_bytes, val_words, val_documents })
    }

    /// A .jsonl corpus: the documents that start in the first `split` of its bytes train, the
    /// rest validate; each encoded on its own and ended.
    fn documents(spec: &DataSpec, bytes: &[u8], key: &str, dir: &Path, checkpoint: Option<&Path>, only_val: bool) -> Result<Corpus> {
        let text = std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", spec.path.display(), e.valid_up_to()))?;
        let cut = (text.len() as f64 * spec.split) as usize;
        let (mut train, mut val, mut kept) = (vec![], vec![], 0);
        for l in crate::documents::document_lines(text, key) {
            let doc = l.doc.map_err(|why| anyhow::anyhow!("{} line {}: {why}", spec.path.display(), l.number))?;
            if l.start < cut {
                // (Read for the validation split alone, only those a tokenizer is tried on.)
                if !only_val || kept <= 64 << 10 {
                    kept += doc.len();
                    train.push(doc);
                }
            } else {
                val.push(doc);
            }
        }
        // Each document's end (a newline, or a checkpoint's end token) counts as one byte of its
        // text: every tokenizer predicts it, so bits per byte divide by the same number.
        let held = val.iter().fold((0, 0), |(b, w), d| (b + d.len() as u64 + 1, w + crate::documents::words(d)));
        let (train, val, starts) = match &spec.tokenizer {
            Tokenizer::Bytes => {
                let starts = val.iter().scan(0, |at, d| Some(std::mem::replace(at, *at + d.len() + 1))).collect();
                (if only_val { vec![] } else { ended_bytes(&train) }, ended_bytes(&val), starts)
            }
            Tokenizer::Bpe { vocab } => {
                let a = train.iter().map(|d| format!("{d}\n")).collect::<String>();
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let tk = super::tokenize::load_or_train(dir, &a, *vocab)?;
                // Each held-out document encoded on its own, as the other tokenizers encode them,
                // so that a perplexity scores each alone.
                let (mut ids, mut starts) = (vec![], vec![]);
                for d in &val {
                    starts.push(ids.len());
                    ids.extend(super::tokenize::encode(&tk, &format!("{d}\n"))?);
                }
                (if only_val { vec![] } else { super::tokenize::encode(&tk, &a)? }, ids, starts)
            }
            Tokenizer::Model { model, vocab } => {
                let tk = super::tokenize::read(&dir.join(super::tokenize::FILE))?;
                let ck = checkpoint.with_context(|| format!("model `{model}` has no checkpoint folder"))?;
                let eos = super::codec::eos_ids(ck, &tk, *vocab)?[0] as u32;
                let prefix = super::tokenize::special_prefix(&tk)?;
                // Someone else's tokenizer: tried, bounded, on the first 64 KB of documents.
                let mut tried = 0;
                for d in train.iter().take_while(|d| {
                    tried += d.len();
                    tried <= 64 << 10
                }) {
                    super::tokenize::encode_bounded(&tk, d)?;
                }
                // The ids, and where each document starts among them.
                let encode = |docs: &[String]| -> Result<(Vec<u32>, Vec<usize>)> {
                    let (mut ids, mut starts) = (vec![], vec![]);
                    for d in docs {
                        starts.push(ids.len());
                        ids.extend(&prefix);
                        ids.extend(super::tokenize::encode(&tk, d)?);
                        ids.push(eos);
                    }
                    Ok((ids, starts))
                };
                let (val, starts) = encode(&val)?;
                (if only_val { vec![] } else { encode(&train)?.0 }, val, starts)
            }
        };
        Corpus::checked(spec, train, val, held, starts, only_val)
    }
}

/// Bytes of documents, each followed by a newline (a byte vocabulary has no end token).
fn ended_bytes(docs: &[String]) -> Vec<u32> {
    docs.iter().flat_map(|d| d.bytes().chain([b'\n'])).map(u32::from).collect()
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
