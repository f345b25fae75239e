//! The `grpo` stage: `grpo(policy = …, prompts = …) { group, reward, beta, clip, … }`. Its
//! configuration errors are caught before any sampling: a batch the group does not divide, a
//! generation that cannot fit the context, a program reward on data that holds no answers.

use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::posttrain::examples::render;
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, BinOp, Decl, Expr, ExprKind};

/// The reward terms a recipe may name, for messages.
const TERMS: &str = "exact_match, format, length, matches(\"regex\"), reward_model(STAGE.model)";

impl<'a> Checker<'a> {
    pub(super) fn check_grpo(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "grpo", args, &["policy", "prompts"]);
        let policy = bound[0].and_then(|e| self.expect_lm(e, "the policy"));
        let prompts = bound[1].and_then(|e| self.examples_arg(e, &[], "grpo"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 32, 25);
        let group = f.int(self, "group", Some(4), super::fields::Min::One);
        let reward = self.reward_key(&mut f);
        let beta = f.ranged(self, "beta", Some(0.04), 0.0, false, f64::INFINITY, true);
        let clip = f.ranged(self, "clip", Some(0.2), 0.0, true, 1.0, true);
        let clip_high = f.optional(self, "clip_high", |f, ck| f.ranged(ck, "clip_high", None, 0.0, true, 1.0, true));
        let delta = f.optional(self, "delta", |f, ck| f.ranged(ck, "delta", None, 1.0, true, 1e6, false));
        let quantile = f.optional(self, "top_entropy_quantile", |f, ck| f.ranged(ck, "top_entropy_quantile", None, 0.0, true, 1.0, false));
        let epochs = f.size(self, "epochs", Some(1));
        let temperature = f.positive(self, "temperature", Some(1.0));
        let filters = self.rollout_filters(&mut f);
        let loss = f.sym(self, "loss", &["grpo", "dr_grpo", "dapo", "rloo"], Some("grpo"));
        let scale = f.optional(self, "scale_rewards", |f, ck| f.sym(ck, "scale_rewards", &["group", "batch", "none"], None));
        let level = f.optional(self, "importance_sampling", |f, ck| f.sym(ck, "importance_sampling", &["token", "sequence"], None));
        let mask_truncated = f.bool(self, "mask_truncated", false);
        let lora = self.adapter_key(&mut f, policy.as_ref());
        let no_reference = match (&lora, beta) {
            (Some(Some(_)), _) => Some(super::ref_sync::LORA.to_string()),
            (_, Some(0.0)) => Some("with `beta = 0` no reference is loaded".to_string()),
            _ => None,
        };
        let sync_ref = self.ref_sync_keys(&mut f, no_reference);
        let eval = self.eval_keys(&mut f);
        let (group_span, reward_span, new_span) = (f.value_span("group"), f.value_span("reward"), f.value_span("max_new"));
        let rloo = loss == Some("rloo");
        let mut ok = !rloo || self.rloo_keys(&f, group, [quantile.map(|q| q.is_some()), level.map(|l| l.is_some())], scale);
        f.finish(self);
        let (opt, group, reward, prompts, (eval_examples, max_new)) = (opt?, group? as usize, reward?, prompts?, eval?);
        if opt.batch % group != 0 {
            self.error(
                Diagnostic::error(Code::E0227, group_span, format!("a batch of {} completions is not a whole number of groups of {group}", opt.batch))
                    .with_hint(format!("`batch` counts completions, `group` of them to a prompt: use a batch of {} or {}", (opt.batch / group).max(1) * group, (opt.batch / group + 1) * group)),
            );
            ok = false;
        }
        ok &= self.answers_for(&reward, &prompts, reward_span);
        if let Some(p) = &policy {
            ok &= self.prompt_room(&prompts, &p.arch, max_new, new_span);
        }
        if !ok {
            return None;
        }
        let loss = match loss? {
            "dr_grpo" => GrpoLoss::DrGrpo,
            "dapo" => GrpoLoss::Dapo,
            "rloo" => GrpoLoss::Rloo,
            _ => GrpoLoss::Grpo,
        };
        let scale_rewards = scale?.map(|s| match s {
            "batch" => RewardScale::Batch,
            "none" => RewardScale::None,
            _ => RewardScale::Group,
        });
        let importance_sampling = if level? == Some("sequence") { ImportanceSampling::Sequence } else { ImportanceSampling::Token };
        let spec = GrpoSpec { policy: policy?, prompts: prompts.name, opt, group, reward, beta: beta?, clip: clip?, clip_high: clip_high?, delta: delta?, top_entropy_quantile: quantile?.filter(|&q| q < 1.0), epochs: epochs?, max_new, temperature: temperature?, filters: filters?, loss, scale_rewards, lora: lora?, eval_examples, importance_sampling, mask_truncated: mask_truncated?, sync_ref: sync_ref? };
        Some(self.stage_spec(d, StageKind::Grpo(spec)))
    }

    /// `loss = rloo`: a group of at least 2 (a leave-one-out baseline needs another completion;
    /// E0227), and none of GRPO's per-token options (E0246): `top_entropy_quantile`,
    /// `importance_sampling` (RLOO's ratio is always one per completion) and
    /// `scale_rewards = group`. `given` says whether each of the first two was written.
    fn rloo_keys(&mut self, f: &super::fields::Fields<'a>, group: Option<u64>, given: [Option<bool>; 2], scale: Option<Option<&str>>) -> bool {
        let mut ok = true;
        if group == Some(1) {
            self.error(
                Diagnostic::error(Code::E0227, f.value_span("group"), "RLOO's baseline for a completion is the mean reward of the other completions of its prompt, and a group of 1 has none")
                    .with_hint("use `group = 2` or more (TRL's RLOOTrainer samples 2 by default)"),
            );
            ok = false;
        }
        let per_token = [("top_entropy_quantile", "picks the tokens that carry a per-token policy term"), ("importance_sampling", "chooses between GRPO's per-token and GSPO's per-completion ratio")];
        for ((key, what), given) in per_token.into_iter().zip(given) {
            if given == Some(true) {
                self.error(
                    Diagnostic::error(Code::E0246, f.key_span(key), format!("`{key}` {what} and has no meaning for `loss = rloo`"))
                        .with_hint("RLOO's ratio is one per completion, exp of the sum of its tokens' log π − log π_old, clipped as one"),
                );
                ok = false;
            }
        }
        if scale == Some(Some("group")) {
            self.error(
                Diagnostic::error(Code::E0246, f.value_span("scale_rewards"), "`scale_rewards = group` has no meaning for `loss = rloo`")
                    .with_hint("RLOO's advantages are unscaled (`none`, the default) or standardised over the step (`batch`, TRL's `normalize_advantages`)"),
            );
            ok = false;
        }
        ok
    }

    /// E0314 unless `prompts` holds the answers the terms of `reward` compare with.
    pub(super) fn answers_for(&mut self, reward: &Reward, prompts: &ExampleSet, span: Span) -> bool {
        let Some((_, term)) = reward.terms.iter().find(|(_, t)| t.needs_answers()) else { return true };
        if has_answers(prompts) {
            return true;
        }
        let name = match term {
            RewardTerm::ExactMatch => "exact_match",
            _ => "this reward",
        };
        self.error(
            Diagnostic::error(Code::E0314, span, format!("`{name}` compares with the data's answers, but `{}` holds preference pairs without answers", prompts.name))
                .with_hint("use instruction data (its responses are the answers) as `prompts`, or reward with `reward_model(rm.model)`"),
        );
        false
    }

    /// `reward` (exact_match unless given): what `grpo` and `online_dpo` score responses with.
    pub(super) fn reward_key(&mut self, f: &mut super::fields::Fields<'a>) -> Option<Reward> {
        match f.field("reward") {
            Some(field) => self.check_reward(&field.value),
            None => Some(Reward { terms: vec![(1.0, RewardTerm::ExactMatch)] }),
        }
    }

    /// `exact_match + 0.5 * format - 0.1 * length + reward_model(rm.model)`: a weighted sum of
    /// terms from a closed set, each weight a number.
    fn check_reward(&mut self, e: &'a Expr) -> Option<Reward> {
        let mut terms = vec![];
        self.reward_terms(e, 1.0, &mut terms)?;
        Some(Reward { terms })
    }

    fn reward_terms(&mut self, e: &'a Expr, w: f64, out: &mut Vec<(f64, RewardTerm)>) -> Option<()> {
        match &e.kind {
            ExprKind::Paren(x) => self.reward_terms(x, w, out),
            ExprKind::Neg(x) => self.reward_terms(x, -w, out),
            ExprKind::Binary(BinOp::Add, a, b) => self.reward_terms(a, w, out).and(self.reward_terms(b, w, out)),
            ExprKind::Binary(BinOp::Sub, a, b) => self.reward_terms(a, w, out).and(self.reward_terms(b, -w, out)),
            ExprKind::Binary(BinOp::Mul, a, b) => match (number(a), number(b)) {
                (Some(k), _) => self.reward_terms(b, w * k, out),
                (_, Some(k)) => self.reward_terms(a, w * k, out),
                _ => self.not_a_reward(e, "a product of a number and a reward term"),
            },
            ExprKind::Ctor { path, args: Some(args), block: None } if Expr::path_string(path) == "matches" => {
                let [arg] = args.as_slice() else { return self.not_a_reward(e, "`matches` with one argument: a regular expression") };
                let ExprKind::Str(pattern) = &arg.value.kind else {
                    self.error(Diagnostic::error(Code::E0120, arg.value.span, format!("`matches` expects a string, found {}", super::eval::describe(&arg.value)))
                        .with_hint("write a regular expression as a string: `matches(\"^[A-Z]+$\")`"));
                    return None;
                };
                if let Err(why) = crate::recipe::reward_pattern(pattern) {
                    self.error(Diagnostic::error(Code::E0254, arg.value.span, format!("`matches` needs a regular expression: {why}"))
                        .with_hint("the syntax is Rust's regex crate's (as Python's `re` without look-around or backreferences)"));
                    return None;
                }
                out.push((w, RewardTerm::Matches { pattern: pattern.clone() }));
                Some(())
            }
            ExprKind::Ctor { path, args: Some(args), block: None } if Expr::path_string(path) == "reward_model" => {
                let [arg] = args.as_slice() else { return self.not_a_reward(e, "`reward_model` takes one argument: a reward model") };
                let (stage, _) = self.expect_reward(&arg.value)?;
                out.push((w, RewardTerm::Model { stage }));
                Some(())
            }
            // A bare name, or a call of one that is not a reward (`match("…")`): named as unknown.
            ExprKind::Ctor { path, args: Some(_), block: None } if !matches!(Expr::path_string(path).as_str(), "exact_match" | "format" | "length") => self.unknown_reward(&Expr::path_string(path), e),
            _ => match e.as_path().map(Expr::path_string).as_deref() {
                Some(name @ ("exact_match" | "format" | "length")) => {
                    let term = match name {
                        "exact_match" => RewardTerm::ExactMatch,
                        "format" => RewardTerm::Format,
                        _ => RewardTerm::Length,
                    };
                    out.push((w, term));
                    Some(())
                }
                Some(other) => self.unknown_reward(other, e),
                None => self.not_a_reward(e, "a reward term"),
            },
        }
    }

    fn unknown_reward(&mut self, name: &str, e: &Expr) -> Option<()> {
        let err = Diagnostic::error(Code::E0130, e.span, format!("unknown reward `{name}`"));
        let err = match crate::diag::suggest::did_you_mean(name, ["exact_match", "format", "length", "matches", "reward_model"]) {
            Some(s) => err.with_hint(format!("did you mean `{s}`? (rewards: {TERMS})")),
            None => err.with_hint(format!("rewards: {TERMS}, and weighted sums of them")),
        };
        self.error(err);
        None
    }

    fn not_a_reward(&mut self, e: &Expr, what: &str) -> Option<()> {
        self.error(Diagnostic::error(Code::E0120, e.span, format!("`reward` expects a weighted sum of reward terms; this is not {what}"))
            .with_hint(format!("write e.g. `reward = exact_match + 0.5 * format`; terms: {TERMS}")));
        None
    }
}

/// A literal number (or its negation), as a reward's weight.
fn number(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Num { value, .. } => Some(*value),
        ExprKind::Neg(x) => number(x).map(|v| -v),
        ExprKind::Paren(x) => number(x),
        _ => None,
    }
}

/// Whether a set holds answers a program can compare with: an instruction set's responses, or
/// a synthetic set's gold answers. Preference pairs read from a file hold only preferences.
fn has_answers(set: &ExampleSet) -> bool {
    set.kind == ExampleKind::Instructions || matches!(set.source, ExampleSource::Synthetic { .. })
}

/// The longest prompt of a synthetic set as the model sees it (its template applied), in tokens
/// (bytes); None for a file, whose prompts are known only when it is read.
pub(super) fn longest_prompt(set: &ExampleSet) -> Option<usize> {
    let ExampleSource::Synthetic { tasks, max_len, .. } = &set.source else { return None };
    let longest = tasks.iter().map(|t| t.longest_prompt(*max_len)).max()?;
    Some(render(&set.template, &"x".repeat(longest)).len())
}
