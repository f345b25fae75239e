//! Rust side of the C++ shim (`native.cpp`): libtorch's fused AdamW kernel, setting a gradient,
//! pinned memory and the profiler, which tch does not bind. Every call returns the C++ exception's text as an error.

use anyhow::Result;

use crate::run::model::shim::check;
use std::ffi::{c_char, c_int, CString};
use std::path::Path;
use tch::Tensor;

type Raw = *const std::ffi::c_void;

extern "C" {
    fn roux_fused_adamw(p: Raw, g: Raw, m: Raw, v: Raw, step: Raw, grad_scale: Raw, found_inf: Raw, lr: f64, beta1: f64, beta2: f64, weight_decay: f64, eps: f64) -> *mut c_char;
    fn roux_set_grad(p: Raw, g: Raw) -> *mut c_char;
    fn roux_pin_memory(t: Raw, out: *mut *mut std::ffi::c_void) -> *mut c_char;
    fn roux_profiler_start(cuda: c_int) -> *mut c_char;
    fn roux_profiler_stop(path: *const c_char) -> *mut c_char;
}

fn raw(t: &Tensor) -> Raw {
    t.as_ptr() as Raw
}

/// The device scalars the fused update reads besides its buffers.
pub struct AdamwFlags<'a> {
    /// t, float32.
    pub step: &'a Tensor,
    /// The kernel reads the gradient as g / grad_scale (clipping without a pass of its own).
    pub grad_scale: Option<&'a Tensor>,
    /// Nonzero: skip the update.
    pub found_inf: Option<&'a Tensor>,
}

/// `torch._fused_adamw_` on one flat buffer each of parameters, gradients and moments.
pub fn fused_adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, flags: &AdamwFlags, lr: f64, betas: (f64, f64), weight_decay: f64, eps: f64) -> Result<()> {
    let opt = |t: Option<&Tensor>| t.map_or(std::ptr::null(), raw);
    let (scale, inf) = (opt(flags.grad_scale), opt(flags.found_inf));
    // SAFETY: every pointer is a live at::Tensor owned by the caller for the call's duration.
    check("fused AdamW", unsafe { roux_fused_adamw(raw(p), raw(g), raw(m), raw(v), raw(flags.step), scale, inf, lr, betas.0, betas.1, weight_decay, eps) })
}

/// Make `g` the gradient of leaf `p` (a view into a flat buffer, which autograd then
/// accumulates into in place), without a backward pass to create one first.
pub fn set_grad(p: &Tensor, g: &Tensor) -> Result<()> {
    // SAFETY: both are live at::Tensors owned by the caller; the shim copies the handle.
    check("setting a gradient", unsafe { roux_set_grad(raw(p), raw(g)) })
}

/// `t` in page-locked host memory (for copies to a GPU that do not make the host wait).
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: `t` is live; on success the shim stores a new at::Tensor allocated with `new`, which
    // tch's Tensor owns and frees as it frees its own.
    check("pinning memory", unsafe { roux_pin_memory(raw(t), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
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
