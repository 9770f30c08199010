// The Gram step of mudsc::stats_update_ and how a device twin plugs its own GEMM into it.
//
// For one prepared chunk Y (feature-major [F, L] or sample-major [L, F], contiguous, float32 or float64) the
// step adds to the float64 moment [F, F], on the block upper triangle only,
//
//   moment[i0 + r, i0 + c] += sum_{l in fold} y[i0 + r, l] * y[i0 + c, l]     (block rows i0 = 0, bs, 2 bs, ..)
//
// one fold of at most `fold` samples at a time (stats.cpp has the device-generic form: at::mm_out per block
// row). A device whose library offers a better product (cuBLAS with an explicit compute type on CUDA) fills
// in a GramFoldFn for its device type from a static initializer in its twin (cuda/stats_cuda.cu), and
// stats.cpp calls it without naming the device or needing any #if: a build without that twin simply has no
// entry. The registry is written during the library's static initialization only and read afterwards.
#pragma once

#include <c10/core/DeviceType.h>

#include <cstdint>

namespace at {
class Tensor;
}  // namespace at

namespace mudsc {
namespace ops {

// How the float32 products of the CUDA path are formed (the CPU path always runs IEEE sgemm):
//   kIeee    float32 FMA (cuBLAS SGEMM, no tensor cores, whatever torch's TF32 flags say);
//   kTf32    one TF32 tensor-core product (10-bit mantissa inputs: ~1e-3 relative error per product);
//   kTf32x3  Y = big + small with big = Y truncated to TF32 and small = Y - big (exact); the product is
//            small·bigᵀ + big·smallᵀ + big·bigᵀ on tensor cores (the dropped small·smallᵀ is <= 2^-20 of
//            |y_i y_j|): float32-class accuracy at tensor-core speed.
enum GramPrecision : int64_t { kIeee = 0, kTf32 = 1, kTf32x3 = 2 };

// A device's Gram step for one prepared chunk Y (contract above; F >= 1 and L >= 1 features and samples,
// block_size in [1, F], fold >= 1). It may overwrite Y (e.g. split it in place). Returns false, having
// changed nothing, when it does not handle these inputs (dtype, layout); the generic step then runs.
using GramFoldFn = bool (*)(at::Tensor& moment, at::Tensor& Y, bool feature_major, int64_t block_size, int64_t fold,
                            int64_t precision);

// Installs the Gram step of a device type (called from a static initializer of the device's twin file).
void register_gram_fold(c10::DeviceType device, GramFoldFn fn);

// The Gram step registered for a device type, or nullptr (the generic step is then the only one).
GramFoldFn gram_fold_for(c10::DeviceType device);

// Registers fn for a device type when a namespace-scope object of this type is constructed.
struct GramFoldRegistrar {
  GramFoldRegistrar(c10::DeviceType device, GramFoldFn fn) { register_gram_fold(device, fn); }
};

}  // namespace ops
}  // namespace mudsc
