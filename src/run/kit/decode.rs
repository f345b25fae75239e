//! How the next token is drawn from a row's logits, for `roux sample` and for PPO's and GRPO's
//! rollouts alike: transformers' order — repetition penalty, then temperature, top-k, top-p,
//! min-p — and a multinomial draw (or the most likely token at temperature 0).

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::hf::generation::Decoding;
use crate::recipe::RolloutFilters;

/// How PPO or GRPO stage `stage` draws its rollouts, said in the log unless it is plain
/// sampling at temperature 1.
pub fn rollout(stage: &str, temperature: f64, f: &RolloutFilters) -> Decoding {
    let d = Decoding { temperature, top_k: f.top_k.min(i64::MAX as u64) as i64, top_p: f.top_p, min_p: f.min_p, repetition_penalty: f.repetition_penalty };
    if d != Decoding::plain(1.0) {
        tracing::info!("{stage}: rollouts drawn at {}", d.describe());
    }
    d
}

/// Logits (…, V) as the rollouts drew from them: divided by the sampling temperature. The RL
/// losses read log-probabilities, ratios, KL and entropy of this distribution, as TRL's trainers
/// do, since it is the one sampled (the filters aside).
pub fn at_temperature(logits: Tensor, temperature: f64) -> Tensor {
    if temperature == 1.0 {
        logits
    } else {
        logits / temperature
    }
}

/// The next token of each row, (n, 1), from logits (n, V) in float32. `seen` (n, V, bool) marks
/// the tokens already in each row's text, which the repetition penalty reads (`None` when it is 1).
pub fn next_tokens(logits: &Tensor, d: &Decoding, seen: Option<&Tensor>) -> Result<Tensor> {
    let logits = match seen {
        Some(seen) if d.repetition_penalty != 1.0 => penalise(logits, seen, d.repetition_penalty),
        _ => logits.shallow_clone(),
    };
    if d.temperature == 0.0 {
        return Ok(logits.argmax(-1, true));
    }
    // Shifted by the maximum first: a tiny temperature then gives the greedy one-hot
    // distribution instead of inf − inf (NaN). At temperature 1 the numbers are those of
    // softmax(logits), which shifts the same way.
    let mut scores = (&logits - logits.amax(-1, true)) / d.temperature;
    let vocab = scores.size()[scores.dim() - 1];
    let never = f64::NEG_INFINITY;
    if d.top_k > 0 && d.top_k < vocab {
        // Every token at least as likely as the k-th stays (ties with it too, as transformers).
        let (values, _) = scores.topk(d.top_k, -1, true, true);
        let cut = values.narrow(-1, d.top_k - 1, 1);
        scores = scores.masked_fill(&scores.lt_tensor(&cut), never);
    }
    if d.top_p < 1.0 {
        // Nucleus sampling (Holtzman et al. 2020): the tokens past the most likely set whose
        // probability reaches top_p are dropped (the one that crosses it stays).
        let (sorted, order) = scores.softmax(-1, Kind::Float).sort(-1, true);
        let before = sorted.cumsum(-1, Kind::Float) - &sorted;
        let drop_sorted = before.gt(d.top_p);
        let drop = drop_sorted.scatter(-1, &order, &drop_sorted);
        scores = scores.masked_fill(&drop, never);
    }
    if d.min_p > 0.0 {
        // Tokens below min_p × the most likely one's probability (that one always stays).
        let probs = scores.softmax(-1, Kind::Float);
        scores = scores.masked_fill(&probs.lt_tensor(&(probs.amax(-1, true) * d.min_p)), never);
    }
    scores.softmax(-1, Kind::Float).f_multinomial(1, true).context("sampling the next token")
}

/// `seen` with each row's `next` (n, 1) token marked.
pub fn mark(seen: &Tensor, next: &Tensor) -> Tensor {
    seen.scatter_value(-1, next, 1)
}

/// (n, V) bool: the tokens of each row of `rows` (n, T).
pub fn seen_in(rows: &Tensor, vocab: i64) -> Tensor {
    let n = rows.size()[0];
    Tensor::zeros([n, vocab], (Kind::Bool, rows.device())).scatter_value(-1, rows, 1)
}

/// `logits` with those of the `seen` tokens penalised: divided by `penalty` when positive,
/// multiplied when negative (Keskar et al. 2019; transformers' RepetitionPenaltyLogitsProcessor).
fn penalise(logits: &Tensor, seen: &Tensor, penalty: f64) -> Tensor {
    let penalised = (logits * penalty).where_self(&logits.lt(0.0), &(logits / penalty));
    penalised.where_self(seen, logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoding(temperature: f64) -> Decoding {
        Decoding { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }

    /// How often each token is drawn in `n` draws from one row of logits.
    fn counts(logits: &[f32], d: &Decoding, seen: Option<&Tensor>, n: i64) -> Vec<i64> {
        tch::manual_seed(7);
        let row = Tensor::from_slice(logits).view([1, -1]).repeat([n, 1]);
        let seen = seen.map(|s| s.repeat([n, 1]));
        let next = next_tokens(&row, d, seen.as_ref()).expect("draw");
        let mut out = vec![0; logits.len()];
        for t in Vec::<i64>::try_from(&next.view([-1])).expect("ids") {
            out[t as usize] += 1;
        }
        out
    }

    #[test]
    fn each_filter_leaves_the_tokens_it_should() {
        // Probabilities ∝ 8, 4, 2, 1, 1 (0.5, 0.25, 0.125, 0.0625, 0.0625).
        let logits: Vec<f32> = [8f32, 4.0, 2.0, 1.0, 1.0].iter().map(|p| p.ln()).collect();
        let kept = |d: Decoding| counts(&logits, &d, None, 4000).iter().map(|&c| c > 0).collect::<Vec<_>>();
        assert_eq!(kept(decoding(1.0)), [true; 5]);
        assert_eq!(kept(Decoding { top_k: 2, ..decoding(1.0) }), [true, true, false, false, false]);
        // The two tied last tokens stay together with the k-th.
        assert_eq!(kept(Decoding { top_k: 4, ..decoding(1.0) }), [true; 5]);
        // 0.5 + 0.25 reaches 0.7: the token that crosses it stays, the rest go.
        assert_eq!(kept(Decoding { top_p: 0.7, ..decoding(1.0) }), [true, true, false, false, false]);
        // Tokens of at least 0.2 × 0.5.
        assert_eq!(kept(Decoding { min_p: 0.2, ..decoding(1.0) }), [true, true, true, false, false]);
        assert_eq!(kept(decoding(0.0)), [true, false, false, false, false]);
        // Within what top-k keeps, the draw follows the renormalised probabilities: 2 to 1.
        let c = counts(&logits, &Decoding { top_k: 2, ..decoding(1.0) }, None, 6000);
        assert!((c[0] as f64 / 6000.0 - 2.0 / 3.0).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn the_repetition_penalty_reads_each_rows_own_text() {
        // Logits 2 and −1: a penalty of 2 makes them 1 and −2 where seen.
        let logits = Tensor::from_slice(&[2f32, 2.0, -1.0, -1.0, 0.0, 0.0]).view([2, 3]);
        let seen = seen_in(&Tensor::from_slice(&[0i64, 2]).view([2, 1]), 3);
        let out = penalise(&logits, &seen, 2.0);
        assert_eq!(Vec::<f32>::try_from(&out.view([-1])).expect("values"), [1.0, 2.0, -1.0, -1.0, 0.0, 0.0]);
        let seen = mark(&seen, &Tensor::from_slice(&[1i64, 0]).view([2, 1]));
        let out = penalise(&logits, &seen, 2.0);
        assert_eq!(Vec::<f32>::try_from(&out.view([-1])).expect("values"), [1.0, 1.0, -1.0, -2.0, 0.0, 0.0]);
        // Greedy under the penalty: the first row's seen token 0 falls behind token 1.
        let d = Decoding { repetition_penalty: 4.0, ..decoding(0.0) };
        let first = seen_in(&Tensor::from_slice(&[0i64]).view([1, 1]), 3);
        let next = next_tokens(&Tensor::from_slice(&[2f32, 1.0, 0.0]).view([1, 3]), &d, Some(&first)).expect("draw");
        assert_eq!(next.int64_value(&[0, 0]), 1);
    }
}
