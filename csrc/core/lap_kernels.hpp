// Row kernels of the Jonker-Volgenant solver: the loops that touch a whole
// matrix row. Each reads C'[i, j] = sign * C[i, j] widened to double, with
// sign = -1 when maximising (applied in registers, never to the matrix).
//
//   scan_columns_min   column minima v[j] = min_i C'[i, j] and their argmin row
//                      (one row per call), plus NaN / -inf / +inf flags.
//   two_smallest       smallest and second-smallest reduced cost C'[i, j] - v[j]
//                      of one row, with their columns.
//   relax_row          one Dijkstra step: dist[j] = min(dist[j], C'[i, j] - v[j] - u),
//                      pred[j] = i where it improved, and the smallest distance over
//                      all columns and over unassigned columns (free_mask[j] == 0).
//
// Each kernel has a portable scalar form and an AVX2 form (4 doubles a step),
// chosen at compile time. Ties resolve to the smallest column index in both.
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

/// Bit flags of non-finite values met while scanning.
enum ValueFlags : unsigned { kHasNan = 1u, kHasNegInf = 2u, kHasPosInf = 4u };

template <bool Maximize, typename T>
inline double signed_cost(T value) {
  return Maximize ? -static_cast<double>(value) : static_cast<double>(value);
}

struct TwoSmallest {
  double first;
  int64_t first_col;
  double second;
  int64_t second_col;
};

struct RelaxResult {
  double min_all;
  int64_t col_all;
  double min_free;
  int64_t col_free;
};

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
#endif

/// v[j] = min(v[j], C'[i, j]); row_of_min[j] = i where strictly smaller. Returns ValueFlags.
template <bool Maximize, typename T>
inline unsigned scan_columns_min(const T* row, int64_t m, int64_t i, double* v, int64_t* row_of_min) {
  int64_t j = 0;
  unsigned flags = 0;
#if defined(__AVX2__)
  const __m256d neg_inf = _mm256_set1_pd(-kInf), pos_inf = _mm256_set1_pd(kInf);
  const __m256i vi = _mm256_set1_epi64x(i);
  __m256d nan_acc = _mm256_setzero_pd(), neg_acc = nan_acc, pos_acc = nan_acc;
  for (; j + 4 <= m; j += 4) {
    const __m256d c = apply_sign<Maximize>(load4(row + j));
    nan_acc = _mm256_or_pd(nan_acc, _mm256_cmp_pd(c, c, _CMP_UNORD_Q));
    neg_acc = _mm256_or_pd(neg_acc, _mm256_cmp_pd(c, neg_inf, _CMP_EQ_OQ));
    pos_acc = _mm256_or_pd(pos_acc, _mm256_cmp_pd(c, pos_inf, _CMP_EQ_OQ));
    const __m256d vj = _mm256_loadu_pd(v + j);
    const __m256d lt = _mm256_cmp_pd(c, vj, _CMP_LT_OQ);
    _mm256_storeu_pd(v + j, select(lt, vj, c));
    _mm256_maskstore_epi64(reinterpret_cast<long long*>(row_of_min + j), _mm256_castpd_si256(lt), vi);
  }
  if (_mm256_movemask_pd(nan_acc)) flags |= kHasNan;
  if (_mm256_movemask_pd(neg_acc)) flags |= kHasNegInf;
  if (_mm256_movemask_pd(pos_acc)) flags |= kHasPosInf;
#endif
  for (; j < m; ++j) {
    const double c = signed_cost<Maximize>(row[j]);
    if (c != c) flags |= kHasNan;
    if (c == -kInf) flags |= kHasNegInf;
    if (c == kInf) flags |= kHasPosInf;
    if (c < v[j]) {
      v[j] = c;
      row_of_min[j] = i;
    }
  }
  return flags;
}

/// Smallest and second smallest of C'[i, j] - v[j] over j, with their columns
/// (second_col = -1 and second = +inf when m == 1). Optionally ORs ValueFlags of
/// the row into *flags (checks cost a few instructions; used on first reads only).
template <bool Maximize, bool CheckValues, typename T>
inline TwoSmallest two_smallest(const T* row, const double* v, int64_t m, unsigned* flags) {
  TwoSmallest r{kInf, -1, kInf, -1};
  int64_t j = 0;
#if defined(__AVX2__)
  if (m >= 8) {
    __m256d m1 = _mm256_set1_pd(kInf), m2 = m1;
    __m256i i1 = _mm256_set1_epi64x(-1), i2 = i1;
    __m256i jv = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i four = _mm256_set1_epi64x(4);
    const __m256d neg_inf = _mm256_set1_pd(-kInf), pos_inf = _mm256_set1_pd(kInf);
    __m256d nan_acc = _mm256_setzero_pd(), neg_acc = nan_acc, pos_acc = nan_acc;
    for (; j + 4 <= m; j += 4) {
      const __m256d c = apply_sign<Maximize>(load4(row + j));
      if (CheckValues) {
        nan_acc = _mm256_or_pd(nan_acc, _mm256_cmp_pd(c, c, _CMP_UNORD_Q));
        neg_acc = _mm256_or_pd(neg_acc, _mm256_cmp_pd(c, neg_inf, _CMP_EQ_OQ));
        pos_acc = _mm256_or_pd(pos_acc, _mm256_cmp_pd(c, pos_inf, _CMP_EQ_OQ));
      }
      const __m256d h = _mm256_sub_pd(c, _mm256_loadu_pd(v + j));
      const __m256d lt1 = _mm256_cmp_pd(h, m1, _CMP_LT_OQ);
      const __m256d lt2 = _mm256_cmp_pd(h, m2, _CMP_LT_OQ);
      // second := lt1 ? old first : (lt2 ? h : second)
      __m256d n2 = select(lt2, m2, h);
      __m256i n2i = select_i(lt2, i2, jv);
      m2 = select(lt1, n2, m1);
      i2 = select_i(lt1, n2i, i1);
      m1 = select(lt1, m1, h);
      i1 = select_i(lt1, i1, jv);
      jv = _mm256_add_epi64(jv, four);
    }
    if (CheckValues) {
      if (_mm256_movemask_pd(nan_acc)) *flags |= kHasNan;
      if (_mm256_movemask_pd(neg_acc)) *flags |= kHasNegInf;
      if (_mm256_movemask_pd(pos_acc)) *flags |= kHasPosInf;
    }
    alignas(32) double a1[4], a2[4];
    alignas(32) int64_t b1[4], b2[4];
    _mm256_store_pd(a1, m1);
    _mm256_store_pd(a2, m2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(b1), i1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(b2), i2);
    for (int l = 0; l < 4; ++l) {
      for (int which = 0; which < 2; ++which) {
        const double val = which ? a2[l] : a1[l];
        const int64_t col = which ? b2[l] : b1[l];
        if (col < 0) continue;
        if (better(val, col, r.first, r.first_col)) {
          r.second = r.first;
          r.second_col = r.first_col;
          r.first = val;
          r.first_col = col;
        } else if (better(val, col, r.second, r.second_col)) {
          r.second = val;
          r.second_col = col;
        }
      }
    }
  }
#endif
  for (; j < m; ++j) {
    const double c = signed_cost<Maximize>(row[j]);
    if (CheckValues) {
      if (c != c) *flags |= kHasNan;
      if (c == -kInf) *flags |= kHasNegInf;
      if (c == kInf) *flags |= kHasPosInf;
    }
    const double h = c - v[j];
    if (better(h, j, r.first, r.first_col)) {
      r.second = r.first;
      r.second_col = r.first_col;
      r.first = h;
      r.first_col = j;
    } else if (better(h, j, r.second, r.second_col)) {
      r.second = h;
      r.second_col = j;
    }
  }
  return r;
}

/// One Dijkstra step from row i with row offset u (see file header). Columns
/// already scanned carry v[j] = -inf and dist[j] = +inf, so they never improve
/// and never win the minimum.
template <bool Maximize, typename T>
inline RelaxResult relax_row(const T* row, const double* v, double u, double* dist, int64_t* pred,
                             const double* free_mask, int64_t i, int64_t m) {
  RelaxResult r{kInf, -1, kInf, -1};
  int64_t j = 0;
#if defined(__AVX2__)
  if (m >= 8) {
    const __m256d vu = _mm256_set1_pd(u);
    const __m256i vi = _mm256_set1_epi64x(i);
    __m256d best_all = _mm256_set1_pd(kInf), best_free = best_all;
    __m256i idx_all = _mm256_set1_epi64x(-1), idx_free = idx_all;
    __m256i jv = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i four = _mm256_set1_epi64x(4);
    for (; j + 4 <= m; j += 4) {
      const __m256d c = apply_sign<Maximize>(load4(row + j));
      const __m256d h = _mm256_sub_pd(_mm256_sub_pd(c, _mm256_loadu_pd(v + j)), vu);
      __m256d dj = _mm256_loadu_pd(dist + j);
      const __m256d lt = _mm256_cmp_pd(h, dj, _CMP_LT_OQ);
      dj = select(lt, dj, h);
      _mm256_storeu_pd(dist + j, dj);
      _mm256_maskstore_epi64(reinterpret_cast<long long*>(pred + j), _mm256_castpd_si256(lt), vi);
      const __m256d ba = _mm256_cmp_pd(dj, best_all, _CMP_LT_OQ);
      best_all = select(ba, best_all, dj);
      idx_all = select_i(ba, idx_all, jv);
      const __m256d df = _mm256_add_pd(dj, _mm256_loadu_pd(free_mask + j));
      const __m256d bf = _mm256_cmp_pd(df, best_free, _CMP_LT_OQ);
      best_free = select(bf, best_free, df);
      idx_free = select_i(bf, idx_free, jv);
      jv = _mm256_add_epi64(jv, four);
    }
    alignas(32) double a[4], f[4];
    alignas(32) int64_t ia[4], jf[4];
    _mm256_store_pd(a, best_all);
    _mm256_store_pd(f, best_free);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ia), idx_all);
    _mm256_store_si256(reinterpret_cast<__m256i*>(jf), idx_free);
    for (int l = 0; l < 4; ++l) {
      if (ia[l] >= 0 && better(a[l], ia[l], r.min_all, r.col_all)) {
        r.min_all = a[l];
        r.col_all = ia[l];
      }
      if (jf[l] >= 0 && better(f[l], jf[l], r.min_free, r.col_free)) {
        r.min_free = f[l];
        r.col_free = jf[l];
      }
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
    const double df = dj + free_mask[j];
    if (better(df, j, r.min_free, r.col_free)) {
      r.min_free = df;
      r.col_free = j;
    }
  }
  return r;
}

}  // namespace kernels
}  // namespace lap
}  // namespace mudsc
