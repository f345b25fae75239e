//! Unpaired feedback on a `dpo` stage with `loss = kto` (TRL's KTOTrainer on its unpaired
//! format): each completion judged on its own, desirable or not, against KTO's reference point.

use tch::{Kind, Tensor};

use super::reference::RefLogps;
use super::{logps, response_seq, PairScores};
use crate::posttrain::examples::{Feedback, Seq};
use crate::recipe::{kto_balance, KTO_BALANCE};
use crate::run::kit::codec::Codec;
use crate::run::kit::dist::World;
use crate::run::kit::losses::{kto, DpoTerms};
use crate::run::kit::seqs::pad;
use crate::run::model::Model;

/// What a step of KTO on feedback reads: the models, how text becomes rows, the loss's terms.
pub struct Judged<'a> {
    pub policy: &'a Model,
    /// The reference's log-probabilities of the examples (the training set's or the held-out).
    pub reference: &'a RefLogps<'a>,
    pub codec: &'a Codec,
    pub terms: &'a DpoTerms,
    pub context: usize,
    pub dev: tch::Device,
}

impl Judged<'_> {
    /// Rows, labels (1 desirable, 0 not) and implicit rewards β·(log π − log π_ref) of `items`,
    /// and the policy's log-probabilities and the reference's (for the loss); `idx`: the items'
    /// indices, as the reference's table holds them.
    fn rewards(&self, items: &[&Feedback], idx: &[usize], train: bool) -> anyhow::Result<(Tensor, Tensor, Tensor, Tensor)> {
        let rows: Vec<Seq> = items.iter().map(|f| response_seq(self.codec, &f.prompt, &f.completion, self.context)).collect();
        let b = pad(&rows.iter().collect::<Vec<_>>(), self.dev);
        let good: Vec<f32> = items.iter().map(|f| if f.desirable { 1.0 } else { 0.0 }).collect();
        let good = Tensor::from_slice(&good).to_device(self.dev);
        let (pi, _) = logps(self.policy, &b, train, self.terms.loss);
        let rf = self.reference.judged(&b, idx, self.terms.loss)?;
        let reward = (&pi - &rf).detach() * self.terms.beta;
        Ok((good, reward, pi, rf))
    }

    /// One step's gradients on this process's share of the examples `drawn` from `train`, in
    /// micro-batches of `micro`, each the mean of its rows weighted by its share; adds to `sums`
    /// [loss × examples, 0, 0, Σ desirable rewards, Σ undesirable rewards, desirable, undesirable].
    pub fn backward(&self, train: &[Feedback], drawn: &[usize], micro: usize, world: &World, sums: &Tensor) -> anyhow::Result<()> {
        let items: Vec<&Feedback> = drawn.iter().map(|&j| &train[j]).collect();
        let (mine, mine_drawn) = (world.shard_rows(&items), world.shard_rows(drawn));
        for (part, idx) in mine.chunks(micro).zip(mine_drawn.chunks(micro)) {
            let (good, reward, pi, rf) = self.rewards(part, idx, true)?;
            let loss = kto(&pi, &rf, &good, self.terms);
            self.policy.backward(&(&loss * (part.len() as f64 / mine.len() as f64)))?;
            let sum = |t: &Tensor| t.to_kind(Kind::Double).sum(Kind::Double);
            let bad = good.neg() + 1.0;
            let zero = Tensor::zeros([], (Kind::Double, self.dev));
            let row = [loss.detach().to_kind(Kind::Double) * part.len() as f64, zero.shallow_clone(), zero, sum(&(&reward * &good)), sum(&(&reward * &bad)), sum(&good), sum(&bad)];
            let _ = sums.shallow_clone().g_add_(&Tensor::stack(&row, 0));
        }
        Ok(())
    }

    /// The held-out examples' mean implicit reward, desirable and undesirable, and the margin
    /// between them (TRL's eval rewards; no pairwise accuracy: nothing is paired).
    /// `items` are read by the reference as examples 0, 1, … .
    pub fn held_out(&self, items: &[Feedback]) -> anyhow::Result<PairScores> {
        let (mut sums, mut counts) = ([0.0; 2], [0.0; 2]);
        tch::no_grad(|| -> anyhow::Result<()> {
            for (k, chunk) in items.chunks(32).enumerate() {
                let idx: Vec<usize> = (32 * k..32 * k + chunk.len()).collect();
                let (good, reward, _, _) = self.rewards(&chunk.iter().collect::<Vec<_>>(), &idx, false)?;
                for (i, mask) in [good.shallow_clone(), good.neg() + 1.0].iter().enumerate() {
                    sums[i] += (&reward * mask).sum(Kind::Double).double_value(&[]);
                    counts[i] += mask.sum(Kind::Double).double_value(&[]);
                }
            }
            Ok(())
        })?;
        let (chosen, rejected) = (sums[0] / counts[0], sums[1] / counts[1]);
        Ok(PairScores { chosen, rejected, margin: chosen - rejected, accuracy: None })
    }
}

/// Why `good` desirable and `bad` undesirable examples weighed `weights` are out of the balance
/// KTO recommends, if they are (as `roux check`'s W0407).
pub fn imbalance(good: usize, bad: usize, weights: (f64, f64)) -> Option<String> {
    let balance = kto_balance(good, bad, weights);
    let shown = if bad == 0 { "infinite".to_string() } else { format!("{balance:.3}") };
    (!(KTO_BALANCE.0..=KTO_BALANCE.1).contains(&balance)).then(|| {
        format!("{good} desirable and {bad} undesirable training examples with weights {} and {}: desirable_weight × desirable / (undesirable_weight × undesirable) is {shown}, outside the 1 to 4/3 that KTO recommends", weights.0, weights.1)
    })
}
