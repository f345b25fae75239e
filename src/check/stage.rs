//! `stage NAME = train(model, data) { … }` and the stage DAG's cycle check.

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use std::collections::HashMap;

use super::fields::{fmt_num, Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Arg, Decl, DeclKind, Expr, ExprKind};

pub const STAGE_KINDS: &[&str] = &["train", "mixture", "isoflop", "finetune", "reward_model", "ppo", "dpo", "grpo", "online_dpo", "best_of_n", "distill", "compare"];

impl<'a> Checker<'a> {
    pub fn check_stages(&mut self, decls: &[&'a Decl]) -> Option<Vec<StageSpec>> {
        let stages: Vec<&'a Decl> = decls.iter().copied().filter(|d| d.kind == DeclKind::Stage).collect();
        let in_cycle = self.check_stage_cycles(&stages);
        let mut out = vec![];
        let mut ok = true;
        for d in &stages {
            if in_cycle.contains(&d.name.name) {
                ok = false;
                continue;
            }
            match self.check_stage(d) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Every stage on a cycle gets a diagnostic; returns their names.
    fn check_stage_cycles(&mut self, stages: &[&'a Decl]) -> Vec<String> {
        let mut g = DiGraph::<&str, Span>::new();
        let idx: HashMap<&str, _> = stages.iter().map(|d| (d.name.name.as_str(), g.add_node(d.name.name.as_str()))).collect();
        for d in stages {
            for (dep, span) in super::artifact::stage_refs(self, d) {
                g.add_edge(idx[dep], idx[d.name.name.as_str()], span);
            }
        }
        let mut names = vec![];
        for scc in tarjan_scc(&g) {
            let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let mut members: Vec<&str> = scc.iter().map(|&n| g[n]).collect();
            members.sort();
            let ring = format!("{} → {}", members.join(" → "), members[0]);
            for &n in &scc {
                let name = g[n];
                let span = g.edges_directed(n, petgraph::Direction::Incoming).find(|e| scc.contains(&petgraph::visit::EdgeRef::source(e))).map(|e| *e.weight());
                let d = self.decl(name).expect("stage decl");
                self.error(Diagnostic::error(Code::E0300, span.unwrap_or(d.name.span), format!("stage `{name}` is part of a cycle: {ring}"))
                    .with_hint("stages form a DAG: a stage can only use artifacts of stages that do not depend on it"));
                names.push(name.to_string());
            }
        }
        names
    }

    fn check_stage(&mut self, d: &'a Decl) -> Option<StageSpec> {
        let (kind, path, args, block) = self.ctor(&d.value, "stage kind", STAGE_KINDS)?;
        let at = Checker::span_of_path(path);
        let args = args.unwrap_or(&[]);
        match kind {
            "mixture" => self.check_mixture(d, at, args, block),
            "isoflop" => self.check_isoflop(d, at, args, block),
            "finetune" => self.check_finetune(d, at, args, block),
            "reward_model" => self.check_reward_model(d, at, args, block),
            "ppo" => self.check_ppo(d, at, args, block),
            "dpo" => self.check_dpo(d, at, args, block),
            "grpo" => self.check_grpo(d, at, args, block),
            "online_dpo" => self.check_online_dpo(d, at, args, block),
            "best_of_n" => self.check_best_of_n(d, at, args, block),
            "distill" => self.check_distill(d, at, args, block),
            "compare" => self.check_compare(d, at, args, block),
            _ => self.check_train(d, at, args, block),
        }
        .inspect(|spec| {
            let at = block.and_then(|b| b.field("optimizer")).map_or(at, |f| f.value.span);
            self.muon_fits(spec, at);
            self.loraplus_fits(spec, at);
        })
    }

    /// Named or positional arguments, in `names` order. Reports unknown, missing and extra ones.
    pub(super) fn bind_args(&mut self, at: Span, kind: &str, args: &'a [Arg], names: &[&'static str]) -> Vec<Option<&'a Expr>> {
        let mut out: Vec<Option<&'a Expr>> = vec![None; names.len()];
        for (i, a) in args.iter().enumerate() {
            let slot = match &a.name {
                Some(n) => match names.iter().position(|x| *x == n.name) {
                    Some(s) => s,
                    None => {
                        let mut e = Diagnostic::error(Code::E0105, n.span, format!("`{kind}` has no argument `{}`", n.name));
                        e = match crate::diag::suggest::did_you_mean(&n.name, names.iter().copied()) {
                            Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                            None => e.with_hint(format!("arguments: {}", names.join(", "))),
                        };
                        self.error(e);
                        continue;
                    }
                },
                None if i < names.len() => i,
                None => {
                    self.error(Diagnostic::error(Code::E0105, a.value.span, format!("`{kind}` takes {} arguments", names.len()))
                        .with_hint(format!("write `{kind}({})`", names.join(", "))));
                    continue;
                }
            };
            out[slot] = Some(&a.value);
        }
        for (i, n) in names.iter().enumerate() {
            if out[i].is_none() {
                self.error(Diagnostic::error(Code::E0106, at, format!("`{kind}` is missing its `{n}` argument"))
                    .with_hint(format!("write `{kind}({})`", names.join(", "))));
            }
        }
        out
    }

    /// The declaration a bare reference names, which must be of kind `want`.
    pub(super) fn decl_ref(&mut self, e: &'a Expr, want: DeclKind, what: &str) -> Option<&'a Decl> {
        let Some(path) = e.as_path() else {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("expected {what}, found {}", super::eval::describe(e))).with_hint("pass the name of a declaration"));
            return None;
        };
        let Some(d) = self.decl(&path[0].name) else {
            let mut err = Diagnostic::error(Code::E0110, path[0].span, format!("unknown name `{}`", path[0].name));
            err = match self.suggest_decl(&path[0].name, Some(want), &[]) {
                Some(s) => err.with_hint(format!("did you mean `{s}`?")),
                None => err.with_hint("declare it with `data`, `model` or `stage` in this experiment"),
            };
            self.error(err);
            return None;
        };
        Some(d)
    }

    /// The model a `train` stage starts from: a model declaration (fresh weights) or a stage's
    /// language model. Returns (architecture, initialising stage).
    fn model_arg(&mut self, e: &'a Expr) -> Option<(String, Option<String>)> {
        let r = self.expect_lm(e, "the model to train")?;
        match r.weights {
            Weights::Init => Some((r.arch, None)),
            Weights::Stage { stage } => Some((r.arch, Some(stage))),
            Weights::Merged { stage } => {
                self.error(Diagnostic::error(Code::E0310, e.span, format!("`train` continues from full weights; `merge({stage}.adapter)` is built on the fly"))
                    .with_hint("continue with `finetune(merge(…), data)`, or train the earlier stage without an adapter"));
                None
            }
        }
    }

    fn check_train(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a crate::syntax::ast::Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "train", args, &["model", "data"]);
        let model = bound[0].and_then(|e| self.model_arg(e));
        let data = bound[1].and_then(|e| self.data_arg(e));

        let mut f = Fields::new(block, &self.top_scope(), format!("stage `{}`", d.name.name), at);
        let steps_field = f.field("steps").is_some();
        let tokens_field = f.field("tokens").is_some();
        let batch = f.size(self, "batch", Some(32));
        let steps = if steps_field { f.int(self, "steps", None, Min::One) } else { None };
        let tokens = if tokens_field { f.positive(self, "tokens", None) } else { None };
        let optimizer = self.check_optimizer(&mut f);
        let schedule = self.check_schedule(&mut f);
        let grad_clip = f.ranged(self, "grad_clip", Some(1.0), 0.0, false, f64::INFINITY, true);
        let eval_every = f.int(self, "eval_every", Some(100), Min::One);
        let eval_batches = f.int(self, "eval_batches", Some(20), Min::One);
        let log_every = f.int(self, "log_every", Some(10), Min::One);
        let checkpoint_every = f.int(self, "checkpoint_every", Some(0), Min::Zero);
        let device = self.device_key(&mut f);
        let precision = f.sym(self, "precision", &["fp32", "bf16"], Some("fp32"));
        let on_nonfinite = f.sym(self, "on_nonfinite", &["stop", "skip"], Some("stop"));
        let max_skips = f.int(self, "max_skips", Some(10), Min::One);
        // `keep = N` checkpoints, or `keep = best`: the best-validation weights too.
        let keep_best = f.field("keep").is_some_and(|k| k.value.is_word("best"));
        let keep = if keep_best { Some(2) } else { f.int(self, "keep", Some(2), Min::One) };
        if keep.is_some_and(|k| k > 1000) {
            self.error(Diagnostic::error(Code::E0202, f.value_span("keep"), "`keep` is out of range").with_hint("keep must lie in [1, 1000], or be `best`"));
        }
        let patience = f.optional(self, "patience", |f, ck| f.int(ck, "patience", None, Min::One));
        let accumulate = self.accumulate(&mut f, batch);
        let shard_optimizer = f.bool(self, "shard_optimizer", false);
        let expert_parallel = self.expert_parallel(&mut f, model.as_ref().map(|(arch, _)| arch.as_str()));
        let device_memory = self.device_memory(&mut f);
        let activation_checkpointing = f.bool(self, "activation_checkpointing", false);
        let z_loss = f.ranged(self, "z_loss", Some(0.0), 0.0, false, 1.0, false);
        let eval_choices = f.field("eval_choices").map(|c| self.eval_choices(&c.value));
        let eval_data = f.field("eval_data").map_or(Some(vec![]), |e| self.eval_data(&e.value));
        let sample = self.sampling_keys(&mut f);
        let tokens_span = f.key_span("tokens");
        let sched_span = f.value_span("schedule");
        f.finish(self);

        if steps_field && tokens_field {
            self.error(Diagnostic::error(Code::E0107, tokens_span, "give `steps` or `tokens`, not both")
                .with_hint("tokens = steps × batch × context; keep the one you mean"));
            return None;
        }
        if !steps_field && !tokens_field {
            self.error(Diagnostic::error(Code::E0101, at, format!("stage `{}` needs `steps` or `tokens`", d.name.name))
                .with_hint("add `steps = 1000` or `tokens = 20M`"));
            return None;
        }
        let ((arch, init_from), data) = (model?, data?);
        let m = self.decl(&arch).and_then(|m| self.model_context_vocab(m));
        let batch = batch?;
        let context = data.context;
        if let Some((mctx, mvocab)) = m {
            if context > mctx {
                self.error(Diagnostic::error(Code::E0222, bound[1].map_or(at, |e| e.span), format!("data `{}` has context {context}, longer than model `{arch}` accepts ({mctx})", data.name))
                    .with_hint(format!("raise the model's context to {context} or shorten the data's")));
                return None;
            }
            if data.vocab > mvocab {
                self.error(Diagnostic::error(Code::E0223, bound[0].map_or(at, |e| e.span), format!("model `{arch}` has vocab {mvocab}, smaller than the tokenizer of `{}` ({})", data.name, data.vocab))
                    .with_hint(format!("set `vocab = {}.vocab`", data.name)));
                return None;
            }
        }
        let per_step = (batch * context) as f64;
        let steps = match (steps, tokens) {
            (Some(s), _) => s,
            (None, Some(t)) => (t / per_step).ceil() as u64,
            _ => return None,
        };
        let (schedule, optimizer) = (schedule?, optimizer?);
        if !self.schedule_fits(&schedule, steps, optimizer.lr, sched_span) {
            return None;
        }
        let mut after: Vec<String> = init_from.iter().cloned().collect();
        after.dedup();
        Some(StageSpec {
            name: d.name.name.clone(),
            after,
            kind: StageKind::Train(TrainSpec {
                model: arch,
                init_from,
                data: data.name.clone(),
                steps,
                batch,
                context,
                optimizer,
                schedule,
                grad_clip: grad_clip.filter(|g| *g > 0.0),
                eval_every: eval_every?,
                eval_batches: eval_batches?,
                log_every: log_every?,
                checkpoint_every: checkpoint_every?,
                device: device?,
                precision: super::posttrain::precision_of(precision?),
                max_skips: if on_nonfinite? == "skip" { max_skips? } else { 0 },
                keep: keep?.min(1000) as usize,
                keep_best,
                patience: patience?,
                accumulate: accumulate?,
                shard_optimizer: shard_optimizer?,
                expert_parallel: expert_parallel?,
                device_memory: device_memory?,
                activation_checkpointing: activation_checkpointing?,
                z_loss: z_loss?,
                eval_choices: eval_choices.map_or(Some(None), |c| c.map(Some))?,
                eval_data: eval_data?,
                sample: sample?,
            }),
        })
    }

    /// E0224 / E0225: the warmup (and a wsd decay after it) fits in the stage, and a decaying
    /// schedule ends at or below its peak.
    pub(super) fn schedule_fits(&mut self, schedule: &Schedule, steps: u64, lr: f64, sched_span: Span) -> bool {
        let warmup = schedule.warmup();
        if warmup > steps {
            self.error(Diagnostic::error(Code::E0224, sched_span, format!("warmup of {warmup} steps is longer than the stage ({steps} steps)"))
                .with_hint("shorten the warmup or train longer"));
            return false;
        }
        if let Schedule::Wsd { decay, .. } = schedule {
            let d = crate::schedule::decay_steps(*decay, steps);
            if warmup + d > steps {
                self.error(Diagnostic::error(Code::E0224, sched_span, format!("warmup of {warmup} steps and decay of {d} steps ({} of {steps}) are longer than the stage ({steps} steps)", fmt_num(*decay)))
                    .with_hint("shorten the warmup, lower `decay` or train longer"));
                return false;
            }
        }
        if let Some(min_lr) = schedule.min_lr().filter(|m| *m > lr) {
            let kind = match schedule {
                Schedule::Cosine { .. } => "a cosine",
                Schedule::Linear { .. } => "a linear",
                _ => "a wsd",
            };
            self.error(Diagnostic::error(Code::E0225, sched_span, format!("min_lr {min_lr} is above the peak lr {lr}"))
                .with_hint(format!("{kind} schedule decays from lr down to min_lr")));
            return false;
        }
        true
    }

    pub(super) fn data_arg(&mut self, e: &'a Expr) -> Option<DataSpec> {
        let d = self.decl_ref(e, DeclKind::Data, "a data set")?;
        if d.kind == DeclKind::Data && self.is_examples(d) {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("`{}` holds instruction or preference examples, not a text corpus", d.name.name))
                .with_hint("`train` needs `text(…)` data; examples are for `finetune`, `reward_model`, `ppo` and `dpo`"));
            return None;
        }
        if d.kind == DeclKind::Data && self.is_synthetic(d) {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("`{}` is synthetic regression data, not a text corpus", d.name.name))
                .with_hint("`train` needs `text(…)` data; synthetic regions are for `mixture` stages"));
            return None;
        }
        if d.kind != DeclKind::Data || e.as_path().is_none_or(|p| p.len() != 1) {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("expected a data set, found {} `{}`", kind_noun(d.kind), d.name.name))
                .with_hint("pass a `data` declaration"));
            return None;
        }
        self.data_spec(d)
    }

    /// Context and vocab of a model declaration, quietly (its own check reports its errors).
    fn model_context_vocab(&mut self, m: &'a Decl) -> Option<(usize, usize)> {
        let ExprKind::Ctor { block: Some(b), .. } = &m.value.kind else { return None };
        let n = self.diags.len();
        let scope = vec![&self.ast.body, b];
        let ctx = b.field("context").and_then(|f| self.eval_field(f, &scope));
        let vocab = b.field("vocab").and_then(|f| self.eval_field(f, &scope));
        self.diags.truncate(n);
        Some((ctx? as usize, vocab? as usize))
    }
}

fn kind_noun(k: DeclKind) -> &'static str {
    match k {
        DeclKind::Data => "data set",
        DeclKind::Model => "model",
        DeclKind::Stage => "stage",
        DeclKind::Budget => "budget",
    }
}
