//! `roux export --to hf`: Python `transformers` loads the export and computes the same logits as
//! roux to 1e-4, for a GPT-2-layout and a Llama-layout model.
#![cfg(feature = "torch")]

use std::path::{Path, PathBuf};
use std::process::Command;

use roux::run::model::Model;
use tch::{Device, Kind, Tensor};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A run directory holding a seeded model of `fixture`'s first model, as `roux run` leaves it.
fn fake_run(fixture: &str, dir: &Path, tweak: impl Fn(&mut roux::recipe::ModelSpec)) -> (Model, PathBuf) {
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
    let (model, run) = fake_run(fixture, &dir, tweak);
    let hf = dir.join("hf");
    let o = Command::new(env!("CARGO_BIN_EXE_roux")).args(["export", run.to_str().unwrap(), "--to", "hf", "-o", hf.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains(want_layout), "{err}");
    let tokens: Vec<i64> = (0..24).map(|i| (i * 37 + 11) % 256).collect();
    let logits = tch::no_grad(|| model.forward(&Tensor::from_slice(&tokens).view([1, -1]), false)).to_kind(Kind::Double);
    let ours: Vec<f64> = Vec::<f64>::try_from(&logits.view([-1])).unwrap();
    std::fs::write(dir.join("roux.json"), serde_json::json!({"tokens": tokens, "logits": ours}).to_string()).unwrap();
    // The project venv's Python (scripts/env.sh puts it first on PATH; the test command installs
    // transformers into it).
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
d = json.load(open(sys.argv[2]))
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
with torch.no_grad():
    out = m(torch.tensor([d["tokens"]])).logits.double().flatten()
ours = torch.tensor(d["logits"], dtype=torch.float64)
print(f"{type(m).__name__} max |Δlogit| = {(out - ours).abs().max().item():.3e} over {ours.numel()} logits")
"#;
    let o = Command::new("python").args(["-c", script, hf.to_str().unwrap(), dir.join("roux.json").to_str().unwrap()]).output().expect("python on PATH (source scripts/env.sh)");
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
