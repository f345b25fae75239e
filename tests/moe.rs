//! Mixture-of-experts: every router loss against hand-computed values, the sparse layer against
//! a naive per-assignment computation, exact capacity drops, and training with each router.
#![cfg(feature = "torch")]

use std::path::Path;
use tch::{Device, Kind, Tensor};

mod common;

use roux::recipe::{Activation, RouterSpec};
use roux::run::model::moe::{self, Experts};

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() < tol, "{a} vs {b}");
}

#[test]
fn switch_balance_loss_by_hand() {
    // probs (4 tokens × 2 experts); top-1 = [0, 0, 1, 0] → f = [3/4, 1/4];
    // P = column means = [0.6, 0.4]; E·Σ f·P = 2·(0.75·0.6 + 0.25·0.4) = 1.1.
    let probs = t(&[0.7, 0.3, 0.6, 0.4, 0.2, 0.8, 0.9, 0.1], &[4, 2]);
    let routed = Tensor::from_slice(&[3i64, 1]);
    close(moe::balance_loss(&probs, &routed, 4).double_value(&[]), 1.1, 1e-6);
}

#[test]
fn z_loss_by_hand() {
    // logsumexp([0, 0]) = ln 2, logsumexp([ln 3, 0]) = ln 4; mean of squares
    // = (0.4804530 + 1.9218121) / 2 = 1.2011325 (Python: (log(2)**2 + log(4)**2) / 2).
    let logits = t(&[0.0, 0.0, 3f32.ln(), 0.0], &[2, 2]);
    close(moe::z_loss(&logits).double_value(&[]), 1.2011325347955035, 1e-6);
}

#[test]
fn importance_cv_squared_uses_the_population_variance() {
    // v = [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9)/4 = 3.5, CV² = 3.5/9.
    // (The sample variance, /3, would give 0.5185.)
    close(moe::cv_squared(&t(&[1.0, 2.0, 3.0, 6.0], &[4])).double_value(&[]), 3.5 / 9.0, 1e-6);
}

#[test]
fn smooth_load_estimator_by_hand() {
    // One token, 3 experts, k = 1, noise std 1. Clean [1, 0, −1], noisy [1.2, 0.5, −2].
    // Expert 0 is in the top 1: threshold = 2nd largest noisy = 0.5 → Φ((1 − 0.5)/1) = Φ(0.5) = 0.6914625.
    // Experts 1, 2 are out: threshold = largest = 1.2 → Φ(−1.2) = 0.1150697, Φ(−2.2) = 0.0139034.
    let load = moe::smooth_load(&t(&[1.0, 0.0, -1.0], &[1, 3]), &t(&[1.2, 0.5, -2.0], &[1, 3]), &t(&[1.0, 1.0, 1.0], &[1, 3]), 1);
    for (i, want) in [0.6914624612740131, 0.11506967022170833, 0.01390344751349859].into_iter().enumerate() {
        close(load.double_value(&[i as i64]), want, 1e-5);
    }
}

#[test]
fn jacobs_competitive_loss_by_hand() {
    // p = [0.25, 0.75], expert outputs o₁ = 0, o₂ = 3, target d = 1:
    // −log(0.25·e^(−½·1) + 0.75·e^(−½·4)) = −log(0.1516327 + 0.1015015) = 1.3738358.
    let loss = moe::jacobs_loss(&t(&[0.25, 0.75], &[1, 2]), &t(&[0.0, 3.0], &[2, 1, 1]), &t(&[1.0], &[1, 1]));
    close(loss.double_value(&[]), 1.3738357830825714, 1e-5);
}

fn routers() -> Vec<RouterSpec> {
    vec![
        RouterSpec::Softmax,
        RouterSpec::NoisyTopk { k: 2, importance_loss: 0.1, load_loss: 0.1 },
        RouterSpec::Switch { capacity_factor: 1.0, eval_capacity_factor: 1.0, balance_loss: 0.01, z_loss: 0.001, jitter: 0.0 },
        RouterSpec::Topk { k: 2, normalize: true, balance_loss: 0.01, z_loss: 0.0 },
        RouterSpec::ExpertChoice { capacity_factor: 2.0 },
    ]
}

/// y_t = Σ over t's kept assignments of gate · expert_e(x_t), one small matmul at a time.
fn naive(x: &Tensor, r: &moe::Routing, w1: &Tensor, w2: &Tensor) -> Tensor {
    let y = x.zeros_like();
    for a in 0..r.tok.size()[0] {
        let (tok, e) = (r.tok.int64_value(&[a]), r.expert.int64_value(&[a]));
        let g = r.gate.double_value(&[a]);
        let h = x.get(tok).matmul(&w1.get(e).tr()).relu().matmul(&w2.get(e).tr());
        let mut row = y.get(tok);
        let _ = row.g_add_(&(h * g));
    }
    y
}

/// LoRA on the stacks (an A and a B per expert, on w1, w3 and w2): every dispatch path computes
/// the layer of the merged weights W_e + s·B_e·A_e, and gives A and B the same gradients.
#[test]
fn expert_adapters_are_the_merged_weights_on_every_path() {
    tch::manual_seed(2);
    let (n, d, h, e, rank, s) = (24, 8, 16, 4, 2, 1.5);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([n, d], opts);
    let (w1, w3, w2) = (Tensor::randn([e, h, d], opts) * 0.3, Tensor::randn([e, h, d], opts) * 0.3, Tensor::randn([e, d, h], opts) * 0.3);
    let ab = |out: i64, inp: i64| (Tensor::randn([e, rank, inp], opts) * 0.3, Tensor::randn([e, out, rank], opts) * 0.3);
    let lora = moe::ExpertLora { ab: [Some(ab(h, d)), Some(ab(h, d)), Some(ab(d, h))], scale: s };
    let merged = |w: &Tensor, k: usize| {
        let (a, b) = lora.ab[k].as_ref().unwrap();
        w + b.matmul(a) * s
    };
    let (m1, m3, m2) = (merged(&w1, 0), merged(&w3, 1), merged(&w2, 2));
    let plain = Experts { w1: &m1, w3: Some(&m3), w2: &m2, act: Activation::Swiglu, lora: None };
    let adapted = Experts { w1: &w1, w3: Some(&w3), w2: &w2, act: Activation::Swiglu, lora: Some(&lora) };
    let r = moe::route(&routers()[0], &x.matmul(&Tensor::randn([e, d], opts).tr()), None, false);
    let want = moe::dense_reference(&x, &r, &plain, e);
    let without = moe::dense_reference(&x, &r, &Experts { lora: None, ..adapted }, e);
    assert!((&want - &without).abs().max().double_value(&[]) > 1e-2, "the adapters change nothing: the test would prove nothing");
    let paths: [(&str, fn(&Tensor, &moe::Routing, &Experts, i64) -> Tensor); 4] = [("grouped", moe::grouped), ("padded", moe::padded), ("grouped_mm", moe::grouped_mm), ("dense", moe::dense_reference)];
    let mut grads = vec![];
    for (path, f) in paths {
        let got = f(&x, &r, &adapted, e);
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{path}: {diff}");
        // Gradients of A and B of every projection.
        let ab: Vec<(Tensor, Tensor)> = lora.ab.iter().map(|p| p.as_ref().map(|(a, b)| (a.copy().set_requires_grad(true), b.copy().set_requires_grad(true))).unwrap()).collect();
        let share = |k: usize| Some((ab[k].0.shallow_clone(), ab[k].1.shallow_clone()));
        let l = moe::ExpertLora { ab: [share(0), share(1), share(2)], scale: s };
        f(&x, &r, &Experts { lora: Some(&l), ..adapted }, e).square().sum(Kind::Float).backward();
        grads.push((path, Tensor::cat(&ab.iter().flat_map(|(a, b)| [a.grad().flatten(0, -1), b.grad().flatten(0, -1)]).collect::<Vec<_>>(), 0)));
    }
    for (path, g) in &grads[1..] {
        let diff = (g - &grads[0].1).abs().max().double_value(&[]);
        assert!(diff < 1e-3 && grads[0].1.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{path}: adapter gradients differ from grouped's by {diff}");
    }
}

#[test]
fn sparse_layer_equals_the_naive_dense_computation_for_every_router() {
    tch::manual_seed(0);
    let (n, d, h, e) = (24, 8, 16, 4);
    let x = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let w1 = Tensor::randn([e, h, d], (Kind::Float, Device::Cpu)) * 0.3;
    let w2 = Tensor::randn([e, d, h], (Kind::Float, Device::Cpu)) * 0.3;
    let wg = Tensor::randn([e, d], (Kind::Float, Device::Cpu));
    let wn = Tensor::randn([e, d], (Kind::Float, Device::Cpu)) * 0.1;
    let experts = Experts { w1: &w1, w3: None, w2: &w2, act: Activation::Relu, lora: None };
    for router in routers() {
        for train in [false, true] {
            let logits = x.matmul(&wg.tr());
            let noise = x.matmul(&wn.tr());
            tch::manual_seed(7); // noisy top-k draws its noise: the masked form below draws the same
            let r = moe::route(&router, &logits, Some(&noise), train);
            let dense = moe::dense_reference(&x, &r, &experts, e);
            let slow = naive(&x, &r, &w1, &w2);
            // Every sparse path: grouped by expert (CPU), the padded capacity buffer (CUDA float32),
            // libtorch's grouped GEMM (CUDA bf16).
            for (path, sparse) in [("grouped", moe::grouped(&x, &r, &experts, e)), ("padded", moe::padded(&x, &r, &experts, e)), ("grouped_mm", moe::grouped_mm(&x, &r, &experts, e))] {
                let d1 = (&sparse - &dense).abs().max().double_value(&[]);
                let d2 = (&sparse - &slow).abs().max().double_value(&[]);
                assert!(d1 < 1e-5 && d2 < 1e-5, "{} (train {train}, {path}): sparse vs dense {d1}, vs naive {d2}", router.name());
            }
            // The masked form CUDA uses (every assignment kept, the over-capacity ones with gate 0):
            // the same layer through every path, and the same dropped fraction.
            tch::manual_seed(7);
            let m = moe::route_with(&router, &logits, Some(&noise), train, true);
            for (path, sparse) in [("grouped", moe::grouped(&x, &m, &experts, e)), ("padded", moe::padded(&x, &m, &experts, e)), ("grouped_mm", moe::grouped_mm(&x, &m, &experts, e)), ("dense", moe::dense_reference(&x, &m, &experts, e))] {
                let d1 = (&sparse - &dense).abs().max().double_value(&[]);
                assert!(d1 < 1e-5, "{} (train {train}, masked, {path}): {d1}", router.name());
            }
            let (a, b) = (moe::stats("l", &r).dropped.double_value(&[]), moe::stats("l", &m).dropped.double_value(&[]));
            assert_eq!(a, b, "{}: dropped fraction", router.name());
            if let (RouterSpec::Switch { .. }, Some(v)) = (&router, &m.valid) {
                assert!(a > 0.0 && !bool::try_from(v.all()).unwrap(), "the case drops nothing: the masked path is not exercised");
            }
        }
    }
    // The grouped GEMM's backward gives the per-expert matmuls' gradients.
    let r = moe::route(&routers()[0], &x.matmul(&wg.tr()), None, true);
    let grads = |f: fn(&Tensor, &moe::Routing, &Experts, i64) -> Tensor| {
        let (a, b) = (w1.copy().set_requires_grad(true), w2.copy().set_requires_grad(true));
        let ex = Experts { w1: &a, w3: None, w2: &b, act: Activation::Relu, lora: None };
        f(&x, &r, &ex, e).square().sum(Kind::Float).backward();
        (a.grad(), b.grad())
    };
    let ((a1, b1), (a2, b2)) = (grads(moe::grouped), grads(moe::grouped_mm));
    let diff = (&a1 - &a2).abs().max().double_value(&[]).max((&b1 - &b2).abs().max().double_value(&[]));
    assert!(diff < 1e-4 && a1.abs().sum(Kind::Float).double_value(&[]) > 0.0, "gradients differ by {diff}");
    // Switch routes each token to its most probable expert with that probability as the gate.
    let logits = x.matmul(&wg.tr());
    let sw = RouterSpec::Switch { capacity_factor: 4.0, eval_capacity_factor: 4.0, balance_loss: 0.0, z_loss: 0.0, jitter: 0.0 };
    let r = moe::route(&sw, &logits, None, false);
    let (p, arg) = logits.softmax(-1, Kind::Float).max_dim(-1, false);
    assert_eq!(r.tok.size()[0], n, "capacity 4× the mean load drops nothing");
    assert!(r.expert.equal(&arg.index_select(0, &r.tok)));
    assert!(r.gate.allclose(&p.index_select(0, &r.tok), 1e-6, 1e-6, false));
}

#[test]
fn exactly_the_over_capacity_tokens_are_dropped() {
    // 16 tokens, 2 experts, capacity factor 0.5 → C = ceil(16/2 · 0.5) = 4.
    // Tokens 0..12 prefer expert 0 (12 tokens), 12..16 prefer expert 1 (4 tokens):
    // expert 0 keeps its first 4 tokens (0, 1, 2, 3) and drops 8; expert 1 keeps all 4.
    let n = 16;
    let pref: Vec<f32> = (0..n).flat_map(|i| if i < 12 { [2.0, 0.0] } else { [0.0, 2.0] }).collect();
    let logits = t(&pref, &[n, 2]);
    let sw = RouterSpec::Switch { capacity_factor: 0.5, eval_capacity_factor: 0.5, balance_loss: 0.01, z_loss: 0.0, jitter: 0.0 };
    let r = moe::route(&sw, &logits, None, true);
    assert_eq!(r.capacity, 4);
    assert_eq!(r.tok.size()[0], 8);
    let mut kept: Vec<i64> = Vec::<i64>::try_from(&r.tok).unwrap();
    kept.sort();
    assert_eq!(kept, vec![0, 1, 2, 3, 12, 13, 14, 15]);
    let st = moe::stats("l", &r);
    close(st.dropped.double_value(&[]), 8.0 / 16.0, 1e-9);
    // Dropped tokens get exactly zero from the layer (the residual carries them).
    let x = Tensor::ones([n, 3], (Kind::Float, Device::Cpu));
    let w1 = Tensor::ones([2, 5, 3], (Kind::Float, Device::Cpu));
    let w2 = Tensor::ones([2, 3, 5], (Kind::Float, Device::Cpu));
    let y = moe::dispatch(&x, &r, &Experts { w1: &w1, w3: None, w2: &w2, act: Activation::Relu, lora: None }, 2);
    let row_sums = Vec::<f32>::try_from(&y.abs().sum_dim_intlist(1, false, Kind::Float)).unwrap();
    for (i, s) in row_sums.iter().enumerate() {
        assert_eq!(*s == 0.0, (4..12).contains(&i), "token {i}: {s}");
    }
}

#[test]
fn each_router_trains_and_logs_expert_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/test-runs/moe");
    let _ = std::fs::remove_dir_all(&out);
    for r in ["switch", "noisy_topk", "softmax", "topk", "expert_choice"] {
        let f = root.join(format!("tests/fixtures/tiny-moe-{r}.roux"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", f.to_str().unwrap(), "--out", out.to_str().unwrap()]).env("ROUX_QUIET", "1").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{r}: {}", String::from_utf8_lossy(&o.stderr));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join(format!("tiny-moe-{r}/pretrain/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = lines[0]["loss"].as_f64().unwrap();
        let last = lines.last().unwrap()["val_loss"].as_f64().unwrap();
        assert!(last < first - 1.0, "{r}: {first} → {last}");
        let layers = lines.last().unwrap()["moe"].as_array().unwrap().clone();
        assert_eq!(layers.len(), 2, "{r}: one entry per MoE layer");
        for l in layers {
            let load: Vec<f64> = l["load"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(load.len(), 4);
            close(load.iter().sum::<f64>(), 1.0, 1e-5);
            assert!(l["entropy"].as_f64().unwrap() >= 0.0 && l["dropped"].as_f64().unwrap() >= 0.0);
        }
    }
}

#[test]
fn jacobs_mixture_gives_each_subtask_its_own_expert() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/test-runs/jacobs");
    let _ = std::fs::remove_dir_all(&out);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["run", root.join("recipes/jacobs-1991.roux").to_str().unwrap(), "--out", out.to_str().unwrap(), "--stage", "competitive"])
        .env("ROUX_QUIET", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("jacobs-1991/competitive/report.json")).unwrap()).unwrap();
    // 4 sectors, 4 experts: the competitive objective gives every sector to a different expert,
    // each winning (almost) all of its sector's held-out examples.
    assert_eq!(r["distinct_experts_claiming"], 4, "{r}");
    assert!(r["purity"].as_f64().unwrap() > 0.95, "{r}");
}

/// A mixture stage checkpoints at every evaluation and resumes like every stage: killed after
/// its first checkpoints, run again, it ends with the same weights, report and metrics as a run
/// that was never interrupted.
#[test]
fn a_killed_mixture_stage_resumes_to_the_identical_result() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = root.join("recipes/jacobs-1991.roux");
    // A quarter of the recipe's steps, evaluated (and checkpointed) every 250.
    let args = |out: &Path| -> Vec<String> {
        let a = ["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "competitive.steps=1500", "--set", "competitive.eval_every=250", "--stage", "competitive"];
        a.iter().map(|s| s.to_string()).collect()
    };
    let run = |out: &Path| common::roux(&args(out).iter().map(String::as_str).collect::<Vec<_>>());
    let (whole, killed) = (common::scratch("mixture-whole"), common::scratch("mixture-killed"));
    let o = run(&whole);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let interrupted = common::kill_after_checkpoint(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>(), &killed.join("jacobs-1991/competitive"), 500);
    assert!(interrupted, "the stage finished before it could be killed, three times");
    let o = run(&killed);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("competitive: resuming from step"), "{err}");
    let read = |d: &Path, f: &str| std::fs::read(d.join("jacobs-1991/competitive").join(f)).unwrap();
    assert!(read(&whole, "model.safetensors") == read(&killed, "model.safetensors"), "weights differ after a resume");
    let metrics = |d: &Path| -> Vec<serde_json::Value> {
        let text = String::from_utf8(read(d, "metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).map(|mut v| { v.as_object_mut().unwrap().remove("tokens_per_s"); v }).collect()
    };
    assert_eq!(metrics(&whole), metrics(&killed), "metrics differ after a resume");
    let report = |d: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&read(d, "report.json")).unwrap();
        // (Measurements, not results: they differ between runs.)
        for k in ["wall_seconds", "peak_host_memory_bytes"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(report(&whole), report(&killed));
}
