//! Where a `dpo` stage's reference log-probabilities come from: the reference run on each batch,
//! or, with `precompute_ref_log_probs` (TRL's), a table computed once before the first step. The
//! table is computed from the policy's starting weights, which are the reference's (a full stage's
//! reference is a copy of them; a LoRA stage's is its base, its adapters starting at zero), so no
//! reference is ever loaded or run while training. A resumed run computes it again, before the
//! checkpoint's weights are loaded. KTO's reference point reads the reference on each drawn
//! example's mismatched rows too (`kto.rs`): those depend on the example alone, so they are a
//! table as well.

use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::time::Instant;
use tch::{Kind, Tensor};

use super::logps::{logps, reference_logps, Examples};
use crate::posttrain::examples::Seq;
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

/// Each example's rows' reference log-probabilities, `[examples, rows]` (a pair's chosen and
/// rejected response, a judged completion), and which examples were computed (the others are
/// zeros).
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
                let rows = t.rows(idx)?;
                Ok(Tensor::cat(&[rows.select(1, 0), rows.select(1, 1)], 0))
            }
        }
    }

    /// The rows of `b`, the judged completions `idx`.
    pub fn judged(&self, b: &Batch, idx: &[usize], loss: DpoLoss) -> Result<Tensor> {
        match self {
            RefLogps::Model(m) => Ok(reference_logps(*m, b, loss)),
            RefLogps::Table(t) => Ok(t.rows(idx)?.select(1, 0)),
        }
    }
}

impl Table {
    /// The examples `idx`'s rows, `[idx, rows]`.
    fn rows(&self, idx: &[usize]) -> Result<Tensor> {
        if let Some(i) = idx.iter().find(|i| !self.computed.contains(i)) {
            bail!("example {i} has no precomputed reference log-probability (the steps drew another example than the sampler foresaw)");
        }
        let at = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.values.device());
        Ok(self.values.index_select(0, &at))
    }

    /// The sum of the examples `idx`'s rows (each as often as it is named).
    pub fn sum(&self, idx: &[usize]) -> Result<f64> {
        Ok(self.rows(idx)?.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]))
    }
}

/// The reference's log-probabilities of the training examples the run draws and of the held-out
/// ones, computed before the first step; with KTO, of the drawn examples' mismatched rows too.
pub(super) struct Precomputed {
    pub train: Table,
    pub held: Table,
    pub mismatched: Option<Table>,
    /// Each `eval_data` set's held-out examples'.
    pub others: Vec<Table>,
    seconds: f64,
    noun: &'static str,
}

impl Precomputed {
    /// From `policy` at its starting weights (with LoRA, its base: the loop's reference), the
    /// training examples drawn in micro-batches of `micro` from `sampler`'s starting state.
    /// A progress line (`label`: …) as the examples go.
    /// `others`: the `eval_data` sets' held-out examples, each with its codec.
    pub fn new(label: &str, policy: &Model, codec: &Codec, (train, held): (Examples, Examples), others: &[(Examples, &Codec)], d: &DpoSpec, micro: usize, sampler: Rng, world: &World, dev: tch::Device) -> Result<Precomputed> {
        let started = Instant::now();
        let base = (!policy.lora.is_empty()).then(|| policy.base_view());
        let reference = base.as_ref().unwrap_or(policy);
        let context = reference.spec().context;
        let drawn = drawn(sampler, d.opt.steps, d.opt.batch, train.len());
        let all_held: BTreeSet<usize> = (0..held.len()).collect();
        let kto = d.loss == DpoLoss::Kto;
        // This process's share of each, counted as they go.
        let share = |n: usize| n / world.size + usize::from(world.rank < n % world.size);
        let total = share(drawn.len()) * (1 + usize::from(kto)) + share(all_held.len()) + others.iter().map(|(e, _)| share(e.len())).sum::<usize>();
        let label = format!("{label}: the reference's log-probabilities");
        let progress = if world.rank == 0 { Progress::new(&label, 0, total as u64) } else { Progress::silent(&label, 0) };
        let at = Compute { reference, loss: d.loss, chunk: micro, world, dev, progress: &progress };
        let train_table = at.table(train, |i| train.rows(codec, i, context), &drawn, 0)?;
        let mismatched = kto.then(|| at.table(train, |j| train.mismatched(codec, j, context), &drawn, share(drawn.len()))).transpose()?;
        let mut done = share(drawn.len()) * (1 + usize::from(kto));
        let held = at.table(held, |i| held.rows(codec, i, context), &all_held, done)?;
        done += share(all_held.len());
        let mut tables = vec![];
        for (examples, codec) in others {
            let all: BTreeSet<usize> = (0..examples.len()).collect();
            tables.push(at.table(*examples, |i| examples.rows(codec, i, context), &all, done)?);
            done += share(examples.len());
        }
        let noun = if train.width() == 2 { "pairs" } else { "examples" };
        Ok(Precomputed { train: train_table, held, mismatched, others: tables, seconds: started.elapsed().as_secs_f64(), noun })
    }

    /// What the stage's first log line says of it, of `examples` training examples.
    pub fn describe(&self, examples: usize) -> String {
        format!(
            "the reference's log-probabilities of the {} {noun} the steps draw (of {examples}){} and of {} held-out {noun} precomputed in {:.1}s, no reference held",
            crate::diag::thousands(self.train.computed.len() as u64),
            if self.mismatched.is_some() { ", of their mismatched rows for KTO's reference point" } else { "" },
            self.held.computed.len(),
            self.seconds,
            noun = self.noun,
        )
    }
}

/// The pairs `steps` steps of `batch` draw from `rng`, as the stage's sampler draws them.
fn drawn(mut rng: Rng, steps: u64, batch: usize, pairs: usize) -> BTreeSet<usize> {
    (0..steps * batch as u64).map(|_| rng.below(pairs as u64) as usize).collect()
}

/// How a table is computed: `chunk` examples a forward pass of `reference`, as `loss` reads the
/// rows, divided over the processes, this process's examples counted on `progress`.
struct Compute<'a> {
    reference: &'a Model,
    loss: DpoLoss,
    chunk: usize,
    world: &'a World,
    dev: tch::Device,
    progress: &'a Progress,
}

impl Compute<'_> {
    /// The table of the rows `rows(i)` of the examples `which` of `examples` (zeros for the
    /// others): every `size`-th example to each process, the tables summed across them;
    /// `before` examples already counted on the progress line.
    fn table(&self, examples: Examples, rows: impl Fn(usize) -> Vec<Seq>, which: &BTreeSet<usize>, before: usize) -> Result<Table> {
        let width = examples.width() as i64;
        let table = Tensor::zeros([examples.len() as i64, width], (Kind::Float, self.dev));
        let mine: Vec<usize> = which.iter().copied().skip(self.world.rank).step_by(self.world.size).collect();
        let (chunk, every) = (self.chunk.max(1), (self.progress.total() / 20).max(1));
        tch::no_grad(|| {
            for (k, part) in mine.chunks(chunk).enumerate() {
                let seqs: Vec<Vec<Seq>> = part.iter().map(|&i| rows(i)).collect();
                // Column by column: every example's first row, then every example's second.
                let flat: Vec<&Seq> = (0..width as usize).flat_map(|c| seqs.iter().map(move |r| &r[c])).collect();
                let n = part.len() as i64;
                let v = logps(self.reference, &pad(&flat, self.dev), false, self.loss).0;
                let at = Tensor::from_slice(&part.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.dev);
                let columns: Vec<Tensor> = (0..width).map(|c| v.narrow(0, c * n, n)).collect();
                let _ = table.shallow_clone().index_copy_(0, &at, &Tensor::stack(&columns, 1));
                self.progress.line((before + k * chunk + part.len()) as u64, every, if width == 2 { "pairs" } else { "examples" }, false);
            }
        });
        // (The same `which` on every process: all of them skip an empty table alike.)
        if !which.is_empty() {
            self.world.all_reduce(&table, Reduce::Sum)?;
        }
        Ok(Table { values: table, computed: which.clone() })
    }
}
