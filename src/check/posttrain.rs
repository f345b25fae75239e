//! Post-training stages: `finetune` (SFT, optionally through `lora { … }`), `reward_model`,
//! `ppo` and `dpo`: their shared keys and the example sets they read.

use super::fields::{fmt_num, Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, Decl, DeclKind, Expr};

impl<'a> Checker<'a> {
    /// steps, batch, optimizer, schedule, grad_clip, eval_every, log_every, device, precision,
    /// patience.
    pub(super) fn check_optim(&mut self, f: &mut Fields<'a>, batch: u64, steps: Option<u64>, eval_every: u64) -> Option<Optim> {
        let steps_v = f.int(self, "steps", steps, Min::One);
        let batch = f.size(self, "batch", Some(batch));
        let optimizer = self.check_optimizer(f);
        let schedule = self.check_schedule(f);
        let sched_span = f.value_span("schedule");
        let grad_clip = f.ranged(self, "grad_clip", Some(1.0), 0.0, false, f64::INFINITY, true);
        let eval_every = f.int(self, "eval_every", Some(eval_every), Min::One);
        let log_every = f.int(self, "log_every", Some(10), Min::One);
        let device = self.device_key(f);
        let precision = f.sym(self, "precision", &["fp32", "bf16"], Some("fp32"));
        let patience = f.optional(self, "patience", |f, ck| f.int(ck, "patience", None, Min::One));
        let activation_checkpointing = f.bool(self, "activation_checkpointing", false);
        let (steps, optimizer, schedule) = (steps_v?, optimizer?, schedule?);
        if !self.schedule_fits(&schedule, steps, optimizer.lr, sched_span) {
            return None;
        }
        Some(Optim {
            steps,
            batch: batch?,
            optimizer,
            schedule,
            grad_clip: grad_clip?.gt(&0.0).then_some(grad_clip?),
            eval_every: eval_every?,
            log_every: log_every?,
            device: device?,
            precision: precision_of(precision?),
            accumulate: 1,
            patience: patience?,
            activation_checkpointing: activation_checkpointing?,
        })
    }

    /// `check_optim` for the stages that split their batch over processes and micro-batches
    /// (`accumulate`): every post-training stage that trains.
    pub(super) fn check_split_optim(&mut self, f: &mut Fields<'a>, batch: u64, eval_every: u64) -> Option<Optim> {
        let opt = self.check_optim(f, batch, None, eval_every);
        let accumulate = self.accumulate(f, opt.as_ref().map(|o| o.batch));
        Some(Optim { accumulate: accumulate?, ..opt? })
    }

    /// An instruction, preference or feedback data set; `want` restricts the kind (empty: any).
    pub(super) fn examples_arg(&mut self, e: &'a Expr, want: &[ExampleKind], stage: &str) -> Option<ExampleSet> {
        let d = self.decl_ref(e, DeclKind::Data, "a data set")?;
        let set = (d.kind == DeclKind::Data && e.as_path().is_some_and(|p| p.len() == 1)).then(|| self.examples.get(&d.name.name).cloned()).flatten();
        let Some(set) = set else {
            self.error(Diagnostic::error(Code::E0301, e.span, format!("`{stage}` needs instruction or preference examples, found {} `{}`", d.kind.keyword(), d.name.name))
                .with_hint("declare `data instr = synthetic.instructions { … }` or `instructions(\"file.jsonl\") { … }`"));
            return None;
        };
        let set = set?;
        if set.kind == ExampleKind::Choices && stage != "compare" {
            self.error(Diagnostic::error(Code::E0313, e.span, format!("`{stage}` cannot train on `{}`: it holds multiple-choice questions, which only `compare` evaluates", d.name.name))
                .with_hint(format!("score policies on them with `compare(…) {{ data = {} }}`", d.name.name)));
            return None;
        }
        match want.first() {
            Some(k) if !want.contains(&set.kind) => {
                let need: Vec<&str> = want.iter().map(kind_words).collect();
                self.error(Diagnostic::error(Code::E0313, e.span, format!("`{stage}` trains on {}, but `{}` holds {}", need.join(" or "), d.name.name, kind_words(&set.kind)))
                    .with_hint(if *k == ExampleKind::Preferences { "declare `data prefs = synthetic.preferences { … }` or `preferences(\"pairs.jsonl\")`" } else { "declare `data instr = synthetic.instructions { … }`" }));
                None
            }
            _ => Some(set),
        }
    }

    /// The block of stage `d`, read with the recipe's top level in scope.
    pub(super) fn stage_fields(&self, d: &'a Decl, at: Span, block: Option<&'a Block>) -> Fields<'a> {
        Fields::new(block, &self.top_scope(), format!("stage `{}`", d.name.name), at)
    }

    /// `eval_examples` (200) and `max_new` (16): how a stage scores held-out prompts.
    pub(super) fn eval_keys(&mut self, f: &mut Fields<'a>) -> Option<(usize, usize)> {
        let eval_examples = f.size(self, "eval_examples", Some(200));
        let max_new = f.size(self, "max_new", Some(16));
        Some((eval_examples?, max_new?))
    }

    /// `top_k`, `top_p`, `min_p` and `repetition_penalty`: how PPO and GRPO draw their rollouts
    /// besides `temperature`, in the ranges `roux sample` takes.
    pub(super) fn rollout_filters(&mut self, f: &mut Fields<'a>) -> Option<RolloutFilters> {
        let top_k = f.int(self, "top_k", Some(0), super::fields::Min::Zero);
        let top_p = f.ranged(self, "top_p", Some(1.0), 0.0, true, 1.0, false);
        let min_p = f.ranged(self, "min_p", Some(0.0), 0.0, false, 1.0, false);
        // (A penalty near 0 or huge turns logits infinite: the sampler's probabilities would be NaN.)
        let repetition_penalty = f.ranged(self, "repetition_penalty", Some(1.0), 1e-3, false, 1e3, false);
        Some(RolloutFilters { top_k: top_k?, top_p: top_p?, min_p: min_p?, repetition_penalty: repetition_penalty? })
    }

    /// A checked stage of declaration `d`, after the stages it reads from.
    pub(super) fn stage_spec(&mut self, d: &'a Decl, kind: StageKind) -> StageSpec {
        // Examples the stage trains on, beside the model whose context cuts them.
        let trains_on = match &kind {
            StageKind::Finetune(f) => Some((&f.data, &f.model.arch)),
            StageKind::RewardModel(m) => Some((&m.data, &m.model.arch)),
            StageKind::Dpo(p) => Some((&p.data, &p.policy.arch)),
            StageKind::Distill(k) => Some((&k.data, &k.student.arch)),
            _ => None,
        };
        if let Some((data, arch)) = trains_on {
            if let Some(context) = self.models.get(arch).map(|m| m.context) {
                self.warn_truncation(data, arch, context);
            }
        }
        StageSpec { name: d.name.name.clone(), after: self.after_of(d), kind }
    }

    fn after_of(&self, d: &'a Decl) -> Vec<String> {
        let mut after: Vec<String> = vec![];
        for (s, _) in super::artifact::stage_refs(self, d) {
            if !after.iter().any(|a| a == s) {
                after.push(s.to_string());
            }
        }
        after
    }

    pub(super) fn check_finetune(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "finetune", args, &["model", "data"]);
        let model = bound[0].and_then(|e| self.expect_lm(e, "the model to fine-tune"));
        let data = bound[1].and_then(|e| self.examples_arg(e, &[], "finetune"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 16, 100);
        let lora = self.adapter_key(&mut f, model.as_ref());
        let mask_prompt = f.bool(self, "mask_prompt", true);
        let packing = f.bool(self, "packing", false);
        let neftune = f.optional(self, "neftune", |f, ck| f.ranged(ck, "neftune", None, 0.0, true, 1e4, false));
        let eval = self.eval_keys(&mut f);
        let eval_data = match (f.field("eval_data"), &data) {
            (Some(field), Some(own)) => self.eval_sets(&field.value, own, "finetune"),
            (Some(_), None) => None,
            (None, _) => Some(vec![]),
        };
        f.finish(self);
        let (eval_examples, max_new) = eval?;
        let kind = StageKind::Finetune(FinetuneSpec { model: model?, data: data?.name, opt: opt?, lora: lora?, mask_prompt: mask_prompt?, packing: packing?, neftune: neftune?, eval_examples, max_new, eval_data: eval_data? });
        Some(self.stage_spec(d, kind))
    }

    /// A stage's `adapter` key (`lora { … }` or `none`) on `model`; absent, none (Some(None)).
    pub(super) fn adapter_key(&mut self, f: &mut super::fields::Fields<'a>, model: Option<&ModelRef>) -> Option<Option<LoraSpec>> {
        match f.field("adapter") {
            Some(field) => self.check_lora(&field.value, &f.scope.clone(), model),
            None => Some(None),
        }
    }

    pub(super) fn check_reward_model(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "reward_model", args, &["model", "data"]);
        let model = bound[0].and_then(|e| self.expect_lm(e, "the base of a reward model"));
        let data = bound[1].and_then(|e| self.examples_arg(e, &[ExampleKind::Preferences], "reward_model"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 16, 100);
        let center = f.optional(self, "center_rewards", |f, ck| f.ranged(ck, "center_rewards", None, 0.0, false, 1e6, false));
        let lora = self.adapter_key(&mut f, model.as_ref());
        let eval_data = match (f.field("eval_data"), &data) {
            (Some(field), Some(own)) => self.eval_sets(&field.value, own, "reward_model"),
            (Some(_), None) => None,
            (None, _) => Some(vec![]),
        };
        f.finish(self);
        Some(self.stage_spec(d, StageKind::RewardModel(RewardSpec { model: model?, data: data?.name, opt: opt?, center_rewards: center?, lora: lora?, eval_data: eval_data? })))
    }

    pub(super) fn check_ppo(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "ppo", args, &["policy", "reward", "prompts"]);
        let policy = bound[0].and_then(|e| self.expect_lm(e, "the policy"));
        let reward = bound[1].and_then(|e| self.expect_reward(e));
        let prompts = bound[2].and_then(|e| self.examples_arg(e, &[], "ppo"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 32, 25);
        let kl = f.ranged(self, "kl", Some(0.05), 0.0, false, f64::INFINITY, true);
        let kl_target = f.optional(self, "kl_target", |f, ck| f.positive(ck, "kl_target", None));
        let clip = f.ranged(self, "clip", Some(0.2), 0.0, true, 1.0, true);
        let value_clip = f.ranged(self, "value_clip", Some(0.2), 0.0, true, f64::INFINITY, true);
        let vf_coef = f.ranged(self, "vf_coef", Some(0.5), 0.0, false, f64::INFINITY, true);
        let entropy_coef = f.ranged(self, "entropy", Some(0.0), 0.0, false, f64::INFINITY, true);
        let gamma = f.ranged(self, "gamma", Some(1.0), 0.0, false, 1.0, false);
        let lambda = f.ranged(self, "lambda", Some(0.95), 0.0, false, 1.0, false);
        let epochs = f.size(self, "epochs", Some(2));
        let minibatches = f.size(self, "minibatches", Some(2));
        let temperature = f.positive(self, "temperature", Some(1.0));
        let filters = self.rollout_filters(&mut f);
        let kl_estimator = f.sym(self, "kl_estimator", &["k1", "k3"], Some("k1")).map(|k| if k == "k3" { KlEstimator::K3 } else { KlEstimator::K1 });
        let missing_eos_penalty = f.optional(self, "missing_eos_penalty", |f, ck| f.ranged(ck, "missing_eos_penalty", None, 0.0, true, 1e6, false));
        let whiten_rewards = f.bool(self, "whiten_rewards", false);
        let lora = self.adapter_key(&mut f, policy.as_ref());
        let eval = self.eval_keys(&mut f);
        let (mb_span, new_span) = (f.value_span("minibatches"), f.value_span("max_new"));
        f.finish(self);
        let opt = opt?;
        if let Some(m) = minibatches.filter(|&m| m > opt.batch) {
            self.error(Diagnostic::error(Code::E0201, mb_span, format!("{m} minibatches of a batch of {} prompts leave some empty", opt.batch))
                .with_hint("use at most `batch` minibatches"));
            return None;
        }
        let ((reward, _), (eval_examples, max_new)) = (reward?, eval?);
        if let (Some(p), Some(set)) = (&policy, &prompts) {
            if !self.prompt_room(set, &p.arch, max_new, new_span) {
                return None;
            }
        }
        Some(self.stage_spec(
            d,
            StageKind::Ppo(PpoSpec {
                policy: policy?,
                reward,
                prompts: prompts?.name,
                opt,
                kl: kl?,
                kl_target: kl_target?,
                clip: clip?,
                value_clip: value_clip?,
                vf_coef: vf_coef?,
                entropy_coef: entropy_coef?,
                gamma: gamma?,
                lambda: lambda?,
                epochs: epochs?,
                minibatches: minibatches?,
                max_new,
                temperature: temperature?,
                filters: filters?,
                kl_estimator: kl_estimator?,
                missing_eos_penalty: missing_eos_penalty?,
                whiten_rewards: whiten_rewards?,
                lora: lora?,
                eval_examples,
            }),
        ))
    }

    pub(super) fn check_dpo(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "dpo", args, &["policy", "data"]);
        let policy = bound[0].and_then(|e| self.expect_lm(e, "the policy"));
        let data = bound[1].and_then(|e| self.examples_arg(e, &[ExampleKind::Preferences, ExampleKind::Feedback], "dpo"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 16, 100);
        let beta = f.positive(self, "beta", Some(0.1));
        let names = DpoLoss::ALL.map(DpoLoss::name);
        let loss = f.sym(self, "loss", &names, Some("sigmoid")).and_then(|l| DpoLoss::ALL.into_iter().find(|x| x.name() == l));
        let smoothing = f.ranged(self, "label_smoothing", Some(0.0), 0.0, false, 0.5, true);
        if let (Some(l), Some(e)) = (loss.filter(|l| !l.smooths()), smoothing.filter(|e| *e > 0.0)) {
            self.error(
                Diagnostic::error(Code::E0246, f.key_span("label_smoothing"), format!("`label_smoothing = {}` has no meaning for `loss = {}`", fmt_num(e), l.name()))
                    .with_hint("label smoothing belongs to `loss = sigmoid` (conservative DPO), `robust`, `simpo`, `exo_pair`, `aot` and `aot_unpaired`"),
            );
        }
        let gamma = self.loss_option(&mut f, loss, DpoLoss::Simpo, "gamma", 0.5, "SimPO's target margin");
        let tau = self.loss_option(&mut f, loss, DpoLoss::Discopop, "discopop_tau", 0.05, "DiscoPOP's temperature");
        let rpo_alpha = f.optional(self, "rpo_alpha", |f, ck| f.ranged(ck, "rpo_alpha", None, 0.0, false, 1e6, false));
        if let (Some(DpoLoss::Orpo), Some(Some(_))) = (loss, rpo_alpha) {
            self.error(
                Diagnostic::error(Code::E0246, f.key_span("rpo_alpha"), "`rpo_alpha` adds the chosen responses' NLL, which `loss = orpo` already has")
                    .with_hint("leave `rpo_alpha` out: ORPO's β weighs its preference term against that NLL"),
            );
        }
        let kto_weights = self.kto_weights(&mut f, loss, data.as_ref(), bound[1]);
        if let (Some(set), Some(Some(_))) = (data.as_ref().filter(|s| s.kind == ExampleKind::Feedback), rpo_alpha) {
            self.error(
                Diagnostic::error(Code::E0246, f.key_span("rpo_alpha"), format!("`rpo_alpha` adds the chosen responses' NLL, and `{}` holds unpaired feedback, which chooses none", set.name))
                    .with_hint("leave `rpo_alpha` out, or train a `finetune` stage on the desirable completions first"),
            );
        }
        let lora = self.adapter_key(&mut f, policy.as_ref());
        let sync_ref = self.ref_sync_keys(&mut f, super::ref_sync::dpo_without_reference(loss, &lora));
        let use_weighting = self.use_weighting(&mut f, data.as_ref());
        let f_divergence = self.f_divergence(&mut f, loss);
        let precompute = self.precompute_key(&mut f, loss, sync_ref.as_ref());
        let eval = self.eval_keys(&mut f);
        let eval_data = match (f.field("eval_data"), &data) {
            (Some(field), Some(own)) => self.eval_sets(&field.value, own, "dpo"),
            (Some(_), None) => None,
            (None, _) => Some(vec![]),
        };
        f.finish(self);
        let (eval_examples, max_new) = eval?;
        let spec = DpoSpec { policy: policy?, data: data?.name, opt: opt?, beta: beta?, loss: loss?, label_smoothing: smoothing?, rpo_alpha: rpo_alpha?, gamma: gamma?, discopop_tau: tau?, kto_weights: kto_weights?, lora: lora?, sync_ref: sync_ref?, use_weighting: use_weighting?, f_divergence: f_divergence?, precompute_ref_log_probs: precompute?, eval_examples, max_new, eval_data: eval_data? };
        Some(self.stage_spec(d, StageKind::Dpo(spec)))
    }

    /// `f_divergence = reverse_kl | js_divergence | alpha_divergence` with
    /// `f_alpha_divergence_coef` (1; α-divergence only), TRL's names; E0246 beside a loss that
    /// does not read h, or for the coefficient without its divergence.
    fn f_divergence(&mut self, f: &mut Fields<'a>, loss: Option<DpoLoss>) -> Option<FDivergence> {
        let kind = f.sym(self, "f_divergence", &["reverse_kl", "js_divergence", "alpha_divergence"], Some("reverse_kl"));
        let given = f.field("f_alpha_divergence_coef").is_some();
        let coef = f.ranged(self, "f_alpha_divergence_coef", Some(1.0), 0.0, true, 1e3, false);
        if given && kind.is_some_and(|k| k != "alpha_divergence") {
            self.error(Diagnostic::error(Code::E0246, f.key_span("f_alpha_divergence_coef"), "`f_alpha_divergence_coef` is the α of `f_divergence = alpha_divergence`")
                .with_hint("write `f_divergence = alpha_divergence`, or leave the coefficient out"));
        }
        if let (Some(l), Some(k)) = (loss.filter(|l| !FDivergence::applies_to(*l)), kind.filter(|k| *k != "reverse_kl")) {
            self.error(Diagnostic::error(Code::E0246, f.key_span("f_divergence"), format!("`f_divergence = {k}` changes the h that `loss = {}` does not read", l.name()))
                .with_hint("f-DPO's divergences apply to `sigmoid`, `robust`, `ipo`, `hinge` and `exo_pair`"));
        }
        Some(match kind? {
            "js_divergence" => FDivergence::JsDivergence,
            "alpha_divergence" => FDivergence::AlphaDivergence { coef: coef? },
            _ => FDivergence::ReverseKl,
        })
    }

    /// A number only `owner` reads (SimPO's `gamma`, DiscoPOP's `discopop_tau`), in (0, 1e6]
    /// (`gamma` may be 0): `default` under `owner`, none under another loss, where giving it is E0246.
    fn loss_option(&mut self, f: &mut Fields<'a>, loss: Option<DpoLoss>, owner: DpoLoss, key: &'static str, default: f64, what: &str) -> Option<Option<f64>> {
        let given = f.field(key).is_some();
        let v = f.ranged(self, key, Some(default), 0.0, owner != DpoLoss::Simpo, 1e6, false);
        if let (Some(l), true) = (loss.filter(|l| *l != owner), given) {
            self.error(
                Diagnostic::error(Code::E0246, f.key_span(key), format!("`{key}` is {what} and has no meaning for `loss = {}`", l.name()))
                    .with_hint(format!("use `loss = {}`, or leave `{key}` out", owner.name())),
            );
        }
        v.map(|v| (loss == Some(owner)).then_some(v))
    }
}

pub(super) fn precision_of(s: &str) -> Precision {
    if s == "bf16" {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}



/// What an example set of kind `k` holds, in words.
pub(super) fn kind_words(k: &ExampleKind) -> &'static str {
    match k {
        ExampleKind::Instructions => "instruction examples",
        ExampleKind::Preferences => "preference pairs",
        ExampleKind::Feedback => "unpaired feedback",
        ExampleKind::Choices => "multiple-choice questions",
    }
}
