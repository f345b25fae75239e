//! The stages that learn from the policy's own responses ranked by a reward:
//! `online_dpo(policy = …, prompts = …) { reward, beta, loss, … }` and
//! `best_of_n(policy = …, prompts = …) { n, reward, threshold, … }`. The reward is written as
//! GRPO's; a program reward needs data with answers, and the prompts must leave `max_new`
//! positions of the context for a response.

use super::Checker;
use crate::diag::Span;
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, Decl};

impl<'a> Checker<'a> {
    pub(super) fn check_online_dpo(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "online_dpo", args, &["policy", "prompts"]);
        let policy = bound[0].and_then(|e| self.expect_lm(e, "the policy"));
        let prompts = bound[1].and_then(|e| self.examples_arg(e, &[], "online_dpo"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 8, 25);
        let reward = self.reward_key(&mut f);
        let beta = f.positive(self, "beta", Some(0.1));
        let loss = f.sym(self, "loss", &["sigmoid", "ipo"], Some("sigmoid"));
        let temperature = f.ranged(self, "temperature", Some(0.9), 0.0, true, 100.0, false);
        let filters = self.rollout_filters(&mut f);
        let missing_eos_penalty = f.optional(self, "missing_eos_penalty", |f, ck| f.ranged(ck, "missing_eos_penalty", None, 0.0, true, 1e6, false));
        let lora = self.adapter_key(&mut f, policy.as_ref());
        let eval = self.eval_keys(&mut f);
        let (reward_span, new_span) = (f.value_span("reward"), f.value_span("max_new"));
        f.finish(self);
        let (policy, prompts, reward, (eval_examples, max_new)) = (policy?, prompts?, reward?, eval?);
        let mut ok = self.answers_for(&reward, &prompts, reward_span);
        ok &= self.prompt_room(&prompts, &policy.arch, max_new, new_span);
        let loss = if loss? == "ipo" { DpoLoss::Ipo } else { DpoLoss::Sigmoid };
        let spec = OnlineDpoSpec {
            policy,
            prompts: prompts.name,
            opt: opt?,
            reward,
            beta: beta?,
            loss,
            temperature: temperature?,
            filters: filters?,
            missing_eos_penalty: missing_eos_penalty?,
            lora: lora?,
            eval_examples,
            max_new,
        };
        ok.then(|| self.stage_spec(d, StageKind::OnlineDpo(spec)))
    }

    pub(super) fn check_best_of_n(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "best_of_n", args, &["policy", "prompts"]);
        let policy = bound[0].and_then(|e| self.expect_lm(e, "the policy"));
        let prompts = bound[1].and_then(|e| self.examples_arg(e, &[], "best_of_n"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 8, 25);
        let n = f.size(self, "n", Some(4));
        let reward = self.reward_key(&mut f);
        let threshold = f.optional(self, "threshold", |f, ck| f.ranged(ck, "threshold", None, -1e6, false, 1e6, false));
        let temperature = f.ranged(self, "temperature", Some(1.0), 0.0, true, 100.0, false);
        let filters = self.rollout_filters(&mut f);
        let lora = self.adapter_key(&mut f, policy.as_ref());
        let eval = self.eval_keys(&mut f);
        let (reward_span, new_span) = (f.value_span("reward"), f.value_span("max_new"));
        f.finish(self);
        let (policy, prompts, reward, n, (eval_examples, max_new)) = (policy?, prompts?, reward?, n?, eval?);
        let mut ok = self.answers_for(&reward, &prompts, reward_span);
        ok &= self.prompt_room(&prompts, &policy.arch, max_new, new_span);
        let spec = BestOfNSpec {
            policy,
            prompts: prompts.name,
            opt: opt?,
            n,
            reward,
            threshold: threshold?,
            temperature: temperature?,
            filters: filters?,
            lora: lora?,
            eval_examples,
            max_new,
        };
        ok.then(|| self.stage_spec(d, StageKind::BestOfN(spec)))
    }
}
