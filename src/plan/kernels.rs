//! A stage's activations as it runs them, from `activation_bytes`' count: less what activation
//! checkpointing saves, plus what attention with dropout keeps on the CPU, where libtorch's
//! fused kernel takes no dropout. The front end cannot see a GPU: `device = auto` is planned as
//! the CPU unless the caller (a run) knows it found one.

use crate::arith::count::{checkpointing_saving, cpu_attention_dropout_bytes};
use crate::arith::ModelGraph;
use crate::recipe::{Device, StageKind};

/// `bytes` (a training step's count for `seqs` sequences of `seq` tokens through `g`) as stage
/// `kind` holds it; `gpu`: whether `device = auto` finds a GPU.
pub fn as_run(kind: &StageKind, g: &ModelGraph, seqs: usize, seq: usize, bytes: u64, gpu: bool) -> u64 {
    let checkpointed = kind.checkpoints_activations();
    let saved = if checkpointed { checkpointing_saving(g, seqs, seq) } else { 0 };
    // PPO's and GRPO's passes over the policy run it in evaluation mode: no dropout.
    let dropout = matches!(kind, StageKind::Train(_) | StageKind::Finetune(_) | StageKind::RewardModel(_) | StageKind::Dpo(_) | StageKind::Distill(_) | StageKind::OnlineDpo(_) | StageKind::BestOfN(_));
    let cpu = match kind.device() {
        Device::Cpu => true,
        Device::Auto => !gpu,
        Device::Cuda | Device::CudaIndex(_) => false,
    };
    let unfused = if cpu && dropout { cpu_attention_dropout_bytes(g, seqs, seq, checkpointed) } else { 0 };
    bytes.saturating_sub(saved).saturating_add(unfused)
}
