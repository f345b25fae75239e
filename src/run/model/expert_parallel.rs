//! Expert parallelism (`expert_parallel = N` on a train stage): the run's processes form groups
//! of N (the `Exchange` is one group's collectives; with one group, every process). In a training
//! forward pass each process computes the experts [rank·E/N, (rank+1)·E/N) of every MoE layer, for
//! every token of its group, rank being its place in the group.
//!
//! The router's logits are gathered from the group, so each process routes the group's whole
//! micro-batch exactly as one process would: the same capacity, the same positions, the same
//! dropped tokens, the same auxiliary losses and statistics. Each process then sends its tokens'
//! rows to their experts' owners with one all-to-all and gets the outputs back with another. Both
//! collectives are differentiable (c10d's functional ones), so gradients return the way the rows
//! came.
//!
//! Each process holds only its experts' weights (`Share`: from initialisation, an import or a
//! checkpoint, it keeps its rows of each expert stack, one stack whole at a time at most), so
//! their gradients and AdamW moments are divided too. An owner's gradient of its experts is the
//! sum over every process's loss; divided by the processes, as the data-parallel average divides
//! the rest, it is the one-process gradient (`run/kit/adamw/divided.rs`). Evaluation, where every process holds the same tokens,
//! routes locally, runs its own experts on their rows and sums the shares (`layer_replicated`).
//! Checkpoints and outputs gather each whole stack as its turn to be written comes (`whole`), so
//! they are the one-process files and resume on any number of processes.

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
    /// The sum of every process's `t` (not differentiable: for evaluation).
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor;
}

/// This process's part of every routed expert stack: part `part` of `parts` equal runs of
/// experts (the stack's first dimension), as `Model::from_graph` holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    pub parts: i64,
    pub part: i64,
}

impl Share {
    /// The first row and the number of rows of this part of a stack of `whole` rows.
    pub fn rows(&self, whole: i64) -> (i64, i64) {
        let n = whole / self.parts;
        (self.part * n, n)
    }

    /// This part's rows of a whole stack `t` (a view).
    pub fn of(&self, t: &Tensor) -> Tensor {
        let (first, n) = self.rows(t.size()[0]);
        t.narrow(0, first, n)
    }
}

impl Model {
    /// `moe` when the experts are divided over processes: `layer` in training, `layer_replicated`
    /// in evaluation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_across(&self, across: &dyn Exchange, xf: &Tensor, logits: &Tensor, noise: Option<&Tensor>, router: &RouterSpec, experts: &Experts, e: i64, train: bool) -> (Tensor, Routing) {
        match train {
            true => layer(across, xf, logits, noise, router, experts, e),
            false => layer_replicated(across, xf, logits, router, experts, e),
        }
    }

    /// The indices of the parameters that hold this process's experts only.
    pub fn divided(&self) -> &[usize] {
        &self.divided
    }

    /// This process's rows of `t` when it is whole parameter `j` of a divided stack (a
    /// checkpoint's tensor); `t` itself otherwise.
    pub fn own_rows(&self, j: usize, t: &Tensor) -> Tensor {
        match self.share.filter(|_| self.divided.contains(&j)) {
            Some(s) => s.of(t),
            None => t.shallow_clone(),
        }
    }

    /// Parameter `j` whole (detached): a divided stack gathered from every process (every
    /// process calls it for the same `j`), any other as it is.
    pub fn whole(&self, j: usize) -> Tensor {
        match self.experts_across.as_deref().filter(|_| self.divided.contains(&j)) {
            Some(ex) => tch::no_grad(|| ex.all_gather(&self.params[j].detach().contiguous())),
            None => self.params[j].detach(),
        }
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
    let out = own_experts(&rows, &(r.expert.index_select(0, &received) - q * local), experts, local);
    let back = ex.all_to_all(&out, &recv, &send);
    let gate = r.gate.index_select(0, &sent).to_kind(xf.kind()).unsqueeze(1);
    (Tensor::zeros([n, d], (xf.kind(), xf.device())).index_add(0, &local_tok, &(back * gate)), r)
}

/// An MoE layer in evaluation, every process holding the same tokens `xf` (n, d): the routing
/// (no noise, the same on every process), this process's experts on the rows routed to them, and
/// the gated outputs summed over the processes.
pub fn layer_replicated(ex: &dyn Exchange, xf: &Tensor, logits: &Tensor, router: &RouterSpec, experts: &Experts, e: i64) -> (Tensor, Routing) {
    let local = e / ex.size() as i64;
    let first = ex.rank() as i64 * local;
    let r = route_with(router, logits, None, false, false);
    let mine = r.expert.ge(first).logical_and(&r.expert.lt(first + local)).nonzero().view([-1]);
    let tok = r.tok.index_select(0, &mine);
    let out = own_experts(&xf.index_select(0, &tok), &(r.expert.index_select(0, &mine) - first), experts, local);
    let gate = r.gate.index_select(0, &mine).to_kind(xf.kind()).unsqueeze(1);
    let (n, d) = (xf.size()[0], xf.size()[1]);
    let share = Tensor::zeros([n, d], (xf.kind(), xf.device())).index_add(0, &tok, &(out * gate));
    (ex.all_reduce_sum(&share), r)
}

/// This process's `count` experts on `rows`, the i-th row for expert `which[i]`; the outputs in
/// the rows' order.
fn own_experts(rows: &Tensor, which: &Tensor, experts: &Experts, count: i64) -> Tensor {
    let order = which.argsort_stable(true, 0, false);
    let sizes = Vec::<i64>::try_from(&counts(which, count)).expect("int64 counts");
    let grouped = rows.index_select(0, &order).split_with_sizes(&sizes, 0);
    let outs: Vec<Tensor> = grouped
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let at = |w: &Tensor| w.narrow(0, i as i64, 1);
            let (w1, w3, w2) = (at(experts.w1), experts.w3.map(at), at(experts.w2));
            // (A `train` stage, the only kind that divides experts, trains no adapter.)
            let one = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: experts.act, lora: None };
            one.apply(&x.unsqueeze(0)).squeeze_dim(0)
        })
        .collect();
    let sorted = Tensor::cat(&outs, 0);
    Tensor::zeros(sorted.size(), (sorted.kind(), sorted.device())).index_copy(0, &order, &sorted)
}
