// What roux needs from libtorch that tch does not bind: the multi-tensor fused AdamW kernel,
// setting a gradient, pinned memory, the Kineto profiler, and (for activation checkpointing,
// declared in run/model/recompute.rs) the grad mode and the random generators' state. Built by build.rs against the headers of the torch roux links (C++17, the
// same C++ ABI flag). Each function catches every C++ exception and returns its message (freed
// with roux_free_message), so no exception crosses into Rust.
#include "shim.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

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

// Whether autograd records operations now (false inside tch::no_grad).
int roux_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }

static at::Generator default_generator(int cuda, int index) {
  return cuda ? at::globalContext().defaultGenerator(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)))
              : at::globalContext().defaultGenerator(c10::Device(c10::DeviceType::CPU));
}

// The state of the default generator of the CPU, or of CUDA device `index` (a new tensor in *out),
// as torch.get_rng_state / torch.cuda.get_rng_state return it.
char* roux_rng_state(int cuda, int index, at::Tensor** out) {
  return guarded([&] {
    auto g = default_generator(cuda, index);
    std::lock_guard<std::mutex> lock(g.mutex());
    *out = new at::Tensor(g.get_state());
  });
}

// Put back a state `roux_rng_state` returned: the draws that followed it are drawn again.
char* roux_set_rng_state(int cuda, int index, at::Tensor* state) {
  return guarded([&] {
    auto g = default_generator(cuda, index);
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(*state);
  });
}

// torch.autograd.backward(roots, grads): each root's gradient given (a checkpointed block's
// output and its auxiliary losses), accumulated into the leaves' .grad.
char* roux_backward(at::Tensor** roots, at::Tensor** grads, int n) {
  return guarded([&] {
    std::vector<at::Tensor> r, g;
    for (int i = 0; i < n; ++i) {
      r.push_back(*roots[i]);
      g.push_back(*grads[i]);
    }
    torch::autograd::backward(r, g);
  });
}

}  // extern "C"
