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

/// The tokenizer configuration of the checkpoint in `dir` as transformers reads it
/// (`hf::tokenizer_config`: tokenizer_config.json, special_tokens_map.json).
pub fn checkpoint_config(dir: &Path) -> Result<serde_json::Value> {
    let json = |name: &str| -> Result<Option<serde_json::Value>> {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = super::files::read_capped(&path, crate::hf::MAX_CONFIG)?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?))
    };
    Ok(crate::hf::tokenizer_config(json("tokenizer_config.json")?.unwrap_or_default(), json("special_tokens_map.json")?))
}

/// The byte tokenizer of a byte-level model, as a Hugging Face tokenizer: token i is byte i
/// (a BPE without merges over GPT-2's byte-to-character map), so `AutoTokenizer` encodes text to
/// the ids roux trained on and decodes them back.
pub fn bytes() -> Result<Tokenizer> {
    // GPT-2's map: printable bytes are themselves, the others 256, 257, … in byte order.
    let mut vocab = serde_json::Map::new();
    let mut n = 0;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b as u32
        } else {
            n += 1;
            255 + n
        };
        vocab.insert(char::from_u32(c).context("a byte's character")?.to_string(), b.into());
    }
    // Written as tokenizer.json text and parsed: the BPE builder wants the crate's own map type.
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    json.to_string().parse::<Tokenizer>().map_err(|e| anyhow!("the byte tokenizer: {e}"))
}

pub fn encode(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tk.encode(text, false).map_err(|e| anyhow!("encoding: {e}"))?.get_ids().to_vec())
}

/// `encode` with a checkpoint's tokenizer, someone else's code, bounded in memory and time
/// (`crate::bounded`) for one example's text.
pub fn encode_bounded(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(encode_offsets_bounded(tk, text)?.0)
}

/// The special tokens a checkpoint's tokenizer puts before a text (its post-processor's: Llama's
/// `<s>`, Llama 3's `<|begin_of_text|>`; none for GPT-2 or Qwen2), which `tokenizer(text)` in
/// transformers starts every sequence with and a pretrained model expects. Found by encoding a
/// probe with and without special tokens; what comes after the text (an end token) is left out:
/// roux closes responses with the model's end token itself.
pub fn special_prefix(tk: &Tokenizer) -> Result<Vec<u32>> {
    const PROBE: &str = "a";
    let guard = crate::bounded::Guard::new("a checkpoint's tokenizer");
    let (plain, full) = guard.run(|| -> Result<_> {
        let ids = |special| tk.encode(PROBE, special).map(|e| e.get_ids().to_vec()).map_err(|e| anyhow!("encoding: {e}"));
        Ok((ids(false)?, ids(true)?))
    }).0?;
    // Where the text's own ids start among those with special tokens.
    let at = if plain.is_empty() { None } else { full.windows(plain.len()).position(|w| w == plain.as_slice()) };
    Ok(at.map_or_else(Vec::new, |at| full[..at].to_vec()))
}

/// `encode_bounded`, with each token's byte offsets in `text`.
pub fn encode_offsets_bounded(tk: &Tokenizer, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
    let guard = crate::bounded::Guard::new("a checkpoint's tokenizer");
    guard.allow_bytes(text.len());
    let e = guard.run(|| tk.encode(text, false)).0.map_err(|e| anyhow!("encoding: {e}"))?;
    Ok((e.get_ids().to_vec(), e.get_offsets().to_vec()))
}

pub fn decode(tk: &Tokenizer, ids: &[u32]) -> Result<String> {
    tk.decode(ids, false).map_err(|e| anyhow!("decoding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte tokenizer with a post-processor template around the text (`<s>` is id 256).
    fn with_template(single: serde_json::Value) -> Tokenizer {
        let mut v: serde_json::Value = serde_json::from_str(&bytes().unwrap().to_string(false).unwrap()).unwrap();
        v["added_tokens"] = serde_json::json!([{"id": 256, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                                               {"id": 257, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]);
        v["post_processor"] = serde_json::json!({"type": "TemplateProcessing", "single": single, "pair": single,
            "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [257], "tokens": ["</s>"]}}});
        v.to_string().parse().unwrap()
    }

    #[test]
    fn the_special_tokens_before_a_text_are_the_post_processors() {
        let (bos, text, eos) = (serde_json::json!({"SpecialToken": {"id": "<s>", "type_id": 0}}), serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}), serde_json::json!({"SpecialToken": {"id": "</s>", "type_id": 0}}));
        // Llama 2's template: `<s> $A`.
        let llama = with_template(serde_json::json!([bos, text]));
        assert_eq!(special_prefix(&llama).unwrap(), vec![256]);
        assert_eq!(llama.encode("hi", true).unwrap().get_ids(), &[256, 104, 105]);
        // An end token after the text is not a prefix.
        assert_eq!(special_prefix(&with_template(serde_json::json!([bos, text, eos]))).unwrap(), vec![256]);
        assert_eq!(special_prefix(&with_template(serde_json::json!([text, eos]))).unwrap(), Vec::<u32>::new());
        // No post-processor (GPT-2, Qwen2, roux's own BPE and byte tokenizers): nothing.
        assert_eq!(special_prefix(&bytes().unwrap()).unwrap(), Vec::<u32>::new());
    }
}
