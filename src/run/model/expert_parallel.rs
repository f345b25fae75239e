//! Expert parallelism (`expert_parallel = N` on a train stage, N the run's processes): in a
//! training forward pass each process computes the experts [rank·E/N, (rank+1)·E/N) of every MoE
//! layer, for every process's tokens.
//!
//! The router's logits are gathered from all processes, so each process routes the whole global
//! micro-batch exactly as one process would: the same capacity, the same positions, the same
//! dropped tokens, the same auxiliary losses and statistics. Each process then sends its tokens'
//! rows to their experts' owners with one all-to-all and gets the outputs back with another. Both
//! collectives are differentiable (c10d's functional ones), so gradients return the way the rows
//! came. Weights stay replicated: a process's gradient of another's experts is zero, and the data-
//! parallel average of gradients (which the stage takes anyway) gives every copy the one-process
//! gradient. Evaluation and generation compute every expert locally (the weights are all there).

use tch::Tensor;

use super::moe::{counts, route_with, Experts, Routing};
use super::Model;
use crate::recipe::RouterSpec;

/// The differentiable collectives expert parallelism needs (`run/kit/dist.rs` provides them).
/// A failure (a peer that died) panics: the forward pass has no error path, and torchrun stops
/// the job when a process exits.
pub trait Exchange {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every process's `t` stacked along the first dimension in rank order.
    fn all_gather(&self, t: &Tensor) -> Tensor;
    /// Rows of `t` to each process (`send[r]` to rank r); `recv[r]` rows back from each.
    fn all_to_all(&self, t: &Tensor, send: &[i64], recv: &[i64]) -> Tensor;
}

impl Model {
    /// `moe`'s training form when the experts are divided over processes (`layer`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_across(&self, across: &dyn Exchange, xf: &Tensor, logits: &Tensor, noise: Option<&Tensor>, router: &RouterSpec, experts: &Experts, e: i64) -> (Tensor, Routing) {
        layer(across, xf, logits, noise, router, experts, e)
    }
}

/// An MoE layer over this process's tokens `xf` (n, d), given their router `logits` (n, E) (and
/// the noise projection, for noisy top-k): the output rows of these tokens and the routing of
/// the global micro-batch.
pub fn layer(ex: &dyn Exchange, xf: &Tensor, logits: &Tensor, noise: Option<&Tensor>, router: &RouterSpec, experts: &Experts, e: i64) -> (Tensor, Routing) {
    let (w, q) = (ex.size() as i64, ex.rank() as i64);
    let (n, d) = (xf.size()[0], xf.size()[1]);
    let r = route_with(router, &ex.all_gather(logits), noise.map(|t| ex.all_gather(t)).as_ref(), true, false);
    let local = e / w;
    let (owner, home) = (r.expert.divide_scalar_mode(local, "floor"), r.tok.divide_scalar_mode(n, "floor"));
    let c = r.capacity;
    // What this process sends: its tokens' assignments by expert and position (so grouped by owner).
    let mine = home.eq(q).nonzero().view([-1]);
    let key = r.expert.index_select(0, &mine) * c + r.pos.index_select(0, &mine);
    let sent = mine.index_select(0, &key.argsort(0, false));
    // What it receives: the assignments to its experts by sender, then expert and position —
    // the order the all-to-all delivers them in. Every process knows both from the routing.
    let theirs = owner.eq(q).nonzero().view([-1]);
    let key = (home.index_select(0, &theirs) * e + r.expert.index_select(0, &theirs)) * c + r.pos.index_select(0, &theirs);
    let received = theirs.index_select(0, &key.argsort(0, false));
    let send = Vec::<i64>::try_from(&counts(&owner.index_select(0, &sent), w)).expect("int64 counts");
    let recv = Vec::<i64>::try_from(&counts(&home.index_select(0, &received), w)).expect("int64 counts");
    let local_tok = r.tok.index_select(0, &sent) - q * n;
    let rows = ex.all_to_all(&xf.index_select(0, &local_tok), &send, &recv);
    let out = own_experts(&rows, &(r.expert.index_select(0, &received) - q * local), experts, q * local, local);
    let back = ex.all_to_all(&out, &recv, &send);
    let gate = r.gate.index_select(0, &sent).to_kind(xf.kind()).unsqueeze(1);
    (Tensor::zeros([n, d], (xf.kind(), xf.device())).index_add(0, &local_tok, &(back * gate)), r)
}

/// Experts `first..first + count` on `rows`, the i-th row for expert `first + which[i]`; the
/// outputs in the rows' order.
fn own_experts(rows: &Tensor, which: &Tensor, experts: &Experts, first: i64, count: i64) -> Tensor {
    let order = which.argsort_stable(true, 0, false);
    let sizes = Vec::<i64>::try_from(&counts(which, count)).expect("int64 counts");
    let grouped = rows.index_select(0, &order).split_with_sizes(&sizes, 0);
    let outs: Vec<Tensor> = grouped
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let at = |w: &Tensor| w.narrow(0, first + i as i64, 1);
            let (w1, w3, w2) = (at(experts.w1), experts.w3.map(at), at(experts.w2));
            let one = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: experts.act };
            one.apply(&x.unsqueeze(0)).squeeze_dim(0)
        })
        .collect();
    let sorted = Tensor::cat(&outs, 0);
    Tensor::zeros(sorted.size(), (sorted.kind(), sorted.device())).index_copy(0, &order, &sorted)
}
