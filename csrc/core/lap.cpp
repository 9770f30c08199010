// Jonker-Volgenant dense LAP (R. Jonker, A. Volgenant, "A shortest augmenting
// path algorithm for dense and sparse linear assignment problems", Computing
// 38, 1987), written from the paper's description.
//
// Phases, on the signed cost C' (n rows <= m columns, row-major):
//   1. column_reduction      v[j] = min_i C'[i, j]; each column offers itself to
//                            its minimum row (square cold start only).
//   2. reduction_transfer    rows that got exactly one column move slack from
//                            that column's potential to the row.
//   1'. row_reduction        instead of 1-2 for warm starts and rectangular
//                            problems: each row takes its cheapest column under
//                            the current potentials if that column is free.
//   3. augmenting_row_reduction  (two rounds) free rows take their cheapest
//                            column, lowering its potential by the gap to the
//                            second cheapest, and evict the previous owner.
//   4. shortest_augmenting_paths  Dijkstra from every still-free row on reduced
//                            costs to the nearest free column; potentials of
//                            scanned columns updated; path augmented.
// Every phase keeps dual feasibility C'[i, j] - u[i] - v[j] >= 0 with u implicit
// (u[i] = C'[i, x(i)] - v[x(i)] for assigned rows), so any phase may stop early
// and leave the rest to phase 4. Rectangular problems (n < m) start from v = 0
// and run 1', 3, 4: these only lower potentials of assigned columns, so the
// free columns keep the maximal potential 0 as optimality requires.
// A warm start runs 1', 3, 4 from the given potentials.
// Every entry is read (and checked for NaN / the unbounded infinity) by phase 1
// or 1' before anything is assigned.
#include "lap.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>
#include <type_traits>

#include "lap_kernels.hpp"
#include "lap_small.hpp"

namespace mudsc {
namespace lap {

namespace {

using kernels::kInf;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Row-major problem with n <= m, the only form the phases see.
template <typename T>
struct Problem {
  const T* data;
  int64_t n, m, stride;
  int64_t shape_rows, shape_cols;  // the caller's shape (transposed problems swap n, m), for messages
  const T* row(int64_t i) const { return data + i * stride; }
  std::string shape() const { return shape_string(shape_rows, shape_cols); }
};

[[noreturn]] void fail(ErrorKind kind, const std::string& message) { throw LapError(kind, message); }

template <typename T>
void check_value_flags(unsigned flags, bool maximize, const Problem<T>& p) {
  if (flags & kernels::kHasNan) {
    fail(ErrorKind::invalid_value, "cost matrix of shape " + p.shape() + " contains NaN");
  }
  if (flags & kernels::kHasNegInf) {
    fail(ErrorKind::invalid_value,
         "cost matrix of shape " + p.shape() + " contains " + (maximize ? "+inf" : "-inf") +
             ", which makes the objective unbounded (forbidden entries are " +
             (maximize ? "-inf when maximizing)" : "+inf when minimizing)"));
  }
}

template <typename T>
[[noreturn]] void fail_infeasible(bool maximize, const Problem<T>& p) {
  fail(ErrorKind::infeasible, "cost matrix of shape " + p.shape() +
                                  " is infeasible: no assignment of every row avoids the forbidden (" +
                                  (maximize ? "-inf" : "+inf") + ") entries");
}

void reset_state(Workspace& ws, int64_t n, int64_t m) {
  ws.v.assign(m, 0.0);
  ws.dist.resize(m);
  ws.free_mask.resize(m);
  ws.pred.resize(m);
  ws.row_of_col.assign(m, -1);
  ws.col_of_row.assign(n, -1);
  ws.free_rows.clear();
  ws.free_rows.reserve(n);
  ws.scanned.clear();
}

/// Value flags of one row (slow path: only to name the problem of a bad row).
template <bool Max, typename T>
unsigned row_flags(const T* row, int64_t m) {
  unsigned flags = 0;
  for (int64_t j = 0; j < m; ++j) {
    const double c = kernels::signed_cost<Max>(row[j]);
    if (c != c) flags |= kernels::kHasNan;
    if (c == -kInf) flags |= kernels::kHasNegInf;
  }
  return flags;
}

/// Phase 1: v = column minima; each row owns at most one of the columns whose
/// minimum it holds; rows holding several are marked in `multiple`. Reads and
/// validates every entry.
template <bool Max, typename T>
void column_reduction(const Problem<T>& p, Workspace& ws, std::vector<char>& multiple) {
  const int64_t n = p.n, m = p.m;
  std::fill(ws.v.begin(), ws.v.end(), kInf);
  std::vector<int64_t>& argmin_row = ws.pred;  // borrowed as scratch
  std::fill(argmin_row.begin(), argmin_row.end(), 0);
  bool witness = false;
  for (int64_t i = 0; i < n; ++i) {
    const double sum = kernels::scan_columns_min<Max>(p.row(i), m, i, ws.v.data(), argmin_row.data());
    witness |= sum != sum;
  }
  bool neg_inf = false;
  for (int64_t j = 0; j < m; ++j) neg_inf |= ws.v[j] == -kInf;
  if (witness || neg_inf) {
    for (int64_t i = 0; i < n; ++i) check_value_flags(row_flags<Max>(p.row(i), m), Max, p);
  }
  multiple.assign(n, 0);
  // Highest column first, as in the paper: a row keeps the first column it is offered.
  for (int64_t j = m - 1; j >= 0; --j) {
    if (ws.v[j] == kInf) fail_infeasible(Max, p);  // a column with no allowed entry
    const int64_t i = argmin_row[j];
    if (ws.col_of_row[i] < 0) {
      ws.col_of_row[i] = j;
      ws.row_of_col[j] = i;
    } else {
      multiple[i] = 1;
    }
  }
}

/// Phase 2: for each row owning exactly one column j1, u[i] := min_{j != j1} C'[i,j] - v[j]
/// and v[j1] lowered by the same amount (skipped when that minimum is +inf).
template <bool Max, typename T>
void reduction_transfer(const Problem<T>& p, Workspace& ws, const std::vector<char>& multiple) {
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t j1 = ws.col_of_row[i];
    if (j1 < 0) {
      ws.free_rows.push_back(i);
      continue;
    }
    if (multiple[i]) continue;
    const kernels::TwoSmallest t = kernels::two_smallest<Max>(p.row(i), ws.v.data(), p.m);
    const double mu = (t.first_col == j1) ? t.second : t.first;
    if (mu < kInf) ws.v[j1] -= mu;
  }
}

/// Phase 1' (warm start and rectangular problems): every row takes its cheapest
/// column under the current potentials if that column is still free, else stays
/// free. u[i] = that minimum keeps dual feasibility. Reads (and validates) every
/// row, four rows at a time.
template <bool Max, typename T>
void row_reduction(const Problem<T>& p, Workspace& ws) {
  constexpr int R = 4;
  const int64_t n = p.n, m = p.m;
  kernels::RowMin mins[R];
  bool infeasible = false;
  for (int64_t i0 = 0; i0 < n; i0 += R) {
    const int count = static_cast<int>(std::min<int64_t>(R, n - i0));
    if (count == R) {
      const T* rows[R];
      for (int r = 0; r < R; ++r) rows[r] = p.row(i0 + r);
      kernels::row_min<Max, R>(rows, ws.v.data(), m, mins);
    } else {
      for (int r = 0; r < count; ++r) {
        const T* row = p.row(i0 + r);
        kernels::row_min<Max, 1>(&row, ws.v.data(), m, mins + r);
      }
    }
    for (int r = 0; r < count; ++r) {
      const int64_t i = i0 + r;
      const kernels::RowMin& q = mins[r];
      if (q.nan_witness || q.value == -kInf) check_value_flags(row_flags<Max>(p.row(i), m), Max, p);
      if (!(q.value < kInf)) {  // a row with no allowed entry; report bad values first
        infeasible = true;
        continue;
      }
      if (ws.row_of_col[q.col] < 0) {
        ws.row_of_col[q.col] = i;
        ws.col_of_row[i] = q.col;
      } else {
        ws.free_rows.push_back(i);
      }
    }
  }
  if (infeasible) fail_infeasible(Max, p);
}

/// Steps allowed to one round of augmenting row reduction on m columns. Each step
/// assigns a row and lowers a potential or evicts a row; near-ties can make rows
/// evict each other for long. The cap bounds the work; phase 4 finishes. A step
/// costs about one Dijkstra step (one row read), but phase-4 paths grow with m:
/// the cap grows from m/2 visits (m <= 256) to 8m (m >= 4096).
int64_t arr_budget(int64_t m) {
  const int64_t budget_per_col = std::min<int64_t>(8 * 512, std::max<int64_t>(256, m));  // in 1/512ths
  return m * budget_per_col / 512;
}

/// Phase 3: one round of augmenting row reduction over ws.free_rows. Rows still
/// free afterwards are left in ws.free_rows.
template <bool Max, typename T>
void augmenting_row_reduction(const Problem<T>& p, Workspace& ws) {
  std::vector<int64_t>& fr = ws.free_rows;
  const int64_t previous = static_cast<int64_t>(fr.size());
  int64_t k = 0, num_free = 0;
  int64_t budget = arr_budget(p.m);
  while (k < previous) {
    if (--budget < 0) {
      for (int64_t q = k; q < previous; ++q) fr[num_free++] = fr[q];  // still free
      break;
    }
    const int64_t i = fr[k++];
    const kernels::TwoSmallest t = kernels::two_smallest<Max>(p.row(i), ws.v.data(), p.m);
    if (!(t.first < kInf)) fail_infeasible(Max, p);  // a row with no allowed entry
    int64_t j1 = t.first_col;
    int64_t i0 = ws.row_of_col[j1];
    // Lower v[j1] so that C'[i, j1] - v[j1] equals the second smallest reduced cost:
    // row i stays tight on j1 and every other row's reduced costs only grow.
    const bool lowered = t.first < t.second && t.second < kInf;
    if (lowered) {
      ws.v[j1] -= t.second - t.first;
    } else if (t.first == t.second && i0 >= 0) {
      j1 = t.second_col;  // a tie: take the other cheapest column instead
      i0 = ws.row_of_col[j1];
    }
    ws.col_of_row[i] = j1;
    ws.row_of_col[j1] = i;
    if (i0 >= 0) {
      ws.col_of_row[i0] = -1;
      if (lowered) {
        fr[--k] = i0;  // process the evicted row next
      } else {
        fr[num_free++] = i0;  // next round (or phase 4)
      }
    }
  }
  fr.resize(num_free);
}

/// Augments along the predecessor tree from free column end_col back to row start: every column on the
/// path takes its predecessor row, which gives up its previous column to the next step.
inline void flip_path(const int64_t* pred, int64_t* x, int64_t* y, int64_t start, int64_t end_col) {
  int64_t j = end_col;
  for (;;) {
    const int64_t row = pred[j];
    y[j] = row;
    const int64_t previous = x[row];
    x[row] = j;
    j = previous;
    if (row == start) break;
  }
}

/// Phase 4: Dijkstra from each free row to the nearest free column; see file header.
/// Ties between an assigned and a free column go to the free one (paths end as
/// early as possible, which matters for integer costs). Free columns are found
/// through a 0/+inf mask added in the row kernel while they are many (rectangular
/// problems), and by checking a short list after each step once they are few.
template <bool Max, typename T>
void shortest_augmenting_paths(const Problem<T>& p, Workspace& ws) {
  const int64_t m = p.m;
  double* v = ws.v.data();
  double* dist = ws.dist.data();
  double* free_mask = ws.free_mask.data();
  int64_t* pred = ws.pred.data();
  int64_t* x = ws.col_of_row.data();
  int64_t* y = ws.row_of_col.data();
  std::vector<int64_t>& free_cols = ws.free_cols;
  free_cols.clear();
  for (int64_t j = 0; j < m; ++j) {
    free_mask[j] = (y[j] < 0) ? 0.0 : kInf;
    if (y[j] < 0) free_cols.push_back(j);
  }

  for (const int64_t start : ws.free_rows) {
    std::fill(dist, dist + m, kInf);
    ws.scanned.clear();
    const bool use_list = static_cast<int64_t>(free_cols.size()) * 16 <= m;
    int64_t i = start;
    double u = 0.0;
    int64_t end_col;
    double end_dist;
    for (;;) {
      kernels::RelaxResult r =
          use_list ? kernels::relax_row<Max, false>(p.row(i), v, u, dist, pred, free_mask, i, m)
                   : kernels::relax_row<Max, true>(p.row(i), v, u, dist, pred, free_mask, i, m);
      ++ws.stats.scanned_rows;
      if (!(r.min_all < kInf)) fail_infeasible(Max, p);
      if (use_list) {
        for (const int64_t f : free_cols) {
          if (kernels::better(dist[f], f, r.min_free, r.col_free)) {
            r.min_free = dist[f];
            r.col_free = f;
          }
        }
      }
      if (r.min_free <= r.min_all) {
        end_col = r.col_free;
        end_dist = r.min_free;
        break;
      }
      // Scan the closest assigned column: continue from its row.
      const int64_t j = r.col_all;
      ws.scanned.push_back({j, v[j], r.min_all});
      i = y[j];
      u = kernels::signed_cost<Max>(p.row(i)[j]) - v[j] - r.min_all;
      v[j] = -kInf;
      dist[j] = kInf;
    }
    // Potentials: scanned columns move by (their distance - path length) <= 0.
    for (const ScannedColumn& s : ws.scanned) v[s.col] = s.potential + s.distance - end_dist;
    // Augment along the predecessor tree.
    free_mask[end_col] = kInf;
    const auto it = std::find(free_cols.begin(), free_cols.end(), end_col);
    *it = free_cols.back();
    free_cols.pop_back();
    flip_path(pred, x, y, start, end_col);
  }
  ws.free_rows.clear();
}

// ---------------------------------------------------------------------------
// Small square problems (n == m <= 64), cold start: the attention heads of 64
// units and the g^2 inner problems of group_lap.cpp. SmallSolver runs phases
// 1, 2, 3 (two rounds) and 4 of solve_row_major with the same arithmetic, the
// same tie-breaking and the same step budget, hence the same assignment
// (potentials equal as numbers; a zero may differ in sign). What differs is the
// layout of the work for such sizes, where every step is a short chain of
// dependent operations (see lap_small.hpp):
//   - the signed matrix C' is copied once, as double, into a buffer whose rows
//     are padded with +inf to NB blocks of 8 columns (no tails, no sign flips,
//     no strided rows; a +inf column never wins a minimum and keeps distance
//     +inf);
//   - potentials (phases 1-3) and distances (phase 4) stay in registers while a
//     phase changes them; they are passed to the steps as `Row` references;
//   - sets of columns (free, scanned, tied at a minimum) are bits of a 64-bit
//     word. Phase 4 leaves the potentials alone during a search and masks the
//     scanned columns instead of the general code's v[j] = -inf, dist[j] = +inf;
//     it ends a path when a free column is at the minimum distance (the general
//     code's "min over free columns <= min over all", free columns being a
//     subset) at the lowest such column, else scans the lowest column there, as
//     the general code does;
//   - phases 2, 3 and 4 are split into steps, so that solve_pair can advance two
//     independent problems in turns and the processor overlaps their chains;
//   - nothing is allocated per solve beyond the reused matrix buffer.
// ---------------------------------------------------------------------------

/// Register state of one phase-4 search: distances of the columns, the scanned
/// columns, the row being relaxed and its offset.
template <int NB>
struct Search {
  small::Row<NB> dist;
  uint64_t scanned;
  int64_t start, row;
  double u;
};

template <int NB>
class SmallSolver {
 public:
  using Row = small::Row<NB>;
  static constexpr int64_t kStride = small::kBlock * NB;

  /// c: the padded signed matrix [n, kStride], 64-byte aligned; n == m <= 8 * NB.
  SmallSolver(const double* c, int64_t n, SolveStats& stats) : c_(c), n_(n), stats_(stats) { stats_ = SolveStats{}; }

  /// Phase 1, first half: column minima into v. Every entry is read; a column sum
  /// is NaN when the column holds a NaN or both infinities, a column minimum is
  /// -inf where it holds the unbounded infinity (suspect values: the caller looks
  /// closer, as the general phase 1 does) and +inf where the column has no
  /// allowed entry.
  struct Minima {
    bool suspect_values, empty_column;
  };
  Minima column_minima(Row& v) {
    const bool witness = small::column_minima<NB>(c_, n_, v, row_of_min_);
    small::store_row(v_mem_, v);
    Minima r{witness, false};
    for (int64_t j = 0; j < n_; ++j) {
      r.suspect_values |= v_mem_[j] == -kInf;
      r.empty_column |= v_mem_[j] == kInf;
    }
    return r;
  }

  /// Phase 1, second half (valid, feasible minima): each row keeps at most one of
  /// the columns whose minimum it holds.
  void assign_columns(Row& v) {
    const int64_t n = n_;
    // Padding columns: potential 0 instead of +inf (reduced costs +inf, not NaN).
    const uint64_t padding = n == 64 ? 0 : ~uint64_t{0} << n;
    for (int b = 0; b < NB; ++b) v.b[b] = small::select(small::block_mask(padding, b), v.b[b], small::broadcast(0.0));
    std::fill(x_, x_ + n, int64_t{-1});
    std::fill(y_, y_ + n, int64_t{-1});
    for (int64_t j = n - 1; j >= 0; --j) {  // highest column first: a row keeps the first one offered
      const int64_t i = static_cast<int64_t>(row_of_min_[j]);
      if (x_[i] < 0) {
        x_[i] = j;
        y_[j] = i;
      } else {
        multiple_[i] = true;
      }
    }
  }

  /// Phase 2, one step: reduction transfer on the next row that owns exactly one
  /// column j1 (rows without a column join the free list on the way). The general
  /// code takes min over j != j1 of C'[i, j] - v[j] from the two smallest; here it
  /// is taken directly. Returns false once every row is done.
  MUDSC_ALWAYS_INLINE bool transfer_step(Row& v) {
    for (; transfer_row_ < n_; ++transfer_row_) {
      const int64_t i = transfer_row_;
      const int64_t j1 = x_[i];
      if (j1 < 0) {
        free_rows_[num_free_++] = i;
        continue;
      }
      if (multiple_[i]) continue;
      ++transfer_row_;
      const double mu = small::min_reduced_except<NB>(c_ + i * kStride, v, j1);
      if (mu < kInf) small::subtract_at(v, j1, mu);
      return true;
    }
    stats_.free_after_init = num_free_;
    begin_arr_round();
    return false;
  }

  /// Phase 3, one step: one row of augmenting_row_reduction (two rounds, the same
  /// budget). Returns false once both rounds are over, or the problem failed.
  MUDSC_ALWAYS_INLINE bool arr_step(Row& v) {
    if (k_ < previous_ && --budget_ >= 0) {
      const int64_t i = free_rows_[k_++];
      const small::TwoSmallest t = small::two_smallest<NB>(c_ + i * kStride, v);
      if (!(t.first < kInf)) return fail();  // a row with no allowed entry
      int64_t j1 = small::lowest_bit(t.first_bits);
      int64_t i0 = y_[j1];
      const bool lowered = t.first < t.second && t.second < kInf;
      if (lowered) {
        small::subtract_at(v, j1, t.second - t.first);
      } else if (t.first == t.second && i0 >= 0) {
        j1 = small::lowest_bit(t.first_bits & (t.first_bits - 1));  // the next column at the minimum
        i0 = y_[j1];
      }
      x_[i] = j1;
      y_[j1] = i;
      if (i0 >= 0) {
        x_[i0] = -1;
        if (lowered) {
          free_rows_[--k_] = i0;  // process the evicted row next
        } else {
          free_rows_[still_free_++] = i0;
        }
      }
      return true;
    }
    // End of a round; rows not visited within the budget stay free.
    for (int64_t q = k_; q < previous_; ++q) free_rows_[still_free_++] = free_rows_[q];
    num_free_ = still_free_;
    if (++arr_round_ == 2) return false;
    begin_arr_round();
    return true;
  }

  /// Start of phase 4, with the final phase-3 potentials.
  void begin_paths(const Row& v) {
    small::store_row(v_mem_, v);
    stats_.free_before_paths = num_free_;
    free_cols_ = 0;
    for (int64_t j = 0; j < n_; ++j) free_cols_ |= static_cast<uint64_t>(y_[j] < 0) << j;
    next_free_ = 0;
  }

  /// Starts the search from the next free row; false when there is none.
  MUDSC_ALWAYS_INLINE bool begin_search(Search<NB>& s) {
    if (next_free_ == num_free_) return false;
    s.start = s.row = free_rows_[next_free_++];
    s.u = 0.0;
    s.dist = small::filled<NB>(kInf);
    s.scanned = 0;
    num_scanned_ = 0;
    return true;
  }

  /// Phase 4, one step: relax one row (one Dijkstra step); at the end of a path,
  /// update the potentials, augment, and start the next search. Returns false
  /// when every row is assigned, or the problem failed.
  MUDSC_ALWAYS_INLINE bool path_step(Search<NB>& s) {
    const small::Relaxed r = small::relax<NB>(c_ + s.row * kStride, v_mem_, s.u, s.dist, pred_, s.row, s.scanned);
    ++stats_.scanned_rows;
    if (!(r.min < kInf)) return fail();
    if (r.at_min & free_cols_) {
      augment(s.start, small::lowest_bit(r.at_min & free_cols_), r.min);
      return begin_search(s);
    }
    // Scan the lowest assigned column at the minimum: continue from its row.
    const int64_t j = small::lowest_bit(r.at_min);
    s.scanned |= uint64_t{1} << j;
    scanned_cols_[num_scanned_] = j;
    scanned_dist_[num_scanned_++] = r.min;
    s.row = y_[j];
    s.u = c_[s.row * kStride + j] - v_mem_[j] - r.min;
    return true;
  }

  bool failed() const { return failed_; }
  const int64_t* col_of_row() const { return x_; }
  const double* potentials() const { return v_mem_; }

 private:
  void begin_arr_round() {
    previous_ = num_free_;
    k_ = 0;
    still_free_ = 0;
    budget_ = arr_budget(n_);
  }

  bool fail() {
    failed_ = true;
    return false;
  }

  /// End of a path at end_col, distance end_dist: scanned columns' potentials move by
  /// (their distance - path length) <= 0, then the path is augmented.
  void augment(int64_t start, int64_t end_col, double end_dist) {
    for (int64_t q = 0; q < num_scanned_; ++q) {
      const int64_t j = scanned_cols_[q];
      v_mem_[j] = v_mem_[j] + scanned_dist_[q] - end_dist;
    }
    free_cols_ &= ~(uint64_t{1} << end_col);
    flip_path(pred_, x_, y_, start, end_col);
  }

  const double* c_;
  int64_t n_;
  SolveStats& stats_;
  alignas(64) double v_mem_[kStride];  // potentials when not in registers (padding: 0)
  alignas(64) double row_of_min_[kStride];  // phase 1: the row of each column minimum
  alignas(64) int64_t pred_[kStride];  // predecessor row of each column in the path tree
  int64_t x_[small::kMaxCols];         // column of each row, -1 = none
  int64_t y_[small::kMaxCols];         // row of each column, -1 = none
  bool multiple_[small::kMaxCols] = {};  // rows offered several columns by phase 1
  int64_t free_rows_[small::kMaxCols];
  int64_t num_free_ = 0;
  int64_t transfer_row_ = 0;  // phase 2 progress
  // Phase 3 progress.
  int arr_round_ = 0;
  int64_t previous_ = 0, k_ = 0, still_free_ = 0, budget_ = 0;
  // Phase 4 progress.
  uint64_t free_cols_ = 0;
  int64_t next_free_ = 0, num_scanned_ = 0;
  int64_t scanned_cols_[small::kMaxCols];
  double scanned_dist_[small::kMaxCols];
  bool failed_ = false;
};

/// The padded signed copy of a small square row-major problem, as SmallSolver reads it.
template <int NB, bool Max, typename T>
void copy_small(const Problem<T>& p, double* c) {
  constexpr int64_t stride = small::kBlock * NB;
  for (int64_t i = 0; i < p.n; ++i) {
    const T* src = p.row(i);
    double* dst = c + i * stride;
    for (int64_t j = 0; j < p.m; ++j) dst[j] = kernels::signed_cost<Max>(src[j]);
    for (int64_t j = p.m; j < stride; ++j) dst[j] = kInf;
  }
}

/// `count` 64-byte aligned buffers of [n, 8 * NB] doubles in the workspace.
template <int NB>
double* small_matrices(Workspace& ws, int64_t n, int count) {
  const size_t size = static_cast<size_t>(n * small::kBlock * NB);  // a multiple of 8: keeps alignment
  ws.small_matrices.resize(count * size + 8);
  double* base = ws.small_matrices.data();
  return base + (-reinterpret_cast<uintptr_t>(base) / sizeof(double)) % 8;
}

/// Outcome of phase 1 for one problem.
enum class SmallCheck { ok, bad_values, infeasible };

/// Phase 1 of a small problem; the general code's checks in its order (bad values,
/// then columns with no allowed entry), returned rather than thrown.
template <bool Max, int NB, typename T>
SmallCheck small_phase1(SmallSolver<NB>& s, small::Row<NB>& v, const Problem<T>& p) {
  const typename SmallSolver<NB>::Minima minima = s.column_minima(v);
  if (minima.suspect_values) {
    for (int64_t i = 0; i < p.n; ++i) {
      if (row_flags<Max>(p.row(i), p.m)) return SmallCheck::bad_values;
    }
  }
  if (minima.empty_column) return SmallCheck::infeasible;
  s.assign_columns(v);
  return SmallCheck::ok;
}

/// Throws the error of a failed phase 1, with the general code's message.
template <bool Max, typename T>
void raise_check(SmallCheck check, const Problem<T>& p) {
  if (check == SmallCheck::bad_values) {
    for (int64_t i = 0; i < p.n; ++i) check_value_flags(row_flags<Max>(p.row(i), p.m), Max, p);
  }
  if (check != SmallCheck::ok) fail_infeasible(Max, p);
}

/// Writes the assignment (and potentials) of a finished small solve; returns its objective.
template <int NB, typename T>
double finish_small(const SmallSolver<NB>& s, const Problem<T>& p, int64_t* col_of_row, double* potentials) {
  double objective = 0.0;
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t j = s.col_of_row()[i];
    col_of_row[i] = j;
    objective += static_cast<double>(p.row(i)[j]);
  }
  if (potentials) std::copy(s.potentials(), s.potentials() + p.m, potentials);
  return objective;
}

/// One small problem, phases in sequence (with phase timings).
template <int NB, bool Max, typename T>
double solve_small(const Problem<T>& p, const SolveOptions& opt, int64_t* col_of_row, Workspace& ws) {
  const double t0 = now_seconds();
  double* c = small_matrices<NB>(ws, p.n, 1);
  copy_small<NB, Max>(p, c);
  SmallSolver<NB> s(c, p.n, ws.stats);
  small::Row<NB> v;
  raise_check<Max>(small_phase1<Max>(s, v, p), p);
  while (s.transfer_step(v)) {
  }
  const double t1 = now_seconds();
  while (s.arr_step(v)) {
  }
  const double t2 = now_seconds();
  if (!s.failed()) {
    s.begin_paths(v);
    Search<NB> search{};
    if (s.begin_search(search)) {
      while (s.path_step(search)) {
      }
    }
  }
  if (s.failed()) fail_infeasible(Max, p);
  ws.stats.seconds_init = t1 - t0;
  ws.stats.seconds_arr = t2 - t1;
  ws.stats.seconds_paths = now_seconds() - t2;
  return finish_small(s, p, col_of_row, opt.out_col_potentials);
}

/// Two small problems of one size: phase 1 of each, then phases 2, 3 and 4 with the
/// steps of the two in turns. Errors in the order of sequential solves: a's first.
/// The workspace's stats are b's counters (no phase timings: the phases overlap).
template <int NB, bool Max, typename T>
void solve_small_pair(const Problem<T>& pa, const Problem<T>& pb, int64_t* col_of_row_a, int64_t* col_of_row_b,
                      double* objective, Workspace& ws) {
  double* ca = small_matrices<NB>(ws, pa.n, 2);
  double* cb = ca + pa.n * small::kBlock * NB;
  copy_small<NB, Max>(pa, ca);
  copy_small<NB, Max>(pb, cb);
  SolveStats stats_a;
  SmallSolver<NB> a(ca, pa.n, stats_a), b(cb, pb.n, ws.stats);
  small::Row<NB> va, vb;
  raise_check<Max>(small_phase1<Max>(a, va, pa), pa);
  const SmallCheck check_b = small_phase1<Max>(b, vb, pb);  // raised once a is solved
  const bool both = check_b == SmallCheck::ok;
  // Each phase: steps of a and b in turns while both have work, then the rest alone.
  // (Written out: the same loops through a helper taking lambdas measured 10% slower.)
  bool run_a = true, run_b = both;
  while (run_a && run_b) {
    run_a = a.transfer_step(va);
    run_b = b.transfer_step(vb);
  }
  while (run_a) run_a = a.transfer_step(va);
  while (run_b) run_b = b.transfer_step(vb);

  run_a = true;
  run_b = both;
  while (run_a && run_b) {
    run_a = a.arr_step(va);
    run_b = b.arr_step(vb);
  }
  while (run_a) run_a = a.arr_step(va);
  while (run_b) run_b = b.arr_step(vb);

  Search<NB> sa{}, sb{};  // filled by begin_search
  run_a = !a.failed();
  run_b = both && !b.failed();
  if (run_a) {
    a.begin_paths(va);
    run_a = a.begin_search(sa);
  }
  if (run_b) {
    b.begin_paths(vb);
    run_b = b.begin_search(sb);
  }
  while (run_a && run_b) {
    run_a = a.path_step(sa);
    run_b = b.path_step(sb);
  }
  while (run_a) run_a = a.path_step(sa);
  while (run_b) run_b = b.path_step(sb);

  if (a.failed()) fail_infeasible(Max, pa);
  objective[0] = finish_small(a, pa, col_of_row_a, nullptr);
  raise_check<Max>(check_b, pb);
  if (b.failed()) fail_infeasible(Max, pb);
  objective[1] = finish_small(b, pb, col_of_row_b, nullptr);
}

/// Rows padded to 8, 16, 32 or 64 columns: the smallest that holds n.
template <typename F>
auto with_blocks(int64_t n, F f) {
  if (n <= 8) return f(std::integral_constant<int, 1>{});
  if (n <= 16) return f(std::integral_constant<int, 2>{});
  if (n <= 32) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 8>{});
}

/// Solves a row-major problem with n <= m.
template <bool Max, typename T>
double solve_row_major(const Problem<T>& p, const SolveOptions& opt, int64_t* col_of_row, Workspace& ws) {
  const int64_t n = p.n, m = p.m;
  const bool warm = opt.init_col_potentials != nullptr;
  if (opt.small_solver && n == m && n > 0 && n <= small::kMaxCols && !warm) {
    return with_blocks(n, [&](auto nb) { return solve_small<decltype(nb)::value, Max>(p, opt, col_of_row, ws); });
  }
  reset_state(ws, n, m);
  if (n == 0) return 0.0;
  SolveStats& st = ws.stats;
  st = SolveStats{};
  const double t0 = now_seconds();
  if (n == m && !warm) {
    column_reduction<Max>(p, ws, ws.multiple);
    reduction_transfer<Max>(p, ws, ws.multiple);
  } else {
    if (warm) std::copy(opt.init_col_potentials, opt.init_col_potentials + m, ws.v.begin());
    row_reduction<Max>(p, ws);
  }
  st.free_after_init = static_cast<int64_t>(ws.free_rows.size());
  const double t1 = now_seconds();
  st.seconds_init = t1 - t0;
  augmenting_row_reduction<Max>(p, ws);
  augmenting_row_reduction<Max>(p, ws);
  st.seconds_arr = now_seconds() - t1;
  st.free_before_paths = static_cast<int64_t>(ws.free_rows.size());
  const double t2 = now_seconds();
  shortest_augmenting_paths<Max>(p, ws);
  st.seconds_paths = now_seconds() - t2;

  double objective = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = ws.col_of_row[i];
    col_of_row[i] = j;
    objective += static_cast<double>(p.row(i)[j]);
  }
  if (opt.out_col_potentials) std::copy(ws.v.begin(), ws.v.end(), opt.out_col_potentials);
  return objective;
}

template <typename T>
std::vector<T>& transposed_buffer(Workspace& ws);
template <>
std::vector<float>& transposed_buffer<float>(Workspace& ws) {
  return ws.transposed_f;
}
template <>
std::vector<double>& transposed_buffer<double>(Workspace& ws) {
  return ws.transposed_d;
}

}  // namespace

std::string shape_string(int64_t rows, int64_t cols) {
  std::ostringstream s;
  s << "(" << rows << ", " << cols << ")";
  return s.str();
}

template <typename T>
double solve(const MatrixView<T>& cost, const SolveOptions& options, int64_t* col_of_row, Workspace& ws) {
  const int64_t n = cost.rows, m = cost.cols;
  if (n < 0 || m < 0) fail(ErrorKind::invalid_argument, "negative cost matrix shape " + shape_string(n, m));
  const bool potentials = options.init_col_potentials || options.out_col_potentials;
  if (potentials && n != m) {
    fail(ErrorKind::invalid_argument, "dual potentials (warm start) need a square cost matrix, got shape " +
                                          shape_string(n, m));
  }
  if (n == 0 || m == 0) {
    std::fill(col_of_row, col_of_row + n, int64_t{-1});
    return 0.0;
  }
  if (options.init_col_potentials) {
    for (int64_t j = 0; j < m; ++j) {
      if (!std::isfinite(options.init_col_potentials[j])) {
        fail(ErrorKind::invalid_value, "initial column potentials must be finite; entry " + std::to_string(j) +
                                           " is not (cost matrix shape " + shape_string(n, m) + ")");
      }
    }
  }
  auto run = [&](const Problem<T>& p, int64_t* out) {
    return options.maximize ? solve_row_major<true>(p, options, out, ws)
                            : solve_row_major<false>(p, options, out, ws);
  };

  // A stride along an axis of length 1 is never used: normalise it so that any
  // view of a single row or column counts as contiguous.
  const int64_t col_stride = m == 1 ? 1 : cost.col_stride;
  const int64_t row_stride = n == 1 ? (col_stride == 1 ? m : 1) : cost.row_stride;
  const bool row_major = col_stride == 1;
  const bool col_major = row_stride == 1;
  if (!row_major && !col_major) {
    fail(ErrorKind::invalid_argument, "cost matrix of shape " + shape_string(n, m) +
                                          " needs a unit stride along one axis (copy it first)");
  }
  // Direct: rows are contiguous and n <= m.
  if (row_major && n <= m) {
    return run(Problem<T>{cost.data, n, m, row_stride, n, m}, col_of_row);
  }
  // Column-major with m <= n: the memory is a row-major m x n problem (the transpose).
  // Potentials would then belong to the other axis, so only without them.
  if (col_major && m <= n && !potentials) {
    std::vector<int64_t>& row_of_col = ws.transposed_assignment;
    row_of_col.resize(m);
    const double objective = run(Problem<T>{cost.data, m, n, col_stride, n, m}, row_of_col.data());
    std::fill(col_of_row, col_of_row + n, int64_t{-1});
    for (int64_t j = 0; j < m; ++j) col_of_row[row_of_col[j]] = j;
    return objective;
  }
  // Otherwise copy into row-major form, transposing when n > m.
  std::vector<T>& buf = transposed_buffer<T>(ws);
  buf.resize(static_cast<size_t>(n) * m);
  if (n <= m) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) buf[i * m + j] = cost.data[i * row_stride + j * col_stride];
    return run(Problem<T>{buf.data(), n, m, m, n, m}, col_of_row);
  }
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < n; ++i) buf[j * n + i] = cost.data[i * row_stride + j * col_stride];
  std::vector<int64_t>& row_of_col = ws.transposed_assignment;
  row_of_col.resize(m);
  const double objective = run(Problem<T>{buf.data(), m, n, n, n, m}, row_of_col.data());
  std::fill(col_of_row, col_of_row + n, int64_t{-1});
  for (int64_t j = 0; j < m; ++j) col_of_row[row_of_col[j]] = j;
  return objective;
}

template <typename T>
void solve_pair(const MatrixView<T>& a, const MatrixView<T>& b, bool maximize, int64_t* col_of_row_a,
                int64_t* col_of_row_b, double* objective, Workspace& ws) {
  // The row-major square problem that solve() would hand to the small solver, if any
  // (strides normalised as there).
  auto small_problem = [](const MatrixView<T>& c, Problem<T>& p) {
    const int64_t n = c.rows;
    if (n != c.cols || n < 1 || n > small::kMaxCols) return false;
    const int64_t col_stride = n == 1 ? 1 : c.col_stride;
    if (col_stride != 1) return false;
    p = Problem<T>{c.data, n, n, n == 1 ? n : c.row_stride, n, n};
    return true;
  };
  Problem<T> pa{}, pb{};
  if (small_problem(a, pa) && small_problem(b, pb) && pa.n == pb.n) {
    with_blocks(pa.n, [&](auto nb) {
      constexpr int NB = decltype(nb)::value;
      if (maximize) {
        solve_small_pair<NB, true>(pa, pb, col_of_row_a, col_of_row_b, objective, ws);
      } else {
        solve_small_pair<NB, false>(pa, pb, col_of_row_a, col_of_row_b, objective, ws);
      }
    });
    return;
  }
  SolveOptions options;
  options.maximize = maximize;
  objective[0] = solve(a, options, col_of_row_a, ws);
  objective[1] = solve(b, options, col_of_row_b, ws);
}

template <typename T>
void solve_batch(const T* data, int64_t batch, int64_t rows, int64_t cols, int64_t batch_stride,
                 int64_t row_stride, int64_t col_stride, bool maximize, const double* init_col_potentials,
                 double* out_col_potentials, int64_t* col_of_row, double* objective, int num_threads) {
  if (batch <= 0) return;
  // Small square problems without potentials go two at a time (solve_pair: the same
  // results, faster); a failing pair is solved again one problem at a time, which
  // tells which of the two failed.
  const bool pairs = !init_col_potentials && !out_col_potentials && rows == cols && rows >= 1 &&
                     rows <= small::kMaxCols;
  const int64_t step = pairs ? 2 : 1;
  const int64_t work_items = (batch + step - 1) / step;
  int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, work_items)));

  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  int64_t error_index = batch;
  std::string error_message;
  ErrorKind error_kind = ErrorKind::invalid_argument;

  auto worker = [&]() {
    Workspace ws;
    auto view = [&](int64_t b) { return MatrixView<T>{data + b * batch_stride, rows, cols, row_stride, col_stride}; };
    auto solve_one = [&](int64_t b) {
      SolveOptions opt;
      opt.maximize = maximize;
      if (init_col_potentials) opt.init_col_potentials = init_col_potentials + b * cols;
      if (out_col_potentials) opt.out_col_potentials = out_col_potentials + b * cols;
      try {
        const double obj = solve(view(b), opt, col_of_row + b * rows, ws);
        if (objective) objective[b] = obj;
      } catch (const LapError& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (b < error_index) {
          error_index = b;
          error_message = e.what();
          error_kind = e.kind();
        }
      }
    };
    for (;;) {
      const int64_t b = next.fetch_add(step);
      if (b >= batch) return;
      if (step == 1 || b + 1 == batch) {
        solve_one(b);
        continue;
      }
      double obj[2];
      try {
        solve_pair(view(b), view(b + 1), maximize, col_of_row + b * rows, col_of_row + (b + 1) * rows, obj, ws);
        if (objective) {
          objective[b] = obj[0];
          objective[b + 1] = obj[1];
        }
      } catch (const LapError&) {
        solve_one(b);
        solve_one(b + 1);
      }
    }
  };
  if (threads == 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
    for (std::thread& t : pool) t.join();
  }
  if (error_index < batch) {
    throw LapError(error_kind, "problem " + std::to_string(error_index) + " of the batch: " + error_message);
  }
}

template double solve<float>(const MatrixView<float>&, const SolveOptions&, int64_t*, Workspace&);
template double solve<double>(const MatrixView<double>&, const SolveOptions&, int64_t*, Workspace&);
template void solve_pair<float>(const MatrixView<float>&, const MatrixView<float>&, bool, int64_t*, int64_t*,
                                double*, Workspace&);
template void solve_pair<double>(const MatrixView<double>&, const MatrixView<double>&, bool, int64_t*, int64_t*,
                                 double*, Workspace&);
template void solve_batch<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                                 const double*, double*, int64_t*, double*, int);
template void solve_batch<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                                  const double*, double*, int64_t*, double*, int);

}  // namespace lap
}  // namespace mudsc
