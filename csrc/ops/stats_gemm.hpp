// The block products of mudsc::stats_update_ on CUDA, behind cuBLAS with an explicit precision
// (csrc/ops/cuda/stats_cuda.cu). Declared here so the device-generic stats.cpp can call them without
// CUDA headers; only compiled in when MUDSC_WITH_CUDA is defined.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mudsc {
namespace ops {

// How the float32 products of the CUDA path are formed (the CPU path always runs IEEE sgemm):
//   kIeee    float32 FMA (cuBLAS SGEMM, no tensor cores, whatever torch's TF32 flags say);
//   kTf32    one TF32 tensor-core product (10-bit mantissa inputs: ~1e-3 relative error per product);
//   kTf32x3  Y = big + small with big = Y truncated to TF32 and small = Y - big (exact); the product is
//            small·bigᵀ + big·smallᵀ + big·bigᵀ on tensor cores (the dropped small·smallᵀ is <= 2^-20 of
//            |y_i y_j|): float32-class accuracy at tensor-core speed.
enum GramPrecision : int64_t { kIeee = 0, kTf32 = 1, kTf32x3 = 2 };

#if defined(MUDSC_WITH_CUDA)
// In place: Y <- big (Y truncated to TF32), small <- Y - big. Y, small: contiguous float32 CUDA, same shape.
void split_tf32_cuda(at::Tensor& Y, at::Tensor& small);

// out[r, c] = sum_{l in [l0, l0 + nl)} y[i0 + r, l] * y[i0 + c, l] for r < ni, c < nj (out: contiguous
// float32 [ni, nj] on Y's device), y the features of Y: feature-major Y [F, L] or sample-major Y [L, F],
// contiguous float32. For kTf32x3, Y holds the big part and small the rest (split_tf32_cuda).
// The float64 fold of all block rows of one product at once: for block row b (features i0 = b * block_size
// on, ni = min(block_size, F - i0) rows, nj = F - i0 columns), moment[i0 + r, i0 + c] += its [ni, nj] product,
// stored row after row in seg (block row b from sum_{b' < b} ni' * nj'). moment: contiguous float64 [F, F].
void fold_block_rows_cuda(at::Tensor& moment, const at::Tensor& seg, int64_t block_size);

// IEEE float32, one block: out (contiguous float32 [F, F]) gets the upper triangle of sum_l y y^T over samples
// [l0, l0 + nl) from one cuBLAS SSYRK; entries below the diagonal are not written.
void gram_syrk_cuda(at::Tensor& out, const at::Tensor& Y, bool feature_major, int64_t l0, int64_t nl);

void gram_block_cuda(at::Tensor& out, const at::Tensor& Y, const at::Tensor& small, bool feature_major, int64_t l0,
                     int64_t nl, int64_t i0, int64_t ni, int64_t nj, int64_t precision);
#endif

}  // namespace ops
}  // namespace mudsc
