// 4-bit NormalFloat weights (NF4, Dettmers et al. 2023, QLoRA) as bitsandbytes stores them: the
// weight flattened into blocks of 64, each scaled by its absolute maximum and rounded to the
// nearest of 16 fixed values (quantiles of a normal distribution, with an exact 0), two codes to
// a byte, the first in the high four bits. And a linear layer over such a weight as bitsandbytes'
// MatMul4Bit computes it: an autograd function that keeps the codes, not the dequantized weight,
// for the backward pass and dequantizes again there, so a pass holds one weight whole at a time.
// With double quantization (QLoRA's, bitsandbytes' `compress_statistics`), the block scales are
// themselves held in 8 bits. Declared in run/model/nf4.rs.
#include "shim.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
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


// Scales of double quantization: blocks of 256 of them, less their mean, in 8 bits.
constexpr int64_t kBlock2 = 256;

// bitsandbytes' signed 8-bit dynamic code (functional.py, `create_dynamic_map()`), made with the
// same float32 operations: for each exponent 10^(i − 6), i < 7, the midpoints of 2^i + 1 points
// evenly from 0.1 to 1, times ±10^(i − 6); then 0 and 1. Sorted, lowest first.
at::Tensor dynamic_code() {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    int64_t items = (int64_t{1} << i) + 1;
    auto b = at::linspace(0.1, 1, items, at::kFloat);
    auto means = (b.narrow(0, 0, items - 1) + b.narrow(0, 1, items - 1)) / 2.0;
    double scale = std::pow(10.0, -6 + i);
    for (auto t : {means * scale, means * -scale}) {
      auto c = t.contiguous();
      data.insert(data.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return at::tensor(data);
}

// The values table a model's NF4 weights share (made once a model, on its device): byte b →
// (code[b >> 4], code[b & 15]) as 256 pairs, so dequantizing is one lookup a byte; then the
// dynamic code's 256 values, which double quantization's scale codes stand for (bitsandbytes
// too holds that map once).
at::Tensor values_table(const at::Device& d) {
  std::vector<float> t(512);
  for (int b = 0; b < 256; ++b) {
    t[2 * b] = kCode[b >> 4];
    t[2 * b + 1] = kCode[b & 15];
  }
  return at::cat({at::tensor(t), dynamic_code()}).to(d);
}

at::Tensor pairs_of(const at::Tensor& table) { return table.narrow(0, 0, 512).view({256, 2}); }
at::Tensor dynamic_of(const at::Tensor& table) { return table.narrow(0, 512, 256); }

// Each block's absolute maximum: `absmax` itself (float32; `nested` empty), or its 8-bit codes
// (uint8) read through the dynamic code and `nested` = [the mean taken off the scales, each block
// of 256 scales' absolute maximum], as bitsandbytes' `dequantize_blockwise` + offset reads them.
at::Tensor scales(const at::Tensor& absmax, const at::Tensor& nested, const at::Tensor& table) {
  if (nested.numel() == 0) return absmax;
  auto per = nested.narrow(0, 1, nested.numel() - 1).repeat_interleave(kBlock2).narrow(0, 0, absmax.numel());
  return dynamic_of(table).index_select(0, absmax.to(at::kInt)).mul_(per).add_(nested.narrow(0, 0, 1));
}

// The index of the nearest of the sorted `values` to each of `x`: the first midpoint at or above
// x (a tie rounds down, as bitsandbytes' comparisons do).
at::Tensor nearest(const at::Tensor& x, const at::Tensor& values) {
  int64_t k = values.numel() - 1;
  auto midpoints = (values.narrow(0, 1, k) + values.narrow(0, 0, k)) / 2;
  return at::bucketize(x, midpoints, /*out_int32=*/false, /*right=*/false);
}

// The weight of `n` elements the codes and scales hold, in `kind`: each code's value (`table`,
// `pairs` on the codes' device, made once a weight) times its block's absolute maximum, computed
// in float32 (as bitsandbytes' kernel does) and then cast.
at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& nested, const at::Tensor& table, int64_t n, at::ScalarType kind) {
  auto values = pairs_of(table).index_select(0, codes.to(at::kInt)).view({-1, kBlock});
  // (In place: one float32 copy of the weight at a time.)
  return values.mul_(scales(absmax, nested, table).unsqueeze(1)).view({-1}).narrow(0, 0, n).to(kind);
}

struct Nf4Linear : public torch::autograd::Function<Nf4Linear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& codes,
                            const at::Tensor& absmax, const at::Tensor& nested, const at::Tensor& table, int64_t out, int64_t in) {
    ctx->save_for_backward({codes, absmax, nested, table});
    ctx->saved_data["out"] = out;
    ctx->saved_data["in"] = in;
    return at::linear(x, dequantize(codes, absmax, nested, table, out * in, x.scalar_type()).view({out, in}));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    int64_t out = ctx->saved_data["out"].toInt(), in = ctx->saved_data["in"].toInt();
    auto w = dequantize(saved[0], saved[1], saved[2], saved[3], out * in, grads[0].scalar_type()).view({out, in});
    // The input's gradient only: the codes are frozen.
    return {grads[0].matmul(w), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// `nested` from the caller (null without double quantization), else an empty tensor (an
// undefined one cannot pass through an autograd function).
at::Tensor or_none(const at::Tensor* nested, const at::Tensor& like) {
  return nested ? *nested : at::empty({0}, like.options().dtype(at::kFloat));
}

}  // namespace

extern "C" {

// `w` (float32, any shape, finite) as NF4: *codes (uint8, one byte for two elements, the last
// block padded with zeros), *absmax (float32, one a block of 64) and *table (`values_table`, which
// the other functions read, on w's device). With `twice`, *absmax holds the scales' 8-bit codes
// and *nested what reads them with the table (`scales`); else *nested is left null.
char* roux_nf4_quantize(at::Tensor* w, bool twice, at::Tensor** codes, at::Tensor** absmax, at::Tensor** nested, at::Tensor** table) {
  return guarded([&] {
    auto flat = w->detach().to(at::kFloat).reshape({-1});
    int64_t n = flat.numel(), blocks = (n + kBlock - 1) / kBlock;
    auto padded = at::constant_pad_nd(flat, {0, blocks * kBlock - n}).view({blocks, kBlock});
    auto scale = padded.abs().amax(1);
    // (An all-zero block divides by 1: its codes are the exact 0.)
    auto scaled = padded / at::where(scale > 0, scale, at::ones_like(scale)).unsqueeze(1);
    auto index = nearest(scaled, code(flat.device())).view({-1, 2});
    auto packed = (index.select(1, 0) * 16 + index.select(1, 1)).to(at::kByte).contiguous();
    *codes = new at::Tensor(packed);
    auto values = values_table(flat.device());
    *table = new at::Tensor(values);
    if (!twice) {
      *absmax = new at::Tensor(scale.contiguous());
      return;
    }
    // bitsandbytes' `quantize_4bit(compress_statistics=True)`: the scales less their mean, in
    // blocks of 256 each scaled by its absolute maximum, to the nearest of the dynamic code.
    auto offset = scale.mean();
    int64_t groups = (blocks + kBlock2 - 1) / kBlock2;
    auto centred = at::constant_pad_nd(scale - offset, {0, groups * kBlock2 - blocks}).view({groups, kBlock2});
    auto top = centred.abs().amax(1);
    auto unit = centred / at::where(top > 0, top, at::ones_like(top)).unsqueeze(1);
    *absmax = new at::Tensor(nearest(unit, dynamic_of(values)).view({-1}).narrow(0, 0, blocks).to(at::kByte).contiguous());
    *nested = new at::Tensor(at::cat({offset.view({1}), top}));
  });
}

// The `n` elements `roux_nf4_quantize` encoded, float32 (a new flat tensor in *out).
char* roux_nf4_dequantize(at::Tensor* codes, at::Tensor* absmax, at::Tensor* nested, at::Tensor* table, int64_t n, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(dequantize(*codes, *absmax, or_none(nested, *absmax), *table, n, at::kFloat)); });
}

// Each block's absolute maximum, float32 (a new tensor in *out): what `absmax` and `nested`
// (null without double quantization) stand for.
char* roux_nf4_scales(at::Tensor* absmax, at::Tensor* nested, at::Tensor* table, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(scales(*absmax, or_none(nested, *absmax), *table).clone()); });
}

// The values table `roux_nf4_quantize` made (a new tensor in *out, on `device`'s device).
char* roux_nf4_table(at::Tensor* device, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(values_table(device->device())); });
}

// x · Wᵀ for W (out × in) held as NF4, in x's kind, differentiable in x (a new tensor in *y).
char* roux_nf4_linear(at::Tensor* x, at::Tensor* codes, at::Tensor* absmax, at::Tensor* nested, at::Tensor* table, int64_t out, int64_t in, at::Tensor** y) {
  return guarded([&] { *y = new at::Tensor(Nf4Linear::apply(*x, *codes, *absmax, or_none(nested, *absmax), *table, out, in)); });
}

}  // extern "C"
