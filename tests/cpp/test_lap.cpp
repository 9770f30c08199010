// ctest for the torch-free LAP core: optimality against brute force (small n),
// a dual certificate (any n), rectangular/transposed/strided views, maximize,
// forbidden entries, infeasibility, bad values, warm start, batch == single.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "lap.hpp"

using mudsc::lap::ErrorKind;
using mudsc::lap::LapError;
using mudsc::lap::MatrixView;
using mudsc::lap::SolveOptions;
using mudsc::lap::Workspace;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

/// Optimum over all injective maps rows -> cols (rows <= cols <= 8), by enumeration.
double brute_force(const std::vector<double>& c, int n, int m, bool maximize) {
  std::vector<int> cols(m);
  std::iota(cols.begin(), cols.end(), 0);
  double best = maximize ? -kInf : kInf;
  do {
    double s = 0;
    for (int i = 0; i < n; ++i) s += c[i * m + cols[i]];
    if (std::isnan(s)) continue;
    best = maximize ? std::max(best, s) : std::min(best, s);
  } while (std::next_permutation(cols.begin(), cols.end()));
  return best;
}

bool is_injective(const std::vector<int64_t>& a, int64_t m) {
  std::vector<char> used(m, 0);
  for (int64_t j : a) {
    if (j < 0) continue;
    if (j >= m || used[j]) return false;
    used[j] = 1;
  }
  return true;
}

template <typename T>
double solve(const std::vector<T>& c, int64_t n, int64_t m, bool maximize, std::vector<int64_t>& out,
             const double* init = nullptr, double* pot = nullptr) {
  Workspace ws;
  SolveOptions opt;
  opt.maximize = maximize;
  opt.init_col_potentials = init;
  opt.out_col_potentials = pot;
  out.assign(n, -2);
  return mudsc::lap::solve(MatrixView<T>{c.data(), n, m, m, 1}, opt, out.data(), ws);
}

void test_brute_force() {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 3000; ++trial) {
    const int n = 1 + rng() % 6, m = n + rng() % 3;
    const bool maximize = rng() % 2;
    const int kind = trial % 3;
    std::vector<double> c(n * m);
    for (double& x : c) {
      if (kind == 0) x = std::uniform_real_distribution<double>(-1, 1)(rng);
      else if (kind == 1) x = double(rng() % 3);  // many ties
      else x = (rng() % 5 == 0) ? (maximize ? -kInf : kInf) : double(rng() % 10);
    }
    const double expected = brute_force(c, n, m, maximize);
    std::vector<int64_t> a;
    if (std::isinf(expected)) {
      bool thrown = false;
      try {
        solve(c, n, m, maximize, a);
      } catch (const LapError& e) {
        thrown = e.kind() == ErrorKind::infeasible;
      }
      CHECK(thrown, "trial %d: infeasible %dx%d not reported", trial, n, m);
      continue;
    }
    const double got = solve(c, n, m, maximize, a);
    CHECK(is_injective(a, m), "trial %d", trial);
    double s = 0;
    for (int i = 0; i < n; ++i) s += c[i * m + a[i]];
    CHECK(std::fabs(s - expected) <= 1e-9 * (1 + std::fabs(expected)), "trial %d %dx%d: got %g want %g", trial, n,
          m, s, expected);
    CHECK(std::fabs(got - s) <= 1e-9 * (1 + std::fabs(s)), "trial %d objective %g vs %g", trial, got, s);
  }
}

/// Dual certificate: u[i] = C[i,x(i)] - v[x(i)] and C - u - v >= -tol everywhere (minimize).
template <typename T>
void test_certificate(int n, bool maximize, bool use_float, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  std::vector<T> c(size_t(n) * n);
  // Correlated rows make a hard problem (many free rows reach phase 4).
  std::vector<double> base(n);
  for (double& b : base) b = g(rng);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) c[size_t(i) * n + j] = T(0.3 * base[j] + g(rng) + (i % 7 == j % 7 ? 0.5 : 0.0));
  std::vector<int64_t> a;
  std::vector<double> v(n);
  solve(c, n, n, maximize, a, nullptr, v.data());
  CHECK(is_injective(a, n), "certificate n=%d", n);
  const double sgn = maximize ? -1 : 1;
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    const double u = sgn * double(c[size_t(i) * n + a[i]]) - v[a[i]];
    for (int j = 0; j < n; ++j) worst = std::min(worst, sgn * double(c[size_t(i) * n + j]) - u - v[j]);
  }
  CHECK(worst > -1e-9, "n=%d maximize=%d float=%d: reduced cost %g < 0", n, maximize, use_float, worst);

  // Warm start from the optimum's potentials after a perturbation gives an optimum again.
  for (T& x : c) x = T(double(x) + 0.05 * g(rng));
  std::vector<int64_t> warm, cold;
  std::vector<double> v2(n);
  const double w = solve(c, n, n, maximize, warm, v.data(), v2.data());
  const double k = solve(c, n, n, maximize, cold);
  CHECK(is_injective(warm, n), "warm n=%d", n);
  CHECK(std::fabs(w - k) <= 1e-9 * (1 + std::fabs(k)), "warm %g vs cold %g (n=%d)", w, k, n);
}

void test_rectangular_and_views() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  for (int trial = 0; trial < 500; ++trial) {
    const int n = 1 + rng() % 7, m = 1 + rng() % 7;
    std::vector<double> c(n * m), ct(n * m);
    for (double& x : c) x = u(rng);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < m; ++j) ct[j * n + i] = c[i * m + j];
    // Expected: brute force on the orientation with rows <= cols.
    const double expected = n <= m ? brute_force(c, n, m, false) : brute_force(ct, m, n, false);
    Workspace ws;
    std::vector<int64_t> a(n);
    // Row-major.
    double got = mudsc::lap::solve(MatrixView<double>{c.data(), n, m, m, 1}, SolveOptions{}, a.data(), ws);
    CHECK(std::fabs(got - expected) < 1e-9, "row-major %dx%d", n, m);
    CHECK(is_injective(a, m), "row-major %dx%d", n, m);
    int assigned = 0;
    for (int64_t j : a) assigned += j >= 0;
    CHECK(assigned == std::min(n, m), "assigned %d of %dx%d", assigned, n, m);
    // Column-major view of the same matrix.
    got = mudsc::lap::solve(MatrixView<double>{ct.data(), n, m, 1, n}, SolveOptions{}, a.data(), ws);
    CHECK(std::fabs(got - expected) < 1e-9, "col-major %dx%d", n, m);
    CHECK(is_injective(a, m), "col-major %dx%d", n, m);
  }
}

void test_errors() {
  std::vector<double> c = {1, 2, std::nan(""), 4};
  std::vector<int64_t> a;
  ErrorKind kind = ErrorKind::infeasible;
  std::string msg;
  try {
    solve(c, 2, 2, false, a);
  } catch (const LapError& e) {
    kind = e.kind();
    msg = e.what();
  }
  CHECK(kind == ErrorKind::invalid_value && msg.find("NaN") != std::string::npos, "NaN: %s", msg.c_str());
  c = {1, -kInf, 3, 4};
  msg.clear();
  try {
    solve(c, 2, 2, false, a);
  } catch (const LapError& e) {
    msg = e.what();
  }
  CHECK(msg.find("-inf") != std::string::npos, "-inf: %s", msg.c_str());
  // Rectangular with NaN goes through the checked ARR path.
  c = {1, 2, 3, 4, 5, std::nan("")};
  msg.clear();
  try {
    solve(c, 2, 3, false, a);
  } catch (const LapError& e) {
    msg = e.what();
  }
  CHECK(msg.find("NaN") != std::string::npos, "rectangular NaN: %s", msg.c_str());
  c = {kInf, kInf, 1, 2};
  kind = ErrorKind::invalid_value;
  try {
    solve(c, 2, 2, false, a);
  } catch (const LapError& e) {
    kind = e.kind();
  }
  CHECK(kind == ErrorKind::infeasible, "all-forbidden row");
}

void test_batch() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0, 1);
  const int B = 37, n = 24;
  std::vector<float> c(size_t(B) * n * n);
  for (float& x : c) x = u(rng);
  std::vector<int64_t> out(B * n);
  std::vector<double> obj(B);
  mudsc::lap::solve_batch<float>(c.data(), B, n, n, n * n, n, 1, true, nullptr, nullptr, out.data(), obj.data(), 3);
  for (int b = 0; b < B; ++b) {
    std::vector<float> one(c.begin() + size_t(b) * n * n, c.begin() + size_t(b + 1) * n * n);
    std::vector<int64_t> a;
    const double s = solve(one, n, n, true, a);
    CHECK(std::fabs(s - obj[b]) < 1e-9, "batch %d: %g vs %g", b, obj[b], s);
    CHECK(std::equal(a.begin(), a.end(), out.begin() + b * n), "batch %d: assignment differs", b);
  }
  // Small squares go in pairs: a failure in the first problem of a pair is attributed to it.
  std::vector<float> d = c;
  d[6 * n * n + 3] = std::nanf("");
  d[9 * n * n + 3] = std::nanf("");
  std::string first;
  try {
    mudsc::lap::solve_batch<float>(d.data(), B, n, n, n * n, n, 1, true, nullptr, nullptr, out.data(), nullptr, 1);
  } catch (const LapError& e) {
    first = e.what();
  }
  CHECK(first.find("problem 6 ") == 0, "batch error: %s", first.c_str());
  // The error of the lowest failing problem is reported, with its index.
  c[5 * n * n + 3] = std::nanf("");
  c[9 * n * n + 3] = std::nanf("");
  std::string msg;
  try {
    mudsc::lap::solve_batch<float>(c.data(), B, n, n, n * n, n, 1, true, nullptr, nullptr, out.data(), nullptr, 2);
  } catch (const LapError& e) {
    msg = e.what();
  }
  CHECK(msg.find("problem 5 ") == 0, "batch error: %s", msg.c_str());
}

/// A small square matrix (the solver's n <= 64 path) of one of several kinds: continuous,
/// many ties, signed zeros, and a share of forbidden entries.
template <typename T>
std::vector<T> small_matrix(std::mt19937& rng, int n, int kind, bool maximize) {
  std::vector<T> c(size_t(n) * n);
  std::uniform_real_distribution<double> u(-1, 1);
  for (T& x : c) {
    if (kind == 0) x = T(u(rng));
    else if (kind == 1) x = T(double(rng() % 3));                  // many ties
    else if (kind == 2) x = T(rng() % 2 ? 0.0 : -0.0);             // all zero, signs mixed
    else x = (rng() % 4 == 0) ? T(maximize ? -kInf : kInf) : T(double(rng() % 10));  // forbidden entries
  }
  return c;
}

/// The small square solver against the general code (SolveOptions::small_solver =
/// false) on the same problem: the same decisions, hence the same assignment, the
/// same objective and potentials equal as numbers, or the same error; ties, signed
/// zeros and forbidden entries included. Plus a dual certificate.
template <typename T>
void test_small_square_vs_general() {
  std::mt19937 rng(21);
  const int sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 50, 63, 64, 65};
  for (int trial = 0; trial < 800; ++trial) {
    const int n = sizes[trial % 16];
    const bool maximize = rng() % 2;
    const int kind = (trial / 16) % 4;
    const std::vector<T> c = small_matrix<T>(rng, n, kind, maximize);
    Workspace ws;
    std::vector<int64_t> a(n, -2), b(n, -2);
    std::vector<double> va(n), vb(n);
    std::string error_a, error_b;
    double obj_a = 0, obj_b = 0;
    SolveOptions opt;
    opt.maximize = maximize;
    opt.out_col_potentials = va.data();
    try {
      obj_a = mudsc::lap::solve(MatrixView<T>{c.data(), n, n, n, 1}, opt, a.data(), ws);
    } catch (const LapError& e) {
      error_a = e.what();
    }
    opt.small_solver = false;
    opt.out_col_potentials = vb.data();
    try {
      obj_b = mudsc::lap::solve(MatrixView<T>{c.data(), n, n, n, 1}, opt, b.data(), ws);
    } catch (const LapError& e) {
      error_b = e.what();
    }
    CHECK(error_a == error_b, "n=%d kind=%d max=%d: error '%s' vs general '%s'", n, kind, maximize, error_a.c_str(),
          error_b.c_str());
    if (!error_a.empty() || !error_b.empty()) continue;
    CHECK(a == b, "n=%d kind=%d max=%d: assignment differs from the general code's", n, kind, maximize);
    CHECK(obj_a == obj_b, "n=%d kind=%d max=%d: objective %.17g vs %.17g", n, kind, maximize, obj_a, obj_b);
    CHECK(va == vb, "n=%d kind=%d max=%d: potentials differ", n, kind, maximize);
    const double sgn = maximize ? -1 : 1;
    double worst = 0;
    for (int i = 0; i < n; ++i) {
      const double u = sgn * double(c[size_t(i) * n + a[i]]) - va[a[i]];
      for (int j = 0; j < n; ++j) worst = std::min(worst, sgn * double(c[size_t(i) * n + j]) - u - va[j]);
    }
    CHECK(worst > -1e-9, "n=%d kind=%d max=%d: reduced cost %g < 0", n, kind, maximize, worst);
  }
}

/// solve_pair == two solve() calls: the same assignments and objectives (bitwise),
/// small squares (interleaved) and the shapes that fall back alike.
template <typename T>
void test_pair() {
  std::mt19937 rng(5);
  Workspace ws;
  for (int trial = 0; trial < 300; ++trial) {
    const int n = trial % 5 == 0 ? 65 : 1 + int(rng() % 64);
    const bool maximize = rng() % 2;
    const std::vector<T> ca = small_matrix<T>(rng, n, trial % 4, maximize);
    const std::vector<T> cb = small_matrix<T>(rng, n, (trial / 4) % 4, maximize);
    std::vector<int64_t> wa, wb;
    std::string want_error;
    double want[2] = {0, 0};
    try {
      want[0] = solve(ca, n, n, maximize, wa);
      want[1] = solve(cb, n, n, maximize, wb);
    } catch (const LapError& e) {
      want_error = e.what();
    }
    std::vector<int64_t> ga(n, -2), gb(n, -2);
    double got[2] = {0, 0};
    std::string error;
    try {
      mudsc::lap::solve_pair(MatrixView<T>{ca.data(), n, n, n, 1}, MatrixView<T>{cb.data(), n, n, n, 1}, maximize,
                             ga.data(), gb.data(), got, ws);
    } catch (const LapError& e) {
      error = e.what();
    }
    CHECK(error == want_error, "pair n=%d: error '%s' vs '%s'", n, error.c_str(), want_error.c_str());
    if (!want_error.empty()) continue;
    CHECK(ga == wa && gb == wb, "pair n=%d max=%d: assignments differ", n, maximize);
    CHECK(got[0] == want[0] && got[1] == want[1], "pair n=%d: objectives %.17g %.17g vs %.17g %.17g", n, got[0],
          got[1], want[0], want[1]);
  }
}

/// solve_pair reports errors as two solve() calls in order would: the first problem's
/// error first, even when the second problem's error is found earlier.
void test_pair_errors() {
  const int n = 3;
  const std::vector<double> fine = {1, 2, 3, 4, 5, 6, 7, 8, 0};
  const std::vector<double> nan = {1, 2, 3, 4, std::nan(""), 6, 7, 8, 0};
  const std::vector<double> empty_row = {kInf, kInf, kInf, 4, 5, 6, 7, 8, 0};  // infeasible, found after phase 1
  const std::vector<double> empty_col = {kInf, 2, 3, kInf, 5, 6, kInf, 8, 0};  // infeasible, found in phase 1
  struct Case {
    const std::vector<double>* a;
    const std::vector<double>* b;
    const char* want;
  } cases[] = {{&nan, &fine, "NaN"},          {&fine, &nan, "NaN"},         {&empty_row, &nan, "infeasible"},
               {&empty_col, &nan, "infeasible"}, {&nan, &empty_col, "NaN"}, {&fine, &empty_row, "infeasible"}};
  Workspace ws;
  for (const Case& k : cases) {
    std::vector<int64_t> a(n), b(n);
    double obj[2];
    std::string msg;
    try {
      mudsc::lap::solve_pair(MatrixView<double>{k.a->data(), n, n, n, 1}, MatrixView<double>{k.b->data(), n, n, n, 1},
                             false, a.data(), b.data(), obj, ws);
    } catch (const LapError& e) {
      msg = e.what();
    }
    CHECK(msg.find(k.want) != std::string::npos, "pair error: want %s, got '%s'", k.want, msg.c_str());
  }
}

}  // namespace

int main() {
  test_brute_force();
  for (int n : {1, 2, 5, 17, 64, 200, 513})
    for (bool maximize : {false, true}) {
      test_certificate<double>(n, maximize, false, 11 + n);
      test_certificate<float>(n, maximize, true, 13 + n);
    }
  test_rectangular_and_views();
  test_errors();
  test_batch();
  test_small_square_vs_general<double>();
  test_small_square_vs_general<float>();
  test_pair<double>();
  test_pair<float>();
  test_pair_errors();
  if (test_support::failures) {
    std::printf("%d check(s) failed\n", test_support::failures);
    return 1;
  }
  std::printf("all LAP core checks passed\n");
  return 0;
}
