// libtorch's c10d for roux: a TCPStore rendezvous, a Gloo process group for CPU tensors and, once
// a stage runs on a GPU, NCCL for CUDA tensors (nccl.cpp), and the collectives a stage needs on tch
// tensors. No collective is written here: each call hands the tensors to the backend of their
// device and waits for its Work (for NCCL: the current CUDA stream waits, the host does not).
// Built by build.rs beside native.cpp; gloo's declarations come from ./c10d (see its README).
#include "shim.h"

#define USE_C10D_GLOO
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef ROUX_NCCL
// nccl.cpp: c10d's NCCL backend over `store`.
c10::intrusive_ptr<c10d::Backend> roux_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout);
#endif

namespace {

using roux_shim::guarded;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // NCCL, for CUDA tensors (null until `roux_dist_use_nccl`).
  c10::intrusive_ptr<c10d::Backend> nccl;
  // The backend as a ProcessGroup registered under `name`, which the differentiable collectives
  // (`_c10d_functional_autograd`, what torch.distributed's functional API calls) find.
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  int world;
  std::string name;
};

// A Gloo process group of `world` processes over `store`, registered under `name`.
Group* gloo_group(c10::intrusive_ptr<c10d::Store> store, int rank, int world, std::chrono::milliseconds timeout,
                  const std::string& name) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  c10d::register_process_group(name, group);
  return new Group{store, backend, nullptr, group, world, name};
}

// A functional collective's result is ready once waited on; the wait runs below autograd, where
// it is the identity on the tensor (and its graph).
at::Tensor waited(const at::Tensor& t) {
  static auto wait = c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional::wait_tensor", "").typed<at::Tensor(const at::Tensor&)>();
  at::AutoDispatchBelowAutograd below;
  return wait.call(t);
}

Group* as_group(void* g) { return static_cast<Group*>(g); }

// The backend for a tensor's device: NCCL for a CUDA tensor once it is set up, Gloo otherwise
// (control values, CPU runs).
c10d::Backend* backend_for(void* g, const at::Tensor& t) {
  Group* group = as_group(g);
  if (t.is_cuda()) {
    if (!group->nccl) throw std::runtime_error("a CUDA tensor in a collective before NCCL was set up");
    return group->nccl.get();
  }
  return group->backend.get();
}

void finish(const c10::intrusive_ptr<c10d::Work>& work) { work->wait(); }

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1: return c10d::ReduceOp::MAX;
    case 2: return c10d::ReduceOp::MIN;
    default: return c10d::ReduceOp::SUM;
  }
}

}  // namespace

extern "C" {

// Join the group of `world` processes as `rank`: a TCPStore at host:port (rank 0 serves it unless
// `agent_store`, torchrun's own store, which every rank joins as a client under `prefix`), then a
// Gloo process group over it with `timeout_ms` on every collective.
char* roux_dist_init(const char* host, int port, int rank, int world, int agent_store, const char* prefix,
                     int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = !agent_store && rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    *out = gloo_group(store, rank, world, timeout, "roux");
  });
}

// A group of some of the run's processes, as `rank` of `size` in it: only its members call it,
// with the same `name` (the store's keys for it, and the name it is registered under in this
// process). Its collectives time out as `timeout_ms`.
char* roux_dist_subgroup(void* g, int rank, int size, const char* name, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(name) + "/", as_group(g)->store);
    Group* sub = gloo_group(store, rank, size, std::chrono::milliseconds(timeout_ms), name);
#ifdef ROUX_NCCL
    // A group of a run on GPUs takes their tensors through NCCL too.
    if (as_group(g)->nccl) {
      sub->nccl = roux_nccl_backend(store, rank, size, std::chrono::milliseconds(timeout_ms));
      sub->group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, sub->nccl);
    }
#endif
    *out = sub;
  });
}

void roux_dist_free(void* g) {
  c10d::unregister_process_group(as_group(g)->name);
  // NCCL's communicators and watchdog go down in order, as destroy_process_group() does in Python
  // (destroyed without it, ProcessGroupNCCL warns and may wait on its threads).
  if (as_group(g)->nccl) {
    try {
      as_group(g)->nccl->shutdown();
    } catch (...) {
    }
  }
  delete as_group(g);
}

// In place: every rank's `t` becomes the reduction (0 sum, 1 max, 2 min) of all ranks' `t`.
char* roux_dist_all_reduce(void* g, at::Tensor* t, int op) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    finish(backend_for(g, *t)->allreduce(ts, opts));
  });
}

// In place: every rank's `t` becomes rank `root`'s.
char* roux_dist_broadcast(void* g, at::Tensor* t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    finish(backend_for(g, *t)->broadcast(ts, opts));
  });
}

// `out` (world × n elements, contiguous) becomes every rank's `in` (n elements), in rank order.
char* roux_dist_all_gather(void* g, at::Tensor* out, at::Tensor* in) {
  return guarded([&] { finish(backend_for(g, *in)->_allgather_base(*out, *in)); });
}

// `out` (n elements) becomes the sum over ranks of this rank's n-element slice of `in` (world × n).
char* roux_dist_reduce_scatter(void* g, at::Tensor* out, at::Tensor* in) {
  return guarded([&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    finish(backend_for(g, *in)->_reduce_scatter_base(*out, *in, opts));
  });
}

// Rows of `in` go to ranks in order, `send[r]` rows to rank r; `out` receives `recv[r]` rows from
// each rank r, in rank order. Counts are rows of the first dimension.
char* roux_dist_all_to_all(void* g, at::Tensor* out, at::Tensor* in, const int64_t* send, const int64_t* recv, int world) {
  return guarded([&] {
    std::vector<int64_t> s(send, send + world), r(recv, recv + world);
    finish(backend_for(g, *in)->alltoall_base(*out, *in, r, s));
  });
}

// Differentiable (their backward is the opposite collective): every rank's `in` stacked along the
// first dimension in rank order; its gradient is the sum over ranks of the gradients of this
// rank's block (a reduce-scatter).
char* roux_dist_all_gather_grad(void* g, at::Tensor* in, at::Tensor** out) {
  return guarded([&] {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional_autograd::all_gather_into_tensor", "").typed<at::Tensor(const at::Tensor&, int64_t, const std::string&)>();
    *out = new at::Tensor(waited(op.call(in->contiguous(), as_group(g)->world, as_group(g)->name)));
  });
}

// Differentiable all-to-all of rows: `send[r]` rows of `in` to rank r, `recv[r]` rows from rank r
// (the gradient goes back the same way).
char* roux_dist_all_to_all_grad(void* g, at::Tensor* in, const int64_t* send, const int64_t* recv, at::Tensor** out) {
  return guarded([&] {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional_autograd::all_to_all_single", "").typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, c10::SymIntArrayRef, const std::string&)>();
    int w = as_group(g)->world;
    std::vector<c10::SymInt> s(send, send + w), r(recv, recv + w);
    *out = new at::Tensor(waited(op.call(in->contiguous(), r, s, as_group(g)->name)));
  });
}

// NCCL for the CUDA tensors of every later collective (every process calls it, once, before the
// first; the communicator itself is made at that first collective). Also the backend the
// differentiable collectives of expert parallelism find for CUDA tensors.
char* roux_dist_use_nccl(void* g, int64_t timeout_ms) {
  return guarded([&] {
#ifdef ROUX_NCCL
    Group* group = as_group(g);
    if (group->nccl) return;
    group->nccl = roux_nccl_backend(group->store, group->backend->getRank(), group->world, std::chrono::milliseconds(timeout_ms));
    group->group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, group->nccl);
#else
    (void)g;
    (void)timeout_ms;
    throw std::runtime_error("this roux was built without NCCL (its headers were not in the venv when it was built; see build.rs)");
#endif
  });
}

char* roux_dist_barrier(void* g) {
  return guarded([&] { finish(as_group(g)->backend->barrier()); });
}

// The store's counter `key` advanced by `by` (for agreeing on numbers other than tensors).
char* roux_dist_store_add(void* g, const char* key, int64_t by, int64_t* out) {
  return guarded([&] { *out = as_group(g)->store->add(std::string(key), by); });
}

}  // extern "C"
