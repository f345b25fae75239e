//! Text ↔ token ids for post-training examples: bytes, or the tokenizer of the model they are
//! for (`tokenizer = base.tokenizer`: the checkpoint's tokenizer.json, its end-of-sequence token
//! from the checkpoint's configs). Every stage encodes prompts and responses, and decodes what it
//! generates, through one `Codec`, so a model reads the ids it learned.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

use super::tokenize;
use crate::posttrain::examples::{render, Example, Seq};
use crate::recipe::{ExampleSet, Recipe};

pub struct Codec {
    tk: Option<Tokenizer>,
    template: String,
    /// Closes every response; generation stops once it is produced.
    end: Vec<i64>,
    /// Every marker that ends a generated response: `end`, and a checkpoint's other
    /// end-of-sequence ids (Llama 3 Instruct ends a turn with `<|eot_id|>`, a text with
    /// `<|end_of_text|>`; transformers' `generate` stops at any of them).
    stops: Vec<Vec<i64>>,
    /// Whether `response` appends `end`: not for conversations, whose rendered turns carry the
    /// chat template's own end-of-turn marker.
    append_end: bool,
    /// Starts every prompt: the tokenizer's own special tokens before a text (Llama's `<s>`), as
    /// `tokenizer(prompt)` in transformers gives them. Not before a conversation: chat templates
    /// write their `bos_token` themselves.
    prefix: Vec<i64>,
}

impl Codec {
    /// The codec of example set `set`: bytes, or its model's tokenizer.
    pub fn new(recipe: &Recipe, set: &ExampleSet) -> Result<Codec> {
        let Some(model) = &set.tokenizer else { return Ok(Codec::bytes(set)) };
        let spec = recipe.model(model).context("checked recipe names the tokenizer's model")?;
        let ck = spec.checkpoint.as_ref().with_context(|| format!("model `{model}` is not imported from a checkpoint"))?;
        let tk = tokenize::read(&ck.dir.join(tokenize::FILE))?;
        let stops: Vec<Vec<i64>> = match set.end.as_str() {
            "" => eos_ids(&ck.dir, &tk, spec.vocab)?.into_iter().map(|id| vec![id]).collect(),
            text => vec![ids(&tk, text)?],
        };
        let prefix = if set.chat.is_none() { tokenize::special_prefix(&tk)?.into_iter().map(i64::from).collect() } else { vec![] };
        Ok(Codec { tk: Some(tk), template: set.template.clone(), end: stops[0].clone(), stops, append_end: set.chat.is_none(), prefix })
    }

    /// Bytes: each byte of the UTF-8 text is a token.
    /// Set `set` read with `tokenizer` whatever its own: bytes, a checkpoint's tokenizer, or
    /// the BPE tokenizer.json in `bpe` (a `train` stage's run), which adds no special tokens.
    pub fn reading(recipe: &Recipe, set: &ExampleSet, tokenizer: &crate::recipe::Tokenizer, bpe: Option<&Path>) -> Result<Codec> {
        use crate::recipe::Tokenizer as T;
        match tokenizer {
            T::Bytes => Ok(Codec::bytes(set)),
            T::Model { model, .. } => Codec::new(recipe, &ExampleSet { tokenizer: Some(model.clone()), ..set.clone() }),
            T::Bpe { .. } => {
                let dir = bpe.context("a BPE tokenizer is read from the run that trained it")?;
                let tk = tokenize::read(&dir.join(tokenize::FILE))?;
                let end = ids(&tk, &set.end)?;
                Ok(Codec { tk: Some(tk), template: set.template.clone(), stops: vec![end.clone()], end, append_end: true, prefix: vec![] })
            }
        }
    }

    pub fn bytes(set: &ExampleSet) -> Codec {
        let end: Vec<i64> = set.end.bytes().map(i64::from).collect();
        Codec { tk: None, template: set.template.clone(), stops: vec![end.clone()], end, append_end: true, prefix: vec![] }
    }

    pub fn encode(&self, text: &str) -> Vec<i64> {
        match &self.tk {
            None => text.bytes().map(i64::from).collect(),
            // Encoding without special tokens cannot fail for a loaded tokenizer's own text; an
            // error would be a broken tokenizer.json, already refused when it was read.
            Some(tk) => ids(tk, text).unwrap_or_default(),
        }
    }

    /// The prompt as the model sees it: rendered with the template, encoded, after the
    /// tokenizer's leading special tokens.
    pub fn prompt(&self, prompt: &str) -> Vec<i64> {
        let ids = [self.prefix.clone(), self.encode(&render(&self.template, prompt))].concat();
        // An empty prompt (`template = "{prompt}"` and an empty field) starts after the end
        // marker, as GPT-2 writes unconditioned text after <|endoftext|>: a response must follow
        // something, and generation needs a token to begin from.
        if ids.is_empty() {
            self.end.clone()
        } else {
            ids
        }
    }

    /// The prompt as a model of `context` positions answers it in up to `max_new` tokens: its
    /// last `context − max_new` tokens (at least one) when it is longer, as TRL's
    /// `max_prompt_length` cuts prompts on the left — the end of a prompt, where the template
    /// asks for the answer, is what the response follows.
    pub fn prompt_within(&self, prompt: &str, context: usize, max_new: usize) -> Vec<i64> {
        let ids = self.prompt(prompt);
        let room = crate::posttrain::examples::prompt_room(context, max_new);
        match ids.len().checked_sub(room) {
            Some(cut) if cut > 0 => ids[cut..].to_vec(),
            _ => ids,
        }
    }

    /// Says, once for a stage, how many of `examples`' prompts `prompt_within` cuts.
    pub fn note_long_prompts(&self, stage: &str, set: &str, examples: &[&Example], context: usize, max_new: usize) {
        let room = crate::posttrain::examples::prompt_room(context, max_new);
        let long = examples.iter().filter(|e| self.prompt(&e.prompt).len() > room).count();
        if long > 0 {
            tracing::warn!(
                "{stage}: {long} of the {} prompts of `{set}` are longer than the {room} tokens that the context of {context} leaves beside `max_new` = {max_new}: each keeps its last {room} (cut on the left, as TRL's max_prompt_length cuts)",
                examples.len()
            );
        }
    }

    /// A response's ids, the end marker after it.
    pub fn response(&self, response: &str) -> Vec<i64> {
        let mut v = self.encode(response);
        if self.append_end {
            v.extend(&self.end);
        }
        v
    }

    pub fn end(&self) -> &[i64] {
        &self.end
    }

    /// The markers that end a generated response (`end` first).
    pub fn stops(&self) -> &[Vec<i64>] {
        &self.stops
    }

    /// Whether a generated response ends with an end marker: it stopped within `max_new`.
    pub fn ended(&self, response: &[i64]) -> bool {
        self.stops.iter().any(|s| !s.is_empty() && response.ends_with(s))
    }

    /// A generated response's text, without the first end marker in it and anything after.
    pub fn decode(&self, response: &[i64]) -> String {
        let cut = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| response.windows(s.len()).position(|w| w == s.as_slice())).min();
        let ids = &response[..cut.unwrap_or(response.len())];
        match &self.tk {
            None => String::from_utf8_lossy(&ids.iter().map(|&t| t.clamp(0, 255) as u8).collect::<Vec<_>>()).into_owned(),
            Some(tk) => {
                let ids: Vec<u32> = ids.iter().map(|&t| t.clamp(0, u32::MAX as i64) as u32).collect();
                tokenize::decode(tk, &ids).unwrap_or_default()
            }
        }
    }

    /// `template(prompt) ++ response ++ end`, cut to `context + 1` tokens; with `mask_prompt`,
    /// targets inside the prompt weigh exactly zero.
    pub fn sequence(&self, prompt: &str, response: &str, mask_prompt: bool, context: usize) -> Seq {
        crate::posttrain::examples::sequence_of(&self.prompt(prompt), &self.response(response), mask_prompt, context)
    }

    /// An example's training sequence: a conversation's segments, every assistant turn weighted
    /// (with `mask_prompt`, nothing else), or prompt then response.
    pub fn example(&self, e: &Example, mask_prompt: bool, context: usize) -> Seq {
        if e.turns.is_empty() {
            return self.sequence(&e.prompt, &e.response, mask_prompt, context);
        }
        let (mut tokens, mut trained) = (vec![], vec![]);
        let parts: Vec<&str> = e.turns.iter().map(|(text, _)| text.as_str()).collect();
        for ((_, t), ids) in e.turns.iter().zip(self.split_ids(&parts)) {
            trained.extend(std::iter::repeat_n(*t || !mask_prompt, ids.len()));
            tokens.extend(ids);
        }
        tokens.truncate(context + 1);
        // weights[i] weighs predicting tokens[i + 1].
        let weights = (1..tokens.len()).map(|i| if trained[i] { 1.0 } else { 0.0 }).collect();
        let prompt_len = trained.iter().position(|&t| t).unwrap_or(tokens.len()).min(tokens.len());
        Seq { tokens, weights, prompt_len }
    }
}

impl Codec {
    /// The ids of `parts` encoded as one text and divided at their boundaries (`posttrain::chat::
    /// parts_of`): a conversation as transformers tokenizes it. Bytes are the same either way.
    fn split_ids(&self, parts: &[&str]) -> Vec<Vec<i64>> {
        let Some(tk) = &self.tk else { return parts.iter().map(|p| self.encode(p)).collect() };
        // As `encode`: a loaded tokenizer's own text encodes; an error is a broken tokenizer.json.
        let (ids, offsets) = tokenize::encode_offsets_bounded(tk, &parts.concat()).unwrap_or_default();
        let mut out = vec![vec![]; parts.len()];
        for (id, part) in ids.into_iter().zip(crate::posttrain::chat::parts_of(&parts.iter().map(|p| p.len()).collect::<Vec<_>>(), &offsets)) {
            out[part].push(i64::from(id));
        }
        out
    }

    /// The ids lm-evaluation-harness scores `continuation` by after `context`: the context's
    /// (after the tokenizer's leading special tokens, as its `add_bos_token = True`), and the
    /// ids the whole text has past them, so a token that merges across the boundary counts to
    /// the continuation. An empty context is the end marker, as lm-eval starts from end-of-text.
    pub fn continuation(&self, context: &str, continuation: &str) -> (Vec<i64>, Vec<i64>) {
        let ctx = self.encode(context);
        let cont = if ctx.is_empty() {
            self.encode(continuation)
        } else {
            let whole = self.encode(&format!("{context}{continuation}"));
            whole[ctx.len().min(whole.len())..].to_vec()
        };
        let head = [self.prefix.clone(), ctx].concat();
        (if head.is_empty() { self.end.clone() } else { head }, cont)
    }

    /// A prompt's ids and a response's (its end marker after it): apart, or for a conversation
    /// (whose prompt is the rendered history and response the rendered reply) as one text
    /// divided where the reply starts.
    pub fn pair(&self, prompt: &str, response: &str) -> (Vec<i64>, Vec<i64>) {
        if self.append_end {
            return (self.prompt(prompt), self.response(response));
        }
        let mut parts = self.split_ids(&[prompt, response]).into_iter();
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
    }
}

fn ids(tk: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    Ok(tokenize::encode_bounded(tk, text)?.into_iter().map(i64::from).collect())
}

/// The checkpoint's end-of-sequence tokens, as transformers' `generate` takes them:
/// `eos_token_id` of generation_config.json, else of config.json (an id or a list: every one
/// ends a response, the first closes the responses roux trains on), else the tokenizer's
/// `eos_token` (tokenizer_config.json, or special_tokens_map.json as transformers reads them).
pub fn eos_ids(dir: &Path, tk: &Tokenizer, vocab: usize) -> Result<Vec<i64>> {
    let ids = named_eos_ids(dir, tk)?;
    // An id past the vocabulary would end every response with a token the model cannot embed.
    if let Some(id) = ids.iter().find(|&&id| !(0..vocab as i64).contains(&id)) {
        bail!("{}: the end-of-sequence id {id} is outside the model's vocabulary of {vocab} (config.json's vocab_size); the configs and the weights must come from the same model", dir.display());
    }
    Ok(ids)
}

/// The end-of-sequence ids the checkpoint's configs name, as transformers reads them.
fn named_eos_ids(dir: &Path, tk: &Tokenizer) -> Result<Vec<i64>> {
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&super::files::read_capped(&path, crate::hf::MAX_CONFIG)?).with_context(|| format!("{} is not valid JSON", path.display()))?;
        // (A multimodal config keeps its text model's under `text_config`.)
        let named = if v["eos_token_id"].is_null() { &v["text_config"]["eos_token_id"] } else { &v["eos_token_id"] };
        let ids: Vec<i64> = match named {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_i64()).collect(),
            x => x.as_i64().into_iter().collect(),
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    let v = tokenize::checkpoint_config(dir)?;
    let name = v["eos_token"].as_str().or_else(|| v["eos_token"]["content"].as_str());
    if let Some(id) = name.and_then(|n| tk.token_to_id(n)) {
        return Ok(vec![id as i64]);
    }
    bail!("{} names no end-of-sequence token (eos_token_id in generation_config.json or config.json, eos_token in tokenizer_config.json); set `end = \"…\"` on the data", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{ExampleKind, ExampleSource};

    #[test]
    fn a_prompt_keeps_the_end_that_leaves_max_new_positions() {
        let set = ExampleSet {
            name: "d".into(),
            kind: ExampleKind::Instructions,
            source: ExampleSource::Synthetic { tasks: vec![], count: 1, verbose: 0.0, max_len: 2, desirable: 0.0 },
            template: "Q: {prompt}".into(),
            end: "\n".into(),
            held_out: 0.1,
            tokenizer: None,
            chat: None,
        };
        let c = Codec::bytes(&set);
        let text = |ids: Vec<i64>| String::from_utf8(ids.into_iter().map(|b| b as u8).collect()).expect("bytes");
        // "Q: abcdefgh" is 11 bytes: a context of 10 with 4 new tokens leaves 6.
        assert_eq!(text(c.prompt_within("abcdefgh", 10, 4)), "cdefgh");
        assert_eq!(text(c.prompt_within("abcdefgh", 15, 4)), "Q: abcdefgh");
        // max_new at or past the context: the last token alone.
        assert_eq!(text(c.prompt_within("abcdefgh", 10, 12)), "h");
        // An empty prompt follows the end marker.
        let bare = Codec::bytes(&ExampleSet { template: "{prompt}".into(), ..set.clone() });
        assert_eq!(text(bare.prompt("")), "\n");
        assert_eq!(text(bare.sequence("", "ab", true, 8).tokens), "\nab\n");
    }

    #[test]
    fn an_end_of_sequence_id_past_the_vocabulary_is_refused_with_its_folder() {
        let dir = std::env::temp_dir().join(format!("roux-eos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [7, 1000]}"#).expect("config");
        let tk = tokenize::bytes().expect("byte tokenizer");
        assert_eq!(eos_ids(&dir, &tk, 1001).expect("in range"), vec![7, 1000]);
        let e = eos_ids(&dir, &tk, 400).expect_err("past the vocabulary").to_string();
        assert_eq!(e, format!("{}: the end-of-sequence id 1000 is outside the model's vocabulary of 400 (config.json's vocab_size); the configs and the weights must come from the same model", dir.display()));
        std::fs::remove_dir_all(&dir).ok();
    }
}
