//! More than one process (issue 18): torchrun starts roux twice (`roux run --nproc 2`), the
//! processes talk through libtorch's c10d (Gloo on these CPUs), and the run equals the one
//! process run of the same global batch. Gradient accumulation equals the whole batch.
#![cfg(feature = "torch")]

mod common;
use common::*;
use std::path::Path;

/// A run's per-step losses and final named weights.
type Outcome = (Vec<f64>, Vec<(String, tch::Tensor)>);

/// Per-step training losses and the final weights of a finished `pretrain` in `dir`.
fn result(dir: &Path) -> Outcome {
    // (PPO logs its policy loss beside its value loss.)
    let losses = metrics(dir).iter().map(|m| m["loss"].as_f64().or(m["policy_loss"].as_f64()).unwrap()).collect();
    // (A LoRA stage's trained tensors are its adapter's.)
    let file = if dir.join("adapter.safetensors").exists() { "adapter.safetensors" } else { "model.safetensors" };
    let mut weights = tch::Tensor::read_safetensors(dir.join(file)).unwrap();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, weights)
}

/// The largest difference of losses step by step and of weights tensor by tensor.
fn differences(a: &Outcome, b: &Outcome) -> (f64, f64) {
    assert_eq!(a.0.len(), b.0.len(), "the runs logged different numbers of steps");
    let loss = a.0.iter().zip(&b.0).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    (loss, weight_difference(&a.1, &b.1))
}

fn train(out: &Path, extra: &[&str]) -> Outcome {
    let recipe = fixture("tiny-dp.roux");
    let mut args = vec!["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = roux(&args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    result(&out.join("dp/pretrain"))
}

#[test]
fn two_gloo_processes_train_what_one_process_trains() {
    let out = scratch("dist-dp");
    let one = train(&out.join("one"), &[]);
    let two = train(&out.join("two"), &["--nproc", "2"]);
    assert_eq!(one.0.len(), 50);
    let (loss, weights) = differences(&one, &two);
    assert!(loss < 1e-5 && weights < 1e-5, "2 processes vs 1: losses differ by {loss:e}, weights by {weights:e}");
    assert!(one.0[49] < one.0[0] - 0.5, "the loss did not fall: {:?}", one.0);
    // Only the leading process wrote: one line per step, one report, the lock released.
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("two/dp/pretrain/report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], 50);
    // ZeRO-1 (each process keeps half the AdamW moments; reduce-scatter, update, all-gather) is
    // plain data parallel to the bit: the gradient norm is computed from the same blocks.
    let zero = train(&out.join("zero"), &["--nproc", "2", "--set", "pretrain.shard_optimizer=true"]);
    assert_eq!(differences(&two, &zero), (0.0, 0.0), "ZeRO-1 vs plain data parallel");
    let moments = |run: &str| -> u64 {
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(run).join("dp/pretrain/report.json")).unwrap()).unwrap();
        r["adam_moment_bytes_per_process"].as_u64().unwrap()
    };
    // Each process holds its slice (whole 4096-element blocks, so a little over half).
    let (whole, half) = (moments("two"), moments("zero"));
    assert!(half * 2 >= whole && half * 2 <= whole + 2 * 4 * 2 * 4096, "moments per process: {half} bytes sharded, {whole} whole");
    // `roux plan --world 2` counts what each process held, before anything ran.
    let planned = |extra: &[&str]| -> serde_json::Value {
        let recipe = fixture("tiny-dp.roux");
        let o = roux(&[&["plan", recipe.to_str().unwrap(), "--json", "--world", "2"], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["processes"][0].clone()
    };
    let (plain, sharded) = (planned(&[]), planned(&["--set", "pretrain.shard_optimizer=true"]));
    assert_eq!((plain["moment_bytes"].as_u64(), sharded["moment_bytes"].as_u64()), (Some(whole), Some(half)));
    // By hand: 34,688 parameters, 4 bytes each; a ring all-reduce over 2 sends 2·(2−1)/2 of them.
    assert_eq!((plain["params"].as_u64(), plain["weight_bytes"].as_u64(), plain["sent_bytes_per_step"].as_u64(), plain["micro_batch"].as_u64()), (Some(34_688), Some(138_752), Some(138_752), Some(8)));
    // Accumulating four micro-batches per process gives the same steps, on one process and on two.
    let acc1 = train(&out.join("acc1"), &["--set", "pretrain.accumulate=4"]);
    let acc2 = train(&out.join("acc2"), &["--set", "pretrain.accumulate=4", "--nproc", "2"]);
    for (what, run) in [("accumulate = 4 on 1 process", &acc1), ("accumulate = 4 on 2 processes", &acc2)] {
        let (loss, weights) = differences(&one, run);
        assert!(loss < 1e-5 && weights < 1e-5, "{what} vs the whole batch: losses differ by {loss:e}, weights by {weights:e}");
    }
    // torchrun with one process: a group of one, whose collectives run (as on one GPU with NCCL,
    // bench/gpu.py's overhead measurement) and change nothing.
    let recipe = fixture("tiny-dp.roux");
    let dir = out.join("group-of-one");
    let o = std::process::Command::new("torchrun")
        .args(["--no-python", "--standalone", "--nproc-per-node", "1", env!("CARGO_BIN_EXE_roux"), "run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("joined the process group as rank 0 of 1"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(differences(&one, &result(&dir.join("dp/pretrain"))), (0.0, 0.0), "a group of one vs no group");
}

/// A batch the processes and micro-batches cannot split is refused at launch, naming all three
/// numbers (check, which does not know the number of processes, refuses only `accumulate`).
#[test]
fn a_batch_that_does_not_split_over_the_processes_is_refused_naming_the_numbers() {
    let out = scratch("dist-split");
    let recipe = fixture("tiny-dp.roux");
    let o = roux(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "pretrain.batch=12", "--set", "pretrain.accumulate=4", "--nproc", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("stage `pretrain`: its batch of 12 does not split over 2 processes × `accumulate = 4` micro-batches (8 equal parts); pick a batch that is a multiple of 8, or another number of processes"),
        "{err}"
    );
    let o = roux(&["plan", recipe.to_str().unwrap(), "--world", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("its batch of 16 does not split over 3 processes × `accumulate = 1` micro-batches (3 equal parts)"));
    let o = roux(&["plan", recipe.to_str().unwrap(), "--world", "2", "--set", "pretrain.device_memory=5M"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stage `pretrain`: each of 2 processes needs 12.1"), "{err}");
    assert!(err.contains("M bytes, more than its device_memory of 5M bytes; shard the optimizer (`shard_optimizer = true`), split the batch further (`accumulate`), or use more processes"), "{err}");
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "pretrain.accumulate=5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0229]: `accumulate = 5` does not divide the batch of 16"), "{err}");
    assert!(err.contains("each optimizer step splits its batch into 5 equal micro-batches; pick a batch that is a multiple of 5"), "{err}");
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        // `pid (comm) state ppid …`: the fields after the last ')'.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// SIGKILL one of two processes mid-run: torchrun stops the job, and `roux run` again resumes
/// from the last checkpoint to the weights of an uninterrupted run, on two processes (the same
/// numbers bit for bit) or on one (the checkpoint holds the whole state, so nothing is resharded).
#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes_on_two_processes_or_one() {
    let out = scratch("dist-kill");
    let every = ["--set", "pretrain.checkpoint_every=5"];
    let whole = train(&out.join("whole"), &[&every[..], &["--nproc", "2"]].concat());
    let zero = ["--set", "pretrain.shard_optimizer=true"];
    // The sharded run's checkpoints hold the whole moments (gathered for the leader to write), so
    // it resumes on one process too.
    for (name, again, sharded) in [("two", vec!["--nproc", "2"], false), ("one", vec![], false), ("zero-on-one", vec![], true)] {
        let dir = out.join(name);
        let extra: Vec<&str> = if sharded { [&every[..], &zero[..]].concat() } else { every.to_vec() };
        let again: Vec<&str> = [&extra[..], &again[..]].concat();
        assert!(kill_a_rank(&dir, &extra), "{name}: the run finished three times before a rank could be killed");
        assert!(!dir.join("dp/pretrain/report.json").exists());
        let resumed = train(&dir, &again);
        let (loss, weights) = differences(&whole, &resumed);
        let tol = if name == "two" { 0.0 } else { 1e-5 };
        assert!(weights <= tol && loss <= tol, "{name}: resumed vs uninterrupted: losses differ by {loss:e}, weights by {weights:e}");
    }
}

/// Start a two-process run into `dir` and SIGKILL rank 1 once a checkpoint past step 5 exists;
/// true once torchrun has stopped the job unfinished (three tries, should a run finish first).
fn kill_a_rank(dir: &Path, extra: &[&str]) -> bool {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let recipe = fixture("tiny-dp.roux");
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(dir);
        let mut job = Command::new(env!("CARGO_BIN_EXE_roux"))
            .args(["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--nproc", "2"])
            .args(extra)
            .env("ROUX_QUIET", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Polling: a loaded machine only waits longer.
        let state = dir.join("dp/pretrain/state.json");
        let t0 = Instant::now();
        while !std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"step\": 10,")) && t0.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(2));
        }
        // torchrun's children are the two roux processes: kill one.
        if let Some(rank1) = children(job.id()).into_iter().max() {
            let _ = Command::new("kill").args(["-KILL", &rank1.to_string()]).status();
        }
        let status = job.wait().unwrap();
        if !dir.join("dp/pretrain/report.json").exists() {
            assert!(!status.success(), "torchrun reported success for an unfinished run");
            return true;
        }
    }
    false
}

/// Instruction fine-tuning shards its batch the same way: each micro-batch's loss is divided by
/// the response weight of the whole global batch, so 2 processes, and 2 processes × 4
/// micro-batches, take the steps one process takes.
#[test]
fn finetune_on_two_processes_and_in_micro_batches_equals_one_process() {
    let out = scratch("dist-sft");
    let recipe = fixture("tiny-sft.roux");
    let short = ["--set", "sft.steps=40", "--set", "sft.eval_every=40", "--set", "sft.log_every=1", "--set", "sft.optimizer.lr=1e-3"];
    let sft = |name: &str, extra: &[&str]| {
        let dir = out.join(name);
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()], &short[..], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        result(&dir.join("tiny-sft/sft"))
    };
    let one = sft("one", &[]);
    assert_eq!(one.0.len(), 40);
    assert!(one.0[39] < one.0[0] - 0.5, "the loss did not fall: {:?}", one.0);
    for (what, run) in [("2 processes", sft("two", &["--nproc", "2"])), ("2 processes × accumulate = 4", sft("acc", &["--nproc", "2", "--set", "sft.accumulate=4"]))] {
        let (loss, weights) = differences(&one, &run);
        assert!(loss < 1e-5 && weights < 1e-5, "{what} vs 1 process: losses differ by {loss:e}, weights by {weights:e}");
    }
    // Packed rows divide the same way (rows of up to 32 tokens, 8 a step).
    let packed = ["--set", "sft.packing=true", "--set", "sft.batch=8"];
    let (one, acc) = (sft("one-packed", &packed), sft("acc-packed", &[&packed[..], &["--nproc", "2", "--set", "sft.accumulate=2"]].concat()));
    let (loss, weights) = differences(&one, &acc);
    assert!(loss < 1e-5 && weights < 1e-5, "packed, 2 processes × accumulate = 2 vs 1 process: losses differ by {loss:e}, weights by {weights:e}");
}

/// `device = "cuda:N"` names one GPU (check takes it; a machine without it says so at run time);
/// any other string is refused, saying what a device is.
#[test]
fn a_gpu_is_named_by_its_index_or_the_string_is_refused() {
    let out = scratch("dist-device");
    let recipe = fixture("tiny-dp.roux");
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "pretrain.device=\"cuda:1\""]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "pretrain.device=\"gpu1\""]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0120]: expected a device (auto | cpu | cuda | \"cuda:N\"), found the string \"gpu1\""), "{err}");
    assert!(err.contains("write `device = cuda` (each process's own GPU) or `device = \"cuda:1\"` for one GPU by its index, 0 to 1023"), "{err}");
    if !std::path::Path::new("/dev/nvidia0").exists() {
        let o = roux(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "pretrain.device=\"cuda:1\""]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("the recipe asks for `device = \"cuda:1\"` but no CUDA device is available"), "{err}");
    }
}

/// A reward model and DPO shard their pairs the same way (each micro-batch's mean weighted by its
/// share; the batch's accuracy, margins and implicit rewards summed over the processes): 2
/// processes, and 2 processes in micro-batches, equal one process.
#[test]
fn reward_model_and_dpo_on_two_processes_equal_one_process() {
    let out = scratch("dist-pairs");
    let recipe = fixture("tiny-pairs.roux");
    let pairs = |name: &str, extra: &[&str]| -> Vec<Outcome> {
        let dir = out.join(name);
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        ["rm", "po", "kt"].iter().map(|s| result(&dir.join("pairs").join(s))).collect()
    };
    let one = pairs("one", &[]);
    let accuracy = |name: &str, stage: &str| metrics(&out.join(name).join("pairs").join(stage)).iter().map(|m| m["accuracy"].as_f64().unwrap()).collect::<Vec<_>>();
    for (what, run, name) in [
        ("2 processes", pairs("two", &["--nproc", "2"]), "two"),
        // (DPO's and KTO's reference log-probabilities here precomputed, each process computing
        // half the examples.)
        ("2 processes × micro-batches", pairs("acc", &["--nproc", "2", "--set", "rm.accumulate=4", "--set", "po.accumulate=2", "--set", "kt.accumulate=2", "--set", "po.precompute_ref_log_probs=true", "--set", "kt.precompute_ref_log_probs=true"]), "acc"),
    ] {
        for (i, stage) in ["rm", "po", "kt"].iter().enumerate() {
            let (loss, weights) = differences(&one[i], &run[i]);
            assert!(loss < 1e-6 && weights < 1e-5, "{stage}, {what} vs 1 process: losses differ by {loss:e}, weights by {weights:e}");
        }
        for stage in ["rm", "po"] {
            assert_eq!(accuracy("one", stage), accuracy(name, stage), "{stage}, {what}: the batch accuracies");
        }
    }
    assert!(one[0].0[29] < one[0].0[0] - 0.05, "the reward model's loss did not fall: {:?}", one[0].0);
    // A centred reward model, and ORPO, whose NLL is per chosen token of the whole batch: the
    // same on 2 processes in micro-batches as on one.
    let variant = ["--set", "rm.center_rewards=1", "--set", "po.loss=orpo"];
    let (one, acc) = (pairs("one-orpo", &variant), pairs("acc-orpo", &[&variant[..], &["--nproc", "2", "--set", "rm.accumulate=4", "--set", "po.accumulate=2"]].concat()));
    for (i, stage) in ["rm (centred)", "po (ORPO)"].iter().enumerate() {
        let (loss, weights) = differences(&one[i], &acc[i]);
        assert!(loss < 1e-6 && weights < 1e-5, "{stage}, 2 processes × micro-batches vs 1 process: losses differ by {loss:e}, weights by {weights:e}");
    }
    // DPO with LoRA adapters, whose reference is the policy without them, and KTO's loss, whose
    // reference point is a mean over the whole batch: the same, with the reference's
    // log-probabilities of the pairs and of their mismatched rows precomputed from the base.
    let variant = ["--set", "po.adapter=lora { rank = 4, targets = [attn.q, attn.v, ffn.w1] }", "--set", "po.loss=kto"];
    let (one, acc) = (pairs("one-lora", &variant), pairs("acc-lora", &[&variant[..], &["--nproc", "2", "--set", "po.accumulate=2", "--set", "po.precompute_ref_log_probs=true"]].concat()));
    let (loss, weights) = differences(&one[1], &acc[1]);
    assert!(weights.is_finite() && one[1].1.iter().all(|(n, _)| n.contains(".lora_")), "{:?}", one[1].1.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let kl = |name: &str| metrics(&out.join(name).join("pairs/po")).iter().map(|m| m["kl"].as_f64().unwrap()).collect::<Vec<_>>();
    let (a, b) = (kl("one-lora"), kl("acc-lora"));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6) && a.iter().any(|&z| z > 0.0), "KTO's reference points: {a:?} vs {b:?}");
    assert!(loss < 1e-6 && weights < 1e-5, "po (LoRA, KTO), 2 processes × micro-batches vs 1 process: losses differ by {loss:e}, weights by {weights:e}");
}

/// `roux run RECIPE --out DIR EXTRA…` with every gradient exchange checking that the processes'
/// weights are the same to the bit; its log, once it succeeded.
fn run_checking_replicas(recipe: &Path, dir: &Path, extra: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux"))
        .args([&["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap()], extra].concat())
        .env("ROUX_QUIET", "1")
        .env("ROUX_CHECK_REPLICAS", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{}: {log}", dir.display());
    log
}

/// Muon under 2 processes: every process applies the same orthogonalised update to the same
/// averaged gradients (the replicas are checked identical at every exchange), and the run follows
/// one process's. Not to AdamW's 1e-5: the averaged gradients differ from one process's in their
/// last bits, and Newton–Schulz in bfloat16 rounds some of those apart (measured: losses within
/// 6e-4 over 50 steps).
#[test]
fn muon_under_two_processes_keeps_identical_replicas() {
    let out = scratch("dist-muon");
    let text = std::fs::read_to_string(fixture("tiny-dp.roux")).unwrap().replace("../../data/", "../../../data/").replace("optimizer = adamw { lr = 1e-3 }", "optimizer = muon { lr = 0.02, adamw = adamw { lr = 1e-3 } }");
    let recipe = out.join("dp.roux");
    std::fs::write(&recipe, text).unwrap();
    let run = |name: &str, extra: &[&str]| {
        run_checking_replicas(&recipe, &out.join(name), extra);
        result(&out.join(name).join("dp/pretrain"))
    };
    let (one, two) = (run("one", &[]), run("two", &["--nproc", "2"]));
    let (loss, _) = differences(&one, &two);
    assert!(loss < 3e-3, "Muon, 2 processes vs 1: losses differ by {loss:e}");
    assert!(one.0[49] < one.0[0] - 1.0, "the loss did not fall: {:?}", one.0);
}

/// The whole lifecycle (pretrain, LoRA SFT, reward model, PPO, DPO, compare) under 2 processes:
/// every stage finishes, each writes once (rank 0), and the pretrained model and the LoRA adapter
/// are one process's within 1e-5.
#[test]
fn every_stage_kind_runs_under_two_processes() {
    let out = scratch("dist-lifecycle");
    // The lifecycle with a GRPO stage too.
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
    let grpo = "  stage gr = grpo(policy = merge(sft.adapter), prompts = instr) {\n    group = 4\n    batch = 16\n    steps = 3\n    max_new = 6\n    optimizer = adamw { lr = 1e-5 }\n    eval_every = 3\n    eval_examples = 8\n  }\n  stage kd = distill(student = lm, teacher = merge(sft.adapter), data = instr) {\n    lmbda = 0\n    batch = 8\n    steps = 4\n    max_new = 6\n    optimizer = adamw { lr = 1e-4 }\n    eval_every = 2\n    eval_examples = 8\n  }\n  stage od = online_dpo(policy = merge(sft.adapter), prompts = instr) {\n    reward = format - length\n    batch = 4\n    steps = 3\n    max_new = 6\n    optimizer = adamw { lr = 1e-4 }\n    eval_every = 3\n    eval_examples = 8\n  }\n  stage bn = best_of_n(policy = merge(sft.adapter), prompts = instr) {\n    reward = format - length\n    n = 3\n    batch = 4\n    steps = 3\n    max_new = 6\n    optimizer = adamw { lr = 1e-4 }\n    eval_every = 3\n    eval_examples = 8\n  }\n}\n";
    let recipe = out.join("tiny-lifecycle.roux");
    std::fs::write(&recipe, format!("{}{grpo}", text.trim_end().strip_suffix('}').unwrap())).unwrap();
    let run = |name: &str, extra: &[&str]| run_checking_replicas(&recipe, &out.join(name), extra);
    let logs = [run("one", &[]), run("two", &["--nproc", "2"])];
    // PPO and GRPO divide their rollouts.
    assert!(logs[1].contains("rl: PPO on prompts of `instr` against reward model `rm`: 4 steps × 8 prompts (each of 2 processes rolls out 4)"), "{}", logs[1]);
    assert!(logs[1].contains("od: online DPO on prompts of `instr`: 3 steps × 4 prompts (each of 2 processes answers 2) × 2 responses"), "{}", logs[1]);
    assert!(logs[1].contains("gr: GRPO on prompts of `instr`: 3 steps × 4 prompts (each of 2 processes answers 2) × 4 responses"), "{}", logs[1]);
    let stage = |name: &str, s: &str| out.join(name).join("tiny-lifecycle").join(s);
    for s in ["pretrain", "sft", "rm", "rl", "po", "gr", "kd", "od", "bn", "table"] {
        assert!(stage("two", s).join("report.json").exists(), "{s} did not finish under 2 processes");
        let steps: Vec<u64> = std::fs::read_to_string(stage("two", s).join("metrics.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64()).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{s}: metrics.jsonl written by more than one process: {steps:?}");
    }
    for (s, file) in [("pretrain", "model.safetensors"), ("sft", "adapter.safetensors"), ("kd", "model.safetensors")] {
        let read = |n: &str| {
            let mut t = tch::Tensor::read_safetensors(stage(n, s).join(file)).unwrap();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let (a, b) = (read("one"), read("two"));
        let worst = a.iter().zip(&b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{s}: 2 processes vs 1 differ by {worst:e}");
    }
    // PPO, GRPO and online DPO on 2 processes in micro-batches (PPO: each process's 4 prompts in
    // minibatches of 2, each in 2 micro-batches of 1; GRPO: its 8 completions in 2 of 4; online
    // DPO: its 2 prompts' pairs in 2 of 1; best-of-n: its 2 prompts' best in 2 of 1): the same steps.
    let before: Vec<Outcome> = ["rl", "gr", "od", "bn"].iter().map(|s| result(&stage("two", s))).collect();
    let log = run("two", &["--nproc", "2", "--set", "rl.accumulate=2", "--set", "gr.accumulate=2", "--set", "od.accumulate=2", "--set", "bn.accumulate=2"]);
    assert!(log.contains("pretrain: up to date") && log.contains("rm: up to date"), "only the changed stages rerun: {log}");
    for (s, one) in ["rl", "gr", "od", "bn"].iter().zip(&before) {
        let micro = result(&stage("two", s));
        let (loss, weights) = differences(one, &micro);
        assert!(loss < 1e-5 && weights < 1e-5, "{s}, 2 processes × accumulate = 2 vs 2 processes: losses differ by {loss:e}, weights by {weights:e}");
    }
    // GRPO's `top_entropy_quantile` cuts at the step's quantile over both processes' completion
    // tokens (gathered), whatever the micro-batches: the same steps in 1 or 2 of them. (Rewarded
    // by length, which differs between completions: exact match gives this policy no signal.)
    let quantile = |k: &str, rho: &str| {
        let set = ["gr.reward=length".to_string(), format!("gr.top_entropy_quantile={rho}"), format!("gr.accumulate={k}")];
        let args: Vec<&str> = ["--nproc", "2"].into_iter().chain(set.iter().flat_map(|s| ["--set", s.as_str()])).collect();
        let log = run("two", &args);
        assert_eq!(log.contains("the policy term on the top 20% of tokens by entropy"), rho == "0.2", "{log}");
        result(&stage("two", "gr"))
    };
    let (whole, micro, every) = (quantile("1", "0.2"), quantile("2", "0.2"), quantile("1", "1"));
    assert!(differences(&every, &whole).0 > 1e-6, "the entropy quantile changed no loss: {:?} vs {:?}", every.0, whole.0);
    let (loss, weights) = differences(&whole, &micro);
    assert!(loss < 1e-5 && weights < 1e-5, "gr with top_entropy_quantile, accumulate = 2 vs 1 on 2 processes: losses differ by {loss:e}, weights by {weights:e}");
    // RLOO with its advantages standardised over both processes' completions (summed across
    // them): the same steps in 1 or 2 micro-batches, and other steps than GRPO's.
    let rloo = |k: &str| {
        let set = ["gr.reward=length", "gr.loss=rloo", "gr.scale_rewards=batch", &format!("gr.accumulate={k}")].map(|s| s.to_string());
        let args: Vec<&str> = ["--nproc", "2"].into_iter().chain(set.iter().flat_map(|s| ["--set", s.as_str()])).collect();
        let log = run("two", &args);
        assert!(log.contains("gr: RLOO on prompts of `instr`: 3 steps × 4 prompts (each of 2 processes answers 2) × 4 responses"), "{log}");
        result(&stage("two", "gr"))
    };
    let (whole, micro) = (rloo("1"), rloo("2"));
    assert!(differences(&every, &whole).1 > 1e-6, "RLOO trained GRPO's weights");
    let (loss, weights) = differences(&whole, &micro);
    assert!(loss < 1e-5 && weights < 1e-5, "gr with RLOO, accumulate = 2 vs 1 on 2 processes: losses differ by {loss:e}, weights by {weights:e}");
    // Distillation on the student's own responses: each process samples its share's before the
    // micro-batches divide them, so the steps are the same in 1 or 2 micro-batches, and other
    // steps than on the data's responses.
    let off_policy = result(&stage("two", "kd"));
    let kd = |k: &str| {
        let log = run("two", &["--nproc", "2", "--set", "kd.lmbda=1", "--set", &format!("kd.accumulate={k}")]);
        assert!(log.contains("kd: distilling `lm` into `lm` (35200 trainable of 35200 parameters) on `instr` for 4 steps × 8 examples: the generalized JSD at β = 0.5 over the student's own responses (sampled at temperature 0.9)"), "{log}");
        result(&stage("two", "kd"))
    };
    let (whole, micro) = (kd("1"), kd("2"));
    assert!(differences(&off_policy, &whole).1 > 1e-6, "sampled responses trained the data's weights");
    let (loss, weights) = differences(&whole, &micro);
    assert!(loss < 1e-5 && weights < 1e-5, "kd on-policy, accumulate = 2 vs 1 on 2 processes: losses differ by {loss:e}, weights by {weights:e}");
}

/// The dropped fraction of each MoE layer at every logged step.
fn dropped(dir: &Path) -> Vec<Vec<f64>> {
    metrics(dir).iter().map(|m| m["moe"].as_array().unwrap().iter().map(|l| l["dropped"].as_f64().unwrap()).collect()).collect()
}

/// Expert parallelism: with the experts of every MoE layer divided over 2 processes (each routes
/// the whole micro-batch from the gathered router logits, rows go to their experts' owners and
/// back by all-to-all), training equals one process to rounding and drops the same tokens; plain
/// data parallel, whose capacity each process sets from its own tokens, drops others.
#[test]
fn expert_parallel_moe_equals_one_process_with_the_same_dropped_tokens() {
    let out = scratch("dist-ep");
    let recipe = fixture("tiny-ep.roux");
    let run = |dir: &str, extra: &[&str]| {
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join(dir).to_str().unwrap()], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        out.join(dir).join("ep/pretrain")
    };
    let one = run("one", &[]);
    let ep = run("ep", &["--nproc", "2", "--set", "pretrain.expert_parallel=2"]);
    let dp = run("dp", &["--nproc", "2"]);
    let (loss, weights) = differences(&result(&one), &result(&ep));
    assert!(loss < 1e-5 && weights < 1e-5, "expert parallel vs one process: losses differ by {loss:e}, weights by {weights:e}");
    let (d1, dep, ddp) = (dropped(&one), dropped(&ep), dropped(&dp));
    assert_eq!(d1.len(), 30);
    assert!(d1.iter().flatten().any(|&d| d > 0.05), "the fixture must drop tokens: {d1:?}");
    assert_eq!(d1, dep, "the same dropped tokens at every step");
    assert_ne!(d1, ddp, "plain data parallel routes each process's tokens on their own");
    // Four processes in two groups of two: each group routes its two processes' rows together,
    // as one process of the two-process data-parallel run routes the same rows, and each
    // expert's gradient is summed with its replica's in the other group: that run's numbers.
    let ep4 = run("ep4", &["--nproc", "4", "--set", "pretrain.expert_parallel=2"]);
    let (loss, weights) = differences(&result(&dp), &result(&ep4));
    assert!(loss < 1e-5 && weights < 1e-5, "2 groups of 2 vs 2 data-parallel processes: losses differ by {loss:e}, weights by {weights:e}");
    assert_eq!(ddp, dropped(&ep4), "2 groups of 2: the dropped tokens of 2 data-parallel processes");
    let ep4_zero = run("ep4-zero", &["--nproc", "4", "--set", "pretrain.expert_parallel=2", "--set", "pretrain.shard_optimizer=true"]);
    // (Four processes' gradients are summed in another order by a reduce-scatter than by an
    // all-reduce: equal to rounding.)
    let (loss, weights) = differences(&result(&ep4), &result(&ep4_zero));
    assert!(loss < 1e-5 && weights < 1e-5, "2 groups of 2 with ZeRO-1 vs without: losses differ by {loss:e}, weights by {weights:e}");
    // Each process holds only its experts: 2 layers × (w1 + w2) of 4 × 64 × 32 = 32,768 expert
    // parameters, half of them on each process. Checkpoints hold them whole, so the run resumes
    // from step 15 on two processes (the same numbers) or on one (the layout is not part of the
    // stage's definition, as the number of processes is not).
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ep.join("report.json")).unwrap()).unwrap();
    let whole = report["params"].as_u64().unwrap();
    assert_eq!(report["params_per_process"].as_u64(), Some(whole - 16_384), "{report}");
    // ZeRO-1 beside it shards the moments of the rest (each process keeps its experts' whole):
    // the same numbers to the bit, fewer moment bytes.
    let zero = run("ep-zero", &["--nproc", "2", "--set", "pretrain.expert_parallel=2", "--set", "pretrain.shard_optimizer=true"]);
    assert_eq!(differences(&result(&ep), &result(&zero)), (0.0, 0.0), "expert parallel with ZeRO-1 vs without");
    // Activation checkpointing runs each block again in the backward pass, all-to-alls included:
    // the same numbers to the bit.
    let recomputed = run("ep-recompute", &["--nproc", "2", "--set", "pretrain.expert_parallel=2", "--set", "pretrain.activation_checkpointing=true"]);
    assert_eq!(differences(&result(&ep), &result(&recomputed)), (0.0, 0.0), "expert parallel with activation checkpointing vs without");
    assert_eq!(dropped(&ep), dropped(&recomputed));
    let moments = |dir: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()["adam_moment_bytes_per_process"].as_u64().unwrap();
    assert!(moments(&zero) < moments(&ep), "moments: {} bytes with ZeRO-1, {} without", moments(&zero), moments(&ep));
    for (dir, zero1) in [(&ep, "false"), (&zero, "true")] {
        let o = roux(&["plan", recipe.to_str().unwrap(), "--json", "--world", "2", "--set", "pretrain.expert_parallel=2", "--set", &format!("pretrain.shard_optimizer={zero1}")]);
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(plan["processes"][0]["moment_bytes"].as_u64(), Some(moments(dir)), "planned vs held moments, shard_optimizer = {zero1}");
    }
    let zero_flags = ["--nproc", "2", "--set", "pretrain.expert_parallel=2", "--set", "pretrain.shard_optimizer=true"];
    // (The ZeRO-1 run's checkpoint, written from slices of the moments, resumes on one process too.)
    for (name, from, extra) in [("resumed-two", "ep", vec!["--nproc", "2", "--set", "pretrain.expert_parallel=2"]), ("resumed-one", "ep", vec![]), ("resumed-zero", "ep-zero", zero_flags.to_vec()), ("resumed-zero-one", "ep-zero", vec![])] {
        let dir = out.join(name);
        assert!(std::process::Command::new("cp").arg("-r").args([out.join(from), dir.clone()]).status().unwrap().success());
        std::fs::remove_file(dir.join("ep/pretrain/report.json")).unwrap();
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--resume-from", "ckpt-15"], &extra[..]].concat());
        assert_eq!(o.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from step 15 of 30"), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let (loss, weights) = differences(&result(&ep), &result(&dir.join("ep/pretrain")));
        let tol = if name.ends_with("-one") { 1e-5 } else { 0.0 };
        assert!(loss <= tol && weights <= tol, "{name}: resumed vs uninterrupted: losses differ by {loss:e}, weights by {weights:e}");
    }
    // Expert parallelism spans every process; the degree must divide the experts.
    let o = roux(&["run", recipe.to_str().unwrap(), "--out", out.join("alone").to_str().unwrap(), "--set", "pretrain.expert_parallel=2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stage `pretrain`: `expert_parallel = 2` divides the experts over groups of 2 processes, but the run has 1: start it with a multiple of 2 processes (`roux run --nproc 2`)"), "{err}");
    // With Switch's jitter too: each process draws the whole micro-batch's noise and keeps its rows.
    let jitter = ["--set", "lm.ffn.router.jitter=0.05"];
    let (one, ep) = (run("one-jitter", &jitter), run("ep-jitter", &[&["--nproc", "2", "--set", "pretrain.expert_parallel=2"], &jitter[..]].concat()));
    let (loss, weights) = differences(&result(&one), &result(&ep));
    assert!(loss < 1e-5 && weights < 1e-5, "with jitter: losses differ by {loss:e}, weights by {weights:e}");
    assert_eq!(dropped(&one), dropped(&ep), "with jitter: the same dropped tokens");
    // `roux plan --world 2` counts what expert parallelism sends. By hand: micro-batches of 8 × 32
    // = 256 tokens, 4 experts, d_model 32, one expert a token, MoE in both blocks: the logits'
    // all-gather and its backward 2·1·256·4 floats, the four all-to-alls 4·256·1·(1/2)·32; ×2
    // layers × 4 bytes = 4·(2,048 + 16,384)·2 = 147,456 bytes.
    let o = roux(&["plan", recipe.to_str().unwrap(), "--json", "--world", "2", "--set", "pretrain.expert_parallel=2"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((plan["processes"][0]["expert_parallel"].as_u64(), plan["processes"][0]["expert_sent_bytes_per_step"].as_u64()), (Some(2), Some(147_456)), "{}", plan["processes"]);
    assert_eq!(plan["processes"][0]["held_params"].as_u64(), Some(whole - 16_384), "{}", plan["processes"]);
    // On 4 processes in groups of 2, each still holds half the experts; it sends a ring
    // all-reduce of the 17,824 other parameters over 4 (2·3/4 of them) and of its 16,384 expert
    // parameters over their 2 replicas (2·1/2): (26,736 + 16,384) floats = 172,480 bytes.
    let o = roux(&["plan", recipe.to_str().unwrap(), "--json", "--world", "4", "--set", "pretrain.expert_parallel=2"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &plan["processes"][0];
    assert_eq!((p["held_params"].as_u64(), p["sent_bytes_per_step"].as_u64()), (Some(whole - 16_384), Some(172_480)), "{p}");
    let o = roux(&["plan", recipe.to_str().unwrap(), "--world", "3", "--set", "pretrain.expert_parallel=2"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("`expert_parallel = 2` divides the experts over groups of 2 processes, but the run has 3"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "pretrain.expert_parallel=3"]);
    let err = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("E0245") && err.contains("`expert_parallel = 3` does not divide the 4 experts of model `lm`"), "{err}");
}

/// Every router under expert parallelism (one group of 2) takes the steps of one process:
/// top-k (dropless), noisy top-k (its noise drawn on the gathered logits, as one process draws
/// it), expert choice (each expert picks its tokens from the group's whole micro-batch) and the
/// dense softmax gate.
#[test]
fn every_router_divided_over_two_processes_equals_one_process() {
    let out = scratch("dist-ep-routers");
    let text = std::fs::read_to_string(fixture("tiny-ep.roux")).unwrap().replace("../../data/", "../../../data/");
    let switch = "router = switch { capacity_factor = 1.0, jitter = 0 }";
    assert!(text.contains(switch));
    for (name, router) in [("topk", "topk { k = 2 }"), ("noisy", "noisy_topk { k = 2 }"), ("choice", "expert_choice { capacity_factor = 1 }"), ("softmax", "softmax")] {
        let recipe = out.join(format!("{name}.roux"));
        std::fs::write(&recipe, text.replace(switch, &format!("router = {router}"))).unwrap();
        let run = |dir: &str, extra: &[&str]| {
            let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join(dir).to_str().unwrap(), "--set", "pretrain.steps=10", "--set", "pretrain.eval_every=5"], extra].concat());
            assert_eq!(o.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&o.stderr));
            result(&out.join(dir).join("ep/pretrain"))
        };
        let one = run(&format!("{name}-one"), &[]);
        let ep = run(&format!("{name}-ep"), &["--nproc", "2", "--set", "pretrain.expert_parallel=2"]);
        assert_eq!(one.0.len(), 10);
        let (loss, weights) = differences(&one, &ep);
        assert!(loss < 1e-5 && weights < 1e-5, "{name}: expert parallel vs one process: losses differ by {loss:e}, weights by {weights:e}");
    }
}

/// `roux plan --world 2` plans the post-training stages per process too. By hand, for
/// tiny-lifecycle: the LoRA adapter (rank 4 on q, v and w1 of 2 blocks of width 32, w1 128 wide)
/// has 2·((4·32 + 32·4)·2 + 4·32 + 128·4) = 2,304 trainable parameters: 9,216 bytes of gradient,
/// and a ring all-reduce over 2 sends (2−1)/2·2 of them; the reward model's 8 pairs a step are
/// 4 per process, 8 sequences; PPO holds its policy with the value head (35,233), the frozen
/// reference (35,200) and the reward model's trunk (35,200).
#[test]
fn post_training_stages_are_planned_per_process() {
    let o = roux(&["plan", fixture("tiny-lifecycle.roux").to_str().unwrap(), "--json", "--world", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let of = |stage: &str| plan["processes"].as_array().unwrap().iter().find(|p| p["stage"] == stage).unwrap_or_else(|| panic!("no {stage}: {}", plan["processes"])).clone();
    let sft = of("sft");
    assert_eq!((sft["gradient_bytes"].as_u64(), sft["sent_bytes_per_step"].as_u64(), sft["micro_batch"].as_u64()), (Some(9_216), Some(9_216), Some(4)));
    assert_eq!(of("rm")["micro_batch"], 8);
    assert_eq!(of("rl")["weight_bytes"], 4 * (35_233 + 35_200 + 35_200));
    assert!(plan["processes"].as_array().unwrap().iter().all(|p| p["stage"] != "table"), "compare runs whole on every process");
}

/// Expert parallelism divides memory from the first allocation: each process draws (or reads)
/// one expert stack whole at a time and keeps its rows, builds its optimizer over what it holds,
/// and writes checkpoints and outputs a tensor at a time. With experts that dominate the model
/// (16.8M of its 16.8M parameters), a process's peak memory falls by at least half of what the
/// plan says it saves (a process that built the whole model first, as before, saved nothing);
/// so does a process of ZeRO-1, which once built the whole moments before sharding them.
/// `ROUX_MALLOC=exact` makes resident memory track the live tensors. The memory guard checks
/// a process's planned share, times the processes on the machine.
#[test]
fn expert_parallel_processes_hold_only_their_share_from_the_start() {
    let out = scratch("dist-ep-memory");
    let recipe = fixture("tiny-ep.roux");
    let big = ["--set", "lm.ffn.expert.hidden=32768", "--set", "pretrain.steps=3", "--set", "pretrain.eval_every=3", "--set", "pretrain.batch=8"];
    let ep = ["--nproc", "2", "--set", "pretrain.expert_parallel=2"];
    let peak = |dir: &str, extra: &[&str]| -> u64 {
        let dest = out.join(dir);
        let args = [&["run", recipe.to_str().unwrap(), "--out", dest.to_str().unwrap()], &big[..], extra].concat();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(&args).env("ROUX_MALLOC", "exact").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(dir).join("ep/pretrain/report.json")).unwrap()).unwrap();
        report["peak_host_memory_bytes"].as_u64().unwrap()
    };
    let planned = |extra: &[&str]| -> u64 {
        let o = roux(&[&["plan", recipe.to_str().unwrap(), "--json"], &big[..], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["processes"][0]["total_bytes"].as_u64().unwrap()
    };
    let (one, divided) = (peak("one", &[]), peak("ep", &ep));
    let saves = planned(&["--world", "1"]) - planned(&["--world", "2", "--set", "pretrain.expert_parallel=2"]);
    assert!(saves > 200_000_000, "the plan must save much: {saves}");
    assert!(divided + saves / 2 < one, "peak memory: one process {one} bytes, each of 2 with the experts divided {divided}; the plan saves {saves}");
    // ZeRO-1 likewise never holds the whole moments (it used to build them, then shard them).
    let zero = peak("zero", &["--nproc", "2", "--set", "pretrain.shard_optimizer=true"]);
    let saves = planned(&["--world", "1"]) - planned(&["--world", "2", "--set", "pretrain.shard_optimizer=true"]);
    assert!(zero + saves / 2 < one, "peak memory: one process {one} bytes, each of 2 with sharded moments {zero}; the plan saves {saves}");
    // The run is the same one (the numbers of the smaller fixture's test, here only the loss).
    let loss = |dir: &str| metrics(&out.join(dir).join("ep/pretrain")).last().unwrap()["loss"].as_f64().unwrap();
    assert!((loss("one") - loss("ep")).abs() < 1e-5, "{} vs {}", loss("one"), loss("ep"));
    // Experts too big for this machine even divided: refused before anything is allocated,
    // with each process's share and the processes sharing the machine.
    let huge = ["--set", "lm.ffn.expert.hidden=4194304"];
    let o = roux(&[&["plan", recipe.to_str().unwrap(), "--json", "--world", "2"], &ep[2..], &huge[..]].concat());
    let each = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["processes"][0]["total_bytes"].as_u64().unwrap();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join("huge").to_str().unwrap()], &ep[..], &huge[..]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains(&format!("stage `pretrain` needs about {:.2} GiB for its 2 processes on this machine, {:.2} GiB each (the plan's memory estimate", gib(2 * each), gib(each))), "{err}");
}
