//! A `dpo` stage's `eval_data`: other sets' held-out implicit rewards at every evaluation, each
//! read with its own codec (the stage's tokenizer) and, with `precompute_ref_log_probs`, its own
//! table of the reference's log-probabilities.

use anyhow::Result;

use super::feedback::Judged;
use super::logps::Examples;
use super::reference::RefLogps;
use super::{held_out_pairs, PairScores};
use crate::posttrain::examples::{Feedback, Pair};
use crate::recipe::{DpoSpec, Recipe};
use crate::run::kit::artifacts::{feedback_examples, preferences};
use crate::run::kit::codec::Codec;
use crate::run::kit::losses::DpoTerms;
use crate::run::model::Model;

/// An `eval_data` set's first `eval_examples` held-out examples.
pub(super) struct Other {
    pub name: String,
    pub codec: Codec,
    held: Held,
}

enum Held {
    Pairs(Vec<Pair>),
    Judged(Vec<Feedback>),
}

/// `d`'s `eval_data` sets: preference pairs, or unpaired feedback where the stage trains on it.
pub(super) fn load(recipe: &Recipe, d: &DpoSpec, feedback: bool) -> Result<Vec<Other>> {
    let mut out = vec![];
    for name in &d.eval_data {
        let (set, held) = if feedback {
            let (set, split) = feedback_examples(recipe, name)?;
            (set, Held::Judged(split.held_out.into_iter().take(d.eval_examples).collect()))
        } else {
            let (set, split) = preferences(recipe, name)?;
            (set, Held::Pairs(split.held_out.into_iter().take(d.eval_examples).collect()))
        };
        out.push(Other { name: name.clone(), codec: Codec::new(recipe, &set)?, held });
    }
    Ok(out)
}

impl Other {
    pub fn examples(&self) -> Examples<'_> {
        match &self.held {
            Held::Pairs(p) => Examples::Pairs(p),
            Held::Judged(f) => Examples::Feedback(f),
        }
    }

    /// The held-out implicit rewards of `policy` against `reference` (as held-out examples 0, 1, …).
    pub fn score(&self, policy: &Model, reference: &RefLogps, terms: &DpoTerms, d: &DpoSpec, dev: tch::Device) -> Result<PairScores> {
        let context = policy.spec().context;
        match &self.held {
            Held::Pairs(p) => held_out_pairs(policy, reference, &self.codec, p, d, context, dev),
            Held::Judged(f) => Judged { policy, reference, codec: &self.codec, terms, context, dev }.held_out(f),
        }
    }
}
