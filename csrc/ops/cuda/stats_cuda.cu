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
//
// Also the Gram step of stats_update_ on CUDA (stats_gemm.hpp), registered for the CUDA device type:
// moment += block upper triangle of Y^T Y through cuBLAS (SGEMM / SSYRK / TF32 / TF32x3 per `precision`),
// folded into the float64 moment by a kernel of its own.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "stats_gemm.hpp"
#include "stats_layout.hpp"

namespace mudsc {
namespace ops {
namespace {

constexpr int kTile = 32;
constexpr int kRows = 8;

// One [kTile features x kTile samples] tile of one input piece (blockIdx.y: feature tile, blockIdx.x: sample
// tile): Y gets clean(x) - shift, partial[sample tile, f] the tile's fp64 sum of feature f, nonfinite the count.
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
      // Channel-last inputs (Bk == 1) skip the 64-bit division (the branch is uniform across the grid).
      const int64_t a = Bk == 1 ? l : l / Bk, b = l - a * Bk;
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

// big = y with its 13 low mantissa bits cleared (a TF32 value, so the tensor cores read it exactly);
// small = y - big is exact in float32 (it is those 13 bits).
__global__ void split_tf32_kernel(float* __restrict__ y, float* __restrict__ small, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = y[i];
    const float b = __uint_as_float(__float_as_uint(v) & 0xFFFFE000u);
    y[i] = b;
    small[i] = v - b;
  }
}

// Channel-last inputs read into a sample-major Y (the ViT case: x[l, c] with unit feature stride) need no
// transpose: thread c walks kTile consecutive samples of feature c, so every load and store of a warp is one
// contiguous run, and its fp64 partial sum is written like the tile kernel's (same order, same result).
constexpr int kRowThreads = 128;

template <typename T, typename O>
__global__ void prepare_rows_kernel(const T* __restrict__ base, int64_t C, int64_t sA, int64_t L, int64_t F,
                                    int64_t f0, const O* __restrict__ shift, O* __restrict__ Y,
                                    double* __restrict__ partial, unsigned long long* __restrict__ nonfinite) {
  __shared__ unsigned int bad_in_block;
  if (threadIdx.x == 0) bad_in_block = 0;
  __syncthreads();
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kRowThreads + threadIdx.x;
  const int64_t l_base = static_cast<int64_t>(blockIdx.x) * kTile;
  unsigned int bad = 0;
  if (c < C) {
    const O s = shift[f0 + c];
    const int64_t l_end = l_base + kTile < L ? l_base + kTile : L;
    double sum = 0.0;
#pragma unroll 8
    for (int64_t l = l_base; l < l_end; ++l) {
      O y = static_cast<O>(base[l * sA + c]);
      if (!isfinite(y)) {
        y = O(0);
        ++bad;
      }
      const O v = y - s;
      Y[l * F + f0 + c] = v;
      sum += static_cast<double>(v);
    }
    partial[static_cast<int64_t>(blockIdx.x) * F + f0 + c] = sum;
  }
  if (bad) atomicAdd(&bad_in_block, bad);
  __syncthreads();
  if (threadIdx.x == 0 && bad_in_block) atomicAdd(nonfinite, static_cast<unsigned long long>(bad_in_block));
}

// moment[g, i0 + c] += seg[off(b) + r * nj + c] for feature row g = i0 + r of block row b (i0 = b * bs,
// nj = F - i0), where block row b's product [ni, nj] starts at off(b) = sum_{b' < b} bs * (F - b' * bs).
// One CUDA block per row: reads and writes are contiguous runs.
__global__ void fold_block_rows_kernel(double* __restrict__ moment, const float* __restrict__ seg, int64_t F,
                                       int64_t bs) {
  const int64_t g = blockIdx.x;
  const int64_t b = g / bs, i0 = b * bs, r = g - i0, nj = F - i0;
  const int64_t off = bs * (b * F - bs * (b * (b - 1) / 2));
  const float* src = seg + off + r * nj;
  double* dst = moment + g * F + i0;
  for (int64_t c = threadIdx.x; c < nj; c += blockDim.x) dst[c] += static_cast<double>(src[c]);
}

// torch's cuBLAS handle for this stream in default math mode (no TF32 unless a compute type asks for it),
// put back in the mode torch left it in when the scope ends, also when a cuBLAS call throws.
class DefaultMathHandle {
 public:
  DefaultMathHandle() : handle_(at::cuda::getCurrentCUDABlasHandle()) {
    TORCH_CUDABLAS_CHECK(cublasGetMathMode(handle_, &previous_));
    TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
  }
  ~DefaultMathHandle() { cublasSetMathMode(handle_, previous_); }
  DefaultMathHandle(const DefaultMathHandle&) = delete;
  DefaultMathHandle& operator=(const DefaultMathHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  const at::NoTF32Guard no_tf32_;  // constructed first: getCurrentCUDABlasHandle then picks default math too
  cublasHandle_t handle_;
  cublasMath_t previous_ = CUBLAS_DEFAULT_MATH;
};

// The float64 fold of all block rows of one product at once: for block row b (features i0 = b * block_size
// on, ni = min(block_size, F - i0) rows, nj = F - i0 columns), moment[i0 + r, i0 + c] += its [ni, nj] product,
// stored row after row in seg (block row b from sum_{b' < b} ni' * nj'). moment: contiguous float64 [F, F].
void fold_block_rows_cuda(at::Tensor& moment, const at::Tensor& seg, int64_t block_size) {
  const int64_t F = moment.size(0);
  TORCH_CHECK(moment.is_cuda() && moment.scalar_type() == at::kDouble && moment.is_contiguous() &&
                  moment.dim() == 2 && moment.size(1) == F,
              "fold_block_rows_cuda: moment must be a contiguous float64 [F, F] CUDA tensor");
  TORCH_CHECK(seg.is_cuda() && seg.scalar_type() == at::kFloat && seg.is_contiguous() && block_size > 0,
              "fold_block_rows_cuda: expected contiguous float32 block-row products");
  if (F == 0) return;
  TORCH_CHECK(F <= 2147483647LL, "fold_block_rows_cuda: too many features for one launch: ", F);
  const c10::cuda::CUDAGuard guard(moment.device());
  fold_block_rows_kernel<<<static_cast<unsigned>(F), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      moment.mutable_data_ptr<double>(), seg.const_data_ptr<float>(), F, block_size);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// In place: Y <- big (Y truncated to TF32), small <- Y - big. Y, small: contiguous float32 CUDA, same shape.
void split_tf32_cuda(at::Tensor& Y, at::Tensor& small) {
  TORCH_CHECK(Y.is_cuda() && Y.scalar_type() == at::kFloat && Y.is_contiguous() && small.is_contiguous() &&
                  small.scalar_type() == at::kFloat && small.numel() == Y.numel() && small.device() == Y.device(),
              "split_tf32_cuda: expected two contiguous float32 CUDA tensors of one size");
  const c10::cuda::CUDAGuard guard(Y.device());
  const int64_t n = Y.numel();
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 4096);
  split_tf32_kernel<<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      Y.mutable_data_ptr<float>(), small.mutable_data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[r, c] = sum_{l in [l0, l0 + nl)} y[i0 + r, l] * y[i0 + c, l] for r < ni, c < nj (out: contiguous
// float32 [ni, nj] on Y's device), y the features of Y: feature-major Y [F, L] or sample-major Y [L, F],
// contiguous float32. For kTf32x3, Y holds the big part and small the rest (split_tf32_cuda).
//
// cuBLAS is column-major: a row-major [rows, cols] array is a column-major cols x rows one. With y_f the
// samples of feature f:
//   feature-major Y [F, L]: column-major X (L x F, ld L); out^T (nj x ni) = X_j^T X_i  (op T, op N)
//   sample-major  Y [L, F]: column-major Z (F x L, ld F); out^T (nj x ni) = Z_j Z_i^T  (op N, op T)
// where X_j / Z_j start at feature i0 and sample l0 and span nj features (X_i / Z_i: the first ni of them).
// The row-major out [ni, nj] is exactly the column-major out^T with ld nj.
void gram_block_cuda(at::Tensor& out, const at::Tensor& Y, const at::Tensor& small, bool feature_major, int64_t l0,
                     int64_t nl, int64_t i0, int64_t ni, int64_t nj, int64_t precision) {
  TORCH_CHECK(Y.is_cuda() && Y.scalar_type() == at::kFloat && Y.is_contiguous() && Y.dim() == 2,
              "gram_block_cuda: Y must be a contiguous float32 CUDA matrix");
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.numel() == ni * nj,
              "gram_block_cuda: out must be a contiguous float32 [", ni, ", ", nj, "] buffer");
  TORCH_CHECK(precision >= kIeee && precision <= kTf32x3, "gram_block_cuda: unknown precision ", precision);
  const bool x3 = precision == kTf32x3;
  TORCH_CHECK(!x3 || (small.defined() && small.sizes() == Y.sizes() && small.is_contiguous()),
              "gram_block_cuda: the TF32x3 product needs the small part of Y");
  const c10::cuda::CUDAGuard guard(Y.device());
  const int64_t F = feature_major ? Y.size(0) : Y.size(1);
  const int64_t L = feature_major ? Y.size(1) : Y.size(0);
  const int64_t ld = feature_major ? L : F;
  TORCH_CHECK(i0 >= 0 && ni >= 0 && nj >= ni && i0 + nj <= F && l0 >= 0 && nl >= 0 && l0 + nl <= L,
              "gram_block_cuda: block out of range");
  TORCH_CHECK(ld <= INT_MAX && nl <= INT_MAX && nj <= INT_MAX,
              "gram_block_cuda: a dimension exceeds cuBLAS's 32-bit sizes (features ", F, ", samples ", L, ")");
  if (ni == 0 || nj == 0) return;
  if (nl == 0) {
    out.zero_();
    return;
  }
  auto at_block = [&](const at::Tensor& t) {
    const float* p = t.const_data_ptr<float>();
    return feature_major ? p + i0 * L + l0 : p + l0 * F + i0;
  };
  const cublasOperation_t ta = feature_major ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = feature_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  // The compute type, not torch's global TF32 flags, decides.
  const DefaultMathHandle blas;
  cublasHandle_t handle = blas.get();
  const cublasComputeType_t compute = precision == kIeee ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
  const float one = 1.0f, zero = 0.0f;
  float* c = out.mutable_data_ptr<float>();
  auto gemm = [&](const float* a, const float* b, const float* beta) {
    TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, ta, tb, static_cast<int>(nj), static_cast<int>(ni), static_cast<int>(nl),
                                      &one, a, CUDA_R_32F, static_cast<int>(ld), b, CUDA_R_32F, static_cast<int>(ld),
                                      beta, c, CUDA_R_32F, static_cast<int>(nj), compute, CUBLAS_GEMM_DEFAULT));
  };
  const float* big = at_block(Y);
  if (x3) {
    const float* sm = at_block(small);
    gemm(sm, big, &zero);  // the two small cross terms first, then the big product on top
    gemm(big, sm, &one);
    gemm(big, big, &one);
  } else {
    gemm(big, big, &zero);
  }
}

// The whole upper triangle in one cuBLAS SSYRK (half the flops of a full product, no block rows). The row-major
// [F, F] out is the column-major out^T, so the row-major upper triangle is SYRK's lower one; the rest of out is
// left as it was. IEEE float32 only.
void gram_syrk_cuda(at::Tensor& out, const at::Tensor& Y, bool feature_major, int64_t l0, int64_t nl) {
  TORCH_CHECK(Y.is_cuda() && Y.scalar_type() == at::kFloat && Y.is_contiguous() && Y.dim() == 2,
              "gram_syrk_cuda: Y must be a contiguous float32 CUDA matrix");
  const int64_t F = feature_major ? Y.size(0) : Y.size(1);
  const int64_t L = feature_major ? Y.size(1) : Y.size(0);
  const int64_t ld = feature_major ? L : F;
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.numel() == F * F,
              "gram_syrk_cuda: out must be a contiguous float32 [", F, ", ", F, "] buffer");
  TORCH_CHECK(l0 >= 0 && nl >= 0 && l0 + nl <= L, "gram_syrk_cuda: samples out of range");
  TORCH_CHECK(ld <= INT_MAX && nl <= INT_MAX && F <= INT_MAX,
              "gram_syrk_cuda: a dimension exceeds cuBLAS's 32-bit sizes (features ", F, ", samples ", L, ")");
  if (F == 0 || nl == 0) return;
  const c10::cuda::CUDAGuard guard(Y.device());
  const float* a = Y.const_data_ptr<float>() + (feature_major ? l0 : l0 * F);
  const DefaultMathHandle blas;
  const float one = 1.0f, zero = 0.0f;
  TORCH_CUDABLAS_CHECK(cublasSsyrk(blas.get(), CUBLAS_FILL_MODE_LOWER, feature_major ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   static_cast<int>(F), static_cast<int>(nl), &one, a, static_cast<int>(ld), &zero,
                                   out.mutable_data_ptr<float>(), static_cast<int>(F)));
}

// The Gram step of stats_update_ on CUDA (contract in stats_gemm.hpp) for a contiguous float32 Y: cuBLAS with
// an explicit compute type (torch's global TF32 flags do not apply). Anything else (float64) returns false
// and goes through the generic at::mm_out step of stats.cpp.
bool gram_fold_cuda(at::Tensor& moment, at::Tensor& Y, bool fm, int64_t bs, int64_t fold, int64_t precision) {
  if (!(Y.is_cuda() && Y.scalar_type() == at::kFloat && Y.is_contiguous())) return false;
  const int64_t F = fm ? Y.size(0) : Y.size(1);
  const int64_t L = fm ? Y.size(1) : Y.size(0);
  at::Tensor small;
  if (precision == kTf32x3) {
    small = at::empty_like(Y);
    split_tf32_cuda(Y, small);
  }
  if (moment.is_contiguous() && precision == kIeee && bs >= F) {
    // One block in IEEE float32: SSYRK computes just the triangle. The buffer starts zeroed, so the entries
    // SSYRK leaves alone fold as zeros.
    at::Tensor seg = at::zeros({F * F}, Y.options());
    for (int64_t l0 = 0; l0 < L; l0 += fold) {
      gram_syrk_cuda(seg, Y, fm, l0, std::min(fold, L - l0));
      fold_block_rows_cuda(moment, seg, F);
    }
    return true;
  }
  if (moment.is_contiguous()) {
    // All block rows of a fold go into one buffer, row after row, and are folded by one kernel launch
    // (one add_ per block row costs a launch and a TensorIterator setup each).
    int64_t total = 0;
    for (int64_t i0 = 0; i0 < F; i0 += bs) total += std::min(bs, F - i0) * (F - i0);
    at::Tensor seg = at::empty({total}, Y.options());
    for (int64_t l0 = 0; l0 < L; l0 += fold) {
      const int64_t nl = std::min(fold, L - l0);
      int64_t off = 0;
      for (int64_t i0 = 0; i0 < F; i0 += bs) {
        const int64_t ni = std::min(bs, F - i0), nj = F - i0;
        at::Tensor product = seg.narrow(0, off, ni * nj).view({ni, nj});
        gram_block_cuda(product, Y, small, fm, l0, nl, i0, ni, nj, precision);
        off += ni * nj;
      }
      fold_block_rows_cuda(moment, seg, bs);
    }
    return true;
  }
  // A non-contiguous moment: one block row at a time through a reused buffer, folded by the device's add_.
  at::Tensor scratch = at::empty({bs * F}, Y.options());
  for (int64_t l0 = 0; l0 < L; l0 += fold) {
    const int64_t nl = std::min(fold, L - l0);
    for (int64_t i0 = 0; i0 < F; i0 += bs) {
      const int64_t ni = std::min(bs, F - i0), nj = F - i0;
      at::Tensor product = scratch.narrow(0, 0, ni * nj).view({ni, nj});
      gram_block_cuda(product, Y, small, fm, l0, nl, i0, ni, nj, precision);
      moment.narrow(0, i0, ni).narrow(1, i0, nj).add_(product);
    }
  }
  return true;
}

const GramFoldRegistrar kCudaGram(c10::DeviceType::CUDA, &gram_fold_cuda);

}  // namespace

// stats_prepare on CUDA tensors (contract in the header comment): (Y, float64 sums [F], int64 0-d count).
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
  // Every (sample tile, feature) entry is written by the kernel when there are samples: no zero fill then.
  at::Tensor partial = L > 0 ? at::empty({l_tiles, F}, s.options().dtype(at::kDouble))
                             : at::zeros({1, F}, s.options().dtype(at::kDouble));
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
      // Channel-last with unit feature stride into a sample-major Y: the plain row kernel.
      const bool rows = !feature_major && p.Bk == 1 && p.sC == 1;
      const dim3 row_grid(static_cast<unsigned>(l_tiles), static_cast<unsigned>((p.C + kRowThreads - 1) / kRowThreads));
      AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "stats_prepare_cuda", [&] {
        using O = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.view.scalar_type(), "stats_prepare_cuda_in", [&] {
          auto* count = reinterpret_cast<unsigned long long*>(nonfinite.mutable_data_ptr<int64_t>());
          if (rows) {
            prepare_rows_kernel<scalar_t, O><<<row_grid, kRowThreads, 0, stream>>>(
                p.view.const_data_ptr<scalar_t>(), p.C, p.sA, L, F, p.f0, s.const_data_ptr<O>(),
                Y.mutable_data_ptr<O>(), partial.mutable_data_ptr<double>(), count);
          } else {
            prepare_tile_kernel<scalar_t, O><<<grid, block, 0, stream>>>(
                p.view.const_data_ptr<scalar_t>(), p.C, p.Bk, p.sA, p.sC, p.sB, L, F, p.f0, along_samples,
                feature_major, s.const_data_ptr<O>(), Y.mutable_data_ptr<O>(), partial.mutable_data_ptr<double>(),
                count);
          }
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
