//! Mixture-of-experts layers on tch: routing (five routers), sparse dispatch, auxiliary losses.
//!
//! Routing decides, per token, which experts see it and with what gate; each kept (token, expert)
//! assignment has a position below the expert's capacity. Dispatch runs each expert on its own
//! rows only — grouped by expert on the CPU, a padded capacity buffer (E, C, d) and one batched
//! matmul on CUDA (GShard/Switch) — and scatter-adds the gated outputs back to their tokens.
//! Compute therefore grows with the routed tokens, not with the number of experts. Router math
//! is float32.

use tch::{Kind, Tensor};

use super::Model;
pub use super::router_losses::{balance_loss, cv_squared, jacobs_loss, smooth_load, z_loss};
use crate::lower::OpKind;
use crate::recipe::{Activation, RouterSpec};

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
}

impl Experts<'_> {
    /// Every expert on its own rows: x (E, C, d) → (E, C, d).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let h = x.bmm(&self.w1.transpose(1, 2)); // (E, C, hidden)
        let h = match self.act {
            Activation::Gelu => h.gelu("tanh"),
            Activation::Relu => h.relu(),
            Activation::Swiglu => h.silu() * x.bmm(&self.w3.expect("swiglu has w3").transpose(1, 2)),
            Activation::Geglu => h.gelu("tanh") * x.bmm(&self.w3.expect("geglu has w3").transpose(1, 2)),
        };
        h.bmm(&self.w2.transpose(1, 2)) // (E, C, d)
    }
}

impl Model {
    /// A mixture-of-experts layer over `x` (B, T, d): route (with Switch's multiplicative jitter on
    /// the router input while training), dispatch, the shared experts, dropout.
    pub(super) fn moe(&self, x: &Tensor, i: usize, path: &str, op: &OpKind, train: bool) -> (Tensor, MoeStats) {
        let OpKind::Moe { experts, act, shared, dropout, router, .. } = op else { unreachable!("moe op") };
        let (b, t, d) = x.size3().expect("(B, T, d)");
        let xf = x.reshape([-1, d]); // (N, d)
        let mut xr = xf.to_kind(Kind::Float); // router math in float32 whatever the model's precision
        if let RouterSpec::Switch { jitter, .. } = router {
            if train && *jitter > 0.0 {
                let noise = match self.experts_across.as_deref() {
                    // Expert parallel: each process draws the whole micro-batch's noise and keeps
                    // its rows, the numbers one process would have drawn for them.
                    Some(across) => {
                        let (n, w, q) = (xr.size()[0], across.size() as i64, across.rank() as i64);
                        Tensor::empty([n * w, d], (xr.kind(), xr.device())).uniform_(1.0 - jitter, 1.0 + jitter).narrow(0, n * q, n)
                    }
                    None => xr.empty_like().uniform_(1.0 - jitter, 1.0 + jitter),
                };
                xr = &xr * noise;
            }
        }
        let gate = self.find(i, "router", "weight").expect("router weight");
        let logits = xr.linear::<Tensor>(&gate.to_kind(Kind::Float), None); // (N, E)
        let noise = self.find(i, "router.noise", "weight").map(|w| xr.linear::<Tensor>(&w.to_kind(Kind::Float), None));
        let weights = |g: &str| (self.stack(i, g, "w1").expect("an MoE op has w1 and w2"), self.stack(i, g, "w3"), self.stack(i, g, "w2").expect("an MoE op has w1 and w2"));
        let (w1, w3, w2) = weights("experts");
        let ex = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act };
        let (mut y, r) = match self.experts_across.as_deref() {
            Some(across) => self.moe_across(across, &xf, &logits, noise.as_ref(), router, &ex, *experts as i64, train),
            None => {
                let r = route(router, &logits, noise.as_ref(), train);
                (dispatch(&xf, &r, &ex, *experts as i64), r)
            }
        };
        if *shared > 0 {
            let (s, n) = (*shared as i64, xf.size()[0]);
            let (w1, w3, w2) = weights("shared");
            let sh = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act };
            let out = sh.apply(&xf.unsqueeze(0).expand([s, n, d], false).contiguous()).sum_dim_intlist(0, false, xf.kind());
            y += self.w_opt(i, "shared_gate", "weight").map_or_else(|| out.shallow_clone(), |g| &out * xf.linear::<Tensor>(&g, None).sigmoid());
        }
        let y = y.dropout(*dropout, train).view([b, t, d]);
        (y, stats(path, &r))
    }
}

impl Model {
    /// Op `i`'s stack of experts `<sub>.<leaf>` in the compute kind, with its LoRA adapter added
    /// when it has one.
    fn stack(&self, i: usize, sub: &str, leaf: &str) -> Option<Tensor> {
        let j = self.find_index(i, sub, leaf)?;
        let w = self.cast(j);
        Some(match self.lora.get(j) {
            Some(ad) => self.lora.added(ad, w, self.compute),
            None => w,
        })
    }
}

/// Positions of token-choice assignments inside their experts' buffers, in slot-major order
/// (every token's first choice before any second choice, tokens in order): a running count.
/// The count runs along the contiguous dimension of an (E, M) one-hot: a scan down the M rows
/// of an (M, E) one is a sequential loop per column on CUDA (18.6 ms a step for Switch-64 at
/// 16k tokens, bench/results/h200-profile-switch64-b16.txt).
fn positions(expert: &Tensor, e: i64) -> Tensor {
    let running = expert.one_hot(e).transpose(0, 1).contiguous().cumsum(1, Kind::Int64); // (E, M)
    running.gather(0, &expert.unsqueeze(0), false).squeeze_dim(0) - 1
}

/// How many entries of `idx` name each of 0..len, on `idx`'s device. bincount sizes its output
/// from the largest entry, a read of the device that stalls the host every call on CUDA.
pub fn counts(idx: &Tensor, len: i64) -> Tensor {
    counts_where(idx, len, None)
}

/// `counts` of the entries `valid` marks (all when None).
fn counts_where(idx: &Tensor, len: i64, valid: Option<&Tensor>) -> Tensor {
    let idx = idx.view([-1]);
    let ones = valid.map_or_else(|| idx.ones_like(), |v| v.to_kind(Kind::Int64));
    Tensor::zeros([len], (Kind::Int64, idx.device())).index_add(0, &idx, &ones)
}

/// Route N tokens. `logits` (N, E) are the clean router logits in float32; `noise_logits` the
/// noise projection (noisy_topk only). On CUDA the over-capacity assignments stay in, masked
/// (`Routing::valid`); on the CPU they are removed.
pub fn route(router: &RouterSpec, logits: &Tensor, noise_logits: Option<&Tensor>, train: bool) -> Routing {
    route_with(router, logits, noise_logits, train, logits.device().is_cuda())
}

/// `route`, choosing the form: `masked` keeps every assignment of a router with a capacity.
pub fn route_with(router: &RouterSpec, logits: &Tensor, noise_logits: Option<&Tensor>, train: bool, masked: bool) -> Routing {
    let (n, e) = (logits.size()[0], logits.size()[1]);
    let dev = logits.device();
    let probs = logits.softmax(-1, Kind::Float);
    let zero = || Tensor::zeros([], (Kind::Float, dev));
    // Token choice: (N, k) experts and gates, a capacity, aux loss and its parts.
    let (idx, gates, capacity, aux, parts): (Tensor, Tensor, Option<i64>, Tensor, Vec<(&'static str, Tensor)>) = match router {
        RouterSpec::Softmax => {
            let idx = Tensor::arange(e, (Kind::Int64, dev)).unsqueeze(0).expand([n, e], false);
            (idx, probs.shallow_clone(), Some(n), zero(), vec![])
        }
        RouterSpec::Switch { capacity_factor, eval_capacity_factor, balance_loss: a, z_loss: zc, .. } => {
            let (p, idx) = probs.max_dim(-1, true); // (N, 1)
            let cf = if train { *capacity_factor } else { *eval_capacity_factor };
            let cap = ((n as f64 / e as f64) * cf).ceil() as i64;
            let routed = counts(&idx, e);
            let bal = balance_loss(&probs, &routed, n);
            let z = z_loss(logits);
            let aux = &bal * *a + &z * *zc;
            (idx, p, Some(cap.max(1)), aux, vec![("balance_loss", bal), ("z_loss", z)])
        }
        RouterSpec::Topk { k, normalize, balance_loss: a, z_loss: zc } => {
            let k = *k as i64;
            let (vals, idx) = probs.topk(k, -1, true, true);
            let gates = if *normalize { &vals / vals.sum_dim_intlist(-1, true, Kind::Float) } else { vals };
            let routed = counts(&idx, e);
            let bal = balance_loss(&probs, &routed, n * k);
            let z = z_loss(logits);
            let aux = &bal * *a + &z * *zc;
            (idx, gates, None, aux, vec![("balance_loss", bal), ("z_loss", z)])
        }
        RouterSpec::NoisyTopk { k, importance_loss: wi, load_loss: wl } => {
            let k = *k as i64;
            let noise_std = noise_logits.map(|nl| nl.softplus() + 1e-2);
            let noisy = match (&noise_std, train) {
                (Some(s), true) => logits + logits.randn_like() * s,
                _ => logits.shallow_clone(),
            };
            let (vals, idx) = noisy.topk(k, -1, true, true);
            let gates = vals.softmax(-1, Kind::Float); // softmax(KeepTopK(H, k)) restricted to the k kept
            let full = Tensor::zeros([n, e], (Kind::Float, dev)).scatter(1, &idx, &gates);
            let importance = full.sum_dim_intlist(0, false, Kind::Float);
            let imp = cv_squared(&importance);
            let load = match (&noise_std, train && k < e) {
                (Some(s), true) => smooth_load(logits, &noisy, s, k),
                _ => counts(&idx, e).to_kind(Kind::Float),
            };
            let ld = cv_squared(&load);
            let aux = &imp * *wi + &ld * *wl;
            (idx, gates, None, aux, vec![("importance_loss", imp), ("load_loss", ld)])
        }
        RouterSpec::ExpertChoice { capacity_factor } => {
            let cap = (((n as f64) * capacity_factor / e as f64).ceil() as i64).clamp(1, n);
            let (g, tok) = probs.transpose(0, 1).topk(cap, -1, true, true); // (E, C): each expert's tokens
            let expert = Tensor::arange(e, (Kind::Int64, dev)).unsqueeze(1).expand([e, cap], false).reshape([-1]);
            let pos = Tensor::arange(cap, (Kind::Int64, dev)).unsqueeze(0).expand([e, cap], false).reshape([-1]);
            let routed = Tensor::full([e], cap, (Kind::Int64, dev));
            return Routing {
                tok: tok.reshape([-1]),
                expert,
                gate: g.reshape([-1]),
                pos,
                capacity: cap,
                probs,
                routed,
                n_routed: e * cap,
                aux: zero(),
                parts: vec![],
                valid: None,
            };
        }
    };
    let k = idx.size()[1];
    // Slot-major flattening: all first choices, then all second choices, …
    let expert = idx.transpose(0, 1).reshape([-1]);
    let tok = Tensor::arange(n, (Kind::Int64, dev)).repeat([k]);
    let gate = gates.transpose(0, 1).reshape([-1]);
    let pos = positions(&expert, e);
    let routed = counts(&expert, e);
    if let (Some(capacity), true) = (capacity, masked) {
        let valid = pos.lt(capacity);
        let gate = &gate * valid.to_kind(gate.kind());
        return Routing { tok, expert, gate, pos, capacity, probs, routed, n_routed: n * k, aux, parts, valid: Some(valid) };
    }
    let capacity = capacity.unwrap_or_else(|| routed.max().int64_value(&[]).max(1)); // dropless: the largest load
    let keep = pos.lt(capacity).nonzero().view([-1]);
    Routing {
        tok: tok.index_select(0, &keep),
        expert: expert.index_select(0, &keep),
        gate: gate.index_select(0, &keep),
        pos: pos.index_select(0, &keep),
        capacity,
        probs,
        routed,
        n_routed: n * k,
        aux,
        parts,
        valid: None,
    }
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
    let h = mm(&rows, experts.w1)?;
    let h = match experts.act {
        Activation::Gelu => h.gelu("tanh"),
        Activation::Relu => h.relu(),
        Activation::Swiglu => h.silu() * mm(&rows, experts.w3.expect("swiglu has w3"))?,
        Activation::Geglu => h.gelu("tanh") * mm(&rows, experts.w3.expect("geglu has w3"))?,
    };
    let out = mm(&h, experts.w2)?;
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
    let (w1, w2) = (experts.w1.unbind(0), experts.w2.unbind(0));
    let w3 = experts.w3.map(|w| w.unbind(0));
    let outs: Vec<Tensor> = rows
        .iter()
        .enumerate()
        .map(|(i, xe)| {
            let h = xe.matmul(&w1[i].tr());
            let h = match experts.act {
                Activation::Gelu => h.gelu("tanh"),
                Activation::Relu => h.relu(),
                Activation::Swiglu => h.silu() * xe.matmul(&w3.as_ref().expect("swiglu has w3")[i].tr()),
                Activation::Geglu => h.gelu("tanh") * xe.matmul(&w3.as_ref().expect("geglu has w3")[i].tr()),
            };
            h.matmul(&w2[i].tr())
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

/// Per-layer statistics for metrics.jsonl.
pub struct MoeStats {
    pub layer: String,
    pub aux: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
    /// Fraction of routed assignments per expert (before capacity).
    pub load: Tensor,
    /// Fraction of tokens that no expert processed.
    pub dropped: Tensor,
    /// Mean entropy of the router's distribution over experts, in nats.
    pub entropy: Tensor,
}

pub fn stats(layer: &str, r: &Routing) -> MoeStats {
    let n = r.probs.size()[0];
    // Tokens no expert processed (over capacity, or chosen by no expert under expert choice).
    let unserved = counts_where(&r.tok, n, r.valid.as_ref()).eq(0).sum(Kind::Float) / n as f64;
    let ent = -(&r.probs * (&r.probs + 1e-9).log()).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Float);
    MoeStats {
        layer: layer.to_string(),
        aux: r.aux.shallow_clone(),
        parts: r.parts.iter().map(|(n, t)| (*n, t.detach())).collect(),
        load: r.routed.to_kind(Kind::Float) / r.n_routed as f64,
        dropped: unserved,
        entropy: ent.detach(),
    }
}
