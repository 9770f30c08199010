// Dense linear assignment (Jonker-Volgenant), torch-free.
//
// Problem: given a cost matrix C (n rows x m columns, n <= m after an optional
// transposition) find an injective map x: rows -> columns minimising
// sum_i C[i, x(i)] (or maximising it, which is solved as minimising -C without
// copying the matrix). Entries equal to +inf (minimise) / -inf (maximise) are
// forbidden; a problem whose rows cannot all be assigned through allowed
// entries is infeasible and raises LapError(kind = infeasible).
//
// The solver keeps the dual column potentials v[m] of the minimisation form
// (cost negated when maximising). An optimal solution satisfies
//     C'[i, j] - u[i] - v[j] >= 0 for all (i, j), equality on assigned pairs,
//     and, when n < m, every unassigned column has v[j] = max_k v[k],
// with u[i] = C'[i, x(i)] - v[x(i)] and C' the signed cost. Passing the final
// potentials of one solve as the initial potentials of the next ("warm start")
// lets a slightly changed square matrix be re-solved with few augmentations.
//
// Layout: row-major with arbitrary row stride, or column-major (solved as the
// transposed problem without a copy when that keeps rows <= columns).
// Arithmetic is in double whatever the element type: float32 matrices are read
// and widened on the fly, never converted as a whole.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mudsc {
namespace lap {

/// Why a problem was rejected.
enum class ErrorKind { invalid_argument, invalid_value, infeasible };

/// Error thrown for bad input; `what()` is a sentence naming the problem and the shape.
class LapError : public std::runtime_error {
 public:
  LapError(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

/// A strided 2-D view (strides in elements). One of the strides must be 1.
template <typename T>
struct MatrixView {
  const T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
};

/// One scanned column of a shortest-path search: its index, saved potential and distance.
struct ScannedColumn {
  int64_t col;
  double potential;
  double distance;
};

/// Counters of the last solve, for benchmarks and tuning (cheap to keep).
struct SolveStats {
  double seconds_init = 0;      // column reduction + transfer, or the first ARR pass (warm/rectangular)
  double seconds_arr = 0;       // remaining augmenting row reduction
  double seconds_paths = 0;     // shortest augmenting paths
  int64_t free_after_init = 0;  // free rows after the initial phase
  int64_t free_before_paths = 0;  // free rows left to phase 4
  int64_t scanned_rows = 0;     // rows relaxed in phase 4 (each one matrix-row read)
};

/// Scratch memory reused across solves (one per thread in the batched path).
struct Workspace {
  SolveStats stats;
  std::vector<double> v;         // column potentials [m]
  std::vector<double> dist;      // shortest-path distances [m]
  std::vector<double> free_mask; // 0 for unassigned columns, +inf for assigned [m]
  std::vector<int64_t> row_of_col;  // y [m], -1 = unassigned
  std::vector<int64_t> col_of_row;  // x [n], -1 = unassigned
  std::vector<int64_t> pred;        // predecessor row of each column in the path tree [m]
  std::vector<int64_t> free_rows;   // queue of unassigned rows
  std::vector<int64_t> free_cols;   // unassigned columns during phase 4
  std::vector<ScannedColumn> scanned;
  std::vector<char> multiple;       // rows offered several columns by column reduction [n]
  std::vector<int64_t> transposed_assignment;  // row_of_col of a transposed solve [m]
  std::vector<float> transposed_f;  // copy used when rows > cols (float input)
  std::vector<double> transposed_d; // copy used when rows > cols (double input)
  std::vector<double> small_matrices;  // padded signed copies of small square problems (<= 2 x 64 x 64)

  /// Frees the matrix-sized copies (kept workspaces should not pin them).
  void release_copies() {
    std::vector<float>().swap(transposed_f);
    std::vector<double>().swap(transposed_d);
  }
};

/// Options of one solve.
struct SolveOptions {
  bool maximize = false;
  /// Initial column potentials [cols] of the minimisation form (warm start), or null.
  /// Square problems only.
  const double* init_col_potentials = nullptr;
  /// Where to write the final column potentials [cols] (square problems), or null.
  double* out_col_potentials = nullptr;
  /// Cold-start square problems of at most 64 rows take the small-problem solver
  /// (lap.cpp, SmallSolver: the same decisions, faster); false forces the general
  /// code, which the tests compare it with.
  bool small_solver = true;
};

/// Solves one problem. Writes col_of_row[rows]: the column assigned to each row,
/// -1 for the rows left unassigned when rows > cols. Returns the objective
/// sum_i C[i, col_of_row[i]] over assigned rows (in the caller's sign).
template <typename T>
double solve(const MatrixView<T>& cost, const SolveOptions& options, int64_t* col_of_row,
             Workspace& workspace);

/// Solves two independent problems as two solve() calls would (same assignments and
/// objectives; on failure the error of the first failing one, in order). Square
/// row-major problems of at most 64 rows are solved together, their steps taken in
/// turns: each step of such a small problem is a chain of dependent operations
/// (a row read, a minimum, its column, the next row), and the processor overlaps
/// the chains of two independent problems. Writes col_of_row_a[a.rows],
/// col_of_row_b[b.rows] and objective[2].
template <typename T>
void solve_pair(const MatrixView<T>& a, const MatrixView<T>& b, bool maximize, int64_t* col_of_row_a,
                int64_t* col_of_row_b, double* objective, Workspace& workspace);

/// Solves `batch` independent problems of the same shape on `num_threads` threads
/// (<= 0: hardware concurrency), one Workspace per thread and no other allocation
/// per problem; square problems of at most 64 rows without potentials two at a
/// time (solve_pair). Problem b starts at data + b * batch_stride (elements). Potentials
/// (square problems only) are [batch, cols], contiguous; either pointer may be null.
/// Writes col_of_row[batch, rows] and objective[batch] (objective may be null).
/// On failure throws the error of the lowest failing problem index, prefixed by it.
template <typename T>
void solve_batch(const T* data, int64_t batch, int64_t rows, int64_t cols, int64_t batch_stride,
                 int64_t row_stride, int64_t col_stride, bool maximize,
                 const double* init_col_potentials, double* out_col_potentials,
                 int64_t* col_of_row, double* objective, int num_threads);

/// "(n, m)" for error messages.
std::string shape_string(int64_t rows, int64_t cols);

}  // namespace lap
}  // namespace mudsc
