//! `hf("…")` at check time, in the validator build too: what a checkpoint folder that cannot be
//! imported exactly gets told (texts pinned), from hand-written configs and safetensors files.

mod common;

use common::scratch;
use serde_json::{json, Value};
use std::path::Path;

/// A tiny Llama: d 8, 2 query heads sharing 1 key/value head, FFN 16, vocab 10, tied head.
fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 16,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    })
}

fn llama_tensors() -> Vec<(String, Vec<usize>)> {
    let l = "model.layers.0";
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![10, 8]), ("model.norm.weight".into(), vec![8])];
    for (n, s) in [
        ("input_layernorm", vec![8]),
        ("self_attn.q_proj", vec![8, 8]),
        ("self_attn.k_proj", vec![4, 8]),
        ("self_attn.v_proj", vec![4, 8]),
        ("self_attn.o_proj", vec![8, 8]),
        ("post_attention_layernorm", vec![8]),
        ("mlp.gate_proj", vec![16, 8]),
        ("mlp.up_proj", vec![16, 8]),
        ("mlp.down_proj", vec![8, 16]),
    ] {
        t.push((format!("{l}.{n}.weight"), s));
    }
    t
}

/// A float32 safetensors file of zeros with these tensors.
fn safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let (mut header, mut offset) = (serde_json::Map::new(), 0usize);
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let h = Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(vec![0u8; offset]);
    std::fs::write(path, out).unwrap();
}

/// A project with `ck/config.json` = `config` and, given tensors, `ck/model.safetensors`;
/// returns the diagnostics of `model base = hf("ck")` as (code, message).
fn check(name: &str, config: &Value, tensors: Option<&[(String, Vec<usize>)]>) -> Vec<(String, String)> {
    let dir = scratch(&format!("hf-check-{name}"));
    std::fs::create_dir_all(dir.join("ck")).unwrap();
    std::fs::write(dir.join("ck/config.json"), config.to_string()).unwrap();
    if let Some(t) = tensors {
        safetensors(&dir.join("ck/model.safetensors"), t);
    }
    diagnostics(&dir)
}

fn diagnostics(dir: &Path) -> Vec<(String, String)> {
    std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  model base = hf(\"ck\")\n}\n").unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    c.diagnostics.iter().map(|d| (d.code.to_string(), d.message.clone())).collect()
}

#[test]
fn a_matching_checkpoint_checks_clean_and_is_counted_exactly() {
    assert_eq!(check("ok", &llama_config(), Some(&llama_tensors())), vec![]);
    // The config alone is enough to plan.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/hf-check-ok");
    std::fs::remove_file(dir.join("ck/model.safetensors")).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let spec = &c.recipe.unwrap().models[0];
    let n: u64 = roux::arith::lower_model(spec).params().iter().map(|p| p.numel()).sum();
    // 10·8 embedding + 8 final norm + 8 + 64 + 32 + 32 + 64 + 8 + 3·128: by hand, 680.
    assert_eq!(n, 680);
    assert_eq!(spec.checkpoint.as_ref().unwrap().files, Vec::<String>::new());
}

#[test]
fn an_architecture_roux_cannot_compute_is_named_with_the_supported_list() {
    let mut c = llama_config();
    c["architectures"] = json!(["BertForMaskedLM"]);
    assert_eq!(
        check("bert", &c, None),
        vec![("E0216".into(), "`ck/config.json` architecture `BertForMaskedLM` is not supported; roux reads GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM, OlmoeForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration".into())]
    );
    let mut c = llama_config();
    c["architectures"] = json!(["MistralForCausalLM"]);
    c["sliding_window"] = json!(8);
    // A window shorter than the context is read (tests/hf.rs holds its logits to transformers').
    assert_eq!(check("window", &c, None), vec![]);
    c["layer_types"] = json!(["chunked_attention"]);
    assert_eq!(check("chunked", &c, None)[0].1, "`ck/config.json` `layer_types` holds \"chunked_attention\"; roux's blocks attend fully or through `sliding_window`");
    c["architectures"] = json!(["Qwen2ForCausalLM"]);
    c["layer_types"] = json!(["sliding_attention"]);
    assert_eq!(check("no-window", &c, None)[0].1, "`ck/config.json` `layer_types` names sliding-attention blocks, but `use_sliding_window` is false");
    c["layer_types"] = json!(["full_attention", "sliding_attention"]);
    assert_eq!(check("types", &c, None)[0].1, "`ck/config.json` `layer_types` names 2 blocks; the model has 1");
    let mut c = llama_config();
    c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    assert_eq!(check("yarn", &c, None)[0].1, "`ck/config.json` rope type `yarn` is not supported (roux has default and llama3)");
}

#[test]
fn every_number_of_a_config_has_a_range() {
    for (key, value, want) in [
        // Each size within the limit a recipe has for it (arith::SIZE_LIMITS).
        ("vocab_size", json!(1_000_000_000_000u64), "`vocab_size` = 1000000000000 is not a whole number from 1 to 16777216"),
        ("num_hidden_layers", json!(0), "`num_hidden_layers` = 0 is not a whole number from 1 to 10000"),
        ("num_hidden_layers", json!(10_001), "`num_hidden_layers` = 10001 is not a whole number from 1 to 10000"),
        ("hidden_size", json!("8"), "`hidden_size` = \"8\" is not a whole number from 1 to 1048576"),
        ("num_attention_heads", json!(65_537), "`num_attention_heads` = 65537 is not a whole number from 1 to 65536"),
        ("rms_norm_eps", json!(2.0), "norm ε 2 is not in (0, 1)"),
        ("num_key_value_heads", json!(3), "`num_key_value_heads` = 3 does not divide `num_attention_heads` = 2"),
        // A size derived from others has the range of one written out (it is, on export).
        ("hidden_size", json!(1 << 20), "`head_dim` (absent: 524288, from the other sizes) is not a whole number from 1 to 65536"),
    ] {
        let mut c = llama_config();
        c[key] = value;
        let d = check("range", &c, None);
        assert_eq!((d[0].0.as_str(), d[0].1.as_str()), ("E0216", format!("`ck/config.json` {want}").as_str()), "{key}");
    }
}

#[test]
fn tensors_that_differ_from_the_config_are_named() {
    let mut t = llama_tensors();
    t.retain(|(n, _)| !n.ends_with("up_proj.weight"));
    assert_eq!(check("missing", &llama_config(), Some(&t)), vec![("E0217".into(), "checkpoint `ck` has no tensor `model.layers.0.mlp.up_proj.weight` (shape [16, 8])".into())]);
    let mut t = llama_tensors();
    t[4].1 = vec![8, 8];
    t.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![2]));
    t.push(("score.weight".into(), vec![1, 8]));
    let d = check("shape", &llama_config(), Some(&t));
    // One diagnostic: the first difference, the others in its hint (the rotary buffer is no difference).
    assert_eq!(d, vec![("E0217".into(), "checkpoint `ck` tensor `model.layers.0.self_attn.k_proj.weight` has shape [8, 8], the model expects [4, 8]".into())]);
    // A 300-byte config of 10,000 Mixtral blocks of 65,536 experts beside a one-tensor file:
    // counted, not named (naming them took minutes and gigabytes). 10,000 × (4 attention + 2
    // norms + 1 router + 3 × 65,536 expert matrices) + embedding + norm + head = 1,966,150,003.
    let mut c = llama_config();
    c["architectures"] = json!(["MixtralForCausalLM"]);
    (c["num_hidden_layers"], c["num_local_experts"]) = (json!(10_000), json!(65_536));
    c["tie_word_embeddings"] = json!(false);
    let t = std::time::Instant::now();
    assert_eq!(
        check("experts", &c, Some(&[("x".to_string(), vec![1])])),
        vec![("E0217".into(), "checkpoint `ck` holds 1 tensor(s), but its config.json describes 1966150003".into())]
    );
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
}

/// A folder `ck/` of a config alone: a Llama of 300 tokens.
fn vocab_300(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("ck")).unwrap();
    let mut c = llama_config();
    c["vocab_size"] = json!(300);
    std::fs::write(dir.join("ck/config.json"), c.to_string()).unwrap();
    dir
}

/// A checkpoint's tokens must be encoded with its tokenizer, which must be there and must give no
/// id past the model's vocabulary (E0315, E0255).
#[test]
fn post_training_data_must_be_encoded_with_an_imported_models_tokenizer() {
    let dir = vocab_300("hf-check-tokens");
    let recipe = r#"experiment "x" {
  data instr = synthetic.instructions { tasks = [reverse], examples = 200, max_len = 4, template = "Q: {prompt}\nA: " }
  model base = hf("ck")
  stage sft = finetune(base, instr) { steps = 10, batch = 4, optimizer = adamw { lr = 1e-3 } }
  stage more = finetune(sft.model, instr) { steps = 10, batch = 4, optimizer = adamw { lr = 1e-4 } }
}
"#;
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let d: Vec<(&str, &str)> = c.diagnostics.iter().filter(|d| d.code == "E0315").map(|d| (d.message.as_str(), d.hint.as_deref().unwrap_or(""))).collect();
    let msg = |s: &str| format!("stage `{s}` reads `instr` as bytes, but its model learned the tokens of its own tokenizer (model `base` is imported from a checkpoint): the ids would mean other tokens");
    // The fine-tuned model, and what is trained from it, carry the checkpoint's tokens.
    assert_eq!(d.iter().map(|x| x.0.to_string()).collect::<Vec<_>>(), vec![msg("sft"), msg("more")]);
    assert_eq!(d[0].1, "encode the data with the model's tokenizer: add `tokenizer = base.tokenizer` to data `instr`");
    // Encoded with the model's tokenizer, the recipe checks, once the folder has one.
    let with = recipe.replace("template = \"Q: {prompt}\\nA: \" }", "template = \"Q: {prompt}\\nA: \", tokenizer = base.tokenizer }");
    assert_ne!(with, recipe);
    std::fs::write(dir.join("r.roux"), &with).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let d: Vec<&str> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.message.as_str()).collect();
    assert_eq!(d, vec!["data `instr` takes the tokenizer of `base`, which has none: only a model imported with `hf(\"…\")` from a folder with tokenizer.json does"]);
    std::fs::write(dir.join("ck/tokenizer.json"), "{}").unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    assert!(c.diagnostics.iter().all(|d| !d.is_error()), "{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>());
    assert_eq!(c.recipe.unwrap().examples[0].end, "", "the end marker is the model's end-of-sequence token");
    // A finetune stage's `eval_data` is read with its own set's tokenizer.
    let eval = with.replace("  model base", "  data plain = synthetic.instructions { tasks = [uppercase], examples = 50, max_len = 4 }\n  model base").replace("stage sft = finetune(base, instr) { steps = 10,", "stage sft = finetune(base, instr) { eval_data = [instr, plain], steps = 10,");
    std::fs::write(dir.join("r.roux"), &eval).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let d: Vec<(&str, &str, Option<&str>)> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.code, d.message.as_str(), d.hint.as_deref())).collect();
    assert_eq!(d, [("E0315", "`eval_data` set `plain` is read as bytes, but the stage's model reads `instr` with the tokenizer of `base`", Some("give data `plain` the same `tokenizer` as `instr`"))]);
    std::fs::write(dir.join("r.roux"), &with).unwrap();
    // A tokenizer whose ids reach past the 300 embeddings (an added token at 300, or a Unigram
    // vocabulary of 302 pieces) is refused before the run would index past the embedding; ids up
    // to 299 are what the model embeds.
    let e0255 = |tokenizer: Value| {
        std::fs::write(dir.join("ck/tokenizer.json"), tokenizer.to_string()).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{}: {} / {}", d.code, d.message, d.hint.as_deref().unwrap_or(""))).collect::<Vec<_>>()
    };
    let want = |top: u64| vec![format!("E0255: data `instr` is encoded by the tokenizer of `base`, whose ids reach {top}, but the model embeds only 300 tokens (config.json's vocab_size) / the tokenizer.json and the weights must come from the same model: an id past the vocabulary has no embedding")];
    assert_eq!(e0255(json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 299}}, "added_tokens": [{"id": 300, "content": "<x>"}]})), want(300));
    let pieces: Vec<Value> = (0..302).map(|i| json!([format!("p{i}"), -1.0])).collect();
    assert_eq!(e0255(json!({"model": {"type": "Unigram", "vocab": pieces}})), want(301));
    assert!(e0255(json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 299}}, "added_tokens": [{"id": 299, "content": "<x>"}]})).is_empty());
}

/// `compare` reads a corpus with the tokens each policy learned: an imported model's with its
/// tokenizer.json, whatever the corpus's own `tokenizer` (E0315 when the folder has none, E0255
/// when its ids pass the model's vocabulary).
#[test]
fn perplexity_of_an_imported_model_reads_the_corpus_with_its_tokenizer() {
    let dir = vocab_300("hf-check-perplexity");
    std::fs::write(dir.join("c.txt"), "a few words of held-out text, and more of them\n".repeat(20)).unwrap();
    let recipe = "experiment \"x\" {\n  model base = hf(\"ck\")\n  data corpus = text(\"c.txt\") { context = 16 }\n  stage ppl = compare(base = base) { data = corpus }\n}\n";
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let errors = || {
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        let d: Vec<String> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{}: {} / {}", d.code, d.message, d.hint.as_deref().unwrap_or(""))).collect();
        (d, c.recipe)
    };
    assert_eq!(errors().0, ["E0315: policy `base` learned the tokens of `base`'s tokenizer, but its checkpoint folder has no tokenizer.json to read `corpus` with / put the checkpoint's tokenizer.json beside its config.json"]);
    std::fs::write(dir.join("ck/tokenizer.json"), "{}").unwrap();
    let (d, r) = errors();
    assert!(d.is_empty(), "{d:?}");
    let Some(roux::recipe::StageKind::Compare(c)) = r.map(|r| r.stages[0].kind.clone()) else { panic!("a compare stage") };
    assert_eq!(c.reads, [roux::recipe::Reading { tokenizer: roux::recipe::Tokenizer::Model { model: "base".into(), vocab: 300 }, trained_in: None }]);
    std::fs::write(dir.join("ck/tokenizer.json"), json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 299}}, "added_tokens": [{"id": 300, "content": "<x>"}]}).to_string()).unwrap();
    assert_eq!(errors().0, ["E0255: data `corpus` is encoded by the tokenizer of `base`, whose ids reach 300, but the model embeds only 300 tokens (config.json's vocab_size) / the tokenizer.json and the weights must come from the same model: an id past the vocabulary has no embedding"]);
}

#[test]
fn a_shard_outside_the_folder_or_a_truncated_file_is_refused() {
    let dir = scratch("hf-check-shards");
    std::fs::create_dir_all(dir.join("ck")).unwrap();
    std::fs::write(dir.join("ck/config.json"), llama_config().to_string()).unwrap();
    std::fs::write(dir.join("ck/model.safetensors.index.json"), json!({"weight_map": {"model.norm.weight": "../secret.safetensors"}}).to_string()).unwrap();
    assert_eq!(
        diagnostics(&dir),
        vec![("E0215".into(), "checkpoint `ck`: model.safetensors.index.json names shard \"../secret.safetensors\"; a shard must be a `.safetensors` file in the same directory".into())]
    );
    std::fs::remove_file(dir.join("ck/model.safetensors.index.json")).unwrap();
    safetensors(&dir.join("ck/model.safetensors"), &llama_tensors());
    let full = std::fs::read(dir.join("ck/model.safetensors")).unwrap();
    std::fs::write(dir.join("ck/model.safetensors"), &full[..full.len() - 4]).unwrap();
    let d = diagnostics(&dir);
    assert_eq!(d[0].0, "E0215");
    assert!(d[0].1.starts_with("`ck/model.safetensors` is ") && d[0].1.ends_with(&format!("but its header describes {} (truncated or not a safetensors file)", full.len())), "{}", d[0].1);
    // A length prefix beyond the format's limit is refused before anything is read.
    std::fs::write(dir.join("ck/model.safetensors"), u64::MAX.to_le_bytes()).unwrap();
    assert_eq!(diagnostics(&dir)[0].1, "`ck/model.safetensors` declares a header of 18446744073709551615 bytes (a safetensors header has 1 to 100000000)");
}

#[test]
fn qwen3_0_6b_from_its_config_alone_is_counted_as_published() {
    // docs/models/qwen3-tiny holds Qwen3-0.6B's config.json: the model card gives 0.6B parameters,
    // 0.44B without embeddings; transformers' `num_parameters()` is 596,049,920 (the head is tied).
    let dir = scratch("hf-check-qwen3-doc");
    std::fs::write(dir.join("r.roux"), format!("experiment \"q\" {{\n  model base = hf(\"{}\")\n}}\n", common::root().join("docs/models/qwen3-tiny").display())).unwrap();
    let out = common::roux(&["plan", dir.join("r.roux").to_str().unwrap(), "--allow-path", common::root().join("docs").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("base ")).unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((cols[1], cols[3]), ("596,049,920", "440,467,456"));
}

/// Published configs (as on their model pages, transformers 4.x's key names), planned from
/// config.json alone: Qwen3-30B-A3B ("30.5B in total and 3.3B activated"), Phi-4 ("14B", 14.7B
/// on its page), Mistral-7B-v0.1 and Gemma-3-1B. The counts are transformers' `sum(p.numel())` for the same configs (built
/// on the meta device); active by hand: 48 × (18,874,368 attention + 256 QK-norm + 4,096 norms +
/// 262,144 router + 8 of 128 experts × 3 × 2048 × 768) + 2 × 151,936 × 2048 + 2048.
#[test]
fn published_configs_plan_as_transformers_counts_them() {
    let plan = |name: &str, config: &str| -> Vec<String> {
        let dir = scratch(name);
        std::fs::create_dir_all(dir.join("ck")).unwrap();
        std::fs::write(dir.join("ck/config.json"), config).unwrap();
        std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  model base = hf(\"ck\")\n}\n").unwrap();
        let out = common::roux(&["plan", dir.join("r.roux").to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.starts_with("base ")).unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        line.split_whitespace().map(str::to_string).collect()
    };
    let qwen = r#"{"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643,
        "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false, "rms_norm_eps": 1e-06, "rope_scaling": null,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": null, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}"#;
    let cols = plan("hf-check-qwen3-moe", qwen);
    assert_eq!((cols[1].as_str(), cols[2].as_str()), ("30,532,122,624", "3,353,032,704"));
    let phi4 = r#"{"architectures": ["Phi3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 100257,
        "embd_pdrop": 0.0, "eos_token_id": 100265, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
        "intermediate_size": 17920, "max_position_embeddings": 16384, "model_type": "phi3", "num_attention_heads": 40,
        "num_hidden_layers": 40, "num_key_value_heads": 10, "original_max_position_embeddings": 16384, "pad_token_id": 100349,
        "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 250000, "sliding_window": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.47.0", "use_cache": true, "vocab_size": 100352}"#;
    assert_eq!(plan("hf-check-phi4", phi4)[1], "14,659,507,200");
    // Mistral-7B-v0.1 attends through a 4096-token window over its 32768 positions: read as
    // `window = 4096` in every block ("7.24B" on its page; transformers counts 7,241,732,096).
    let mistral = r#"{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
        "use_cache": true, "vocab_size": 32000}"#;
    assert_eq!(plan("hf-check-mistral-7b", mistral)[1], "7,241,732,096");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/hf-check-mistral-7b");
    let spec = roux::frontend::compile(&dir.join("r.roux")).unwrap().recipe.unwrap().models[0].clone();
    assert_eq!((spec.window, spec.window_layers, spec.context), (Some(4096), None, 32768));
    // Gemma-3-1B's config as published (transformers 4.50's keys: `rope_local_base_freq`,
    // `sliding_window_pattern`): "1B", 999,885,952 by transformers' count; every sixth block full
    // attention with base 10^6, the others a 512-token window with base 10^4.
    let gemma = r#"{"architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null,
        "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106], "final_logit_softcapping": null, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912,
        "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
        "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
        "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0", "use_cache": true, "vocab_size": 262144}"#;
    assert_eq!(plan("hf-check-gemma3-1b", gemma)[1], "999,885,952");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/hf-check-gemma3-1b");
    let spec = roux::frontend::compile(&dir.join("r.roux")).unwrap().recipe.unwrap().models[0].clone();
    let full: Vec<usize> = (0..26).filter(|b| spec.window_of(*b).is_none()).collect();
    assert_eq!((spec.window, spec.window_rope_theta, spec.rope_theta, full), (Some(512), Some(1e4), Some(1e6), vec![5, 11, 17, 23]));
}

/// What Phi-3 layouts roux cannot compute exactly are told: Phi-4-mini rotates 3/4 of each head
/// (and scales rope by "longrope"). Phi-3-mini-4k's 2047-token window is read.
#[test]
fn phi3_variants_roux_would_only_approximate_are_refused_by_name() {
    let phi3 = |extra: Value| {
        let mut c = json!({
            "architectures": ["Phi3ForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let mini4 = phi3(json!({"partial_rotary_factor": 0.75, "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}));
    assert_eq!(check("phi4-mini", &mini4, None), vec![("E0216".into(), "`ck/config.json` `partial_rotary_factor` = 0.75: roux rotates every feature of a head".into())]);
    let window = phi3(json!({"sliding_window": 2047}));
    assert_eq!(check("phi3-window", &window, None), vec![]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/hf-check-phi3-window");
    let spec = roux::frontend::compile(&dir.join("r.roux")).unwrap().recipe.unwrap().models[0].clone();
    assert_eq!((spec.window, spec.window_layers), (Some(2047), None));
    let longrope = phi3(json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}));
    assert_eq!(check("phi3-longrope", &longrope, None)[0].1, "`ck/config.json` rope type `longrope` is not supported (roux has default and llama3)");
}

/// A chat template that prints each turn as `<role>content</s>`.
const TEMPLATE: &str = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

/// A scratch folder holding `ck/`: a Llama config (vocabulary 300) and an empty tokenizer.json.
fn config_only_checkpoint(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("ck")).unwrap();
    let mut c = llama_config();
    c["vocab_size"] = json!(300);
    std::fs::write(dir.join("ck/config.json"), c.to_string()).unwrap();
    std::fs::write(dir.join("ck/tokenizer.json"), "{}").unwrap();
    dir
}

#[test]
fn conversations_need_a_chat_template_and_an_assistant_turn_on_every_line() {
    let dir = config_only_checkpoint("hf-check-chat");
    let user = |t: &str| json!({"role": "user", "content": t});
    let lines = [json!({"messages": [user("hi"), {"role": "assistant", "content": "hello"}]}), json!({"messages": [user("hi")]}), json!({"messages": [{"role": "robot", "content": "x"}]})];
    std::fs::write(dir.join("chat.jsonl"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let recipe = |tok: &str| format!("experiment \"x\" {{\n  model base = hf(\"ck\")\n  data chat = instructions(\"chat.jsonl\") {{ {tok} }}\n}}\n");
    let errors = |text: String| {
        std::fs::write(dir.join("r.roux"), text).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.code.to_string(), d.message.clone())).collect::<Vec<_>>()
    };
    assert_eq!(errors(recipe("")), vec![("E0214".into(), "data `chat` holds conversations (`messages`), which need an imported model's tokenizer".into())]);
    assert_eq!(errors(recipe("tokenizer = base.tokenizer")), vec![("E0214".into(), "data `chat` holds conversations, but model `base` has no chat template".into())]);
    std::fs::write(dir.join("ck/tokenizer_config.json"), json!({"chat_template": TEMPLATE, "eos_token": "</s>"}).to_string()).unwrap();
    assert_eq!(
        errors(recipe("tokenizer = base.tokenizer")),
        vec![("E0214".into(), "`chat.jsonl` has 2 bad conversation(s) of 3: line 2: has no assistant turn to train on; line 3: `messages` message 1 has role \"robot\" (one of system, user, assistant, tool)".into())]
    );
    // A template the recipe names: a file beside it, for conversations only.
    std::fs::write(dir.join("chat.jsonl"), format!("{}\n", lines[0])).unwrap();
    let named = |t: &str| errors(recipe(&format!("tokenizer = base.tokenizer, chat_template = {t}")));
    assert_eq!(named("\"none.jinja\""), vec![("E0252".into(), "chat template file `none.jinja` not found".into())]);
    assert_eq!(named("chatml"), vec![("E0120".into(), "`chat_template` expects the path of a Jinja file, found a name".into())]);
    std::fs::write(dir.join("bad.jinja"), "{% for m in messages %}").unwrap();
    let err = named("\"bad.jinja\"");
    assert_eq!(err[0].0, "E0252");
    assert!(err[0].1.starts_with("data `chat`: the chat template does not parse: syntax error: unexpected end of input"), "{err:?}");
    std::fs::write(dir.join("own.jinja"), "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}").unwrap();
    assert_eq!(named("\"own.jinja\""), vec![]);
    assert_eq!(named("\"own.jinja\", date = \"2024-02-30\""), vec![("E0253".into(), "`date` expects a calendar day as \"YYYY-MM-DD\", found a string".into())]);
    assert_eq!(named("\"own.jinja\", date = \"2024-02-29\""), vec![]);
    // In the YAML form a day is written bare, as YAML writes one (not `2024 - 2 - 29`).
    std::fs::write(dir.join("r.yaml"), "experiment: x\nmodel base: hf(\"ck\")\ndata chat:\n  $: instructions(\"chat.jsonl\")\n  tokenizer: base.tokenizer\n  chat_template: '\"own.jinja\"'\n  date: 2024-02-29\n").unwrap();
    let c = roux::frontend::compile(&dir.join("r.yaml")).unwrap();
    assert_eq!(c.recipe.unwrap().example_set("chat").unwrap().chat.as_ref().unwrap().date.as_deref(), Some("2024-02-29"));
    // A template that renders an earlier turn otherwise once another follows (Qwen3 drops the
    // reasoning of earlier turns): such a conversation trains its last turn only, with a warning.
    std::fs::write(dir.join("rewrite.jinja"), "{%- set ns = namespace(q=-1) %}{%- for m in messages %}{% if m.role == 'user' %}{% set ns.q = loop.index0 %}{% endif %}{% endfor %}{%- for m in messages %}{%- if m.role == 'assistant' and loop.index0 < ns.q %}<a>{{ m.content.split('</think>')[-1] }}</a>{%- elif m.role == 'assistant' %}<a>{{ m.content }}</a>{%- else %}<u>{{ m.content }}</u>{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<a>{%- endif %}").unwrap();
    let two = json!({"messages": [user("q1"), {"role": "assistant", "content": "<think>r</think>a1"}, user("q2"), {"role": "assistant", "content": "a2"}]});
    std::fs::write(dir.join("two.jsonl"), format!("{}\n{}\n", lines[0], two)).unwrap();
    std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  model base = hf(\"ck\")\n  data two = instructions(\"two.jsonl\") { tokenizer = base.tokenizer, chat_template = \"rewrite.jinja\" }\n}\n").unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let w: Vec<_> = c.diagnostics.iter().filter(|d| d.code.to_string().starts_with(['W', 'E'])).map(|d| (d.code.to_string(), d.message.clone())).collect();
    assert_eq!(w, vec![("W0406".into(), "data `two`: the chat template renders earlier turns otherwise once later ones follow (as Qwen3's drops their reasoning): 1 of 2 conversations train on their last assistant turn only".into())]);
    // A stage that renders its conversations in another template than its model learned: W0405.
    let warnings = |second: &str| {
        let text = format!("experiment \"x\" {{\n  model base = hf(\"ck\")\n  data chat = instructions(\"chat.jsonl\") {{ tokenizer = base.tokenizer, chat_template = \"own.jinja\" }}\n  data more = instructions(\"chat.jsonl\") {{ tokenizer = base.tokenizer{second} }}\n  stage sft = finetune(base, chat) {{ steps = 2 }}\n  stage lora = finetune(sft.model, chat) {{ steps = 2, adapter = lora {{ rank = 2, targets = [attn.q] }} }}\n  stage again = finetune(merge(lora.adapter), more) {{ steps = 2 }}\n}}\n");
        std::fs::write(dir.join("r.roux"), text).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        c.diagnostics.iter().filter(|d| d.code.to_string().starts_with('W') || d.is_error()).map(|d| (d.code.to_string(), d.message.clone())).collect::<Vec<_>>()
    };
    assert_eq!(warnings(""), vec![("W0405".into(), "stage `again` renders `more` with another chat template than stage `lora` trained its model in (data `chat`)".into())]);
    assert_eq!(warnings(", chat_template = \"own.jinja\", date = \"2025-01-01\""), vec![("W0405".into(), "stage `again` renders `more` with another `date` than stage `lora` trained its model in (data `chat`)".into())]);
    assert_eq!(warnings(", chat_template = \"own.jinja\""), vec![]);
    std::fs::write(dir.join("rows.jsonl"), "{\"prompt\": \"hi\", \"response\": \"hello\"}\n").unwrap();
    std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  data rows = instructions(\"rows.jsonl\") { chat_template = \"own.jinja\" }\n}\n").unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let d: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.code.to_string(), d.message.clone(), d.hint.clone())).collect();
    assert_eq!(d, vec![("E0252".into(), "data `rows` holds no conversations: `chat_template` is for a chat template, which renders `messages`".into(), Some("rows of a prompt and a response take `template = \"…{prompt}…\"`; conversations are lines of {\"messages\": [{\"role\": …, \"content\": …}, …]}".into()))]);
}

/// A chat template and a tokenizer are someone else's code that `roux check` runs: a template
/// that asks for a terabyte, one that loops over a 100 MB string, a normalizer that puts a
/// megabyte between every two characters, and a line of thousands of tiny turns (each rendered
/// with every turn before it) are stopped with a message, in bounded memory and time, where
/// they used to take the machine's memory, hours, and a minute per 600 KB.
#[test]
fn chat_templates_and_conversations_are_bounded_in_memory_time_and_work() {
    let dir = scratch("hf-check-template-bounds");
    let user = |t: &str| json!({"role": "user", "content": t});
    let said = |t: &str| json!({"role": "assistant", "content": t});
    let plain = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    // A tokenizer whose normalizer puts a megabyte between every two characters.
    let word_level = |normalizer: Value| json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}});
    let bomb = word_level(json!({"type": "Replace", "pattern": {"Regex": ""}, "content": "x".repeat(1 << 20)}));
    let cases = [
        ("terabyte", format!("{{% set ns = namespace(s='x') %}}{{% for i in range(40) %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{plain}"), vec![user("hi"), said("yo")], json!({})),
        ("scan", "{% for i in range(100000) %}{{ ('x' * 100000000)|length }}{% endfor %}".to_string(), vec![user("hi"), said("yo")], json!({})),
        ("turns", plain.to_string(), (0..12_000).flat_map(|i| [user(&format!("q{i}")), said("a")]).collect(), json!({})),
        ("tokenizer", plain.to_string(), vec![user(&"a".repeat(10_000)), said("yo")], bomb),
        // A list nested a million deep: printing it recurses once per level.
        ("deep", format!("{{% set ns = namespace(x=[]) %}}{{% for i in range(1000) %}}{{% for j in range(1000) %}}{{% set ns.x = [ns.x] %}}{{% endfor %}}{{% endfor %}}{{{{ ns.x }}}}{plain}"), vec![user("hi"), said("yo")], json!({})),
    ];
    let mut c = llama_config();
    c["vocab_size"] = json!(300);
    for (name, template, messages, tokenizer) in &cases {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("config.json"), c.to_string()).unwrap();
        std::fs::write(dir.join(name).join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(dir.join(name).join("tokenizer_config.json"), json!({"chat_template": template, "eos_token": "</s>"}).to_string()).unwrap();
        std::fs::write(dir.join(format!("{name}.jsonl")), format!("{}\n", json!({ "messages": messages }))).unwrap();
        let recipe = format!("experiment \"x\" {{\n  model base = hf(\"{name}\")\n  data chat = instructions(\"{name}.jsonl\") {{ tokenizer = base.tokenizer }}\n}}\n");
        std::fs::write(dir.join(format!("{name}.roux")), recipe).unwrap();
    }
    let check = |name: &str| {
        let t = std::time::Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
            .args(["check", dir.join(format!("{name}.roux")).to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A hang guard, far past the bounds, for a loaded machine.
        while child.try_wait().unwrap().is_none() {
            if t.elapsed().as_secs() > 300 {
                let _ = child.kill();
                panic!("{name}: still running after 300 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned(), t.elapsed())
    };
    let (big, scan, turns, tokenizer, deep) = std::thread::scope(|s| {
        let [a, b, c, d, e] = ["terabyte", "scan", "turns", "tokenizer", "deep"].map(|n| s.spawn(move || check(n)));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap(), d.join().unwrap(), e.join().unwrap())
    });
    let why = "; roux stops here (it is someone else's code, and roux bounds what it may use)\n";
    assert_eq!(deep.0, Some(2), "{}", deep.1);
    assert_eq!(deep.1, format!("error: a chat template ran out of stack (a value or a call nested too deep){why}"));
    assert_eq!(big.0, Some(2), "{}", big.1);
    assert_eq!(big.1, format!("error: a chat template asked for more than 256 MiB of memory at once, or 2 GiB in all, in one call{why}"));
    assert_eq!(tokenizer.0, Some(2), "{}", tokenizer.1);
    assert_eq!(tokenizer.1, format!("error: a checkpoint's tokenizer asked for more than 256 MiB of memory at once, or 2 GiB in all, in one call{why}"));
    assert_eq!(scan.0, Some(2), "{}", scan.1);
    assert_eq!(scan.1, format!("error: a chat template ran past the time roux allows it (10 s, and 256 µs more a byte of its input){why}"));
    // 10 s and 256 µs for each of the file's 82 bytes: not stopped before its time.
    assert_eq!(std::fs::metadata(dir.join("scan.jsonl")).unwrap().len(), 82);
    assert!(scan.2.as_secs_f64() >= 10.0, "{:?}", scan.2);
    // 12,000 turns in 828,905 bytes: 16,000,000 + 256 × 828,905 = 228,199,680 steps allowed.
    assert_eq!(std::fs::metadata(dir.join("turns.jsonl")).unwrap().len(), 828_905);
    assert_eq!(turns.0, Some(1), "{}", turns.1);
    assert!(
        turns.1.contains("error[E0214]: data `chat`: `turns.jsonl` line 1: rendered turn by turn, the file's conversations need more than the 229 million steps of template work roux allows for its 828905 bytes (16 million and 256 a byte): a conversation costs its whole length once per assistant turn; split conversations of hundreds of turns"),
        "{}",
        turns.1
    );
}

/// The JSON list that tests/fixtures/hf/`script` writes, from what transformers makes of its inputs.
fn from_transformers(script: &str) -> Vec<Value> {
    let out = scratch(&format!("hf-{script}")).join("out.json");
    let o = std::process::Command::new("python").arg(common::root().join("tests/fixtures/hf").join(script)).arg(&out).output().expect("python on PATH (source scripts/env.sh)");
    assert!(o.status.success(), "{script} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// A config.json may leave keys out: transformers fills them in with its class's defaults, which
/// differ by family (OLMoE picks 8 experts a token unless told, Mixtral's rope base is 10^6). For
/// each family and each key of its test config, roux reads the config without that key (or with
/// it null) as the model transformers makes of it (the same config with every default written
/// out, from tests/fixtures/hf/defaults.py), or refuses it naming the key. And every model read
/// goes back out (`roux export`'s config.json) as a config that reads as the same model.
#[test]
fn a_key_left_out_of_a_config_means_to_roux_what_it_means_to_transformers() {
    use roux::hf::{config::model_from_config, emit};
    let cases = from_transformers("defaults.py");
    assert!(cases.len() >= 380, "{} cases", cases.len());
    let (mut wrong, mut exported) = (vec![], 0);
    for c in &cases {
        let (family, key) = (c["family"].as_str().unwrap(), c["key"].as_str());
        let case = match key {
            None => format!("{family}'s whole config"),
            Some(k) if c["null"] == true => format!("{family} with `{k}` = null"),
            Some(k) => format!("{family} without `{k}`"),
        };
        let (given, implied) = (model_from_config("m", &c["given"]), model_from_config("m", &c["implied"]));
        match (&given, &implied, key) {
            (Ok(a), Ok(b), _) if a == b => {}
            (Err(e), _, Some(k)) if e.contains(&format!("`{k}`")) => {}
            (Err(_), Err(_), Some(_)) => {}
            _ => wrong.push(format!("{case}:\n  roux reads   {given:?}\n  transformers {implied:?}")),
        }
        if let Ok((spec, fam)) = &given {
            let back = model_from_config("m", &emit::config(spec, *fam));
            if back.as_ref().map(|b| &b.0) != Ok(spec) {
                wrong.push(format!("{case}, exported, reads back as\n  {back:?}, not\n  {spec:?}"));
            }
            exported += 1;
        }
    }
    assert!(exported >= 300, "{exported} exported");
    assert!(wrong.is_empty(), "{} of {} configs read differently:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// Chat templates in the styles of published checkpoints (ChatML with a default system turn and
/// a `tools` test, Llama 3's headers and namespace, Mistral's alternation check, Gemma's folded
/// system turn, Zephyr's one-tag lines, Python's string methods, `tojson`, loop controls), each
/// applied to conversations with spaces, markup, non-ASCII text and JSON: roux renders exactly
/// what transformers' `apply_chat_template` renders (tests/fixtures/hf/templates.py), and fails
/// where it fails.
#[test]
fn chat_templates_render_as_transformers_renders_them() {
    use roux::posttrain::chat::{Message, Renderer};
    let templates = from_transformers("templates.py");
    let (mut wrong, mut cases) = (vec![], 0);
    for t in &templates {
        let s = |k: &str| t[k].as_str().unwrap().to_string();
        let r = Renderer::new(&roux::recipe::ChatTemplate { source: s("template"), bos: s("bos"), eos: s("eos"), date: t["date"].as_str().map(String::from) }).unwrap();
        for c in t["cases"].as_array().unwrap() {
            cases += 1;
            // As written by Python (`json.dumps`): objects in their keys' order.
            let line = roux::posttrain::chat::ordered(c["line"].as_str().unwrap()).unwrap();
            let messages = roux::posttrain::chat::messages(&line.get_attr("messages").unwrap()).unwrap();
            let extra = roux::posttrain::chat::extra(&line).unwrap();
            let ours = r.render(&messages, &extra, c["generation_prompt"] == true);
            // The trained text where a template marks it (`{% generation %}`): transformers' spans.
            if let Some(spans) = c.get("spans") {
                let last = messages.iter().rposition(|m| m.role == "assistant").unwrap();
                let (mut at, mut ours) = (0, vec![]);
                for (text, trained) in r.turns(&messages[..=last], &extra).unwrap_or_else(|e| panic!("{} on {}: {e}", t["name"], c["line"])) {
                    let n = text.chars().count();
                    if trained {
                        ours.push(serde_json::json!([at, at + n]));
                    }
                    at += n;
                }
                cases += 1;
                if serde_json::Value::from(ours.clone()) != *spans {
                    wrong.push(format!("{} on {}: trained spans roux {ours:?}, transformers {spans}", t["name"], c["messages"]));
                }
            }
            match (&ours, c["text"].as_str()) {
                (Ok(a), Some(b)) if a == b => {}
                (Err(e), None) if e.contains(c["error"].as_str().unwrap()) => {}
                _ => wrong.push(format!("{} on {}:\n  roux         {ours:?}\n  transformers {:?}", t["name"], c["messages"], c.get("text").unwrap_or(&c["error"]))),
            }
        }
    }
    assert!(cases >= 40, "{cases} cases");
    assert!(wrong.is_empty(), "{} of {cases} renders differ:\n{}", wrong.len(), wrong.join("\n"));
    // Without the recipe's `date`, `strftime_now` is not defined: Llama 3.1's template falls back
    // to its own date, and one that calls it regardless says what to set.
    let undated = |name: &str| {
        let t = templates.iter().find(|t| t["name"] == name).unwrap();
        let r = Renderer::new(&roux::recipe::ChatTemplate { source: t["template"].as_str().unwrap().into(), bos: "<s>".into(), eos: "</s>".into(), date: None }).unwrap();
        r.render(&[Message::new("user", "hi")], &Default::default(), true)
    };
    assert!(undated("llama31-date").unwrap().contains("Today Date: 26 Jul 2024"));
    let err = undated("mistral-small-date").unwrap_err();
    assert!(err.starts_with("the chat template fails: unknown function: strftime_now is unknown") && err.ends_with(": it writes today's date (transformers' `strftime_now`); set `date = \"YYYY-MM-DD\"` on the data, so that check, every run and a resumed one render the same text"), "{err}");
}

/// Unpaired feedback as TRL writes it in conversations: `prompt` and `completion` message lists
/// and a boolean `label`. A line without a true or false label is named; a good file's note
/// counts each kind, and each line becomes the prompt rendered up to the completion's turn and
/// that turn, with its label.
#[test]
fn conversational_feedback_is_completions_judged_true_or_false() {
    let dir = config_only_checkpoint("hf-check-feedback");
    std::fs::write(dir.join("ck/tokenizer_config.json"), json!({"chat_template": TEMPLATE, "eos_token": "</s>"}).to_string()).unwrap();
    let line = |answer: &str, label: Value| {
        let mut l = json!({"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": answer}]});
        if !label.is_null() {
            l["label"] = label;
        }
        format!("{l}\n")
    };
    std::fs::write(dir.join("fb.jsonl"), [line("4", json!(true)), line("5", json!(false)), line("4", json!("yes")), line("4", Value::Null)].concat()).unwrap();
    std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  model base = hf(\"ck\")\n  data fb = feedback(\"fb.jsonl\") { tokenizer = base.tokenizer }\n}\n").unwrap();
    let said = || {
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        let d = c.diagnostics.iter().map(|d| (d.code.to_string(), d.message.clone())).collect::<Vec<_>>();
        (c, d)
    };
    assert_eq!(
        said().1,
        vec![("E0214".into(), "`fb.jsonl` has 2 bad conversation(s) of 4: line 3: has a `label` that is not true (desirable) or false; line 4: has no `label` (true: desirable, false: not)".into())]
    );
    std::fs::write(dir.join("fb.jsonl"), [line("4", json!(true)), line("5", json!(false)), line("four", json!(true))].concat()).unwrap();
    let (c, d) = said();
    assert_eq!(d, vec![("N0404".into(), "data `fb`: 3 conversations (2 desirable, 1 not)".into())]);
    let set = c.recipe.unwrap().example_set("fb").unwrap().clone();
    let split = roux::posttrain::examples::feedback(&set, 1).unwrap();
    let mut all: Vec<_> = split.train.iter().chain(&split.held_out).map(|f| (f.prompt.clone(), f.completion.clone(), f.desirable)).collect();
    all.sort();
    let p = "<user>2+2?</s><assistant>".to_string();
    assert_eq!(all, vec![(p.clone(), "4</s>".into(), true), (p.clone(), "5</s>".into(), false), (p, "four</s>".into(), true)]);
    // Its labels are counted once the template has read them, and weighed as a plain file's
    // (W0407 at the stage's data): 2 desirable to 1 is 2, outside [1, 4/3]; with
    // `undesirable_weight = 1.6` (APO-zero's here) it is 1.25, inside.
    let stages = "  stage k = dpo(base, fb) { loss = kto, steps = 5 }\n  stage a = dpo(base, fb) { loss = apo_zero, undesirable_weight = 1.6, steps = 5 }\n}\n";
    let text = format!("experiment \"x\" {{\n  model base = hf(\"ck\")\n  data fb = feedback(\"fb.jsonl\") {{ tokenizer = base.tokenizer }}\n{stages}");
    std::fs::write(dir.join("r.roux"), &text).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    // (Where: the line, and the text the span covers.)
    let at = |d: &roux::diag::Diagnostic| format!("line {} `{}`", text[..d.span.start].matches('\n').count() + 1, &text[d.span.start..d.span.end]);
    let warned: Vec<String> = c.diagnostics.iter().filter(|d| d.code == "W0407").map(|d| format!("{} {} | {}", at(d), d.message, d.hint.clone().unwrap_or_default())).collect();
    assert_eq!(
        warned,
        vec!["line 4 `fb` `fb` holds 2 desirable and 1 undesirable examples, with weights 1 and 1: desirable_weight × desirable / (undesirable_weight × undesirable) is 2.000, outside the 1 to 4/3 that KTO recommends | `undesirable_weight = 1.71` brings it to about 7/6, inside that range".to_string()],
        "{:?}",
        c.diagnostics
    );
}

/// Conversational preference pairs may carry a `margin` (a number, on every pair or none): check
/// says their range, as for a plain file, and names a pair without one among pairs with one.
#[test]
fn conversational_pairs_carry_their_margins() {
    let dir = config_only_checkpoint("hf-check-margins");
    std::fs::write(dir.join("ck/tokenizer_config.json"), json!({"chat_template": TEMPLATE, "eos_token": "</s>"}).to_string()).unwrap();
    let line = |margin: Value| {
        let mut l = json!({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]});
        if !margin.is_null() {
            l["margin"] = margin;
        }
        format!("{l}\n")
    };
    std::fs::write(dir.join("r.roux"), "experiment \"x\" {\n  model base = hf(\"ck\")\n  data prefs = preferences(\"p.jsonl\") { tokenizer = base.tokenizer }\n}\n").unwrap();
    let said = |lines: &[String]| {
        std::fs::write(dir.join("p.jsonl"), lines.concat()).unwrap();
        roux::frontend::compile(&dir.join("r.roux")).unwrap().diagnostics.iter().map(|d| (d.code.to_string(), d.message.clone())).collect::<Vec<_>>()
    };
    assert_eq!(said(&[line(json!(0.5)), line(json!(2)), line(json!(1.25))]), vec![("N0404".into(), "data `prefs`: 3 conversations (margins 0.5 to 2, mean 1.25)".into())]);
    assert_eq!(said(&[line(Value::Null), line(Value::Null)]), vec![("N0404".into(), "data `prefs`: 2 conversations".into())]);
    assert_eq!(
        said(&[line(json!(0.5)), line(Value::Null)]),
        vec![("E0214".into(), "`p.jsonl` has 1 bad conversation(s) of 2: line 2: has no `margin`, which other pairs have (a margin on every pair or on none)".into())]
    );
}
