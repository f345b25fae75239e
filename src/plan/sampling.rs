//! What a stage that samples holds while it samples: no activations, but every row's cached keys
//! and values, the prompt pass's widest layer and the next token's logits (`generation_bytes`),
//! for all the rows it samples at once — PPO's and GRPO's rollout batch, online DPO's two
//! responses a prompt, best-of-n's n, a distillation's responses. Its peak is the larger of that and its training micro-batch's.

use std::borrow::Borrow;

use crate::arith::count::generation_bytes;
use crate::arith::ModelGraph;
use crate::recipe::StageKind;

/// The models a stage samples with and the rows one of `world` processes samples at once; none
/// for a stage that does not sample.
fn sampled(kind: &StageKind, world: usize) -> Option<(Vec<&str>, usize)> {
    let share = |rows: usize| rows.div_ceil(world.max(1));
    match kind {
        StageKind::Ppo(p) => Some((vec![&p.policy.arch], share(p.opt.batch))),
        StageKind::Grpo(g) => Some((vec![&g.policy.arch], share(g.opt.batch))),
        StageKind::OnlineDpo(o) => Some((vec![&o.policy.arch], 2 * share(o.opt.batch))),
        StageKind::BestOfN(b) => Some((vec![&b.policy.arch], b.n.saturating_mul(share(b.opt.batch)))),
        // Under `seq_kd` the teacher writes too, on other steps.
        StageKind::Distill(k) if k.samples() => Some((if k.seq_kd { vec![&k.student.arch, &k.teacher.arch] } else { vec![&k.student.arch] }, share(k.opt.batch))),
        _ => None,
    }
}

/// The bytes a stage's sampling holds beyond its weights, on one of `world` processes (0 for a
/// stage that does not sample); with two models that sample, the larger.
pub fn sampling_bytes<G: Borrow<ModelGraph>>(kind: &StageKind, graph: impl Fn(&str) -> Option<G>, world: usize) -> u64 {
    let Some((archs, rows)) = sampled(kind, world) else { return 0 };
    archs.into_iter().filter_map(&graph).map(|g| generation_bytes(g.borrow(), rows, g.borrow().spec.context)).max().unwrap_or(0)
}
