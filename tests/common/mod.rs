//! Helpers the integration tests share: paths, scratch folders, running the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/test-runs").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn roux(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roux")).args(args).env("ROUX_QUIET", "1").output().expect("run roux")
}

pub fn run_ok(recipe: &Path, out: &Path) -> String {
    let o = roux(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{err}");
    err
}

pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Start `roux ARGS` and SIGKILL it once `dir/state.json` names step `step` (polling, so a
/// loaded machine only waits longer); should the run finish first, start over in a fresh `dir`,
/// three times at most. Returns whether a run was interrupted.
pub fn kill_after_checkpoint(args: &[&str], dir: &Path, step: u64) -> bool {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mark = format!("\"step\": {step},");
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_roux")).args(args).env("ROUX_QUIET", "1").stderr(Stdio::null()).spawn().expect("run roux");
        let t0 = Instant::now();
        while !std::fs::read_to_string(dir.join("state.json")).is_ok_and(|t| t.contains(&mark)) && t0.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
        if !dir.join("report.json").exists() {
            return true;
        }
    }
    false
}

/// The largest difference between two runs' weights, tensor by tensor (both sorted by name). A
/// key projection's bias only has to stay near zero in both: its gradient is zero in exact
/// arithmetic (softmax ignores a score added to every key of a query), so AdamW turns rounding
/// noise into steps of its own that differ between runs equal in every other way.
#[cfg(feature = "torch")]
pub fn weight_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len(), "the runs wrote different tensors");
    let worst = a.iter().zip(b).map(|((n, x), (m, y))| {
        assert_eq!(n, m);
        if n.ends_with("attn.k.bias") {
            let largest = x.abs().max().double_value(&[]).max(y.abs().max().double_value(&[]));
            assert!(largest < 1e-3, "{n} moved to {largest}: it has no gradient");
            return 0.0;
        }
        (x - y).abs().max().double_value(&[])
    });
    worst.fold(0.0, f64::max)
}

/// `python -c SCRIPT ARGS…` as `Command::output` gives it, run by one Python process that every
/// test of the binary shares: importing torch and transformers takes seconds, paid once. Each
/// script runs with fresh globals and `sys.argv` = ["-c", ARGS…]; what it prints is its stdout,
/// an exception (traceback on its stderr) or `sys.exit(n ≠ 0)` a failure.
pub fn python(script: &str, args: &[&str]) -> Output {
    use std::io::{BufRead, Write};
    use std::os::unix::process::ExitStatusExt;
    type Server = (std::process::ChildStdin, std::io::BufReader<std::process::ChildStdout>);
    static SERVER: std::sync::Mutex<Option<Server>> = std::sync::Mutex::new(None);
    // The reply is one line after a marker, so that what a library writes to the process's own
    // stdout (beside `print`, which is captured) cannot be taken for it.
    const MARK: &str = "\u{1}roux-python-reply ";
    const SERVE: &str = "import contextlib, io, json, sys, traceback\n\
        for line in sys.stdin:\n\
        \x20   request = json.loads(line)\n\
        \x20   out, err, ok = io.StringIO(), io.StringIO(), True\n\
        \x20   sys.argv = ['-c'] + request[1:]\n\
        \x20   with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n\
        \x20       try:\n\
        \x20           exec(request[0], {'__name__': '__main__'})\n\
        \x20       except SystemExit as e:\n\
        \x20           ok = e.code in (None, 0)\n\
        \x20       except BaseException:\n\
        \x20           ok = False\n\
        \x20           traceback.print_exc()\n\
        \x20   sys.__stdout__.write('\\x01roux-python-reply ' + json.dumps([ok, out.getvalue(), err.getvalue()]) + '\\n')\n\
        \x20   sys.__stdout__.flush()";
    // (A test that failed while holding it leaves the server as it was: still usable.)
    let mut server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    // The server lives as long as the test binary, which never waits for it: its stdin closes
    // when the binary exits, and its loop ends there.
    #[allow(clippy::zombie_processes)]
    let (stdin, stdout) = server.get_or_insert_with(|| {
        let mut child = Command::new("python").args(["-c", SERVE]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("python on PATH (source scripts/env.sh)");
        (child.stdin.take().unwrap(), std::io::BufReader::new(child.stdout.take().unwrap()))
    });
    let request: Vec<&str> = std::iter::once(script).chain(args.iter().copied()).collect();
    writeln!(stdin, "{}", serde_json::to_string(&request).unwrap()).expect("the Python process is running");
    let mut noise = String::new();
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the Python process ended:\n{noise}");
        if let Some(reply) = line.strip_prefix(MARK) {
            let (ok, out, err): (bool, String, String) = serde_json::from_str(reply).unwrap();
            return Output { status: std::process::ExitStatus::from_raw(if ok { 0 } else { 1 << 8 }), stdout: format!("{noise}{out}").into_bytes(), stderr: err.into_bytes() };
        }
        noise.push_str(&line);
    }
}

/// What TensorBoard reads as texts from `dir`'s event files, through its own reader and its text
/// plugin's renderer (Markdown on, as the Text tab shows it): {tag: [{step, shape, cells, html}]}.
/// Asserts each tag is the text plugin's.
pub fn tensorboard_texts(dir: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from tensorboard.plugins.text import text_plugin
ea = EventAccumulator(sys.argv[1], size_guidance={"tensors": 0})
ea.Reload()
out = {}
for tag in ea.Tags()["tensors"]:
    assert ea.SummaryMetadata(tag).plugin_data.plugin_name == "text", tag
    out[tag] = []
    for e in ea.Tensors(tag):
        a = tensor_util.make_ndarray(e.tensor_proto)
        out[tag].append({"step": e.step, "shape": list(a.shape), "cells": [x.decode() for x in a.reshape(-1)], "html": text_plugin.text_array_to_html(a, True)})
print(json.dumps(out))
"#;
    let o = python(script, &[dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}
