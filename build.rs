//! Link libtorch so the binary runs without LD_LIBRARY_PATH and keeps CUDA, and build the C++
//! shim (`src/run/kit/native.cpp`) against the same torch's headers.
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
    println!("cargo:rerun-if-changed=src/run/kit/native.cpp");
    println!("cargo:rerun-if-changed=src/run/kit/nf4.cpp");
    println!("cargo:rerun-if-changed=src/run/kit/dist.cpp");
    println!("cargo:rerun-if-changed=src/run/kit/nccl.cpp");
    println!("cargo:rerun-if-changed=src/run/kit/shim.h");
    println!("cargo:rerun-if-changed=src/run/kit/c10d");
    // torch's directory and the C++ ABI its libraries were built with (the shim must match it).
    let out = Command::new("python")
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"])
        .output();
    let (root, abi) = match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            let mut lines = text.lines();
            (lines.next().unwrap_or_default().trim().to_string(), lines.next().unwrap_or("1").trim().to_string())
        }
        _ => panic!(
            "roux: the `torch` feature needs PyTorch 2.11.0 in the active venv; \
             run `source scripts/env.sh` first, or build with --no-default-features"
        ),
    };
    let lib = format!("{root}/lib");
    shim(&root, &abi);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}

/// The shim (native.cpp, nf4.cpp, and dist.cpp over c10d), compiled as torch-sys compiles its own wrapper: C++17, torch's include folders, the
/// ABI flag torch reports. Its symbols resolve against the libtorch the binary links anyway.
/// With NCCL's and the CUDA runtime's headers beside torch (`nccl_headers`), nccl.cpp too.
fn shim(root: &str, abi: &str) {
    let mut build = cc::Build::new();
    match nccl_headers(root) {
        Some(dirs) => {
            build.file("src/run/kit/nccl.cpp").define("ROUX_NCCL", None).flag_if_supported("-Wno-interference-size");
            for d in dirs {
                build.include(d);
            }
        }
        None => println!("cargo:warning=roux: NCCL's or the CUDA runtime's headers are not in the venv (source scripts/env.sh installs them); several processes on GPUs will be refused"),
    }
    build
        .cpp(true)
        .file("src/run/kit/native.cpp")
        .file("src/run/kit/nf4.cpp")
        .file("src/run/kit/dist.cpp")
        .include(format!("{root}/include"))
        .include(format!("{root}/include/torch/csrc/api/include"))
        // gloo's names for c10d's ProcessGroupGloo.hpp, which the wheel ships without them.
        .include("src/run/kit/c10d")
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("roux_native");
}

/// The include folders c10d's ProcessGroupNCCL.hpp needs, from the venv's NVIDIA wheels beside
/// torch: nccl.h (nvidia-nccl, a torch dependency), the CUDA runtime's headers (cuda-toolkit's),
/// their C runtime (nvidia-cuda-crt) and libcu++ (nvidia-cuda-cccl). None if any is missing.
fn nccl_headers(root: &str) -> Option<Vec<std::path::PathBuf>> {
    let nvidia = std::path::Path::new(root).parent()?.join("nvidia");
    let cuda = nvidia.join("cu13/include");
    let dirs = vec![nvidia.join("nccl/include"), cuda.clone(), cuda.join("cccl")];
    let needed = [dirs[0].join("nccl.h"), cuda.join("cuda_runtime_api.h"), cuda.join("crt/host_config.h"), dirs[2].join("nv/target")];
    needed.iter().all(|f| f.exists()).then_some(dirs)
}
