//! What `train` scores besides its validation loss at every evaluation: a multiple-choice set
//! (`eval_choices`, as nanoGPT-style runs track HellaSwag) and the held-out splits of other
//! corpora (`eval_data`, as OLMo's in-loop perplexity evaluations track C4 or wikitext beside the
//! training data), each on the same windows every time so its curve compares step with step.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::choices::Quiz;
use super::perplexity::Heldout;
use crate::recipe::{Recipe, TrainSpec};
use crate::run::model::Model;

/// One evaluation's scores.
pub struct Scores {
    /// Accuracy on the multiple-choice set, and per character.
    pub choices: Option<(f64, f64)>,
    /// Each other corpus's loss, keyed `val_loss/NAME` as metrics.jsonl logs it.
    pub losses: BTreeMap<String, f64>,
}

pub struct InLoop {
    quiz: Option<Quiz>,
    sets: Vec<(String, Heldout)>,
    /// Windows scored of each corpus: as many rows as the validation loss reads.
    windows: usize,
    last: Option<Scores>,
}

impl InLoop {
    /// The sets `t` names, and the corpora of a mix it trains on, each read with the tokens the
    /// stage trains on (a BPE tokenizer the one it trained in `dir`), whatever its own `tokenizer`.
    pub fn load(recipe: &Recipe, t: &TrainSpec, dir: &Path) -> Result<InLoop> {
        let tokens = &recipe.data(&t.data).context("checked recipe names its corpus")?.tokenizer;
        let quiz = t.eval_choices.as_deref().map(|n| Quiz::read(recipe, n, usize::MAX, tokens, Some(dir))).transpose()?;
        // A mix's corpora too, each on its own (as OLMo reports each source's loss).
        let mut names = t.eval_data.clone();
        for (n, _) in recipe.data(&t.data).map_or(&[][..], |d| &d.mix) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let sets = names.iter().map(|n| Ok((n.clone(), Heldout::read_as(recipe, n, tokens, Some(dir))?))).collect::<Result<_>>()?;
        Ok(InLoop { quiz, sets, windows: (t.eval_batches as usize).saturating_mul(t.batch).max(1), last: None })
    }

    /// `model`'s scores now (kept as the last for the report).
    pub fn score(&mut self, model: &Model) -> Result<&Scores> {
        // (No graph: the weights being trained require gradients.)
        let choices = tch::no_grad(|| self.quiz.as_ref().map(|q| q.score(model, None).map(|(a, _)| (a.acc, a.acc_norm))).transpose())?;
        let mut losses = BTreeMap::new();
        for (name, set) in &self.sets {
            losses.insert(format!("val_loss/{name}"), set.loss(model, self.windows)?);
        }
        Ok(self.last.insert(Scores { choices, losses }))
    }

    /// The last scores into the stage's report: `final_choices_acc`(`_norm`), `final_val_losses`.
    pub fn report(&self, report: &mut Value) {
        let Some(s) = &self.last else { return };
        if let Some((acc, per_char)) = s.choices {
            (report["final_choices_acc"], report["final_choices_acc_norm"]) = (json!(acc), json!(per_char));
        }
        if !s.losses.is_empty() {
            let named: BTreeMap<&str, f64> = s.losses.iter().map(|(k, v)| (k.trim_start_matches("val_loss/"), *v)).collect();
            report["final_val_losses"] = json!(named);
        }
    }
}
