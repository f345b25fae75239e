//! A stage's reward (`reward = …` on `grpo` and `online_dpo`): the weighted sum of its program
//! terms (exact match against the data's answer, format, length, a regular expression) and
//! reward models' scores, each model loaded once and each expression compiled once.

use anyhow::Result;
use std::path::Path;

use crate::posttrain::examples::{Example, Seq};
use crate::posttrain::tasks;
use crate::recipe::{Precision, Recipe, Reward, RewardTerm};
use crate::run::model::heads::RewardModel;

use super::artifacts::load_reward_model;
use super::codec::Codec;
use super::seqs::{micro_rows, to_f64s};

pub struct Rewarder {
    reward: Reward,
    /// Each term's compiled regular expression, for `matches` (None for the others).
    patterns: Vec<Option<regex::Regex>>,
    /// Every reward model a term reads, by stage.
    models: Vec<(String, RewardModel)>,
}

impl Rewarder {
    /// The reward of stage `stage`, its reward models loaded on `device` at `precision`.
    pub fn load(recipe: &Recipe, runs: &Path, stage: &str, reward: &Reward, precision: Precision, device: tch::Device) -> Result<Rewarder> {
        let models = reward.model_stages().into_iter().map(|s| load_reward_model(recipe, runs, s, device).map(|m| (s.to_string(), m.computing(precision))));
        let models = models.collect::<Result<_>>()?;
        // (Check compiled them too.)
        let patterns = reward.terms.iter().map(|(_, t)| match t {
            RewardTerm::Matches { pattern } => crate::recipe::reward_pattern(pattern).map(Some).map_err(|e| anyhow::anyhow!("stage `{stage}`: `matches(\"{pattern}\")`: {e}")),
            _ => Ok(None),
        });
        Ok(Rewarder { reward: reward.clone(), patterns: patterns.collect::<Result<_>>()?, models })
    }

    /// The reward of each response `responses[i]` to `examples[i]`, whose whole sequence (prompt
    /// and response) is `seqs[i]`: reward models read the sequences within `context`, in
    /// `accumulate` micro-batches.
    pub fn rewards(&self, examples: &[&Example], responses: &[Vec<i64>], seqs: &[Seq], codec: &Codec, max_new: usize, context: usize, accumulate: usize) -> Vec<f64> {
        self.totals(&self.terms(examples, responses, seqs, codec, max_new, context, accumulate))
    }

    /// The rewards of responses whose terms are `terms`: their weighted sums.
    pub fn totals(&self, terms: &[Vec<f64>]) -> Vec<f64> {
        terms.iter().map(|t| t.iter().zip(&self.reward.terms).map(|(v, (w, _))| w * v).sum()).collect()
    }

    /// Each term's value (before its weight) for each response, as `rewards` reads them.
    pub fn terms(&self, examples: &[&Example], responses: &[Vec<i64>], seqs: &[Seq], codec: &Codec, max_new: usize, context: usize, accumulate: usize) -> Vec<Vec<f64>> {
        let full: Vec<Vec<i64>> = if self.models.is_empty() { vec![] } else { seqs.iter().map(|s| s.tokens.iter().copied().take(context).collect()).collect() };
        let scores: Vec<(&str, Vec<f64>)> = self.models.iter().map(|(stage, rm)| (stage.as_str(), to_f64s(&rm.score_in_chunks(&full, micro_rows(full.len(), accumulate))))).collect();
        (0..examples.len())
            .map(|i| {
                let score = |stage: &str| scores.iter().find(|(s, _)| *s == stage).map_or(0.0, |(_, v)| v[i]);
                self.terms_of(examples[i], &responses[i], codec, max_new, &score)
            })
            .collect()
    }

    /// Each term's weight and name as a rollout's log shows it (`exact_match`, `format`,
    /// `length`, a reward model's stage, `matches("…")`).
    pub fn described(&self) -> Vec<(f64, String)> {
        let name = |t: &RewardTerm| match t {
            RewardTerm::ExactMatch => "exact_match".to_string(),
            RewardTerm::Format => "format".to_string(),
            RewardTerm::Length => "length".to_string(),
            RewardTerm::Model { stage } => stage.clone(),
            RewardTerm::Matches { pattern } => format!("matches({pattern:?})"),
        };
        self.reward.terms.iter().map(|(w, t)| (*w, name(t))).collect()
    }

    /// One response's terms; `rm_score` gives its score by each reward-model stage.
    fn terms_of(&self, e: &Example, response: &[i64], codec: &Codec, max_new: usize, rm_score: &dyn Fn(&str) -> f64) -> Vec<f64> {
        let answer = e.gold.as_deref().unwrap_or(&e.response);
        self.reward
            .terms
            .iter()
            .zip(&self.patterns)
            .map(|((_, t), pattern)| {
                match t {
                    RewardTerm::ExactMatch => tasks::exact(answer, &codec.decode(response)) as u8 as f64,
                    RewardTerm::Format => codec.ended(response) as u8 as f64,
                    RewardTerm::Length => response.len() as f64 / max_new.max(1) as f64,
                    RewardTerm::Model { stage } => rm_score(stage),
                    RewardTerm::Matches { .. } => pattern.as_ref().is_some_and(|p| p.is_match(&codec.decode(response))) as u8 as f64,
                }
            })
            .collect()
    }
}

/// What a process sampled at a step and how each response was rewarded, for
/// `rollouts/step-N.jsonl`.
pub struct Sampled<'a> {
    pub examples: &'a [&'a Example],
    pub responses: &'a [Vec<i64>],
    /// Each response's terms (`Rewarder::terms`).
    pub terms: &'a [Vec<f64>],
    /// Each response's reward as the stage used it.
    pub rewards: &'a [f64],
}

impl Sampled<'_> {
    /// A line a response: its prompt and answer, the response, its reward and each term's weight
    /// and value, and the fields of `extra(i)` (an object: what the stage made of response i).
    pub fn lines(&self, rewarder: &Rewarder, codec: &Codec, extra: impl Fn(usize) -> serde_json::Value) -> Vec<serde_json::Value> {
        let described = rewarder.described();
        (0..self.responses.len())
            .map(|i| {
                let e = self.examples[i];
                let terms: Vec<_> = described.iter().zip(&self.terms[i]).map(|((w, name), v)| serde_json::json!({"term": name, "weight": w, "value": v})).collect();
                let mut line = serde_json::json!({"prompt": e.prompt, "answer": e.gold.as_deref().unwrap_or(&e.response), "completion": codec.decode(&self.responses[i]), "reward": self.rewards[i], "terms": terms});
                if let (Some(line), serde_json::Value::Object(more)) = (line.as_object_mut(), extra(i)) {
                    line.extend(more);
                }
                line
            })
            .collect()
    }
}
