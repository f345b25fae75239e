//! Activation checkpointing (`activation_checkpointing = true`), as `torch.utils.checkpoint`
//! does it per transformer block: a training forward pass keeps only each block's input, then
//! `Model::backward` runs every block again, last first, with autograd on, and carries the
//! gradient back through it. Each block's stretch of the generators is replayed, so dropout,
//! NEFTune and router jitter draw what they drew the first time: the same step as without it,
//! for about a third more compute and a fraction of the activations.

use anyhow::Result;
use tch::Tensor;

use super::moe::MoeStats;
use super::shim::{backward_from, grad_enabled, Generators};
use super::walk::Walk;
use super::{Model, Packing};

/// Positions in the topological order after which a block's output is the only live value: the
/// ends of the ops before the first block and of every block. Found from the values' last uses,
/// so whatever the graph's shape, a stretch between two of them reads nothing but its input.
pub(super) fn block_ends(paths: &[&str], last_use: &[usize]) -> Vec<usize> {
    let n = paths.len();
    // live[p]: values made at or before p still read after p.
    let mut delta = vec![0i64; n + 1];
    for (j, &l) in last_use.iter().enumerate() {
        if l > j {
            delta[j] += 1;
            delta[l] -= 1;
        }
    }
    let block = |p: usize| -> Option<&str> {
        let rest = paths[p].strip_prefix("blocks.")?;
        Some(&paths[p][..7 + rest.find('.').unwrap_or(rest.len())])
    };
    let first_block = (0..n).find(|&p| block(p).is_some());
    let mut live = 0;
    let mut ends = vec![];
    for p in 0..n.saturating_sub(1) {
        live += delta[p];
        let alone = live == 1 && last_use[p] > p;
        // The end of the ops before the first block, or of a block.
        let end = match block(p) {
            Some(b) => block(p + 1) != Some(b),
            None => Some(p + 1) == first_block,
        };
        if alone && end {
            ends.push(p);
        }
    }
    ends
}

/// One block (or the ops before the first) of a checkpointed pass: what running it again needs.
struct Stretch {
    /// Ops `start..=end` of the order.
    start: usize,
    end: usize,
    /// The value it read (none for the first: it reads the tokens).
    input: Option<Tensor>,
    /// The generators as the stretch found them.
    generators: Generators,
    /// Its MoE layers' auxiliary losses as handed out: leaves, whose gradients say how much of
    /// each the loss took.
    aux: Vec<Tensor>,
}

/// A checkpointed pass waiting for its backward pass.
pub(super) struct Pending {
    stretches: Vec<Stretch>,
    /// The last block's output as the head read it: a leaf.
    top: Tensor,
    tokens: Tensor,
    train: bool,
    packing: Option<Packing>,
}

impl Model {
    /// Whether a forward pass now keeps only the blocks' inputs: asked for, with autograd on and
    /// something to train.
    pub(super) fn recomputes(&self) -> bool {
        self.recompute && !self.block_ends.is_empty() && grad_enabled() && (self.params.iter().any(|p| p.requires_grad()) || !self.lora.is_empty())
    }

    /// Keep only each block's input in training forward passes, running the blocks again in
    /// `backward` (activation checkpointing).
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
        let paths: Vec<&str> = self.order.iter().map(|&n| self.graph.graph[n].path.as_str()).collect();
        self.block_ends = block_ends(&paths, &self.last_use);
    }

    /// `walk` keeping the blocks' inputs only: the blocks run without autograd, the final norm
    /// and head with it, from the last block's output as a leaf.
    pub(super) fn walk_recomputed(&self, tokens: &Tensor, train: bool, loss_only: bool, packing: Option<&Packing>) -> (Tensor, Tensor, Vec<MoeStats>) {
        let n = self.order.len();
        let mut pass = Walk { tokens, train, loss_only, last_only: false, cache: None, packing, offset: 0, hidden: None, moe_stats: vec![] };
        let mut vals: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut stretches = vec![];
        tch::no_grad(|| {
            let mut start = 0usize;
            for &end in &self.block_ends {
                let input = start.checked_sub(1).map(|b| vals[b].as_ref().expect("a block's input is live").shallow_clone());
                let generators = Generators::now(self.device).expect("libtorch reads its generators' state");
                let before = pass.moe_stats.len();
                self.run_ops(start..end + 1, &mut vals, &mut pass);
                let aux = pass.moe_stats[before..].iter_mut().map(|s| {
                    s.aux = s.aux.detach().set_requires_grad(true);
                    s.aux.shallow_clone()
                });
                stretches.push(Stretch { start, end, input, generators, aux: aux.collect() });
                start = end + 1;
            }
        });
        let last = *self.block_ends.last().expect("recomputes() saw block ends");
        let top = vals[last].take().expect("the last block's output").set_requires_grad(true);
        vals[last] = Some(top.shallow_clone());
        self.run_ops(last + 1..n, &mut vals, &mut pass);
        let packing = packing.map(Packing::shallow);
        self.pending.borrow_mut().push(Pending { stretches, top, tokens: tokens.shallow_clone(), train, packing });
        (pass.hidden.expect("the head reads the hidden states"), vals.pop().flatten().expect("head is the last op"), pass.moe_stats)
    }

    /// `loss.backward()`, then the blocks of every checkpointed pass since the last call run
    /// again and take their gradients. Without checkpointing, just `loss.backward()`.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        loss.backward();
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return Ok(());
        }
        // The generators go on from where the caller left them.
        let now = Generators::now(self.device)?;
        for p in pending.into_iter().rev() {
            self.backward_through(p)?;
        }
        now.restore()
    }

    fn backward_through(&self, p: Pending) -> Result<()> {
        self.lora.train.set(p.train);
        let mut grad = p.top.grad();
        for s in p.stretches.into_iter().rev() {
            let aux_grads: Vec<Tensor> = s.aux.iter().map(|a| a.grad()).collect();
            if !grad.defined() && aux_grads.iter().all(|g| !g.defined()) {
                continue;
            }
            s.generators.restore()?;
            let mut vals: Vec<Option<Tensor>> = (0..self.order.len()).map(|_| None).collect();
            let input = s.input.map(|x| x.set_requires_grad(true));
            if let Some(x) = &input {
                vals[s.start - 1] = Some(x.shallow_clone());
            }
            let mut pass = Walk { tokens: &p.tokens, train: p.train, loss_only: false, last_only: false, cache: None, packing: p.packing.as_ref(), offset: 0, hidden: None, moe_stats: vec![] };
            self.run_ops(s.start..s.end + 1, &mut vals, &mut pass);
            let out = vals[s.end].take().expect("the block's output");
            // Each root with the gradient the loss gave it: the block's output, and each auxiliary
            // loss (its weight in the loss).
            let mut roots = vec![];
            if grad.defined() {
                roots.push((out, grad));
            }
            roots.extend(pass.moe_stats.into_iter().zip(aux_grads).filter(|(_, g)| g.defined()).map(|(st, g)| (st.aux, g)));
            // (A stretch of frozen weights that reads no gradient-taking input, as the embeddings
            // under LoRA, has nothing to give one.)
            roots.retain(|(r, _)| r.requires_grad());
            if !roots.is_empty() {
                backward_from(&roots)?;
            }
            grad = input.map_or_else(Tensor::new, |x| x.grad());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_end_where_only_the_residual_stream_is_live() {
        // tokens → emb → [norm1 → attn → resid1(emb, attn) → norm2 → mlp → resid2(resid1, mlp)] × 2 → norm → head
        let paths = ["tokens", "tok_emb", "blocks.0.norm1", "blocks.0.attn", "blocks.0.resid1", "blocks.0.norm2", "blocks.0.mlp", "blocks.0.resid2", "blocks.1.norm1", "blocks.1.attn", "blocks.1.resid1", "blocks.1.norm2", "blocks.1.mlp", "blocks.1.resid2", "norm_f", "head"];
        let last_use = [1, 4, 3, 4, 7, 6, 7, 10, 9, 10, 13, 12, 13, 14, 15, 15];
        // (resid1 has only itself live too, but is inside its block.)
        assert_eq!(block_ends(&paths, &last_use), vec![1, 7, 13]);
        // Learned positions read the tokens again: the embeddings' stretch ends at their sum.
        let paths = ["tokens", "tok_emb", "pos_emb", "embed", "blocks.0.norm1", "blocks.0.mlp", "blocks.0.resid2", "norm_f", "head"];
        let last_use = [2, 3, 3, 6, 5, 6, 7, 8, 8];
        assert_eq!(block_ends(&paths, &last_use), vec![3, 6]);
    }
}
