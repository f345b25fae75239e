// NCCL for CUDA tensors: c10d's ProcessGroupNCCL over the run's store, for dist.cpp. Built only
// where the venv has NCCL's and the CUDA runtime's headers (build.rs; scripts/env.sh installs
// them beside torch), which no other file needs: its symbols come from libtorch_cuda.
#define USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> roux_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  // A key space of its own in the store, beside Gloo's, as torch.distributed gives each backend.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("cuda/", store);
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, options);
}
