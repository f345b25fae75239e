//! Execution on libtorch: built models match the plan, the optimizer and loss match hand-computed
//! numbers, training lowers the loss, runs repeat exactly, and a killed run resumes exactly.
#![cfg(feature = "torch")]

use std::path::{Path, PathBuf};
use std::process::Command;

use roux::run::model::Model;
use tch::{Device, Kind, Tensor};

mod common;
use common::{fixture, metrics, root, roux, run_ok, scratch};

#[test]
fn built_models_have_exactly_the_planned_parameters() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("recipes")).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend([fixture("tiny.roux"), fixture("tiny-llama.roux")]);
    for f in files {
        let r = roux::frontend::compile(&f).unwrap().recipe.unwrap_or_else(|| panic!("{} checks", f.display()));
        let plan = roux::plan::plan(&r);
        for (spec, mp) in r.models.iter().zip(&plan.models) {
            // Models beyond 500M parameters (Mixtral, Switch-Base) are built with stride-0
            // tensors of their real shapes: same builder, no memory.
            let m = if mp.params_total > 500_000_000 { Model::shapes_only(spec) } else { Model::new(spec, Device::Cpu).unwrap() };
            assert_eq!(m.numel(), mp.params_total, "{}: model {}", f.display(), spec.name);
            // And every tensor has the name and shape the graph gave it.
            let graph_params = roux::lower::lower_model(spec).params();
            for ((name, t), p) in m.named().iter().zip(&graph_params) {
                assert_eq!(name, &p.name);
                assert_eq!(t.size(), p.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn zero_weights_give_uniform_logits_and_loss_ln_vocab() {
    let r = roux::frontend::compile(&fixture("tiny.roux")).unwrap().recipe.unwrap();
    let mut m = Model::new(&r.models[0], Device::Cpu).unwrap();
    tch::no_grad(|| {
        for p in m.params.iter_mut() {
            let _ = p.zero_();
        }
    });
    let x = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
    let loss = m.loss(&x, &x, false).double_value(&[]);
    // All logits 0 → softmax uniform over 256 bytes → cross-entropy ln 256 = 5.545177444479562.
    assert!((loss - 256f64.ln()).abs() < 1e-5, "{loss}");
}

#[test]
fn padding_the_head_vocabulary_changes_neither_loss_nor_gradients() {
    // The CUDA/bf16 head pads the vocabulary to a multiple of 64 with −∞ logits; forced on here
    // (CPU, float32) on a vocabulary of 257 (padded to 320), loss and every gradient must agree.
    let r = roux::frontend::compile(&fixture("tiny.roux")).unwrap().recipe.unwrap();
    let mut spec = r.models[0].clone();
    spec.vocab = 257;
    let x = Tensor::from_slice(&[1i64, 256, 3, 4, 5, 6, 7, 8]).view([2, 4]);
    let y = Tensor::from_slice(&[256i64, 2, 3, 4, 5, 6, 7, 255]).view([2, 4]);
    let run = |pad: bool| {
        tch::manual_seed(3);
        let mut m = Model::new(&spec, Device::Cpu).unwrap();
        m.pad_vocab = pad;
        let loss = m.loss(&x, &y, false);
        loss.backward();
        (loss.double_value(&[]), m.params.iter().map(|p| p.grad().copy()).collect::<Vec<_>>())
    };
    let ((l0, g0), (l1, g1)) = (run(false), run(true));
    assert!((l0 - l1).abs() < 1e-6, "{l0} vs {l1}");
    assert!(l0 > 5.0, "an untrained model's loss is near ln 257: {l0}");
    for (a, b) in g0.iter().zip(&g1) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-6, "gradient differs by {d}");
    }
}

/// `z_loss = w` (PaLM's) adds w·mean(log² Z) to the training loss, Z each position's softmax
/// normaliser, computed here from the logits with logsumexp; the cross-entropy is unchanged and
/// evaluation passes leave it out. Trained with it, the model's log Z comes down; without, it
/// stays near its start (ln 256 for untrained logits near 0).
#[test]
fn z_loss_adds_its_weight_times_the_mean_squared_log_normaliser_and_pulls_it_down() {
    let mut spec = roux::frontend::compile(&fixture("tiny.roux")).unwrap().recipe.unwrap().models[0].clone();
    spec.dropout = 0.0; // (a training pass without dropout gives the logits an evaluation pass does)
    tch::manual_seed(8);
    let mut m = Model::new(&spec, Device::Cpu).unwrap();
    // Logits far from 0, so that log Z is not near ln 256.
    tch::no_grad(|| m.params.iter().for_each(|p| drop(p.shallow_clone().g_mul_scalar_(3.0))));
    let x = Tensor::randint(spec.vocab as i64, [2, 16], (Kind::Int64, Device::Cpu));
    let y = Tensor::randint(spec.vocab as i64, [2, 16], (Kind::Int64, Device::Cpu));
    let (plain, ce0, _) = m.loss_parts(&x, &y, true);
    m.set_z_loss(0.1);
    let (total, ce, _) = m.loss_parts(&x, &y, true);
    let log_z = tch::no_grad(|| m.forward(&x, false).logsumexp([-1].as_slice(), false));
    let want = 0.1 * log_z.square().mean(Kind::Float).double_value(&[]);
    let got = total.double_value(&[]) - ce.double_value(&[]);
    assert!((got - want).abs() < 1e-5 * want && want > 0.1, "z-loss {got} vs 0.1·mean(log² Z) = {want}");
    assert!((ce.double_value(&[]) - ce0.double_value(&[])).abs() < 1e-5 && (plain.double_value(&[]) - ce0.double_value(&[])).abs() < 1e-6);
    let (eval, eval_ce, _) = m.loss_parts(&x, &y, false);
    assert_eq!(eval.double_value(&[]), eval_ce.double_value(&[]), "evaluation adds no z-loss");
    // Trained 80 steps with and without it: mean log² Z of the final models on held-out text.
    let out = scratch("z-loss");
    let base = std::fs::read_to_string(fixture("tiny.roux")).unwrap().replace("../../data/", "../../../data/").replace("dropout = 0.1", "dropout = 0");
    let mean_sq = |name: &str, extra: &str| {
        let recipe = out.join(format!("{name}.roux"));
        std::fs::write(&recipe, base.replace("    checkpoint_every = 5\n", &format!("    checkpoint_every = 5\n{extra}"))).unwrap();
        run_ok(&recipe, &out.join(name));
        let weights = Tensor::read_safetensors(out.join(name).join("tiny/pretrain/model.safetensors")).unwrap();
        let m = Model::with_weights(&spec, weights, Device::Cpu, None).unwrap();
        let text: Vec<i64> = std::fs::read(root().join("data/tinyshakespeare.txt")).unwrap()[..4096].iter().map(|&b| b as i64).collect();
        let x = Tensor::from_slice(&text).view([-1, 32]);
        tch::no_grad(|| m.forward(&x, false).logsumexp([-1].as_slice(), false).square().mean(Kind::Float).double_value(&[]))
    };
    let (without, with) = (mean_sq("without", ""), mean_sq("with", "    z_loss = 0.01\n"));
    let m = metrics(&out.join("with/tiny/pretrain"));
    assert!(m.iter().all(|r| r["aux_loss"].as_f64().is_some_and(|a| a > 0.0)), "the z-loss is logged as aux_loss");
    assert!(with < 0.9 * without, "mean log² Z: {with} with z_loss = 0.01, {without} without");
}

#[test]
fn the_kv_cache_gives_the_logits_of_the_whole_sequence() {
    // Logits computed piecewise through the cache (a prefill of 5 tokens, 3 single tokens, then 4
    // at once, which needs the offset causal mask) equal one forward pass over all 12 tokens:
    // learned positions (tiny), rope with grouped-query attention (tiny-llama, 1 key/value head
    // for 2 query heads; and with a 3-token attention window in every block, or in block 0 only,
    // which the cache must cut as the whole pass does), and a dropless top-2 mixture of experts.
    let mut llama = roux::frontend::compile(&fixture("tiny-llama.roux")).unwrap().recipe.unwrap().models[0].clone();
    llama.kv_heads = 1;
    let windowed = roux::recipe::ModelSpec { window: Some(3), ..llama.clone() };
    let one_windowed = roux::recipe::ModelSpec { window_layers: Some(vec![0]), ..windowed.clone() };
    // Gemma 2's soft caps, whose attention is written out (with the window's mask and the causal one).
    let capped = roux::recipe::ModelSpec { attn_softcap: Some(0.5), logit_softcap: Some(1.0), ..one_windowed.clone() };
    let tiny = roux::frontend::compile(&fixture("tiny.roux")).unwrap().recipe.unwrap().models[0].clone();
    let moe = roux::frontend::compile(&fixture("tiny-moe-topk.roux")).unwrap().recipe.unwrap().models[0].clone();
    for (fixture, spec) in [("tiny", tiny), ("tiny-llama", llama), ("tiny-llama, window 3", windowed), ("tiny-llama, window 3 in block 0", one_windowed.clone()), ("tiny-llama, window 3 in block 0, soft caps", capped), ("tiny-moe-topk", moe)] {
        tch::manual_seed(4);
        let m = Model::new(&spec, Device::Cpu).unwrap();
        let x = Tensor::randint(spec.vocab as i64, [3, 12], (Kind::Int64, Device::Cpu));
        tch::no_grad(|| {
            let whole = m.forward(&x, false);
            let mut cache = roux::run::model::KvCache::default();
            let mut parts = vec![];
            for (from, len) in [(0, 5), (5, 1), (6, 1), (7, 1), (8, 4)] {
                parts.push(m.forward_cached(&x.narrow(1, from, len), &mut cache));
            }
            assert_eq!(cache.len, 12);
            let d = (Tensor::cat(&parts, 1) - &whole).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{fixture}: cached logits differ by {d}");
            // What generation reads: the last position's logits alone, the prompt's and a token's.
            let mut cache = roux::run::model::KvCache::default();
            let (first, next) = (m.forward_next(&x.narrow(1, 0, 11), &mut cache), m.forward_next(&x.narrow(1, 11, 1), &mut cache));
            assert_eq!(first.size(), [3, spec.vocab as i64]);
            let d = (first - whole.select(1, 10)).abs().max().double_value(&[]).max((next - whole.select(1, 11)).abs().max().double_value(&[]));
            assert!(d < 1e-5, "{fixture}: the next token's logits differ by {d}");
            assert!(whole.abs().max().double_value(&[]) > 1e-3, "logits are not all zero");
            if spec.window.is_some() && spec.attn_softcap.is_none() {
                // The same weights without the window: the positions past it differ, not those before.
                tch::manual_seed(4);
                let full = Model::new(&roux::recipe::ModelSpec { window: None, window_layers: None, ..spec.clone() }, Device::Cpu).unwrap().forward(&x, false);
                let gap = |from: i64, len: i64| (full.narrow(1, from, len) - whole.narrow(1, from, len)).abs().max().double_value(&[]);
                assert!(gap(0, 3) < 1e-6 && gap(3, 9) > 1e-3, "{fixture}: the window changes {} in its reach, {} past it", gap(0, 3), gap(3, 9));
            }
        });
    }
}

#[test]
fn adamw_two_steps_by_hand() {
    // p = [[1, -2]] (decayed), b = [1] (not decayed), constant gradients g = [[0.5, -1]], [0.5];
    // lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.1.
    // Step 1: m̂ = g, v̂ = g² → update lr·g/|g| = ±0.1; p·(1 − 0.01) → [0.99 − 0.1, −1.98 + 0.1] = [0.89, −1.88].
    // Step 2: m = 0.095, m̂ = 0.095/0.19 = 0.5; v̂ = (0.999·0.00025 + 0.001·0.25)/0.001999 = 0.25 → same
    //         update: [0.89·0.99 − 0.1, −1.88·0.99 + 0.1] = [0.7811, −1.7612]. Bias: 1 − 0.1 − 0.1 = 0.8.
    // The same numbers from each implementation of the update, in float64 and float32.
    use roux::run::kit::adamw::{Optimizer, Update};
    let cfg = roux::recipe::AdamW { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1, muon: None, loraplus_lr_ratio: None };
    for (how, kind, tol) in [(Update::Ops, Kind::Double, 1e-8), (Update::Aten, Kind::Double, 1e-8), (Update::Ops, Kind::Float, 1e-5), (Update::Aten, Kind::Float, 1e-5), (Update::OwnCpu, Kind::Float, 1e-5)] {
        let params = vec![
            Tensor::from_slice(&[1.0f64, -2.0]).view([1, 2]).to_kind(kind).set_requires_grad(true),
            Tensor::from_slice(&[1.0f64]).to_kind(kind).set_requires_grad(true),
            Tensor::from_slice(&[5.0f64, 6.0]).view([1, 2]).to_kind(kind), // frozen: never updated, not even decayed
        ];
        let mut opt = Optimizer::new(&params, &[], &cfg);
        opt.set_update(how);
        let want = [[0.89, -1.88, 0.9], [0.7811, -1.7612, 0.8]];
        for w in want {
            opt.zero_grad();
            let g = Tensor::from_slice(&[0.5f64, -1.0]).view([1, 2]).to_kind(kind);
            let loss = (&params[0] * &g).sum(kind) + (&params[1] * 0.5).sum(kind);
            loss.backward();
            opt.step(0.1).unwrap();
            let got = [params[0].double_value(&[0, 0]), params[0].double_value(&[0, 1]), params[1].double_value(&[0])];
            for (a, b) in got.iter().zip(w) {
                assert!((a - b).abs() < tol, "{how:?} {kind:?}: got {got:?}, want {w:?}");
            }
            assert_eq!((params[2].double_value(&[0, 0]), params[2].double_value(&[0, 1])), (5.0, 6.0));
        }
        // A step whose gradient was not finite changes nothing (the device decides, no host read).
        let before: Vec<f64> = Vec::try_from(&params[0].flatten(0, -1).to_kind(Kind::Double)).unwrap();
        opt.zero_grad();
        (&params[0] * f64::NAN).sum(kind).backward();
        let norm = opt.grad_norm_clipped(Some(1.0));
        let found_inf = norm.isfinite().logical_not().to_kind(Kind::Float);
        opt.step_unless(0.1, &found_inf).unwrap();
        let after: Vec<f64> = Vec::try_from(&params[0].flatten(0, -1).to_kind(Kind::Double)).unwrap();
        assert_eq!(before, after, "{how:?}: a non-finite step moved the weights");
    }
}

/// `optimizer = muon`: the blocks' matrices (one, a tall one, a wide one and a stack of experts'
/// matrices) take torch.optim.Muon's steps and everything else torch.optim.AdamW's (matrices
/// decayed, vectors not), three steps of random gradients, under both rate adjustments, with and
/// without Nesterov momentum; Muon's matrices keep no second moment.
#[test]
fn muon_steps_as_torch_optim_muon() {
    use roux::recipe::{AdamW, Muon, MuonLr};
    let dir = scratch("muon-steps");
    let shapes: [(&str, &[i64]); 6] = [
        ("tok_emb.weight", &[6, 4]),
        ("blocks.0.attn.q.weight", &[4, 4]),
        ("blocks.0.ffn.w1.weight", &[8, 4]),
        ("blocks.0.ffn.w2.weight", &[4, 8]),
        ("blocks.0.ffn.experts.w1", &[3, 8, 4]),
        ("blocks.0.norm1.weight", &[4]),
    ];
    let (names, init, grads) = random_steps(&dir, &shapes, 11);
    let script = r#"
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1]); adjust = sys.argv[3]; nesterov = sys.argv[4] == "1"; wd = float(sys.argv[5])
names = ["tok_emb.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.w1.weight", "blocks.0.ffn.w2.weight", "blocks.0.ffn.experts.w1", "blocks.0.norm1.weight"]
p = {n: torch.nn.Parameter(t[n].clone()) for n in names}
# torch.optim.Muon takes matrices only: each expert's matrix is a parameter of its own.
experts = [torch.nn.Parameter(t["blocks.0.ffn.experts.w1"][e].clone()) for e in range(3)]
muon = torch.optim.Muon([p[n] for n in names[1:4]] + experts, lr=0.02, weight_decay=wd, momentum=0.95, nesterov=nesterov, adjust_lr_fn=adjust)
adamw = torch.optim.AdamW([{"params": [p["tok_emb.weight"]], "weight_decay": 0.1}, {"params": [p["blocks.0.norm1.weight"]], "weight_decay": 0.0}], lr=0.003, betas=(0.9, 0.95), eps=1e-8)
for k in range(3):
    for n in names:
        p[n].grad = t[f"grad{k}.{n}"].clone()
    for e in range(3):
        experts[e].grad = t[f"grad{k}.blocks.0.ffn.experts.w1"][e].clone()
    muon.step(); adamw.step()
out = {n: p[n].detach() for n in names}
out["blocks.0.ffn.experts.w1"] = torch.stack([e.detach() for e in experts])
save_file(out, sys.argv[2])
"#;
    for (adjust, nesterov, wd) in [(MuonLr::Original, true, 0.1), (MuonLr::MatchRmsAdamw, false, 0.0)] {
        let muon = Muon { lr: 0.02, momentum: 0.95, nesterov, weight_decay: wd, ns_steps: 5, adjust_lr: adjust };
        let cfg = AdamW { lr: 0.003, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1, muon: Some(muon), loraplus_lr_ratio: None };
        let (params, opt) = take_steps(&init, &names, &cfg, &grads, None);
        let adjust_name = if adjust == MuonLr::Original { "original" } else { "match_rms_adamw" };
        let want = dir.join(format!("{adjust_name}.safetensors"));
        let o = common::python(script, &[dir.join("in.safetensors").to_str().unwrap(), want.to_str().unwrap(), adjust_name, if nesterov { "1" } else { "0" }, &wd.to_string()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&want).unwrap().into_iter().collect();
        for (n, p) in names.iter().zip(&params) {
            let moved = (p - &init[names.iter().position(|x| x == n).unwrap()]).abs().max().double_value(&[]);
            let diff = (p - &want[n]).abs().max().double_value(&[]);
            // (Measured: at most 6e-8, a float32 rounding or two; the steps moved each by 5e-3 to 6e-2.)
            assert!(moved > 1e-3 && diff < 2e-7, "{adjust_name}: {n} differs from torch by {diff:e} (it moved {moved:e})");
        }
        // The momentum is the first moment; Muon's matrices hold no second.
        let (m, v) = (opt.m[1].abs().sum(Kind::Float).double_value(&[]), opt.v[1].defined());
        assert!(m > 0.0 && !v, "Muon's moments: |m| {m}, v held {v}");
    }
}

/// Parameters of `shapes` and three steps' gradients, random from `seed`, written to
/// `dir`/in.safetensors (as NAME and gradK.NAME) for a reference optimizer in Python.
fn random_steps(dir: &Path, shapes: &[(&str, &[i64])], seed: i64) -> (Vec<String>, Vec<Tensor>, Vec<Vec<Tensor>>) {
    let names: Vec<String> = shapes.iter().map(|(n, _)| n.to_string()).collect();
    tch::manual_seed(seed);
    let init: Vec<Tensor> = shapes.iter().map(|(_, s)| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| shapes.iter().map(|(_, s)| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect()).collect();
    let mut file: Vec<(String, Tensor)> = names.iter().cloned().zip(init.iter().map(|t| t.copy())).collect();
    for (k, g) in grads.iter().enumerate() {
        file.extend(names.iter().zip(g).map(|(n, t)| (format!("grad{k}.{n}"), t.copy())));
    }
    Tensor::write_safetensors(&file, dir.join("in.safetensors")).unwrap();
    (names, init, grads)
}

/// roux's optimizer from `init`, one step with each of `grads` at the configured rate.
fn take_steps(init: &[Tensor], names: &[String], cfg: &roux::recipe::AdamW, grads: &[Vec<Tensor>], how: Option<roux::run::kit::adamw::Update>) -> (Vec<Tensor>, roux::run::kit::adamw::Optimizer) {
    let params: Vec<Tensor> = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
    let mut opt = roux::run::kit::adamw::Optimizer::new(&params, names, cfg);
    if let Some(how) = how {
        opt.set_update(how);
    }
    for g in grads {
        opt.zero_grad();
        tch::no_grad(|| {
            for (p, g) in params.iter().zip(g) {
                p.grad().copy_(g);
            }
        });
        opt.step(cfg.lr).unwrap();
    }
    (params, opt)
}

/// `adamw { loraplus_lr_ratio = 16 }`: LoRA+ steps as PEFT's `create_loraplus_optimizer` with
/// torch.optim.AdamW takes them, for each implementation of the update: the adapters' A matrices
/// and a head's weight at lr with weight decay, the B matrices at 16 × lr with it, the head's
/// bias at 16 × lr without.
#[test]
fn loraplus_steps_as_peft_create_loraplus_optimizer() {
    use roux::recipe::AdamW;
    use roux::run::kit::adamw::Update;
    let dir = scratch("loraplus-steps");
    let shapes: [(&str, &[i64]); 6] = [
        ("q.lora_A.default.weight", &[2, 4]),
        ("q.lora_B.default.weight", &[6, 2]),
        ("v.lora_A.default.weight", &[2, 4]),
        ("v.lora_B.default.weight", &[6, 2]),
        ("head.weight", &[1, 6]),
        ("head.bias", &[1]),
    ];
    let (names, init, grads) = random_steps(&dir, &shapes, 5);
    let script = r#"
import sys, torch
from safetensors.torch import load_file, save_file
from peft.optimizers import create_loraplus_optimizer
t = load_file(sys.argv[1])
class Adapted(torch.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(a.shape[1], a.shape[0], bias=False)})
        self.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(b.shape[1], b.shape[0], bias=False)})
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = Adapted(t["q.lora_A.default.weight"], t["q.lora_B.default.weight"])
        self.v = Adapted(t["v.lora_A.default.weight"], t["v.lora_B.default.weight"])
        self.head = torch.nn.Linear(6, 1)
m = M()
p = dict(m.named_parameters())
with torch.no_grad():
    for n in p:
        p[n].copy_(t[n])
opt = create_loraplus_optimizer(m, torch.optim.AdamW, lr=0.01, loraplus_lr_ratio=16.0, loraplus_weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
for k in range(3):
    for n in p:
        p[n].grad = t[f"grad{k}.{n}"].clone()
    opt.step()
save_file({n: x.detach().contiguous() for n, x in p.items()}, sys.argv[2])
"#;
    let want = dir.join("peft.safetensors");
    let o = common::python(script, &[dir.join("in.safetensors").to_str().unwrap(), want.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&want).unwrap().into_iter().collect();
    let cfg = AdamW { lr: 0.01, betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1, muon: None, loraplus_lr_ratio: Some(16.0) };
    for how in [Update::Ops, Update::Aten, Update::OwnCpu] {
        let (params, _) = take_steps(&init, &names, &cfg, &grads, Some(how));
        for (i, n) in names.iter().enumerate() {
            let moved = (&params[i] - &init[i]).abs().max().double_value(&[]);
            let diff = (&params[i] - &want[n]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{how:?}: {n} differs from PEFT's by {diff:e} (it moved {moved:e})");
        }
        // The B matrices moved about 16 times as far as the A matrices (each step of Adam is about lr).
        let moved = |i: usize| (&params[i] - &init[i]).abs().mean(Kind::Float).double_value(&[]);
        assert!(moved(1) > 8.0 * moved(0) && moved(0) > 0.005, "{how:?}: A moved {}, B {}", moved(0), moved(1));
    }
}

/// A `train` stage with `optimizer = muon`: it says so, its loss falls, it holds the moments the
/// plan counts (the blocks' 24,576 matrix weights one moment each, the other 10,112 parameters
/// two: 4·(2·34,688 − 24,576) bytes), and killed after a checkpoint it resumes to the same weights.
#[test]
fn a_muon_run_learns_holds_the_planned_moments_and_resumes_exactly() {
    let out = scratch("muon-run");
    let text = std::fs::read_to_string(fixture("tiny.roux")).unwrap().replace("../../data/", "../../../data/").replace(
        "optimizer = adamw { lr = 3e-3, betas = (0.9, 0.95), weight_decay = 0.1 }",
        "optimizer = muon { lr = 0.02, adamw = adamw { lr = 3e-3, betas = (0.9, 0.95), weight_decay = 0.1 } }",
    );
    let recipe = out.join("muon.roux");
    std::fs::write(&recipe, text).unwrap();
    let whole = out.join("whole");
    let log = run_ok(&recipe, &whole);
    let said = "pretrain: Muon on the transformer blocks' matrices (lr 0.02 × √max(1, out/in), Nesterov momentum 0.95, weight decay 0.1, 5 Newton–Schulz steps); AdamW (lr 0.003) on the embeddings, head, norms and biases";
    assert!(log.contains(said), "{log}");
    let dir = whole.join("tiny/pretrain");
    let m = metrics(&dir);
    let first = m[0]["loss"].as_f64().unwrap();
    let last_val = m.iter().rev().find_map(|x| x["val_loss"].as_f64()).unwrap();
    assert!(first > 4.5 && last_val < 3.5, "loss {first} → val {last_val}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let held = report["adam_moment_bytes_per_process"].as_u64().unwrap();
    assert_eq!(held, 4 * (2 * 34_688 - 24_576));
    let o = roux(&["plan", recipe.to_str().unwrap(), "--json", "--world", "1"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["processes"][0]["moment_bytes"].as_u64(), Some(held), "planned vs held moments");
    // Killed after its checkpoint at step 40: the momentum comes back from the checkpoint.
    let killed = out.join("killed");
    let kdir = killed.join("tiny/pretrain");
    assert!(common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap()], &kdir, 40), "the run finished before it could be killed, three times");
    let log = run_ok(&recipe, &killed);
    assert!(log.contains("pretrain: resuming from step"), "{log}");
    let read = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(read(&dir) == read(&kdir), "a resumed Muon run ends with other weights");
}

#[test]
fn clipping_on_the_device_matches_the_host() {
    // ‖(3, 4)‖ = 5, clipped to 1: the gradient becomes (0.6, 0.8) either way; under the limit, untouched.
    use roux::run::kit::adamw::Optimizer;
    let cfg = roux::recipe::AdamW { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, muon: None, loraplus_lr_ratio: None };
    for (clip, want) in [(1.0, [0.6, 0.8]), (10.0, [3.0, 4.0])] {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = Optimizer::new(&[p.shallow_clone()], &[], &cfg);
        opt.zero_grad();
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = opt.grad_norm_clipped(Some(clip));
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        let g: Vec<f64> = Vec::try_from(&p.grad().to_kind(Kind::Double)).unwrap();
        assert!((g[0] - want[0]).abs() < 1e-5 && (g[1] - want[1]).abs() < 1e-5, "clip {clip}: {g:?}");
    }
    // The fused kernel clips as it reads the gradient (g / max(1, norm/clip)): the same update as
    // clipping first, for a gradient over the limit and one under it.
    use roux::run::kit::adamw::Update;
    for clip in [1.0, 10.0] {
        let after = |how: Update| {
            let p = Tensor::from_slice(&[1.0f32, -1.0]).set_requires_grad(true);
            let mut opt = Optimizer::new(&[p.shallow_clone()], &[], &roux::recipe::AdamW { lr: 0.1, betas: (0.9, 0.999), eps: 1e-3, weight_decay: 0.0, muon: None, loraplus_lr_ratio: None });
            opt.set_update(how);
            for _ in 0..3 {
                opt.zero_grad();
                (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
                let _ = opt.grad_norm_clipped(Some(clip));
                opt.step(0.1).unwrap();
            }
            Vec::<f64>::try_from(&p.to_kind(Kind::Double)).unwrap()
        };
        let (fused, ops) = (after(Update::Aten), after(Update::Ops));
        assert!(fused.iter().zip(&ops).all(|(a, b)| (a - b).abs() < 1e-6) && fused[0] != 1.0, "clip {clip}: fused {fused:?}, ops {ops:?}");
    }
}

#[test]
fn training_lowers_the_loss_and_writes_its_outputs() {
    let out = scratch("falls");
    run_ok(&fixture("tiny.roux"), &out);
    let dir = out.join("tiny/pretrain");
    let m = metrics(&dir);
    let first = m.first().unwrap()["loss"].as_f64().unwrap();
    let last_val = m.iter().rev().find_map(|x| x["val_loss"].as_f64()).unwrap();
    // Starts near ln 256 ≈ 5.5; 80 steps on Shakespeare reach well under 3.5 nats/byte.
    assert!(first > 4.5, "{first}");
    assert!(last_val < 3.5, "{last_val}");
    for k in ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(m[0].get(k).is_some(), "metrics lack {k}");
    }
    for f in ["model.safetensors", "report.json", "recipe.roux", "resolved.json", "state.json"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["params"], report["params_plan"]);
    // Safetensors names follow the graph path.
    let names: Vec<String> = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"blocks.1.attn.q.weight".to_string()), "{names:?}");
    // Only the last two checkpoints are kept.
    let ckpts = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ckpt-")).count();
    assert_eq!(ckpts, 2);

    // A second run of the same recipe reuses the finished stage.
    let err = run_ok(&fixture("tiny.roux"), &out);
    assert!(err.contains("up to date"), "{err}");

    // Sampling continues the prompt with the requested number of bytes, past the context of 32
    // (the KV cache is refilled from the last 32 tokens), the same for the same seed.
    let sample = || roux(&["sample", dir.to_str().unwrap(), "--prompt", "KING", "--tokens", "40", "--seed", "1"]);
    let o = sample();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("KING") && text.len() >= 4 + 40, "{text}");
    assert_eq!(sample().stdout, o.stdout);
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    // The second run under ROUX_MALLOC=compact, which re-executes the process with glibc's
    // per-thread cache off: arguments survive the exec, and the allocator changes no number.
    let (a, b) = (scratch("det-a"), scratch("det-b"));
    run_ok(&fixture("tiny.roux"), &a);
    let o = Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["run", fixture("tiny.roux").to_str().unwrap(), "--out", b.to_str().unwrap()])
        .env("ROUX_QUIET", "1")
        .env("ROUX_MALLOC", "compact")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let (ma, mb) = (metrics(&a.join("tiny/pretrain")), metrics(&b.join("tiny/pretrain")));
    let losses = |m: &[serde_json::Value]| m.iter().map(|x| (x["loss"].as_f64(), x["val_loss"].as_f64())).collect::<Vec<_>>();
    assert_eq!(losses(&ma), losses(&mb));
    assert_eq!(std::fs::read(a.join("tiny/pretrain/model.safetensors")).unwrap(), std::fs::read(b.join("tiny/pretrain/model.safetensors")).unwrap());
}

#[test]
fn a_killed_run_resumes_to_the_identical_result() {
    let (whole, killed) = (scratch("resume-whole"), scratch("resume-killed"));
    run_ok(&fixture("tiny.roux"), &whole);

    let mut child = Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["run", fixture("tiny.roux").to_str().unwrap(), "--out", killed.to_str().unwrap()])
        .env("ROUX_QUIET", "1")
        .spawn()
        .unwrap();
    let state = killed.join("tiny/pretrain/state.json");
    let t0 = std::time::Instant::now();
    while !state.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, wherever it is
    child.wait().unwrap();
    let dir = killed.join("tiny/pretrain");
    assert!(!dir.join("report.json").exists(), "the run finished before it was killed; the test needs a slower fixture");

    let err = run_ok(&fixture("tiny.roux"), &killed);
    assert!(err.contains("resuming from step"), "{err}");
    assert_eq!(
        std::fs::read(whole.join("tiny/pretrain/model.safetensors")).unwrap(),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        "resumed weights differ from the uninterrupted run"
    );
    let strip = |m: Vec<serde_json::Value>| m.into_iter().map(|x| (x["step"].as_u64(), x["loss"].as_f64(), x["val_loss"].as_f64())).collect::<Vec<_>>();
    assert_eq!(strip(metrics(&whole.join("tiny/pretrain"))), strip(metrics(&dir)));
}

#[test]
fn resuming_under_a_changed_recipe_is_refused_with_what_changed() {
    let out = scratch("changed");
    // The tiny fixture, copied beside its runs with the learning rate changed.
    let original = std::fs::read_to_string(fixture("tiny.roux")).unwrap().replace("../../data/", "../../../data/");
    std::fs::write(out.join("a.roux"), &original).unwrap();
    std::fs::write(out.join("b.roux"), original.replace("lr = 3e-3", "lr = 1e-3")).unwrap();
    run_ok(&out.join("a.roux"), &out.join("runs"));
    // Without its report the run looks interrupted after its last checkpoint (step 80).
    std::fs::remove_file(out.join("runs/tiny/pretrain/report.json")).unwrap();
    let b = out.join("b.roux");
    let o = roux(&["run", b.to_str().unwrap(), "--out", out.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("train.optimizer.lr: 0.003 → 0.001") && err.contains("--fresh") && err.contains("--force"), "{err}");
    // --force resumes anyway (here from the last step: nothing left to train).
    let o = roux(&["run", b.to_str().unwrap(), "--out", out.join("runs").to_str().unwrap(), "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from step 80"));
    // --fresh sets the old run aside and trains from scratch.
    let o = roux(&["run", out.join("a.roux").to_str().unwrap(), "--out", out.join("runs").to_str().unwrap(), "--fresh"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_dir(out.join("runs/tiny")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("pretrain.old-")));
    // A finished run whose definition changed is kept under its hash and retrained, saying
    // what changed; no flag needed.
    let o = roux(&["run", b.to_str().unwrap(), "--out", out.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("changed since its run in") && err.contains("train.optimizer.lr: 0.003 → 0.001"), "{err}");
    let weights = |p: &str| std::fs::read(out.join("runs/tiny/pretrain").join(p)).unwrap();
    let a_model = {
        // Going back to the first definition brings its run back instead of retraining it...
        let o = roux(&["run", out.join("a.roux").to_str().unwrap(), "--out", out.join("runs").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(err.contains("up to date: the run of this definition kept in") && !err.contains("step 10/"), "{err}");
        weights("model.safetensors")
    };
    // ...and so does going forward again: the two variants live side by side.
    let o = roux(&["run", b.to_str().unwrap(), "--out", out.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("up to date: the run of this definition kept in"), "{err}");
    assert_ne!(weights("model.safetensors"), a_model, "the lr = 1e-3 run is back in place");
    assert!(weights("recipe.roux").windows(9).any(|w| w == b"lr = 1e-3"));
}

#[test]
fn llama_style_model_trains_and_a_second_stage_continues_from_the_first() {
    let out = scratch("llama");
    run_ok(&fixture("tiny-llama.roux"), &out);
    let first = metrics(&out.join("tiny-llama/pretrain"));
    let more = metrics(&out.join("tiny-llama/more"));
    let start = first[0]["loss"].as_f64().unwrap();
    let end = first.last().unwrap()["val_loss"].as_f64().unwrap();
    assert!(end < start - 1.0, "{start} → {end}");
    // The continued stage starts from the trained weights, not from scratch (≈5.5).
    let cont = more[0]["loss"].as_f64().unwrap();
    assert!(cont < end + 0.3, "continued stage starts at {cont}, pretrain ended at {end}");
}

#[test]
fn bf16_compute_trains_and_keeps_float32_weights() {
    let out = scratch("bf16");
    run_ok(&fixture("tiny-bf16.roux"), &out);
    let dir = out.join("tiny-bf16/pretrain");
    let m = metrics(&dir);
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m.last().unwrap()["val_loss"].as_f64().unwrap());
    assert!(last < first - 1.0, "{first} → {last}");
    for (name, t) in Tensor::read_safetensors(dir.join("model.safetensors")).unwrap() {
        assert_eq!(t.kind(), Kind::Float, "{name} is saved as {:?}", t.kind());
    }
}

#[test]
fn a_diverging_run_stops_with_the_step_and_can_skip_a_few() {
    let dir = scratch("nan");
    let recipe = |extra: &str| {
        format!(
            r#"experiment "nan" {{
              data d = text("../../../data/tinyshakespeare.txt") {{ context = 16 }}
              model m = transformer {{ vocab = 256, context = 16, d_model = 16, layers = 1, heads = 2 }}
              stage s = train(m, d) {{ steps = 50, batch = 2, optimizer = adamw {{ lr = 1e30 }}, grad_clip = 0 {extra} }}
            }}"#
        )
    };
    std::fs::write(dir.join("stop.roux"), recipe("")).unwrap();
    let o = roux(&["run", dir.join("stop.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("non-finite") && err.contains("at step") && err.contains("learning rate"), "{err}");
    let stop_err = err.to_string();
    // A learning rate of 1e30 breaks the weights for good: skipping 3 steps does not save it,
    // and the run says so after the third.
    std::fs::write(dir.join("skip.roux"), recipe(", on_nonfinite = skip, max_skips = 3")).unwrap();
    let o = roux(&["run", dir.join("skip.roux").to_str().unwrap(), "--out", dir.join("runs2").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("skipped (").count(), 3, "{err}");
    // The stopping run reads the device only at log points, yet names the first bad step: the
    // one the skipping run (which reads every step) skipped first.
    let first_skip = err.split("step ").nth(1).and_then(|r| r.split(':').next()).unwrap().to_string();
    assert!(stop_err.contains(&format!("at step {first_skip} (")), "stopped: {stop_err}\nskipped first: step {first_skip}");
    // Skipping every step is no way to finish: the final weights give no finite loss, and the
    // stage is not marked finished (it used to finish, with no validation loss at all).
    std::fs::write(dir.join("all.roux"), recipe(", on_nonfinite = skip, max_skips = 1000")).unwrap();
    let o = roux(&["run", dir.join("all.roux").to_str().unwrap(), "--out", dir.join("runs3").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("s: the validation loss of the final weights is NaN; not marking the stage finished"), "{err}");
    assert!(!dir.join("runs3/nan/s/report.json").exists());
}

#[test]
fn logs_are_plain_lines_json_lines_or_quiet() {
    let out = scratch("logs");
    let tiny = fixture("tiny.roux");
    let run = |extra: &[&str], dir: &str| {
        let mut args = vec!["run", tiny.to_str().unwrap(), "--out"];
        let d = out.join(dir);
        let d = d.to_str().unwrap().to_string();
        args.push(&d);
        args.extend_from_slice(extra);
        // No ROUX_QUIET here: the flags alone decide.
        let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let quiet = run(&["--quiet"], "q");
    assert!(quiet.trim().is_empty(), "--quiet printed:\n{quiet}");
    let json = run(&["--log-format", "json"], "j");
    let events: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(events.iter().any(|e| e["target"] == "roux::progress" && e["fields"]["step"] == 80 && e["fields"]["total"] == 80));
    assert!(events.iter().any(|e| e["level"] == "INFO" && e["fields"]["message"].as_str().unwrap().contains("pretrain: done")));
    let text = run(&[], "t");
    assert!(text.contains("pretrain: done") && !text.contains("INFO"), "{text}");
}

#[test]
fn a_bpe_tokenizer_is_trained_on_the_corpus_saved_with_the_model_and_used_to_sample() {
    let out = scratch("bpe");
    run_ok(&fixture("tiny-bpe.roux"), &out);
    let dir = out.join("tiny-bpe/pretrain");
    let tk = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tk.get_vocab_size(true), 512);
    // Every byte is in the alphabet, so text round-trips; merges make it shorter than bytes.
    let line = "ROMEO: But soft, what light through yonder window breaks?\n";
    let ids = tk.encode(line, false).unwrap().get_ids().to_vec();
    assert_eq!(tk.decode(&ids, false).unwrap(), line);
    assert!(ids.len() * 10 < line.len() * 7, "{} tokens for {} bytes", ids.len(), line.len());
    let m = metrics(&dir);
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m.last().unwrap()["loss"].as_f64().unwrap());
    assert!(last < first - 0.3, "loss {first} → {last}");
    let o = roux(&["sample", dir.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "12"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ROMEO:"));
}

/// Sampling at a vanishing temperature is greedy decoding (it used to give NaN probabilities and
/// a panic in multinomial).
#[test]
fn a_vanishing_temperature_samples_the_greedy_text() {
    let out = scratch("tiny-temperature");
    run_ok(&fixture("tiny.roux"), &out);
    let run = out.join("tiny/pretrain");
    let text = |t: &str| {
        let o = roux(&["sample", run.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "40", "--temperature", t]);
        assert_eq!(o.status.code(), Some(0), "--temperature {t}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(text("1e-39"), text("0"));
    // Nucleus sampling with a vanishing top-p keeps only the most likely token: greedy again.
    let o = roux(&["sample", run.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "40", "--top-p", "1e-9", "--seed", "5"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), text("0"), "{}", String::from_utf8_lossy(&o.stderr));
    // `\n` in --prompt is a line break; --prompt-file reads the prompt as it is.
    let o = roux(&["sample", run.to_str().unwrap(), "--prompt", "ROMEO:\\nJULIET:", "--tokens", "3"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ROMEO:\nJULIET:"), "{}", String::from_utf8_lossy(&o.stdout));
    std::fs::write(out.join("prompt.txt"), "A\\nB\n").unwrap();
    let o = roux(&["sample", run.to_str().unwrap(), "--prompt-file", out.join("prompt.txt").to_str().unwrap(), "--tokens", "3"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("A\\nB\n"), "{}", String::from_utf8_lossy(&o.stdout));
    // Long samples stream: the first text arrives while the process is still generating.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["sample", run.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "1000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = vec![];
    let mut pipe = child.stdout.take().unwrap();
    while got.len() < "ROMEO:".len() + 20 {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut pipe, &mut buf).unwrap();
        assert!(n > 0, "the sample ended early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(child.try_wait().unwrap().is_none(), "a million tokens are not done yet, yet text came");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(got.starts_with(b"ROMEO:"));
    // More than a million is refused, with the range.
    let o = roux(&["sample", run.to_str().unwrap(), "--tokens", "1000000000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1000000000 is not in 1..=1000000"));
}

/// Health signals: a healthy run finishes without warnings; a LoRA whose learning rate is too
/// small to move it, a Switch layer whose capacity drops most tokens, a router that collapses onto
/// one expert and a PPO run at a harmful learning rate are named in the log, in report.json and
/// at the top of the report page.
#[test]
fn health_signals_fire_on_sick_runs_and_not_on_healthy_ones() {
    let out = scratch("health");
    run_ok(&fixture("tiny.roux"), &out);
    let report = |p: &std::path::Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p.join("report.json")).unwrap()).unwrap() };
    assert_eq!(report(&out.join("tiny/pretrain"))["warnings"], serde_json::json!([]), "a healthy run warned");
    let sick = out.join("sick.roux");
    std::fs::write(
        &sick,
        r#"experiment "sick" {
          seed = 3
          data corpus = text("../../../data/tinyshakespeare.txt") { context = 32 }
          data instr = synthetic.instructions { tasks = [reverse], examples = 200, max_len = 3 }
          model lm = transformer { vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2 }
          model moe = transformer { vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2,
            ffn = moe { experts = 4, expert = mlp { hidden = 32 }, router = switch { capacity_factor = 0.25 } } }
          stage frozen = finetune(lm, instr) { adapter = lora { rank = 2 }, steps = 40, batch = 8, optimizer = adamw { lr = 1e-9 }, eval_every = 40, eval_examples = 8 }
          stage dropping = train(moe, corpus) { steps = 20, batch = 4, eval_every = 20, eval_batches = 2 }
          model greedy = transformer { vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2,
            ffn = moe { experts = 4, expert = mlp { hidden = 32 }, router = topk { k = 1, normalize = false, balance_loss = 0 } } }
          stage collapsing = train(greedy, corpus) { steps = 60, batch = 4, eval_every = 30, eval_batches = 2, log_every = 5, optimizer = adamw { lr = 0.3 } }
        }"#,
    )
    .unwrap();
    let o = roux(&["run", sick.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let names = |r: serde_json::Value| r["warnings"].as_array().unwrap().iter().map(|w| w["signal"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert!(names(report(&out.join("sick/frozen"))).contains(&"lora_frozen".to_string()), "{err}");
    assert!(names(report(&out.join("sick/dropping"))).contains(&"moe_dropping".to_string()), "{err}");
    assert!(err.contains("frozen: the LoRA adapters barely moved") && err.contains("dropping: block 0 drops"), "{err}");
    // A router with no balance loss and a large learning rate collapses onto one expert.
    let collapsed = names(report(&out.join("sick/collapsing")));
    assert!(collapsed.contains(&"router_collapse".to_string()) && collapsed.contains(&"moe_imbalance".to_string()), "{collapsed:?}\n{err}");
    // PPO at a harmful learning rate drifts far from its reference.
    let harm = out.join("harm");
    let o = roux(&["run", fixture("tiny-lifecycle.roux").to_str().unwrap(), "--out", harm.to_str().unwrap(), "--set", "rl.optimizer.lr=0.03"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(names(report(&harm.join("tiny-lifecycle/rl"))).contains(&"kl_high".to_string()), "{err}");
    assert!(err.contains("rl: the KL to the reference reached"), "{err}");
    let o = roux(&["report", out.join("sick/frozen").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let page = std::fs::read_to_string(out.join("sick/frozen/report.html")).unwrap();
    let (warn_at, plots_at) = (page.find("<h2 class=\"warnings\">Warnings</h2>").unwrap(), page.find("<h2>Plots</h2>").unwrap());
    assert!(warn_at < plots_at && page.contains("the LoRA adapters barely moved"));
}

/// TensorBoard's own event reader returns the scalars of metrics.jsonl, step for step (mixture-of-
/// experts layers' numbers under `moe/<layer>/`); `--no-tensorboard` writes no event file.
#[test]
fn tensorboard_reads_the_same_scalars_as_metrics_jsonl() {
    let out = scratch("tensorboard");
    run_ok(&fixture("tiny-moe-topk.roux"), &out);
    let run = out.join("tiny-moe-topk/pretrain");
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
"#;
    let o = Command::new("python").args(["-c", script, run.to_str().unwrap()]).output().expect("python on PATH (source scripts/env.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = metrics(&run);
    let mut compared = 0;
    for key in ["loss", "lr", "grad_norm", "val_loss", "aux_loss"] {
        let want: Vec<(u64, f64)> = rows.iter().filter_map(|r| Some((r["step"].as_u64()?, r[key].as_f64()?))).collect();
        let got: Vec<(u64, f64)> = tb[key].as_array().unwrap_or_else(|| panic!("no `{key}` in the event file")).iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect();
        assert_eq!(want.len(), got.len(), "{key}");
        for ((s1, a), (s2, b)) in want.iter().zip(&got) {
            assert_eq!(s1, s2, "{key}");
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-30), "{key} at step {s1}: {a} vs {b}");
            compared += 1;
        }
    }
    let layer = rows.last().unwrap()["moe"][0]["layer"].as_str().unwrap().to_string();
    assert!(tb[format!("moe/{layer}/entropy")].is_array(), "{tb}");
    assert!(compared > 20);
    let quiet = scratch("tensorboard-off");
    let o = roux(&["run", fixture("tiny.roux").to_str().unwrap(), "--out", quiet.to_str().unwrap(), "--no-tensorboard"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!quiet.join("tiny/pretrain/events.out.tfevents.0.roux").exists());
}

/// `patience = N` stops a stage once N evaluations in a row bring no better validation loss;
/// `keep = best` keeps those weights as best.safetensors (an output, verified like the model);
/// `keep = N` is the number of checkpoints left on disk.
#[test]
fn patience_stops_early_and_keep_decides_what_stays() {
    let out = scratch("patience");
    let recipe = out.join("p.roux");
    std::fs::write(
        &recipe,
        r#"experiment "pat" {
          data d = text("../../../data/tinyshakespeare.txt") { context = 16 }
          model m = transformer { vocab = 256, context = 16, d_model = 16, layers = 1, heads = 2 }
          stage s = train(m, d) { steps = 200, batch = 4, optimizer = adamw { lr = 1e-12 }, eval_every = 10, eval_batches = 2, patience = 3, keep = best }
          stage k = train(m, d) { steps = 30, batch = 4, eval_every = 10, eval_batches = 2, keep = 1, checkpoint_every = 5 }
        }"#,
    )
    .unwrap();
    let err = run_ok(&recipe, &out);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("pat/s/report.json")).unwrap()).unwrap();
    // At lr 1e-12 the weights do not move: the first evaluation (step 10) stays the best, and
    // three more without a better one end the stage at step 40.
    assert_eq!((report["stopped_early_at"].as_u64(), report["best_step"].as_u64()), (Some(40), Some(10)), "{report}");
    assert!(report["outputs"]["best.safetensors"]["bytes"].as_u64().is_some(), "{report}");
    assert_eq!(metrics(&out.join("pat/s")).last().unwrap()["step"], 40);
    let ckpts = |d: &str| std::fs::read_dir(out.join("pat").join(d)).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ckpt-")).count();
    assert_eq!(ckpts("k"), 1, "keep = 1");
    assert_eq!(ckpts("s"), 2, "the default keeps two");
    // Finished early is finished: a rerun reuses both stages.
    let again = run_ok(&recipe, &out);
    assert!(again.contains("s: up to date") && again.contains("k: up to date"), "{again}\n{err}");
}

/// The thresholds are the recipe's to set: `health = thresholds { drop_rate = 0.9 }` keeps a
/// Switch layer that drops a quarter of its tokens quiet, and a threshold out of its range is
/// refused with the range.
#[test]
fn health_thresholds_are_recipe_keys() {
    let out = scratch("health-keys");
    let recipe = out.join("keys.roux");
    let text = |health: &str| {
        format!(
            r#"experiment "keys" {{
          seed = 3
          {health}
          data corpus = text("../../../data/tinyshakespeare.txt") {{ context = 32 }}
          model moe = transformer {{ vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2,
            ffn = moe {{ experts = 4, expert = mlp {{ hidden = 32 }}, router = switch {{ capacity_factor = 0.25 }} }} }}
          stage dropping = train(moe, corpus) {{ steps = 20, batch = 4, eval_every = 20, eval_batches = 2 }}
        }}"#
        )
    };
    std::fs::write(&recipe, text("health = thresholds { drop_rate = 0.9 }")).unwrap();
    let err = run_ok(&recipe, &out);
    assert!(!err.contains("drops"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("keys/dropping/report.json")).unwrap()).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]));
    std::fs::write(&recipe, text("health = thresholds { drop_rate = 2 }")).unwrap();
    let o = roux(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0202]") && err.contains("drop_rate") && err.contains("drop_rate must lie in [0, 1]"), "{err}");
}

/// `--resume-from ckpt-N` goes back to an older kept checkpoint (after a loss spike, say): the run
/// continues from there to the weights and metrics of an uninterrupted run, and later runs resume
/// from where it went. A checkpoint not kept, a finished stage and an ambiguous stage are refused.
#[test]
fn resume_from_an_older_checkpoint() {
    let (whole, cut) = (scratch("resume-from-whole"), scratch("resume-from"));
    let keep = ["--set", "pretrain.keep=100"];
    let run = |out: &std::path::Path, extra: &[&str]| roux(&[&["run", fixture("tiny.roux").to_str().unwrap(), "--out", out.to_str().unwrap()], &keep[..], extra].concat());
    assert_eq!(run(&whole, &[]).status.code(), Some(0));
    let dir = cut.join("tiny/pretrain");
    let recipe = fixture("tiny.roux");
    let args: Vec<&str> = [&["run", recipe.to_str().unwrap(), "--out", cut.to_str().unwrap()], &keep[..]].concat();
    assert!(common::kill_after_checkpoint(&args, &dir, 40), "the run finished three times before it could be killed");
    let o = run(&cut, &["--resume-from", "ckpt-7"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{} has no checkpoint ckpt-7 to resume from; it keeps ckpt-5, ckpt-10", dir.display())), "{err}");
    let o = run(&cut, &["--resume-from", "ckpt-10"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming from step 10 of 80"), "{err}");
    assert_eq!(std::fs::read(whole.join("tiny/pretrain/model.safetensors")).unwrap(), std::fs::read(dir.join("model.safetensors")).unwrap());
    let steps = |d: &std::path::Path| metrics(d).iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps(&whole.join("tiny/pretrain")), steps(&dir), "metrics.jsonl must restart at step 10");
    let o = run(&cut, &["--resume-from", "ckpt-10"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("pretrain: --resume-from ckpt-10: the stage has finished"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = roux(&["run", fixture("tiny-lifecycle.roux").to_str().unwrap(), "--out", cut.to_str().unwrap(), "--resume-from", "ckpt-10"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume-from ckpt-10 names one stage's checkpoint; say which stage with --stage NAME"));
}

/// Checkpoints are written a tensor at a time (`write_streamed`), so a process never holds more
/// than one whole tensor for the file: what it writes is the safetensors format other readers
/// (the safetensors crate, tch) read back to the bit, and a tensor that cannot be fetched leaves
/// no file (and no temporary one), with an error naming the file.
#[test]
fn streamed_safetensors_read_back_exactly_and_a_failed_fetch_leaves_nothing() {
    use roux::run::kit::files::{write_streamed, FileTensor};
    let dir = scratch("streamed");
    let path = dir.join("t.safetensors");
    tch::manual_seed(3);
    let tensors = [
        ("a.weight", Tensor::randn([3, 5], (Kind::Float, Device::Cpu))),
        ("b", Tensor::arange(7, (Kind::Int64, Device::Cpu))),
        ("c.bf16", Tensor::randn([2, 2, 3], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16)),
        ("adam.m.\"quoted\"", Tensor::randn([1], (Kind::Float, Device::Cpu))),
    ];
    let entries: Vec<FileTensor> = tensors.iter().map(|(n, t)| FileTensor { name: n.to_string(), shape: t.size(), kind: t.kind() }).collect();
    write_streamed(Some(&path), &entries, |k| Ok(tensors[k].1.shallow_clone())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 4);
    let back = Tensor::read_safetensors(&path).unwrap();
    for (name, t) in &tensors {
        let (_, b) = back.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((b.kind(), b.size()), (t.kind(), t.size()));
        assert!(b.equal(t), "{name} differs");
    }
    // Without a path, every tensor is still fetched, in order (a process that does not write
    // takes part in the gathers); nothing is written.
    let mut fetched = vec![];
    write_streamed(None, &entries, |k| {
        fetched.push(k);
        Ok(tensors[k].1.shallow_clone())
    })
    .unwrap();
    assert_eq!(fetched, [0, 1, 2, 3]);
    // A failed fetch: the old file stays as it was, no temporary file is left.
    let err = write_streamed(Some(&path), &entries, |k| if k == 2 { anyhow::bail!("the gather of `c.bf16` failed") } else { Ok(tensors[k].1.shallow_clone()) }).unwrap_err();
    assert_eq!(format!("{err:#}"), format!("{}: not written: the gather of `c.bf16` failed", path.display()));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("t.safetensors")]);
}

/// `schedule = wsd { … }` and `linear { … }` set the rate of every step as written, on a `train`
/// stage and on a post-training one: warmup (lr·(step+1)/warmup), the plateau, then the decay
/// reaching `min_lr` at the last step — each step's logged `lr` against the formula by hand.
#[test]
fn warmup_stable_decay_and_linear_schedules_set_each_steps_rate() {
    let out = scratch("schedules");
    let recipe = out.join("s.roux");
    std::fs::write(
        &recipe,
        r#"experiment "sched" {
          seed = 2
          data d = text("../../../data/tinyshakespeare.txt") { context = 16 }
          data instr = synthetic.instructions { tasks = [reverse], examples = 64, max_len = 4 }
          model m = transformer { vocab = 256, context = 16, d_model = 16, layers = 1, heads = 2 }
          stage pre = train(m, d) { steps = 20, batch = 2, log_every = 1, eval_every = 20, eval_batches = 1,
            optimizer = adamw { lr = 1e-3 }, schedule = wsd { warmup = 2, decay = 0.25, min_lr = 1e-4, shape = sqrt } }
          stage sft = finetune(pre.model, instr) { steps = 12, batch = 2, log_every = 1, eval_every = 12, eval_examples = 2, max_new = 2,
            optimizer = adamw { lr = 2e-3 }, schedule = linear { warmup = 1 } }
        }"#,
    )
    .unwrap();
    run_ok(&recipe, &out);
    let lrs = |stage: &str| -> Vec<(u64, f64)> { metrics(&out.join("sched").join(stage)).iter().filter_map(|m| Some((m["step"].as_u64()?, m["lr"].as_f64()?))).collect() };
    // wsd over 20 steps: step 0 at half the peak, steps 1–14 at 1e-3, the last 5 (decay 0.25)
    // come down as 1 − √p, p = 0, ¼, ½, ¾, 1: 1e-3, 5.5e-4, 1e-4 + 9e-4·(1 − √½), …, 1e-4.
    let pre = lrs("pre");
    assert_eq!(pre.len(), 20, "{pre:?}");
    for (i, &(_, lr)) in pre.iter().enumerate() {
        let want = match i {
            0 => 5e-4,
            1..=15 => 1e-3,
            _ => 1e-4 + 9e-4 * (1.0 - ((i - 15) as f64 / 4.0).sqrt()),
        };
        assert!((lr - want).abs() < 1e-12, "pre step {i}: lr {lr}, want {want}");
    }
    assert!((pre[16].1 - 5.5e-4).abs() < 1e-12 && (pre[19].1 - 1e-4).abs() < 1e-12);
    // linear over 12 steps, warmup 1: 2e-3 at step 0, then down by 2e-3/10 a step to 0 at step 11.
    let sft = lrs("sft");
    assert_eq!(sft.len(), 12, "{sft:?}");
    for (i, &(_, lr)) in sft.iter().enumerate() {
        let want = if i == 0 { 2e-3 } else { 2e-3 * (11 - i) as f64 / 10.0 };
        assert!((lr - want).abs() < 1e-12, "sft step {i}: lr {lr}, want {want}");
    }
}

/// The memory guard refuses a stage before anything is allocated, counting what `roux plan`
/// counts: one micro-batch's activations, so `accumulate = 16` needs about a sixteenth of the
/// activations (here both are still far past any machine the tests run on: 2^24 sequences a
/// step), and the advice names `accumulate` first.
#[test]
fn the_memory_guard_counts_one_micro_batch_as_the_plan_does() {
    let out = scratch("guard-micro");
    let recipe = fixture("tiny.roux");
    let mut needs = vec![];
    for k in [1, 16] {
        let accumulate = format!("pretrain.accumulate={k}");
        let set = ["--set", "pretrain.batch=16777216", "--set", accumulate.as_str()];
        let plan = roux(&[&["plan", recipe.to_str().unwrap(), "--json"], &set[..]].concat());
        let need = serde_json::from_slice::<serde_json::Value>(&plan.stdout).unwrap()["stages"][0]["memory_bytes"].as_u64().unwrap();
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()], &set[..]].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{err}");
        let gib = need as f64 / (1u64 << 30) as f64;
        assert!(err.contains(&format!("error: stage `pretrain` needs about {gib:.2} GiB (the plan's memory estimate")), "accumulate = {k}: {err}");
        assert!(err.contains("is available; split the batch into micro-batches (`accumulate`), lower `batch`, the context or the LoRA rank, or run on a larger machine"), "{err}");
        needs.push(need);
    }
    assert!(needs[1] < needs[0] / 12, "{needs:?}");
}

/// A run's peak memory (`ROUX_MALLOC=exact`: the process's memory follows its live tensors) and
/// what `roux plan` says its stage holds, for `recipe` with `sets`; the run in `dir`.
fn peak_and_plan(recipe: &std::path::Path, sets: &[String], dir: &std::path::Path) -> (f64, f64) {
    let args: Vec<String> = sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect();
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()]).args(&args).env("ROUX_QUIET", "1").env("ROUX_MALLOC", "exact").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let report = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path().join("pretrain/report.json");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let o = roux(&[&["plan", recipe.to_str().unwrap(), "--json"], &args.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (report["peak_host_memory_bytes"].as_f64().unwrap(), plan["stages"][0]["memory_bytes"].as_f64().unwrap())
}

fn with(base: &[&str], more: &[&str]) -> Vec<String> {
    base.iter().chain(more).map(|s| s.to_string()).collect()
}

/// Activation checkpointing keeps only each block's input and runs the block again in the
/// backward pass, its router jitter drawn again from the same generator state: the same weights
/// to the bit, and the peak memory lower by what `roux plan` says it saves.
#[test]
fn activation_checkpointing_trains_the_same_weights_in_the_memory_the_plan_says() {
    let out = scratch("checkpointing-train");
    let recipe = fixture("tiny-ep.roux");
    let base = ["lm.layers=6", "lm.d_model=64", "lm.context=256", "corpus.context=256", "pretrain.batch=32", "pretrain.steps=3", "pretrain.eval_every=3", "lm.ffn.router.jitter=0.05"];
    let (peak, planned): (Vec<f64>, Vec<f64>) = [false, true].iter().map(|on| peak_and_plan(&recipe, &with(&base, &[&format!("pretrain.activation_checkpointing={on}")]), &out.join(on.to_string()))).unzip();
    let weights = |on: bool| std::fs::read(out.join(on.to_string()).join("ep/pretrain/model.safetensors")).unwrap();
    assert!(weights(false) == weights(true), "the weights differ with activation checkpointing");
    let losses = |on: bool| metrics(&out.join(on.to_string()).join("ep/pretrain")).iter().map(|m| m["loss"].as_f64()).collect::<Vec<_>>();
    assert_eq!(losses(false), losses(true));
    let (measured, plan) = (peak[0] - peak[1], planned[0] - planned[1]);
    assert!(plan > 0.5 * planned[0], "the plan saves {plan} of {} bytes", planned[0]);
    assert!((0.85..1.15).contains(&(measured / plan)), "checkpointing saved {:.1} MiB of peak memory, the plan says {:.1} MiB", measured / 1048576.0, plan / 1048576.0);
}

/// What `set` adds to the peak memory of a tiny-llama training step of `sets` (measured with
/// `ROUX_MALLOC=exact`) and to the plan's.
fn added_memory(name: &str, sets: &[&str], set: &str) -> (f64, f64) {
    let out = scratch(name);
    let recipe = fixture("tiny-llama.roux");
    let short = ["pretrain.steps=1", "pretrain.eval_every=1", "pretrain.eval_batches=1", "more.steps=1", "more.batch=1", "more.eval_every=1", "more.eval_batches=1"];
    let base: Vec<&str> = sets.iter().chain(&short).copied().collect();
    let runs = [("without", with(&base, &[])), ("with", with(&base, &[set]))];
    // Each the lowest of three runs: when libtorch's threads free their temporaries moves a peak
    // up by a few MiB now and then (on a loaded machine a window's 16 MiB once measured 26, the
    // soft cap's 36 once 45.9 as the lower of two).
    let lower = |name: &str, sets: &[String]| {
        let (a, plan) = peak_and_plan(&recipe, sets, &out.join(format!("{name}-1")));
        let b = peak_and_plan(&recipe, sets, &out.join(format!("{name}-2"))).0;
        (a.min(b).min(peak_and_plan(&recipe, sets, &out.join(format!("{name}-3"))).0), plan)
    };
    let (peak, planned): (Vec<f64>, Vec<f64>) = runs.iter().map(|(name, sets)| lower(name, sets)).unzip();
    (peak[1] - peak[0], planned[1] - planned[0])
}

/// An attention window costs one mask of scores to add, float32 context² (16 MiB at 2048), made
/// once and read by every windowed block: the peak grows by what `roux plan` adds for it (one
/// mask a block, or SDPA's own conversion of a bool mask in each, would be 4 × as much here).
/// Soft-capped attention (Gemma 2's) is written out, keeping two batch × heads × context² tensors
/// a layer (36 MiB at 4 layers × 2 heads × 8 × 256²): the peak grows by about what the plan adds.
#[test]
fn attention_windows_and_soft_caps_add_to_memory_what_the_plan_says() {
    let (measured, plan) = added_memory("window-memory", &["lm.layers=4", "lm.context=2048", "corpus.context=2048", "pretrain.batch=1"], "lm.window=64");
    assert_eq!(plan, 4.0 * 2048.0 * 2048.0);
    // (One mask, not four: 64 MiB would be 4.0 here, none about 0. The peak moves by a few MiB
    // from run to run, and where it falls the mask can overlap memory freed just before: measured
    // 10.6 to 16 MiB on this machine from one day to the next.)
    assert!((0.5..1.4).contains(&(measured / plan)), "the window added {:.1} MiB of peak memory, the plan says {:.1} MiB", measured / 1048576.0, plan / 1048576.0);
    let (measured, plan) = added_memory("softcap-memory", &["lm.layers=4", "lm.context=256", "corpus.context=256", "pretrain.batch=8"], "lm.attn_softcap=50");
    assert_eq!(plan, 4.0 * (4.0 * 2.0 + 1.0) * 8.0 * 2.0 * 256.0 * 256.0);
    // (Measured 36.9 to 43 MiB from run to run here, and once 45.9 with the whole suite running:
    // when the threads free their temporaries moves the peak by a few MiB either way.)
    eprintln!("the soft cap added {:.1} MiB of peak memory, the plan {:.1} MiB", measured / 1048576.0, plan / 1048576.0);
    assert!((0.85..1.3).contains(&(measured / plan)), "the soft cap added {:.1} MiB of peak memory, the plan says {:.1} MiB", measured / 1048576.0, plan / 1048576.0);
}

/// On the CPU, attention with dropout runs libtorch's unfused kernel, which keeps the attention
/// probabilities, the dropout mask and the dropped probabilities (batch × heads × seq² each) in
/// every layer: the plan counts them (here 197 MiB of 296), and activation checkpointing, with
/// one block's at a time, saves what it says; the same weights to the bit, dropout replayed.
#[test]
fn the_plan_counts_attention_dropout_on_the_cpu_and_what_checkpointing_saves_of_it() {
    let out = scratch("dropout-memory");
    let recipe = fixture("tiny.roux");
    let base = ["lm.layers=4", "lm.d_model=64", "lm.heads=8", "corpus.context=128", "pretrain.batch=32", "pretrain.steps=3", "pretrain.schedule.warmup=1", "pretrain.eval_every=3", "pretrain.eval_batches=1", "pretrain.checkpoint_every=0", "pretrain.device=cpu"];
    let runs = [("none", with(&base, &["lm.dropout=0"])), ("dropout", with(&base, &["lm.dropout=0.1"])), ("checkpointed", with(&base, &["lm.dropout=0.1", "pretrain.activation_checkpointing=true"]))];
    let (peak, planned): (Vec<f64>, Vec<f64>) = runs.iter().map(|(name, sets)| peak_and_plan(&recipe, sets, &out.join(name))).unzip();
    let mib = |b: f64| b / 1048576.0;
    let (measured, plan) = (peak[1] - peak[0], planned[1] - planned[0]);
    assert!(plan > 0.5 * planned[1] && (0.9..1.1).contains(&(measured / plan)), "dropout added {:.1} MiB of peak memory, the plan says {:.1} MiB", mib(measured), mib(plan));
    let (measured, plan) = (peak[1] - peak[2], planned[1] - planned[2]);
    assert!((0.9..1.1).contains(&(measured / plan)), "checkpointing saved {:.1} MiB of peak memory, the plan says {:.1} MiB", mib(measured), mib(plan));
    let weights = |name: &str| std::fs::read(out.join(name).join("tiny/pretrain/model.safetensors")).unwrap();
    assert!(weights("dropout") == weights("checkpointed"), "the weights differ with activation checkpointing");
}

/// `eval_data`: other corpora's held-out loss at every evaluation, on the same windows each time
/// (OLMo's in-loop perplexity evaluations): logged as `val_loss/NAME`, its last value in the
/// report, and what the written weights score on those windows computed apart; beside a BPE
/// corpus, they and `eval_choices`' questions read with the tokenizer the stage trains whatever
/// their own.
#[test]
fn other_corpora_are_evaluated_in_the_loop() {
    let out = scratch("eval-data");
    std::fs::copy(root().join("docs/reference.md"), out.join("docs.md")).unwrap();
    let recipe = |tokenizer: &str| {
        format!(
            "experiment \"inloop\" {{\n  data corpus = text(\"../../../data/tinyshakespeare.txt\") {{ context = 32{tokenizer} }}\n  data docs = text(\"docs.md\") {{ context = 32, split = 0.5 }}\n  data quiz = choices(\"../../../data/shakespeare-choices.jsonl\") {{ prompt = \"ctx\", choices = \"endings\", answer = \"label\" }}\n  model lm = transformer {{ vocab = corpus.vocab, context = 32, d_model = 32, layers = 1, heads = 2 }}\n  stage pretrain = train(lm, corpus) {{ steps = 60, batch = 8, eval_every = 30, eval_batches = 2, optimizer = adamw {{ lr = 3e-3 }}, eval_data = [corpus, docs], eval_choices = quiz }}\n}}\n"
        )
    };
    std::fs::write(out.join("bytes.roux"), recipe("")).unwrap();
    run_ok(&out.join("bytes.roux"), &out.join("bytes"));
    let dir = out.join("bytes/inloop/pretrain");
    let m = metrics(&dir);
    let evals: Vec<&serde_json::Value> = m.iter().filter(|v| v["val_loss"].is_number()).collect();
    assert_eq!(evals.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [30, 60]);
    let at = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {v}"));
    let last = evals[1];
    // The training corpus's own held-out windows score about what the sampled validation does.
    assert!((at(last, "val_loss/corpus") - at(last, "val_loss")).abs() < 0.15, "{last}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["final_val_losses"]["docs"].as_f64(), Some(at(last, "val_loss/docs")));
    // The same number from the weights written, on the first 2 × 8 windows of the docs' held-out half.
    let c = roux::frontend::compile(&out.join("bytes.roux")).unwrap();
    let r = c.recipe.unwrap();
    let mut model = Model::new(&r.models[0], Device::Cpu).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    model.load(&tensors).unwrap();
    let held = roux::run::kit::perplexity::Heldout::load(&r, "docs", None).unwrap();
    let apart = held.loss(&model, 16).unwrap();
    assert!((apart - at(last, "val_loss/docs")).abs() < 1e-9, "{apart} against {}", at(last, "val_loss/docs"));
    assert!(std::fs::read_to_string(dir.join("loss.svg")).unwrap().contains(">docs<"));
    // An edited evaluation corpus evaluates again: the stage's hash covers what it reads.
    let run = || String::from_utf8_lossy(&roux(&["run", out.join("bytes.roux").to_str().unwrap(), "--out", out.join("bytes").to_str().unwrap()]).stderr).to_string();
    assert!(run().contains("pretrain: up to date"));
    std::fs::write(out.join("docs.md"), std::fs::read_to_string(out.join("docs.md")).unwrap() + "\nmore\n").unwrap();
    let err = run();
    assert!(!err.contains("pretrain: up to date") && err.contains("inputs.docs.docs.md"), "{err}");

    // BPE: the docs (declared as bytes) are read with the tokenizer the stage trained on the
    // corpus, as the written weights score them read so; none other is made.
    std::fs::write(out.join("bpe.roux"), recipe(", tokenizer = bpe { vocab = 300 }")).unwrap();
    run_ok(&out.join("bpe.roux"), &out.join("bpe"));
    let dir = out.join("bpe/inloop/pretrain");
    let m = metrics(&dir);
    let logged = m.iter().rfind(|v| v["val_loss"].is_number()).map(|v| at(v, "val_loss/docs")).unwrap();
    let r = roux::frontend::compile(&out.join("bpe.roux")).unwrap().recipe.unwrap();
    let mut model = Model::new(&r.models[0], Device::Cpu).unwrap();
    model.load(&Tensor::read_safetensors(dir.join("model.safetensors")).unwrap()).unwrap();
    let bpe = roux::recipe::Tokenizer::Bpe { vocab: 300 };
    let apart = roux::run::kit::perplexity::Heldout::read_as(&r, "docs", &bpe, Some(&dir)).unwrap().loss(&model, 16).unwrap();
    assert!((apart - logged).abs() < 1e-9, "{apart} against {logged}");
    let as_bytes = roux::run::kit::perplexity::Heldout::load(&r, "docs", None).unwrap().loss(&model, 16).unwrap();
    assert!((as_bytes - logged).abs() > 0.1, "read as bytes the docs score {as_bytes}, not {logged}");
    // So are the questions: the accuracy logged is the written weights' on their BPE ids.
    let quiz = |t: &roux::recipe::Tokenizer| roux::run::kit::choices::Quiz::read(&r, "quiz", usize::MAX, t, Some(&dir)).unwrap().score(&model, None).unwrap();
    let (acc, scored) = quiz(&bpe);
    let logged = m.iter().rfind(|v| v["val_choices_acc"].is_number()).map(|v| at(v, "val_choices_acc")).unwrap();
    assert_eq!((acc.acc, acc.questions), (logged, 200));
    let (_, as_bytes) = quiz(&roux::recipe::Tokenizer::Bytes);
    assert!((scored[0].loglikelihoods[0] - as_bytes[0].loglikelihoods[0]).abs() > 0.1, "{:?} against {:?}", scored[0].loglikelihoods, as_bytes[0].loglikelihoods);
    let tokenizers: Vec<_> = walk(&out.join("bpe")).into_iter().filter(|p| p.ends_with("tokenizer.json")).collect();
    assert_eq!(tokenizers, [out.join("bpe/inloop/pretrain/tokenizer.json")]);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().flat_map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() { walk(&p) } else { vec![p] }
    }).collect()
}

/// `data web = mix(letters, digits) { weights = [3, 1] }`: a training row comes from a corpus
/// with probability weight / Σ weights, not by the corpora's sizes (the letters are a quarter of
/// the tokens and three quarters of the rows); the validation loss draws the same way; a BPE mix
/// trains one tokenizer on both; `train` on the mix learns both, its plan counts both.
#[test]
fn a_mix_draws_its_corpora_by_weight_not_by_size() {
    use roux::run::kit::data::Corpus;
    let out = scratch("mix");
    let mut rng = roux::rng::Rng(3);
    let text = |alphabet: &[u8], n: usize, rng: &mut roux::rng::Rng| -> String { (0..n).map(|i| if i % 6 == 5 { ' ' } else { alphabet[rng.below(alphabet.len() as u64) as usize] as char }).collect() };
    std::fs::write(out.join("letters.txt"), text(b"abcdefgh", 20_000, &mut rng)).unwrap();
    std::fs::write(out.join("digits.txt"), text(b"0123456789", 60_000, &mut rng)).unwrap();
    let recipe = |tokenizer: &str| {
        format!(
            "experiment \"mix\" {{\n  data letters = text(\"letters.txt\") {{ context = 32{tokenizer} }}\n  data digits = text(\"digits.txt\") {{ context = 32{tokenizer} }}\n  data web = mix(letters, digits) {{ weights = [3, 1] }}\n  \
             model lm = transformer {{ vocab = web.vocab, context = 32, d_model = 32, layers = 1, heads = 2 }}\n  \
             stage pretrain = train(lm, web) {{ steps = 60, batch = 8, eval_every = 60, eval_batches = 4, optimizer = adamw {{ lr = 3e-3 }} }}\n}}\n"
        )
    };
    std::fs::write(out.join("bytes.roux"), recipe("")).unwrap();
    let r = roux::frontend::compile(&out.join("bytes.roux")).unwrap().recipe.unwrap();
    let web = r.data("web").unwrap();
    assert_eq!(web.tokens, 80_000);
    let parts: Vec<_> = web.mix.iter().map(|(n, w)| (r.data(n).unwrap(), *w)).collect();
    let corpus = Corpus::load_mix(&parts, &out, None).unwrap();
    let (mut letters, mut rows) = (0, 0);
    for _ in 0..250 {
        let (x, _) = corpus.train_batch(8, 32, &mut rng, Device::Cpu);
        for row in Vec::<Vec<i64>>::try_from(&x).unwrap() {
            letters += row.iter().any(|&t| t >= b'a' as i64) as usize;
            rows += 1;
        }
    }
    let share = letters as f64 / rows as f64;
    assert!((share - 0.75).abs() < 0.04, "{letters} of {rows} rows from the letters");
    // Trained: the mix's validation loss and each corpus's (logged without `eval_data`) fall
    // below a byte model's ln 256.
    run_ok(&out.join("bytes.roux"), &out.join("runs"));
    let m = metrics(&out.join("runs/mix/pretrain"));
    let last = m.iter().rfind(|v| v["val_loss"].is_number()).unwrap();
    for k in ["val_loss", "val_loss/letters", "val_loss/digits"] {
        assert!(last[k].as_f64().unwrap() < 3.5, "{k}: {last}");
    }
    // Its hash covers the corpora's files: an edited one trains again, naming it.
    let again = || String::from_utf8_lossy(&roux(&["run", out.join("bytes.roux").to_str().unwrap(), "--out", out.join("runs").to_str().unwrap()]).stderr).to_string();
    assert!(again().contains("pretrain: up to date"));
    std::fs::write(out.join("digits.txt"), text(b"0123456789", 60_000, &mut rng)).unwrap();
    let err = again();
    assert!(!err.contains("pretrain: up to date") && err.contains("inputs.digits.digits.txt"), "{err}");
    // BPE: one tokenizer, trained on both corpora, merges letters and digits alike.
    std::fs::write(out.join("bpe.roux"), recipe(", tokenizer = bpe { vocab = 300 }")).unwrap();
    let r = roux::frontend::compile(&out.join("bpe.roux")).unwrap().recipe.unwrap();
    let parts: Vec<_> = r.data("web").unwrap().mix.iter().map(|(n, w)| (r.data(n).unwrap(), *w)).collect();
    let dir = out.join("bpe");
    let corpus = Corpus::load_mix(&parts, &dir, None).unwrap();
    let bytes = 0.1 * 80_000.0;
    assert!((corpus.val.len() as f64) < 0.8 * bytes, "{} held-out tokens of {bytes} bytes", corpus.val.len());
    let tk = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    for sample in ["abcd efgh", "0123 4567"] {
        assert!(tk.encode(sample, false).unwrap().get_ids().len() < sample.len(), "{sample} is not merged");
    }
}

/// `sample_every`: the model's text as it learns, after the recipe's prompt, logged and kept as
/// samples/step-N.txt (every 20 steps and the last); greedy at temperature 0, the last equals what
/// `roux sample` writes from the finished weights; and sampling changes nothing the stage trains
/// (the same weights and metrics to the bit as without it). The run's page shows the first and
/// the last.
#[test]
fn samples_show_what_the_model_writes_and_change_nothing_it_trains() {
    let out = scratch("samples");
    let recipe = fixture("tiny.roux");
    let run = |dir: &str, extra: &[&str]| {
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join(dir).to_str().unwrap()], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stderr).to_string(), out.join(dir).join("tiny/pretrain"))
    };
    let sampling = ["--set", "pretrain.sample_every=20", "--set", "pretrain.sample_prompt=\"ROMEO:\"", "--set", "pretrain.sample_tokens=24", "--set", "pretrain.sample_temperature=0"];
    let (_, plain) = run("plain", &[]);
    let (log, sampled) = run("sampled", &sampling);
    assert_eq!(std::fs::read(plain.join("model.safetensors")).unwrap(), std::fs::read(sampled.join("model.safetensors")).unwrap(), "sampling changed the weights");
    assert_eq!(metrics(&plain).iter().map(|m| m["loss"].clone()).collect::<Vec<_>>(), metrics(&sampled).iter().map(|m| m["loss"].clone()).collect::<Vec<_>>());
    for step in [20, 40, 60, 80] {
        let text = std::fs::read_to_string(sampled.join(format!("samples/step-{step}.txt"))).unwrap();
        assert!(text.starts_with("ROMEO:") && text.len() > 6, "step {step}: {text:?}");
        // Logged on one line, escaped as a JSON string (a model's text cannot start a line).
        assert!(log.contains(&format!("pretrain: a sample at step {step}: {}\n", serde_json::Value::String(text.clone()))), "{log}");
    }
    // TensorBoard's Text tab shows each sample at its step, as written: a code block its
    // Markdown renderer leaves alone.
    let texts = common::tensorboard_texts(&sampled);
    let shown = texts["samples"].as_array().unwrap_or_else(|| panic!("no samples in the event file: {texts}"));
    assert_eq!(shown.iter().map(|t| t["step"].as_u64().unwrap()).collect::<Vec<_>>(), [20, 40, 60, 80]);
    for t in shown {
        let file = std::fs::read_to_string(sampled.join(format!("samples/step-{}.txt", t["step"]))).unwrap();
        let cell = t["cells"][0].as_str().unwrap();
        assert_eq!(cell.split('\n').map(|l| l.strip_prefix("    ").unwrap()).collect::<Vec<_>>().join("\n"), file);
        assert!(t["html"].as_str().unwrap().starts_with("<pre><code>ROMEO:"), "{t}");
    }
    // …and at step 0 the stage's definition, as Hugging Face's Trainer writes its arguments.
    for (tag, file) in [("recipe", "recipe.roux"), ("resolved", "resolved.json")] {
        let shown = &texts[tag][0];
        let cell = shown["cells"][0].as_str().unwrap();
        assert_eq!((shown["step"].as_u64(), cell.split('\n').map(|l| l.strip_prefix("    ").unwrap()).collect::<Vec<_>>().join("\n")), (Some(0), std::fs::read_to_string(sampled.join(file)).unwrap()), "{tag}");
    }
    let o = roux(&["sample", sampled.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "24", "--temperature", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), std::fs::read_to_string(sampled.join("samples/step-80.txt")).unwrap().trim_end());
    let o = roux(&["report", sampled.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(sampled.join("report.html")).unwrap();
    assert!(html.contains("<h3>Sampled at step 20</h3><pre>ROMEO:") && html.contains("<h3>Sampled at step 80</h3>") && !html.contains("Sampled at step 40"), "{html}");
}
