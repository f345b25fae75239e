//! The scores of a policy on held-out prompts: exact match, gold reward, verbosity, and KL to a
//! reference, greedy and sampled.

use anyhow::Result;
use tch::Kind;

use crate::hf::generation::Decoding;

use super::codec::Codec;
use super::seqs::{generate, pad, prompt_response, seq_logprob};
use crate::posttrain::examples::{Example, Seq};
use crate::posttrain::tasks;
use crate::run::model::Model;

/// A policy's scores on held-out prompts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Score {
    pub examples: usize,
    /// Greedy decoding: share of responses exactly equal to the answer.
    pub exact: f64,
    /// Greedy decoding: mean gold reward.
    pub gold: f64,
    /// Greedy decoding: share that start with the right answer (exact or verbose).
    pub correct: f64,
    /// Greedy decoding: share that are the right answer followed by more.
    pub verbose: f64,
    /// Sampling at temperature 1 (the policy's behaviour, what RL optimises): share of exact,
    /// concise answers (the preferred behaviour), share of verbose ones, mean gold reward.
    pub sampled_exact: f64,
    pub sampled_verbose: f64,
    pub sampled_gold: f64,
    /// Mean over sampled responses of Σ_t log π(y_t) − log π_ref(y_t): KL(π ‖ π_ref) per sequence.
    pub kl: Option<f64>,
    /// Greedy exact match per task (the prompt's first word).
    pub by_task: std::collections::BTreeMap<String, f64>,
    /// A few (prompt, greedy response) pairs to show.
    pub samples: Vec<(String, String)>,
    /// Every prompt's responses (written to `completions/`, not to the report).
    #[serde(skip)]
    pub completions: Vec<Completion>,
}

/// One held-out prompt, what it should get, and the policy's greedy and sampled responses.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Completion {
    pub prompt: String,
    pub answer: String,
    pub greedy: String,
    pub exact: bool,
    pub sampled: String,
    pub sampled_exact: bool,
    pub sampled_gold: f64,
}

impl Score {
    /// What an RL stage's last line says of its policy against where it started (`before`).
    pub fn against(&self, before: &Score) -> String {
        format!(
            "held-out greedy exact match {:.1}% (was {:.1}%), sampled {:.1}% (was {:.1}%), gold reward {:.3} (was {:.3})",
            100.0 * self.exact,
            100.0 * before.exact,
            100.0 * self.sampled_exact,
            100.0 * before.sampled_exact,
            self.sampled_gold,
            before.sampled_gold
        )
    }

    /// A progress line's held-out part (with the sampled verbose share when `verbose`).
    pub fn progress(&self, verbose: bool) -> String {
        let verbose = if verbose { format!(" verbose {:.1}%", 100.0 * self.sampled_verbose) } else { String::new() };
        format!(" | held-out: greedy exact {:.1}%; sampled exact {:.1}%{verbose} gold {:.3}", 100.0 * self.exact, 100.0 * self.sampled_exact, self.sampled_gold)
    }

    /// The first (prompt, greedy response) pair, for a log line: `"reverse ab" → "ba"`, each
    /// escaped as a JSON string (one line whatever the model wrote).
    pub fn example(&self) -> String {
        let quoted = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        self.samples.first().map_or_else(|| "no held-out prompt".into(), |(p, r)| format!("{} → {}", quoted(p), quoted(r)))
    }

    /// Add the scores to a metrics line, each key prefixed (`val_` where the stage logs training
    /// numbers of the same names).
    pub fn log_into(&self, m: &mut serde_json::Value, prefix: &str) {
        let mut put = |k: &str, v: f64| m[format!("{prefix}{k}")] = serde_json::json!(v);
        put("exact", self.exact);
        put("gold", self.gold);
        put("verbose", self.verbose);
        put("correct", self.correct);
        put("sampled_exact", self.sampled_exact);
        put("sampled_verbose", self.sampled_verbose);
        put("sampled_gold", self.sampled_gold);
        if let Some(kl) = self.kl {
            put("kl", kl);
        }
    }
}

/// (exact, correct, verbose, gold) summed over responses.
fn tally(examples: &[Example], responses: &[Vec<i64>], codec: &Codec) -> [f64; 4] {
    let mut t = [0.0; 4];
    for (e, r) in examples.iter().zip(responses) {
        let text = codec.decode(r);
        let target = e.gold.as_deref().unwrap_or(&e.response);
        t[0] += tasks::exact(target, &text) as u8 as f64;
        t[1] += text.starts_with(target) as u8 as f64;
        t[2] += (text.starts_with(target) && text.len() > target.len()) as u8 as f64;
        t[3] += tasks::gold_reward(target, &text);
    }
    t
}

pub fn score(model: &Model, reference: Option<&Model>, codec: &Codec, examples: &[Example], max_new: usize) -> Result<Score> {
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| codec.prompt_within(&e.prompt, model.spec().context, max_new)).collect();
    let greedy = generate(model, &prompts, max_new, &Decoding::plain(0.0), codec.stops())?;
    let sampled = generate(model, &prompts, max_new, &Decoding::plain(1.0), codec.stops())?;
    let n = examples.len().max(1) as f64;
    let g = tally(examples, &greedy, codec);
    let s = tally(examples, &sampled, codec);
    let kl = reference.map(|rf| {
        let seqs: Vec<Seq> = prompts.iter().zip(&sampled).map(|(p, r)| prompt_response(p, r)).collect();
        let mut total = 0.0;
        for chunk in seqs.chunks(64) {
            let refs: Vec<&Seq> = chunk.iter().collect();
            let b = pad(&refs, model.device);
            let d = tch::no_grad(|| seq_logprob(model, &b, false) - seq_logprob(rf, &b, false));
            total += d.sum(Kind::Float).double_value(&[]);
        }
        total / n
    });
    let mut by_task: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for (e, r) in examples.iter().zip(&greedy) {
        let t = by_task.entry(e.prompt.split(' ').next().unwrap_or("").to_string()).or_default();
        t.0 += tasks::exact(e.gold.as_deref().unwrap_or(&e.response), &codec.decode(r)) as u8 as f64;
        t.1 += 1.0;
    }
    let by_task = by_task.into_iter().map(|(k, (a, n))| (k, a / n)).collect();
    let samples = examples.iter().zip(&greedy).take(6).map(|(e, r)| (e.prompt.clone(), codec.decode(r))).collect();
    let completions = examples
        .iter()
        .zip(greedy.iter().zip(&sampled))
        .map(|(e, (g, s))| {
            let answer = e.gold.clone().unwrap_or_else(|| e.response.clone());
            let (greedy, sampled) = (codec.decode(g), codec.decode(s));
            Completion { exact: tasks::exact(&answer, &greedy), sampled_exact: tasks::exact(&answer, &sampled), sampled_gold: tasks::gold_reward(&answer, &sampled), prompt: e.prompt.clone(), answer, greedy, sampled }
        })
        .collect();
    Ok(Score {
        examples: examples.len(),
        exact: g[0] / n,
        correct: g[1] / n,
        verbose: g[2] / n,
        gold: g[3] / n,
        sampled_exact: s[0] / n,
        sampled_verbose: s[2] / n,
        sampled_gold: s[3] / n,
        kl,
        by_task,
        samples,
        completions,
    })
}
