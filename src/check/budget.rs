//! `budget NAME { flops | params | tokens (one or two), law, tolerance }`: compute-optimal
//! sizing as part of the language. A budget's `params`, `tokens`, `flops` and `loss` are
//! attributes other items use (`tokens = compute.tokens`); train stages that use a budget are
//! compared with its optimum and warned about when they depart from it by more than `tolerance`.

use super::fields::Fields;
use super::loader::PathKind;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::{BudgetSpec, Recipe, StageKind};
use crate::scaling::law::{solve, Law, Parametric};
use crate::syntax::ast::{Block, Decl, Entry, Expr, ExprKind};

/// A fitted law is five numbers; anything much larger is not one.
const MAX_FIT_BYTES: u64 = 1 << 20;

impl<'a> Checker<'a> {
    /// The checked budget of a `budget` declaration (memoized: other items read it).
    pub fn budget_spec(&mut self, d: &'a Decl) -> Option<BudgetSpec> {
        if let Some(b) = self.budgets.get(&d.name.name) {
            return b.clone();
        }
        self.budgets.insert(d.name.name.clone(), None);
        self.checking.push(d.name.name.clone());
        let spec = self.check_budget(d);
        self.checking.pop();
        self.budgets.insert(d.name.name.clone(), spec.clone());
        spec
    }

    fn check_budget(&mut self, d: &'a Decl) -> Option<BudgetSpec> {
        let ExprKind::Ctor { block, .. } = &d.value.kind else { return None };
        let mut f = Fields::new(block.as_ref(), &self.top_scope(), format!("budget `{}`", d.name.name), d.name.span);
        let given = |f: &mut Fields<'a>, ck: &mut Checker<'a>, key: &'static str| f.optional(ck, key, |f, ck| f.positive(ck, key, None));
        let flops = given(&mut f, self, "flops");
        let params = given(&mut f, self, "params");
        let tokens = given(&mut f, self, "tokens");
        let law = self.check_law(&mut f);
        let tolerance = f.ranged(self, "tolerance", Some(2.0), 1.0, true, f64::INFINITY, true);
        f.finish(self);
        let (flops, params, tokens, law) = (flops?, params?, tokens?, law?);
        match solve(&law, flops, params, tokens) {
            Ok(b) => Some(BudgetSpec { name: d.name.name.clone(), law, params: b.params, tokens: b.tokens, flops: b.flops, loss: b.loss, tolerance: tolerance? }),
            Err(e) => {
                self.error(Diagnostic::error(Code::E0240, d.name.span, format!("budget `{}`: {e}", d.name.name))
                    .with_hint("give `flops`, `params` or `tokens` (the law solves the rest), or two of them"));
                None
            }
        }
    }

    /// `law = chinchilla | chinchilla.approach3 | kaplan | fitted("fit.json")`.
    pub(super) fn check_law(&mut self, f: &mut Fields<'a>) -> Option<Law> {
        let Some(field) = f.field("law") else { return Some(Law::Chinchilla) };
        let (name, _, args, _) = self.ctor(&field.value, "scaling law", &["chinchilla", "chinchilla.approach3", "kaplan", "fitted"])?;
        Some(match name {
            "chinchilla" => Law::Chinchilla,
            "chinchilla.approach3" => Law::ChinchillaApproach3,
            "kaplan" => Law::Kaplan,
            _ => {
                let Some((file, span)) = super::paths::single_path_arg(args) else {
                    self.error(Diagnostic::error(Code::E0104, field.value.span, "`fitted` takes one argument: the `roux fit --json` output")
                        .with_hint("write `law = fitted(\"fit.json\")`"));
                    return None;
                };
                let path = self.confined(&file, span)?;
                let text = match self.loader.read_text(&path, MAX_FIT_BYTES) {
                    Ok(t) => t,
                    Err(why) if self.loader.entry(&path) != PathKind::Missing => {
                        self.error(Diagnostic::error(Code::E0210, span, format!("fit file `{file}` cannot be read: {why}"))
                            .with_hint("name the JSON file `roux fit --json` wrote; paths are relative to the recipe"));
                        return None;
                    }
                    Err(_) => {
                        self.error(Diagnostic::error(Code::E0210, span, format!("fit file `{file}` not found"))
                            .with_hint("write one with `roux fit POINTS.csv --json > fit.json`; paths are relative to the recipe"));
                        return None;
                    }
                };
                match serde_json::from_str::<Parametric>(&text) {
                    Ok(p) => Law::Fitted(p),
                    Err(e) => {
                        self.error(Diagnostic::error(Code::E0241, span, format!("`{file}` is not a fitted law: {e}"))
                            .with_hint("it needs the keys E, A, B, alpha and beta, as `roux fit --json` writes them"));
                        return None;
                    }
                }
            }
        })
    }
}

/// Whether an expression or block mentions `name` as the head of a dotted path.
pub fn mentions_expr(e: &Expr, name: &str) -> bool {
    match &e.kind {
        ExprKind::Ctor { path, args, block } => {
            (path.len() > 1 && path[0].name == name)
                || args.as_ref().is_some_and(|a| a.iter().any(|a| mentions_expr(&a.value, name)))
                || block.as_ref().is_some_and(|b| mentions_block(b, name))
        }
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter().any(|x| mentions_expr(x, name)),
        ExprKind::Paren(x) | ExprKind::Neg(x) => mentions_expr(x, name),
        ExprKind::Binary(_, a, b) => mentions_expr(a, name) || mentions_expr(b, name),
        _ => false,
    }
}

pub fn mentions_block(b: &Block, name: &str) -> bool {
    b.entries.iter().any(|e| match e {
        Entry::Field(f) => mentions_expr(&f.value, name),
        _ => false,
    })
}

/// The warning for a model of N parameters trained on D tokens under budget `b`.
pub fn departure(b: &BudgetSpec, n: f64, d: f64, span: Span, stage: &str) -> Option<Diagnostic> {
    let (rn, rd) = (n / b.params, d / b.tokens);
    let off = |r: f64| r.max(1.0 / r);
    if off(rn) <= b.tolerance && off(rd) <= b.tolerance {
        return None;
    }
    // The loss penalty is at equal compute: this (N, D) against the law's best split of the
    // same 6·N·D FLOPs, so spending more than the budget is not mistaken for a gain.
    let spent = 6.0 * n * d;
    let (n_best, d_best) = b.law.for_flops(spent);
    let loss = b.law.loss(n, d);
    let penalty = loss - b.law.loss(n_best, d_best);
    Some(
        Diagnostic::warning(Code::W0401,
            span,
            format!(
                "stage `{stage}` departs from budget `{}` ({}): ×{rn:.2} its compute-optimal parameters and ×{rd:.2} its tokens (×{:.2} its FLOPs); predicted loss {loss:.3}, {penalty:+.3} over the best split of the same compute ({n_best:.3e} parameters, {d_best:.3e} tokens)",
                b.name,
                b.law.name(),
                spent / b.flops
            ),
        )
        .with_hint(format!(
            "the budget's optimum: {:.3e} parameters on {:.3e} tokens for {:.3e} FLOPs (tolerance ×{})",
            b.params, b.tokens, b.flops, b.tolerance
        )),
    )
}

impl<'a> Checker<'a> {
    /// W0401 for every train stage that uses a budget (mentions it in its block or its model's)
    /// and departs from the budget's optimum by more than its tolerance.
    pub(super) fn check_budget_departures(&mut self, r: &Recipe) {
        if r.budgets.is_empty() {
            return;
        }
        for s in &r.stages {
            let StageKind::Train(t) = &s.kind else { continue };
            let (Some(stage_decl), Some(model_decl)) = (self.decl(&s.name), self.decl(&t.model)) else { continue };
            let spec = r.model(&t.model).expect("checked model");
            let plan = crate::arith::plan_model(&crate::arith::lower_model(spec), t.batch, t.context);
            for b in &r.budgets {
                if !(mentions_expr(&stage_decl.value, &b.name) || mentions_expr(&model_decl.value, &b.name)) {
                    continue;
                }
                // Kaplan's law counts non-embedding parameters, Chinchilla's all of them; of a
                // mixture of experts, both the active ones a token runs through.
                let embedding = plan.params_total - plan.params_non_embedding;
                let n = if b.law == crate::scaling::law::Law::Kaplan { plan.params_active.saturating_sub(embedding) } else { plan.params_active } as f64;
                let d = t.steps as f64 * t.tokens_per_step() as f64;
                if let Some(w) = departure(b, n, d, stage_decl.name.span, &s.name) {
                    self.error(w);
                }
            }
        }
    }
}
