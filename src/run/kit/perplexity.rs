//! A policy's perplexity on a corpus's held-out split, as lm-evaluation-harness scores a
//! perplexity task (its rolling log-likelihood over each wikitext document) and Hugging Face's
//! perplexity guide slides a window: every token of a document after its first is predicted
//! once, from up to the model's context of the document's tokens before it. Windows move by
//! `stride` (the context: they do not overlap); each scores only the tokens no window before it
//! scored, so a smaller stride gives each token more context at the cost of more passes.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Kind;

use super::data::Corpus;
use super::progress::Progress;
use super::seqs::{pad, token_logprobs};
use crate::posttrain::choices::ROWS;
use crate::posttrain::examples::Seq;
use crate::recipe::{DataSpec, Recipe, Tokenizer};
use crate::run::model::Model;

/// What a policy scored on the held-out split.
#[derive(Serialize)]
pub struct Perplexity {
    /// Tokens predicted (all but the first) and the passes that predicted them.
    pub tokens: u64,
    pub windows: u64,
    /// Mean negative log-likelihood per token, in nats, and its exponential.
    pub loss: f64,
    pub perplexity: f64,
    /// The summed negative log-likelihood over the text's bytes, in bits (a measure two
    /// tokenizers share), and over its bytes and words as perplexities (lm-eval's wikitext).
    pub bits_per_byte: f64,
    pub byte_perplexity: f64,
    pub word_perplexity: f64,
    /// The mean loss of the tokens predicted from each span of context lengths (at most
    /// `POSITION_BUCKETS` spans of equal width, from 1 token before): (the span's first length,
    /// its last, its mean loss, its tokens), those no token fell in left out. Whether the model
    /// uses its context: a flat line does not.
    pub by_position: Vec<(usize, usize, f64, u64)>,
}

/// Spans of context length `by_position` averages over (so a long context's stays short).
pub const POSITION_BUCKETS: usize = 64;

/// The windows over `n` tokens for a model of `context` moving by `stride` (at most the
/// context): (first token, end, first target scored), the window's tokens being `first..end`
/// and its scored targets `scored..end`. Made as they are read: a gigabyte of held-out text at
/// stride 1 is a billion of them.
pub fn windows(n: usize, context: usize, stride: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let stride = stride.clamp(1, context.max(1));
    let mut next = (1, (context + 1).min(n));
    std::iter::from_fn(move || {
        let (scored, end) = next;
        next = (end, (end + stride).min(n));
        (scored < end).then(|| (end.saturating_sub(context + 1), end, scored))
    })
}

/// How many windows `windows` makes: the first, then one for each `stride` tokens past it.
pub fn count(n: usize, context: usize, stride: usize) -> usize {
    let stride = stride.clamp(1, context.max(1));
    if n < 2 { 0 } else { 1 + (n - 1).saturating_sub(context).div_ceil(stride) }
}

/// A corpus's held-out tokens, where its documents start, and the size of their text, ready to
/// score models with.
pub struct Heldout {
    tokens: Vec<u32>,
    documents: Vec<usize>,
    bytes: u64,
    words: u64,
    /// The largest id: a model must embed it.
    top: u32,
}

impl Heldout {
    /// The validation split of corpus `name`, read as `train` reads it: bytes, the imported
    /// model's tokenizer from its checkpoint folder, or BPE with the tokenizer.json in `bpe`.
    pub fn load(recipe: &Recipe, name: &str, bpe: Option<&Path>) -> Result<Heldout> {
        let Some(spec) = recipe.data(name) else { bail!("no corpus `{name}`") };
        Heldout::of(recipe, spec, bpe)
    }

    /// The validation split of corpus `name` read with `tokenizer` whatever its own (a BPE one
    /// from `bpe`): what `train` evaluates other corpora with, its own tokens, and a `compare`
    /// policy reads a corpus with, those it learned. The same text whatever the tokens: the split
    /// is made in bytes.
    pub fn read_as(recipe: &Recipe, name: &str, tokenizer: &Tokenizer, bpe: Option<&Path>) -> Result<Heldout> {
        let Some(spec) = recipe.data(name) else { bail!("no corpus `{name}`") };
        Heldout::of(recipe, &DataSpec { tokenizer: tokenizer.clone(), ..spec.clone() }, bpe)
    }

    fn of(recipe: &Recipe, spec: &DataSpec, bpe: Option<&Path>) -> Result<Heldout> {
        let checkpoint = match &spec.tokenizer {
            Tokenizer::Model { model, .. } => recipe.model(model).and_then(|m| m.checkpoint.as_ref()).map(|c| c.dir.clone()),
            _ => None,
        };
        let c = Corpus::validation(spec, bpe, checkpoint.as_deref())?;
        let top = c.val.iter().copied().max().unwrap_or(0);
        Ok(Heldout { tokens: c.val, documents: c.val_documents, bytes: c.val_bytes, words: c.val_words, top })
    }

    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The text's bytes and words.
    pub fn size(&self) -> (u64, u64) {
        (self.bytes, self.words)
    }

    /// The documents (a plain text is one).
    pub fn documents(&self) -> usize {
        self.documents.len()
    }

    /// Each document's (start, end) in the tokens.
    fn spans(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ends = self.documents.iter().skip(1).copied().chain([self.tokens.len()]);
        self.documents.iter().copied().zip(ends)
    }

    /// The windows `model` scores with `stride` (None: its context), document by document.
    pub fn windows(&self, model: &Model, stride: Option<usize>) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let context = model.spec().context;
        let stride = stride.unwrap_or(context);
        self.spans().flat_map(move |(start, end)| windows(end - start, context, stride).map(move |(a, b, c)| (start + a, start + b, start + c)))
    }

    /// How many windows `windows` makes.
    pub fn count(&self, model: &Model, stride: Option<usize>) -> usize {
        let context = model.spec().context;
        self.spans().map(|(start, end)| count(end - start, context, stride.unwrap_or(context))).sum()
    }

    /// `model`'s mean loss on the first `windows` windows of its context (the same tokens at
    /// every call: an in-loop evaluation's curve).
    pub fn loss(&self, model: &Model, windows: usize) -> Result<f64> {
        Ok(self.score_first(model, None, windows, None)?.loss)
    }

    /// `model`'s perplexity; with `progress`, a line as the windows go.
    pub fn score(&self, model: &Model, stride: Option<usize>, progress: Option<&Progress>) -> Result<Perplexity> {
        self.score_first(model, stride, usize::MAX, progress)
    }

    /// `score` over the first `limit` windows (the byte and word measures then divide by the
    /// whole split's text: `loss` reads only the loss).
    fn score_first(&self, model: &Model, stride: Option<usize>, limit: usize, progress: Option<&Progress>) -> Result<Perplexity> {
        let total = self.count(model, stride).min(limit);
        let (context, vocab) = (model.spec().context, model.spec().vocab);
        if self.top as usize >= vocab {
            bail!("the held-out tokens reach id {}, past the model's vocabulary of {vocab}", self.top);
        }
        let (mut nll, mut count, mut done) = (0.0, 0u64, 0usize);
        // Per target index in a window (index i: i + 1 tokens before it): summed loss, tokens.
        let (mut at, mut seen) = (vec![0.0; context], vec![0.0; context]);
        let mut windows = self.windows(model, stride).take(limit).peekable();
        while windows.peek().is_some() {
            let chunk: Vec<_> = windows.by_ref().take(ROWS).collect();
            let seqs: Vec<Seq> = chunk
                .iter()
                .map(|&(first, end, scored)| Seq {
                    tokens: self.tokens[first..end].iter().map(|&t| t as i64).collect(),
                    // Target j is token first + 1 + j.
                    weights: (first + 1..end).map(|t| if t >= scored { 1.0 } else { 0.0 }).collect(),
                    prompt_len: scored - first,
                })
                .collect();
            let b = pad(&seqs.iter().collect::<Vec<_>>(), model.device);
            // (No graph: a training stage's weights require gradients.)
            let l = tch::no_grad(|| model.with_cached_casts(|| token_logprobs(&model.forward(&b.x, false), &b.y) * &b.w));
            let by_index = Vec::<f64>::try_from(&l.sum_dim_intlist(0, false, Kind::Double))?;
            let weights = Vec::<f64>::try_from(&b.w.sum_dim_intlist(0, false, Kind::Double))?;
            for (i, (x, w)) in by_index.iter().zip(&weights).enumerate() {
                at[i] -= x;
                seen[i] += w;
            }
            nll -= by_index.iter().sum::<f64>();
            count += chunk.iter().map(|&(_, end, scored)| (end - scored) as u64).sum::<u64>();
            done += chunk.len();
            if let Some(p) = progress {
                p.line(done as u64, (total as u64 / 20).max(1), &format!("loss so far {:.4}", nll / count.max(1) as f64), false);
            }
        }
        if !nll.is_finite() {
            bail!("the held-out log-likelihood is not finite: the model's weights or logits overflowed");
        }
        let loss = nll / count.max(1) as f64;
        let per = |n: u64| nll / n.max(1) as f64;
        Ok(Perplexity {
            tokens: count,
            windows: done as u64,
            loss,
            perplexity: loss.exp(),
            bits_per_byte: per(self.bytes) / std::f64::consts::LN_2,
            byte_perplexity: per(self.bytes).exp(),
            word_perplexity: per(self.words).exp(),
            by_position: by_position(&at, &seen),
        })
    }
}

/// `at` and `seen` (summed loss and tokens by target index) averaged over spans of context length.
fn by_position(at: &[f64], seen: &[f64]) -> Vec<(usize, usize, f64, u64)> {
    let width = at.len().div_ceil(POSITION_BUCKETS).max(1);
    let spans = at.chunks(width).zip(seen.chunks(width)).enumerate();
    let summed = spans.map(|(k, (l, n))| (k * width + 1, k * width + l.len(), l.iter().sum::<f64>(), n.iter().sum::<f64>()));
    summed.filter(|s| s.3 > 0.0).map(|(a, b, l, n)| (a, b, l / n, n as u64)).collect()
}

#[cfg(test)]
mod tests {
    use super::{count, windows};

    #[test]
    fn every_token_after_the_first_is_scored_once_from_at_most_a_context() {
        // Disjoint windows: 10 tokens, context 4.
        assert_eq!(windows(10, 4, 4).collect::<Vec<_>>(), [(0, 5, 1), (4, 9, 5), (5, 10, 9)]);
        // Stride 2: each window after the first scores its last two targets.
        assert_eq!(windows(10, 4, 2).collect::<Vec<_>>(), [(0, 5, 1), (2, 7, 5), (4, 9, 7), (5, 10, 9)]);
        assert_eq!((windows(1, 4, 4).count(), count(1, 4, 4), count(0, 4, 4)), (0, 0, 0));
        for (n, ctx, stride) in [(2, 4, 4), (100, 7, 3), (64, 8, 8), (65, 8, 1), (9, 8, 100), (5, 4, 4), (6, 4, 4)] {
            let w: Vec<_> = windows(n, ctx, stride).collect();
            assert_eq!(w.len(), count(n, ctx, stride), "{n} {ctx} {stride}");
            let mut seen = vec![0; n];
            for &(first, end, scored) in &w {
                assert!(end - first <= ctx + 1 && first < scored && scored < end);
                seen[scored..end].iter_mut().for_each(|s| *s += 1);
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&s| s == 1), "{n} {ctx} {stride}: {seen:?}");
        }
    }
}
