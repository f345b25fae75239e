//! The keys of a stage's reference: TR-DPO's moving reference (Gorbatovski et al. 2024; TRL's
//! `sync_ref_model`) on `dpo` and `grpo`: `sync_ref_model = true`, `ref_model_mixup_alpha` (0.6),
//! `ref_model_sync_steps` (512); and DPO's `precompute_ref_log_probs` (TRL's).

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::{DpoLoss, LoraSpec, RefSync};

/// Why a stage with this loss and adapter holds no reference of its own to move, if it does not.
pub(super) fn dpo_without_reference(loss: Option<DpoLoss>, lora: &Option<Option<LoraSpec>>) -> Option<String> {
    match (lora, loss) {
        (Some(Some(_)), _) => Some(LORA.to_string()),
        (_, Some(l)) if !l.needs_reference() => Some(format!("`loss = {}` compares with no reference", l.name())),
        _ => None,
    }
}

/// With LoRA the reference is the policy without its adapters: nothing of its own to move (TRL
/// refuses `sync_ref_model` with PEFT too).
pub(super) const LORA: &str = "with LoRA the reference is the policy without its adapters, which has nothing of its own to move";

impl<'a> Checker<'a> {
    /// The keys, or E0258 where the stage holds no reference to move (`no_reference` says why)
    /// or the mixing keys come without `sync_ref_model = true`.
    pub(super) fn ref_sync_keys(&mut self, f: &mut Fields<'a>, no_reference: Option<String>) -> Option<Option<RefSync>> {
        let sync = f.bool(self, "sync_ref_model", false);
        let alpha = f.optional(self, "ref_model_mixup_alpha", |f, ck| f.ranged(ck, "ref_model_mixup_alpha", None, 0.0, true, 1.0, false));
        let every = f.optional(self, "ref_model_sync_steps", |f, ck| f.int(ck, "ref_model_sync_steps", None, Min::One));
        let (alpha, every) = (alpha?, every?);
        if !sync? {
            for (key, given) in [("ref_model_mixup_alpha", alpha.is_some()), ("ref_model_sync_steps", every.is_some())] {
                if given {
                    self.error(Diagnostic::error(Code::E0258, f.key_span(key), format!("`{key}` has no meaning without `sync_ref_model = true`")).with_hint("add `sync_ref_model = true` to move the reference toward the policy, or leave the key out"));
                }
            }
            return if alpha.is_some() || every.is_some() { None } else { Some(None) };
        }
        if let Some(why) = no_reference {
            self.error(Diagnostic::error(Code::E0258, f.key_span("sync_ref_model"), format!("`sync_ref_model` moves the stage's reference toward the policy, but {why}")).with_hint("leave `sync_ref_model` out"));
            return None;
        }
        Some(Some(RefSync { alpha: alpha.unwrap_or(0.6), every: every.unwrap_or(512) }))
    }
}

impl<'a> Checker<'a> {
    /// `precompute_ref_log_probs` (false), or E0263 where the reference's log-probabilities of the
    /// examples at the start are not what the loss reads of it: none (a reference-free loss), or a
    /// reference that moves (`sync_ref_model`).
    pub(super) fn precompute_key(&mut self, f: &mut Fields<'a>, loss: Option<DpoLoss>, sync: Option<&Option<RefSync>>) -> Option<bool> {
        let on = f.bool(self, "precompute_ref_log_probs", false)?;
        let why = match loss {
            _ if !on => None,
            Some(l) if !l.needs_reference() => Some(format!("`loss = {}` compares with no reference", l.name())),
            _ if matches!(sync, Some(Some(_))) => Some("`sync_ref_model` moves the reference while the stage trains".to_string()),
            _ => None,
        };
        if let Some(why) = why {
            let err = Diagnostic::error(Code::E0263, f.key_span("precompute_ref_log_probs"), format!("`precompute_ref_log_probs` computes the reference's log-probabilities of the examples once, before the first step, but {why}"));
            self.error(err.with_hint("leave `precompute_ref_log_probs` out"));
            return None;
        }
        Some(on)
    }
}
