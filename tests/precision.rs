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

/// NF4 as bitsandbytes stores it: blocks of 64 values each scaled by its absolute maximum and
/// rounded to the nearest of 16 codes, two codes a byte (the first in the high bits). Values
/// worked out by hand from bitsandbytes' code table.
#[test]
fn nf4_rounds_each_block_of_64_to_the_nearest_code_as_bitsandbytes_stores_it() {
    use roux::run::model::nf4::Nf4;
    // 3 × 45 = 135 values: two whole blocks and a block of 7.
    let mut w = vec![0f32; 135];
    w[..6].copy_from_slice(&[2.0, -2.0, 1.0, 0.1, 0.0, -0.5]);
    w[70] = -0.25; // block 2: absmax 0.25, the other values 0
    w[71] = 0.1; // 0.4 of it: nearest code 0.44070982933044434 (index 12)
    w[130] = 3.0; // the short block
    let q = Nf4::quantize(&Tensor::from_slice(&w).view([3, 45]), false).unwrap();
    assert_eq!(q.codes.size(), [96]);
    assert_eq!(q.bytes(), 96 + 3 * 4);
    assert_eq!(Vec::<f32>::try_from(&q.absmax).unwrap(), [2.0, 0.25, 3.0]);
    // 2/2 → 1.0 (15) and −1.0 (0); 1/2 = 0.5 → 0.4407 (12, the midpoint with 0.5626 is 0.5016);
    // 0.1/2 = 0.05 → 0.0796 (8, above the midpoint 0.0398); 0 → 0 (7); −0.5/2 = −0.25 → −0.2844
    // (4, below the midpoint −0.2346 with −0.1848).
    let codes = Vec::<u8>::try_from(&q.codes).unwrap();
    assert_eq!(codes[..3], [15 << 4, (12 << 4) | 8, (7 << 4) | 4]);
    let d = Vec::<f32>::try_from(&q.dequantize(Kind::Float).view([-1])).unwrap();
    assert_eq!(d[..6], [2.0, -2.0, 2.0 * 0.440_709_83, 2.0 * 0.079_580_3, 0.0, 2.0 * -0.284_441_38]);
    assert_eq!(d[70..72], [-0.25, 0.25 * 0.440_709_83]);
    assert_eq!(d[130], 3.0);
    assert!(d.iter().enumerate().all(|(i, &v)| [0, 1, 2, 3, 5, 70, 71, 130].contains(&i) || v == 0.0));

    // On normal weights every value is within half the widest gap of the code (at the bottom,
    // (1 − 0.6962) / 2) times its block's maximum, and closer on average than 16 evenly spaced
    // levels over the same range: the NormalFloat's point (the QLoRA paper, section 3).
    tch::manual_seed(0);
    let w = Tensor::randn([256, 512], (Kind::Float, tch::Device::Cpu));
    let q = Nf4::quantize(&w, false).unwrap();
    let err = (q.dequantize(Kind::Float) - &w).view([-1, 64]);
    let scale = w.view([-1, 64]).abs().amax(1, true);
    assert!(bool::try_from(err.abs().le_tensor(&(&scale * 0.151_903_6 + 1e-6)).all()).unwrap());
    let levels = 15.0;
    let uniform = ((w.view([-1, 64]) / &scale + 1.0) * (levels / 2.0)).round() / (levels / 2.0) - 1.0;
    let uniform_err = uniform * &scale - w.view([-1, 64]);
    let (nf4, even) = (err.square().mean(Kind::Float).double_value(&[]), uniform_err.square().mean(Kind::Float).double_value(&[]));
    assert!(nf4 < 0.9 * even, "NF4's mean squared error {nf4:.5}, 16 even levels' {even:.5}");
}

/// Double quantization (QLoRA's; bitsandbytes' `compress_statistics`): the block scales less
/// their mean, in blocks of 256 each scaled by its absolute maximum and rounded to the nearest
/// of bitsandbytes' signed 8-bit dynamic code, whose values are worked out here by hand. The
/// 4-bit codes are those of plain NF4; each scale is within half the code's widest gap of its
/// block's maximum; the layer over it is the dequantized one's; a byte and a bit a block less.
#[test]
fn double_quantization_holds_the_scales_in_8_bits_as_bitsandbytes_does() {
    use roux::run::model::nf4::Nf4;
    // The dynamic code: for i < 7, the midpoints of 2^i + 1 points from 0.1 to 1, times
    // ±10^(i − 6); then 0 and 1: 2 × 127 + 2 values, sorted.
    let table = Vec::<f32>::try_from(&Nf4::table(tch::Device::Cpu)).unwrap();
    let code = &table[512..];
    assert_eq!(code.len(), 256);
    assert!(code.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert_eq!((code[127], code[255]), (0.0, 1.0));
    // i = 0: one midpoint, 0.55, times 10^-6; i = 6: 64 midpoints 0.0140625 apart from 0.10703125.
    assert!((code[128] as f64 - 0.55e-6).abs() < 1e-12 && code[126] == -code[128]);
    for k in 0..64 {
        let v = 0.10703125 + 0.0140625 * k as f64;
        assert!((code[191 + k] as f64 - v).abs() < 1e-6 && code[63 - k] == -code[191 + k], "{k}: {}", code[191 + k]);
    }
    // The NF4 table's pairs: byte 0x7F is (0, 1).
    assert_eq!((table[2 * 0x7F], table[2 * 0x7F + 1]), (0.0, 1.0));

    tch::manual_seed(3);
    // 700 × 300 = 210,000 values: 3,282 blocks (the last short), 13 groups of 256 scales; rows of
    // different spread so the scales differ.
    let w = Tensor::randn([700, 300], (Kind::Float, tch::Device::Cpu)) * Tensor::rand([700, 1], (Kind::Float, tch::Device::Cpu));
    let (plain, double) = (Nf4::quantize(&w, false).unwrap(), Nf4::quantize(&w, true).unwrap());
    assert!(double.codes.equal(&plain.codes), "the 4-bit codes are plain NF4's");
    assert_eq!((double.absmax.kind(), double.absmax.size()), (Kind::Uint8, vec![3282]));
    let nested = Vec::<f32>::try_from(double.nested.as_ref().unwrap()).unwrap();
    let exact = Vec::<f32>::try_from(&plain.absmax).unwrap();
    assert_eq!(nested.len(), 1 + 13);
    let mean = exact.iter().map(|&x| x as f64).sum::<f64>() / exact.len() as f64;
    assert!((nested[0] as f64 - mean).abs() < 1e-5 * mean, "the mean taken off: {} against {mean}", nested[0]);
    let scales = Vec::<f32>::try_from(&double.scales()).unwrap();
    for (g, chunk) in exact.chunks(256).enumerate() {
        let top = chunk.iter().map(|&x| (x - nested[0]).abs()).fold(0.0, f32::max);
        assert_eq!(nested[1 + g], top, "group {g}'s scale");
        for (i, &x) in chunk.iter().enumerate() {
            // The widest gap of the code is 0.0140625 (near ±1).
            let err = (scales[256 * g + i] - x).abs();
            assert!(err <= 0.00703125 * top * 1.0001, "scale {}: {x} held as {} (group maximum {top})", 256 * g + i, scales[256 * g + i]);
        }
    }
    // The weight is each code's value times its block's scale as held.
    let per_block = (double.dequantize(Kind::Float).view([-1]).constant_pad_nd([0, 3282 * 64 - 210_000]).view([-1, 64]), plain.dequantize(Kind::Float).view([-1]).constant_pad_nd([0, 3282 * 64 - 210_000]).view([-1, 64]));
    let want = &per_block.1 / plain.absmax.unsqueeze(1) * Tensor::from_slice(&scales).unsqueeze(1);
    assert!(bool::try_from((&per_block.0 - &want).abs().le_tensor(&(want.abs() * 1e-6 + 1e-9)).all()).unwrap());
    // Bytes: 105,000 of codes, one a block of scales, the mean and 13 group scales.
    assert_eq!((plain.bytes(), double.bytes()), (105_024 + 4 * 3282, 105_024 + 3282 + 4 * 14));
    // The layer over it is the dequantized weight's, forward and backward.
    let x = Tensor::randn([4, 300], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let g = Tensor::randn([4, 700], (Kind::Float, tch::Device::Cpu));
    let y = double.linear(&x);
    let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false).pop().unwrap();
    let x2 = x.detach().set_requires_grad(true);
    let y2 = x2.linear::<Tensor>(&double.dequantize(Kind::Float), None);
    let gx2 = Tensor::run_backward(&[(&y2 * &g).sum(Kind::Float)], &[&x2], false, false).pop().unwrap();
    assert!(y.equal(&y2) && gx.equal(&gx2));
}

/// The resident memory of this process, in bytes.
fn resident() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024.0
}

/// A linear layer over NF4 weights gives the dequantized weight's outputs and input gradients
/// (float32 and bf16), and like bitsandbytes' MatMul4Bit keeps the codes, not the weight, for
/// the backward pass: after a forward pass over a 256 MiB weight the process holds nothing of
/// it, where the plain layer keeps the dequantized copy until backward.
#[test]
fn an_nf4_linear_has_the_dequantized_weights_gradients_and_keeps_only_the_codes_for_backward() {
    use roux::run::model::nf4::Nf4;
    tch::manual_seed(1);
    let q = Nf4::quantize(&Tensor::randn([96, 160], (Kind::Float, tch::Device::Cpu)), false).unwrap();
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = Tensor::randn([3, 5, 160], (Kind::Float, tch::Device::Cpu)).to_kind(kind).set_requires_grad(true);
        let y = q.linear(&x);
        let g = Tensor::randn([3, 5, 96], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
        let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false).pop().unwrap();
        let x2 = x.detach().set_requires_grad(true);
        let y2 = x2.linear::<Tensor>(&q.dequantize(kind), None);
        let gx2 = Tensor::run_backward(&[(&y2 * &g).sum(Kind::Float)], &[&x2], false, false).pop().unwrap();
        assert_eq!(y.kind(), kind);
        assert!(y.equal(&y2), "{kind:?}: outputs differ");
        assert!(gx.equal(&gx2), "{kind:?}: input gradients differ");
    }

    let q = Nf4::quantize(&Tensor::randn([8192, 8192], (Kind::Float, tch::Device::Cpu)), false).unwrap();
    let x = Tensor::randn([1, 8192], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let held = |plain: bool| {
        let before = resident();
        let y = if plain { x.linear::<Tensor>(&q.dequantize(Kind::Float), None) } else { q.linear(&x) };
        let after = resident();
        let gx = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false).pop().unwrap();
        assert_eq!(gx.size(), [1, 8192]);
        after - before
    };
    let mib = 1048576.0;
    let (nf4, plain) = (held(false), held(true));
    assert!(nf4 < 64.0 * mib && plain > 192.0 * mib, "a forward pass left {:.0} MiB held (NF4) and {:.0} MiB (plain)", nf4 / mib, plain / mib);
}

/// QLoRA (`lora { quantize_base = nf4 }`): the base's projections held as NF4, 0.5625 bytes an
/// element, the rest in float32 (or bf16); adapters trained against the quantized weights, the
/// held-out loss falling; `roux plan` holding what the run held; `roux merge` folding them into
/// the weights they were trained against; DPO with its reference the same NF4 base.
#[test]
fn qlora_trains_adapters_against_an_nf4_base_in_the_memory_the_plan_says() {
    use roux::run::model::nf4::Nf4;
    let out = scratch("qlora");
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
    let q = text
        .replace("adapter = lora { rank = 4, alpha = 8, targets", "adapter = lora { rank = 4, alpha = 8, quantize_base = nf4, targets")
        .replace("    beta = 0.1\n", "    beta = 0.1\n    adapter = lora { rank = 4, quantize_base = nf4 }\n    optimizer = adamw { lr = 3e-3 }\n")
        .replace("    optimizer = adamw { lr = 1e-4 }\n  }\n  stage table", "  }\n  stage table")
        .replace("dpo = po.model", "dpo = merge(po.adapter)");
    assert_eq!(q.matches("quantize_base = nf4").count(), 2);
    std::fs::write(out.join("fp32.roux"), &q).unwrap();
    // (The bf16 run also holds the scales in 8 bits: double quantization.)
    std::fs::write(out.join("bf16.roux"), all_bf16(&q.replace("quantize_base = nf4", "quantize_base = nf4, double_quant = true"))).unwrap();
    // tiny-lifecycle: 35,200 parameters, of which the projections are 2 × (4 × 32² + 2 × 32 × 128)
    // = 24,576, in 384 blocks of 64: 12,288 bytes of codes and 1,536 of scales; or, double
    // quantized, 384 bytes of scales and for each of the 12 weights its mean and one float32
    // scale of its (fewer than 256) scales.
    let (projections, rest) = (24_576u64, 35_200 - 24_576);
    let plain = projections / 2 + 4 * projections / 64;
    let double = projections / 2 + projections / 64 + 12 * (4 + 4);
    assert_eq!((plain, double), (13_824, 12_768));
    for (recipe, bytes, nf4) in [("fp32.roux", 4, plain), ("bf16.roux", 2, double)] {
        let dir = out.join(recipe.trim_end_matches(".roux"));
        let o = roux(&["run", out.join(recipe).to_str().unwrap(), "--out", dir.to_str().unwrap(), "--stage", "pretrain", "--stage", "sft", "--stage", "po"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let sft = report(&dir.join("tiny-lifecycle/sft"));
        assert_eq!(sft["weight_bytes"].as_u64(), Some(bytes * rest + nf4), "{recipe}");
        assert_eq!(sft["lora"]["quantize_base"], "nf4");
        let (before, after) = (sft["val_loss"]["before"].as_f64().unwrap(), sft["val_loss"]["after"].as_f64().unwrap());
        assert!(after < before - 0.05, "{recipe}: held-out loss {before} → {after}");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["plan", out.join(recipe).to_str().unwrap(), "--json", "--world", "1"]).output().unwrap();
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let sft_plan = plan["processes"].as_array().unwrap().iter().find(|p| p["stage"] == "sft").unwrap().clone();
        assert_eq!(sft_plan["weight_bytes"].as_u64().unwrap() - sft_plan["gradient_bytes"].as_u64().unwrap(), bytes * rest + nf4, "{recipe}");
        let po = metrics(&dir.join("tiny-lifecycle/po"));
        assert!(!po.is_empty() && po.iter().all(|m| m["loss"].as_f64().is_some_and(f64::is_finite)), "{po:?}");
    }

    // The merged model: an untargeted projection is its pretrained weight rounded to NF4; a
    // targeted one that plus the adapter's s·B·A (s = alpha / rank = 2).
    let run = out.join("fp32/tiny-lifecycle");
    let merged = out.join("merged");
    let o = roux(&["merge", run.join("sft").to_str().unwrap(), "-o", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: std::path::PathBuf| Tensor::read_safetensors(p).unwrap().into_iter().collect::<std::collections::HashMap<_, _>>();
    let (pre, adapter, merged) = (read(run.join("pretrain/model.safetensors")), read(run.join("sft/adapter.safetensors")), read(merged.join("model.safetensors")));
    let rounded = |name: &str| Nf4::quantize(&pre[name], false).unwrap().dequantize(Kind::Float);
    let k = "blocks.1.attn.k.weight";
    assert!(merged[k].equal(&rounded(k)) && !merged[k].equal(&pre[k]), "an untargeted projection is its NF4 rounding");
    let q = "blocks.1.attn.q";
    let folded = rounded(&format!("{q}.weight")) + adapter[&format!("{q}.lora_B.weight")].matmul(&adapter[&format!("{q}.lora_A.weight")]) * 2.0;
    let diff = (&merged[&format!("{q}.weight")] - folded).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "merged `{q}` is {diff} from NF4(W) + s·B·A");
    assert!(merged["tok_emb.weight"].equal(&pre["tok_emb.weight"]), "embeddings are not quantized");
}

/// A QLoRA stage reads a stage's weights into NF4 as they come (never the base whole in float32)
/// and holds them so: its peak memory is below a bf16 LoRA stage's on the same base by at least
/// what `roux plan` says NF4 saves (19M parameters, 94% of them in projections).
#[test]
fn a_qlora_stage_peaks_lower_than_bf16_lora_by_what_the_plan_saves() {
    let out = scratch("qlora-memory");
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::fs::copy(root().join("data/tinyshakespeare.txt"), out.join("data/tinyshakespeare.txt")).unwrap();
    let stage = |name: &str, quantize: &str| {
        format!("  stage {name} = finetune(pretrain.model, instr) {{\n    adapter = lora {{ rank = 4{quantize} }}\n    steps = 2\n    batch = 2\n    eval_every = 2\n    eval_examples = 2\n    max_new = 2\n    precision = bf16\n  }}\n")
    };
    let recipe = format!(
        "experiment \"big\" {{\n  seed = 5\n  data corpus = text(\"data/tinyshakespeare.txt\") {{ context = 32 }}\n  data instr = synthetic.instructions {{ tasks = [reverse], examples = 100, max_len = 4 }}\n  model lm = transformer {{ vocab = corpus.vocab, context = corpus.context, d_model = 512, layers = 6, heads = 8 }}\n  stage pretrain = train(lm, corpus) {{ steps = 1, batch = 2, eval_every = 1, eval_batches = 1 }}\n{}{}}}\n",
        stage("nf4", ", quantize_base = nf4"),
        stage("bf16", "")
    );
    std::fs::write(out.join("r.roux"), recipe).unwrap();
    let run = |stage: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
            .args(["run", out.join("r.roux").to_str().unwrap(), "--out", out.join("runs").to_str().unwrap(), "--stage", stage])
            .env("ROUX_QUIET", "1")
            .env("ROUX_MALLOC", "exact")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        report(&out.join("runs/big").join(stage))["peak_host_memory_bytes"].as_f64().unwrap()
    };
    run("pretrain");
    let (nf4, bf16) = (run("nf4"), run("bf16"));
    let o = roux(&["plan", out.join("r.roux").to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let planned = |s: &str| plan["stages"].as_array().unwrap().iter().find(|p| p["name"] == s).unwrap()["memory_bytes"].as_f64().unwrap();
    let (measured, saved) = (bf16 - nf4, planned("bf16") - planned("nf4"));
    let mib = |b: f64| b / 1048576.0;
    eprintln!("QLoRA peak {:.1} MiB, bf16 LoRA {:.1} MiB: {:.1} MiB lower; the plan saves {:.1} MiB", mib(nf4), mib(bf16), mib(measured), mib(saved));
    assert!(saved > 15.0 * 1048576.0 && measured > 0.9 * saved, "QLoRA's peak is {:.1} MiB below bf16 LoRA's; the plan saves {:.1} MiB", mib(measured), mib(saved));
}
