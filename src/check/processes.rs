//! The keys of a train stage that say how it runs over several processes: `accumulate`,
//! `expert_parallel`, `device_memory` (`shard_optimizer` is a plain flag). The number of processes is known only
//! at launch and to `roux plan --world N`, which check the batch and memory against it.

use super::fields::{Fields, Min};
use super::Checker;
use crate::diag::{Code, Diagnostic};
use crate::recipe::Device;
use crate::syntax::ast::ExprKind;

impl<'a> Checker<'a> {
    /// `accumulate = k` (1 to 4096 micro-batches) and E0229: k divides the global batch. The
    /// number of processes is known only at launch, which checks `batch` against k × world.
    pub(super) fn accumulate(&mut self, f: &mut Fields<'a>, batch: Option<usize>) -> Option<usize> {
        let k = f.int(self, "accumulate", Some(1), Min::One)?;
        if k > 4096 {
            self.error(Diagnostic::error(Code::E0202, f.value_span("accumulate"), "`accumulate` is out of range").with_hint("accumulate must lie in [1, 4096]"));
            return None;
        }
        let k = k as usize;
        if let Some(b) = batch.filter(|b| b % k != 0) {
            self.error(Diagnostic::error(Code::E0229, f.value_span("accumulate"), format!("`accumulate = {k}` does not divide the batch of {b}"))
                .with_hint(format!("each optimizer step splits its batch into {k} equal micro-batches; pick a batch that is a multiple of {k}")));
            return None;
        }
        Some(k)
    }

    /// `expert_parallel = N` (1 to 65536): the MoE layers' experts divided over N processes. E0245
    /// for a dense model and for N that does not divide the experts; the launch checks N against
    /// the number of processes.
    pub(super) fn expert_parallel(&mut self, f: &mut Fields<'a>, arch: Option<&str>) -> Option<usize> {
        let n = f.int(self, "expert_parallel", Some(1), Min::One)?;
        let span = f.value_span("expert_parallel");
        if n > crate::recipe::MAX_PROCESSES as u64 {
            self.error(Diagnostic::error(Code::E0202, span, "`expert_parallel` is out of range").with_hint(format!("expert_parallel must lie in [1, {}]", crate::recipe::MAX_PROCESSES)));
            return None;
        }
        let n = n as usize;
        let Some(m) = arch.and_then(|a| self.models.get(a)).filter(|_| n > 1) else { return Some(n) };
        match &m.moe {
            None => {
                self.error(Diagnostic::error(Code::E0245, span, format!("`expert_parallel = {n}` divides experts, but model `{}` has no MoE layers", m.name))
                    .with_hint("leave `expert_parallel` out: a dense model runs data parallel over the processes"));
                None
            }
            Some(moe) if moe.experts % n != 0 => {
                self.error(Diagnostic::error(Code::E0245, span, format!("`expert_parallel = {n}` does not divide the {} experts of model `{}`", moe.experts, m.name))
                    .with_hint(format!("each process holds experts / expert_parallel of every MoE layer; pick a divisor of {}", moe.experts)));
                None
            }
            Some(_) => Some(n),
        }
    }

    /// `device_memory = 80G`: bytes, from 1 MB to 1 PB (decimal suffixes, as every number).
    pub(super) fn device_memory(&mut self, f: &mut Fields<'a>) -> Option<Option<u64>> {
        if f.field("device_memory").is_none() {
            return Some(None);
        }
        let b = f.positive(self, "device_memory", None)?;
        if !(1e6..=1e15).contains(&b) {
            self.error(Diagnostic::error(Code::E0202, f.value_span("device_memory"), "`device_memory` is out of range").with_hint("device_memory is in bytes, from 1M to 1000T (an H100: 80G)"));
            return None;
        }
        Some(Some(b as u64))
    }

    /// `device = auto | cpu | cuda`, or `"cuda:N"` for the N-th GPU (0 to 1023).
    pub(super) fn device_key(&mut self, f: &mut Fields<'a>) -> Option<Device> {
        if let Some(field) = f.field("device") {
            if let ExprKind::Str(text) = &field.value.kind {
                let span = field.value.span;
                let index = text.strip_prefix("cuda:").and_then(|n| n.parse::<u32>().ok()).filter(|n| *n < 1024 && !text.contains('+'));
                return match index {
                    Some(i) => Some(Device::CudaIndex(i)),
                    None => {
                        self.error(Diagnostic::error(Code::E0120, span, format!("expected a device (auto | cpu | cuda | \"cuda:N\"), found the string {text:?}"))
                            .with_hint("write `device = cuda` (each process's own GPU) or `device = \"cuda:1\"` for one GPU by its index, 0 to 1023"));
                        None
                    }
                };
            }
        }
        let sym = f.sym(self, "device", &["auto", "cpu", "cuda"], Some("auto"))?;
        Some(match sym {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda,
            _ => Device::Auto,
        })
    }
}
