// Row kernels of the Jonker-Volgenant solver: the loops that touch a whole
// matrix row. Each reads C'[i, j] = sign * C[i, j] widened to double, with
// sign = -1 when maximising (applied in registers, never to the matrix).
//
//   scan_columns_min   column minima v[j] = min_i C'[i, j] and their argmin row
//                      (one row per call), plus the row sum as a NaN witness.
//   row_min            smallest reduced cost C'[i, j] - v[j] of R rows and their columns,
//                      plus a NaN witness (the sum of the row is NaN iff the row holds a
//                      NaN or both infinities).
//   two_smallest       smallest and second-smallest reduced cost C'[i, j] - v[j]
//                      of one row, with their columns.
//   relax_row          one Dijkstra step: dist[j] = min(dist[j], C'[i, j] - v[j] - u),
//                      pred[j] = i where it improved, and the smallest distance over
//                      all columns (and optionally over unassigned columns, those
//                      with free_mask[j] == 0).
//
// Each kernel has a portable scalar form and an AVX2 form (4 doubles a step,
// several independent accumulators), chosen at compile time. Ties resolve to the
// smallest column index in both. Loads are unaligned; no masked stores.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mudsc {
namespace lap {
namespace kernels {

constexpr double kInf = std::numeric_limits<double>::infinity();

/// Bit flags of the invalid values of a row (see lap.cpp row_flags).
enum ValueFlags : unsigned { kHasNan = 1u, kHasNegInf = 2u };

template <bool Maximize, typename T>
inline double signed_cost(T value) {
  return Maximize ? -static_cast<double>(value) : static_cast<double>(value);
}

/// Ordering used to merge SIMD lanes: value first, then smaller column.
inline bool better(double value, int64_t col, double best_value, int64_t best_col) {
  return value < best_value || (value == best_value && col >= 0 && (best_col < 0 || col < best_col));
}

#if defined(__AVX2__)
template <typename T>
inline __m256d load4(const T* p);
template <>
inline __m256d load4<double>(const double* p) {
  return _mm256_loadu_pd(p);
}
template <>
inline __m256d load4<float>(const float* p) {
  return _mm256_cvtps_pd(_mm_loadu_ps(p));
}
template <bool Maximize>
inline __m256d apply_sign(__m256d x) {
  if (Maximize) return _mm256_xor_pd(x, _mm256_set1_pd(-0.0));
  return x;
}
inline __m256d select(__m256d mask, __m256d if_false, __m256d if_true) {
  return _mm256_blendv_pd(if_false, if_true, mask);
}
inline __m256i select_i(__m256d mask, __m256i if_false, __m256i if_true) {
  return _mm256_castpd_si256(
      _mm256_blendv_pd(_mm256_castsi256_pd(if_false), _mm256_castsi256_pd(if_true), mask));
}

// The kernels unroll over several independent accumulators: a single running
// minimum would chain compare + blend latencies through every iteration.

/// Per-lane running minimum and its column.
struct ArgMin4 {
  __m256d val = _mm256_set1_pd(kInf);
  __m256i idx = _mm256_set1_epi64x(-1);
  void update(__m256d h, __m256i cols) {
    const __m256d lt = _mm256_cmp_pd(h, val, _CMP_LT_OQ);
    val = select(lt, val, h);
    idx = select_i(lt, idx, cols);
  }
  /// Lane-wise: keep the better of (this, other) by value, then smaller column.
  /// Lanes never updated hold (+inf, -1) and lose to any recorded entry.
  void combine(const ArgMin4& other) {
    const __m256d lt = _mm256_cmp_pd(other.val, val, _CMP_LT_OQ);
    const __m256d eq = _mm256_cmp_pd(other.val, val, _CMP_EQ_OQ);
    const __m256d smaller_col = _mm256_castsi256_pd(_mm256_cmpgt_epi64(idx, other.idx));
    const __m256d take = _mm256_or_pd(lt, _mm256_and_pd(eq, smaller_col));
    val = select(take, val, other.val);
    idx = select_i(take, idx, other.idx);
  }
  /// Folds the lanes into (best, col) with the value-then-column order.
  void merge_into(double& best, int64_t& col) const {
    ArgMin4 t = *this, s;
    s.val = _mm256_permute4x64_pd(t.val, 0x4E);  // swap 128-bit halves
    s.idx = _mm256_permute4x64_epi64(t.idx, 0x4E);
    t.combine(s);
    s.val = _mm256_permute4x64_pd(t.val, 0xB1);  // swap neighbours
    s.idx = _mm256_permute4x64_epi64(t.idx, 0xB1);
    t.combine(s);
    const double v = _mm256_cvtsd_f64(t.val);
    const int64_t c = _mm256_extract_epi64(t.idx, 0);
    if (c >= 0 && better(v, c, best, col)) {
      best = v;
      col = c;
    }
  }
};

/// Lane-wise "a before b": smaller value, then smaller column (never-updated
/// lanes hold (+inf, -1); recorded entries are always finite).
inline __m256d lane_before(__m256d a_val, __m256i a_idx, __m256d b_val, __m256i b_idx) {
  const __m256d lt = _mm256_cmp_pd(a_val, b_val, _CMP_LT_OQ);
  const __m256d eq = _mm256_cmp_pd(a_val, b_val, _CMP_EQ_OQ);
  return _mm256_or_pd(lt, _mm256_and_pd(eq, _mm256_castsi256_pd(_mm256_cmpgt_epi64(b_idx, a_idx))));
}

/// Per-lane smallest and second smallest, with columns.
struct TwoMin4 {
  __m256d m1 = _mm256_set1_pd(kInf), m2 = _mm256_set1_pd(kInf);
  __m256i i1 = _mm256_set1_epi64x(-1), i2 = _mm256_set1_epi64x(-1);
  void update(__m256d h, __m256i cols) {
    const __m256d lt1 = _mm256_cmp_pd(h, m1, _CMP_LT_OQ);
    const __m256d lt2 = _mm256_cmp_pd(h, m2, _CMP_LT_OQ);
    // second := lt1 ? old first : (lt2 ? h : second)
    const __m256d n2 = select(lt2, m2, h);
    const __m256i n2i = select_i(lt2, i2, cols);
    m2 = select(lt1, n2, m1);
    i2 = select_i(lt1, n2i, i1);
    m1 = select(lt1, m1, h);
    i1 = select_i(lt1, i1, cols);
  }
  /// Lane-wise union of two (first, second) pairs over disjoint columns.
  void combine(const TwoMin4& o) {
    const __m256d other_first = lane_before(o.m1, o.i1, m1, i1);
    // The runner-up is the better of the losing first and the winner's second.
    const __m256d c1 = select(other_first, o.m1, m1);
    const __m256i c1i = select_i(other_first, o.i1, i1);
    const __m256d c2 = select(other_first, m2, o.m2);
    const __m256i c2i = select_i(other_first, i2, o.i2);
    const __m256d second_is_c2 = lane_before(c2, c2i, c1, c1i);
    m1 = select(other_first, m1, o.m1);
    i1 = select_i(other_first, i1, o.i1);
    m2 = select(second_is_c2, c1, c2);
    i2 = select_i(second_is_c2, c1i, c2i);
  }
  /// Folds the lanes into r.
  void merge_into(struct TwoSmallest& r) const;
};

/// p[l] = value[l] where mask[l]. A load-blend-store: masked stores (vpmaskmovq)
/// are microcoded and several times slower on some x86 cores.
inline void store_where(int64_t* p, __m256d mask, __m256i value) {
  __m256i* q = reinterpret_cast<__m256i*>(p);
  _mm256_storeu_si256(q, select_i(mask, _mm256_loadu_si256(q), value));
}

inline double horizontal_sum(__m256d x) {
  alignas(32) double s[4];
  _mm256_store_pd(s, x);
  return (s[0] + s[1]) + (s[2] + s[3]);
}
#endif

/// v[j] = min(v[j], C'[i, j]); row_of_min[j] = i where strictly smaller. Returns the
/// sum of the row: NaN iff the row holds a NaN or both infinities (or overflowed).
template <bool Maximize, typename T>
inline double scan_columns_min(const T* row, int64_t m, int64_t i, double* v, int64_t* row_of_min) {
  int64_t j = 0;
  double sum = 0.0;
#if defined(__AVX2__)
  const __m256i vi = _mm256_set1_epi64x(i);
  __m256d sum0 = _mm256_setzero_pd(), sum1 = sum0;
  auto step = [&](int64_t k, __m256d& acc) {
    const __m256d c = apply_sign<Maximize>(load4(row + k));
    acc = _mm256_add_pd(acc, c);
    const __m256d vk = _mm256_loadu_pd(v + k);
    const __m256d lt = _mm256_cmp_pd(c, vk, _CMP_LT_OQ);
    _mm256_storeu_pd(v + k, select(lt, vk, c));
    store_where(row_of_min + k, lt, vi);
  };
  for (; j + 8 <= m; j += 8) {
    step(j, sum0);
    step(j + 4, sum1);
  }
  for (; j + 4 <= m; j += 4) step(j, sum0);
  sum = horizontal_sum(_mm256_add_pd(sum0, sum1));
#endif
  for (; j < m; ++j) {
    const double c = signed_cost<Maximize>(row[j]);
    sum += c;
    if (c < v[j]) {
      v[j] = c;
      row_of_min[j] = i;
    }
  }
  return sum;
}

struct RowMin {
  double value;
  int64_t col;
  bool nan_witness;  // the row holds a NaN, or both +inf and -inf (or its sum overflowed)
};

/// For each of R rows: smallest C'[r, j] - v[j] over j and its first column; see
/// RowMin. The rows share every load of v, which (not the matrix) bounds the
/// single-row loop on float32 input.
template <bool Maximize, int R, typename T>
inline void row_min(const T* const* rows, const double* v, int64_t m, RowMin* out) {
  double best[R], sum[R];
  int64_t col[R];
  for (int r = 0; r < R; ++r) {
    best[r] = kInf;
    sum[r] = 0.0;
    col[r] = -1;
  }
  int64_t j = 0;
#if defined(__AVX2__)
  if (m >= 8) {
    constexpr int W = R >= 4 ? 1 : (R >= 2 ? 2 : 4);  // independent accumulators per row
    ArgMin4 a[R][W];
    __m256d sums[R][W];
    __m256i jv[W];
    for (int w = 0; w < W; ++w) {
      jv[w] = _mm256_setr_epi64x(4 * w, 4 * w + 1, 4 * w + 2, 4 * w + 3);
      for (int r = 0; r < R; ++r) sums[r][w] = _mm256_setzero_pd();
    }
    const __m256i step = _mm256_set1_epi64x(4 * W);
    for (; j + 4 * W <= m; j += 4 * W) {
      for (int w = 0; w < W; ++w) {
        const __m256d vk = _mm256_loadu_pd(v + j + 4 * w);
        for (int r = 0; r < R; ++r) {
          const __m256d c = apply_sign<Maximize>(load4(rows[r] + j + 4 * w));
          sums[r][w] = _mm256_add_pd(sums[r][w], c);
          a[r][w].update(_mm256_sub_pd(c, vk), jv[w]);
        }
        jv[w] = _mm256_add_epi64(jv[w], step);
      }
    }
    for (int r = 0; r < R; ++r) {
      __m256d total = sums[r][0];
      for (int w = 1; w < W; ++w) total = _mm256_add_pd(total, sums[r][w]);
      sum[r] = horizontal_sum(total);
      for (int w = 1; w < W; ++w) a[r][0].combine(a[r][w]);
      a[r][0].merge_into(best[r], col[r]);
    }
  }
#endif
  for (; j < m; ++j) {
    for (int r = 0; r < R; ++r) {
      const double c = signed_cost<Maximize>(rows[r][j]);
      sum[r] += c;
      const double h = c - v[j];
      if (better(h, j, best[r], col[r])) {
        best[r] = h;
        col[r] = j;
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = RowMin{best[r], col[r], sum[r] != sum[r]};
}

struct TwoSmallest {
  double first;
  int64_t first_col;
  double second;
  int64_t second_col;
  void offer(double value, int64_t col) {
    if (col < 0) return;
    if (better(value, col, first, first_col)) {
      second = first;
      second_col = first_col;
      first = value;
      first_col = col;
    } else if (better(value, col, second, second_col)) {
      second = value;
      second_col = col;
    }
  }
};

#if defined(__AVX2__)
inline void TwoMin4::merge_into(TwoSmallest& r) const {
  TwoMin4 t = *this, s;
  s.m1 = _mm256_permute4x64_pd(t.m1, 0x4E);
  s.m2 = _mm256_permute4x64_pd(t.m2, 0x4E);
  s.i1 = _mm256_permute4x64_epi64(t.i1, 0x4E);
  s.i2 = _mm256_permute4x64_epi64(t.i2, 0x4E);
  t.combine(s);
  s.m1 = _mm256_permute4x64_pd(t.m1, 0xB1);
  s.m2 = _mm256_permute4x64_pd(t.m2, 0xB1);
  s.i1 = _mm256_permute4x64_epi64(t.i1, 0xB1);
  s.i2 = _mm256_permute4x64_epi64(t.i2, 0xB1);
  t.combine(s);
  r.offer(_mm256_cvtsd_f64(t.m1), _mm256_extract_epi64(t.i1, 0));
  r.offer(_mm256_cvtsd_f64(t.m2), _mm256_extract_epi64(t.i2, 0));
}
#endif

/// Smallest and second smallest of C'[i, j] - v[j] over j, with their columns
/// (second_col = -1 and second = +inf when m == 1).
template <bool Maximize, typename T>
inline TwoSmallest two_smallest(const T* row, const double* v, int64_t m) {
  TwoSmallest r{kInf, -1, kInf, -1};
  int64_t j = 0;
#if defined(__AVX2__)
  if (m >= 8) {
    TwoMin4 t[2];
    __m256i jv[2] = {_mm256_setr_epi64x(0, 1, 2, 3), _mm256_setr_epi64x(4, 5, 6, 7)};
    const __m256i eight = _mm256_set1_epi64x(8);
    for (; j + 8 <= m; j += 8) {
      for (int u = 0; u < 2; ++u) {
        const __m256d c = apply_sign<Maximize>(load4(row + j + 4 * u));
        t[u].update(_mm256_sub_pd(c, _mm256_loadu_pd(v + j + 4 * u)), jv[u]);
        jv[u] = _mm256_add_epi64(jv[u], eight);
      }
    }
    t[0].combine(t[1]);
    t[0].merge_into(r);
  }
#endif
  for (; j < m; ++j) r.offer(signed_cost<Maximize>(row[j]) - v[j], j);
  return r;
}

struct RelaxResult {
  double min_all;
  int64_t col_all;
  double min_free;
  int64_t col_free;
};

/// One Dijkstra step from row i with row offset u (see file header). Columns
/// already scanned carry v[j] = -inf and dist[j] = +inf, so they never improve
/// and never win the minimum. Without FreeMask, free_mask is not read and
/// min_free/col_free stay (+inf, -1): the caller checks its free columns itself.
template <bool Maximize, bool FreeMask, typename T>
inline RelaxResult relax_row(const T* row, const double* v, double u, double* dist, int64_t* pred,
                             const double* free_mask, int64_t i, int64_t m) {
  RelaxResult r{kInf, -1, kInf, -1};
  int64_t j = 0;
#if defined(__AVX2__)
  if (m >= 8) {
    const __m256d vu = _mm256_set1_pd(u);
    const __m256i vi = _mm256_set1_epi64x(i);
    ArgMin4 all[2], fre[2];
    __m256i jv[2] = {_mm256_setr_epi64x(0, 1, 2, 3), _mm256_setr_epi64x(4, 5, 6, 7)};
    const __m256i eight = _mm256_set1_epi64x(8);
    for (; j + 8 <= m; j += 8) {
      for (int w = 0; w < 2; ++w) {
        const int64_t k = j + 4 * w;
        const __m256d c = apply_sign<Maximize>(load4(row + k));
        const __m256d h = _mm256_sub_pd(_mm256_sub_pd(c, _mm256_loadu_pd(v + k)), vu);
        __m256d dk = _mm256_loadu_pd(dist + k);
        const __m256d lt = _mm256_cmp_pd(h, dk, _CMP_LT_OQ);
        dk = select(lt, dk, h);
        _mm256_storeu_pd(dist + k, dk);
        store_where(pred + k, lt, vi);
        all[w].update(dk, jv[w]);
        if (FreeMask) fre[w].update(_mm256_add_pd(dk, _mm256_loadu_pd(free_mask + k)), jv[w]);
        jv[w] = _mm256_add_epi64(jv[w], eight);
      }
    }
    all[0].combine(all[1]);
    all[0].merge_into(r.min_all, r.col_all);
    if (FreeMask) {
      fre[0].combine(fre[1]);
      fre[0].merge_into(r.min_free, r.col_free);
    }
  }
#endif
  for (; j < m; ++j) {
    const double h = signed_cost<Maximize>(row[j]) - v[j] - u;
    double dj = dist[j];
    if (h < dj) {
      dj = h;
      dist[j] = h;
      pred[j] = i;
    }
    if (better(dj, j, r.min_all, r.col_all)) {
      r.min_all = dj;
      r.col_all = j;
    }
    if (FreeMask) {
      const double df = dj + free_mask[j];
      if (better(df, j, r.min_free, r.col_free)) {
        r.min_free = df;
        r.col_free = j;
      }
    }
  }
  return r;
}

}  // namespace kernels
}  // namespace lap
}  // namespace mudsc
