//! A mixture-of-experts layer's experts on their tokens: what routing decided (`Routing`), the
//! stacked expert weights (`Experts`, with LoRA adapters when a stage trains them) and dispatch.
//! Dispatch runs each expert on its own rows only — grouped by expert on the CPU, a padded
//! capacity buffer (E, C, d) and one batched matmul on CUDA (GShard/Switch) — and scatter-adds
//! the gated outputs back to their tokens, so compute grows with the routed tokens, not with the
//! number of experts.

use tch::{Kind, Tensor};

use crate::recipe::Activation;

/// Routing decisions for N tokens: one entry per kept (token, expert) assignment.
pub struct Routing {
    pub tok: Tensor,
    pub expert: Tensor,
    pub gate: Tensor,
    /// Position of the assignment inside its expert's buffer (< capacity).
    pub pos: Tensor,
    pub capacity: i64,
    /// Router probabilities (N, E), float32, for statistics.
    pub probs: Tensor,
    /// Assignments per expert before capacity (E), for load statistics.
    pub routed: Tensor,
    /// Assignments the router made (N·k for token choice), before any were dropped.
    pub n_routed: i64,
    /// Weighted auxiliary loss, and the unweighted parts for the logs.
    pub aux: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
    /// None: every entry above was kept. Some(mask): the entries are every assignment the router
    /// made and the mask says which fit in their expert's buffer (the others have gate 0 and a
    /// position ≥ capacity). On CUDA a router with a capacity keeps this form, because selecting
    /// the kept entries needs their number on the host: a read of the device per layer per step.
    pub valid: Option<Tensor>,
}

/// Expert weights of one layer, stacked: w1, w3 (SwiGLU) (E, hidden, d) and w2 (E, d, hidden).
pub struct Experts<'a> {
    pub w1: &'a Tensor,
    pub w3: Option<&'a Tensor>,
    pub w2: &'a Tensor,
    pub act: Activation,
    /// LoRA on the stacks, when the stage trains adapters on them.
    pub lora: Option<&'a ExpertLora>,
}

/// LoRA adapters on a layer's stacks (w1, w3, w2 in that order; any may have none), in the
/// compute kind: an A (E, rank, in) and a B (E, out, rank), each expert's rows projected as
/// x·W_eᵀ + s·(x·A_eᵀ)·B_eᵀ — the function of W_e + s·B_e·A_e (PEFT's `target_parameters`)
/// without forming it, so no stack-sized tensor is added to the activations kept for backward.
pub struct ExpertLora {
    pub ab: [Option<(Tensor, Tensor)>; 3],
    pub scale: f64,
}

/// A projection of the experts, as `ExpertLora::ab` orders them.
#[derive(Clone, Copy)]
enum Proj {
    W1 = 0,
    W3 = 1,
    W2 = 2,
}

impl Experts<'_> {
    fn weight(&self, p: Proj) -> &Tensor {
        match p {
            Proj::W1 => self.w1,
            Proj::W3 => self.w3.expect("a gated activation has w3"),
            Proj::W2 => self.w2,
        }
    }

    fn adapter(&self, p: Proj) -> Option<(&Tensor, &Tensor, f64)> {
        let l = self.lora?;
        l.ab[p as usize].as_ref().map(|(a, b)| (a, b, l.scale))
    }

    /// The hidden activation of the first projection `h`, gated by the third's (`up`) where
    /// the activation is gated.
    fn activate(&self, h: Tensor, up: impl FnOnce() -> Tensor) -> Tensor {
        match self.act {
            Activation::Gelu => h.gelu("tanh"),
            Activation::Relu => h.relu(),
            Activation::Swiglu => h.silu() * up(),
            Activation::Geglu => h.gelu("tanh") * up(),
        }
    }

    /// Projection `p` of every expert's rows: x (E, C, in) → (E, C, out).
    fn batched(&self, p: Proj, x: &Tensor) -> Tensor {
        let y = x.bmm(&self.weight(p).transpose(1, 2));
        match self.adapter(p) {
            Some((a, b, s)) => y + x.bmm(&a.transpose(1, 2)).bmm(&b.transpose(1, 2)) * s,
            None => y,
        }
    }

    /// Every expert on its own rows: x (E, C, d) → (E, C, d).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let h = self.activate(self.batched(Proj::W1, x), || self.batched(Proj::W3, x));
        self.batched(Proj::W2, &h)
    }
}

/// How many entries of `idx` name each of 0..len, on `idx`'s device. bincount sizes its output
/// from the largest entry, a read of the device that stalls the host every call on CUDA.
pub fn counts(idx: &Tensor, len: i64) -> Tensor {
    counts_where(idx, len, None)
}

/// `counts` of the entries `valid` marks (all when None).
pub(super) fn counts_where(idx: &Tensor, len: i64, valid: Option<&Tensor>) -> Tensor {
    let idx = idx.view([-1]);
    let ones = valid.map_or_else(|| idx.ones_like(), |v| v.to_kind(Kind::Int64));
    Tensor::zeros([len], (Kind::Int64, idx.device())).index_add(0, &idx, &ones)
}

/// The sparse layer: x (N, d) → (N, d). Dropped tokens get 0 here and pass through the residual.
///
/// On the CPU the kept assignments are sorted by expert and each expert multiplies exactly its
/// own rows (`grouped`): no padding to the capacity, which would cost up to the capacity factor
/// (1.25×) in expert FLOPs, and per-expert matmuls cost little there. On CUDA in bf16 libtorch's
/// grouped GEMM (`grouped_mm`: one launch over all experts' rows, no padding); in float32 one
/// batched matmul over the padded capacity buffer (`padded`), which beats E small launches.
/// `ROUX_MOE_DISPATCH=padded|grouped_mm|grouped` chooses (benchmarks compare them).
pub fn dispatch(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Tensor {
    match std::env::var("ROUX_MOE_DISPATCH").as_deref() {
        Ok("padded") => padded(x, r, experts, e),
        Ok("grouped_mm") => grouped_mm(x, r, experts, e),
        Ok("grouped") => grouped(x, r, experts, e),
        _ if x.device() == tch::Device::Cpu => grouped(x, r, experts, e),
        _ if x.kind() == Kind::BFloat16 => grouped_mm(x, r, experts, e),
        _ => padded(x, r, experts, e),
    }
}

/// Experts applied to rows sorted by expert through libtorch's grouped GEMM (`_grouped_mm`, the
/// kernel torchtitan's MoE uses): each expert multiplies exactly its own rows, in one launch per
/// matmul, and the group offsets stay on the device (no host read).
pub fn grouped_mm(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Tensor {
    // The kernel checks shapes, strides and the GPU before launching: where it refuses (an older
    // GPU, a layout it does not take), the padded buffer computes the same layer.
    try_grouped_mm(x, r, experts, e).unwrap_or_else(|err| {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| tracing::warn!("grouped GEMM unavailable ({}); MoE layers use the padded capacity buffer", err.to_string().lines().next().unwrap_or_default()));
        padded(x, r, experts, e)
    })
}

fn try_grouped_mm(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Result<Tensor, tch::TchError> {
    let (n, d) = (x.size()[0], x.size()[1]);
    let order = r.expert.argsort_stable(true, 0, false);
    let tok = r.tok.index_select(0, &order);
    let offs = counts(&r.expert, e).cumsum(0, Kind::Int);
    let rows = x.index_select(0, &tok); // (M, d), grouped by expert
    let mm = |a: &Tensor, w: &Tensor| a.f_internal_grouped_mm(&w.transpose(1, 2), Some(&offs), None::<&Tensor>, None::<Kind>);
    // Projection `p` of the grouped rows `a`, through the expert's adapter when it has one.
    let proj = |a: &Tensor, p: Proj| -> Result<Tensor, tch::TchError> {
        let y = mm(a, experts.weight(p))?;
        Ok(match experts.adapter(p) {
            Some((la, lb, s)) => y + mm(&mm(a, la)?, lb)? * s,
            None => y,
        })
    };
    let h = proj(&rows, Proj::W1)?;
    let up = experts.act.gated().then(|| proj(&rows, Proj::W3)).transpose()?;
    let h = experts.activate(h, || up.expect("a gated activation has w3"));
    let out = proj(&h, Proj::W2)?;
    let gate = r.gate.index_select(0, &order).to_kind(x.kind()).unsqueeze(1);
    Ok(Tensor::zeros([n, d], (x.kind(), x.device())).index_add(0, &tok, &(out * gate)))
}

/// Experts applied to rows sorted by expert, one matmul pair each. The weights are split with
/// `unbind` (its backward stacks the E gradients once; `select` would zero-fill a full copy of
/// the stack per expert).
pub fn grouped(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let order = r.expert.argsort_stable(true, 0, false);
    let tok = r.tok.index_select(0, &order);
    let sizes = Vec::<i64>::try_from(&counts(&r.expert, e)).expect("int64 counts");
    let rows = x.index_select(0, &tok).split_with_sizes(&sizes, 0);
    // Each projection's weights (and adapter) per expert.
    let split = |p: Proj| {
        let ab = experts.adapter(p).map(|(a, b, s)| (a.unbind(0), b.unbind(0), s));
        (experts.weight(p).unbind(0), ab)
    };
    let (w1, w2) = (split(Proj::W1), split(Proj::W2));
    let w3 = experts.act.gated().then(|| split(Proj::W3));
    let proj = |(w, ab): &(Vec<Tensor>, Option<(Vec<Tensor>, Vec<Tensor>, f64)>), i: usize, xe: &Tensor| {
        let y = xe.matmul(&w[i].tr());
        match ab {
            Some((a, b, s)) => y + xe.matmul(&a[i].tr()).matmul(&b[i].tr()) * *s,
            None => y,
        }
    };
    let outs: Vec<Tensor> = rows
        .iter()
        .enumerate()
        .map(|(i, xe)| {
            let h = experts.activate(proj(&w1, i, xe), || proj(w3.as_ref().expect("a gated activation has w3"), i, xe));
            proj(&w2, i, &h)
        })
        .collect();
    let gate = r.gate.index_select(0, &order).to_kind(x.kind()).unsqueeze(1);
    Tensor::zeros([n, d], (x.kind(), x.device())).index_add(0, &tok, &(Tensor::cat(&outs, 0) * gate))
}

/// Experts applied to a capacity buffer (E, C, d) by one batched matmul (GShard/Switch).
pub fn padded(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let rows = e * r.capacity;
    // Over-capacity entries of a masked routing go to one extra row past the buffer (gate 0).
    let slot = match &r.valid {
        Some(v) => (&r.expert * r.capacity + &r.pos).where_scalarother(v, rows),
        None => &r.expert * r.capacity + &r.pos,
    };
    let trash = r.valid.is_some() as i64;
    let buffer = Tensor::zeros([rows + trash, d], (x.kind(), x.device())).index_copy(0, &slot, &x.index_select(0, &r.tok));
    let out = experts.apply(&buffer.narrow(0, 0, rows).view([e, r.capacity, d])).view([rows, d]); // (E·C, d)
    let slot = slot.clamp_max(rows - 1); // a trash entry reads any row; its gate is 0
    let weighted = out.index_select(0, &slot) * r.gate.to_kind(x.kind()).unsqueeze(1);
    Tensor::zeros([n, d], (x.kind(), x.device())).index_add(0, &r.tok, &weighted)
}

/// The same layer computed densely (every expert on every token, then masked by the routing):
/// the reference the sparse path is tested against.
pub fn dense_reference(x: &Tensor, r: &Routing, experts: &Experts, e: i64) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let all = experts.apply(&x.unsqueeze(0).expand([e, n, d], false).contiguous()); // (E, N, d)
    let picked = all.view([e * n, d]).index_select(0, &(&r.expert * n + &r.tok)); // (M, d)
    Tensor::zeros([n, d], (x.kind(), x.device())).index_add(0, &r.tok, &(picked * r.gate.to_kind(x.kind()).unsqueeze(1)))
}

