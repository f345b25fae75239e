//! The `distill` stage: `distill(student = …, teacher = …, data = …) { beta, lmbda, seq_kd, … }`.
//! A teacher must be able to teach: trained weights (a stage's or a checkpoint's), the student's
//! vocabulary (the divergence compares distributions token by token) and a context at least as
//! long as the student's (it reads every sequence the student does).

use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::recipe::*;
use crate::syntax::ast::{Arg, Block, Decl};

impl<'a> Checker<'a> {
    pub(super) fn check_distill(&mut self, d: &'a Decl, at: Span, args: &'a [Arg], block: Option<&'a Block>) -> Option<StageSpec> {
        let bound = self.bind_args(at, "distill", args, &["student", "teacher", "data"]);
        let student = bound[0].and_then(|e| self.expect_lm(e, "the student"));
        let teacher = bound[1].and_then(|e| self.expect_lm(e, "the teacher"));
        let data = bound[2].and_then(|e| self.examples_arg(e, &[ExampleKind::Instructions], "distill"));
        let mut f = self.stage_fields(d, at, block);
        let opt = self.check_split_optim(&mut f, 16, 100);
        let lora = self.adapter_key(&mut f, student.as_ref());
        let beta = f.ranged(self, "beta", Some(0.5), 0.0, false, 1.0, false);
        let lmbda = f.ranged(self, "lmbda", Some(0.5), 0.0, false, 1.0, false);
        let seq_kd = f.bool(self, "seq_kd", false);
        let temperature = f.ranged(self, "temperature", Some(0.9), 0.0, true, 100.0, false);
        let kd_ratio = f.ranged(self, "kd_ratio", Some(1.0), 0.0, false, 1.0, false);
        let eval = self.eval_keys(&mut f);
        let (new_span, ratio_span) = (f.value_span("max_new"), f.value_span("kd_ratio"));
        f.finish(self);
        let (student, teacher, data, (eval_examples, max_new)) = (student?, teacher?, data?, eval?);
        let mut ok = self.teaches(&teacher, &student, bound[1].map_or(at, |e| e.span));
        let spec = DistillSpec { student, teacher, data: data.name.clone(), opt: opt?, lora: lora?, beta: beta?, lmbda: lmbda?, seq_kd: seq_kd?, temperature: temperature?, kd_ratio: kd_ratio?, eval_examples, max_new };
        // The data's log-likelihood term reads responses someone meant: not the student's own.
        if spec.kd_ratio < 1.0 && spec.lmbda > 0.0 {
            self.error(
                Diagnostic::error(Code::E0260, ratio_span, format!("`kd_ratio = {}` trains on the responses' likelihood, but `lmbda = {}` makes some of them the student's own samples", spec.kd_ratio, spec.lmbda))
                    .with_hint("use `lmbda = 0` with `kd_ratio` (torchtune's KD reads the data's responses), or leave `kd_ratio` at 1 for GKD"),
            );
            ok = false;
        }
        // Sampled responses and held-out answers follow the prompt within the student's context.
        ok &= self.prompt_room(&data, &spec.student.arch, max_new, new_span);
        ok.then(|| self.stage_spec(d, StageKind::Distill(spec)))
    }

    /// E0259 unless `teacher` can teach `student`: trained, the same vocabulary, a context at
    /// least as long.
    fn teaches(&mut self, teacher: &ModelRef, student: &ModelRef, span: Span) -> bool {
        let (Some(t), Some(s)) = (self.models.get(&teacher.arch).cloned(), self.models.get(&student.arch).cloned()) else { return true };
        let name = &teacher.arch;
        let problem = if teacher.weights == Weights::Init && t.checkpoint.is_none() {
            Some((format!("the teacher `{name}` has fresh weights: it has learned nothing to teach"), format!("distill from a trained model: a stage's output (`pretrain.model`, `sft.model`) or an imported checkpoint (`model {name} = hf(\"…\")`)")))
        } else if t.vocab != s.vocab {
            Some((
                format!("the teacher `{name}` predicts {} tokens but the student `{}` {}: distillation compares their distributions token by token", t.vocab, student.arch, s.vocab),
                "give both models the same tokenizer and `vocab`".to_string(),
            ))
        } else if t.context < s.context {
            Some((
                format!("the teacher `{name}` reads {} positions but the student `{}` {}: the teacher must read every sequence the student trains on", t.context, student.arch, s.context),
                format!("give the student a context of at most {}", t.context),
            ))
        } else {
            None
        };
        match problem {
            Some((message, hint)) => {
                self.error(Diagnostic::error(Code::E0259, span, message).with_hint(hint));
                false
            }
            None => true,
        }
    }
}
