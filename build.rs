//! Link libtorch so the binary runs without LD_LIBRARY_PATH and keeps CUDA.
//!
//! torch-sys finds libtorch through the active venv's `python`. We add an rpath to torch's `lib/`
//! and force `libtorch_cuda.so` to stay NEEDED: with `--as-needed` the linker drops it (nothing
//! references its symbols directly) and CUDA silently becomes unavailable.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let out = Command::new("python")
        .args(["-c", "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output();
    let lib = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => panic!(
            "roux: the `torch` feature needs PyTorch 2.11.0 in the active venv; \
             run `source scripts/env.sh` first, or build with --no-default-features"
        ),
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
