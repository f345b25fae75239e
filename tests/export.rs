//! `roux export --to hf` and `--to peft`: Python `transformers` (and `peft`) load the exports and
//! compute the same logits as roux to 1e-4, for a GPT-2-layout and a Llama-layout model (and,
//! for a Llama-layout adapter, the same gradients; for a reward model, the same scores).
#![cfg(feature = "torch")]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use roux::run::model::Model;
use tch::{Device, Kind, Tensor};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A run directory holding a seeded model of `fixture`'s first model, as `roux run` leaves it.
fn fake_run(fixture: &str, dir: &Path, tweak: &dyn Fn(&mut roux::recipe::ModelSpec)) -> (Model, PathBuf) {
    let c = roux::frontend::compile(&root().join("tests/fixtures").join(fixture)).unwrap();
    let mut spec = c.recipe.unwrap().models[0].clone();
    tweak(&mut spec);
    tch::manual_seed(7);
    let m = Model::new(&spec, Device::Cpu).unwrap();
    // Non-trivial norms and biases, so a wrong mapping shows.
    tch::no_grad(|| {
        for (n, p) in m.names.iter().zip(&m.params) {
            if n.ends_with("norm1.weight") || n.ends_with("norm2.weight") || n.ends_with("norm_f.weight") || n.ends_with(".bias") {
                let _ = p.shallow_clone().normal_(1.0, 0.1);
            }
        }
    });
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("resolved.json"), serde_json::json!({ "model": spec }).to_string()).unwrap();
    Tensor::write_safetensors(&m.named(), run.join("model.safetensors")).unwrap();
    (m, run)
}

fn roundtrip(fixture: &str, name: &str, want_layout: &str, tweak: impl Fn(&mut roux::recipe::ModelSpec)) {
    let dir = root().join("target/test-runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let (model, run) = fake_run(fixture, &dir, &tweak);
    let hf = dir.join("hf");
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", run.to_str().unwrap(), "--to", "hf", "-o", hf.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains(want_layout), "{err}");
    let tokens: Vec<i64> = (0..24).map(|i| (i * 37 + 11) % 256).collect();
    let logits = tch::no_grad(|| model.forward(&Tensor::from_slice(&tokens).view([1, -1]), false)).to_kind(Kind::Double);
    let ours: Vec<f64> = Vec::<f64>::try_from(&logits.view([-1])).unwrap();
    std::fs::write(dir.join("roux.json"), serde_json::json!({"tokens": tokens, "logits": ours}).to_string()).unwrap();
    assert_python_logits(name, &format!("{LOAD}\nm = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n{COMPARE}"), &hf, &dir);
    // A byte-level model's tokenizer: AutoTokenizer gives the byte ids roux trained on, decodes
    // them back, and its end token (the data's "\n") is inside the vocabulary.
    let script = "import sys\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\ntext = 'h\\u00e9llo\\nw\\u00f6rld ~ \\u2603'\nids = t.encode(text, add_special_tokens=False)\nassert ids == list(text.encode()), ids\nassert t.decode(ids) == text\nassert t.eos_token_id == 10 and len(t) == 256, (t.eos_token_id, len(t))\nprint('ok')";
    let o = common::python(script, &[hf.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// Loads roux's tokens and logits (argv[2]) and the checkpoint's libraries.
const LOAD: &str = "import json, sys, torch\nfrom transformers import AutoModelForCausalLM\nd = json.load(open(sys.argv[2]))";
/// Where roux sent its gradients, compares them with `m`'s (relative 1e-4).
const GRADS: &str = r#"if d["grads"]:
    for n, p in m.named_parameters():
        p.requires_grad_("lora_" in n)
    m(torch.tensor([d["tokens"]])).logits.pow(2).mean().backward()
    for k, ours in d["grads"].items():
        theirs = sum(p.grad.double().pow(2).sum().item() for n, p in m.named_parameters() if k in n and p.grad is not None)
        assert abs(theirs - ours) <= 1e-4 * max(abs(theirs), 1e-12), (k, theirs, ours)
        print(f"{k}: sum of squared gradients {theirs:.6e} (roux {ours:.6e})")"#;
/// Runs `m` on the tokens and prints the largest logit difference.
const COMPARE: &str = "with torch.no_grad():\n    out = m(torch.tensor([d[\"tokens\"]])).logits.double().flatten()\nours = torch.tensor(d[\"logits\"], dtype=torch.float64)\nprint(f\"{type(m).__name__} max |Δlogit| = {(out - ours).abs().max().item():.3e} over {ours.numel()} logits\")";

/// Run `script` with the project venv's Python (scripts/env.sh puts it first on PATH; the test
/// command installs transformers and peft into it; `common::python`: one process for the file)
/// on `model` and `dir`/roux.json; its logits must be roux's within 1e-4.
fn assert_python_logits(name: &str, script: &str, model: &Path, dir: &Path) {
    let o = common::python(script, &[model.to_str().unwrap(), dir.join("roux.json").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "python failed:\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let diff: f64 = out.rsplit("= ").next().and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(f64::INFINITY);
    eprintln!("{name}: {out}");
    assert!(diff < 1e-4, "{out}");
}

#[test]
fn gpt2_layout_export_gives_the_same_logits_in_transformers() {
    // tiny.roux: learned positions, layernorm, gelu, biases; dropout off for the comparison.
    roundtrip("tiny.roux", "export-gpt2", "GPT-2 layout", |s| s.dropout = 0.0);
}

#[test]
fn llama_layout_export_gives_the_same_logits_in_transformers() {
    // tiny-llama.roux: rope, rmsnorm, swiglu, untied head, no biases; made grouped-query
    // (2 query heads share 1 key/value head) to cover num_key_value_heads.
    roundtrip("tiny-llama.roux", "export-llama", "Llama layout", |s| {
        s.dropout = 0.0;
        s.kv_heads = 1;
    });
}

#[test]
fn a_post_norm_model_with_whole_qk_norm_exports_as_olmo2() {
    // tiny-llama with norms after its sublayers and QK-norm over the whole projections: OLMo 2.
    roundtrip("tiny-llama.roux", "export-olmo2", "OLMo 2 layout", |s| {
        s.dropout = 0.0;
        s.norm_placement = roux::recipe::NormPlacement::Post;
        s.qk_norm = true;
        s.qk_norm_whole = true;
    });
    // Either alone has no dense layout: said, nothing written (Qwen3's QK-norm is per head).
    let dir = root().join("target/test-runs/export-whole-qk-norm");
    let _ = std::fs::remove_dir_all(&dir);
    let (_, run) = fake_run("tiny-llama.roux", &dir, &|s| {
        s.qk_norm = true;
        s.qk_norm_whole = true;
    });
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", run.to_str().unwrap(), "--to", "hf", "-o", dir.join("hf").to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("model `lm` has QK-norm over the whole projections, which the Qwen3 layout has no setting for (OLMo 2 is rope + rmsnorm + swiglu with both, no biases and no window)"),
        "{err}"
    );
    assert!(!dir.join("hf").exists());
}

#[test]
fn a_windowed_llama_layout_exports_as_mistral() {
    // An 8-token attention window in every block over 24 tokens: Mistral's `sliding_window`.
    roundtrip("tiny-llama.roux", "export-mistral", "Mistral layout", |s| {
        s.dropout = 0.0;
        s.window = Some(8);
    });
    // In some blocks only, the Llama layout has no setting for it: said, nothing written.
    let dir = root().join("target/test-runs/export-window-blocks");
    let _ = std::fs::remove_dir_all(&dir);
    let (_, run) = fake_run("tiny-llama.roux", &dir, &|s| {
        s.window = Some(8);
        s.window_layers = Some(vec![1]);
    });
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", run.to_str().unwrap(), "--to", "hf", "-o", dir.join("hf").to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("model `lm` has sliding-window attention in some blocks, which the Llama layout has no setting for (Mistral's windows every block of a model without biases; Qwen2's and Qwen3's name blocks)"),
        "{err}"
    );
    assert!(!dir.join("hf").exists());
}

/// A LoRA stage (random, nonzero adapters on `targets`; with `dora`, random magnitudes too)
/// exported with `--to peft` beside its base's `--to hf`: `peft.PeftModel` over `transformers`
/// gives roux's logits to 1e-4.
fn peft_roundtrip(fixture: &str, name: &str, targets: &[&str], (rslora, dora): (bool, bool), tweak: impl Fn(&mut roux::recipe::ModelSpec)) -> (String, PathBuf, PathBuf) {
    let dir = root().join("target/test-runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let (mut model, base_run) = fake_run(fixture, &dir, &tweak);
    let lora = roux::recipe::LoraSpec { rank: 3, alpha: 6.0, dropout: 0.0, rslora, dora, quantize_base: Default::default(), double_quant: false, targets: targets.iter().map(|t| t.to_string()).collect() };
    model.attach_lora(&lora).unwrap();
    // rsLoRA scales by α/√r (6/√3), plain LoRA by α/r (2).
    assert!((model.lora.scale - if rslora { 6.0 / 3f64.sqrt() } else { 2.0 }).abs() < 1e-12, "{}", model.lora.scale);
    tch::no_grad(|| {
        for b in &model.lora.b {
            let _ = b.shallow_clone().normal_(0.0, 0.2); // B starts at zero: make the adapter matter
        }
        for m in &model.lora.magnitude {
            let _ = m.shallow_clone().g_mul_(&m.rand_like().g_mul_scalar(0.5).g_add_scalar(0.75)); // ‖W‖ × U(0.75, 1.25)
        }
    });
    assert_eq!(model.lora.magnitude.len(), if dora { model.lora.a.len() } else { 0 });
    let run = dir.join("sft");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("resolved.json"), serde_json::json!({ "model": model.spec(), "stage": { "lora": lora } }).to_string()).unwrap();
    Tensor::write_safetensors(&model.lora.named(), run.join("adapter.safetensors")).unwrap();
    let (hf, adapter) = (dir.join("hf"), dir.join("peft"));
    for args in [vec!["export", base_run.to_str().unwrap(), "--to", "hf", "-o", hf.to_str().unwrap()], vec!["export", run.to_str().unwrap(), "--to", "peft", "-o", adapter.to_str().unwrap(), "--base", hf.to_str().unwrap()]] {
        let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let tokens: Vec<i64> = (0..24).map(|i| (i * 53 + 5) % 256).collect();
    let x = Tensor::from_slice(&tokens).view([1, -1]);
    let logits = tch::no_grad(|| model.forward(&x, false)).to_kind(Kind::Double);
    let plain = tch::no_grad(|| fake_run(fixture, &dir.join("again"), &tweak).0.forward(&x, false)).to_kind(Kind::Double);
    assert!((&logits - &plain).abs().max().double_value(&[]) > 1e-2, "the adapters change nothing: the test would prove nothing");
    let ours: Vec<f64> = Vec::<f64>::try_from(&logits.view([-1])).unwrap();
    // Where every PEFT module is one roux adapter (no fused block), the gradients of mean(logit²)
    // too: Σ‖∇B‖² and Σ‖∇m‖² as peft's (DoRA's row norms held constant in backward, as peft holds them).
    let grads = (!fixture.starts_with("tiny.")).then(|| {
        model.forward(&x, false).pow_tensor_scalar(2).mean(Kind::Float).backward();
        let sq = |ts: &[Tensor]| ts.iter().map(|t| t.grad().to_kind(Kind::Double).pow_tensor_scalar(2).sum(Kind::Double).double_value(&[])).sum::<f64>();
        serde_json::json!({"lora_B": sq(&model.lora.b), "lora_magnitude_vector": sq(&model.lora.magnitude)})
    });
    std::fs::write(dir.join("roux.json"), serde_json::json!({"tokens": tokens, "logits": ours, "grads": grads}).to_string()).unwrap();
    (name.to_string(), adapter, dir)
}

/// What `peft_roundtrip`'s cases run in transformers + peft: logits (and gradients) within 1e-4.
const PEFT: &str = "from peft import PeftModel\nbase = AutoModelForCausalLM.from_pretrained(json.load(open(sys.argv[1] + \"/adapter_config.json\"))[\"base_model_name_or_path\"], dtype=torch.float32)\nm = PeftModel.from_pretrained(base, sys.argv[1]).eval()";

#[test]
fn a_lora_stage_exports_as_a_peft_adapter_with_the_same_logits() {
    // GPT-2 keeps q, k, v in one Conv1D: q and v adapters become one of rank 6 on c_attn; o and
    // w2 both land on a module called c_proj (attention's and the MLP's).
    let cases = [
        peft_roundtrip("tiny.roux", "peft-gpt2", &["attn.q", "attn.v", "attn.o", "ffn.w1", "ffn.w2"], (false, false), |s| s.dropout = 0.0),
        // The same under rank-stabilised scaling (PEFT's use_rslora): the fused q, v block of rank 6
        // keeps α/√3 through alpha_pattern √2·α.
        peft_roundtrip("tiny.roux", "peft-gpt2-rslora", &["attn.q", "attn.v", "ffn.w1"], (true, false), |s| s.dropout = 0.0),
        // DoRA: the fused block's magnitude covers q and v from the adapter and k's rows with ‖W‖
        // read from the base export, where PEFT's factor m/‖W‖ must come out as 1.
        peft_roundtrip("tiny.roux", "peft-gpt2-dora", &["attn.q", "attn.v", "attn.o", "ffn.w1"], (false, true), |s| s.dropout = 0.0),
        // Llama, grouped-query (k and v have one head's rows), every projection adapted.
        peft_roundtrip("tiny-llama.roux", "peft-llama", &["attn.q", "attn.k", "attn.v", "attn.o", "ffn.w1", "ffn.w2", "ffn.w3"], (false, false), |s| {
            s.dropout = 0.0;
            s.kv_heads = 1;
        }),
        peft_roundtrip("tiny-llama.roux", "peft-llama-dora", &["attn.q", "attn.v", "ffn.w2"], (true, true), |s| s.dropout = 0.0),
    ];
    for (name, adapter, dir) in &cases {
        assert_python_logits(name, &format!("{LOAD}\n{PEFT}\n{GRADS}\n{COMPARE}"), adapter, dir);
    }
    // Not a LoRA stage: the error says what to do instead.
    let dir = root().join("target/test-runs/peft-gpt2");
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", dir.join("run").to_str().unwrap(), "--to", "peft", "-o", dir.join("x").to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a LoRA stage (no adapter); `roux export") && err.contains("--to hf` exports a full model"), "{err}");
}

/// A reward model exports as transformers' `…ForSequenceClassification` (what TRL's
/// RewardTrainer saves): `AutoModelForSequenceClassification` scores rows of different lengths,
/// padded, as roux scores them, within 1e-4 — less the head's bias, a constant transformers' score
/// layer has no place for (0 unless `center_rewards` moves it: Bradley–Terry sees only
/// differences), which the export says and keeps in config.json. GPT-2 and Llama (LoRA) layouts.
#[test]
fn a_reward_model_exports_as_sequence_classification_with_the_same_scores() {
    let dir = common::scratch("export-reward");
    let recipe = dir.join("rm.roux");
    std::fs::write(
        &recipe,
        r#"experiment "rmx" {
  seed = 7
  data prefs = synthetic.preferences { tasks = [uppercase, reverse], pairs = 200, max_len = 4 }
  model g = transformer { vocab = 256, context = 32, d_model = 32, layers = 2, heads = 2 }
  model l = transformer { vocab = 256, context = 32, d_model = 32, layers = 2, heads = 4, kv_heads = 2, position = rope, norm = rmsnorm, ffn = mlp { act = swiglu }, bias = false, tie_embeddings = false }
  stage rg = reward_model(g, prefs) { steps = 10, batch = 8, center_rewards = 1, optimizer = adamw { lr = 1e-2 } }
  stage rl = reward_model(l, prefs) { steps = 10, batch = 8, adapter = lora { rank = 2 } }
}
"#,
    )
    .unwrap();
    let runs = dir.join("runs");
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", recipe.to_str().unwrap(), "--out", runs.to_str().unwrap()]).env("ROUX_QUIET", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = roux::frontend::compile(&recipe).unwrap().recipe.unwrap();
    let rows: Vec<Vec<i64>> = ["Q: uppercase ab\nA: AB\n", "Q: reverse abcd\nA: dcba ok\n", "Q: uppercase c\nA: x\n", "Q: reverse ba\nA: ab\n"].iter().map(|t| t.bytes().map(i64::from).collect()).collect();
    for (stage, layout, biased) in [("rg", "GPT2ForSequenceClassification", true), ("rl", "LlamaForSequenceClassification", false)] {
        let rm = roux::run::kit::artifacts::load_reward_model(&r, &runs.join("rmx"), stage, Device::Cpu).unwrap();
        let scores: Vec<f64> = Vec::<f64>::try_from(tch::no_grad(|| rm.score(&rows, false)).to_kind(Kind::Double)).unwrap();
        let hf = dir.join(format!("{stage}-hf"));
        let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", runs.join("rmx").join(stage).to_str().unwrap(), "--to", "hf", "-o", hf.to_str().unwrap()]).output().unwrap();
        let said = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{said}");
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        let bias = config["roux_reward_bias"].as_f64().unwrap();
        assert_eq!((config["architectures"][0].as_str(), bias != 0.0), (Some(layout), biased), "{config}");
        assert_eq!(said.contains(&format!("less the head's bias {bias:.6}")), biased, "{said}");
        std::fs::write(dir.join("roux.json"), serde_json::json!({"rows": rows, "scores": scores}).to_string()).unwrap();
        let script = format!(
            "import json, sys, torch\nfrom transformers import AutoModelForSequenceClassification\nd = json.load(open(sys.argv[2]))\nm = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n\
             n = max(map(len, d['rows']))\nx = torch.tensor([r + [0] * (n - len(r)) for r in d['rows']])\nwith torch.no_grad():\n    out = m(x).logits[:, 0].double() + {bias}\n\
             ours = torch.tensor(d['scores'], dtype=torch.float64)\nprint(f'{{type(m).__name__}} max |Δscore| = {{(out - ours).abs().max().item():.3e}} over {{len(ours)}} rows')"
        );
        assert_python_logits(stage, &script, &hf, &dir);
    }
    // Every family's classifier class is one transformers has; the one it lacks (OLMoE) is refused.
    let classes: Vec<(String, bool)> = roux::hf::config::SUPPORTED.iter().map(|(n, f)| roux::hf::emit::classifier_class(*f).map_or((n.replace("ForCausalLM", "ForSequenceClassification"), false), |c| (c, true))).collect();
    let script = format!("import json, transformers\nfor name, known in json.loads({:?}):\n    assert hasattr(transformers, name) == known, name", serde_json::to_string(&classes).unwrap());
    let o = common::python(&script, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
