//! `model base = hf("…")`: Hugging Face checkpoints in. For each supported architecture the test
//! makes a small random model with `transformers` (tests/fixtures/hf/make.py; no hub here) and
//! holds roux to it: `roux plan` counts `sum(p.numel())`, roux's logits equal transformers' within
//! 1e-4 on four prompts, and import → export gives back the checkpoint's tensors exactly, with a
//! config.json from which transformers computes the same logits.
#![cfg(feature = "torch")]

mod common;

use common::{roux, root, scratch};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// The checkpoints the tests import: a name and make.py's arguments after the family.
const CHECKPOINTS: &[(&str, &[&str])] = &[
    ("gpt2", &["gpt2"]),
    ("llama", &["llama", "--shard", "20000"]),
    ("mistral", &["mistral"]),
    ("qwen2", &["qwen2", "--dtype", "bfloat16"]),
    ("qwen3", &["qwen3", "--tied"]),
    ("qwen2-tok", &["qwen2", "--tokenizer"]),
    ("mixtral", &["mixtral"]),
    ("mixtral-tok", &["mixtral", "--tokenizer"]),
    ("olmoe", &["olmoe"]),
    ("qwen2moe", &["qwen2moe"]),
    ("qwen3moe", &["qwen3moe", "--dtype", "bfloat16"]),
    ("phi3", &["phi3"]),
    ("phi3-tok", &["phi3", "--tokenizer"]),
    ("qwen3moe-tok", &["qwen3moe", "--tokenizer"]),
    ("qwen2moe-tok", &["qwen2moe", "--tokenizer"]),
    ("mistral-window", &["mistral", "--window", "8"]),
    ("qwen2-window", &["qwen2", "--window", "8"]),
    ("qwen2moe-window", &["qwen2moe", "--window", "8"]),
    ("qwen3moe-window", &["qwen3moe", "--window", "8"]),
    ("phi3-window", &["phi3", "--window", "8"]),
    ("olmo2", &["olmo2", "--dtype", "bfloat16"]),
    ("gemma3", &["gemma3"]),
    ("gemma2", &["gemma2"]),
    ("gemma3mm", &["gemma3mm", "--tied"]),
];

/// Every checkpoint of `CHECKPOINTS`, made once by one Python process (transformers takes
/// seconds to import: once per test would cost a minute of the suite).
fn made() -> &'static Path {
    static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let dir = scratch("hf-checkpoints");
        let batch: Vec<Vec<String>> = CHECKPOINTS
            .iter()
            .map(|(name, args)| [args[0].to_string(), dir.join(name).display().to_string()].into_iter().chain(args[1..].iter().map(|a| a.to_string())).collect())
            .collect();
        std::fs::write(dir.join("batch.json"), serde_json::to_string(&batch).unwrap()).unwrap();
        let o = Command::new("python").arg(root().join("tests/fixtures/hf/make.py")).arg("--batch").arg(dir.join("batch.json")).output().expect("python on PATH (source scripts/env.sh)");
        assert!(o.status.success(), "make.py failed: {}", String::from_utf8_lossy(&o.stderr));
        dir
    })
}

/// A project folder holding a copy of checkpoint `which` as `ck/`, and `import.roux`.
fn checkpoint(name: &str, which: &str) -> PathBuf {
    let dir = scratch(&format!("hf-{name}"));
    let (from, ck) = (made().join(which), dir.join("ck"));
    std::fs::create_dir_all(&ck).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ck.join(f.file_name())).unwrap();
    }
    std::fs::write(dir.join("import.roux"), "experiment \"import\" {\n  model base = hf(\"ck\")\n}\n").unwrap();
    dir
}

fn expected(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("ck/expected.json")).unwrap()).unwrap()
}

/// `roux plan`'s parameter count for the imported model.
fn planned_params(dir: &Path) -> u64 {
    let o = roux(&["plan", dir.join("import.roux").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let line = out.lines().find(|l| l.starts_with("base ")).unwrap_or_else(|| panic!("no model line in:\n{out}"));
    line.split_whitespace().nth(1).unwrap().replace(',', "").parse().unwrap()
}

/// The largest |roux − transformers| over every logit of the four prompts.
fn logit_gap(dir: &Path) -> (f64, roux::run::model::Model) {
    let c = roux::frontend::compile(&dir.join("import.roux")).unwrap();
    let spec = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>())).models[0].clone();
    let model = roux::run::kit::hf::load(&spec, Device::Cpu, None).unwrap();
    let want = expected(dir);
    let mut gap: f64 = 0.0;
    for (p, l) in want["prompts"].as_array().unwrap().iter().zip(want["logits"].as_array().unwrap()) {
        let tokens: Vec<i64> = p.as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
        let ours = tch::no_grad(|| model.forward(&Tensor::from_slice(&tokens).view([1, -1]), false)).to_kind(Kind::Double).view([-1]);
        let theirs = Tensor::from_slice(&l.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>());
        assert_eq!(ours.size(), theirs.size());
        gap = gap.max((ours - theirs).abs().max().double_value(&[]));
    }
    (gap, model)
}

/// Export the imported model from a run directory and compare every tensor with the input.
fn assert_export_roundtrip(dir: &Path, model: &roux::run::model::Model, class: &str) {
    let out = exported(dir, model);
    // Every tensor back under its name, equal to the checkpoint's (read by tch's own reader).
    let tensors = |d: &Path| -> std::collections::BTreeMap<String, Tensor> {
        let files = std::fs::read_dir(d).unwrap().map(|f| f.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors"));
        files.flat_map(|f| Tensor::read_safetensors(&f).unwrap()).collect()
    };
    let (theirs, ours) = (tensors(&dir.join("ck")), tensors(&out));
    assert_eq!(theirs.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>());
    let differ: Vec<&String> = theirs.iter().filter(|(k, t)| !t.to_kind(Kind::Float).equal(&ours[*k])).map(|(k, _)| k).collect();
    assert!(differ.is_empty(), "tensors differ after import → export: {differ:?}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], class);
    // With the checkpoint's special token ids, not the family's defaults.
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ck/config.json")).unwrap()).unwrap();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        assert_eq!(config.get(key), original.get(key), "{key}");
    }
    // And transformers, reading the config roux wrote, computes the checkpoint's logits.
    let (theirs, gap) = transformers_logits(&out, &dir.join("ck/expected.json"));
    eprintln!("transformers on roux's export: {theirs}, max |Δlogit| = {gap:.3e}");
    assert!(theirs == class && gap < 1e-4, "transformers on roux's export: {theirs}, logits differ by {gap:.3e}");
}

/// `model` written as a run in `dir/run` and exported to Hugging Face's format: `dir/out`.
fn exported(dir: &Path, model: &roux::run::model::Model) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("resolved.json"), serde_json::json!({ "model": model.spec() }).to_string()).unwrap();
    Tensor::write_safetensors(&model.named(), run.join("model.safetensors")).unwrap();
    let out = dir.join("out");
    let o = roux(&["export", run.to_str().unwrap(), "--to", "hf", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// transformers' class for the checkpoint in `model` and the largest |Δlogit| against the logits
/// in `expected` (its prompts).
fn transformers_logits(model: &Path, expected: &Path) -> (String, f64) {
    let script = "import json, sys, torch\nfrom transformers import AutoModelForCausalLM\n\
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n\
        e = json.load(open(sys.argv[2]))\n\
        with torch.no_grad():\n    gap = max((m(torch.tensor([p])).logits[0].double().flatten() - torch.tensor(l, dtype=torch.float64)).abs().max().item() for p, l in zip(e['prompts'], e['logits']))\n\
        print(json.dumps([type(m).__name__, gap]))";
    let o = common::python(script, &[model.to_str().unwrap(), expected.to_str().unwrap()]);
    assert!(o.status.success(), "transformers on roux's export: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

fn import(name: &str, class: &str) {
    let dir = checkpoint(name, name);
    assert_eq!(planned_params(&dir), expected(&dir)["params"].as_u64().unwrap(), "roux plan counts what transformers holds");
    let (gap, model) = logit_gap(&dir);
    eprintln!("{name}: max |Δlogit| = {gap:.3e}");
    assert!(gap < 1e-4, "{name}: logits differ from transformers' by {gap:.3e}");
    assert_export_roundtrip(&dir, &model, class);
}

#[test]
fn gpt2_imports_with_the_same_logits_and_exports_the_same_tensors() {
    import("gpt2", "GPT2LMHeadModel");
}

#[test]
fn llama3_with_rope_scaling_and_biases_in_shards() {
    // Llama 3's rope base and scaling; biases on; saved in shards of ~20 kB.
    import("llama", "LlamaForCausalLM");
}

#[test]
fn mistral_imports() {
    import("mistral", "MistralForCausalLM");
}

#[test]
fn qwen2_in_bfloat16_with_qkv_biases() {
    import("qwen2", "Qwen2ForCausalLM");
}

#[test]
fn qwen3_with_qk_norm_a_wider_attention_and_a_tied_head() {
    import("qwen3", "Qwen3ForCausalLM");
}

#[test]
fn a_byte_level_model_roux_exported_comes_back_in_and_fine_tunes() {
    let dir = scratch("hf-byte-level");
    // A byte-level Llama-layout model (vocabulary 256) as a finished run leaves it, exported.
    let c = roux::frontend::compile(&root().join("tests/fixtures/tiny-llama.roux")).unwrap();
    let spec = c.recipe.unwrap().models[0].clone();
    tch::manual_seed(3);
    let model = roux::run::model::Model::new(&spec, Device::Cpu).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("resolved.json"), serde_json::json!({ "model": spec }).to_string()).unwrap();
    Tensor::write_safetensors(&model.named(), run.join("model.safetensors")).unwrap();
    let o = roux(&["export", run.to_str().unwrap(), "--to", "hf", "-o", dir.join("ck").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recipe = r#"experiment "back" {
  seed = 3
  data instr = synthetic.instructions { tasks = [reverse], examples = 400, max_len = 4, template = "Q: {prompt}\nA: " }
  model base = hf("ck")
  stage sft = finetune(base, instr) {
    steps = 100
    batch = 16
    optimizer = adamw { lr = 3e-3 }
    eval_every = 50
  }
}
"#;
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = common::metrics(&dir.join("runs/back/sft"));
    let losses: Vec<f64> = m.iter().filter_map(|r| r["loss"].as_f64()).collect();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    eprintln!("SFT loss of the imported model: {losses:?}");
    assert!(losses.len() >= 10 && last < first - 1.0, "the SFT loss of the imported model falls: {first:.3} → {last:.3}");
}

/// The recipe of the tokenizer pipeline: every post-training stage kind on an imported Qwen2,
/// its data encoded with the checkpoint's own tokenizer.
const PIPELINE: &str = r#"experiment "tok" {
  seed = 1
  data instr = synthetic.instructions { tasks = [reverse], examples = 800, max_len = 4, tokenizer = base.tokenizer }
  data prefs = synthetic.preferences { tasks = [reverse], pairs = 400, max_len = 4, tokenizer = base.tokenizer }
  model base = hf("ck")
  stage sft = finetune(base, instr) {
    steps = 300
    batch = 16
    optimizer = adamw { lr = 3e-3 }
    eval_every = 150
    eval_examples = 60
    max_new = 6
  }
  stage rm = reward_model(sft.model, prefs) { steps = 20, batch = 8, optimizer = adamw { lr = 1e-3 }, eval_every = 20 }
  stage po = dpo(policy = sft.model, prefs) { steps = 10, batch = 8, optimizer = adamw { lr = 1e-5 }, eval_every = 10, eval_examples = 40, max_new = 6 }
  stage rl = ppo(policy = sft.model, reward = rm.model, prompts = instr) { steps = 4, batch = 8, max_new = 6, optimizer = adamw { lr = 1e-5 }, eval_every = 4, eval_examples = 40 }
  stage gr = grpo(policy = sft.model, prompts = instr) { group = 4, batch = 16, steps = 4, max_new = 6, reward = exact_match, optimizer = adamw { lr = 1e-5 }, eval_every = 4, eval_examples = 40 }
  stage table = compare(base = base, sft = sft.model, dpo = po.model, ppo = rl.model, grpo = gr.model) { data = instr, examples = 40, max_new = 6 }
}
"#;

#[test]
fn an_imported_model_post_trains_on_its_own_tokenizers_ids() {
    let dir = checkpoint("tok", "qwen2-tok");
    std::fs::write(dir.join("r.roux"), PIPELINE).unwrap();
    // The ids every stage trains on are the checkpoint tokenizer's, its end token closing each response.
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let recipe = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    let codec = roux::run::kit::codec::Codec::new(&recipe, recipe.example_set("instr").unwrap()).unwrap();
    // Prompt and response are encoded apart (as torchtune encodes messages), in training and in
    // generation alike: the response's first token does not merge with the template's last.
    let script = "import sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\ne = lambda s: t.encode(s, add_special_tokens=False).ids\nprint(e('Q: reverse abcd\\nA: ') + e('dcba'), t.token_to_id('<|im_end|>'))";
    let o = common::python(script, &[dir.join("ck/tokenizer.json").to_str().unwrap()]);
    let theirs = String::from_utf8_lossy(&o.stdout).to_string();
    let mut ours = codec.prompt("reverse abcd");
    ours.extend(codec.encode("dcba"));
    assert_eq!(theirs.trim().replace(' ', ""), format!("{ours:?}{}", codec.end()[0]).replace(' ', ""), "roux's ids are the tokenizer's");
    assert_eq!(codec.decode(&[codec.encode("dcba"), codec.end().to_vec(), vec![5, 6]].concat()), "dcba");

    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    let m = common::metrics(&dir.join("runs/tok/sft"));
    let losses: Vec<f64> = m.iter().filter_map(|r| r["loss"].as_f64()).collect();
    let exact: Vec<f64> = m.iter().filter_map(|r| r["exact"].as_f64()).collect();
    eprintln!("SFT loss {:.3} → {:.3}; held-out exact match {exact:?}", losses[0], losses[losses.len() - 1]);
    assert!(losses[losses.len() - 1] < losses[0] - 1.0, "the SFT loss falls: {losses:?}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/tok/sft/report.json")).unwrap()).unwrap();
    let (before, after) = (report["before"]["exact"].as_f64().unwrap(), report["after"]["exact"].as_f64().unwrap());
    assert!(after > before + 0.05, "held-out exact match rises above the base: {before} → {after}");
    for stage in ["rm", "po", "rl", "gr", "table"] {
        assert!(dir.join("runs/tok").join(stage).join("report.json").exists(), "stage {stage} finished:\n{err}");
    }
}

/// A SentencePiece-style tokenizer (Metaspace: a `▁` before the first word of every text it
/// encodes, as Llama 2's and Mistral's): a conversation's ids are transformers' ids of the whole
/// rendered chat, in SFT, in DPO pairs and in check's counts. Encoded turn by turn, each reply
/// began with a `▁` of its own (`▁cba` where the whole text has `cba`).
#[test]
fn a_conversation_is_encoded_as_transformers_encodes_the_whole_chat() {
    let dir = checkpoint("chat-spm", "qwen2-tok");
    chat_data(&dir);
    let ck = dir.join("ck");
    let script = r#"
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast
ck = sys.argv[1]
tk = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
words = ["reverse", "sort", "uppercase", "abc", "cba", "de", "ed", "user", "assistant", "system"]
tk.train_from_iterator([" ".join(words)] * 50 + list("abcdefghij\n"), trainers.BpeTrainer(vocab_size=120, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False))
tk.save(ck + "/tokenizer.json")
# transformers 5 gives a named model's class its own pipeline (Qwen2's is byte-level); the
# generic class reads tokenizer.json as it is, as roux does.
t = PreTrainedTokenizerFast.from_pretrained(ck)
chat = [{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}, {"role": "user", "content": "reverse de"}, {"role": "assistant", "content": "ed"}]
text = t.apply_chat_template(chat, tokenize=False)
prompt = t.apply_chat_template(chat[:3], tokenize=False, add_generation_prompt=True)
ids = lambda s: t(s, add_special_tokens=False).input_ids
print(json.dumps({"chat": chat, "ids": ids(text), "pair": ids(prompt + "ed<|im_end|>\n"), "prompt": ids(prompt), "apart": ids(prompt) + ids("ed<|im_end|>\n")}))
"#;
    let o = common::python(script, &[ck.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let want = |k: &str| -> Vec<i64> { theirs[k].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
    assert_ne!(want("pair"), want("apart"), "the tokenizer must encode a reply differently apart, or the test proves nothing");
    std::fs::write(dir.join("r.roux"), "experiment \"spm\" {\n  model base = hf(\"ck\")\n  data chat = instructions(\"chat.jsonl\") { tokenizer = base.tokenizer }\n}\n").unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let recipe = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    let set = recipe.example_set("chat").unwrap();
    let codec = roux::run::kit::codec::Codec::new(&recipe, set).unwrap();
    let renderer = roux::posttrain::chat::Renderer::new(set.chat.as_ref().unwrap()).unwrap();
    let messages = roux::posttrain::chat::messages(&roux::posttrain::chat::ordered(&theirs["chat"].to_string()).unwrap()).unwrap();
    let turns = renderer.turns(&messages, &Default::default()).unwrap();
    let e = roux::posttrain::examples::Example { prompt: String::new(), response: String::new(), gold: None, turns: turns.clone() };
    let seq = codec.example(&e, true, 1000);
    assert_eq!(seq.tokens, want("ids"), "SFT: the whole chat's ids");
    // The loss covers the two replies: "cba<|im_end|>\n" and "ed<|im_end|>\n", as transformers splits them.
    let reply = want("pair")[want("prompt").len()..].to_vec();
    assert_eq!(seq.weights.iter().rev().take_while(|&&w| w == 1.0).count(), reply.len(), "the last reply is trained");
    // A DPO or reward pair: the prompt (history, generation prompt) and the reply, as one text.
    let prompt_text: String = turns[..3].iter().map(|t| t.0.as_str()).collect();
    let (p, r) = codec.pair(&prompt_text, "ed<|im_end|>\n");
    assert_eq!((p, r), (want("prompt"), reply));
}

/// Give the tokenizer.json at `path` Llama's `<s> $A` post-processor, with <|endoftext|> as `<s>`;
/// that token's id.
fn leading_special_token(path: &Path) -> i64 {
    let mut tk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bos = tk["added_tokens"].as_array().unwrap().iter().find(|t| t["content"] == "<|endoftext|>").unwrap()["id"].clone();
    let single = serde_json::json!([{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]);
    tk["post_processor"] = serde_json::json!({"type": "TemplateProcessing", "single": single, "pair": single,
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos], "tokens": ["<|endoftext|>"]}}});
    std::fs::write(path, tk.to_string()).unwrap();
    bos.as_i64().unwrap()
}

/// A tokenizer whose post-processor starts every text with a special token (Llama's `<s> $A`;
/// here `<|endoftext|>`): prompts start with it in training, scoring and sampling, as
/// `tokenizer(prompt)` in transformers gives them; the response follows without it.
#[test]
fn prompts_start_with_the_tokenizers_own_leading_special_tokens() {
    let dir = checkpoint("tok-bos", "qwen2-tok");
    let path = dir.join("ck/tokenizer.json");
    let bos = serde_json::json!(leading_special_token(&path));
    std::fs::write(dir.join("r.roux"), PIPELINE).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let recipe = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    let codec = roux::run::kit::codec::Codec::new(&recipe, recipe.example_set("instr").unwrap()).unwrap();
    let script = "import sys\nfrom transformers import PreTrainedTokenizerFast\nt = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1])\nprint(t('Q: reverse abcd\\nA: ').input_ids + t('dcba', add_special_tokens=False).input_ids)";
    let o = common::python(script, &[path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ours = codec.prompt("reverse abcd");
    assert_eq!(ours[0], bos.as_i64().unwrap(), "the prompt starts with the tokenizer's leading special token");
    ours.extend(codec.encode("dcba"));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim().replace(' ', ""), format!("{ours:?}").replace(' ', ""), "roux's ids are transformers'");
}

/// Conversations in TRL's format: "reverse <word>" answered by the reversed word, a fifth of
/// them two exchanges long; and preference pairs whose rejected answer is the word unreversed.
fn chat_data(dir: &Path) {
    let mut rng = 12345u64;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as usize
    };
    let mut word = || (0..2 + next() % 3).map(|_| (b'a' + (next() % 10) as u8) as char).collect::<String>();
    let (mut chat, mut prefs) = (String::new(), String::new());
    for i in 0..900 {
        let (a, b) = (word(), word());
        let turn = |w: &str| vec![serde_json::json!({"role": "user", "content": format!("reverse {w}")}), serde_json::json!({"role": "assistant", "content": w.chars().rev().collect::<String>()})];
        let mut messages = turn(&a);
        if i % 5 == 0 {
            messages.extend(turn(&b));
        }
        chat.push_str(&serde_json::json!({ "messages": messages }).to_string());
        chat.push('\n');
        let rev: String = a.chars().rev().collect();
        let pair = serde_json::json!({"prompt": [{"role": "user", "content": format!("reverse {a}")}], "chosen": [{"role": "assistant", "content": rev}], "rejected": [{"role": "assistant", "content": a}]});
        prefs.push_str(&pair.to_string());
        prefs.push('\n');
    }
    std::fs::write(dir.join("chat.jsonl"), chat).unwrap();
    std::fs::write(dir.join("prefs.jsonl"), prefs).unwrap();
}

/// `roux sample` draws as the checkpoint's generation_config.json says, where no flag chose, as
/// `transformers`' `generate` does: greedy (no `do_sample`) with its repetition penalty gives
/// generate's tokens; `--repetition-penalty 1` gives plain greedy's; `--min-p 1` keeps only the
/// most likely token, so sampling at temperature 1 is greedy too.
#[test]
fn sampling_follows_the_checkpoints_generation_config_as_generate_does() {
    let dir = checkpoint("generation", "qwen2-tok");
    chat_data(&dir);
    let file = dir.join("ck/generation_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    config["repetition_penalty"] = serde_json::json!(1.5);
    std::fs::write(&file, config.to_string()).unwrap();
    // One step at a learning rate that moves no float32 weight: the stage's model is the checkpoint's.
    let recipe = "experiment \"gen\" {\n  model base = hf(\"ck\")\n  data chat = instructions(\"chat.jsonl\") { tokenizer = base.tokenizer }\n  stage sft = finetune(base, chat) { steps = 1, batch = 2, optimizer = adamw { lr = 1e-30 }, eval_every = 1, eval_examples = 2, max_new = 2 }\n}\n";
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prompt = "the cat sat on the mat";
    let sample = |extra: &[&str]| {
        let run = dir.join("runs/gen/sft");
        let o = roux(&[&["sample", run.to_str().unwrap(), "--prompt", prompt, "--tokens", "16"], extra].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).trim_end_matches('\n').to_string(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (penalised, said) = sample(&[]);
    assert!(said.contains(&format!("drawing tokens greedy, repetition penalty 1.5 (as {} says, where no flag chose)", file.display())), "{said}");
    let (plain, _) = sample(&["--repetition-penalty", "1"]);
    assert_eq!(sample(&["--temperature", "1", "--min-p", "1", "--seed", "9"]).0, penalised);
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
x = tok(sys.argv[2], return_tensors="pt").input_ids
out = {}
for name, kw in [("penalised", {}), ("plain", {"repetition_penalty": 1.0})]:
    with torch.no_grad():
        y = m.generate(x, max_new_tokens=16, **kw)[0, x.shape[1]:]
    out[name] = sys.argv[2] + tok.decode(y, skip_special_tokens=False)
print(json.dumps(out))
"#;
    let o = common::python(script, &[dir.join("ck").to_str().unwrap(), prompt]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // (generate stops at the end-of-sequence token, roux's plain sampling does not: a prefix.)
    for (name, ours) in [("penalised", &penalised), ("plain", &plain)] {
        let want = theirs[name].as_str().unwrap();
        assert!(ours.starts_with(want) && want.len() > prompt.len() + 8, "{name}: roux {ours:?}, transformers {want:?}");
    }
    assert_ne!(penalised, plain, "the penalty changed nothing: the test would prove nothing");
}

#[test]
fn conversations_train_on_assistant_turns_through_the_chat_template() {
    let dir = checkpoint("chat", "qwen2-tok");
    chat_data(&dir);
    // Two end-of-sequence ids, the end of a text first, as Llama 3 Instruct lists them: replies,
    // which the template ends with <|im_end|>, stop at either, in scoring and in `sample --chat`.
    let tk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ck/tokenizer.json")).unwrap()).unwrap();
    let id = |name: &str| tk["added_tokens"].as_array().unwrap().iter().find(|t| t["content"] == name).unwrap()["id"].as_i64().unwrap();
    std::fs::write(dir.join("ck/generation_config.json"), serde_json::json!({"eos_token_id": [id("<|endoftext|>"), id("<|im_end|>")]}).to_string()).unwrap();
    let recipe = r#"experiment "chat" {
  seed = 2
  model base = hf("ck")
  data chat = instructions("chat.jsonl") { tokenizer = base.tokenizer }
  data prefs = preferences("prefs.jsonl") { tokenizer = base.tokenizer }
  stage sft = finetune(base, chat) { steps = 300, batch = 16, optimizer = adamw { lr = 3e-3 }, eval_every = 150, eval_examples = 60, max_new = 6 }
  stage po = dpo(policy = sft.model, prefs) { steps = 10, batch = 8, optimizer = adamw { lr = 1e-5 }, eval_every = 10, eval_examples = 40, max_new = 6 }
}
"#;
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let notes: Vec<String> = c.diagnostics.iter().filter(|d| d.code == "N0404").map(|d| d.message.clone()).collect();
    assert!(notes[0].starts_with("data `chat`: 900 conversations, ") && notes[0].ends_with("% of them in assistant turns (what the loss covers); 0 longer than the context of 64"), "{notes:?}");
    let recipe = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    // The loss weighs the assistant turns, their end-of-turn marker included, and nothing else.
    let set = recipe.example_set("chat").unwrap();
    let codec = roux::run::kit::codec::Codec::new(&recipe, set).unwrap();
    let split = roux::posttrain::examples::instructions(set, recipe.seed).unwrap();
    let two = split.train.iter().find(|e| e.turns.len() == 4).expect("a two-exchange conversation");
    let seq = codec.example(two, true, 64);
    let assistant: usize = two.turns.iter().filter(|t| t.1).map(|t| codec.encode(&t.0).len()).sum();
    assert_eq!(seq.weights.iter().sum::<f32>() as usize, assistant);
    assert!(two.turns[1].0.ends_with("<|im_end|>\n"));
    assert_eq!(codec.stops(), &[vec![id("<|endoftext|>")], vec![id("<|im_end|>")]]);
    assert_eq!(codec.decode(&[codec.encode("dcba"), vec![id("<|im_end|>")], codec.encode("xy"), vec![id("<|endoftext|>")]].concat()), "dcba");

    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/chat/sft/report.json")).unwrap()).unwrap();
    let (before, after) = (report["before"]["exact"].as_f64().unwrap(), report["after"]["exact"].as_f64().unwrap());
    eprintln!("chat SFT held-out exact match {before} → {after}; samples {}", report["after"]["samples"]);
    assert!(after > before + 0.05, "held-out exact match rises: {before} → {after}");
    assert!(dir.join("runs/chat/po/report.json").exists());
    // `roux sample --chat`: the message through the template, the reply alone, ended at <|im_end|>.
    let o = roux(&["sample", dir.join("runs/chat/sft").to_str().unwrap(), "--chat", "--prompt", "reverse abc", "--temperature", "0", "--tokens", "40"]);
    let reply = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("sample --chat \"reverse abc\" → {reply:?}");
    assert!(!reply.contains("<|im") && !reply.contains("reverse") && reply.trim().len() <= 8, "{reply:?}");

    // `roux chat`: a line a turn. The first reply is `sample --chat`'s (the same rendering, greedy);
    // the second turn's conversation holds the first exchange, so it is longer than twice the
    // first turn's less its generation prompt. With replies of up to 60 tokens (context 64) the
    // second turn leaves the first exchange out, and says so.
    let chat = |tokens: &str, system: &[&str]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_roux"))
            .args([&["chat", dir.join("runs/chat/sft").to_str().unwrap(), "--temperature", "0", "--tokens", tokens], system].concat())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"reverse abc\n\nreverse xy\n").unwrap();
        let o = child.wait_with_output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
        assert!(o.status.success(), "{err}");
        let sizes: Vec<usize> = err.lines().filter_map(|l| l.strip_prefix('(')?.strip_suffix(" tokens of conversation)")?.parse().ok()).collect();
        (out, err, sizes)
    };
    let (out, err, sizes) = chat("8", &[]);
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!((replies.len(), sizes.len()), (2, 2), "{out:?}\n{err}");
    assert_eq!(replies[0], reply.trim_end_matches('\n'), "{out:?}");
    assert!(!replies[1].contains("<|im") && sizes[1] > sizes[0] + sizes[0] / 2, "{sizes:?}: {out:?}");
    let (_, err, long) = chat("60", &[]);
    assert!(err.contains("(the oldest exchange is left out, to keep the conversation and a reply within the context of 64)") && long[1] < sizes[1], "{long:?}\n{err}");
    // A system message: `sample --chat --system` and the chat's first turn render it alike (a
    // longer conversation than without it) and reply alike; without --chat it is refused.
    let (out, _, with_system) = chat("8", &["--system", "Reverse the letters."]);
    assert!(with_system[0] > sizes[0], "{with_system:?} vs {sizes:?}");
    let o = roux(&["sample", dir.join("runs/chat/sft").to_str().unwrap(), "--chat", "--system", "Reverse the letters.", "--prompt", "reverse abc", "--temperature", "0", "--tokens", "8"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'), out.lines().next().unwrap());
    let o = roux(&["sample", dir.join("runs/chat/sft").to_str().unwrap(), "--system", "x"]);
    assert!(o.status.code() == Some(2) && String::from_utf8_lossy(&o.stderr).contains("--chat"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A base checkpoint without a chat template, fine-tuned on conversations in a template the
/// recipe names (`chat_template = "zephyr.jinja"`, as axolotl's `chat_template` or TRL's
/// `setup_chat_format` give one): check renders with it, the stage records it, `merge` keeps it,
/// `sample --chat` answers in it, and the export carries it as chat_template.jinja, which
/// transformers renders as roux does.
#[test]
fn a_recipe_names_the_chat_template_of_a_base_model_without_one() {
    let dir = checkpoint("chat-own", "qwen2-tok");
    chat_data(&dir);
    std::fs::remove_file(dir.join("ck/chat_template.jinja")).unwrap();
    let zephyr = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
    std::fs::write(dir.join("zephyr.jinja"), zephyr).unwrap();
    let recipe = |template: &str| {
        format!(
            r#"experiment "own" {{
  seed = 3
  model base = hf("ck")
  data chat = instructions("chat.jsonl") {{ tokenizer = base.tokenizer{template} }}
  stage sft = finetune(base, chat) {{
    adapter = lora {{ rank = 4, alpha = 8, targets = [attn.q, attn.v] }}
    steps = 6, batch = 4, eval_every = 6, eval_examples = 4, max_new = 3
  }}
}}
"#
        )
    };
    std::fs::write(dir.join("r.roux"), recipe("")).unwrap();
    let o = roux(&["check", dir.join("r.roux").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("error[E0214]: data `chat` holds conversations, but model `base` has no chat template") && err.contains("or name a template file: `chat_template = \"chatml.jinja\"`"), "{err}");
    std::fs::write(dir.join("r.roux"), recipe(", chat_template = \"zephyr.jinja\"")).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resolved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/own/sft/resolved.json")).unwrap()).unwrap();
    assert_eq!(resolved["chat_template"]["source"], zephyr);
    assert_eq!(resolved["chat_template"]["eos"], "<|im_end|>", "the checkpoint's special tokens");
    let merged = dir.join("merged");
    let o = roux(&["merge", dir.join("runs/own/sft").to_str().unwrap(), "-o", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The checkpoint has no template: an answer at all means the run's was used.
    let o = roux(&["sample", merged.to_str().unwrap(), "--chat", "--prompt", "reverse abc", "--temperature", "0", "--tokens", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exported = dir.join("exported");
    let o = roux(&["export", merged.to_str().unwrap(), "--to", "hf", "-o", exported.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(exported.join("chat_template.jinja")).unwrap(), zephyr);
    let chat = r#"[{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}]"#;
    let script = "import json, sys\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\nprint(json.dumps(t.apply_chat_template(json.loads(sys.argv[2]), tokenize=False)))";
    let o = common::python(script, &[exported.to_str().unwrap(), chat]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: String = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let template: roux::recipe::ChatTemplate = serde_json::from_value(resolved["chat_template"].clone()).unwrap();
    let messages = roux::posttrain::chat::messages(&roux::posttrain::chat::ordered(chat).unwrap()).unwrap();
    let ours = roux::posttrain::chat::Renderer::new(&template).unwrap().render(&messages, &Default::default(), false).unwrap();
    assert_eq!(ours, "<|user|>\nreverse abc<|im_end|>\n<|assistant|>\ncba<|im_end|>\n");
    assert_eq!(theirs, ours, "transformers renders the exported template as roux trained with it");
}

#[test]
fn mixtral_maps_onto_the_top_k_router_with_stacked_experts() {
    // 4 SwiGLU experts, top-2 with the gates renormalised, in every block.
    import("mixtral", "MixtralForCausalLM");
}

#[test]
fn lora_on_an_imported_model_exports_as_a_peft_adapter_of_the_checkpoint() {
    lora_exports_as_peft("lora", "qwen2-tok", "attn.q, attn.k, attn.v, attn.o, ffn.w1, ffn.w2, ffn.w3");
}

/// Phi-3 keeps q, k and v in one module and the gate and up projections in another: adapters on
/// q and v and on the gate alone become one PEFT adapter on each fused module, zero on the rows
/// they do not cover.
#[test]
fn lora_on_part_of_phi3s_fused_projections_exports_as_a_peft_adapter() {
    lora_exports_as_peft("lora-phi3", "phi3-tok", "attn.q, attn.v, ffn.w1");
}

/// A LoRA SFT stage (adapters on `targets`, `steps` steps) run on a copy of checkpoint `which`
/// with chat data: the project folder, and the stage's model merged and the checkpoint's, loaded.
fn lora_run(name: &str, which: &str, targets: &str, steps: usize) -> (PathBuf, roux::run::model::Model, roux::run::model::Model) {
    lora_run_with(name, which, &format!("rank = 4, alpha = 8, targets = [{targets}]"), steps)
}

/// `lora_run` with the adapter's whole body (`rank = 4, …`).
fn lora_run_with(name: &str, which: &str, adapter: &str, steps: usize) -> (PathBuf, roux::run::model::Model, roux::run::model::Model) {
    let dir = checkpoint(name, which);
    chat_data(&dir);
    let recipe = format!(
        r#"experiment "lora" {{
  seed = 4
  model base = hf("ck")
  data chat = instructions("chat.jsonl") {{ tokenizer = base.tokenizer }}
  stage sft = finetune(base, chat) {{
    adapter = lora {{ {adapter} }}
    steps = {steps}
    batch = 8
    optimizer = adamw {{ lr = 3e-2 }}
    eval_every = {steps}
    eval_examples = 10
    max_new = 4
  }}
}}
"#
    );
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let recipe = c.recipe.unwrap();
    let merged = roux::recipe::ModelRef { arch: "base".into(), weights: roux::recipe::Weights::Merged { stage: "sft".into() } };
    let model = roux::run::kit::artifacts::load_lm(&recipe, &dir.join("runs/lora"), &merged, Device::Cpu).unwrap();
    let plain = roux::run::kit::hf::load(&recipe.models[0], Device::Cpu, None).unwrap();
    (dir, model, plain)
}

/// PEFT with transformers 5 reads a Qwen3-MoE model's MLP targets as its experts' fused
/// weights, so an adapter on its dense block's MLP cannot go out as a PEFT adapter: the export
/// says so and how to write the model instead. `roux merge` folds it into the checkpoint's
/// weights (and says so), and transformers computes the merged model's logits from its export.
#[test]
fn an_adapter_on_a_qwen3_moe_dense_mlp_goes_out_merged_not_as_peft() {
    let (dir, model, plain) = lora_run("lora-qwen3moe", "qwen3moe-tok", "attn.q, ffn.w1", 10);
    let run = dir.join("runs/lora/sft");
    let o = roux(&["export", run.to_str().unwrap(), "--to", "peft", "-o", dir.join("adapter").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let merged = run.join("merged");
    let want = format!(
        "{}: the adapter on `model.layers.1.mlp.gate_proj` (a dense block's MLP) cannot be loaded by PEFT as trained: with transformers 5 it reads every MLP \
         projection target of a Qwen3-MoE model as the experts' fused weights. Export the fine-tuned model whole instead: `roux merge {}`, then `roux export {} --to hf`",
        run.display(),
        run.display(),
        merged.display()
    );
    assert!(!o.status.success() && err.contains(&want), "{err}");
    assert!(!dir.join("adapter").exists());
    let o = roux(&["merge", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success() && err.contains(&format!("`sft`'s adapter merged into the checkpoint in {}", dir.join("ck").display())), "{err}");
    merged_export_is_transformers(&dir, &merged, (&model, &plain), "Qwen3MoeForCausalLM");
}

/// `roux export MERGED --to hf` of a merged LoRA stage: transformers on the export computes
/// `model`'s logits on the checkpoint's four prompts within 1e-4, and they differ from the base
/// model `plain`'s (else the comparison would prove nothing).
fn merged_export_is_transformers(dir: &Path, merged: &Path, (model, plain): (&roux::run::model::Model, &roux::run::model::Model), class_name: &str) {
    let out = dir.join("out");
    let o = roux(&["export", merged.to_str().unwrap(), "--to", "hf", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // roux's merged model on the four prompts, then transformers on the export.
    let prompts: Vec<Vec<i64>> = expected(dir)["prompts"].as_array().unwrap().iter().map(|p| p.as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect()).collect();
    let logits = |m: &roux::run::model::Model| -> Vec<Vec<f64>> {
        prompts.iter().map(|p| Vec::<f64>::try_from(&tch::no_grad(|| m.forward(&Tensor::from_slice(p).view([1, -1]), false)).to_kind(Kind::Double).view([-1])).unwrap()).collect()
    };
    let (ours, base) = (logits(model), logits(plain));
    let moved = ours.iter().flatten().zip(base.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-3, "the adapter changes nothing ({moved:.1e}): the test would prove nothing");
    std::fs::write(dir.join("ours.json"), serde_json::json!({"prompts": prompts, "logits": ours}).to_string()).unwrap();
    let (class, gap) = transformers_logits(&out, &dir.join("ours.json"));
    eprintln!("merged LoRA: transformers on roux's export ({class}), max |Δlogit| = {gap:.3e}");
    assert!(class == class_name && gap < 1e-4, "{class} {gap:.3e}");
}

/// LoRA on a Mixtral checkpoint's experts (an A and a B per expert): exported for PEFT as an
/// adapter per expert on transformers 4's per-expert linears, which PEFT fuses onto transformers
/// 5's stacked experts as it loads; transformers + peft compute roux's logits.
#[test]
fn lora_on_mixtral_experts_exports_as_a_peft_adapter() {
    lora_exports_as_peft("lora-mixtral-experts", "mixtral-tok", "experts.w1, experts.w2, experts.w3");
}

/// The same on Qwen3-MoE, whose experts' projections PEFT names gate_proj, up_proj and down_proj.
#[test]
fn lora_on_qwen3_moe_experts_exports_as_a_peft_adapter() {
    lora_exports_as_peft("lora-qwen3moe-experts", "qwen3moe-tok", "attn.v, experts.w1, experts.w2, experts.w3");
}

/// Qwen2-MoE's experts, routed or shared, have no PEFT form that loads as trained (PEFT converts
/// no Qwen2-MoE expert adapters): the export says which adapter and how to write the model
/// instead.
#[test]
fn lora_on_qwen2_moe_experts_is_refused_for_peft_naming_the_adapter() {
    for (targets, stack, name) in [("experts.w1, experts.w3", "experts.w1", "experts"), ("shared.w2", "shared.w2", "shared")] {
        let want = format!("stacked experts `blocks.1.ffn.{stack}` cannot be written for PEFT in the Qwen2-MoE layout: PEFT converts the expert adapters of Mixtral, OLMoE and Qwen3-MoE only.");
        let (dir, _, _) = lora_run(&format!("lora-qwen2moe-{name}"), "qwen2moe-tok", targets, 2);
        let run = dir.join("runs/lora/sft");
        let o = roux(&["export", run.to_str().unwrap(), "--to", "peft", "-o", dir.join("adapter").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let whole = format!("Export the fine-tuned model whole instead: `roux merge {}`, then `roux export {} --to hf`", run.display(), run.join("merged").display());
        assert!(!o.status.success() && err.contains(&format!("{}: the adapter on the {want} {whole}", run.display())), "{err}");
        assert!(!dir.join("adapter").exists());
    }
}

/// An adapter on the experts' gate projection alone cannot go out for PEFT, which fuses it with
/// the up projection as it loads: the export says so and how to write the model instead. The
/// held-out loss fell, the adapter holds one A per expert, and transformers computes the merged
/// model's logits from its export.
#[test]
fn lora_on_half_of_mixtrals_fused_experts_goes_out_merged() {
    let (dir, model, plain) = lora_run("lora-mixtral-w1", "mixtral-tok", "experts.w1, experts.w2", 20);
    let run = dir.join("runs/lora/sft");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let (before, after) = (report["val_loss"]["before"].as_f64().unwrap(), report["val_loss"]["after"].as_f64().unwrap());
    assert!(after < before - 0.1, "the held-out loss did not fall: {before} → {after}");
    let adapter = Tensor::read_safetensors(run.join("adapter.safetensors")).unwrap();
    let experts = plain.named().into_iter().find(|(n, _)| n == "blocks.0.ffn.experts.w1").unwrap().1.size();
    let a = &adapter.iter().find(|(n, _)| n == "blocks.0.ffn.experts.w1.lora_A.weight").expect("an adapter on the experts").1;
    assert_eq!(a.size(), [experts[0], 4, experts[2]]);
    let o = roux(&["export", run.to_str().unwrap(), "--to", "peft", "-o", dir.join("adapter").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let want = format!(
        "{}: `model.layers.0.block_sparse_moe.experts.0` has an adapter on one of w1 and w3, which PEFT fuses as it loads a Mixtral model's experts: target `experts.w1` and `experts.w3` together, \
         or export the fine-tuned model whole: `roux merge {}`, then `roux export {} --to hf`",
        run.display(),
        run.display(),
        run.join("merged").display()
    );
    assert!(!o.status.success() && err.contains(&want), "{err}");
    assert!(roux(&["merge", run.to_str().unwrap()]).status.success());
    merged_export_is_transformers(&dir, &run.join("merged"), (&model, &plain), "MixtralForCausalLM");
}

/// PEFT scales the experts' fused gate and up adapters by twice the alpha over √(twice the rank),
/// so an rsLoRA adapter on them cannot go out for PEFT as trained: the export says so.
#[test]
fn rslora_on_mixtrals_fused_experts_is_refused_for_peft() {
    let (dir, _, _) = lora_run_with("lora-mixtral-rslora", "mixtral-tok", "rank = 4, alpha = 8, rslora = true, targets = [experts.w1, experts.w3]", 2);
    let run = dir.join("runs/lora/sft");
    let o = roux(&["export", run.to_str().unwrap(), "--to", "peft", "-o", dir.join("adapter").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let want = format!(
        "{}: PEFT scales the experts' fused w1 and w3 adapters of a Mixtral model by twice the alpha over √(twice the rank), not rsLoRA's alpha over √rank: leave `rslora` out, \
         or export the fine-tuned model whole: `roux merge {}`, then `roux export {} --to hf`",
        run.display(),
        run.display(),
        run.join("merged").display()
    );
    assert!(!o.status.success() && err.contains(&want), "{err}");
}

/// A LoRA SFT stage on imported checkpoint `which` (adapters on `targets`) exported with
/// `--to peft`: transformers + peft on the checkpoint compute roux's merged model's logits.
fn lora_exports_as_peft(name: &str, which: &str, targets: &str) {
    let (dir, model, plain) = lora_run(name, which, targets, 30);
    let adapter = dir.join("adapter");
    let o = roux(&["export", dir.join("runs/lora/sft").to_str().unwrap(), "--to", "peft", "-o", adapter.to_str().unwrap(), "--base", dir.join("ck").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // roux's merged model against transformers' checkpoint with peft's adapter on it.
    let tokens: Vec<i64> = (0..20).map(|i| (i * 37 + 11) % 280).collect();
    let x = Tensor::from_slice(&tokens).view([1, -1]);
    let ours = tch::no_grad(|| model.forward(&x, false)).to_kind(Kind::Double);
    let base = tch::no_grad(|| plain.forward(&x, false)).to_kind(Kind::Double);
    assert!((&ours - &base).abs().max().double_value(&[]) > 1e-3, "the adapter changes nothing: the test would prove nothing");
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
from transformers import AutoTokenizer
d = json.load(open(sys.argv[2]))
# The adapter carries its tokenizer and the chat template it was trained in, as TRL saves them.
tok = AutoTokenizer.from_pretrained(sys.argv[1])
assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == d["chat"], tok.chat_template
base = AutoModelForCausalLM.from_pretrained(json.load(open(sys.argv[1] + "/adapter_config.json"))["base_model_name_or_path"], dtype=torch.float32)
m = PeftModel.from_pretrained(base, sys.argv[1]).eval()
with torch.no_grad():
    out = m(torch.tensor([d["tokens"]])).logits.double().flatten()
print((out - torch.tensor(d["logits"], dtype=torch.float64)).abs().max().item())
"#;
    let logits: Vec<f64> = Vec::<f64>::try_from(&ours.view([-1])).unwrap();
    let trained: roux::recipe::ChatTemplate = serde_json::from_value(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("runs/lora/sft/resolved.json")).unwrap()).unwrap()["chat_template"].clone()).unwrap();
    let chat = roux::posttrain::chat::Renderer::new(&trained).unwrap().render(&[roux::posttrain::chat::Message::new("user", "hi")], &Default::default(), false).unwrap();
    std::fs::write(dir.join("roux.json"), serde_json::json!({"tokens": tokens, "logits": logits, "chat": chat}).to_string()).unwrap();
    let o = common::python(script, &[adapter.to_str().unwrap(), dir.join("roux.json").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let gap: f64 = out.trim().parse().unwrap();
    eprintln!("imported {which} + LoRA: roux vs transformers + peft, max |Δlogit| = {gap:.3e}");
    assert!(gap < 1e-4, "{gap}");
}

#[test]
fn olmoe_with_whole_projection_qk_norm_and_unnormalised_gates() {
    // QK-norm over all of q's and k's features (not each head's), top-2 of 4 experts whose gates
    // keep their softmax values (norm_topk_prob = false).
    import("olmoe", "OlmoeForCausalLM");
}

#[test]
fn qwen2_moe_with_a_gated_shared_expert_of_its_own_width() {
    import("qwen2moe", "Qwen2MoeForCausalLM");
}

#[test]
fn qwen3_moe_in_bfloat16_with_per_head_qk_norm_renormalised_gates_and_a_dense_block() {
    // transformers 5 writes `num_experts` as `num_local_experts`; checkpoints on the hub keep
    // the first (tests/hf_check.rs reads both).
    import("qwen3moe", "Qwen3MoeForCausalLM");
}

/// Sliding-window attention as each family's config places it: Mistral and Phi-3 by
/// `sliding_window` in every block, Qwen3-MoE in every block with `use_sliding_window`, Qwen2 in
/// the blocks from `max_window_layers` on, Qwen2-MoE in the even blocks below it. Each imports
/// with transformers' logits on prompts of up to 33 tokens through an 8-token window (which
/// moves them: without it roux's differ), and exports as the same config.
#[test]
fn attention_windows_import_where_each_family_places_them() {
    for (name, class, blocks) in [
        ("mistral-window", "MistralForCausalLM", None),
        ("phi3-window", "Phi3ForCausalLM", None),
        ("qwen3moe-window", "Qwen3MoeForCausalLM", None),
        ("qwen2-window", "Qwen2ForCausalLM", Some(vec![1])),
        ("qwen2moe-window", "Qwen2MoeForCausalLM", Some(vec![0])),
    ] {
        import(name, class);
        let dir = checkpoint(&format!("{name}-spec"), name);
        let spec = roux::frontend::compile(&dir.join("import.roux")).unwrap().recipe.unwrap().models[0].clone();
        assert_eq!((spec.window, &spec.window_layers), (Some(8), &blocks), "{name}");
        let x = Tensor::from_slice(&expected(&dir)["prompts"][3].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect::<Vec<_>>()).view([1, -1]);
        let full = roux::recipe::ModelSpec { window: None, window_layers: None, ..spec.clone() };
        let logits = |s: &roux::recipe::ModelSpec| tch::no_grad(|| roux::run::kit::hf::load(s, Device::Cpu, None).unwrap().forward(&x, false));
        let moved = (logits(&spec) - logits(&full)).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "{name}: the window moves no logit ({moved:.1e}): the test would prove nothing");
    }
}

#[test]
fn gemma3_text_with_sandwich_norms_offset_gains_and_local_and_global_blocks() {
    // GEGLU; every norm's gain an offset from 1; norms before and after each sublayer; embeddings
    // scaled by √d; per-head QK-norm; block 0 windowed (8 tokens) with rope base 10^4, block 1
    // full with 10^6.
    import("gemma3", "Gemma3ForCausalLM");
    let dir = checkpoint("gemma3-spec", "gemma3");
    let spec = roux::frontend::compile(&dir.join("import.roux")).unwrap().recipe.unwrap().models[0].clone();
    assert_eq!((spec.window, spec.window_layers.clone(), spec.window_rope_theta, spec.rope_theta), (Some(8), Some(vec![0]), Some(1e4), Some(1e6)));
}

/// Gemma 3 4B and up are multimodal (`Gemma3ForConditionalGeneration`): roux imports the text
/// model (`text_config`, the tensors under `language_model.`), leaving the vision tower and its
/// projector unread, with transformers' text logits; it exports as the text model alone,
/// `Gemma3ForCausalLM`, from which transformers computes the same logits.
#[test]
fn gemma3_multimodal_imports_its_text_model() {
    let dir = checkpoint("gemma3mm", "gemma3mm");
    let names = Tensor::read_safetensors(dir.join("ck/model.safetensors")).unwrap();
    assert!(names.iter().any(|(n, _)| n.starts_with("vision_tower.")) && names.iter().any(|(n, _)| n.starts_with("language_model.model.")), "the checkpoint is the multimodal layout");
    assert_eq!(planned_params(&dir), expected(&dir)["params"].as_u64().unwrap(), "roux plan counts the text model transformers holds");
    let (gap, model) = logit_gap(&dir);
    assert!(gap < 1e-4, "logits differ from transformers' by {gap:.3e}");
    let (class, gap) = transformers_logits(&exported(&dir, &model), &dir.join("ck/expected.json"));
    assert!(class == "Gemma3ForCausalLM" && gap < 1e-4, "transformers on roux's export: {class}, logits differ by {gap:.3e}");
    // A text tensor missing from the checkpoint is named as the text model names it.
    let partial: Vec<(String, Tensor)> = names.into_iter().filter(|(n, _)| n != "language_model.model.norm.weight").collect();
    Tensor::write_safetensors(&partial, dir.join("ck/model.safetensors")).unwrap();
    let c = roux::frontend::compile(&dir.join("import.roux")).unwrap();
    let errors: Vec<String> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.code, d.message)).collect();
    assert!(errors.len() == 1 && errors[0].starts_with("E0217") && errors[0].contains("`model.norm.weight`"), "{errors:?}");
}

/// Gemma 2 soft-caps its attention scores and its logits (c·tanh(x / c)): its logits are
/// transformers', and without the caps roux's would differ.
#[test]
fn gemma2_with_soft_capped_scores_and_logits() {
    import("gemma2", "Gemma2ForCausalLM");
    let dir = checkpoint("gemma2-spec", "gemma2");
    let spec = roux::frontend::compile(&dir.join("import.roux")).unwrap().recipe.unwrap().models[0].clone();
    assert_eq!((spec.attn_softcap, spec.logit_softcap, spec.window, spec.window_layers.clone()), (Some(0.5), Some(0.5), Some(8), Some(vec![0])));
    let x = Tensor::from_slice(&expected(&dir)["prompts"][3].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect::<Vec<_>>()).view([1, -1]);
    let logits = |s: &roux::recipe::ModelSpec| tch::no_grad(|| roux::run::kit::hf::load(s, Device::Cpu, None).unwrap().forward(&x, false));
    let capped = logits(&spec);
    assert!(capped.abs().max().double_value(&[]) < 0.5, "logits past the cap");
    for uncapped in [roux::recipe::ModelSpec { attn_softcap: None, ..spec.clone() }, roux::recipe::ModelSpec { logit_softcap: None, ..spec.clone() }] {
        let moved = (logits(&uncapped) - &capped).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "a cap moves no logit ({moved:.1e}): the test would prove nothing");
    }
}

#[test]
fn olmo2_normalises_its_sublayers_outputs() {
    // Each block's norms after its attention and its MLP, before the residual adds them
    // (`post_norm`), and QK-norm over the whole projections.
    import("olmo2", "Olmo2ForCausalLM");
}

#[test]
fn phi3_with_fused_qkv_and_gate_up_projections() {
    import("phi3", "Phi3ForCausalLM");
}

/// Continued pretraining of an imported model on a text corpus read with the checkpoint's own
/// tokenizer: the corpus ids are the tokenizer's, the validation loss falls, the run keeps the
/// tokenizer beside its model (so `sample` decodes its ids), and a corpus read as bytes is refused.
#[test]
fn an_imported_model_continues_pretraining_on_text_through_its_tokenizer() {
    let dir = checkpoint("corpus-tok", "qwen2-tok");
    let text = std::fs::read_to_string(root().join("data/tinyshakespeare.txt")).unwrap();
    std::fs::write(dir.join("corpus.txt"), &text[..200_000]).unwrap();
    let recipe = |tokenizer: &str| {
        format!(
            r#"experiment "cont" {{
  seed = 2
  data corpus = text("corpus.txt") {{ context = 32{tokenizer} }}
  model base = hf("ck")
  stage more = train(base, corpus) {{ steps = 40, batch = 8, optimizer = adamw {{ lr = 3e-3 }}, eval_every = 20, eval_batches = 4 }}
}}
"#
        )
    };
    std::fs::write(dir.join("bytes.roux"), recipe("")).unwrap();
    let o = roux(&["check", dir.join("bytes.roux").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(err.contains("stage `more` trains on `corpus` as bytes, but the weights it continues learned the tokens of its own tokenizer (model `base` is imported from a checkpoint)"), "{err}");
    assert!(err.contains("read the corpus with the model's tokenizer: add `tokenizer = base.tokenizer` to data `corpus`"), "{err}");

    // Only an imported model has a tokenizer to read a corpus with.
    let fresh = "experiment \"f\" {\n  data corpus = text(\"corpus.txt\") { context = 32, tokenizer = m.tokenizer }\n  model m = transformer { vocab = 256, context = 32, d_model = 16, layers = 1, heads = 2 }\n}\n";
    std::fs::write(dir.join("fresh.roux"), fresh).unwrap();
    let o = roux(&["check", dir.join("fresh.roux").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(err.contains("E0315") && err.contains("data `corpus` takes the tokenizer of `m`, which has none: only a model imported with `hf(\"…\")` from a folder with tokenizer.json does"), "{err}");
    // A model declaration cannot size itself from that corpus: its vocabulary is the checkpoint's.
    let sized = "experiment \"s\" {\n  data corpus = text(\"corpus.txt\") { context = 32, tokenizer = base.tokenizer }\n  model base = hf(\"ck\")\n  model m = transformer { vocab = corpus.vocab, context = 32, d_model = 16, layers = 1, heads = 2 }\n}\n";
    std::fs::write(dir.join("sized.roux"), sized).unwrap();
    let o = roux(&["check", dir.join("sized.roux").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(err.contains("`corpus.vocab` is the vocabulary of `base`'s tokenizer, which a model declaration cannot read"), "{err}");
    std::fs::write(dir.join("r.roux"), recipe(", tokenizer = base.tokenizer")).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    assert_eq!(r.data[0].vocab, r.models[0].vocab, "the corpus's vocabulary is the model's");
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.join("runs/cont/more");
    assert_eq!(std::fs::read(run.join("tokenizer.json")).unwrap(), std::fs::read(dir.join("ck/tokenizer.json")).unwrap());
    // The ids roux trained on are what `tokenizers` in Python makes of the training split.
    let corpus = roux::run::kit::data::Corpus::load(&r.data[0], &run, Some(&dir.join("ck"))).unwrap();
    let script = "import sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\ns = open(sys.argv[2], encoding='utf-8').read()\nprint(t.encode(s[:int(len(s.encode()) * 0.9)], add_special_tokens=False).ids[:200])";
    let o = common::python(script, &[dir.join("ck/tokenizer.json").to_str().unwrap(), dir.join("corpus.txt").to_str().unwrap()]);
    let theirs: Vec<u32> = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(&corpus.train[..200], &theirs[..], "roux's corpus ids are the tokenizer's");
    let bytes: Vec<u32> = text.bytes().take(200).map(u32::from).collect();
    assert!(corpus.train[..200] != bytes[..] && corpus.train.len() < 180_000, "the tokenizer's ids, not bytes: {} tokens", corpus.train.len());
    let val: Vec<f64> = common::metrics(&run).iter().filter_map(|m| m["val_loss"].as_f64()).collect();
    assert!(val.len() >= 2 && val[val.len() - 1] < val[0], "the validation loss falls: {val:?}");
    let o = roux(&["sample", run.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "8"]);
    assert!(o.status.success() && !o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));

    // A tokenizer whose normalizer puts a megabyte between every two characters is tried,
    // bounded, on the corpus's first 64 KB, and stops the run there (200 KB would ask 200 GB).
    let bomb = serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "normalizer": {"type": "Replace", "pattern": {"Regex": ""}, "content": "x".repeat(1 << 20)},
        "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}});
    std::fs::write(dir.join("ck/tokenizer.json"), bomb.to_string()).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("bomb").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: a checkpoint's tokenizer asked for more than 256 MiB of memory at once, or 2 GiB in all, in one call"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A `.jsonl` corpus holds documents (`{"text": …}`): with a checkpoint's tokenizer each is
/// `tokenizer(doc).input_ids + [eos]` (its leading special token included, as transformers gives
/// it), as nanoGPT and torchtune prepare a corpus; in bytes each ends with a newline. Check reads
/// its first lines; an imported model continues pretraining on it.
#[test]
fn a_jsonl_corpus_is_documents_each_ended_by_the_end_of_sequence_token() {
    let dir = checkpoint("docs-tok", "qwen2-tok");
    let bos = serde_json::json!(leading_special_token(&dir.join("ck/tokenizer.json")));
    let text = std::fs::read_to_string(root().join("data/tinyshakespeare.txt")).unwrap();
    let docs: Vec<&str> = text[..60_000].split("\n\n").collect();
    std::fs::write(dir.join("docs.jsonl"), docs.iter().map(|d| format!("{}\n", serde_json::json!({"text": d}))).collect::<String>()).unwrap();
    let recipe = "experiment \"docs\" {\n  seed = 2\n  data docs = text(\"docs.jsonl\") { context = 32, tokenizer = base.tokenizer }\n  data raw = text(\"docs.jsonl\") { context = 32 }\n  model base = hf(\"ck\")\n  stage more = train(base, docs) { steps = 6, batch = 4 }\n}\n";
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
    let corpus = roux::run::kit::data::Corpus::load(&r.data[0], &dir.join("ck"), Some(&dir.join("ck"))).unwrap();
    let script = r#"
import json, sys
from transformers import PreTrainedTokenizerFast, GenerationConfig
t = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1] + "/tokenizer.json")
eos = GenerationConfig.from_pretrained(sys.argv[1]).eos_token_id
eos = eos[0] if isinstance(eos, list) else eos
print(json.dumps([i for line in open(sys.argv[2], encoding="utf-8") for i in t(json.loads(line)["text"]).input_ids + [eos]]))
"#;
    let o = common::python(script, &[dir.join("ck").to_str().unwrap(), dir.join("docs.jsonl").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<u32> = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(corpus.train[0] as i64, bos.as_i64().unwrap(), "a document starts with the tokenizer's leading special token");
    assert!(!corpus.train.is_empty() && !corpus.val.is_empty());
    assert_eq!([corpus.train.clone(), corpus.val.clone()].concat(), theirs, "roux's ids are transformers' tokenizer(doc) + [eos], document by document");
    // The split falls between documents.
    assert_eq!(corpus.val.first(), Some(&(bos.as_u64().unwrap() as u32)));
    // In bytes, a newline ends each document.
    let bytes = roux::run::kit::data::Corpus::load(&r.data[1], &dir, None).unwrap();
    let joined: Vec<u32> = docs.iter().flat_map(|d| d.bytes().chain([b'\n'])).map(u32::from).collect();
    assert_eq!([bytes.train, bytes.val].concat(), joined);
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = common::metrics(&dir.join("runs/docs/more")).pop().unwrap();
    assert!(last["step"] == 6 && last["loss"].as_f64().unwrap().is_finite(), "{last}");

    // Check reads the first lines: a bad one is an error naming it, `field` names another key.
    std::fs::write(dir.join("bad.jsonl"), "{\"text\": \"a\"}\n{\"body\": \"b\"}\n").unwrap();
    let errors = |data: &str| {
        std::fs::write(dir.join("c.roux"), format!("experiment \"c\" {{\n  data d = {data}\n}}\n")).unwrap();
        let c = roux::frontend::compile(&dir.join("c.roux")).unwrap();
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.code.to_string(), d.message.clone())).collect::<Vec<_>>()
    };
    assert_eq!(errors("text(\"bad.jsonl\") { context = 4, split = 0.5 }"), vec![("E0214".to_string(), "`bad.jsonl` line 2: no field `text`".to_string())]);
    assert_eq!(errors("text(\"bad.jsonl\") { context = 4, split = 0.5, field = \"body\" }"), vec![("E0214".to_string(), "`bad.jsonl` line 1: no field `body`".to_string())]);
    assert_eq!(errors("text(\"docs.jsonl\") { context = 4, field = \"text\" }"), vec![]);
    std::fs::write(dir.join("plain.txt"), "x".repeat(100)).unwrap();
    assert_eq!(errors("text(\"plain.txt\") { context = 4, field = \"text\" }"), vec![("E0214".to_string(), "`field` names the key of a document in a .jsonl corpus; `plain.txt` is read as plain text".to_string())]);
}

/// Under expert parallelism each process imports only its experts: `hf::load` with a share reads
/// the per-expert tensors of its experts alone and stacks them, so every process holds its rows
/// of each routed stack (equal to the whole import's rows) and everything else whole, shared
/// experts (Qwen2-MoE) included.
#[test]
fn an_imported_moe_checkpoint_is_read_one_share_of_the_experts_per_process() {
    use roux::run::model::expert_parallel::Share;
    for which in ["mixtral", "olmoe", "qwen2moe", "qwen3moe"] {
        let dir = checkpoint(&format!("share-{which}"), which);
        let c = roux::frontend::compile(&dir.join("import.roux")).unwrap();
        let spec = c.recipe.unwrap().models[0].clone();
        let experts = spec.moe.as_ref().unwrap().experts as i64;
        let whole = roux::run::kit::hf::load(&spec, Device::Cpu, None).unwrap();
        for part in 0..2 {
            let mine = roux::run::kit::hf::load(&spec, Device::Cpu, Some(Share { parts: 2, part })).unwrap();
            let mut divided = 0;
            for ((name, t), (_, w)) in mine.named().iter().zip(whole.named().iter()) {
                let expected = if roux::lower::lower_model(&spec).params().iter().any(|p| &p.name == name && p.routed_expert()) {
                    divided += 1;
                    w.narrow(0, part * experts / 2, experts / 2)
                } else {
                    w.shallow_clone()
                };
                assert!(t.equal(&expected), "{which}, part {part}: `{name}` differs from the whole import's rows");
            }
            let routed: u64 = roux::lower::lower_model(&spec).params().iter().filter(|p| p.routed_expert()).map(|p| p.numel()).sum();
            assert!(divided > 0);
            assert_eq!(mine.numel(), whole.numel() - routed / 2, "{which}: held parameters");
        }
    }
}

/// An imported Mixtral trains with its experts divided over 2 processes as one process trains
/// it: each process reads only its experts from the checkpoint and holds 97,392 of its 143,472
/// parameters (2 layers × 4 experts × 3 matrices of 80 × 48 = 92,160 expert parameters, half of
/// them on each process), and the weights it writes equal one process's within 1e-5.
#[test]
fn an_imported_mixtral_trains_with_its_experts_divided_as_one_process_trains_it() {
    let dir = checkpoint("mixtral-ep", "mixtral-tok");
    let text = std::fs::read_to_string(root().join("data/tinyshakespeare.txt")).unwrap();
    std::fs::write(dir.join("corpus.txt"), &text[..100_000]).unwrap();
    let recipe = dir.join("ep.roux");
    std::fs::write(
        &recipe,
        r#"experiment "ep" {
  seed = 3
  data corpus = text("corpus.txt") { context = 32, tokenizer = base.tokenizer }
  model base = hf("ck")
  stage pretrain = train(base, corpus) { steps = 10, batch = 8, log_every = 1, eval_every = 10, eval_batches = 1 }
}
"#,
    )
    .unwrap();
    let run = |name: &str, extra: &[&str]| -> (serde_json::Value, Vec<(String, Tensor)>) {
        let out = dir.join(name);
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()], extra].concat());
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let stage = out.join("ep/pretrain");
        let report = serde_json::from_str(&std::fs::read_to_string(stage.join("report.json")).unwrap()).unwrap();
        (report, Tensor::read_safetensors(stage.join("model.safetensors")).unwrap())
    };
    let (one, one_weights) = run("one", &[]);
    let (ep, ep_weights) = run("ep", &["--nproc", "2", "--set", "pretrain.expert_parallel=2"]);
    assert_eq!((ep["params"].as_u64(), ep["params_per_process"].as_u64()), (Some(143_472), Some(97_392)), "{ep}");
    assert!((one["final_loss"].as_f64().unwrap() - ep["final_loss"].as_f64().unwrap()).abs() < 1e-5, "{one} vs {ep}");
    let by_name: std::collections::HashMap<_, _> = ep_weights.into_iter().collect();
    assert_eq!(by_name.len(), one_weights.len());
    for (name, w) in &one_weights {
        let gap = (w - &by_name[name]).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "`{name}` differs by {gap:e} between one process and the experts divided");
    }
}


/// The shared Python process (`common::python`) fails a check that fails: the checks above prove
/// nothing otherwise.
#[test]
fn the_shared_python_process_reports_what_a_script_prints_and_how_it_ends() {
    let ok = common::python("import sys\nprint(sys.argv[1:])", &["a", "b"]);
    assert!(ok.status.success() && String::from_utf8_lossy(&ok.stdout) == "['a', 'b']\n", "{ok:?}");
    let failed = common::python("assert 1 + 1 == 3, 'arithmetic'", &[]);
    assert!(!failed.status.success() && String::from_utf8_lossy(&failed.stderr).contains("AssertionError: arithmetic"), "{failed:?}");
    assert!(!common::python("import sys\nsys.exit(2)", &[]).status.success());
    assert!(common::python("import sys\nsys.exit(0)", &[]).status.success());
}

/// lm-evaluation-harness's multiple-choice scoring, computed with transformers on the same
/// files: each choice's continuation is what the tokenized question + choice has past the
/// tokenized question (whitespace ending the question moved to the choice), its log-likelihood
/// summed, the sequence cut on the left to the context. A `compare` over `choices(…)` gives the
/// same log-likelihoods and picks, with the tokenizer's own leading special token (as lm-eval's
/// `add_bos_token = True`) and without, and one-shot (`fewshot = 1`: the first question answered
/// before each of the others, as lm-eval's `num_fewshot` builds the context).
#[test]
fn multiple_choice_questions_score_each_choice_as_lm_eval_does_with_transformers() {
    const LM_EVAL: &str = "import sys, json, torch\n\
        from transformers import AutoModelForCausalLM, AutoTokenizer\n\
        ck, data, template, delim, shots, description = sys.argv[1:7]\n\
        tok = AutoTokenizer.from_pretrained(ck)\n\
        model = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()\n\
        out = []\n\
        docs = [json.loads(line) for line in open(data)]\n\
        right = lambda d: d['c'][ord(d['a']) - 65 if str(d['a']).isalpha() else int(d['a'])]\n\
        shown = description + ''.join(template.replace('{prompt}', d['q']) + delim + right(d) + '\\n\\n' for d in docs[:int(shots)])\n\
        for d in docs[int(shots):]:\n\
        \x20   lls = []\n\
        \x20   for c in d['c']:\n\
        \x20       context, cont = shown + template.replace('{prompt}', d['q']), delim + c\n\
        \x20       n = len(context) - len(context.rstrip())\n\
        \x20       if n:\n\
        \x20           cont, context = context[-n:] + cont, context[:-n]\n\
        \x20       ctx = tok(context).input_ids\n\
        \x20       enc = tok(context + cont).input_ids[len(ctx):]\n\
        \x20       whole = (ctx + enc)[-(model.config.max_position_embeddings + 1):]\n\
        \x20       with torch.no_grad():\n\
        \x20           logp = model(torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0]\n\
        \x20       lls.append(sum(logp[len(whole) - 1 - len(enc) + i, t].item() for i, t in enumerate(enc)))\n\
        \x20   out.append(lls)\n\
        print(json.dumps(out))";
    let questions = [
        r#"{"q": "reverse abcd", "c": ["dcba", "abcd", "dbca"], "a": 0}"#,
        r#"{"q": "The cat sat on the ", "c": ["mat", "hat"], "a": "0"}"#,
        r#"{"q": "uppercase word\n", "c": ["WORD", "word", "Word", "wORD"], "a": "A"}"#,
        r#"{"q": "sort dcba", "c": ["abcd", " abcd"], "a": 1}"#,
    ];
    // Zero-shot with and without a leading special token; one-shot (the first question, answered,
    // before each of the others, lm-eval's `num_fewshot` context) after a description.
    for (bos, shots) in [(false, 0), (true, 0), (false, 1)] {
        let description = if shots > 0 { "The following are questions (with answers) about words.\n\n" } else { "" };
        let dir = checkpoint(&format!("mc-{bos}-{shots}"), "qwen2-tok");
        if bos {
            leading_special_token(&dir.join("ck/tokenizer.json"));
        }
        std::fs::write(dir.join("mc.jsonl"), questions.join("\n")).unwrap();
        let template = "Question: {prompt}\nAnswer:";
        let recipe = format!(
            "experiment \"mc\" {{\n  model base = hf(\"ck\")\n  data mc = choices(\"mc.jsonl\") {{ prompt = \"q\", choices = \"c\", answer = \"a\", template = \"{}\", tokenizer = base.tokenizer, fewshot = {shots}, description = \"{}\" }}\n  stage table = compare(base = base) {{ data = mc }}\n}}\n",
            template.escape_default(),
            description.escape_default()
        );
        std::fs::write(dir.join("r.roux"), recipe).unwrap();
        let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let samples: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("runs/mc/table/samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let o = common::python(LM_EVAL, &[dir.join("ck").to_str().unwrap(), dir.join("mc.jsonl").to_str().unwrap(), template, " ", &shots.to_string(), description]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: Vec<Vec<f64>> = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        assert_eq!(samples.len(), questions.len() - shots);
        for (s, t) in samples.iter().zip(&theirs) {
            let ours: Vec<f64> = s["loglikelihoods"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(ours.len(), t.len());
            let gap = ours.iter().zip(t).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(gap < 1e-4, "bos {bos}: roux {ours:?}, transformers {t:?}");
            let best = t.iter().enumerate().fold(0, |b, (i, &x)| if x > t[b] { i } else { b });
            assert_eq!(s["pick"].as_u64(), Some(best as u64));
        }
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/mc/table/report.json")).unwrap()).unwrap();
        let right = samples.iter().filter(|s| s["pick"] == s["answer"]).count() as f64;
        assert_eq!(report["rows"][0]["choices"]["acc"].as_f64(), Some(right / samples.len() as f64));
        assert_eq!(samples.iter().map(|s| s["answer"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 0, 0, 1][shots..]);
    }
}

/// A corpus's held-out perplexity (`compare(…) { data = corpus }`) read with an imported model's
/// tokenizer: the summed log-likelihood of every held-out token but the first, each from up to a
/// context of tokens before it, is what transformers gives over the same windows, with windows
/// that do not overlap and with a stride; bits per byte and word perplexity divide that sum by
/// the held-out text's bytes and words.
#[test]
fn held_out_perplexity_equals_transformers_over_the_same_windows() {
    const WINDOWS: &str = "import sys, json, re, torch\n\
        from transformers import AutoModelForCausalLM, AutoTokenizer\n\
        ck, path, split, ctx, stride = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])\n\
        tok = AutoTokenizer.from_pretrained(ck)\n\
        model = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()\n\
        raw = open(path, 'rb').read()\n\
        held = raw[int(len(raw) * split):].decode('utf-8', errors='replace')\n\
        ids = tok(held, add_special_tokens=False).input_ids\n\
        nll, n, scored, end = 0.0, 0, 1, min(ctx + 1, len(ids))\n\
        while scored < end:\n\
        \x20   first = max(0, end - ctx - 1)\n\
        \x20   with torch.no_grad():\n\
        \x20       logp = model(torch.tensor([ids[first:end - 1]])).logits.log_softmax(-1)[0].double()\n\
        \x20   for t in range(scored, end):\n\
        \x20       nll -= logp[t - first - 1, ids[t]].item()\n\
        \x20       n += 1\n\
        \x20   scored, end = end, min(end + stride, len(ids))\n\
        print(json.dumps({'nll': nll, 'tokens': n, 'all': len(ids), 'bytes': len(held.encode()), 'words': len(re.split(r'\\s+', held))}))";
    let dir = checkpoint("perplexity", "qwen2-tok");
    let text = std::fs::read(root().join("data/tinyshakespeare.txt")).unwrap();
    std::fs::write(dir.join("corpus.txt"), &text[..6000]).unwrap();
    // Beside it, a byte model and a BPE model trained on the same text: `mixed` reads the corpus
    // with each policy's own tokens.
    let recipe = "experiment \"ppl\" {\n  model base = hf(\"ck\")\n  data corpus = text(\"corpus.txt\") { tokenizer = base.tokenizer, context = 64, split = 0.8 }\n  stage whole = compare(base = base) { data = corpus }\n  stage slid = compare(base = base) { data = corpus, stride = 24 }\n  \
        data raw = text(\"corpus.txt\") { context = 32, split = 0.8 }\n  model bytes = transformer { vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2 }\n  stage pre = train(bytes, raw) { steps = 30, batch = 8 }\n  \
        data words = text(\"corpus.txt\") { tokenizer = bpe { vocab = 300 }, context = 32, split = 0.8 }\n  model small = transformer { vocab = words.vocab, context = 32, d_model = 32, layers = 1, heads = 2 }\n  stage bpe = train(small, words) { steps = 30, batch = 8 }\n  \
        stage mixed = compare(base = base, bytes = pre.model, bpe = bpe.model) { data = corpus }\n  \
        data mc = choices(\"mc.jsonl\") { tokenizer = base.tokenizer }\n  data mcb = choices(\"mc.jsonl\")\n  \
        stage quiz = compare(base = base, bytes = pre.model, bpe = bpe.model) { data = mc }\n  stage quiz_base = compare(base = base) { data = mc }\n  stage quiz_bytes = compare(bytes = pre.model) { data = mcb }\n}\n";
    let questions = [("ROMEO: But soft, what light", [" through yonder window breaks?", " is the east, and Juliet", " sun"], 0), ("To be, or not", [" to be", " at all", " be it"], 0), ("Now is the winter of our", [" discontent", " summer", " day"], 0)];
    let lines: Vec<String> = questions.iter().map(|(p, c, a)| serde_json::json!({"prompt": p, "choices": c, "answer": a}).to_string()).collect();
    std::fs::write(dir.join("mc.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (stage, stride) in [("whole", 64), ("slid", 24)] {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/ppl").join(stage).join("report.json")).unwrap()).unwrap();
        let row = &report["rows"][0];
        assert_eq!(row["context"].as_u64(), Some(64));
        let o = common::python(WINDOWS, &[dir.join("ck").to_str().unwrap(), dir.join("corpus.txt").to_str().unwrap(), "0.8", "64", &stride.to_string()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        let p = &row["perplexity"];
        let f = |v: &serde_json::Value| v.as_f64().unwrap();
        let (nll, tokens) = (f(&theirs["nll"]), f(&theirs["tokens"]));
        // More held-out tokens than one window, every one but the first scored.
        assert!(tokens > 128.0 && tokens == f(&theirs["all"]) - 1.0, "{theirs}");
        assert_eq!(f(&p["tokens"]), tokens);
        assert_eq!(report["tokens"].as_f64(), theirs["all"].as_f64());
        assert_eq!((report["bytes"].as_f64(), report["words"].as_f64()), (theirs["bytes"].as_f64(), theirs["words"].as_f64()));
        let ours = f(&p["loss"]) * tokens;
        assert!((ours - nll).abs() < 1e-4 * tokens, "{stage}: roux's summed loss {ours}, transformers' {nll}");
        assert!((f(&p["perplexity"]) - (nll / tokens).exp()).abs() < 1e-3, "{p}");
        assert!((f(&p["bits_per_byte"]) - nll / f(&theirs["bytes"]) / std::f64::consts::LN_2).abs() < 1e-5, "{p}");
        assert!((f(&p["word_perplexity"]).ln() - nll / f(&theirs["words"])).abs() < 1e-5, "{p}");
        assert_eq!(f(&p["windows"]), 1.0 + ((tokens - 64.0) / stride as f64).ceil(), "{p}");
    }
    let table = std::fs::read_to_string(dir.join("runs/ppl/slid/table.md")).unwrap();
    assert!(table.contains("| policy | loss per token | perplexity | bits per byte | word perplexity | context |") && table.contains("windows moving by 24 tokens"), "{table}");
    mixed_tokenizers(&dir);
}

/// `mixed` of `held_out_perplexity_equals_…`: the checkpoint scores what it scored alone; the
/// byte model reads every held-out byte, the BPE model its own tokenizer's ids (as Python's
/// `tokenizers` encodes the text); bits per byte divide each summed loss by the same bytes.
fn mixed_tokenizers(dir: &Path) {
    let read = |stage: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join("runs/ppl").join(stage).join("report.json")).unwrap()).unwrap() };
    let (mixed, whole) = (read("mixed"), read("whole"));
    assert_eq!(mixed["rows"][0]["perplexity"], whole["rows"][0]["perplexity"]);
    assert_eq!((mixed["tokenizers"].as_u64(), &mixed["bytes"]), (Some(3), &whole["bytes"]));
    let held = std::fs::read(dir.join("corpus.txt")).unwrap()[4800..].to_vec();
    let count = "import sys; from tokenizers import Tokenizer\nprint(len(Tokenizer.from_file(sys.argv[1]).encode(open(sys.argv[2], 'rb').read()[4800:].decode()).ids))";
    let o = common::python(count, &[dir.join("runs/ppl/bpe/tokenizer.json").to_str().unwrap(), dir.join("corpus.txt").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bpe: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(bpe < held.len() as u64 * 3 / 4, "BPE merges bytes: {bpe} tokens of {} bytes", held.len());
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    for (i, (label, tokens)) in [("base", whole["tokens"].as_u64().unwrap()), ("bytes", held.len() as u64), ("bpe", bpe)].into_iter().enumerate() {
        let row = &mixed["rows"][i];
        assert_eq!((row["policy"].as_str(), row["held_out_tokens"].as_u64(), row["perplexity"]["tokens"].as_u64()), (Some(label), Some(tokens), Some(tokens - 1)), "{row}");
        let p = &row["perplexity"];
        assert!((f(&p["bits_per_byte"]) - f(&p["loss"]) * f(&p["tokens"]) / held.len() as f64 / std::f64::consts::LN_2).abs() < 1e-9, "{row}");
    }
    // A byte model fresh from 30 steps is far from the checkpoint's tokens, but not from ln 256.
    assert!(f(&mixed["rows"][1]["perplexity"]["loss"]) < 256f64.ln(), "{mixed}");
    let table = std::fs::read_to_string(dir.join("runs/ppl/mixed/table.md")).unwrap();
    assert!(table.contains("| policy | tokenizer | held-out tokens | loss per token |") && table.contains(&format!("| bpe | BPE 300 (`bpe`) | {bpe} |")) && table.contains("| base | `base`'s tokenizer |"), "{table}");
    assert!(table.contains("comparable only between policies of one tokenizer"), "{table}");
    // The questions too: each policy scores them with its own tokens, the checkpoint and the
    // byte model as they do alone (the byte model on the questions declared as bytes).
    let samples = |stage: &str| -> Vec<serde_json::Value> { std::fs::read_to_string(dir.join("runs/ppl").join(stage).join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let (quiz, base, bytes) = (samples("quiz"), samples("quiz_base"), samples("quiz_bytes"));
    let of = |all: &[serde_json::Value], policy: &str| -> Vec<serde_json::Value> { all.iter().filter(|s| s["policy"] == policy).map(|s| s["loglikelihoods"].clone()).collect() };
    assert_eq!((of(&quiz, "base"), of(&quiz, "bytes")), (of(&base, "base"), of(&bytes, "bytes")));
    assert_eq!(of(&quiz, "bpe").len(), 3);
    assert_ne!(of(&quiz, "bpe"), of(&quiz, "bytes"));
    assert_eq!(read("quiz")["tokenizers"].as_u64(), Some(3));
    let table = std::fs::read_to_string(dir.join("runs/ppl/quiz/table.md")).unwrap();
    assert!(table.contains("| policy | tokenizer | accuracy |") && table.contains("| bpe | BPE 300 (`bpe`) |"), "{table}");
}

/// QLoRA on an imported checkpoint: its projections are quantized to NF4 as each tensor is read
/// (GPT-2's fused, transposed `c_attn` and Phi-3's fused `qkv_proj` split into their parts
/// first; Llama's shards one file at a time), giving the very weights quantizing after a whole
/// float32 import gives, in fewer bytes.
#[test]
fn qlora_quantizes_an_imported_checkpoint_as_it_is_read() {
    for (which, double_quant) in [("gpt2", false), ("phi3", true), ("llama", false), ("llama", true)] {
        let lora = roux::recipe::LoraSpec { rank: 2, alpha: 2.0, dropout: 0.0, rslora: false, dora: false, targets: vec!["attn.q".into()], quantize_base: roux::recipe::QuantizeBase::Nf4, double_quant };
        let dir = checkpoint(&format!("qlora-{which}"), which);
        let c = roux::frontend::compile(&dir.join("import.roux")).unwrap();
        let spec = c.recipe.unwrap().models[0].clone();
        let mut read = roux::run::kit::hf::load_as(&spec, Device::Cpu, None, lora.nf4_base()).unwrap();
        let mut after = roux::run::kit::hf::load(&spec, Device::Cpu, None).unwrap();
        let whole = after.weight_bytes();
        // Held as NF4 from the import on, before any adapter is attached.
        assert!(read.weight_bytes() < whole, "{which}: {} bytes read, {whole} in float32", read.weight_bytes());
        after.attach_lora(&lora).unwrap();
        read.attach_lora(&lora).unwrap();
        assert!(read.weight_bytes() == after.weight_bytes() && read.weight_bytes() < whole, "{which}: {} and {} bytes, {whole} in float32", read.weight_bytes(), after.weight_bytes());
        for ((n, a), (_, b)) in read.named().iter().zip(after.named()) {
            assert!(a.equal(&b), "{which}: `{n}` differs");
        }
    }
}
