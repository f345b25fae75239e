// What roux needs from libtorch that tch does not bind: the multi-tensor fused AdamW kernel,
// setting a gradient, pinned memory and the Kineto profiler. Built by build.rs against the headers of the torch roux links (C++17, the
// same C++ ABI flag). Each function catches every C++ exception and returns its message (freed
// with roux_free_message), so no exception crosses into Rust.
#include "shim.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <optional>
#include <set>
#include <string>

using roux_shim::guarded;

extern "C" {

void roux_free_message(char* m) { std::free(m); }

// One AdamW update of flat buffers p, g, m, v (one tensor each), `step` a float32 scalar tensor
// on their device holding the step count t (≥ 1). The kernel reads the gradient as g / grad_scale
// when `grad_scale` is given (gradient clipping folded into the update: no pass of its own), and
// with `found_inf` (a float32 scalar, nonzero when the gradient is not finite) leaves p, m and v
// unchanged.
char* roux_fused_adamw(at::Tensor* p, at::Tensor* g, at::Tensor* m, at::Tensor* v, at::Tensor* step, at::Tensor* grad_scale,
                       at::Tensor* found_inf, double lr, double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    std::optional<at::Tensor> scale, inf;
    if (grad_scale != nullptr) scale = *grad_scale;
    if (found_inf != nullptr) inf = *found_inf;
    at::_fused_adamw_({*p}, {*g}, {*m}, {*v}, {}, {*step}, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, scale, inf);
  });
}

// `g` becomes the gradient of leaf `p` (autograd then accumulates into it in place): tch can
// only reach a gradient that a backward pass created.
char* roux_set_grad(at::Tensor* p, at::Tensor* g) {
  return guarded([&] { p->mutable_grad() = *g; });
}

// `t` copied into page-locked memory (a new tensor in *out), so a copy to the GPU from it can run
// without the host waiting. tch's binding passes a device argument libtorch now warns about.
char* roux_pin_memory(at::Tensor* t, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(t->pin_memory()); });
}

// Start recording operators (and CUDA kernels when `cuda`), as torch.profiler does.
char* roux_profiler_start(int cuda) {
  return guarded([&] {
    using torch::autograd::profiler::ProfilerConfig;
    using torch::autograd::profiler::ProfilerState;
    using torch::profiler::impl::ActivityType;
    std::set<ActivityType> activities{ActivityType::CPU};
    if (cuda) activities.insert(ActivityType::CUDA);
    ProfilerConfig config(ProfilerState::KINETO);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

// Stop recording and write the events as a Chrome trace (Perfetto, chrome://tracing) to `path`.
char* roux_profiler_stop(const char* path) {
  return guarded([&] {
    auto result = torch::autograd::profiler::disableProfiler();
    result->save(path);
  });
}

}  // extern "C"
