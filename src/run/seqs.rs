//! Variable-length sequences for post-training: right-padded batches with loss weights,
//! per-token log-probabilities, batched generation, and the scores of a policy on held-out
//! prompts (exact match, gold reward, KL to a reference).

use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

use super::model::{KvCache, Model};
use crate::posttrain::examples::{render, Example, Seq};
use crate::posttrain::tasks;
use crate::recipe::ExampleSet;

/// Inputs, next-token targets and target weights, (B, T) each; padding weighs zero. Padding
/// sits at the end of each row, so causal attention never lets a real token see it.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub w: Tensor,
}

pub fn pad(seqs: &[&Seq], device: Device) -> Batch {
    let t = seqs.iter().map(|s| s.tokens.len().saturating_sub(1)).max().unwrap_or(1).max(1);
    let (mut x, mut y, mut w) = (vec![0i64; seqs.len() * t], vec![0i64; seqs.len() * t], vec![0f32; seqs.len() * t]);
    for (r, s) in seqs.iter().enumerate() {
        let n = s.tokens.len().saturating_sub(1);
        x[r * t..r * t + n].copy_from_slice(&s.tokens[..n]);
        y[r * t..r * t + n].copy_from_slice(&s.tokens[1..]);
        w[r * t..r * t + n].copy_from_slice(&s.weights[..n]);
    }
    let shape = [seqs.len() as i64, t as i64];
    Batch {
        x: Tensor::from_slice(&x).view(shape).to_device(device),
        y: Tensor::from_slice(&y).view(shape).to_device(device),
        w: Tensor::from_slice(&w).view(shape).to_device(device),
    }
}

/// log p(y_t | x_≤t) for every position: (B, T, V) logits and (B, T) targets → (B, T).
pub fn token_logprobs(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).gather(2, &y.unsqueeze(-1), false).squeeze_dim(-1)
}

/// Σ over weighted positions of log p: the log-probability of each row's response, (B).
pub fn seq_logprob(model: &Model, b: &Batch, train: bool) -> Tensor {
    (token_logprobs(&model.forward(&b.x, train), &b.y) * &b.w).sum_dim_intlist(1, false, Kind::Float)
}

/// A prompt and a response as one sequence whose response tokens weigh one.
pub fn prompt_response(prompt: &[i64], response: &[i64]) -> Seq {
    let tokens: Vec<i64> = prompt.iter().chain(response).copied().collect();
    let weights = (0..tokens.len().saturating_sub(1)).map(|i| if i + 1 >= prompt.len() { 1.0 } else { 0.0 }).collect();
    Seq { tokens, weights, prompt_len: prompt.len() }
}

pub fn prompt_ids(set: &ExampleSet, prompt: &str) -> Vec<i64> {
    render(&set.template, prompt).bytes().map(i64::from).collect()
}

/// Continue every prompt by up to `max_new` tokens (fewer where the context ends), stopping a
/// row once it has produced `end`. `temperature` 0 is greedy. Prompts are grouped by length so
/// each group is one dense batch. Returns each response, the end marker included when produced.
pub fn generate(model: &Model, prompts: &[Vec<i64>], max_new: usize, temperature: f64, end: &[u8]) -> Vec<Vec<i64>> {
    let end: Vec<i64> = end.iter().map(|&b| b as i64).collect();
    let mut out = vec![vec![]; prompts.len()];
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.len()).or_default().push(i);
    }
    let ctx = model.spec().context;
    tch::no_grad(|| {
        for (len, rows) in groups {
            let steps = max_new.min(ctx.saturating_sub(len));
            let flat: Vec<i64> = rows.iter().flat_map(|&i| prompts[i].iter().copied()).collect();
            // The prompts go through once; each later step feeds only the token just chosen.
            let mut feed = Tensor::from_slice(&flat).view([rows.len() as i64, len as i64]).to_device(model.device);
            let mut cache = KvCache::default();
            let mut done = vec![false; rows.len()];
            for _ in 0..steps {
                let logits = model.forward_cached(&feed, &mut cache).select(1, -1).to_kind(Kind::Float); // (n, V)
                let next = if temperature == 0.0 {
                    logits.argmax(-1, true)
                } else {
                    (logits / temperature).softmax(-1, Kind::Float).multinomial(1, true)
                }; // (n, 1)
                feed = next.shallow_clone();
                let next: Vec<i64> = Vec::<i64>::try_from(&next.view([-1]).to_device(Device::Cpu)).unwrap_or_default();
                for (k, &i) in rows.iter().enumerate() {
                    if done[k] {
                        continue;
                    }
                    out[i].push(next[k]);
                    done[k] = !end.is_empty() && out[i].ends_with(&end);
                }
                if done.iter().all(|&d| d) {
                    break;
                }
            }
        }
    });
    out
}

/// A response's text, without the end marker and anything after it.
pub fn decode(response: &[i64], end: &[u8]) -> String {
    let bytes: Vec<u8> = response.iter().map(|&t| t.clamp(0, 255) as u8).collect();
    let cut = if end.is_empty() { None } else { bytes.windows(end.len()).position(|w| w == end) };
    String::from_utf8_lossy(&bytes[..cut.unwrap_or(bytes.len())]).into_owned()
}

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
}

impl Score {
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
fn tally(examples: &[Example], responses: &[Vec<i64>], end: &[u8]) -> [f64; 4] {
    let mut t = [0.0; 4];
    for (e, r) in examples.iter().zip(responses) {
        let text = decode(r, end);
        let target = e.gold.as_deref().unwrap_or(&e.response);
        t[0] += tasks::exact(target, &text) as u8 as f64;
        t[1] += text.starts_with(target) as u8 as f64;
        t[2] += (text.starts_with(target) && text.len() > target.len()) as u8 as f64;
        t[3] += tasks::gold_reward(target, &text);
    }
    t
}

pub fn score(model: &Model, reference: Option<&Model>, set: &ExampleSet, examples: &[Example], max_new: usize) -> Score {
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| prompt_ids(set, &e.prompt)).collect();
    let end = set.end.as_bytes();
    let greedy = generate(model, &prompts, max_new, 0.0, end);
    let sampled = generate(model, &prompts, max_new, 1.0, end);
    let n = examples.len().max(1) as f64;
    let g = tally(examples, &greedy, end);
    let s = tally(examples, &sampled, end);
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
        t.0 += tasks::exact(e.gold.as_deref().unwrap_or(&e.response), &decode(r, end)) as u8 as f64;
        t.1 += 1.0;
    }
    let by_task = by_task.into_iter().map(|(k, (a, n))| (k, a / n)).collect();
    let samples = examples.iter().zip(&greedy).take(6).map(|(e, r)| (e.prompt.clone(), decode(r, end))).collect();
    Score {
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
    }
}
