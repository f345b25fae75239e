//! KTO's reference point (Ethayarajh et al. 2024), as TRL's KTOTrainer estimates it: the
//! policy's KL from its reference on each step's prompts given other examples' responses.

use anyhow::Result;
use tch::Kind;

use super::logps::{logps, reference_logps, Examples};
use super::reference::Table;
use crate::posttrain::examples::Seq;
use crate::recipe::DpoLoss;
use crate::run::kit::codec::Codec;
use crate::run::kit::dist::World;
use crate::run::kit::seqs::pad;
use crate::run::model::Model;

/// What a step's reference point reads.
pub(super) struct ReferencePoint<'a> {
    pub policy: &'a Model,
    /// The reference run on the rows, or (`None`) their log-probabilities `precomputed`.
    pub reference: Option<&'a Model>,
    pub precomputed: Option<&'a Table>,
    pub examples: Examples<'a>,
    pub codec: &'a Codec,
}

impl ReferencePoint<'_> {
    /// max(0, the mean of log π − log π_ref over the mismatched rows of the examples `drawn`),
    /// without gradient, the rows divided over the processes, `micro` examples' rows a pass.
    pub fn at(&self, drawn: &[usize], micro: usize, world: &World, dev: tch::Device) -> Result<f64> {
        let context = self.policy.spec().context;
        let rows: Vec<Seq> = drawn.iter().flat_map(|&j| self.examples.mismatched(self.codec, j, context)).collect();
        let mut sum = 0.0;
        tch::no_grad(|| {
            for part in world.shard_rows(&rows).chunks(micro * self.examples.width()) {
                let b = pad(&part.iter().collect::<Vec<_>>(), dev);
                sum += (logps(self.policy, &b, false, DpoLoss::Kto).0 - reference_logps(self.reference, &b, DpoLoss::Kto)).sum(Kind::Double).double_value(&[]);
            }
        });
        // The precomputed rows are the same on every process: taken once, after the sum.
        let precomputed = self.precomputed.map(|t| t.sum(drawn)).transpose()?.unwrap_or(0.0);
        Ok(((world.sums(&[sum])?[0] - precomputed) / rows.len() as f64).max(0.0))
    }
}
