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
#include <mutex>
#include <sstream>
#include <thread>

#include "lap_kernels.hpp"

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

/// Phase 3: one round of augmenting row reduction over ws.free_rows. Rows still
/// free afterwards are left in ws.free_rows.
template <bool Max, typename T>
void augmenting_row_reduction(const Problem<T>& p, Workspace& ws) {
  std::vector<int64_t>& fr = ws.free_rows;
  const int64_t previous = static_cast<int64_t>(fr.size());
  int64_t k = 0, num_free = 0;
  // Each step assigns a row and lowers a potential or evicts a row; near-ties can
  // make rows evict each other for long. The cap bounds the work; phase 4 finishes.
  // A step costs about one Dijkstra step (one row read), but phase-4 paths grow
  // with m: the cap grows from m/2 visits (m <= 256) to 8m (m >= 4096).
  const int64_t budget_per_col = std::min<int64_t>(8 * 512, std::max<int64_t>(256, p.m));  // in 1/512ths
  int64_t budget = p.m * budget_per_col / 512;
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
  ws.free_rows.clear();
}

/// Solves a row-major problem with n <= m.
template <bool Max, typename T>
double solve_row_major(const Problem<T>& p, const SolveOptions& opt, int64_t* col_of_row, Workspace& ws) {
  const int64_t n = p.n, m = p.m;
  reset_state(ws, n, m);
  if (n == 0) return 0.0;
  const bool warm = opt.init_col_potentials != nullptr;
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
void solve_batch(const T* data, int64_t batch, int64_t rows, int64_t cols, int64_t batch_stride,
                 int64_t row_stride, int64_t col_stride, bool maximize, const double* init_col_potentials,
                 double* out_col_potentials, int64_t* col_of_row, double* objective, int num_threads) {
  if (batch <= 0) return;
  int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, batch)));

  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  int64_t error_index = batch;
  std::string error_message;
  ErrorKind error_kind = ErrorKind::invalid_argument;

  auto worker = [&]() {
    Workspace ws;
    for (;;) {
      const int64_t b = next.fetch_add(1);
      if (b >= batch) return;
      SolveOptions opt;
      opt.maximize = maximize;
      if (init_col_potentials) opt.init_col_potentials = init_col_potentials + b * cols;
      if (out_col_potentials) opt.out_col_potentials = out_col_potentials + b * cols;
      try {
        const double obj = solve(MatrixView<T>{data + b * batch_stride, rows, cols, row_stride, col_stride}, opt,
                                 col_of_row + b * rows, ws);
        if (objective) objective[b] = obj;
      } catch (const LapError& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (b < error_index) {
          error_index = b;
          error_message = e.what();
          error_kind = e.kind();
        }
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
template void solve_batch<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                                 const double*, double*, int64_t*, double*, int);
template void solve_batch<double>(const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                                  const double*, double*, int64_t*, double*, int);

}  // namespace lap
}  // namespace mudsc
