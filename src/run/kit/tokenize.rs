//! Byte-level BPE (`tokenizer = bpe { vocab = N }`): trained on the training split with the
//! `tokenizers` crate (pure-Rust features), saved as `tokenizer.json` in the stage's run directory
//! (the Hugging Face format, so `roux export` ships it), and reused from there on resume.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, PreTokenizerWrapper, Tokenizer};

pub const FILE: &str = "tokenizer.json";

/// Train a byte-level BPE of `vocab` tokens on `text` (all 256 bytes are in its alphabet, so
/// any input encodes).
pub fn train(text: &str, vocab: usize) -> Result<Tokenizer> {
    let mut tk = Tokenizer::new(BPE::default());
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    // Lines keep the trainer's word counts small; newlines are words of their own.
    tk.train(&mut trainer, text.split_inclusive('\n')).map_err(|e| anyhow!("training the BPE tokenizer: {e}"))?;
    Ok(tk)
}

/// The tokenizer saved in `dir`, or a new one trained on `text` and saved there (atomically).
pub fn load_or_train(dir: &Path, text: &str, vocab: usize) -> Result<Tokenizer> {
    let path = dir.join(FILE);
    if path.exists() {
        return read(&path);
    }
    let tk = train(text, vocab)?;
    let json = tk.to_string(false).map_err(|e| anyhow!("{e}"))?;
    super::files::write_atomic(&path, json.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(tk)
}

/// The largest tokenizer.json read (a 200k-token vocabulary with its merges is ~10 MB).
pub const MAX_BYTES: u64 = 256 << 20;

/// A tokenizer.json: a regular file under the cap, parsed; errors name the file.
pub fn read(path: &Path) -> Result<Tokenizer> {
    let text = super::files::read_capped(path, MAX_BYTES)?;
    text.parse::<Tokenizer>().map_err(|e| anyhow!("reading {}: {e}", path.display()))
}

pub fn encode(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tk.encode(text, false).map_err(|e| anyhow!("encoding: {e}"))?.get_ids().to_vec())
}

pub fn decode(tk: &Tokenizer, ids: &[u32]) -> Result<String> {
    tk.decode(ids, false).map_err(|e| anyhow!("decoding: {e}"))
}
