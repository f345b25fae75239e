//! What the model calls in the crate's C++ shim (run/kit/native.cpp, built by build.rs),
//! declared here because the model imports nothing else of run/: the grad mode, the default
//! generators' state, a backward pass from given gradients (activation checkpointing,
//! `recompute.rs`), and `check`, which turns any shim call's result into an error.

use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Tensor};

type Raw = *const std::ffi::c_void;

extern "C" {
    fn roux_free_message(m: *mut c_char);
    fn roux_grad_enabled() -> c_int;
    fn roux_rng_state(cuda: c_int, index: c_int, out: *mut *mut std::ffi::c_void) -> *mut c_char;
    fn roux_set_rng_state(cuda: c_int, index: c_int, state: Raw) -> *mut c_char;
    fn roux_backward(roots: *const Raw, grads: *const Raw, n: c_int) -> *mut c_char;
}

/// The shim's result: null, or a message it allocated (then an error saying `what` failed).
pub(crate) fn check(what: &str, m: *mut c_char) -> Result<()> {
    if m.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'ed; freed once here.
    let text = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
    unsafe { roux_free_message(m) };
    // (Without the C++ backtrace libtorch appends for its own developers.)
    bail!("{what}: {}", text.split("\nException raised from").next().unwrap_or_default().trim_end())
}

/// Whether autograd records operations now (not inside `tch::no_grad`).
pub(super) fn grad_enabled() -> bool {
    // SAFETY: no arguments; reads a thread-local flag.
    unsafe { roux_grad_enabled() != 0 }
}

/// The default generators a pass on `device` draws from: the CPU's, and the GPU's on CUDA.
pub(super) struct Generators(Vec<(c_int, c_int, Tensor)>);

impl Generators {
    pub(super) fn now(device: Device) -> Result<Generators> {
        let mut which = vec![(0, 0)];
        if let Device::Cuda(i) = device {
            which.push((1, i as c_int));
        }
        let mut states = vec![];
        for (cuda, index) in which {
            let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
            // SAFETY: on success the shim stores a new at::Tensor, which tch's Tensor then owns.
            check("reading the random generator's state", unsafe { roux_rng_state(cuda, index, &mut out) })?;
            states.push((cuda, index, unsafe { Tensor::from_ptr(out as *mut _) }));
        }
        Ok(Generators(states))
    }

    pub(super) fn restore(&self) -> Result<()> {
        for (cuda, index, state) in &self.0 {
            // SAFETY: `state` is a live at::Tensor for the call's duration.
            check("restoring the random generator's state", unsafe { roux_set_rng_state(*cuda, *index, state.as_ptr() as Raw) })?;
        }
        Ok(())
    }
}

/// `torch.autograd.backward(roots, grads)`: gradients accumulate into the leaves' `.grad`.
pub(super) fn backward_from(roots: &[(Tensor, Tensor)]) -> Result<()> {
    let (r, g): (Vec<Raw>, Vec<Raw>) = roots.iter().map(|(r, g)| (r.as_ptr() as Raw, g.as_ptr() as Raw)).unzip();
    // SAFETY: every pointer is a live at::Tensor held by `roots` for the call's duration.
    check("the backward pass of a checkpointed block", unsafe { roux_backward(r.as_ptr(), g.as_ptr(), r.len() as c_int) })
}
