// CPU kernel of mudsc::stats_prepare (layout in stats_layout.hpp):
//
//   y[f, l] = (finite(x) ? x : 0) - shift[f]        (cast to shift's dtype first)
//   Y = y as [F, L] (feature_major) or [L, F];  sums[f] = sum_l y[f, l] in float64;
//   nonfinite = number of NaN/+-Inf inputs (they were zeroed, as the original's nan_to_num).
//
// Every input is read once, in its own strides; rows of the output are written
// contiguously. feature_major parallelises over features (each sum is then one
// sequential fp64 loop); sample-major parallelises over fixed chunks of 256
// samples and adds the per-chunk fp64 partial sums in chunk order, so the
// result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "stats_layout.hpp"

namespace mudsc {
namespace ops {
namespace {

constexpr int64_t kSampleChunk = 256;

#if defined(__AVX512F__)
// The float32 -> float32 contiguous run with AVX-512 (the common case: float32 activations and weights): the
// finite test on the exponent bits, 16 values per step, fp64 sums in 16 lanes. GCC does not vectorise the
// portable loop below (the fp64 lanes and the finite test), so without this path the run stays scalar.
// Returns the fp64 sum of what it wrote; the tail goes through the portable loop.
inline double copy_run_avx512(const float* src, int64_t n, float* dst, float s, int64_t* nonfinite, int64_t* done) {
  const __m512 vs = _mm512_set1_ps(s);
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t j = 0, bad = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 y = _mm512_loadu_ps(src + j);
    const __mmask16 inf = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(y), expo), expo);
    bad += __builtin_popcount(static_cast<unsigned>(inf));
    y = _mm512_mask_mov_ps(y, inf, _mm512_setzero_ps());
    const __m512 v = _mm512_sub_ps(y, vs);
    _mm512_storeu_ps(dst + j, v);
    // maskz forms: the plain ones start from _mm*_undefined_*, which GCC 12 reports as maybe-uninitialized
    const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0));
    const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1));
    a0 = _mm512_add_pd(a0, _mm512_maskz_cvtps_pd(0xFF, lo));
    a1 = _mm512_add_pd(a1, _mm512_maskz_cvtps_pd(0xFF, hi));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(a0, a1));
  *nonfinite += bad;
  *done = j;
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

#if defined(__AVX512VL__)
// One sample's C contiguous float32 features into a float32 row: dst[c] = clean(src[c]) - s[c], acc[c] += dst[c]
// (fp64), 8 features per step; returns how many were done (the caller finishes the tail).
inline int64_t copy_row_avx512(const float* src, int64_t C, float* dst, const float* s, double* acc, int64_t* nonfinite) {
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  int64_t c = 0, bad = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 y = _mm256_loadu_ps(src + c);
    const __mmask8 inf = _mm256_cmpeq_epi32_mask(_mm256_and_si256(_mm256_castps_si256(y), expo), expo);
    bad += __builtin_popcount(static_cast<unsigned>(inf));
    y = _mm256_mask_mov_ps(y, inf, _mm256_setzero_ps());
    const __m256 v = _mm256_sub_ps(y, _mm256_loadu_ps(s + c));
    _mm256_storeu_ps(dst + c, v);
    _mm512_storeu_pd(acc + c, _mm512_add_pd(_mm512_loadu_pd(acc + c), _mm512_maskz_cvtps_pd(0xFF, v)));
  }
  *nonfinite += bad;
  return c;
}
#endif  // __AVX512VL__
#endif  // __AVX512F__

// One run of n values: dst[j * dst_stride] = clean(src[j * src_stride]) - s; returns the fp64 sum of what it wrote.
// The contiguous case keeps 8 independent partial sums so the loop vectorises under strict IEEE rules.
template <typename T, typename O>
inline double copy_run(const T* src, int64_t src_stride, int64_t n, O* dst, O s, int64_t* nonfinite) {
  int64_t bad = 0;
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && std::is_same_v<O, float>) {
    if (src_stride == 1) {
      lanes[0] = copy_run_avx512(src, n, dst, s, nonfinite, &j);
    }
  }
#endif
  if (src_stride == 1) {
    for (; j + 8 <= n; j += 8) {
      for (int q = 0; q < 8; ++q) {
        const O y = static_cast<O>(src[j + q]);
        const bool ok = std::isfinite(y);
        bad += !ok;
        const O v = (ok ? y : O(0)) - s;
        dst[j + q] = v;
        lanes[q] += static_cast<double>(v);
      }
    }
  }
  for (; j < n; ++j) {
    const O y = static_cast<O>(src[j * src_stride]);
    const bool ok = std::isfinite(y);
    bad += !ok;
    const O v = (ok ? y : O(0)) - s;
    dst[j] = v;
    lanes[0] += static_cast<double>(v);
  }
  *nonfinite += bad;
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// One sample's C features of one piece into a sample-major row; acc[c] += the written value (fp64).
template <typename T, typename O>
inline void copy_row(const T* src, int64_t src_stride, int64_t C, O* dst, const O* s, double* acc, int64_t* nonfinite) {
  int64_t bad = 0;
  if (src_stride == 1) {
    int64_t c = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    if constexpr (std::is_same_v<T, float> && std::is_same_v<O, float>) {
      c = copy_row_avx512(src, C, dst, s, acc, nonfinite);
    }
#endif
    for (; c < C; ++c) {
      const O y = static_cast<O>(src[c]);
      const bool ok = std::isfinite(y);
      bad += !ok;
      const O v = (ok ? y : O(0)) - s[c];
      dst[c] = v;
      acc[c] += static_cast<double>(v);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const O y = static_cast<O>(src[c * src_stride]);
      const bool ok = std::isfinite(y);
      bad += !ok;
      const O v = (ok ? y : O(0)) - s[c];
      dst[c] = v;
      acc[c] += static_cast<double>(v);
    }
  }
  *nonfinite += bad;
}

// Y [F, L] (row f: feature f's samples, written as contiguous runs) and sums[f], parallel over each piece's
// features; every sum is one sequential fp64 loop over its samples.
template <typename O>
void prepare_feature_major(const std::vector<StatsPiece>& pieces, const O* shift, int64_t F, int64_t L, O* Y,
                           double* sums, std::atomic<int64_t>& nonfinite) {
  for (const StatsPiece& p : pieces) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.view.scalar_type(), "stats_prepare_cpu", [&] {
      const scalar_t* base = p.view.const_data_ptr<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(L, 1));
      at::parallel_for(0, p.C, grain, [&](int64_t c0, int64_t c1) {
        int64_t bad = 0;
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t f = p.f0 + c;
          double sum = 0.0;
          for (int64_t a = 0; a < p.A; ++a) {
            sum += copy_run<scalar_t, O>(base + a * p.sA + c * p.sC, p.sB, p.Bk, Y + f * L + a * p.Bk, shift[f], &bad);
          }
          sums[f] = sum;
        }
        nonfinite += bad;
      });
    });
  }
  (void)F;
}

// Y [L, F] (row l: sample l's features of every piece) and sums, parallel over chunks of kSampleChunk samples;
// the per-chunk fp64 partial sums are added in chunk order, so the sums do not depend on the thread count.
template <typename O>
void prepare_sample_major(const std::vector<StatsPiece>& pieces, const O* shift, int64_t F, int64_t L, O* Y,
                          double* sums, std::atomic<int64_t>& nonfinite) {
  const int64_t chunks = (L + kSampleChunk - 1) / kSampleChunk;
  std::vector<double> partial(static_cast<size_t>(chunks * F), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    int64_t bad = 0;
    for (int64_t k = k0; k < k1; ++k) {
      double* part = partial.data() + k * F;
      const int64_t l1 = std::min(L, (k + 1) * kSampleChunk);
      for (const StatsPiece& p : pieces) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.view.scalar_type(), "stats_prepare_cpu", [&] {
          const scalar_t* base = p.view.const_data_ptr<scalar_t>();
          for (int64_t l = k * kSampleChunk; l < l1; ++l) {
            const int64_t a = l / p.Bk, b = l % p.Bk;
            copy_row<scalar_t, O>(base + a * p.sA + b * p.sB, p.sC, p.C, Y + l * F + p.f0, shift + p.f0,
                                  part + p.f0, &bad);
          }
        });
      }
    }
    nonfinite += bad;
  });
  for (int64_t f = 0; f < F; ++f) sums[f] = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    const double* part = partial.data() + k * F;
    for (int64_t f = 0; f < F; ++f) sums[f] += part[f];
  }
}

}  // namespace

// stats_prepare on CPU tensors (contract in the header comment): (Y in shift's dtype, float64 sums [F],
// int64 0-d count of NaN/Inf inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_prepare_cpu(at::TensorList xs, at::IntArrayRef channel_dims,
                                                                  const at::Tensor& shift, bool feature_major) {
  TORCH_CHECK(shift.device().is_cpu(), "stats_prepare_cpu: expected CPU tensors, got ", shift.device());
  int64_t L = 0;
  const std::vector<StatsPiece> pieces = stats_pieces(xs, channel_dims, shift, &L);
  const int64_t F = shift.size(0);
  const at::Tensor s = shift.contiguous();
  at::Tensor Y = feature_major ? at::empty({F, L}, s.options()) : at::empty({L, F}, s.options());
  at::Tensor sums = at::empty({F}, s.options().dtype(at::kDouble));
  std::atomic<int64_t> nonfinite{0};
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "stats_prepare_cpu", [&] {
    if (feature_major) {
      prepare_feature_major<scalar_t>(pieces, s.const_data_ptr<scalar_t>(), F, L, Y.mutable_data_ptr<scalar_t>(),
                                      sums.mutable_data_ptr<double>(), nonfinite);
    } else {
      prepare_sample_major<scalar_t>(pieces, s.const_data_ptr<scalar_t>(), F, L, Y.mutable_data_ptr<scalar_t>(),
                                     sums.mutable_data_ptr<double>(), nonfinite);
    }
  });
  at::Tensor count = at::scalar_tensor(static_cast<int64_t>(nonfinite.load()), s.options().dtype(at::kLong));
  return {Y, sums, count};
}

// mudsc::axis_segment_sum on the CPU: out[a, k, b] = scale[k] * sum_{j : labels[j] == k} t[a, j, b] with t
// viewed as [A, m, B] around `axis`. Rows j are added in ascending order and scaled after the sum, exactly as
// zeros + index_add_ + mul_ would, but in place along any axis: no transposed copy of t.
at::Tensor axis_segment_sum_cpu(const at::Tensor& t, int64_t axis, const at::Tensor& labels, int64_t size,
                                const std::optional<at::Tensor>& scale) {
  TORCH_CHECK(t.dim() >= 1, "axis_segment_sum: expected a tensor with at least one dimension");
  const int64_t ax = axis < 0 ? axis + t.dim() : axis;
  TORCH_CHECK(ax >= 0 && ax < t.dim(), "axis_segment_sum: axis ", axis, " is out of range for shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "axis_segment_sum: expected float32 or float64, got ", t.scalar_type());
  const int64_t m = t.size(ax);
  TORCH_CHECK(labels.dim() == 1 && labels.numel() == m && labels.scalar_type() == at::kLong,
              "axis_segment_sum: labels must be int64 [", m, "], got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(size >= 0, "axis_segment_sum: size must be non-negative");
  const at::Tensor x = t.contiguous();
  const at::Tensor lab = labels.contiguous();
  const int64_t* lp = lab.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < m; ++j) {
    TORCH_CHECK(lp[j] >= 0 && lp[j] < size, "axis_segment_sum: label ", lp[j], " at ", j, " is outside [0, ", size,
                ")");
  }
  int64_t A = 1, B = 1;
  for (int64_t d = 0; d < ax; ++d) A *= x.size(d);
  for (int64_t d = ax + 1; d < x.dim(); ++d) B *= x.size(d);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[ax] = size;
  at::Tensor out = at::zeros(shape, x.options());
  at::Tensor sc;
  if (scale.has_value() && scale->defined()) {
    TORCH_CHECK(scale->dim() == 1 && scale->numel() == size, "axis_segment_sum: scale must be [", size, "], got ",
                scale->sizes());
    sc = scale->to(x.scalar_type()).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "axis_segment_sum", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t* sp = sc.defined() ? sc.const_data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(m * B, 1));
    at::parallel_for(0, A, grain, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const scalar_t* s_a = src + a * m * B;
        scalar_t* d_a = dst + a * size * B;
        for (int64_t j = 0; j < m; ++j) {
          const scalar_t* row = s_a + j * B;
          scalar_t* acc = d_a + lp[j] * B;
          for (int64_t b = 0; b < B; ++b) acc[b] += row[b];
        }
        if (sp != nullptr) {
          for (int64_t k = 0; k < size; ++k) {
            scalar_t* acc = d_a + k * B;
            for (int64_t b = 0; b < B; ++b) acc[b] *= sp[k];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY_IMPL(mudsc, CPU, m) {
  m.impl("stats_prepare", &mudsc::ops::stats_prepare_cpu);
  m.impl("axis_segment_sum", &mudsc::ops::axis_segment_sum_cpu);
}
