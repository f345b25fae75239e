//! Mixture-of-experts layers on tch: routing (five routers), sparse dispatch, auxiliary losses.
//!
//! Routing decides, per token, which experts see it and with what gate; each kept (token, expert)
//! assignment has a position below the expert's capacity; dispatch (`experts.rs`) runs each
//! expert on its own rows. Router math is float32.

use tch::{Kind, Tensor};

pub use super::experts::{counts, dense_reference, dispatch, grouped, grouped_mm, padded, ExpertLora, Experts, Routing};
use super::experts::counts_where;
use super::Model;
pub use super::router_losses::{balance_loss, cv_squared, jacobs_loss, smooth_load, z_loss};
use crate::lower::OpKind;
use crate::recipe::RouterSpec;



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
        let weights = |g: &str| (self.w(i, g, "w1"), self.w_opt(i, g, "w3"), self.w(i, g, "w2"));
        let (w1, w3, w2) = weights("experts");
        let lora = self.expert_lora(i, "experts");
        let ex = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act, lora: lora.as_ref() };
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
            let lora = self.expert_lora(i, "shared");
            let sh = Experts { w1: &w1, w3: w3.as_ref(), w2: &w2, act: *act, lora: lora.as_ref() };
            let out = sh.apply(&xf.unsqueeze(0).expand([s, n, d], false).contiguous()).sum_dim_intlist(0, false, xf.kind());
            y += self.w_opt(i, "shared_gate", "weight").map_or_else(|| out.shallow_clone(), |g| &out * xf.linear::<Tensor>(&g, None).sigmoid());
        }
        let y = y.dropout(*dropout, train).view([b, t, d]);
        (y, stats(path, &r))
    }
}

impl Model {
    /// The LoRA adapters on op `i`'s stacks `<sub>.w1|w3|w2`, in the compute kind, if any has one.
    fn expert_lora(&self, i: usize, sub: &str) -> Option<ExpertLora> {
        let ab = ["w1", "w3", "w2"].map(|leaf| {
            let ad = self.lora.get(self.find_index(i, sub, leaf)?)?;
            Some((self.lora.a[ad].to_kind(self.compute), self.lora.b[ad].to_kind(self.compute)))
        });
        ab.iter().any(Option::is_some).then_some(ExpertLora { ab, scale: self.lora.scale })
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
