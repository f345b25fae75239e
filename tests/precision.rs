//! `precision = bf16` on every stage kind and in sampling: bfloat16 compute, float32 weights.
#![cfg(feature = "torch")]

mod common;
use common::*;
use tch::{Kind, Tensor};

/// A fixture with `precision = bf16` as the first line of every stage's block.
fn all_bf16(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("stage ") && line.trim_end().ends_with('{') {
            out.push_str("    precision = bf16\n");
        }
    }
    out
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Every tensor of a safetensors file is float32 and finite.
fn float32_and_finite(path: &std::path::Path) {
    let tensors = Tensor::read_safetensors(path).unwrap();
    assert!(!tensors.is_empty(), "{}", path.display());
    for (name, t) in tensors {
        assert_eq!(t.kind(), Kind::Float, "{}: {name}", path.display());
        assert!(bool::try_from(t.isfinite().all()).unwrap(), "{}: {name} not finite", path.display());
    }
}

#[test]
fn every_stage_kind_trains_in_bf16_with_float32_weights() {
    let out = scratch("bf16-stages");
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
    let grpo = std::fs::read_to_string(fixture("tiny-grpo.roux")).unwrap().replace("../../data/", "../../../data/");
    let mixture = r#"experiment "mix" {
      seed = 1
      data regions = synthetic.regions { tasks = 4, dim = 2, outputs = 1, examples = 800, noise = 0.05 }
      stage experts = mixture(regions) {
        experts = 4, steps = 300, batch = 64, optimizer = adamw { lr = 3e-2 }, eval_every = 100
      }
    }"#;
    for (file, body) in [("fp32.roux", text.clone()), ("bf16.roux", all_bf16(&text)), ("grpo.roux", all_bf16(&grpo)), ("mix.roux", all_bf16(mixture)), ("mix32.roux", mixture.to_string())] {
        std::fs::write(out.join(file), body).unwrap();
    }
    assert_eq!(all_bf16(&text).matches("precision = bf16").count(), 6, "one per stage: pretrain, sft, rm, rl, po, table");
    run_ok(&out.join("fp32.roux"), &out.join("fp32"));
    run_ok(&out.join("bf16.roux"), &out.join("bf16"));
    run_ok(&out.join("grpo.roux"), &out.join("grpo"));
    run_ok(&out.join("mix.roux"), &out.join("mix"));
    run_ok(&out.join("mix32.roux"), &out.join("mix32"));

    let (b, f) = (out.join("bf16/tiny-lifecycle"), out.join("fp32/tiny-lifecycle"));
    for stage in ["pretrain", "sft", "rm", "rl", "po", "table"] {
        assert_eq!(report(&b.join(stage))["precision"], "bf16", "{stage}");
        assert_eq!(report(&f.join(stage))["precision"], "fp32", "{stage}");
    }
    assert_eq!(report(&out.join("grpo/tiny-grpo/rl"))["precision"], "bf16");
    assert_eq!(report(&out.join("mix/mix/experts"))["precision"], "bf16");
    // Master weights stay float32 and finite in every trained output.
    for file in ["pretrain/model.safetensors", "sft/adapter.safetensors", "rm/model.safetensors", "rl/model.safetensors", "po/model.safetensors"] {
        float32_and_finite(&b.join(file));
    }
    float32_and_finite(&out.join("grpo/tiny-grpo/rl/model.safetensors"));
    // bf16 computes something different from float32, and about as well: the pretraining loss
    // within 3%, the reward model's held-out accuracy and the mixture's final loss near float32's.
    let val = |d: &std::path::Path| report(&d.join("pretrain"))["final_val_loss"].as_f64().unwrap();
    let (vb, vf) = (val(&b), val(&f));
    assert!(vb != vf && (vb - vf).abs() / vf < 0.03, "bf16 {vb} vs fp32 {vf}");
    let m_b = metrics(&b.join("rm"));
    let m_f = metrics(&f.join("rm"));
    let last = |m: &[serde_json::Value], k: &str| m.iter().rev().find_map(|r| r[k].as_f64()).unwrap();
    assert!((last(&m_b, "loss") - last(&m_f, "loss")).abs() < 0.05, "reward loss bf16 {} fp32 {}", last(&m_b, "loss"), last(&m_f, "loss"));
    let mix = |d: &str| report(&out.join(d).join("mix/experts"))["val_loss"].as_f64().unwrap();
    let (mb, mf) = (mix("mix"), mix("mix32"));
    assert!(mb.is_finite() && (mb - mf).abs() <= 0.1 * mf.abs() + 0.01, "mixture bf16 {mb} vs fp32 {mf}");
    // A bf16 stage holds its frozen weights (the LoRA base, DPO's reference) in bf16 only: 2
    // bytes for each of tiny-lifecycle's 35,200 parameters, against float32's 4 (and 4 + 2 with
    // the bf16 casts beside them, ROUX_FROZEN_F32=1), and trains the same adapter to the bit.
    assert_eq!(report(&b.join("sft"))["weight_bytes"].as_u64(), Some(2 * 35_200));
    assert_eq!(report(&b.join("po"))["reference_weight_bytes"].as_u64(), Some(2 * 35_200));
    assert_eq!(report(&f.join("sft"))["weight_bytes"].as_u64(), Some(4 * 35_200));
    // `roux plan --world 1` holds what the run held: its weight bytes, less the float32 trained
    // weights (the adapters; the whole DPO policy), are the frozen bytes the reports give.
    for (recipe, dir) in [("bf16.roux", &b), ("fp32.roux", &f)] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["plan", out.join(recipe).to_str().unwrap(), "--json", "--world", "1"]).output().unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let process = |stage: &str| plan["processes"].as_array().unwrap().iter().find(|p| p["stage"] == stage).unwrap().clone();
        let frozen = |stage: &str| process(stage)["weight_bytes"].as_u64().unwrap() - process(stage)["gradient_bytes"].as_u64().unwrap();
        assert_eq!(Some(frozen("sft")), report(&dir.join("sft"))["weight_bytes"].as_u64(), "{recipe}: sft");
        assert_eq!(Some(frozen("po")), report(&dir.join("po"))["reference_weight_bytes"].as_u64(), "{recipe}: po");
    }
    let f32 = out.join("bf16-f32");
    assert!(std::process::Command::new("cp").arg("-r").args([out.join("bf16"), f32.clone()]).status().unwrap().success());
    for stage in ["sft", "po"] {
        std::fs::remove_dir_all(f32.join("tiny-lifecycle").join(stage)).unwrap();
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["run", out.join("bf16.roux").to_str().unwrap(), "--out", f32.to_str().unwrap(), "--stage", "sft", "--stage", "po"])
        .env("ROUX_FROZEN_F32", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let k = f32.join("tiny-lifecycle");
    assert_eq!(report(&k.join("sft"))["weight_bytes"].as_u64(), Some(6 * 35_200));
    assert_eq!(report(&k.join("po"))["reference_weight_bytes"].as_u64(), Some(6 * 35_200));
    let sorted = |path: std::path::PathBuf| {
        let mut t = Tensor::read_safetensors(path).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (held, kept) = (sorted(b.join("sft/adapter.safetensors")), sorted(k.join("sft/adapter.safetensors")));
    assert_eq!(held.len(), 12);
    for ((n, x), (m, y)) in held.iter().zip(&kept) {
        assert!(n == m && x.equal(y), "`{n}` differs with the frozen base in float32");
    }
    // PPO and DPO logged finite losses in bf16.
    for (stage, key) in [("rl", "policy_loss"), ("po", "loss")] {
        let m = metrics(&b.join(stage));
        assert!(!m.is_empty() && m.iter().all(|r| r[key].as_f64().is_some_and(f64::is_finite)), "{stage}: {m:?}");
    }

    // Sampling in bf16 from the bf16 run's model: as many tokens as asked.
    let o = roux(&["sample", b.join("pretrain").to_str().unwrap(), "--precision", "bf16", "--tokens", "40", "--temperature", "0", "--prompt", "ROMEO:"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("ROMEO:") && text.trim_end_matches('\n').len() >= "ROMEO:".len() + 40, "{text:?}");
    let o = roux(&["sample", b.join("pretrain").to_str().unwrap(), "--precision", "fp16"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid value 'fp16' for '--precision <PRECISION>'"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn cached_bf16_weights_give_the_same_logits_and_follow_updates() {
    // Generation casts each weight once (`with_cached_casts`), not once per token: the same
    // logits as casting at every use, and after an update the next generation sees new weights.
    let c = roux::frontend::compile(&fixture("tiny.roux")).unwrap();
    let recipe = c.recipe.expect("tiny.roux checks");
    let spec = recipe.models.first().expect("tiny.roux declares a model").clone();
    tch::manual_seed(0);
    let mut m = roux::run::model::Model::new(&spec, tch::Device::Cpu).unwrap();
    m.set_precision(Kind::BFloat16);
    let x = Tensor::randint(256, [2, 16], (Kind::Int64, tch::Device::Cpu));
    let plain = tch::no_grad(|| m.forward(&x, false));
    let cached = m.with_cached_casts(|| m.forward(&x, false));
    assert!(plain.equal(&cached), "cached casts changed the logits");
    // An update in place (as AdamW makes) is seen by the next cached forward.
    tch::no_grad(|| {
        for p in &m.params {
            let _ = p.shallow_clone().g_add_scalar_(0.05);
        }
    });
    let after = m.with_cached_casts(|| m.forward(&x, false));
    assert!(!after.equal(&cached), "the second generation used the first one's weights");
    // Gradients still reach the float32 weights after a cached generation.
    let loss = m.forward(&x, true).to_kind(Kind::Float).logsumexp([-1], false).mean(Kind::Float);
    loss.backward();
    assert!(m.params.iter().all(|p| p.grad().defined()), "a weight got no gradient");
}

#[test]
fn weights_cast_once_per_step_train_bit_for_bit_like_casting_at_each_use() {
    // The optimizer's flat bf16 copy of the weights (one cast per step, gradients gathered in one
    // pass) against a cast at every use (ROUX_SHADOW=0): the same weights, bit for bit, for a
    // Switch MoE with shared experts, rope and swiglu (its routers read in float32: excluded) and
    // for GPT-2 layout with a tied embedding (read twice: excluded) and biases.
    let out = scratch("bf16-shadow");
    let tiny = std::fs::read_to_string(fixture("tiny.roux")).unwrap().replace("../../data/", "../../../data/");
    assert!(!tiny.contains("tie_embeddings = false"), "tiny.roux ties its embedding");
    std::fs::write(out.join("tiny.roux"), tiny).unwrap();
    for (recipe, exp, sets) in [(fixture("tiny-bf16.roux"), "tiny-bf16", vec![]), (out.join("tiny.roux"), "tiny", vec!["--set", "pretrain.precision=bf16", "--set", "pretrain.steps=30"])] {
        let mut weights = vec![];
        for shadow in ["1", "0"] {
            let dir = out.join(format!("{exp}-{shadow}"));
            let mut args = vec!["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()];
            args.extend(&sets);
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(&args).env("ROUX_SHADOW", shadow).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            weights.push(std::fs::read(dir.join(exp).join("pretrain/model.safetensors")).unwrap());
        }
        assert!(weights[0] == weights[1], "{exp}: the shadowed run's weights differ");
    }
}
