//! Rust side of the C++ shim (`native.cpp`): libtorch's fused AdamW kernel and its profiler,
//! which tch does not bind. Every call returns the C++ exception's text as an error.

use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;
use tch::Tensor;

type Raw = *const std::ffi::c_void;

extern "C" {
    fn roux_free_message(m: *mut c_char);
    fn roux_fused_adamw(p: Raw, g: Raw, m: Raw, v: Raw, step: Raw, found_inf: Raw, lr: f64, beta1: f64, beta2: f64, weight_decay: f64, eps: f64) -> *mut c_char;
    fn roux_profiler_start(cuda: c_int) -> *mut c_char;
    fn roux_profiler_stop(path: *const c_char) -> *mut c_char;
}

/// The shim's result: null, or a message it allocated.
fn check(what: &str, m: *mut c_char) -> Result<()> {
    if m.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'ed; freed once here.
    let text = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
    unsafe { roux_free_message(m) };
    bail!("{what}: {text}")
}

fn raw(t: &Tensor) -> Raw {
    t.as_ptr() as Raw
}

/// `torch._fused_adamw_` on one flat buffer each of parameters, gradients and moments: `step`
/// is a float32 scalar on their device holding t; a nonzero `found_inf` skips the update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, step: &Tensor, found_inf: Option<&Tensor>, lr: f64, betas: (f64, f64), weight_decay: f64, eps: f64) -> Result<()> {
    let inf = found_inf.map_or(std::ptr::null(), raw);
    // SAFETY: every pointer is a live at::Tensor owned by the caller for the call's duration.
    check("fused AdamW", unsafe { roux_fused_adamw(raw(p), raw(g), raw(m), raw(v), raw(step), inf, lr, betas.0, betas.1, weight_decay, eps) })
}

/// Record libtorch's operators, and CUDA kernels when `cuda`, until `profiler_stop`.
pub fn profiler_start(cuda: bool) -> Result<()> {
    // SAFETY: no pointers cross; the shim catches every exception.
    check("starting the profiler", unsafe { roux_profiler_start(cuda as c_int) })
}

/// Stop recording and write a Chrome trace to `path`.
pub fn profiler_stop(path: &Path) -> Result<()> {
    let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| anyhow::anyhow!("{}: a path with a NUL byte", path.display()))?;
    // SAFETY: `c` outlives the call.
    check(&format!("writing the profile {}", path.display()), unsafe { roux_profiler_stop(c.as_ptr()) })
}
