// Greedy zip; see zip.hpp for the semantics and the cost model.
#include "zip.hpp"

#include "group_lap.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
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


/// The greedy merge loop over one working matrix s[n x n] (diagonal -inf),
/// shared by the zip and by each head-set of the group zip. Units carry a model
/// label (origin) and optionally a group label; a survivor keeps the labels of
/// its lower-index member. Budgets are shared arrays indexed by label.
template <typename T>
class ZipEngine {
 public:
  ZipEngine(T* s, int64_t n, double alpha, Decay decay, int64_t num_models, std::vector<int64_t> origin,
            std::vector<int64_t> group, int64_t* model_budget, int64_t* group_budget)
      : s_(s), n_(n), alpha_(alpha), a_(static_cast<T>(alpha)),
        // With two models every merge involving a cluster repeats a model, so both rules coincide.
        decay_all_(decay == Decay::kEveryMerge || num_models <= 2), num_models_(num_models), mask_(n, T(0)),
        alive_(n, 1), origin_(std::move(origin)), group_(std::move(group)), next_(n, -1), tail_(n), row_max_(n),
        row_arg_(n), model_budget_(model_budget), group_budget_(group_budget) {
    for (int64_t u = 0; u < n; ++u) {
      tail_[u] = u;
      rescan(u);
    }
    if (!decay_all_) {
      counts_.assign(static_cast<size_t>(n * num_models), 0);
      repeats_.assign(static_cast<size_t>(n), 0);
      for (int64_t u = 0; u < n; ++u) counts_[u * num_models + origin_[u]] = 1;
    }
  }

  /// Merges the best pair; false (nothing changed) when every pair is forbidden.
  bool step() {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    // The first maximiser in row-major order: the first row holding the largest
    // row maximum, at that row's first maximising column (symmetry puts it right
    // of the diagonal).
    T best = neg_inf;
    int64_t lo = -1;
    for (int64_t i = 0; i < n_; ++i) {
      if (alive_[i] && row_max_[i] > best) {
        best = row_max_[i];
        lo = i;
      }
    }
    if (lo < 0) return false;
    const int64_t hi = row_arg_[lo];
    sum_ += static_cast<double>(best);
    ++merges_;
    next_[tail_[lo]] = hi;  // append hi's members to lo's
    tail_[lo] = tail_[hi];

    // Survivor row: alpha * min of the two rows (symmetric, so also its column).
    T* rlo = &s_[lo * n_];
    const T* rhi = &s_[hi * n_];
    if (decay_all_) {
      if (alpha_ > 0) {
        for (int64_t j = 0; j < n_; ++j) rlo[j] = a_ * std::min(rlo[j], rhi[j]);
      } else {
        std::fill(rlo, rlo + n_, neg_inf);
      }
    } else {
      merge_same_model_rule(lo, hi);
    }
    rlo[lo] = neg_inf;
    alive_[hi] = 0;
    mask_[hi] = neg_inf;

    // Survivor column and the cached maxima of the other rows.
    constexpr int64_t kAhead = 24;  // rows; the column writes miss every cache level at large n
    for (int64_t j = 0; j < n_; ++j) {
      if (j + kAhead < n_) __builtin_prefetch(&s_[(j + kAhead) * n_ + lo], 1);
      if (!alive_[j] || j == lo) continue;
      const T v = rlo[j];
      s_[j * n_ + lo] = v;
      const int64_t arg = row_arg_[j];
      if (v > row_max_[j] || (v == row_max_[j] && lo <= arg)) {
        row_max_[j] = v;
        row_arg_[j] = lo;
      } else if (arg == lo || arg == hi) {
        rescan(j);  // the old maximum sat on a merged unit and nothing beat it
      }
    }
    rescan(lo);

    if (origin_[lo] == origin_[hi] && --model_budget_[origin_[lo]] <= 0) {
      ban(origin_, origin_[lo]);
    }
    if (group_budget_ && group_[lo] == group_[hi] && --group_budget_[group_[lo]] <= 0) {
      ban(group_, group_[lo]);
    }
    return true;
  }

  /// Forbids every pair among the survivors with labels[u] == value.
  void ban(const std::vector<int64_t>& labels, int64_t value) {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (int64_t p = 0; p < n_; ++p) {
      if (!alive_[p] || labels[p] != value) continue;
      for (int64_t q = 0; q < n_; ++q) {
        if (alive_[q] && labels[q] == value) s_[p * n_ + q] = neg_inf;
      }
    }
    for (int64_t p = 0; p < n_; ++p) {
      if (alive_[p] && labels[p] == value) rescan(p);
    }
  }

  const std::vector<int64_t>& origin() const { return origin_; }
  bool alive(int64_t u) const { return alive_[u] != 0; }
  /// Members of survivor u's cluster, in merge order (u first).
  template <typename F>
  void for_members(int64_t u, F f) const {
    for (int64_t m = u; m >= 0; m = next_[m]) f(m);
  }
  double sum() const { return sum_; }
  int64_t merges() const { return merges_; }

 private:
  void rescan(int64_t u) { row_argmax(&s_[u * n_], mask_.data(), n_, &row_max_[u], &row_arg_[u]); }

  /// Survivor row under Decay::kSameModel: min of the two rows, times alpha (-inf when alpha <= 0) only
  /// towards the survivors j whose union with the merged cluster would hold two units of one model. Then
  /// lo's per-model member counts absorb hi's.
  void merge_same_model_rule(int64_t lo, int64_t hi) {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const int64_t m = num_models_;
    int32_t* clo = &counts_[lo * m];
    const int32_t* chi = &counts_[hi * m];
    bool repeated = false;
    for (int64_t k = 0; k < m; ++k) {
      clo[k] += chi[k];
      repeated |= clo[k] > 1;
    }
    repeats_[lo] = repeated;
    T* rlo = &s_[lo * n_];
    const T* rhi = &s_[hi * n_];
    for (int64_t j = 0; j < n_; ++j) {
      const T v = std::min(rlo[j], rhi[j]);
      bool decays = repeated || repeats_[j];
      const int32_t* cj = &counts_[j * m];
      for (int64_t k = 0; k < m && !decays; ++k) decays = clo[k] > 0 && cj[k] > 0;
      rlo[j] = decays ? (alpha_ > 0 ? a_ * v : neg_inf) : v;
    }
  }

  T* s_;
  int64_t n_;
  double alpha_;
  T a_;
  bool decay_all_;
  int64_t num_models_;
  std::vector<int32_t> counts_;  // kSameModel: members per model of each survivor's cluster [n x num_models]
  std::vector<char> repeats_;    // kSameModel: the cluster holds two units of one model
  std::vector<T> mask_;
  std::vector<char> alive_;
  std::vector<int64_t> origin_, group_, next_, tail_;
  std::vector<T> row_max_;
  std::vector<int64_t> row_arg_;
  int64_t* model_budget_;
  int64_t* group_budget_;
  double sum_ = 0.0;
  int64_t merges_ = 0;
};

[[noreturn]] void fail_stuck(const char* what, int64_t merges, int64_t units, int64_t target) {
  throw ZipError(std::string(what) + ": after " + std::to_string(merges) +
                 " merges every remaining pair of units is forbidden (-inf); cannot reduce " + std::to_string(units) +
                 " units to " + std::to_string(target));
}

}  // namespace

int64_t model_budget(int64_t num_units, int64_t num_models, int64_t width, double beta) {
  return static_cast<int64_t>(
      std::floor(std::floor(static_cast<double>(num_units - width) / static_cast<double>(num_models)) * beta + 1e-4));
}

template <typename T>
double zip_match(const T* sim, int64_t o, int64_t num_models, double reduce, double alpha, double beta,
                 Decay decay, int64_t* labels, int64_t* num_outputs) {
  const int64_t k_target = target_width(o, reduce);
  *num_outputs = k_target;
  if (o == 0) return 0.0;
  const int64_t om = o / num_models;
  std::vector<int64_t> budget(num_models, model_budget(o, num_models, k_target, beta));
  WorkMatrix<T> work(sim, o);
  T* s = work.data.get();
  for (int64_t i = 0; i < o; ++i) s[i * o + i] = -std::numeric_limits<T>::infinity();
  std::vector<int64_t> origin(o);
  for (int64_t u = 0; u < o; ++u) origin[u] = u / om;
  ZipEngine<T> zip(s, o, alpha, decay, num_models, std::move(origin), std::vector<int64_t>(o, 0), budget.data(),
                   nullptr);
  for (int64_t remaining = o; remaining > k_target; --remaining) {
    if (!zip.step()) fail_stuck("zip_match", zip.merges(), o, k_target);
  }
  int64_t k = 0;
  for (int64_t u = 0; u < o; ++u) {
    if (!zip.alive(u)) continue;
    zip.for_members(u, [&](int64_t m) { labels[m] = k; });
    ++k;
  }
  return zip.merges() ? zip.sum() / static_cast<double>(zip.merges()) : 0.0;
}

template <typename T>
double group_zip_match(const T* sim, int64_t o, int64_t num_models, int64_t groups, double reduce, double alpha,
                       double beta, Decay decay, int64_t* labels, int64_t* num_outputs) {
  const int64_t om = o / num_models, og = om / groups, ng = num_models * groups;
  const int64_t remainder = target_width(og * num_models, reduce);  // survivors per head-set
  const int64_t k_target = groups * remainder;
  *num_outputs = k_target;
  if (o == 0) return 0.0;
  // 1. Head pairing against model 0: partner[i][j] = group of model i matched to model 0's group j.
  std::vector<std::vector<int64_t>> partner(num_models, std::vector<int64_t>(groups));
  for (int64_t j = 0; j < groups; ++j) partner[0][j] = j;
  std::vector<int64_t> cols(om);
  for (int64_t i = 1; i < num_models; ++i) {
    mudsc::lap::group_permute_match<T>(sim + i * om, om, o, groups, cols.data());
    for (int64_t j = 0; j < groups; ++j) partner[i][j] = cols[j * og] / og;
  }
  // 2. Budgets, shared by all head-sets.
  const int64_t budget0 = model_budget(o, num_models, k_target, beta);
  std::vector<int64_t> budget(num_models, budget0);
  std::vector<int64_t> head_budget(
      ng, static_cast<int64_t>(std::floor(static_cast<double>(o - k_target) / static_cast<double>(ng) + 1e-4)));
  // 3. Greedy zip inside each head-set, in model-0 head order. Head-sets only
  // interact through the model budgets: a model whose budget ran out has all its
  // within-model pairs forbidden in every later head-set.
  const int64_t n = num_models * og;
  std::vector<T> sub(n * n);
  std::vector<int64_t> units(n), origin(n), group(n);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  double sum = 0.0;
  int64_t merges = 0, out = 0;
  for (int64_t j = 0; j < groups; ++j) {
    for (int64_t i = 0; i < num_models; ++i) {
      for (int64_t t = 0; t < og; ++t) {
        const int64_t q = i * og + t;
        units[q] = i * om + partner[i][j] * og + t;  // ascending: model-major
        origin[q] = i;
        group[q] = i * groups + partner[i][j];
      }
    }
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t q = 0; q < n; ++q) {
        // A model's pairs were banned when a within-model merge took its budget to <= 0.
        const int64_t left = budget[origin[p]];
        const bool banned = (p == q) || (origin[p] == origin[q] && left <= 0 && left < budget0);
        sub[p * n + q] = banned ? neg_inf : sim[units[p] * o + units[q]];
      }
    }
    ZipEngine<T> zip(sub.data(), n, alpha, decay, num_models, origin, group, budget.data(), head_budget.data());
    for (int64_t step = 0; step < n - remainder; ++step) {
      if (!zip.step()) fail_stuck("group_zip_match", merges + zip.merges(), o, k_target);
    }
    sum += zip.sum();
    merges += zip.merges();
    // 4. Outputs of this head-set: survivors in ascending index (= listed group order, then position).
    for (int64_t p = 0; p < n; ++p) {
      if (!zip.alive(p)) continue;
      zip.for_members(p, [&](int64_t m) { labels[units[m]] = out; });
      ++out;
    }
  }
  return merges ? sum / static_cast<double>(merges) : 0.0;
}

namespace {

// The exact check of the pairs (i, j), i <= j, of tile (i0.., j0..): NaN, +inf, mirrored infinities, and the
// asymmetry and magnitude of finite pairs (computed in double).
template <typename T>
void check_tile_exact(const T* s, int64_t o, int64_t i0, int64_t i1, int64_t j0, int64_t j1, SimilarityCheck& c) {
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

// Tile rows [r0, r1) of the check: each tile (i, j >= i) is compared with its mirror through a transposed local
// copy, so the inner loop runs over contiguous rows without branches (vectorised); a tile holding a
// non-finite value (or one on the diagonal) goes through check_tile_exact instead. The fast path's
// max |a - b| is formed in double from the same values, so both paths report the same numbers.
template <typename T>
void check_tile_rows(const T* s, int64_t o, int64_t r0, int64_t r1, SimilarityCheck& c) {
  constexpr int64_t kTile = 32;
  T mirror[kTile][kTile];
  const T big = std::numeric_limits<T>::max();
  for (int64_t ti = r0; ti < r1; ++ti) {
    const int64_t i0 = ti * kTile, i1 = std::min(o, i0 + kTile);
    for (int64_t j0 = i0; j0 < o; j0 += kTile) {
      const int64_t j1 = std::min(o, j0 + kTile);
      if (j0 == i0 || i1 - i0 < kTile || j1 - j0 < kTile) {
        check_tile_exact(s, o, i0, i1, j0, j1, c);
        continue;
      }
      for (int64_t j = 0; j < kTile; ++j) {
        const T* row = s + (j0 + j) * o + i0;
        for (int64_t i = 0; i < kTile; ++i) mirror[i][j] = row[i];
      }
      double asym = 0.0, mag = 0.0;
      int bad = 0;
      for (int64_t i = 0; i < kTile; ++i) {
        const T* a = s + (i0 + i) * o + j0;
        const T* b = mirror[i];
        for (int64_t j = 0; j < kTile; ++j) {
          const T fa = std::fabs(a[j]), fb = std::fabs(b[j]);
          bad |= static_cast<int>(!(fa <= big)) | static_cast<int>(!(fb <= big));  // NaN or +-inf
          asym = std::max(asym, std::fabs(static_cast<double>(a[j]) - static_cast<double>(b[j])));
          mag = std::max(mag, static_cast<double>(std::max(fa, fb)));
        }
      }
      if (bad) {
        check_tile_exact(s, o, i0, i1, j0, j1, c);
      } else {
        c.max_asymmetry = std::max(c.max_asymmetry, asym);
        c.max_abs = std::max(c.max_abs, mag);
      }
    }
  }
}

}  // namespace

template <typename T>
SimilarityCheck check_similarity(const T* s, int64_t o) {
  constexpr int64_t kTile = 32;
  const int64_t tiles = (o + kTile - 1) / kTile;
  // Tile row t holds tiles - t tiles: two threads split the rows at about half the work (from 1024 units on).
  const int64_t threads = o >= 1024 && std::thread::hardware_concurrency() > 1 ? 2 : 1;
  if (threads == 1) {
    SimilarityCheck c;
    check_tile_rows(s, o, 0, tiles, c);
    return c;
  }
  const int64_t split = static_cast<int64_t>(static_cast<double>(tiles) * (1.0 - std::sqrt(0.5)));
  SimilarityCheck first, second;
  std::thread worker([&] { check_tile_rows(s, o, split, tiles, second); });
  check_tile_rows(s, o, 0, split, first);
  worker.join();
  first.has_nan |= second.has_nan;
  first.has_pos_inf |= second.has_pos_inf;
  first.infinity_asymmetric |= second.infinity_asymmetric;
  first.max_asymmetry = std::max(first.max_asymmetry, second.max_asymmetry);
  first.max_abs = std::max(first.max_abs, second.max_abs);
  return first;
}

template SimilarityCheck check_similarity<float>(const float*, int64_t);
template SimilarityCheck check_similarity<double>(const double*, int64_t);
template double zip_match<float>(const float*, int64_t, int64_t, double, double, double, Decay, int64_t*,
                                 int64_t*);
template double zip_match<double>(const double*, int64_t, int64_t, double, double, double, Decay, int64_t*,
                                  int64_t*);
template double group_zip_match<float>(const float*, int64_t, int64_t, int64_t, double, double, double, Decay,
                                       int64_t*, int64_t*);
template double group_zip_match<double>(const double*, int64_t, int64_t, int64_t, double, double, double, Decay,
                                        int64_t*, int64_t*);

}  // namespace zip
}  // namespace mudsc
