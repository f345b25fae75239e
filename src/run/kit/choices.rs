//! A policy's accuracy on multiple-choice questions, as lm-evaluation-harness computes it: each
//! choice scored by the log-likelihood of `delimiter` + the choice after the rendered question
//! (`posttrain::choices` splits the text, `Codec::continuation` the ids); the pick is the most
//! likely choice (`acc`), or the most likely per character of the choice (`acc_norm`).

use anyhow::{bail, Result};
use std::path::Path;
use serde::Serialize;

use super::codec::Codec;
use super::progress::Progress;
use super::seqs::{pad, prompt_response, seq_logprob};
use crate::posttrain::choices::{context_and_continuation, fewshot_prefix, Question, ROWS};
use crate::posttrain::examples::render;
use crate::recipe::{ExampleSource, Recipe, Tokenizer};
use crate::run::model::Model;

/// One question's scores.
#[derive(Serialize)]
pub struct Scored {
    /// Each choice's summed log-likelihood.
    pub loglikelihoods: Vec<f64>,
    pub answer: usize,
    pub pick: usize,
    pub pick_norm: usize,
}

/// Accuracies over the questions, with lm-eval's standard errors, √(p(1 − p)/(n − 1)).
#[derive(Serialize)]
pub struct Accuracy {
    pub acc: f64,
    pub acc_stderr: f64,
    pub acc_norm: f64,
    pub acc_norm_stderr: f64,
    pub questions: usize,
}

/// Score every question with `model`, shown through `template` after `prefix` (the few-shot
/// examples); with `progress`, a line as the questions go (every twentieth of them in a log).
fn score(model: &Model, codec: &Codec, questions: &[Question], [prefix, template, delimiter]: [&str; 3], progress: Option<&Progress>) -> Result<(Accuracy, Vec<Scored>)> {
    let context = model.spec().context;
    let mut scored = vec![];
    for (i, q) in questions.iter().enumerate() {
        let shown = format!("{prefix}{}", render(template, &q.prompt));
        let mut seqs = vec![];
        for (j, c) in q.choices.iter().enumerate() {
            let (ctx, cont) = context_and_continuation(&shown, delimiter, c);
            let (head, tail) = codec.continuation(&ctx, &cont);
            if head.is_empty() {
                bail!("question {}: its rendered prompt is empty and the data has no end marker to start from; give `template` text around {{prompt}}", i + 1);
            }
            if tail.is_empty() || tail.len() > context {
                bail!("question {}, choice {}: its continuation is {} tokens; it must be 1 to the model's context of {context}", i + 1, j + 1, tail.len());
            }
            // The last context + 1 tokens, as lm-eval cuts on the left.
            let mut s = prompt_response(&head, &tail);
            let cut = s.tokens.len().saturating_sub(context + 1);
            s.tokens.drain(..cut);
            s.weights.drain(..cut);
            seqs.push(s);
        }
        let mut ll = vec![];
        for chunk in seqs.chunks(ROWS) {
            let refs: Vec<_> = chunk.iter().collect();
            let b = pad(&refs, model.device);
            let l = model.with_cached_casts(|| seq_logprob(model, &b, false));
            ll.extend(Vec::<f64>::try_from(&l.to_kind(tch::Kind::Double))?);
        }
        let per_char: Vec<f64> = ll.iter().zip(&q.choices).map(|(l, c)| l / c.chars().count().max(1) as f64).collect();
        scored.push(Scored { pick: argmax(&ll), pick_norm: argmax(&per_char), loglikelihoods: ll, answer: q.answer });
        if let Some(p) = progress {
            let right = scored.iter().filter(|s| s.pick == s.answer).count();
            p.line(scored.len() as u64, (questions.len() as u64 / 20).max(1), &format!("accuracy so far {:.1}%", 100.0 * right as f64 / scored.len() as f64), false);
        }
    }
    let n = scored.len();
    let share = |f: &dyn Fn(&Scored) -> bool| scored.iter().filter(|s| f(s)).count() as f64 / n.max(1) as f64;
    let (acc, acc_norm) = (share(&|s| s.pick == s.answer), share(&|s| s.pick_norm == s.answer));
    let stderr = |p: f64| if n > 1 { (p * (1.0 - p) / (n - 1) as f64).sqrt() } else { 0.0 };
    Ok((Accuracy { acc, acc_stderr: stderr(acc), acc_norm, acc_norm_stderr: stderr(acc_norm), questions: n }, scored))
}

/// The first index of the largest value (numpy's argmax, as lm-eval picks).
fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// A multiple-choice set read and ready to score models with (`compare`'s data, `eval_choices`).
pub struct Quiz {
    questions: Vec<Question>,
    codec: Codec,
    /// The few-shot examples shown before each question (empty without).
    prefix: String,
    template: String,
    delimiter: String,
}

impl Quiz {
    /// The first `limit` questions of set `name` (after its few-shot examples), read with
    /// `tokenizer` (a BPE one from `bpe`): the tokens of the model that answers them.
    pub fn read(recipe: &Recipe, name: &str, limit: usize, tokenizer: &Tokenizer, bpe: Option<&Path>) -> Result<Quiz> {
        let Some(set) = recipe.example_set(name) else { bail!("no data set `{name}`") };
        let ExampleSource::Choices { delimiter, fewshot, fewshot_delimiter, description, .. } = &set.source else { bail!("data `{name}` holds no multiple-choice questions") };
        let mut questions = crate::posttrain::examples::questions(set).map_err(anyhow::Error::msg)?;
        let shown: Vec<Question> = questions.drain(..(*fewshot).min(questions.len())).collect();
        questions.truncate(limit);
        // lm-eval's context: the description, the answered examples, then the question.
        let prefix = format!("{description}{}", fewshot_prefix(&shown, &set.template, delimiter, fewshot_delimiter));
        let codec = Codec::reading(recipe, set, tokenizer, bpe)?;
        Ok(Quiz { questions, codec, prefix, template: set.template.clone(), delimiter: delimiter.clone() })
    }

    pub fn len(&self) -> usize {
        self.questions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.questions.is_empty()
    }

    /// `model`'s accuracy, and each question's scores; with `progress`, a line as they go.
    pub fn score(&self, model: &Model, progress: Option<&Progress>) -> Result<(Accuracy, Vec<Scored>)> {
        score(model, &self.codec, &self.questions, [&self.prefix, &self.template, &self.delimiter], progress)
    }
}
