//! Variable-length sequences for post-training: right-padded batches with loss weights,
//! per-token log-probabilities, and batched generation with the KV cache.

use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

use anyhow::Result;

use crate::hf::generation::Decoding;
use crate::posttrain::examples::{Example, Seq};
use crate::run::kit::codec::Codec;
use crate::run::kit::decode;
use crate::run::model::{KvCache, Model};

/// Inputs, next-token targets and target weights, (B, T) each; padding weighs zero. Padding
/// sits at the end of each row, so causal attention never lets a real token see it.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub w: Tensor,
}

impl Batch {
    /// The rows `idx` (row indices on the batch's device), at the same padded width.
    pub fn rows(&self, idx: &Tensor) -> Batch {
        Batch { x: self.x.index_select(0, idx), y: self.y.index_select(0, idx), w: self.w.index_select(0, idx) }
    }

    /// The weighted (trained) positions: a count of response tokens.
    pub fn tokens(&self) -> f64 {
        self.w.sum(Kind::Float).double_value(&[])
    }
}

/// The rows of one of `k` micro-batches of `n` rows (`accumulate = k`): as even as they go, the
/// last the shortest; `k` larger than `n` leaves one row in each of `n`.
pub fn micro_rows(n: usize, k: usize) -> usize {
    n.div_ceil(k.max(1)).max(1)
}

/// `f` on `b` in `k` micro-batches of consecutive rows, each of its outputs concatenated over
/// them by rows: what `f(b)` computes whole, with a k-th of its intermediate memory (no_grad
/// scoring passes over a rollout batch).
pub fn by_micro_batch<const N: usize>(b: &Batch, k: usize, mut f: impl FnMut(&Batch) -> [Tensor; N]) -> [Tensor; N] {
    let n = b.x.size()[0];
    if k <= 1 {
        return f(b);
    }
    let rows: Vec<i64> = (0..n).collect();
    let parts: Vec<[Tensor; N]> = rows.chunks(micro_rows(n as usize, k)).map(|part| f(&b.rows(&Tensor::from_slice(part).to_device(b.x.device())))).collect();
    std::array::from_fn(|i| Tensor::cat(&parts.iter().map(|p| &p[i]).collect::<Vec<_>>(), 0))
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

/// Continue every prompt by up to `max_new` tokens (fewer where the context ends), stopping a
/// row once it has produced one of the `stops`, each token drawn as `d` says (temperature 0 is
/// greedy). Prompts are grouped by length so each group is one dense batch. Returns each
/// response, the end marker included when produced.
pub fn generate(model: &Model, prompts: &[Vec<i64>], max_new: usize, d: &Decoding, stops: &[Vec<i64>]) -> Result<Vec<Vec<i64>>> {
    if prompts.iter().any(Vec::is_empty) {
        anyhow::bail!("a prompt holds no tokens: a response must follow at least one");
    }
    let mut out = vec![vec![]; prompts.len()];
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.len()).or_default().push(i);
    }
    let (ctx, vocab) = (model.spec().context, model.spec().vocab as i64);
    // Each weight cast to the compute kind once for the whole generation, not once per token.
    model.with_cached_casts(|| -> Result<()> {
        for (len, rows) in groups {
            let steps = max_new.min(ctx.saturating_sub(len));
            let flat: Vec<i64> = rows.iter().flat_map(|&i| prompts[i].iter().copied()).collect();
            // The prompts go through once; each later step feeds only the token just chosen.
            let mut feed = Tensor::from_slice(&flat).view([rows.len() as i64, len as i64]).to_device(model.device);
            // The tokens each row's text holds, for the repetition penalty.
            let mut seen = (d.repetition_penalty != 1.0).then(|| decode::seen_in(&feed, vocab));
            let mut cache = KvCache::default();
            let mut done = vec![false; rows.len()];
            for _ in 0..steps {
                let logits = model.forward_next(&feed, &mut cache).to_kind(Kind::Float); // (n, V)
                let next = decode::next_tokens(&logits, d, seen.as_ref())?; // (n, 1)
                seen = seen.map(|s| decode::mark(&s, &next));
                feed = next.shallow_clone();
                let next: Vec<i64> = Vec::<i64>::try_from(&next.view([-1]).to_device(Device::Cpu)).unwrap_or_default();
                for (k, &i) in rows.iter().enumerate() {
                    if done[k] {
                        continue;
                    }
                    out[i].push(next[k]);
                    done[k] = stops.iter().any(|s| !s.is_empty() && out[i].ends_with(s));
                }
                if done.iter().all(|&d| d) {
                    break;
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// `model`'s responses to the prompts of `examples`, each cut on the left to leave `max_new`
/// positions of `context` (`Codec::prompt_within`) and continued as `d` draws: each response, and
/// it after its prompt as a sequence whose response tokens weigh one. What every stage that
/// samples (PPO, GRPO, online DPO, best-of-n, distillation) trains on.
pub fn respond(model: &Model, codec: &Codec, examples: &[&Example], context: usize, max_new: usize, d: &Decoding) -> Result<(Vec<Vec<i64>>, Vec<Seq>)> {
    let prompts: Vec<Vec<i64>> = examples.iter().map(|e| codec.prompt_within(&e.prompt, context, max_new)).collect();
    let responses = generate(model, &prompts, max_new, d, codec.stops())?;
    let seqs = prompts.iter().zip(&responses).map(|(q, r)| prompt_response(q, r)).collect();
    Ok((responses, seqs))
}

/// A tensor's values as f64, in row-major order.
pub fn to_f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous().view([-1])).unwrap_or_default()
}

/// Seeds libtorch's generators for step `step` of a stage seeded `seed`, alike on every process
/// (reseeded every step, so a resumed run draws what an uninterrupted one does).
pub fn seed_step(seed: u64, step: u64) {
    tch::manual_seed((seed ^ step.wrapping_mul(0x9E37_79B9)) as i64);
}

/// After the draws every process shares, a stream of its own for process `rank` to sample its
/// rollouts from; rank 0 keeps the step's, so one process samples what it always has.
pub fn own_stream(seed: u64, step: u64, rank: usize) {
    if rank > 0 {
        tch::manual_seed((seed ^ step.wrapping_mul(0x9E37_79B9) ^ (rank as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)) as i64);
    }
}
