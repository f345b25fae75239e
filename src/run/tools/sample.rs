//! `roux sample RUN`: generate text from a trained stage's model (`--chat`: a reply to a user's
//! message through an imported model's chat template); `roux chat RUN`: a conversation with it.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

use crate::hf::{self, generation::{self, Decoding, Draw}};
use crate::posttrain::chat::{Message, Renderer};
use crate::recipe::ModelSpec;
use crate::run::kit::files::{read_capped, read_tensors};
use crate::run::kit::{decode, tokenize};
use crate::run::model::{KvCache, Model};

/// How much to generate and how.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub tokens: usize,
    /// The command line's choices of how to draw each token (the rest: the checkpoint's
    /// generation_config.json, else roux's defaults).
    pub draw: Draw,
    pub seed: u64,
    /// bf16: the forward passes compute in bfloat16 (on a GPU, about twice as fast).
    pub precision: crate::recipe::Precision,
    /// The prompt is a user's message: rendered with the imported model's chat template, the
    /// reply printed alone and ended at the model's end-of-sequence token.
    pub chat: bool,
}

/// A finished stage's model, ready to generate: its definition, weights and tokenizer (none:
/// bytes), and its run's resolved.json.
struct Loaded {
    spec: ModelSpec,
    model: Model,
    tk: Option<tokenizers::Tokenizer>,
    resolved: serde_json::Value,
    device: tch::Device,
    decoding: Decoding,
}

fn load(run: &Path, o: &SampleOptions) -> Result<Loaded> {
    let resolved = run.join("resolved.json");
    let text = read_capped(&resolved, 64 << 20).with_context(|| format!("{} is not a run directory (no resolved.json)", run.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is corrupt", resolved.display()))?;
    let spec = ModelSpec::from_run_json(&v["model"]).map_err(|e| anyhow::anyhow!("{}: {e}", resolved.display()))?;
    let decoding = decoding(&spec, &o.draw)?;
    let weights = run.join("model.safetensors");
    let device = tch::Device::cuda_if_available();
    let model = if weights.exists() {
        let mut model = Model::new(&spec, device)?;
        model.load(&read_tensors(&weights)?)?;
        model
    } else if run.join("adapter.safetensors").exists() {
        // A LoRA stage: its adapter folded into its base here, as `roux merge` would write it.
        let (model, merged, _) = super::merge::merged_model(run, device)?;
        tracing::info!("`{}`: its adapter merged into {} in memory (`roux merge {}` writes the merged model)", merged.stage, merged.base, run.display());
        model
    } else {
        bail!("{} has no model.safetensors yet (is the stage finished?)", run.display());
    };
    let model = model.computing(o.precision);
    tch::manual_seed(o.seed as i64);
    // A BPE run keeps its tokenizer beside the model, an imported model in its checkpoint;
    // otherwise tokens are bytes.
    let checkpoint_tk = spec.checkpoint.as_ref().filter(|c| c.tokenizer && !c.byte_level).map(|c| c.dir.join(tokenize::FILE));
    let tk_path = Some(run.join(tokenize::FILE)).filter(|p| p.exists()).or(checkpoint_tk);
    let tk = tk_path.map(|p| tokenize::read(&p)).transpose()?;
    Ok(Loaded { spec, model, tk, resolved: v, device, decoding })
}

/// How tokens are drawn: the flags, else an imported model's generation_config.json (said, so
/// that a greedy default does not surprise), else roux's defaults.
fn decoding(spec: &ModelSpec, draw: &Draw) -> Result<Decoding> {
    let file = spec.checkpoint.as_ref().map(|c| c.dir.join(hf::GENERATION)).filter(|f| f.exists());
    let config: Option<serde_json::Value> = match &file {
        Some(f) => Some(serde_json::from_str(&read_capped(f, hf::MAX_CONFIG)?).with_context(|| format!("{} is not JSON", f.display()))?),
        None => None,
    };
    let shown = file.as_ref().map_or(String::new(), |f| f.display().to_string());
    let d = generation::resolve(draw, config.as_ref(), &shown).map_err(anyhow::Error::msg)?;
    if let Some(f) = &file {
        tracing::info!("drawing tokens {} (as {} says, where no flag chose)", d.describe(), f.display());
    }
    Ok(d)
}

/// Sample `o.tokens` tokens after `prompt` (with `o.chat`, a user's message after an optional
/// `system` one); the text goes to `on_text` piece by piece as it is generated (each piece whole
/// characters), and the whole text is returned.
pub fn sample_run(run: &Path, prompt: &str, system: Option<&str>, o: &SampleOptions, on_text: &mut dyn FnMut(&str)) -> Result<String> {
    let l = load(run, o)?;
    let (text, stop) = match o.chat {
        true => {
            let (renderer, stop) = chat_template(&l)?;
            let messages: Vec<Message> = system.map(|s| Message::new("system", s)).into_iter().chain([Message::new("user", prompt)]).collect();
            (render(&renderer, &messages)?, stop)
        }
        false => (prompt.to_string(), vec![]),
    };
    let ids = match &l.tk {
        // A plain prompt after the tokenizer's leading special tokens, as `tokenizer(prompt)` in
        // transformers; a chat template writes its own.
        Some(tk) => {
            let prefix = if o.chat { vec![] } else { tokenize::special_prefix(tk)? };
            prefix.into_iter().chain(tokenize::encode_bounded(tk, &text)?).map(i64::from).collect()
        }
        None => text.bytes().map(|b| b as i64).collect(),
    };
    // A chat reply is printed alone; a continuation after its prompt.
    let prompt = if o.chat { "" } else { prompt };
    on_text(prompt);
    Ok(format!("{prompt}{}", generate(&l, ids, o, &stop, on_text)?.0))
}

/// `roux chat`: a conversation with the run's model through the chat template it was trained in.
/// Each message from `next` is a user's turn (after an optional `system` message); the reply goes
/// to `on_text` as it is generated and joins the conversation. When the conversation and a reply of
/// `o.tokens` no longer fit the context, its oldest exchanges are left out (said to `on_note`, as is
/// each turn's length in tokens).
pub fn chat(run: &Path, system: Option<&str>, o: &SampleOptions, next: &mut dyn FnMut() -> Option<String>, on_text: &mut dyn FnMut(&str), on_note: &mut dyn FnMut(&str)) -> Result<()> {
    let l = load(run, o)?;
    let (renderer, stop) = chat_template(&l)?;
    let tk = l.tk.as_ref().expect("a chat template comes with a tokenizer");
    let mut messages: Vec<Message> = system.map(|s| Message::new("system", s)).into_iter().collect();
    let first = messages.len(); // the first message an overlong conversation may leave out
    while let Some(text) = next() {
        messages.push(Message::new("user", &text));
        let ids = loop {
            let ids: Vec<i64> = tokenize::encode_bounded(tk, &render(&renderer, &messages)?)?.into_iter().map(i64::from).collect();
            if ids.len() + o.tokens <= l.spec.context || messages.len() <= first + 1 {
                break ids;
            }
            messages.drain(first..first + 2);
            on_note(&format!("(the oldest exchange is left out, to keep the conversation and a reply within the context of {})", l.spec.context));
        };
        on_note(&format!("({} tokens of conversation)", ids.len()));
        let (reply, _) = generate(&l, ids, o, &stop, on_text)?;
        on_text("\n");
        messages.push(Message::new("assistant", &reply));
    }
    Ok(())
}

/// Up to `o.tokens` tokens after `ids`, stopping at one of `stop`: the text (streamed to `on_text`
/// in whole characters) and the number of tokens generated.
fn generate(l: &Loaded, mut ids: Vec<i64>, o: &SampleOptions, stop: &[i64], on_text: &mut dyn FnMut(&str)) -> Result<(String, usize)> {
    let tokens = o.tokens;
    let (spec, device, tk) = (&l.spec, l.device, l.tk.as_ref());
    if ids.is_empty() {
        ids.push(b'\n' as i64);
    }
    let mut pending: Vec<i64> = vec![];
    let (mut out, mut made) = (String::new(), 0);
    l.model.with_cached_casts(|| -> Result<()> {
        // Tokens go through the model once each (KV cache); once the context is full, the last
        // `context` tokens are fed afresh each step, as a model with learned positions needs.
        let mut cache = KvCache::default();
        let mut fed = 0; // how many of `ids` the cache holds
        for _ in 0..tokens {
            if cache.len + (ids.len() - fed) > spec.context {
                cache = KvCache::default();
                fed = ids.len() - spec.context;
            }
            let x = Tensor::from_slice(&ids[fed..]).view([1, -1]).to_device(device);
            fed = ids.len();
            let logits = l.model.forward_next(&x, &mut cache).to_kind(Kind::Float); // (1, vocab)
            // The repetition penalty reads every token of the text so far, prompt included.
            let seen = (l.decoding.repetition_penalty != 1.0).then(|| decode::seen_in(&Tensor::from_slice(&ids).view([1, -1]).to_device(device), spec.vocab as i64));
            let next = decode::next_tokens(&logits, &l.decoding, seen.as_ref())?.int64_value(&[0, 0]);
            if stop.contains(&next) {
                break;
            }
            ids.push(next);
            pending.push(next);
            made += 1;
            if let Some(piece) = whole_piece(tk, &pending, false)? {
                on_text(&piece);
                out.push_str(&piece);
                pending.clear();
            }
        }
        Ok(())
    })?;
    if let Some(piece) = whole_piece(tk, &pending, true)? {
        on_text(&piece);
        out.push_str(&piece);
    }
    Ok((out, made))
}

/// The chat template the run's model was trained in (its resolved.json's `chat_template`), else
/// its checkpoint's, and the tokens that end a reply.
fn chat_template(l: &Loaded) -> Result<(Renderer, Vec<i64>)> {
    let (Some(c), Some(tk)) = (l.spec.checkpoint.as_ref(), l.tk.as_ref()) else {
        bail!("a chat needs a model imported with hf(\"…\") from a checkpoint with a tokenizer and a chat template; model `{}` is not", l.spec.name)
    };
    let template = match serde_json::from_value::<crate::recipe::ChatTemplate>(l.resolved["chat_template"].clone()) {
        Ok(t) => t,
        Err(_) => {
            let config = tokenize::checkpoint_config(&c.dir)?;
            let jinja = c.dir.join("chat_template.jinja");
            let jinja = if jinja.is_file() { Some(read_capped(&jinja, crate::hf::MAX_CONFIG)?) } else { None };
            crate::hf::chat_template(&config, jinja).map_err(|e| anyhow::anyhow!("{}: the checkpoint {e}", c.dir.display()))?
        }
    };
    let renderer = Renderer::new(&template).map_err(anyhow::Error::msg)?;
    Ok((renderer, crate::run::kit::codec::eos_ids(&c.dir, tk, l.spec.vocab)?))
}

/// The conversation so far, ending where the assistant's reply begins.
fn render(renderer: &Renderer, messages: &[Message]) -> Result<String> {
    renderer.render(messages, &Default::default(), true).map_err(anyhow::Error::msg)
}

/// The text of the tokens generated since the last piece, once they make whole characters (a
/// byte, or a BPE token, may be part of one); at the `end`, whatever they make.
fn whole_piece(tk: Option<&tokenizers::Tokenizer>, pending: &[i64], end: bool) -> Result<Option<String>> {
    if pending.is_empty() {
        return Ok(None);
    }
    Ok(match tk {
        Some(tk) => {
            let ids: Vec<u32> = pending.iter().map(|&i| i as u32).collect();
            let text = tokenize::decode(tk, &ids)?;
            (end || !text.ends_with('\u{FFFD}') || pending.len() >= 8).then_some(text)
        }
        None => {
            let bytes: Vec<u8> = pending.iter().map(|&i| i.clamp(0, 255) as u8).collect();
            match std::str::from_utf8(&bytes) {
                Ok(s) => Some(s.to_string()),
                // An incomplete character waits for its next byte (at most 4 in all).
                Err(e) if e.error_len().is_none() && !end && bytes.len() < 4 => None,
                Err(_) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            }
        }
    })
}
