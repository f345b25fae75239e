//! What a stage that samples holds while it samples: no activations, but every row's cached keys
//! and values, the prompt pass's widest layer and the next token's logits (`generation_bytes`),
//! for all the rows it samples at once — PPO's and GRPO's rollout batch, online DPO's two
//! responses a prompt, best-of-n's n, a distillation's responses. Its peak is the larger of that and its training micro-batch's.

use std::borrow::Borrow;

use crate::arith::count::generation_bytes;
use crate::arith::ModelGraph;
use crate::recipe::{Recipe, StageKind};

/// The model a stage samples with and the rows one of `world` processes samples at once; none
/// for a stage that does not sample.
fn sampled<'r>(r: &'r Recipe, kind: &'r StageKind, world: usize) -> Option<(&'r str, usize)> {
    let share = |rows: usize| rows.div_ceil(world.max(1));
    match kind {
        StageKind::Ppo(p) => Some((&p.policy.arch, share(p.opt.batch))),
        StageKind::Grpo(g) => Some((&g.policy.arch, share(g.opt.batch))),
        StageKind::OnlineDpo(o) => Some((&o.policy.arch, 2 * share(o.opt.batch))),
        StageKind::BestOfN(b) => Some((&b.policy.arch, b.n.saturating_mul(share(b.opt.batch)))),
        // Under `seq_kd` the teacher writes too: the larger of the two caches.
        StageKind::Distill(k) if k.samples() => {
            let bigger = |a: &'r str, b: &'r str| if r.model(a).map_or(0, |m| m.d_model * m.layers) >= r.model(b).map_or(0, |m| m.d_model * m.layers) { a } else { b };
            Some((if k.seq_kd { bigger(&k.teacher.arch, &k.student.arch) } else { &k.student.arch }, share(k.opt.batch)))
        }
        _ => None,
    }
}

/// The bytes a stage's sampling holds beyond its weights, on one of `world` processes (0 for a
/// stage that does not sample).
pub fn sampling_bytes<G: Borrow<ModelGraph>>(r: &Recipe, kind: &StageKind, graph: impl Fn(&str) -> Option<G>, world: usize) -> u64 {
    let Some((arch, rows)) = sampled(r, kind, world) else { return 0 };
    graph(arch).map_or(0, |g| generation_bytes(g.borrow(), rows, g.borrow().spec.context))
}
