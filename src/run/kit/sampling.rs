//! `train`'s samples as it learns (`sample_every`, as llm.c and nanoGPT-style loops print them):
//! `tokens` tokens after the recipe's prompt, read and written with the stage's own tokens, at
//! every `every`-th step and the last, logged (on one line, escaped) and kept as
//! `samples/step-N.txt`. Every process samples (an expert-parallel forward pass needs them all;
//! they draw alike), the leader writes. The draws come after the step's update and evaluation,
//! and the next step seeds its own, so sampling changes nothing the stage trains.

use anyhow::Result;
use std::path::Path;

use super::lifecycle::RunDir;
use super::seqs::generate;
use super::tokenize;
use crate::hf::generation::Decoding;
use crate::recipe::TrainSamples;
use crate::run::model::Model;

pub struct Sampler {
    s: TrainSamples,
    /// The stage's tokenizer (a BPE one it trained or continues, an imported model's); bytes
    /// without one.
    tk: Option<tokenizers::Tokenizer>,
    ids: Vec<i64>,
}

impl Sampler {
    /// Once the corpus is loaded: its tokenizer is then `dir`'s tokenizer.json, if it has one.
    pub fn new(s: &TrainSamples, dir: &Path) -> Result<Sampler> {
        let file = dir.join(tokenize::FILE);
        let tk = file.exists().then(|| tokenize::read(&file)).transpose()?;
        let ids = match &tk {
            Some(tk) => tokenize::special_prefix(tk)?.into_iter().chain(tokenize::encode_bounded(tk, &s.prompt)?).map(i64::from).collect(),
            None => s.prompt.bytes().map(i64::from).collect(),
        };
        Ok(Sampler { s: s.clone(), tk, ids })
    }

    pub fn due(&self, done: u64, steps: u64) -> bool {
        done.is_multiple_of(self.s.every) || done == steps
    }

    /// Sample after `done` steps: within the context (the prompt's last tokens kept), logged
    /// and written by the leading process.
    pub fn sample(&self, run: &RunDir, model: &Model, done: u64) -> Result<()> {
        let context = model.spec().context;
        let tokens = self.s.tokens.min(context.saturating_sub(1)).max(1);
        let prompt = &self.ids[self.ids.len().saturating_sub(context - tokens)..];
        let out = generate(model, &[prompt.to_vec()], tokens, &Decoding::plain(self.s.temperature), &[])?.remove(0);
        let text = match &self.tk {
            Some(tk) => tk.decode(&out.iter().map(|&i| i as u32).collect::<Vec<_>>(), false).map_err(|e| anyhow::anyhow!("decoding a sample: {e}"))?,
            None => String::from_utf8_lossy(&out.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned(),
        };
        if !run.leads {
            return Ok(());
        }
        let text = format!("{}{text}", self.s.prompt);
        // One line, escaped as a JSON string: a model's text could otherwise start a line that a
        // CI runner reads as a command (GitHub's `::error::…`).
        tracing::info!("{}: a sample at step {done}: {}", run.label, serde_json::Value::String(text.clone()));
        super::completions::write_text(run, "samples", &format!("step-{done}.txt"), &text)
    }
}
