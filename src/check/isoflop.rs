//! `stage NAME = isoflop(model, data) { budgets = [...], sizes, spread, predict, … }`:
//! an IsoFLOP sweep expanded at check time. For each budget C, `sizes` models spaced by
//! `spread` around the law's optimum are sized from the template model, each to train on
//! tokens = C / (6N); every point is a complete, checked model and training run.

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, Decl, DeclKind, ExprKind};

impl<'a> Checker<'a> {
    pub(super) fn check_isoflop(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "isoflop", args, &["model", "data"]);
        let template = bound[0].and_then(|e| {
            let decl = self.decl_ref(e, DeclKind::Model, "a model")?;
            if decl.kind != DeclKind::Model {
                self.error(Diagnostic::error(Code::E0301, e.span, format!("`isoflop` sizes a model declaration; `{}` is not one", decl.name.name))
                    .with_hint("pass a `model` whose settings (vocab, norm, position, …) every point shares"));
                return None;
            }
            self.models.get(&decl.name.name).cloned()
        });
        let data = bound[1].and_then(|e| self.data_arg(e));
        let mut f = Fields::new(block, &self.top_scope(), format!("stage `{}`", d.name.name), at);
        let budgets = self.number_list(&mut f, "budgets");
        let sizes = f.size(self, "sizes", Some(5)).map(|s| s as u64);
        let spread = f.ranged(self, "spread", Some(2.0), 1.0, true, f64::INFINITY, true);
        let predict = f.ranged(self, "predict", Some(10.0), 1.0, true, f64::INFINITY, true);
        let law = self.check_law(&mut f);
        let aspect = f.positive(self, "aspect", Some(32.0));
        let head_dim = f.size(self, "head_dim", Some(32));
        let batch = f.size(self, "batch", Some(32));
        let optimizer = self.check_adamw(&mut f);
        let schedule = self.check_schedule(&mut f);
        let eval_batches = f.int(self, "eval_batches", Some(20), Min::One);
        let sizes_span = f.value_span("sizes");
        f.finish(self);
        let (sizes, spread, law, aspect, head_dim, batch) = (sizes?, spread?, law?, aspect?, head_dim?, batch?);
        if sizes < 3 {
            self.error(Diagnostic::error(Code::E0202, sizes_span, format!("sizes = {sizes}: a parabola needs at least 3 sizes per budget"))
                .with_hint("use sizes = 5"));
            return None;
        }
        let (template, data, budgets) = (template?, data?, budgets?);
        let train = TrainSpec {
            model: template.name.clone(),
            init_from: None,
            data: data.name.clone(),
            steps: 1,
            batch,
            context: data.context,
            optimizer: optimizer?,
            schedule: schedule?,
            grad_clip: Some(1.0),
            eval_every: u64::MAX,
            eval_batches: eval_batches?,
            log_every: 50,
            checkpoint_every: 0,
            device: Device::Auto,
            precision: Precision::Fp32,
            max_skips: 0,
            keep: 2,
            keep_best: false,
            patience: None,
            accumulate: 1,
            shard_optimizer: false,
            expert_parallel: 1,
            device_memory: None,
            activation_checkpointing: false,
            z_loss: 0.0,
            eval_choices: None,
            eval_data: vec![],
            sample: None,
        };
        let mut points = vec![];
        for c in &budgets {
            let (n_opt, _) = law.for_flops(*c);
            for i in 0..sizes {
                let target = n_opt * spread.powf(i as f64 - (sizes - 1) as f64 / 2.0);
                let (mut model, n) = crate::arith::size_model(&template, target, aspect, head_dim);
                // Sizing builds 1 to 64 blocks of at most 256 heads: a budget past that would
                // train a model far smaller than the size it asks for.
                if target > 2.0 * n as f64 {
                    self.error(Diagnostic::error(Code::E0244, at, format!("budget {c:.1e} asks for models of {target:.2e} parameters; the nearest isoflop can size has {n}"))
                        .with_hint(format!("isoflop sizes models of 1 to 64 blocks of at most 256 heads of head_dim {head_dim}; use budgets nearer the models you mean to train")));
                    return None;
                }
                model.name = format!("{}-c{c:.0e}-n{n}", template.name);
                let steps = (c / (6.0 * n as f64 * train.tokens_per_step() as f64)).round() as u64;
                if steps < 20 {
                    self.error(Diagnostic::error(Code::E0242, at, format!("budget {c:.1e} gives a {n}-parameter model only {steps} steps"))
                        .with_hint("raise the budgets or lower the batch: every point needs enough steps to mean something"));
                    return None;
                }
                let mut t = train.clone();
                t.model = model.name.clone();
                t.steps = steps;
                t.eval_every = steps;
                let warmup = t.schedule.warmup_mut();
                *warmup = (*warmup).min(steps / 10);
                points.push(IsoflopPoint { budget: *c, model, train: t });
            }
        }
        Some(StageSpec {
            name: d.name.name.clone(),
            after: vec![],
            kind: StageKind::Isoflop(IsoflopSpec { points, predict: predict?, aspect, head_dim, template, train }),
        })
    }

    /// `key = [n, n, …]` of positive numbers.
    fn number_list(&mut self, f: &mut Fields<'a>, key: &'static str) -> Option<Vec<f64>> {
        let Some(field) = f.field(key) else {
            self.error(Diagnostic::error(Code::E0101, f.at, format!("{} is missing `{key}`", f.what)).with_hint(format!("add `{key} = [1e12, 3e12, 1e13]`")));
            return None;
        };
        let ExprKind::List(items) = &field.value.kind else {
            self.error(Diagnostic::error(Code::E0120, field.value.span, format!("`{key}` expects a list of numbers")).with_hint(format!("write `{key} = [1e12, 3e12, 1e13]`")));
            return None;
        };
        let scope = f.scope.clone();
        let mut out = vec![];
        for it in items {
            let v = self.eval_num(it, &scope)?;
            if v <= 0.0 {
                self.error(Diagnostic::error(Code::E0202, it.span, format!("{v} is not a positive budget")).with_hint("budgets are FLOPs, such as 1e12"));
                return None;
            }
            out.push(v);
        }
        if out.is_empty() {
            self.error(Diagnostic::error(Code::E0202, field.value.span, format!("`{key}` is empty")).with_hint("give at least two budgets to fit a power law"));
            return None;
        }
        Some(out)
    }
}
