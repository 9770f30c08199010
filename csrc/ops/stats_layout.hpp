// How mudsc::stats_prepare reads its inputs: every input x_k holds C_k features
// along its channel dimension c_k; every other axis enumerates samples, in
// row-major order. x_k is viewed, without a copy whenever torch can (reshape),
// as a strided 3-D array [A, C, Bk] with A = prod(sizes before c_k) and
// Bk = prod(sizes after c_k), so sample l = a * Bk + b. All inputs must
// enumerate the same L = A * Bk samples; their features are concatenated in
// argument order (model-major), feature f = f0_k + c.
//
// Shared by the CPU and CUDA kernels (no heavy headers here).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace mudsc {
namespace ops {

struct StatsPiece {
  at::Tensor view;  // [A, C, Bk], strided, the caller's storage (or a reshape copy)
  int64_t A = 0, C = 0, Bk = 0;
  int64_t sA = 0, sC = 0, sB = 0;  // element strides of the view
  int64_t f0 = 0;                  // first feature of this piece in the concatenation
};

inline bool stats_input_dtype_ok(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Validates the inputs against shift ([F], float32/float64) and returns their [A, C, Bk] views.
inline std::vector<StatsPiece> stats_pieces(at::TensorList xs, at::IntArrayRef channel_dims, const at::Tensor& shift,
                                            int64_t* num_samples) {
  TORCH_CHECK(!xs.empty(), "stats_prepare: expected at least one input tensor");
  TORCH_CHECK(static_cast<int64_t>(xs.size()) == static_cast<int64_t>(channel_dims.size()),
              "stats_prepare: got ", xs.size(), " inputs but ", channel_dims.size(), " channel dims");
  TORCH_CHECK(shift.dim() == 1, "stats_prepare: shift must be [features], got ", shift.sizes());
  TORCH_CHECK(shift.scalar_type() == at::kFloat || shift.scalar_type() == at::kDouble,
              "stats_prepare: shift must be float32 or float64, got ", shift.scalar_type());
  std::vector<StatsPiece> pieces;
  pieces.reserve(xs.size());
  int64_t f0 = 0, L = -1;
  for (size_t k = 0; k < xs.size(); ++k) {
    const at::Tensor& x = xs[k];
    TORCH_CHECK(x.device() == shift.device(), "stats_prepare: input ", k, " is on ", x.device(),
                " but the accumulator is on ", shift.device());
    TORCH_CHECK(stats_input_dtype_ok(x.scalar_type()), "stats_prepare: input ", k,
                " must be a floating tensor (float16/bfloat16/float32/float64), got ", x.scalar_type());
    TORCH_CHECK(x.dim() >= 1, "stats_prepare: input ", k, " must have a channel dimension, got a 0-d tensor");
    const int64_t c = channel_dims[k] < 0 ? channel_dims[k] + x.dim() : channel_dims[k];
    TORCH_CHECK(c >= 0 && c < x.dim(), "stats_prepare: channel dim ", channel_dims[k], " is out of range for input ",
                k, " of shape ", x.sizes());
    StatsPiece p;
    p.A = 1;
    p.Bk = 1;
    for (int64_t d = 0; d < c; ++d) p.A *= x.size(d);
    for (int64_t d = c + 1; d < x.dim(); ++d) p.Bk *= x.size(d);
    p.C = x.size(c);
    p.view = x.reshape({p.A, p.C, p.Bk});
    p.sA = p.view.stride(0);
    p.sC = p.view.stride(1);
    p.sB = p.view.stride(2);
    p.f0 = f0;
    f0 += p.C;
    const int64_t Lk = p.A * p.Bk;
    TORCH_CHECK(L < 0 || Lk == L, "stats_prepare: input ", k, " of shape ", x.sizes(), " has ", Lk,
                " samples along its non-channel axes, input 0 has ", L);
    L = Lk;
    pieces.push_back(std::move(p));
  }
  TORCH_CHECK(f0 == shift.size(0), "stats_prepare: the inputs have ", f0, " features in all, the accumulator has ",
              shift.size(0));
  *num_samples = L;
  return pieces;
}

}  // namespace ops
}  // namespace mudsc
