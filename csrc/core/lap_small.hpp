// Kernels of the small square solver (lap.cpp, SmallSolver): problems of at most
// 64 columns, copied into a buffer whose rows are padded with +inf to NB blocks of
// 8 columns (NB = 1, 2, 4 or 8, a template parameter).
//
// At this size one step of any phase touches a single matrix row of at most
// 64 values and the next step depends on its outcome (which column, which row
// next), so the time goes into the latency of that chain, not into arithmetic or
// memory traffic. The kernels therefore
//   - keep a whole row of state (potentials, distances) in registers as Row<NB>,
//     fully unrolled, and change one column of it by a masked blend: a scalar
//     store into an array that the next step reads as vectors is a store whose
//     address is known late, and the processor either waits for it or replays
//     the loads (measured: ~15 ns a step);
//   - take minima on values only, with balanced trees (across blocks) and
//     butterflies (across lanes) that leave the minimum in every lane; the
//     column of a minimum is then the lowest set bit of an equality mask over
//     the row, one 64-bit word (no per-lane argmin bookkeeping);
//   - find the two smallest of a row as per-lane (smallest, second) pairs merged
//     by the same tree, four min/max a merge.
// Ties resolve to the smallest column, as in lap_kernels.hpp, so the small solver
// takes exactly the decisions of the general one.
//
// Block8 is 8 doubles: one AVX-512 register, two AVX2 registers, or a plain array
// (portable builds), chosen at compile time. The matrix copy is double whatever
// the input type: float32 is widened once, exactly (measured faster than widening
// on every load, which sits on the step-to-step chain). No NaN reaches these
// kernels (the solver validates its input first), so min/max need no NaN rules;
// they may return either zero when comparing +0 with -0, which changes no
// comparison and hence no decision.
#pragma once

#include <cstdint>
#include <limits>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// The step kernels are meant to inline into the solver's loops, so that their Row
// arguments stay in registers (GCC 12 left two_smallest out of line otherwise).
#if defined(__GNUC__)
#define MUDSC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MUDSC_ALWAYS_INLINE inline
#endif

namespace mudsc {
namespace lap {
namespace small {

constexpr int64_t kMaxCols = 64;  // one bit per column in a uint64_t
constexpr int kBlock = 8;
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Index of the lowest set bit (bits != 0).
inline int64_t lowest_bit(uint64_t bits) { return __builtin_ctzll(bits); }

#if defined(__AVX512F__)

struct Block8 {
  __m512d x;
};
using Mask8 = __mmask8;

// Several AVX-512 intrinsics (min, max, shuffles, conversions) are the masked forms
// with an "undefined" pass-through operand, which GCC 12.2 reports as possibly
// uninitialised once inlined (GCC bug 105593). The kAll forms below name the
// pass-through; with every lane selected it is never read and the instruction is
// the same.
constexpr __mmask8 kAll = 0xFF;

inline Block8 load8(const double* p) { return {_mm512_loadu_pd(p)}; }
inline void store8(double* p, Block8 a) { _mm512_storeu_pd(p, a.x); }
inline Block8 broadcast(double s) { return {_mm512_set1_pd(s)}; }
inline Block8 operator+(Block8 a, Block8 b) { return {_mm512_add_pd(a.x, b.x)}; }
inline Block8 operator-(Block8 a, Block8 b) { return {_mm512_sub_pd(a.x, b.x)}; }
inline Block8 min8(Block8 a, Block8 b) { return {_mm512_mask_min_pd(a.x, kAll, a.x, b.x)}; }
inline Block8 max8(Block8 a, Block8 b) { return {_mm512_mask_max_pd(a.x, kAll, a.x, b.x)}; }
inline Mask8 less(Block8 a, Block8 b) { return _mm512_cmp_pd_mask(a.x, b.x, _CMP_LT_OQ); }
inline Mask8 equal(Block8 a, Block8 b) { return _mm512_cmp_pd_mask(a.x, b.x, _CMP_EQ_OQ); }
inline Mask8 mask_and(Mask8 a, Mask8 b) { return static_cast<Mask8>(a & b); }
/// The lanes l with bit l of `bits` set.
inline Mask8 mask_from_bits(unsigned bits) { return static_cast<Mask8>(bits); }
inline unsigned bits(Mask8 mask) { return mask; }
/// mask ? if_true : if_false, lane by lane.
inline Block8 select(Mask8 mask, Block8 if_false, Block8 if_true) {
  return {_mm512_mask_blend_pd(mask, if_false.x, if_true.x)};
}
/// p[l] = value for the lanes l of mask (one masked store).
inline void store_where(int64_t* p, Mask8 mask, int64_t value) {
  _mm512_mask_storeu_epi64(p, mask, _mm512_set1_epi64(value));
}
// Lane permutations of the butterflies: swap the 4-lane halves, the pairs within
// them, and neighbours.
inline Block8 swap4(Block8 a) { return {_mm512_mask_shuffle_f64x2(a.x, kAll, a.x, a.x, 0x4E)}; }
inline Block8 swap2(Block8 a) { return {_mm512_mask_shuffle_f64x2(a.x, kAll, a.x, a.x, 0xB1)}; }
inline Block8 swap1(Block8 a) { return {_mm512_mask_permute_pd(a.x, kAll, a.x, 0x55)}; }
inline double lane0(Block8 a) { return _mm512_cvtsd_f64(a.x); }

#elif defined(__AVX2__)

struct Block8 {
  __m256d lo, hi;
};
struct Mask8 {
  __m256d lo, hi;  // all-ones lanes
};

inline Block8 load8(const double* p) { return {_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)}; }
inline void store8(double* p, Block8 a) {
  _mm256_storeu_pd(p, a.lo);
  _mm256_storeu_pd(p + 4, a.hi);
}
inline Block8 broadcast(double s) { return {_mm256_set1_pd(s), _mm256_set1_pd(s)}; }
inline Block8 operator+(Block8 a, Block8 b) { return {_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)}; }
inline Block8 operator-(Block8 a, Block8 b) { return {_mm256_sub_pd(a.lo, b.lo), _mm256_sub_pd(a.hi, b.hi)}; }
inline Block8 min8(Block8 a, Block8 b) { return {_mm256_min_pd(a.lo, b.lo), _mm256_min_pd(a.hi, b.hi)}; }
inline Block8 max8(Block8 a, Block8 b) { return {_mm256_max_pd(a.lo, b.lo), _mm256_max_pd(a.hi, b.hi)}; }
inline Mask8 less(Block8 a, Block8 b) {
  return {_mm256_cmp_pd(a.lo, b.lo, _CMP_LT_OQ), _mm256_cmp_pd(a.hi, b.hi, _CMP_LT_OQ)};
}
inline Mask8 equal(Block8 a, Block8 b) {
  return {_mm256_cmp_pd(a.lo, b.lo, _CMP_EQ_OQ), _mm256_cmp_pd(a.hi, b.hi, _CMP_EQ_OQ)};
}
inline Mask8 mask_and(Mask8 a, Mask8 b) { return {_mm256_and_pd(a.lo, b.lo), _mm256_and_pd(a.hi, b.hi)}; }
inline Mask8 mask_from_bits(unsigned bits) {
  const __m256i b = _mm256_set1_epi64x(bits);
  const __m256i lo = _mm256_setr_epi64x(1, 2, 4, 8), hi = _mm256_setr_epi64x(16, 32, 64, 128);
  return {_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(b, lo), lo)),
          _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(b, hi), hi))};
}
inline unsigned bits(Mask8 mask) {
  return static_cast<unsigned>(_mm256_movemask_pd(mask.lo)) | (static_cast<unsigned>(_mm256_movemask_pd(mask.hi)) << 4);
}
inline Block8 select(Mask8 mask, Block8 if_false, Block8 if_true) {
  return {_mm256_blendv_pd(if_false.lo, if_true.lo, mask.lo), _mm256_blendv_pd(if_false.hi, if_true.hi, mask.hi)};
}
/// A load-blend-store: AVX2 masked stores (vpmaskmovq) are microcoded and slow on some cores.
inline void store_where(int64_t* p, Mask8 mask, int64_t value) {
  const __m256d v = _mm256_castsi256_pd(_mm256_set1_epi64x(value));
  __m256i* q = reinterpret_cast<__m256i*>(p);
  const __m256d old_lo = _mm256_castsi256_pd(_mm256_loadu_si256(q));
  const __m256d old_hi = _mm256_castsi256_pd(_mm256_loadu_si256(q + 1));
  _mm256_storeu_si256(q, _mm256_castpd_si256(_mm256_blendv_pd(old_lo, v, mask.lo)));
  _mm256_storeu_si256(q + 1, _mm256_castpd_si256(_mm256_blendv_pd(old_hi, v, mask.hi)));
}
inline Block8 swap4(Block8 a) { return {a.hi, a.lo}; }
inline Block8 swap2(Block8 a) { return {_mm256_permute4x64_pd(a.lo, 0x4E), _mm256_permute4x64_pd(a.hi, 0x4E)}; }
inline Block8 swap1(Block8 a) { return {_mm256_permute_pd(a.lo, 0x5), _mm256_permute_pd(a.hi, 0x5)}; }
inline double lane0(Block8 a) { return _mm256_cvtsd_f64(a.lo); }

#else  // portable: plain loops over the 8 lanes

struct Block8 {
  double x[8];
};
using Mask8 = unsigned;  // bit l = lane l

inline Block8 load8(const double* p) {
  Block8 r;
  for (int l = 0; l < 8; ++l) r.x[l] = p[l];
  return r;
}
inline void store8(double* p, Block8 a) {
  for (int l = 0; l < 8; ++l) p[l] = a.x[l];
}
inline Block8 broadcast(double s) {
  Block8 r;
  for (int l = 0; l < 8; ++l) r.x[l] = s;
  return r;
}
inline Block8 operator+(Block8 a, Block8 b) {
  for (int l = 0; l < 8; ++l) a.x[l] += b.x[l];
  return a;
}
inline Block8 operator-(Block8 a, Block8 b) {
  for (int l = 0; l < 8; ++l) a.x[l] -= b.x[l];
  return a;
}
inline Block8 min8(Block8 a, Block8 b) {
  for (int l = 0; l < 8; ++l) a.x[l] = b.x[l] < a.x[l] ? b.x[l] : a.x[l];
  return a;
}
inline Block8 max8(Block8 a, Block8 b) {
  for (int l = 0; l < 8; ++l) a.x[l] = b.x[l] > a.x[l] ? b.x[l] : a.x[l];
  return a;
}
inline Mask8 less(Block8 a, Block8 b) {
  Mask8 m = 0;
  for (int l = 0; l < 8; ++l) m |= static_cast<unsigned>(a.x[l] < b.x[l]) << l;
  return m;
}
inline Mask8 equal(Block8 a, Block8 b) {
  Mask8 m = 0;
  for (int l = 0; l < 8; ++l) m |= static_cast<unsigned>(a.x[l] == b.x[l]) << l;
  return m;
}
inline Mask8 mask_and(Mask8 a, Mask8 b) { return a & b; }
inline Mask8 mask_from_bits(unsigned bits) { return bits & 0xFFu; }
inline unsigned bits(Mask8 mask) { return mask; }
inline Block8 select(Mask8 mask, Block8 if_false, Block8 if_true) {
  for (int l = 0; l < 8; ++l)
    if (mask >> l & 1u) if_false.x[l] = if_true.x[l];
  return if_false;
}
inline void store_where(int64_t* p, Mask8 mask, int64_t value) {
  for (int l = 0; l < 8; ++l)
    if (mask >> l & 1u) p[l] = value;
}
inline Block8 swap_lanes(Block8 a, int distance) {
  Block8 r;
  for (int l = 0; l < 8; ++l) r.x[l] = a.x[l ^ distance];
  return r;
}
inline Block8 swap4(Block8 a) { return swap_lanes(a, 4); }
inline Block8 swap2(Block8 a) { return swap_lanes(a, 2); }
inline Block8 swap1(Block8 a) { return swap_lanes(a, 1); }
inline double lane0(Block8 a) { return a.x[0]; }

#endif

/// A padded row of NB blocks (8 * NB columns), meant to live in registers.
template <int NB>
struct Row {
  Block8 b[NB];
};

template <int NB>
inline Row<NB> load_row(const double* p) {
  Row<NB> r;
  for (int b = 0; b < NB; ++b) r.b[b] = load8(p + kBlock * b);
  return r;
}

template <int NB>
inline void store_row(double* p, const Row<NB>& r) {
  for (int b = 0; b < NB; ++b) store8(p + kBlock * b, r.b[b]);
}

template <int NB>
inline Row<NB> filled(double value) {
  Row<NB> r;
  for (int b = 0; b < NB; ++b) r.b[b] = broadcast(value);
  return r;
}

/// The lanes of block b whose column bit is set in `columns`.
inline Mask8 block_mask(uint64_t columns, int b) {
  return mask_from_bits(static_cast<unsigned>(columns >> (kBlock * b)));
}

/// r[j] -= amount for column j only (a masked subtraction: r[j] - amount rounds as the scalar one).
template <int NB>
MUDSC_ALWAYS_INLINE void subtract_at(Row<NB>& r, int64_t j, double amount) {
  const uint64_t one = uint64_t{1} << j;
  const Block8 a = broadcast(amount);
  for (int b = 0; b < NB; ++b) r.b[b] = select(block_mask(one, b), r.b[b], r.b[b] - a);
}

/// Every lane: the smallest value of the row (a balanced tree over blocks, then a
/// butterfly across lanes). Written as a recursion on NB so that it unrolls fully.
template <int NB>
MUDSC_ALWAYS_INLINE Block8 row_min(const Row<NB>& r) {
  if constexpr (NB == 1) {
    Block8 m = r.b[0];
    m = min8(m, swap4(m));
    m = min8(m, swap2(m));
    return min8(m, swap1(m));
  } else {
    Row<NB / 2> half;
    for (int b = 0; b < NB / 2; ++b) half.b[b] = min8(r.b[2 * b], r.b[2 * b + 1]);
    return row_min<NB / 2>(half);
  }
}

/// Bit j set where r[j] == value (value broadcast in every lane).
template <int NB>
MUDSC_ALWAYS_INLINE uint64_t equal_bits(const Row<NB>& r, Block8 value) {
  uint64_t out = 0;
  for (int b = 0; b < NB; ++b) out |= static_cast<uint64_t>(bits(equal(r.b[b], value))) << (kBlock * b);
  return out;
}

/// Column reduction of a padded matrix c [n rows, 8 * NB columns]: v[j] = min_i c[i, j] and
/// row_of_min[j] = the first row holding it (as a double, an exact small integer, so that it
/// rides in the same blends). Returns true when some column sum is NaN (the column holds a NaN,
/// or both infinities; padding is +inf): the NaN witness of phase 1. Rows outer, blocks inner:
/// NB independent running minima.
template <int NB>
inline bool column_minima(const double* c, int64_t n, Row<NB>& v, double* row_of_min) {
  Row<NB> best = filled<NB>(kInf), arg = filled<NB>(0.0), sums = filled<NB>(0.0);
  for (int64_t i = 0; i < n; ++i) {
    const Row<NB> x = load_row<NB>(c + i * kBlock * NB);
    const Block8 row_index = broadcast(static_cast<double>(i));
    for (int b = 0; b < NB; ++b) {
      sums.b[b] = sums.b[b] + x.b[b];
      const Mask8 lt = less(x.b[b], best.b[b]);
      best.b[b] = select(lt, best.b[b], x.b[b]);
      arg.b[b] = select(lt, arg.b[b], row_index);
    }
  }
  v = best;
  store_row(row_of_min, arg);
  unsigned not_nan = 0xFFu;
  for (int b = 0; b < NB; ++b) not_nan &= bits(equal(sums.b[b], sums.b[b]));
  return not_nan != 0xFFu;
}

/// min over j != skip of row[j] - v[j].
template <int NB>
MUDSC_ALWAYS_INLINE double min_reduced_except(const double* row, const Row<NB>& v, int64_t skip) {
  const uint64_t one = uint64_t{1} << skip;
  const Block8 inf = broadcast(kInf);
  Row<NB> h;
  for (int b = 0; b < NB; ++b) h.b[b] = select(block_mask(one, b), load8(row + kBlock * b) - v.b[b], inf);
  return lane0(row_min(h));
}

struct TwoSmallest {
  double first, second;  // the two smallest reduced costs (equal on a tie)
  uint64_t first_bits;   // the columns holding `first`
};

/// Per lane (smallest, second smallest) of two disjoint sets, merged: the smallest is
/// the smaller smallest; the second is the larger smallest or the smaller second,
/// whichever is less.
MUDSC_ALWAYS_INLINE void merge_two(Block8& a1, Block8& a2, Block8 b1, Block8 b2) {
  a2 = min8(max8(a1, b1), min8(a2, b2));
  a1 = min8(a1, b1);
}

/// Every lane: the two smallest values of the rows' lanes, given per-lane pairs
/// (m1 <= m2); a tree over blocks, then a butterfly (recursion on NB, as row_min).
template <int NB>
MUDSC_ALWAYS_INLINE void two_min(const Row<NB>& m1, const Row<NB>& m2, Block8& first, Block8& second) {
  if constexpr (NB == 1) {
    Block8 a1 = m1.b[0], a2 = m2.b[0];
    merge_two(a1, a2, swap4(a1), swap4(a2));
    merge_two(a1, a2, swap2(a1), swap2(a2));
    merge_two(a1, a2, swap1(a1), swap1(a2));
    first = a1;
    second = a2;
  } else {
    Row<NB / 2> h1, h2;
    for (int b = 0; b < NB / 2; ++b) {
      h1.b[b] = m1.b[2 * b];
      h2.b[b] = m2.b[2 * b];
      merge_two(h1.b[b], h2.b[b], m1.b[2 * b + 1], m2.b[2 * b + 1]);
    }
    two_min<NB / 2>(h1, h2, first, second);
  }
}

/// The two smallest of row[j] - v[j], as a multiset (equal when the minimum is tied).
template <int NB>
MUDSC_ALWAYS_INLINE TwoSmallest two_smallest(const double* row, const Row<NB>& v) {
  Row<NB> h, none = filled<NB>(kInf);
  for (int b = 0; b < NB; ++b) h.b[b] = load8(row + kBlock * b) - v.b[b];
  Block8 first, second;
  two_min<NB>(h, none, first, second);
  return {lane0(first), lane0(second), equal_bits(h, first)};
}

struct Relaxed {
  double min;       // the smallest distance over the columns not scanned
  uint64_t at_min;  // the columns not scanned at that distance
};

/// One Dijkstra step from row i with offset u, over the columns not in `scanned`:
/// dist[j] = min(dist[j], row[j] - v[j] - u), pred[j] = i where it improved (strictly).
template <int NB>
MUDSC_ALWAYS_INLINE Relaxed relax(const double* row, const double* v, double u, Row<NB>& dist, int64_t* pred, int64_t i,
                     uint64_t scanned) {
  const Block8 uu = broadcast(u), inf = broadcast(kInf);
  Row<NB> live_dist;  // dist, +inf on scanned columns
  for (int b = 0; b < NB; ++b) {
    const Mask8 live = block_mask(~scanned, b);
    const Block8 h = (load8(row + kBlock * b) - load8(v + kBlock * b)) - uu;
    const Mask8 lt = mask_and(less(h, dist.b[b]), live);
    dist.b[b] = select(lt, dist.b[b], h);
    store_where(pred + kBlock * b, lt, i);
    live_dist.b[b] = select(live, inf, dist.b[b]);
  }
  const Block8 m = row_min(live_dist);
  return {lane0(m), equal_bits(live_dist, m)};
}

}  // namespace small
}  // namespace lap
}  // namespace mudsc
