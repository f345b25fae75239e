//! How a `dpo` stage reads its rows: a prompt and a response as one sequence, and each row's
//! log-probability of its response as the loss reads it, the policy's or the reference's.

use tch::{Kind, Tensor};

use crate::posttrain::examples::{Feedback, Pair, Seq};
use crate::recipe::DpoLoss;
use crate::run::kit::codec::Codec;
use crate::run::kit::losses::wpo_weights;
use crate::run::kit::seqs::{prompt_response, seq_logprob, token_logprobs, Batch};
use crate::run::model::Model;

/// `prompt` then `response`, as the codec encodes them, cut to the context.
pub(super) fn response_seq(codec: &Codec, prompt: &str, response: &str, ctx: usize) -> Seq {
    let (prompt, response) = codec.pair(prompt, response);
    let mut s = prompt_response(&prompt, &response);
    s.tokens.truncate(ctx + 1);
    s.weights.truncate(s.tokens.len().saturating_sub(1));
    s
}

pub(super) fn pair_seqs(codec: &Codec, p: &Pair, ctx: usize) -> (Seq, Seq) {
    (response_seq(codec, &p.prompt, &p.chosen, ctx), response_seq(codec, &p.prompt, &p.rejected, ctx))
}

/// What a stage trains on: preference pairs, or unpaired feedback.
#[derive(Clone, Copy)]
pub(super) enum Examples<'a> {
    Pairs(&'a [Pair]),
    Feedback(&'a [Feedback]),
}

impl Examples<'_> {
    pub fn len(&self) -> usize {
        match self {
            Examples::Pairs(p) => p.len(),
            Examples::Feedback(f) => f.len(),
        }
    }

    /// Rows an example has: a pair's 2, a judged completion's 1.
    pub fn width(&self) -> usize {
        match self {
            Examples::Pairs(_) => 2,
            Examples::Feedback(_) => 1,
        }
    }

    /// Example `i`'s rows: a pair's chosen and rejected response, a judged completion.
    pub fn rows(&self, codec: &Codec, i: usize, ctx: usize) -> Vec<Seq> {
        match self {
            Examples::Pairs(p) => {
                let (c, r) = pair_seqs(codec, &p[i], ctx);
                vec![c, r]
            }
            Examples::Feedback(f) => vec![response_seq(codec, &f[i].prompt, &f[i].completion, ctx)],
        }
    }

    /// KTO's mismatched rows of example `j`: its prompt with the next example's responses (a
    /// mismatch that depends on the example alone, not on how a batch is drawn or divided).
    pub fn mismatched(&self, codec: &Codec, j: usize, ctx: usize) -> Vec<Seq> {
        match self {
            Examples::Pairs(p) => {
                let other = &p[(j + 1) % p.len()];
                [&other.chosen, &other.rejected].map(|response| response_seq(codec, &p[j].prompt, response, ctx)).into()
            }
            Examples::Feedback(f) => vec![response_seq(codec, &f[j].prompt, &f[(j + 1) % f.len()].completion, ctx)],
        }
    }
}

/// Each row's response log-probability as the loss reads it — summed over its tokens, or for IPO,
/// SimPO and ORPO averaged over them (as TRL does, following their papers) — and the sum.
pub(super) fn logps(model: &Model, b: &Batch, train: bool, loss: DpoLoss) -> (Tensor, Tensor) {
    let sum = seq_logprob(model, b, train);
    (as_read(&sum, b, loss), sum)
}

/// Each row's summed log-probability `sum` as the loss reads it (see `logps`).
fn as_read(sum: &Tensor, b: &Batch, loss: DpoLoss) -> Tensor {
    if loss.averages() { sum / b.w.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0) } else { sum.shallow_clone() }
}

/// `logps`, and with `weighting` WPO's weight of each row (`losses::wpo_weights`), from the
/// same logits.
pub(super) fn logps_weighted(model: &Model, b: &Batch, train: bool, loss: DpoLoss, weighting: bool) -> (Tensor, Tensor, Option<Tensor>) {
    if !weighting {
        let (value, sum) = logps(model, b, train, loss);
        return (value, sum, None);
    }
    let logits = model.forward(&b.x, train);
    let tokens = token_logprobs(&logits, &b.y);
    let sum = (&tokens * &b.w).sum_dim_intlist(1, false, Kind::Float);
    let weights = wpo_weights(&logits, &tokens.detach(), &b.w);
    (as_read(&sum, b, loss), sum, Some(weights))
}

/// The reference's log-probabilities of the rows of `b` (zeros for a reference-free loss).
pub(super) fn reference_logps(reference: Option<&Model>, b: &Batch, loss: DpoLoss) -> Tensor {
    match reference {
        Some(r) => tch::no_grad(|| logps(r, b, false, loss).0),
        None => Tensor::zeros([b.x.size()[0]], (Kind::Float, b.x.device())),
    }
}
