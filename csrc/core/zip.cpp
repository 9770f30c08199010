// Greedy zip; see zip.hpp for the semantics and the cost model.
#include "zip.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mudsc {
namespace zip {

int64_t target_width(int64_t num_units, double reduce) {
  return static_cast<int64_t>(std::floor(static_cast<double>(num_units) * (1.0 - reduce) + 1e-4));
}

namespace {

/// Folds per-lane (value, index) candidates into (best, arg): larger value, then smaller index.
template <typename T>
inline void fold_candidate(T value, int64_t index, T& best, int64_t& arg) {
  if (index >= 0 && (value > best || (value == best && arg >= 0 && index < arg))) {
    best = value;
    arg = index;
  }
}

/// First maximum of row[j] + mask[j] (mask: 0 alive, -inf dead) and its column;
/// arg = -1 when every entry is -inf.
template <typename T>
void row_argmax(const T* row, const T* mask, int64_t n, T* best_out, int64_t* arg_out) {
  T best = -std::numeric_limits<T>::infinity();
  int64_t arg = -1;
  int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (n >= 16 && n < (int64_t(1) << 31)) {
      __m256 b[2] = {_mm256_set1_ps(best), _mm256_set1_ps(best)};
      __m256i idx[2] = {_mm256_set1_epi32(-1), _mm256_set1_epi32(-1)};
      __m256i cols[2] = {_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)};
      const __m256i step = _mm256_set1_epi32(16);
      for (; j + 16 <= n; j += 16) {
        for (int w = 0; w < 2; ++w) {
          const __m256 v = _mm256_add_ps(_mm256_loadu_ps(row + j + 8 * w), _mm256_loadu_ps(mask + j + 8 * w));
          const __m256 gt = _mm256_cmp_ps(v, b[w], _CMP_GT_OQ);
          b[w] = _mm256_blendv_ps(b[w], v, gt);
          idx[w] = _mm256_castps_si256(
              _mm256_blendv_ps(_mm256_castsi256_ps(idx[w]), _mm256_castsi256_ps(cols[w]), gt));
          cols[w] = _mm256_add_epi32(cols[w], step);
        }
      }
      alignas(32) float bv[16];
      alignas(32) int32_t bi[16];
      _mm256_store_ps(bv, b[0]);
      _mm256_store_ps(bv + 8, b[1]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bi), idx[0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bi + 8), idx[1]);
      for (int l = 0; l < 16; ++l) fold_candidate<T>(bv[l], bi[l], best, arg);
    }
  } else {
    if (n >= 8) {
      __m256d b[2] = {_mm256_set1_pd(best), _mm256_set1_pd(best)};
      __m256i idx[2] = {_mm256_set1_epi64x(-1), _mm256_set1_epi64x(-1)};
      __m256i cols[2] = {_mm256_setr_epi64x(0, 1, 2, 3), _mm256_setr_epi64x(4, 5, 6, 7)};
      const __m256i step = _mm256_set1_epi64x(8);
      for (; j + 8 <= n; j += 8) {
        for (int w = 0; w < 2; ++w) {
          const __m256d v = _mm256_add_pd(_mm256_loadu_pd(row + j + 4 * w), _mm256_loadu_pd(mask + j + 4 * w));
          const __m256d gt = _mm256_cmp_pd(v, b[w], _CMP_GT_OQ);
          b[w] = _mm256_blendv_pd(b[w], v, gt);
          idx[w] = _mm256_castpd_si256(
              _mm256_blendv_pd(_mm256_castsi256_pd(idx[w]), _mm256_castsi256_pd(cols[w]), gt));
          cols[w] = _mm256_add_epi64(cols[w], step);
        }
      }
      alignas(32) double bv[8];
      alignas(32) int64_t bi[8];
      _mm256_store_pd(bv, b[0]);
      _mm256_store_pd(bv + 4, b[1]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bi), idx[0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bi + 4), idx[1]);
      for (int l = 0; l < 8; ++l) fold_candidate<T>(bv[l], bi[l], best, arg);
    }
  }
#endif
  for (; j < n; ++j) fold_candidate<T>(row[j] + mask[j], j, best, arg);
  *best_out = best;
  *arg_out = arg;
}

/// The O x O working copy. Each merge writes one column (a stride of O
/// elements: one page per row with 4 KiB pages), so the buffer asks for
/// transparent huge pages where the OS offers them (TLB misses otherwise
/// dominate large O).
template <typename T>
struct WorkMatrix {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T[], Free> data;
  explicit WorkMatrix(const T* src, int64_t n) {
    const size_t bytes = static_cast<size_t>(n) * static_cast<size_t>(n) * sizeof(T);
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, rounded == 0 ? kHuge : rounded);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);
#endif
    data.reset(static_cast<T*>(p));
    if (bytes) std::memcpy(data.get(), src, bytes);
  }
};

}  // namespace

template <typename T>
double zip_match(const T* sim, int64_t o, int64_t num_models, double reduce, double alpha, double beta,
                 int64_t* labels, int64_t* num_outputs) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t k_target = target_width(o, reduce);
  *num_outputs = k_target;
  if (o == 0) return 0.0;
  const int64_t om = o / num_models;
  const int64_t budget0 = static_cast<int64_t>(
      std::floor(std::floor(static_cast<double>(o - k_target) / static_cast<double>(num_models)) * beta + 1e-4));

  WorkMatrix<T> work(sim, o);
  T* s = work.data.get();
  for (int64_t i = 0; i < o; ++i) s[i * o + i] = neg_inf;
  std::vector<T> mask(o, T(0));
  std::vector<char> alive(o, 1);
  std::vector<int64_t> origin(o), budget(num_models, budget0);
  std::vector<int64_t> next(o, -1), tail(o);  // member lists of the clusters, by survivor
  std::vector<T> row_max(o);
  std::vector<int64_t> row_arg(o);
  for (int64_t u = 0; u < o; ++u) {
    origin[u] = u / om;
    tail[u] = u;
    row_argmax(&s[u * o], mask.data(), o, &row_max[u], &row_arg[u]);
  }
  const T a = static_cast<T>(alpha);

  double sum = 0.0;
  int64_t merges = 0;
  for (int64_t remaining = o; remaining > k_target; --remaining) {
    // The first maximiser in row-major order: the first row holding the largest
    // row maximum, at that row's first maximising column (symmetry puts it right
    // of the diagonal).
    T best = neg_inf;
    int64_t lo = -1;
    for (int64_t i = 0; i < o; ++i) {
      if (alive[i] && row_max[i] > best) {
        best = row_max[i];
        lo = i;
      }
    }
    if (lo < 0) {
      throw ZipError("zip_match: after " + std::to_string(merges) +
                     " merges every remaining pair of units is forbidden (-inf); cannot reduce " +
                     std::to_string(o) + " units to " + std::to_string(k_target));
    }
    const int64_t hi = row_arg[lo];
    sum += static_cast<double>(best);
    ++merges;
    next[tail[lo]] = hi;  // append hi's members to lo's
    tail[lo] = tail[hi];

    // Survivor row: alpha * min of the two rows (symmetric, so also its column).
    T* rlo = &s[lo * o];
    const T* rhi = &s[hi * o];
    if (alpha > 0) {
      for (int64_t j = 0; j < o; ++j) rlo[j] = a * std::min(rlo[j], rhi[j]);
    } else {
      std::fill(rlo, rlo + o, neg_inf);
    }
    rlo[lo] = neg_inf;
    alive[hi] = 0;
    mask[hi] = neg_inf;

    // Survivor column and the cached maxima of the other rows.
    constexpr int64_t kAhead = 24;  // rows; the column writes miss every cache level at large O
    for (int64_t j = 0; j < o; ++j) {
      if (j + kAhead < o) __builtin_prefetch(&s[(j + kAhead) * o + lo], 1);
      if (!alive[j] || j == lo) continue;
      const T v = rlo[j];
      s[j * o + lo] = v;
      const int64_t arg = row_arg[j];
      if (v > row_max[j] || (v == row_max[j] && lo <= arg)) {
        row_max[j] = v;
        row_arg[j] = lo;
      } else if (arg == lo || arg == hi) {
        // The old maximum sat on a merged unit and nothing beat it: rescan.
        row_argmax(&s[j * o], mask.data(), o, &row_max[j], &row_arg[j]);
      }
    }
    row_argmax(rlo, mask.data(), o, &row_max[lo], &row_arg[lo]);

    if (origin[lo] == origin[hi]) {
      const int64_t m = origin[lo];
      if (--budget[m] <= 0) {
        // Forbid every pair among model m's survivors and rescan their rows.
        for (int64_t p = 0; p < o; ++p) {
          if (!alive[p] || origin[p] != m) continue;
          for (int64_t q = 0; q < o; ++q) {
            if (alive[q] && origin[q] == m) s[p * o + q] = neg_inf;
          }
        }
        for (int64_t p = 0; p < o; ++p) {
          if (alive[p] && origin[p] == m) row_argmax(&s[p * o], mask.data(), o, &row_max[p], &row_arg[p]);
        }
      }
    }
  }

  int64_t k = 0;
  for (int64_t u = 0; u < o; ++u) {
    if (!alive[u]) continue;
    for (int64_t member = u; member >= 0; member = next[member]) labels[member] = k;
    ++k;
  }
  return merges ? sum / static_cast<double>(merges) : 0.0;
}

template <typename T>
SimilarityCheck check_similarity(const T* s, int64_t o) {
  SimilarityCheck c;
  constexpr int64_t kTile = 32;
  for (int64_t i0 = 0; i0 < o; i0 += kTile) {
    const int64_t i1 = std::min(o, i0 + kTile);
    for (int64_t j0 = i0; j0 < o; j0 += kTile) {  // tiles on and above the diagonal, each with its mirror
      const int64_t j1 = std::min(o, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = (j0 == i0 ? i : j0); j < j1; ++j) {
          const T a = s[i * o + j], b = s[j * o + i];
          if (a != a || b != b) {
            c.has_nan = true;
            continue;
          }
          const bool fa = std::isfinite(a), fb = std::isfinite(b);
          if ((!fa && a > 0) || (!fb && b > 0)) c.has_pos_inf = true;
          if (fa != fb) c.infinity_asymmetric = true;
          if (fa && fb) {
            c.max_asymmetry = std::max(c.max_asymmetry, std::fabs(static_cast<double>(a) - static_cast<double>(b)));
            c.max_abs = std::max(c.max_abs, std::fabs(static_cast<double>(a)));
            c.max_abs = std::max(c.max_abs, std::fabs(static_cast<double>(b)));
          }
        }
      }
    }
  }
  return c;
}

template SimilarityCheck check_similarity<float>(const float*, int64_t);
template SimilarityCheck check_similarity<double>(const double*, int64_t);
template double zip_match<float>(const float*, int64_t, int64_t, double, double, double, int64_t*, int64_t*);
template double zip_match<double>(const double*, int64_t, int64_t, double, double, double, int64_t*, int64_t*);

}  // namespace zip
}  // namespace mudsc
