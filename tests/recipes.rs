//! Every shipped recipe checks, plans, lowers and survives print → parse; published counts hold.

use std::path::{Path, PathBuf};

use roux::lower::{lower_model, lower_stages, render};
use roux::plan::plan;

fn recipes() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "roux")).collect();
    v.sort();
    v
}

fn load(p: &Path) -> roux::recipe::Recipe {
    let c = roux::frontend::compile(p).unwrap();
    assert!(c.diagnostics.iter().all(|d| !d.is_error()), "{}: {:?}", p.display(), c.diagnostics);
    c.recipe.unwrap()
}

#[test]
fn every_recipe_checks_plans_and_lowers() {
    assert!(recipes().len() >= 2);
    for p in recipes() {
        let r = load(&p);
        let pl = plan(&r);
        assert_eq!(pl.models.len(), r.models.len());
        for m in &pl.models {
            assert!(m.params_total > 0 && m.flops_per_token_appendix_f > 0.0 && m.train_memory_bytes > 16 * m.params_total);
        }
        let models: Vec<_> = r.models.iter().map(lower_model).collect();
        let stages = lower_stages(&r);
        assert_eq!(stages.order().len(), r.stages.len());
        assert!(render::dot(&models, &stages, &r.experiment).starts_with("digraph"));
        let j = render::json(&models, &stages, &r.experiment);
        assert_eq!(j["models"].as_array().unwrap().len(), r.models.len());
    }
}

#[test]
fn printing_and_reparsing_is_the_identity() {
    for p in recipes().into_iter().chain(std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad")).unwrap().map(|e| e.unwrap().path())) {
        let text = std::fs::read_to_string(&p).unwrap();
        let Ok(ast) = roux::syntax::parse(&text) else { continue };
        let printed = roux::syntax::print::print(&ast);
        let again = roux::syntax::parse(&printed).unwrap_or_else(|e| panic!("{}: reprint does not parse: {e:?}\n{printed}", p.display()));
        assert_eq!(roux::syntax::print::print(&again), printed, "{}", p.display());
    }
}

#[test]
fn gpt2_small_has_its_published_parameter_count() {
    let r = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/gpt2-small.roux"));
    let m = &plan(&r).models[0];
    // Radford et al. 2019 / Hugging Face `gpt2`: 124,439,808 with the head tied to wte.
    assert_eq!(m.params_total, 124_439_808);
    // Without wte (50257·768) and wpe (1024·768): 124,439,808 − 38,597,376 − 786,432.
    assert_eq!(m.params_non_embedding, 85_056_000);
    assert_eq!(m.flops_per_token_6n, 6.0 * 124_439_808.0);
}

#[test]
fn appendix_f_flops_by_hand() {
    // GPT-2 small at seq 1024, forward, per token (Chinchilla Appendix F):
    //   embeddings 2·50257·768                        =    77,194,752
    //   per layer: qkv 2·3·768²      = 3,538,944
    //              logits 2·1024·768 = 1,572,864
    //              softmax 3·12·1024 =    36,864
    //              reduce 2·1024·768 = 1,572,864
    //              project 2·768²    = 1,179,648
    //              ffn 2·2·768·3072  = 9,437,184   → 17,338,368 × 12 = 208,060,416
    //   logits 2·768·50257                            =    77,194,752
    //   forward total                                 =   362,449,920; training ×3 = 1,087,349,760
    let r = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/gpt2-small.roux"));
    let m = &plan(&r).models[0];
    assert_eq!(m.seq, 1024);
    assert_eq!(m.flops_per_token_appendix_f, 1_087_349_760.0);
    // What MFU counts leaves out the embedding lookup: 3 · (362,449,920 − 77,194,752).
    assert_eq!(m.flops_per_token_model, 855_765_504.0);
}

#[test]
fn plan_json_has_the_documented_fields() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args(["plan", "--json"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/gpt2-small.roux"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["experiment"], "gpt2-small");
    assert_eq!(v["models"][0]["params_total"], 124_439_808u64);
    for k in ["name", "params_total", "params_active", "params_non_embedding", "flops_per_token_6n", "flops_per_token_appendix_f", "flops_per_token_model", "train_memory_bytes"] {
        assert!(v["models"][0].get(k).is_some(), "{k}");
    }
    for k in ["name", "kind", "after", "tokens", "flops"] {
        assert!(v["stages"][0].get(k).is_some(), "{k}");
    }
    // 300 steps × 32 × 1024 tokens.
    assert_eq!(v["stages"][0]["tokens"], 9_830_400u64);
}

#[test]
fn number_suffixes_and_arithmetic() {
    let dir = std::env::temp_dir().join(format!("roux-num-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.txt"), "abcdefgh".repeat(200)).unwrap();
    let src = r#"experiment "n" {
      data d = text("d.txt") { context = 2 ^ 3, split = 0.5 }
      model m = transformer { vocab = d.vocab, context = d.context * 2, d_model = 2k / 125, layers = (1 + 1) * 2 - 2, heads = 4,
                              ffn = mlp { hidden = 3 * d_model, act = swiglu } }
      stage s = train(m, d) { tokens = 0.0016M, batch = 2 }
    }"#;
    std::fs::write(dir.join("n.roux"), src).unwrap();
    let r = load(&dir.join("n.roux"));
    let m = &r.models[0];
    assert_eq!((m.context, m.d_model, m.layers, m.ffn.hidden), (16, 16, 2, 48));
    let roux::recipe::StageKind::Train(t) = &r.stages[0].kind else { panic!("a train stage") };
    // 1600 tokens / (2 × 8) per step = 100 steps.
    assert_eq!(t.steps, 100);
    assert_eq!(m.vocab, 256);
}

fn plan_of(name: &str) -> roux::plan::ModelPlan {
    let r = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes").join(name));
    plan(&r).models.remove(0)
}

#[test]
fn mixtral_has_its_published_total_and_active_parameters() {
    // Jiang et al. 2024 / the released checkpoint: 46,702,792,704 total, 12,879,925,248 active.
    // By hand: attention 2·4096² + 2·4096·1024 = 41,943,040, norms 8,192, router 32,768, experts
    // 8·3·4096·14336 = 1,409,286,144 per block; ×32, plus 2·32000·4096 embeddings and the final norm.
    let m = plan_of("mixtral-8x7b.roux");
    assert_eq!(m.params_total, 46_702_792_704);
    assert_eq!(m.params_active, 12_879_925_248);
    // A token runs through the active parameters: 6N is 6 · 12,879,925,248, not 6 · 46.7e9.
    assert_eq!(m.flops_per_token_6n, 6.0 * 12_879_925_248.0);
}

#[test]
fn switch_base_count_matches_the_arithmetic_in_its_recipe() {
    // 32128·768 embeddings + 12·(4·768² + 2·768) attention and norms + 6·2·768·2048 dense FFNs
    // + 6·(128·768 + 128·2·768·2048) expert layers + 768 final norm = 2,488,388,352.
    let m = plan_of("switch-base.roux");
    assert_eq!(m.params_total, 2_488_388_352);
    // Active: one expert per token: 6·(128·768 + 2·768·2048) replaces the 6 expert stacks.
    assert_eq!(m.params_active, 2_488_388_352 - 6 * 127 * 2 * 768 * 2048);
}

#[test]
fn moe_flops_follow_active_experts_not_the_expert_count() {
    // Same model with 8 and with 64 top-1 experts: per-token FLOPs differ only by the router
    // (2·d·E per MoE layer: 2 layers · 2·128·(64 − 8) = 28,672).
    let dir = std::env::temp_dir().join(format!("roux-moe-flops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.txt"), "x".repeat(10_000)).unwrap();
    let flops = |experts: usize| {
        let src = format!(
            r#"experiment "f" {{ data d = text("d.txt") {{ context = 64 }}
               model m = transformer {{ vocab = 256, context = 64, d_model = 128, layers = 4, heads = 4,
                 ffn = moe {{ experts = {experts}, every = 2, router = switch }} }} }}"#
        );
        std::fs::write(dir.join("f.roux"), src).unwrap();
        plan(&load(&dir.join("f.roux"))).models[0].flops_per_token_appendix_f
    };
    assert_eq!(flops(64) - flops(8), 3.0 * 28_672.0);
}

fn compile_text(name: &str, src: &str) -> roux::frontend::Compiled {
    let dir = std::env::temp_dir().join(format!("roux-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.txt"), "To be, or not to be. ".repeat(2000)).unwrap();
    std::fs::write(dir.join("r.roux"), src).unwrap();
    roux::frontend::compile(&dir.join("r.roux")).unwrap()
}

#[test]
fn a_budget_sizes_the_model_and_its_tokens() {
    let r = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/chinchilla-sized.roux"));
    let b = &r.budgets[0];
    // Chinchilla Approach 1 by hand: N = sqrt(2e13 / 120) = 408,248; D = 20·N = 8,164,966.
    assert!((b.params - 408_248.3).abs() < 1.0 && (b.tokens - 8_164_965.8).abs() < 10.0, "{b:?}");
    let m = plan(&r).models.remove(0);
    assert!((m.params_total as f64 / b.params - 1.0).abs() < 0.15, "sized to {} for {}", m.params_total, b.params);
    let roux::recipe::StageKind::Train(t) = &r.stages[0].kind else { panic!() };
    // tokens = compute.tokens → ceil(8,164,966 / (32 · 128)) = 1994 steps.
    assert_eq!(t.steps, 1994);
}

#[test]
fn straying_from_the_budget_warns_with_the_penalty() {
    let src = |d_model: usize| {
        format!(
            r#"experiment "w" {{
              data d = text("d.txt") {{ context = 64 }}
              budget c {{ flops = 1e13 }}
              model m = transformer {{ vocab = d.vocab, context = 64, d_model = {d_model}, layers = 2, heads = 4 }}
              stage s = train(m, d) {{ tokens = c.tokens, batch = 8 }}
            }}"#
        )
    };
    // N_opt = sqrt(1e13/120) = 288,675. d_model 128 × 2 layers ≈ 430K parameters: within ×2.
    let ok = compile_text("budget-ok", &src(128));
    assert!(ok.recipe.is_some() && ok.diagnostics.iter().all(|d| d.code != "W0401"), "{:?}", ok.diagnostics);
    // d_model 512 ≈ 6.4M parameters: ×22 the optimum, a warning (not an error) naming the penalty.
    let far = compile_text("budget-far", &src(512));
    assert!(far.recipe.is_some());
    let w = far.diagnostics.iter().find(|d| d.code == "W0401").expect("a W0401 warning");
    assert_eq!(w.severity, roux::diag::Severity::Warning);
    assert!(w.message.contains("over the best split of the same compute"), "{}", w.message);
}

#[test]
fn budget_and_fit_commands() {
    let bin = env!("CARGO_BIN_EXE_roux");
    let o = std::process::Command::new(bin).args(["budget", "--params", "1e9", "--law", "chinchilla", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Chinchilla Table 3 row: 1B parameters → 1.21e20 FLOPs, 20.2B tokens (we give 1.2e20, 20B).
    assert!((v["flops"].as_f64().unwrap() / 1.21e20 - 1.0).abs() < 0.02);
    assert!((v["tokens"].as_f64().unwrap() / 20.2e9 - 1.0).abs() < 0.02);
    let o = std::process::Command::new(bin).args(["budget", "--flops", "1e21", "--law", "chinchilla.approach3", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((v["params"].as_f64().unwrap() / 1.824e9 - 1.0).abs() < 0.005);
    assert!((v["tokens"].as_f64().unwrap() / 9.136e10 - 1.0).abs() < 0.005);
    let o = std::process::Command::new(bin).args(["budget", "--flops", "abc"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));

    // roux fit on points from a known law (α = 0.4, β = 0.3, E = 2, A = B = 500), three budgets.
    let law = |n: f64, d: f64| 2.0 + 500.0 / n.powf(0.4) + 500.0 / d.powf(0.3);
    let mut csv = String::from("params,tokens,loss\n");
    for c in [1e17, 1e18, 1e19] {
        for k in 0..7 {
            let n = 1e6 * 3f64.powi(k);
            let d = c / (6.0 * n);
            csv += &format!("{n},{d},{}\n", law(n, d));
        }
    }
    let dir = std::env::temp_dir().join(format!("roux-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.csv"), csv).unwrap();
    let o = std::process::Command::new(bin).args(["fit", dir.join("p.csv").to_str().unwrap(), "--json", "--bootstrap", "20", "--out", dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let f: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["E", "A", "B", "alpha", "beta", "a", "b", "G", "intervals"] {
        assert!(f.get(k).is_some(), "{k}");
    }
    // Noise-free points: the fit recovers the exponents closely.
    assert!((f["alpha"].as_f64().unwrap() - 0.4).abs() < 0.02 && (f["beta"].as_f64().unwrap() - 0.3).abs() < 0.02, "{f}");
    assert!(dir.join("isoflop.svg").exists());

    // The fit file is a law a budget can use: its optimum matches the true law's within 10%.
    std::fs::write(dir.join("d.txt"), "x".repeat(1000)).unwrap();
    std::fs::write(dir.join("b.roux"), r#"experiment "f" { budget c { flops = 1e18, law = fitted("fit.json") } }"#).unwrap();
    let r = load(&dir.join("b.roux"));
    let truth = roux::scaling::law::Parametric { e: 2.0, a: 500.0, b: 500.0, alpha: 0.4, beta: 0.3 }.optimum(1e18);
    assert!((r.budgets[0].params / truth.0 - 1.0).abs() < 0.1, "{} vs {}", r.budgets[0].params, truth.0);
}

#[test]
fn a_sweep_expands_into_checked_points() {
    let c = roux::frontend::compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/width-sweep.roux")).unwrap();
    // 3 widths × 2 norms; every point is its own experiment with its own model.
    assert_eq!(c.points.len(), 6);
    let names: Vec<&str> = c.points.iter().map(|r| r.experiment.as_str()).collect();
    assert!(names.contains(&"width-sweep-d_model=192,norm=rmsnorm"), "{names:?}");
    let widths: Vec<usize> = c.points.iter().map(|r| r.models[0].d_model).collect();
    assert_eq!(widths, vec![64, 128, 192, 64, 128, 192]);
    assert_eq!(c.points[3].models[0].norm, roux::recipe::Norm::Rmsnorm);
    // Each point knows where it lies (its run's resolved.json records it for the sweep's report).
    let at = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(c.points[4].sweep, [at("d_model", "128"), at("norm", "rmsnorm")]);
    assert!(c.recipe.as_ref().is_some_and(|r| r.sweep == [at("d_model", "64"), at("norm", "layernorm")]));
    // A point that fails says which one: heads = 4 does not divide 66.
    let bad = compile_text("sweep-bad", r#"experiment "s" {
      sweep w in [64, 66]
      data d = text("d.txt") { context = 32 }
      model m = transformer { vocab = 256, context = 32, d_model = w, layers = 1, heads = 4 }
    }"#);
    assert!(bad.points.is_empty() && bad.recipe.is_none());
    let e = bad.diagnostics.iter().find(|d| d.code == "E0220").expect("E0220");
    assert!(e.message.starts_with("[sweep w=66]"), "{}", e.message);
}

/// A sweep variable stands wherever a value may, constructors included: `router = r` under
/// `sweep r in [switch, topk]` gives one point per router.
#[test]
fn a_sweep_value_may_stand_for_a_constructor() {
    let dir = std::env::temp_dir().join(format!("roux-sweep-ctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = r#"experiment "routers" {
      sweep r in [switch, topk]
      model lm = transformer { vocab = 256, context = 64, d_model = 16, layers = 2, heads = 2, ffn = moe { experts = 4, router = r } }
    }"#;
    std::fs::write(dir.join("s.roux"), src).unwrap();
    let c = roux::frontend::compile(&dir.join("s.roux")).unwrap();
    assert!(c.diagnostics.iter().all(|d| !d.is_error()), "{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>());
    let routers: Vec<String> = c.points.iter().map(|p| serde_json::to_value(&p.models[0].moe.as_ref().unwrap().router).unwrap().to_string()).collect();
    assert_eq!(routers.len(), 2);
    assert!(routers[0].contains("capacity_factor") && !routers[1].contains("capacity_factor"), "{routers:?}");
}

/// Token counts of absurd stages saturate instead of wrapping around to a small number (1e15
/// steps of 2^24 sequences of 2^24 tokens wrapped to 2^63 tokens, and the FLOPs with them), and
/// the FLOPs are the true product: 6 · N · 1e15 · 2^48 for the fine-tuning stage.
#[test]
fn absurd_token_counts_saturate_and_flops_stay_the_product() {
    let text = r#"experiment "absurd" {
      data instr = synthetic.instructions { tasks = [reverse], examples = 64, max_len = 4 }
      data prefs = synthetic.preferences { tasks = [reverse], pairs = 64, max_len = 4 }
      model m = transformer { vocab = 256, context = 16777216, d_model = 16, layers = 1, heads = 2 }
      stage sft = finetune(m, instr) { steps = 1e15, batch = 16777216, packing = true }
      stage rm = reward_model(m, prefs) { steps = 1e15, batch = 16777216 }
      stage po = dpo(m, prefs) { steps = 1e15, batch = 16777216 }
      stage rl = grpo(policy = m, prompts = instr) { steps = 1e15, batch = 16777216, group = 4 }
      stage ppo = ppo(policy = m, reward = rm.model, prompts = instr) { steps = 1e15, batch = 16777216 }
    }"#;
    let c = roux::frontend::compile_source(roux::frontend::Source { path: "absurd.roux".into(), text: text.into() });
    let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let p = plan(&r);
    let n = p.models[0].params_total as f64;
    for s in &p.stages {
        assert_eq!(s.tokens, u64::MAX, "{}: {} tokens", s.name, s.tokens);
        assert!(s.flops > 1e38 && s.memory_bytes > 1 << 60, "{}: {} FLOPs, {} bytes", s.name, s.flops, s.memory_bytes);
    }
    let sft = p.stages.iter().find(|s| s.name == "sft").unwrap();
    let want = 6.0 * n * 1e15 * 2f64.powi(48);
    assert!((sft.flops / want - 1.0).abs() < 1e-12, "{} vs {want}", sft.flops);
}

/// `plan --world` at the limits: 65,536 processes of an 8e14-parameter model, each on 256
/// sequences of 2^24 tokens. The activations are past u64 and saturate, and so must the totals they are in
/// (they wrapped to a small number, which passed any `device_memory`); the bytes sent per step,
/// 8·(W−1)·N/W, are past u64 before the division and still exact.
#[test]
fn the_per_process_plan_saturates_and_sends_exact_bytes_at_the_limits() {
    let text = r#"experiment "huge" {
      data instr = synthetic.instructions { tasks = [reverse], examples = 64, max_len = 4 }
      model m = transformer { vocab = 256, context = 16777216, d_model = 262144, layers = 1000, heads = 4096 }
      stage sft = finetune(m, instr) { steps = 1, batch = 16777216 }
    }"#;
    let c = roux::frontend::compile_source(roux::frontend::Source { path: "huge.roux".into(), text: text.into() });
    let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let n = plan(&r).models[0].params_total;
    assert!(n > 8e14 as u64, "{n}");
    let p = &roux::plan::plan_world(&r, 65536).unwrap()[0];
    assert_eq!((p.micro_batch, p.activation_bytes, p.total_bytes), (256, u64::MAX, u64::MAX), "{p:?}");
    assert_eq!(p.sent_bytes_per_step as u128, 8 * 65535 * n as u128 / 65536);
}

/// W0409: a `train` stage that reads a corpus more than 4 times over says so before it runs,
/// with the count. By hand: tinyshakespeare's 1,115,394 bytes train on 0.9 of them, 1,003,855;
/// 5,000 steps × 16 × 64 = 5,120,000 tokens read each 5.1 times (1,000 steps: 1.02, no warning).
/// BPE tokens are bounded by the bytes: "at least". A mix counts each corpus by its weight: a
/// 10,000-byte file at weight 3 of 4 gets 0.75 × 1,024,000 = 768,000 of them, each 85.3 times
/// over its 9,000 training bytes; the play, 256,000 of 1,003,855, is under 4. A note (N0410)
/// gives each corpus of the mix its share, its tokens and its epochs.
#[test]
fn reading_a_corpus_more_than_four_times_is_a_warning_with_the_count() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/repeats");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small.txt"), "word ".repeat(2_000)).unwrap();
    let play = "../../../data/tinyshakespeare.txt";
    // (`name` the stage trains on, `extra` the play's keys.)
    let warned = |name: &str, extra: &str, steps: u64| -> Vec<String> {
        let mix = if name == "both" { "  data small = text(\"small.txt\") { context = 64 }\n  data both = mix(play, small) { weights = [1, 3] }\n" } else { "" };
        let recipe = format!("experiment \"x\" {{\n  data play = text(\"{play}\") {{ context = 64{extra} }}\n{mix}  model lm = transformer {{ vocab = {name}.vocab, context = 64, d_model = 32, layers = 1, heads = 2 }}\n  stage pretrain = train(lm, {name}) {{ steps = {steps}, batch = 16 }}\n}}\n");
        std::fs::write(dir.join("r.roux"), recipe).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        assert!(c.recipe.is_some(), "{:?}", c.diagnostics);
        c.diagnostics.iter().filter(|d| d.code == "W0409" || d.code == "N0410").map(|d| d.message.clone()).collect()
    };
    assert_eq!(warned("play", "", 1000), Vec::<String>::new());
    assert_eq!(warned("play", "", 5000), ["stage `pretrain` draws 5,120,000 tokens from the 1,003,855 training tokens of `play`: each 5.1 times"]);
    assert_eq!(warned("play", ", tokenizer = bpe { vocab = 512 }", 5000), ["stage `pretrain` draws 5,120,000 tokens from the 1,003,855 training tokens of `play`: each at least 5.1 times"]);
    assert_eq!(
        warned("both", "", 1000),
        [
            "stage `pretrain` draws 1,024,000 tokens from mix `both`: 25% from `play` (256,000 of its 1,003,855 training tokens, 0.26 epochs), 75% from `small` (768,000 of its 9,000 training tokens, 85.33 epochs)",
            "stage `pretrain` draws 768,000 tokens (75% of them by its weight) from the 9,000 training tokens of `small`: each 85.3 times"
        ]
    );
}
