//! Where a `dpo` stage's reference log-probabilities come from: the reference run on each batch,
//! or, with `precompute_ref_log_probs` (TRL's), a table computed once before the first step. The
//! table is computed from the policy's starting weights, which are the reference's (a full stage's
//! reference is a copy of them; a LoRA stage's is its base, its adapters starting at zero), so no
//! reference is ever loaded or run while training. A resumed run computes it again, before the
//! checkpoint's weights are loaded.

use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::time::Instant;
use tch::{Kind, Tensor};

use super::logps::{logps, pair_seqs, reference_logps};
use crate::posttrain::examples::{Pair, Seq};
use crate::recipe::{DpoLoss, DpoSpec};
use crate::rng::Rng;
use crate::run::kit::codec::Codec;
use crate::run::kit::dist::{Reduce, World};
use crate::run::kit::progress::Progress;
use crate::run::kit::seqs::{pad, Batch};
use crate::run::model::Model;

/// The reference's log-probabilities of a batch's pairs, however they are had.
pub(super) enum RefLogps<'a> {
    /// The reference run on the batch (none for a reference-free loss: zeros).
    Model(Option<&'a Model>),
    /// Computed before the first step.
    Table(&'a Table),
}

/// Each pair's chosen and rejected response's reference log-probability, `[pairs, 2]`, and which
/// pairs were computed (the others are zeros).
pub(super) struct Table {
    values: Tensor,
    pub computed: BTreeSet<usize>,
}

impl RefLogps<'_> {
    /// The rows of `b`, the chosen responses of the pairs `idx` and then their rejected ones.
    pub fn pairs(&self, b: &Batch, idx: &[usize], loss: DpoLoss) -> Result<Tensor> {
        match self {
            RefLogps::Model(m) => Ok(reference_logps(*m, b, loss)),
            RefLogps::Table(t) => {
                if let Some(i) = idx.iter().find(|i| !t.computed.contains(i)) {
                    bail!("pair {i} has no precomputed reference log-probability (the steps drew another pair than the sampler foresaw)");
                }
                let at = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(t.values.device());
                let rows = t.values.index_select(0, &at);
                Ok(Tensor::cat(&[rows.select(1, 0), rows.select(1, 1)], 0))
            }
        }
    }
}

/// The reference's log-probabilities of the training pairs the run draws and of the held-out
/// pairs, computed before the first step.
pub(super) struct Precomputed {
    pub train: Table,
    pub held: Table,
    seconds: f64,
}

impl Precomputed {
    /// From `policy` at its starting weights (with LoRA, its base: the loop's reference), the
    /// training pairs drawn in micro-batches of `micro` pairs from `sampler`'s starting state.
    /// A progress line (`label`: …) as the pairs go.
    pub fn new(label: &str, policy: &Model, codec: &Codec, train: &[Pair], held: &[Pair], d: &DpoSpec, micro: usize, sampler: Rng, world: &World, dev: tch::Device) -> Result<Precomputed> {
        let started = Instant::now();
        let base = (!policy.lora.is_empty()).then(|| policy.base_view());
        let reference = base.as_ref().unwrap_or(policy);
        let drawn = drawn(sampler, d.opt.steps, d.opt.batch, train.len());
        let all_held: BTreeSet<usize> = (0..held.len()).collect();
        // This process's share of both, counted as they go.
        let total = [drawn.len(), all_held.len()].map(|n| n / world.size + usize::from(world.rank < n % world.size));
        let label = format!("{label}: the reference's log-probabilities");
        let progress = if world.rank == 0 { Progress::new(&label, 0, (total[0] + total[1]) as u64) } else { Progress::silent(&label, 0) };
        let train = table(reference, codec, train, drawn, d.loss, micro, world, dev, (&progress, 0))?;
        let held = table(reference, codec, held, all_held, d.loss, micro, world, dev, (&progress, total[0]))?;
        Ok(Precomputed { train, held, seconds: started.elapsed().as_secs_f64() })
    }

    /// What the stage's first log line says of it, of `pairs` training pairs.
    pub fn describe(&self, pairs: usize) -> String {
        format!(
            "the reference's log-probabilities of the {} pairs the steps draw (of {pairs}) and of {} held-out pairs precomputed in {:.1}s, no reference held",
            crate::diag::thousands(self.train.computed.len() as u64),
            self.held.computed.len(),
            self.seconds
        )
    }
}

/// The pairs `steps` steps of `batch` draw from `rng`, as the stage's sampler draws them.
fn drawn(mut rng: Rng, steps: u64, batch: usize, pairs: usize) -> BTreeSet<usize> {
    (0..steps * batch as u64).map(|_| rng.below(pairs as u64) as usize).collect()
}

/// The table of `reference`'s log-probabilities of `pairs` (as `loss` reads them; zeros for the
/// pairs not in `which`), `chunk` pairs a forward pass, the pairs divided over the processes
/// (every `size`-th to each) and their rows summed across them; `progress` counts this process's
/// pairs from the given count.
fn table(reference: &Model, codec: &Codec, pairs: &[Pair], which: BTreeSet<usize>, loss: DpoLoss, chunk: usize, world: &World, dev: tch::Device, (progress, before): (&Progress, usize)) -> Result<Table> {
    let table = Tensor::zeros([pairs.len() as i64, 2], (Kind::Float, dev));
    let mine: Vec<usize> = which.iter().copied().skip(world.rank).step_by(world.size).collect();
    let context = reference.spec().context;
    let every = (progress.total() / 20).max(1);
    tch::no_grad(|| {
        for (k, part) in mine.chunks(chunk.max(1)).enumerate() {
            let seqs: Vec<(Seq, Seq)> = part.iter().map(|&i| pair_seqs(codec, &pairs[i], context)).collect();
            let rows: Vec<&Seq> = seqs.iter().map(|p| &p.0).chain(seqs.iter().map(|p| &p.1)).collect();
            let n = part.len() as i64;
            let v = logps(reference, &pad(&rows, dev), false, loss).0;
            let at = Tensor::from_slice(&part.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
            let _ = table.shallow_clone().index_copy_(0, &at, &Tensor::stack(&[v.narrow(0, 0, n), v.narrow(0, n, n)], 1));
            progress.line((before + k * chunk.max(1) + part.len()) as u64, every, "pairs", false);
        }
    });
    // (The same `which` on every process: all of them skip an empty table alike.)
    if !which.is_empty() {
        world.all_reduce(&table, Reduce::Sum)?;
    }
    Ok(Table { values: table, computed: which })
}
