//! A corpus split into training and validation tokens (bytes, BPE ids, or an imported model's
//! tokenizer's ids), and seeded batch sampling. A text file is one text; a `.jsonl` corpus holds
//! documents, each ended by the end-of-sequence token (after a newline in bytes and BPE, whose
//! vocabularies have none) and, with a checkpoint's tokenizer, begun by its leading special
//! tokens, as `tokenizer(doc).input_ids + [eos]` (nanoGPT's and torchtune's preparation).

use anyhow::{bail, Context, Result};
use std::ops::Range;
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
    /// A mix's corpora (`mix(…)`), one after the other in `train` and `val`; empty for one corpus.
    pub parts: Vec<Part>,
}

/// One corpus of a mix: its weight, and where its tokens lie in `train` and `val`.
pub struct Part {
    pub weight: f64,
    pub train: Range<usize>,
    pub val: Range<usize>,
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
        let cut = training_end(bytes.len(), spec.split);
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
        Ok(Corpus { train, val, val_bytes, val_words, val_documents, parts: vec![] })
    }

    /// A mix of `parts` (each corpus's spec and weight), read with their one tokenizer: a BPE one
    /// trained on all their training splits together, the first time. Each keeps its split.
    pub fn load_mix(parts: &[(&DataSpec, f64)], dir: &Path, checkpoint: Option<&Path>) -> Result<Corpus> {
        if let Some((Tokenizer::Bpe { vocab }, false)) = parts.first().map(|(s, _)| (&s.tokenizer, dir.join(super::tokenize::FILE).is_file())) {
            let text = parts.iter().map(|(s, _)| training_text(s)).collect::<Result<String>>()?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            super::tokenize::load_or_train(dir, &text, *vocab)?;
        }
        let mut all = Corpus { train: vec![], val: vec![], val_bytes: 0, val_words: 0, val_documents: vec![], parts: vec![] };
        for (spec, weight) in parts {
            let c = Corpus::load(spec, dir, checkpoint)?;
            let at = (all.train.len(), all.val.len());
            all.val_documents.extend(c.val_documents.iter().map(|d| d + at.1));
            all.train.extend(c.train);
            all.val.extend(c.val);
            (all.val_bytes, all.val_words) = (all.val_bytes + c.val_bytes, all.val_words + c.val_words);
            all.parts.push(Part { weight: *weight, train: at.0..all.train.len(), val: at.1..all.val.len() });
        }
        Ok(all)
    }

    /// `batch` training windows (`batch`); from a mix, each row from a corpus drawn by weight.
    pub fn train_batch(&self, batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
        self.draw(&self.train, |p| p.train.clone(), batch, context, rng, device)
    }

    /// `batch` validation windows, drawn as `train_batch` draws them.
    pub fn val_batch(&self, batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
        self.draw(&self.val, |p| p.val.clone(), batch, context, rng, device)
    }

    fn draw(&self, tokens: &[u32], range: impl Fn(&Part) -> Range<usize>, batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
        if self.parts.is_empty() {
            return self::batch(tokens, batch, context, rng, device);
        }
        let total: f64 = self.parts.iter().map(|p| p.weight).sum();
        let starts: Vec<usize> = (0..batch)
            .map(|_| {
                let mut u = rng.unit() * total;
                let part = self.parts.iter().find(|p| {
                    u -= p.weight;
                    u < 0.0
                });
                let r = range(part.unwrap_or(&self.parts[self.parts.len() - 1]));
                r.start + rng.below((r.len() - context - 1) as u64) as usize
            })
            .collect();
        windows(tokens, &starts, context, device)
    }

    /// A .jsonl corpus: the documents that start in the first `split` of its bytes train, the
    /// rest validate; each encoded on its own and ended.
    fn documents(spec: &DataSpec, bytes: &[u8], key: &str, dir: &Path, checkpoint: Option<&Path>, only_val: bool) -> Result<Corpus> {
        let text = std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", spec.path.display(), e.valid_up_to()))?;
        let cut = training_end(text.len(), spec.split);
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

/// Where a corpus of `len` bytes stops training and starts validating: its split, in bytes, so
/// the held-out text is the same whatever the tokenizer.
fn training_end(len: usize, split: f64) -> usize {
    (len as f64 * split) as usize
}

/// A corpus's training text, as `read` cuts it (what a mix's BPE tokenizer is trained on).
fn training_text(spec: &DataSpec) -> Result<String> {
    let bytes = crate::fsio::read_bytes(&spec.path, MAX_CORPUS_BYTES).map_err(anyhow::Error::msg).with_context(|| format!("reading data `{}`", spec.name))?;
    let cut = training_end(bytes.len(), spec.split);
    let Some(key) = &spec.field else { return Ok(String::from_utf8_lossy(&bytes[..cut]).into_owned()) };
    let text = String::from_utf8_lossy(&bytes);
    let lines = crate::documents::document_lines(&text, key).filter(|l| l.start < cut);
    Ok(lines.filter_map(|l| l.doc.ok()).map(|d| d + "\n").collect())
}

/// `batch` random windows of `context + 1` tokens: inputs (B, T) and next-token targets (B, T).
pub fn batch(tokens: &[u32], batch: usize, context: usize, rng: &mut Rng, device: Device) -> (Tensor, Tensor) {
    let span = (tokens.len() - context - 1) as u64;
    let starts: Vec<usize> = (0..batch).map(|_| rng.below(span) as usize).collect();
    windows(tokens, &starts, context, device)
}

/// The windows of `context + 1` tokens at `starts`: inputs (B, T) and targets (B, T).
fn windows(tokens: &[u32], starts: &[usize], context: usize, device: Device) -> (Tensor, Tensor) {
    let mut x = Vec::with_capacity(starts.len() * context);
    let mut y = Vec::with_capacity(starts.len() * context);
    for &o in starts {
        x.extend(tokens[o..o + context].iter().map(|&b| b as i64));
        y.extend(tokens[o + 1..o + context + 1].iter().map(|&b| b as i64));
    }
    let shape = [starts.len() as i64, context as i64];
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
