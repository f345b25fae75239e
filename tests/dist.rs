//! More than one process (issue 18): torchrun starts roux twice (`roux run --nproc 2`), the
//! processes talk through libtorch's c10d (Gloo on these CPUs), and the run equals the one
//! process run of the same global batch. Gradient accumulation equals the whole batch.

mod common;
use common::*;
use std::path::Path;

/// Per-step training losses and the final weights of a finished `pretrain` in `dir`.
fn result(dir: &Path) -> (Vec<f64>, Vec<(String, tch::Tensor)>) {
    let losses = metrics(dir).iter().map(|m| m["loss"].as_f64().unwrap()).collect();
    let mut weights = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, weights)
}

/// The largest difference of losses step by step and of weights tensor by tensor.
fn differences(a: &(Vec<f64>, Vec<(String, tch::Tensor)>), b: &(Vec<f64>, Vec<(String, tch::Tensor)>)) -> (f64, f64) {
    assert_eq!(a.0.len(), b.0.len(), "the runs logged different numbers of steps");
    let loss = a.0.iter().zip(&b.0).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let weights = a.1.iter().zip(&b.1).map(|((n, x), (m, y))| {
        assert_eq!(n, m);
        (x - y).abs().max().double_value(&[])
    });
    (loss, weights.fold(0.0, f64::max))
}

fn train(out: &Path, extra: &[&str]) -> (Vec<f64>, Vec<(String, tch::Tensor)>) {
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
    // Accumulating four micro-batches per process gives the same steps, on one process and on two.
    let acc1 = train(&out.join("acc1"), &["--set", "pretrain.accumulate=4"]);
    let acc2 = train(&out.join("acc2"), &["--set", "pretrain.accumulate=4", "--nproc", "2"]);
    for (what, run) in [("accumulate = 4 on 1 process", &acc1), ("accumulate = 4 on 2 processes", &acc2)] {
        let (loss, weights) = differences(&one, run);
        assert!(loss < 1e-5 && weights < 1e-5, "{what} vs the whole batch: losses differ by {loss:e}, weights by {weights:e}");
    }
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
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "pretrain.accumulate=5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0229]: `accumulate = 5` does not divide the batch of 16"), "{err}");
    assert!(err.contains("each optimizer step splits its batch into 5 equal micro-batches; pick a batch that is a multiple of 5"), "{err}");
}
