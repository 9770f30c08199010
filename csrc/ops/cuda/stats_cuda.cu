// CUDA kernel of mudsc::stats_prepare (same contract as cpu/stats_cpu.cpp, layout in stats_layout.hpp):
//
//   y[f, l] = (finite(x) ? x : 0) - shift[f];  Y = [F, L] (feature_major) or [L, F];
//   sums[f] = sum_l y[f, l] (float64);  nonfinite = count of NaN/Inf inputs.
//
// One 32 (features) x 32 (samples) tile per block through shared memory, so the
// read is coalesced along the input's contiguous axis and the write along Y's
// (a transpose costs nothing extra). Each tile writes its 32 fp64 column sums
// to partial[sample tile, f]; they are reduced over tiles with a plain sum
// (fixed order, no floating-point atomics: the result is deterministic). The
// count of non-finite values uses integer atomics (exact).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

#include "stats_layout.hpp"

namespace mudsc {
namespace ops {
namespace {

constexpr int kTile = 32;
constexpr int kRows = 8;

template <typename T, typename O>
__global__ void prepare_tile_kernel(const T* __restrict__ base, int64_t C, int64_t Bk, int64_t sA, int64_t sC,
                                    int64_t sB, int64_t L, int64_t F, int64_t f0, bool read_along_samples,
                                    bool feature_major, const O* __restrict__ shift, O* __restrict__ Y,
                                    double* __restrict__ partial, unsigned long long* __restrict__ nonfinite) {
  __shared__ O tile[kTile][kTile + 1];  // [feature][sample]
  __shared__ unsigned int bad_in_block;
  if (threadIdx.x == 0 && threadIdx.y == 0) bad_in_block = 0;
  __syncthreads();
  const int64_t l_base = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t c_base = static_cast<int64_t>(blockIdx.y) * kTile;
  unsigned int bad = 0;
  for (int k = threadIdx.y; k < kTile; k += kRows) {
    const int cl = read_along_samples ? k : threadIdx.x;
    const int ll = read_along_samples ? threadIdx.x : k;
    const int64_t c = c_base + cl, l = l_base + ll;
    O v = O(0);
    if (c < C && l < L) {
      const int64_t a = l / Bk, b = l - a * Bk;
      O y = static_cast<O>(base[a * sA + c * sC + b * sB]);
      if (!isfinite(y)) {
        y = O(0);
        ++bad;
      }
      v = y - shift[f0 + c];
    }
    tile[cl][ll] = v;
  }
  if (bad) atomicAdd(&bad_in_block, bad);
  __syncthreads();
  for (int k = threadIdx.y; k < kTile; k += kRows) {
    const int cl = feature_major ? k : threadIdx.x;
    const int ll = feature_major ? threadIdx.x : k;
    const int64_t c = c_base + cl, l = l_base + ll;
    if (c < C && l < L) {
      if (feature_major) {
        Y[(f0 + c) * L + l] = tile[cl][ll];
      } else {
        Y[l * F + f0 + c] = tile[cl][ll];
      }
    }
  }
  if (threadIdx.y == 0) {
    const int64_t c = c_base + threadIdx.x;
    if (c < C) {
      double s = 0.0;
      for (int j = 0; j < kTile; ++j) s += static_cast<double>(tile[threadIdx.x][j]);
      partial[static_cast<int64_t>(blockIdx.x) * F + f0 + c] = s;
    }
    if (threadIdx.x == 0 && bad_in_block) atomicAdd(nonfinite, static_cast<unsigned long long>(bad_in_block));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_prepare_cuda(at::TensorList xs, at::IntArrayRef channel_dims,
                                                                   const at::Tensor& shift, bool feature_major) {
  TORCH_CHECK(shift.is_cuda(), "stats_prepare_cuda: expected CUDA tensors, got ", shift.device());
  const c10::cuda::CUDAGuard guard(shift.device());
  int64_t L = 0;
  const std::vector<StatsPiece> pieces = stats_pieces(xs, channel_dims, shift, &L);
  const int64_t F = shift.size(0);
  const at::Tensor s = shift.contiguous();
  at::Tensor Y = feature_major ? at::empty({F, L}, s.options()) : at::empty({L, F}, s.options());
  const int64_t l_tiles = (L + kTile - 1) / kTile;
  at::Tensor partial = at::zeros({std::max<int64_t>(l_tiles, 1), F}, s.options().dtype(at::kDouble));
  // int64 storage, incremented as unsigned long long (same width; counts never reach 2^63).
  at::Tensor nonfinite = at::zeros({}, s.options().dtype(at::kLong));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (L > 0) {
    for (const StatsPiece& p : pieces) {
      if (p.C == 0) continue;
      const int64_t c_tiles = (p.C + kTile - 1) / kTile;
      TORCH_CHECK(c_tiles <= 65535 && l_tiles <= 2147483647LL, "stats_prepare_cuda: input with ", p.C,
                  " features and ", L, " samples exceeds the launch grid");
      const dim3 grid(static_cast<unsigned>(l_tiles), static_cast<unsigned>(c_tiles));
      const dim3 block(kTile, kRows);
      // Read along samples when they are the input's contiguous axis (channel-first layouts).
      const bool along_samples = p.sB == 1 && p.Bk > 1;
      AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "stats_prepare_cuda", [&] {
        using O = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.view.scalar_type(), "stats_prepare_cuda_in", [&] {
          prepare_tile_kernel<scalar_t, O><<<grid, block, 0, stream>>>(
              p.view.const_data_ptr<scalar_t>(), p.C, p.Bk, p.sA, p.sC, p.sB, L, F, p.f0, along_samples,
              feature_major, s.const_data_ptr<O>(), Y.mutable_data_ptr<O>(), partial.mutable_data_ptr<double>(),
              reinterpret_cast<unsigned long long*>(nonfinite.mutable_data_ptr<int64_t>()));
        });
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  at::Tensor sums = at::sum(partial, 0);
  return {Y, sums, nonfinite};
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY_IMPL(mudsc, CUDA, m) { m.impl("stats_prepare", &mudsc::ops::stats_prepare_cuda); }
