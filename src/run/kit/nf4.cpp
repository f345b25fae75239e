// 4-bit NormalFloat weights (NF4, Dettmers et al. 2023, QLoRA) as bitsandbytes stores them: the
// weight flattened into blocks of 64, each scaled by its absolute maximum and rounded to the
// nearest of 16 fixed values (quantiles of a normal distribution, with an exact 0), two codes to
// a byte, the first in the high four bits. And a linear layer over such a weight as bitsandbytes'
// MatMul4Bit computes it: an autograd function that keeps the codes, not the dequantized weight,
// for the backward pass and dequantizes again there, so a pass holds one weight whole at a time.
// Declared in run/model/nf4.rs.
#include "shim.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

using roux_shim::guarded;

namespace {

constexpr int64_t kBlock = 64;

// bitsandbytes' NF4 code (functional.py, `get_4bit_type("nf4")`), lowest first.
const float kCode[16] = {-1.0f,
                         -0.6961928009986877f,
                         -0.5250730514526367f,
                         -0.39491748809814453f,
                         -0.28444138169288635f,
                         -0.18477343022823334f,
                         -0.09105003625154495f,
                         0.0f,
                         0.07958029955625534f,
                         0.16093020141124725f,
                         0.24611230194568634f,
                         0.33791524171829224f,
                         0.44070982933044434f,
                         0.5626170039176941f,
                         0.7229568362236023f,
                         1.0f};

at::Tensor code(const at::Device& d) { return at::tensor(std::vector<float>(kCode, kCode + 16)).to(d); }

// Byte b → (code[b >> 4], code[b & 15]): a (256, 2) table, so dequantizing is one lookup a byte.
at::Tensor pairs(const at::Device& d) {
  std::vector<float> t(512);
  for (int b = 0; b < 256; ++b) {
    t[2 * b] = kCode[b >> 4];
    t[2 * b + 1] = kCode[b & 15];
  }
  return at::tensor(t).view({256, 2}).to(d);
}

// The weight of `n` elements the codes and scales hold, in `kind`: each code's value (`table`,
// `pairs` on the codes' device, made once a weight) times its block's absolute maximum, computed
// in float32 (as bitsandbytes' kernel does) and then cast.
at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& table, int64_t n, at::ScalarType kind) {
  auto values = table.index_select(0, codes.to(at::kInt)).view({-1, kBlock});
  // (In place: one float32 copy of the weight at a time.)
  return values.mul_(absmax.unsqueeze(1)).view({-1}).narrow(0, 0, n).to(kind);
}

struct Nf4Linear : public torch::autograd::Function<Nf4Linear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& codes,
                            const at::Tensor& absmax, const at::Tensor& table, int64_t out, int64_t in) {
    ctx->save_for_backward({codes, absmax, table});
    ctx->saved_data["out"] = out;
    ctx->saved_data["in"] = in;
    return at::linear(x, dequantize(codes, absmax, table, out * in, x.scalar_type()).view({out, in}));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    int64_t out = ctx->saved_data["out"].toInt(), in = ctx->saved_data["in"].toInt();
    auto w = dequantize(saved[0], saved[1], saved[2], out * in, grads[0].scalar_type()).view({out, in});
    // The input's gradient only: the codes are frozen.
    return {grads[0].matmul(w), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `w` (float32, any shape, finite) as NF4: *codes (uint8, one byte for two elements, the last
// block padded with zeros), *absmax (float32, one a block of 64) and *table (the byte → pair of
// values table the other functions read, on w's device).
char* roux_nf4_quantize(at::Tensor* w, at::Tensor** codes, at::Tensor** absmax, at::Tensor** table) {
  return guarded([&] {
    auto flat = w->detach().to(at::kFloat).reshape({-1});
    int64_t n = flat.numel(), blocks = (n + kBlock - 1) / kBlock;
    auto padded = at::constant_pad_nd(flat, {0, blocks * kBlock - n}).view({blocks, kBlock});
    auto scale = padded.abs().amax(1);
    // (An all-zero block divides by 1: its codes are the exact 0.)
    auto scaled = padded / at::where(scale > 0, scale, at::ones_like(scale)).unsqueeze(1);
    // The nearest value: the index of the first midpoint at or above x (a tie rounds down, as
    // bitsandbytes' comparisons `x > midpoint` do).
    auto c = code(flat.device());
    auto midpoints = (c.narrow(0, 1, 15) + c.narrow(0, 0, 15)) / 2;
    auto index = at::bucketize(scaled, midpoints, /*out_int32=*/false, /*right=*/false).view({-1, 2});
    auto packed = (index.select(1, 0) * 16 + index.select(1, 1)).to(at::kByte).contiguous();
    *codes = new at::Tensor(packed);
    *absmax = new at::Tensor(scale.contiguous());
    *table = new at::Tensor(pairs(flat.device()));
  });
}

// The `n` elements `roux_nf4_quantize` encoded, float32 (a new flat tensor in *out).
char* roux_nf4_dequantize(at::Tensor* codes, at::Tensor* absmax, at::Tensor* table, int64_t n, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(dequantize(*codes, *absmax, *table, n, at::kFloat)); });
}

// x · Wᵀ for W (out × in) held as NF4, in x's kind, differentiable in x (a new tensor in *y).
char* roux_nf4_linear(at::Tensor* x, at::Tensor* codes, at::Tensor* absmax, at::Tensor* table, int64_t out, int64_t in, at::Tensor** y) {
  return guarded([&] { *y = new at::Tensor(Nf4Linear::apply(*x, *codes, *absmax, *table, out, in)); });
}

}  // extern "C"
