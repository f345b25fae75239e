//! What a `distill` stage holds beside its student's training: the teacher's logits and the
//! divergence's tensors (run/kit/losses.rs `generalized_jsd`), each (rows, context, vocab).

use crate::recipe::DistillSpec;

/// The float32 (rows, context, vocab) tensors the divergence keeps at its peak, beyond the
/// student's logits that `activation_bytes` counts: the teacher's log-probabilities and
/// probabilities, the student's, the mixture's and the differences the backward pass reads.
const VOCAB_TENSORS: u64 = 8;

/// Bytes of those tensors for `rows` sequences at the student's context.
pub fn divergence_bytes(context: usize, vocab: usize, rows: usize) -> u64 {
    VOCAB_TENSORS.saturating_mul(4).saturating_mul(rows as u64).saturating_mul(context as u64).saturating_mul(vocab as u64)
}

/// FLOPs per trained token over parameter counts `student` and `teacher`: the student forward and
/// backward (6N), the teacher forward (2N), and on the steps that sample (an expected `lmbda`
/// of them; every step under `seq_kd`, whose teacher writes first) a forward pass per generated
/// token by whoever writes.
pub fn flops_per_token(k: &DistillSpec, student: f64, teacher: f64) -> f64 {
    let seq_kd = if k.seq_kd { 2.0 * teacher } else { 0.0 };
    6.0 * student + 2.0 * teacher + k.lmbda * 2.0 * student + seq_kd
}
