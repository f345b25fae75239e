//! Unpaired feedback on a `dpo` stage: only the losses that score each response on its own
//! (`kto`, `apo_zero`) learn from completions judged one at a time, their two weights, and
//! whether they balance the data as KTO's authors and TRL recommend.

use super::fields::{fmt_num, Fields};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{kto_balance, DpoLoss, ExampleKind, ExampleSet, KTO_BALANCE as BALANCE};
use crate::syntax::ast::Expr;

impl<'a> Checker<'a> {
    /// `use_weighting` (false): WPO's weights of pairs, so not on unpaired feedback (E0246).
    pub(super) fn use_weighting(&mut self, f: &mut Fields<'a>, data: Option<&ExampleSet>) -> Option<bool> {
        let on = f.bool(self, "use_weighting", false)?;
        if let (true, Some(set)) = (on, data.filter(|s| s.kind == ExampleKind::Feedback)) {
            self.error(
                Diagnostic::error(Code::E0246, f.key_span("use_weighting"), format!("`use_weighting` weighs each pair by how likely the policy finds both its responses, and `{}` holds unpaired feedback", set.name))
                    .with_hint("leave `use_weighting` out (TRL's KTOTrainer has none either)"),
            );
            return None;
        }
        Some(on)
    }

    /// `desirable_weight` and `undesirable_weight` (1 each): the unpaired losses' only (E0246).
    /// Unpaired feedback trains those only (E0313), and W0407 says when the weighted counts of
    /// its desirable and undesirable examples fall outside [1, 4/3].
    pub(super) fn kto_weights(&mut self, f: &mut Fields<'a>, loss: Option<DpoLoss>, data: Option<&ExampleSet>, data_arg: Option<&'a Expr>) -> Option<(f64, f64)> {
        const KEYS: [&str; 2] = ["desirable_weight", "undesirable_weight"];
        let given = KEYS.map(|k| f.field(k).is_some());
        let good = f.ranged(self, KEYS[0], Some(1.0), 0.0, true, 1e6, false);
        let bad = f.ranged(self, KEYS[1], Some(1.0), 0.0, true, 1e6, false);
        let loss = loss?;
        if !loss.unpaired() {
            for (key, _) in KEYS.iter().zip(given).filter(|(_, g)| *g) {
                self.error(
                    Diagnostic::error(Code::E0246, f.key_span(key), format!("`{key}` weighs KTO's examples and has no meaning for `loss = {}`", loss.name()))
                        .with_hint(format!("use `loss = kto` or `apo_zero`, or leave `{key}` out")),
                );
            }
        }
        let (Some(set), Some(arg)) = (data.filter(|s| s.kind == ExampleKind::Feedback), data_arg) else { return good.zip(bad) };
        if !loss.unpaired() {
            self.error(
                Diagnostic::error(Code::E0313, arg.span, format!("`dpo` with `loss = {}` compares preference pairs, but `{}` holds unpaired feedback", loss.name(), set.name))
                    .with_hint("use `loss = kto` or `apo_zero`, which learn from completions judged one at a time"),
            );
            return None;
        }
        let (wd, wu) = good.zip(bad)?;
        // (A conversational set's labels are counted once its template is known: `balance_for_stages`.)
        if let Some(&counts) = self.example_facts.feedback.get(&set.name) {
            self.balance_warning(set, counts, (wd, wu), arg.span);
        }
        Some((wd, wu))
    }

    /// W0407 on every unpaired `dpo` stage of conversational feedback `set`, whose labels
    /// (`counts`: desirable, undesirable) were read with its chat template, after the stages.
    pub(super) fn balance_for_stages(&mut self, r: &crate::recipe::Recipe, set: &ExampleSet, counts: (usize, usize)) {
        for s in &r.stages {
            let crate::recipe::StageKind::Dpo(d) = &s.kind else { continue };
            if d.data != set.name || !d.loss.unpaired() {
                continue;
            }
            let args = self.decl(&s.name).and_then(|decl| match &decl.value.kind {
                crate::syntax::ast::ExprKind::Ctor { args: Some(args), .. } => Some(args),
                _ => None,
            });
            let arg = args.and_then(|a| a.iter().find(|a| a.value.as_path().map(Expr::path_string).as_deref() == Some(set.name.as_str())));
            if let Some(arg) = arg {
                self.balance_warning(set, counts, d.kto_weights, arg.value.span);
            }
        }
    }

    /// W0407 when the weighted counts of `set`'s desirable and undesirable examples fall outside
    /// the range KTO recommends, with a weight that brings them inside.
    fn balance_warning(&mut self, set: &ExampleSet, (nd, nu): (usize, usize), (wd, wu): (f64, f64), span: crate::diag::Span) {
        let balance = kto_balance(nd, nu, (wd, wu));
        if (BALANCE.0..=BALANCE.1).contains(&balance) {
            return;
        }
        let hint = if nd == 0 || nu == 0 {
            format!("KTO learns from both kinds: add {} examples", if nd == 0 { "desirable" } else { "undesirable" })
        } else if balance < BALANCE.0 {
            format!("`desirable_weight = {}` brings it to about 7/6, inside that range", fmt_num(sig3(7.0 / 6.0 * wu * nu as f64 / nd as f64)))
        } else {
            format!("`undesirable_weight = {}` brings it to about 7/6, inside that range", fmt_num(sig3(6.0 / 7.0 * wd * nd as f64 / nu as f64)))
        };
        let about = if matches!(set.source, crate::recipe::ExampleSource::Synthetic { .. }) { "about " } else { "" };
        self.error(
            Diagnostic::warning(Code::W0407, span, format!(
                "`{}` holds {about}{nd} desirable and {nu} undesirable examples, with weights {} and {}: desirable_weight × desirable / (undesirable_weight × undesirable) is {}, outside the 1 to 4/3 that KTO recommends",
                set.name, fmt_num(wd), fmt_num(wu), if nu == 0 { "infinite".to_string() } else { format!("{balance:.3}") }
            ))
            .with_hint(hint),
        );
    }
}

/// `x` to three significant digits.
fn sig3(x: f64) -> f64 {
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}
