//! TR-DPO's moving reference (Gorbatovski et al. 2024; TRL's `sync_ref_model`), shared by the
//! `dpo` and `grpo` stages: every `every` steps the frozen reference becomes α·policy +
//! (1 − α)·reference, after the step's update, as TRL's SyncRefModelCallback does at the step's
//! end; each checkpoint keeps it, so a resumed run goes on from the same reference.

use crate::recipe::RefSync;
use crate::run::model::Model;

use super::lifecycle::RunDir;

/// Have `run`'s checkpoints keep `reference` (as `ref.` + its names) when it moves.
pub fn keep_in_checkpoints(run: &mut RunDir, sync: Option<&RefSync>, reference: Option<&Model>) {
    if let (Some(_), Some(r)) = (sync, reference) {
        run.companions = r.named().into_iter().map(|(n, t)| (format!("ref.{n}"), t)).collect();
    }
}

/// Move `reference` toward `policy` when `done` steps complete a period.
pub fn sync_after(sync: Option<&RefSync>, reference: Option<&Model>, policy: &Model, done: u64) {
    if let (Some(s), Some(r)) = (sync, reference) {
        if done.is_multiple_of(s.every) {
            r.mix_toward(policy, s.alpha);
        }
    }
}

/// What a stage's first log line says of it.
pub fn describe(s: &RefSync) -> String {
    format!("reference ← {}·policy + {}·reference every {} steps (TR-DPO)", s.alpha, 1.0 - s.alpha, s.every)
}
