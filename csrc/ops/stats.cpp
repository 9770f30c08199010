// Device-generic (CompositeExplicitAutograd) parts of the streaming statistics:
//
//   mudsc::stats_update_(moment, sums, xs, channel_dims, shift, block_size, fold_samples, precision=0)
//       -> nonfinite
//       Y, s, nf = stats_prepare(xs, channel_dims, shift)       (per-device kernel: layout read, cast,
//                                                                 zero non-finite, subtract shift)
//       sums   += s                                              (float64 [F])
//       moment += Y^T Y on the block upper triangle              (float64 [F, F])
//     The product runs in Y's dtype (float32: BLAS sgemm, or cuBLAS through the device hook of stats_gemm.hpp)
//     over at most fold_samples samples at a time and is folded into the float64 moment after each, so fp32
//     rounding never accumulates over more than one fold. Features are cut into blocks of block_size; block
//     row i is one GEMM of its features against every feature from the block's first on (so only blocks
//     (i, j) with i <= j are computed: about half the flops of a full Gram matrix for many blocks). Entries
//     below the diagonal blocks are never written, and on CUDA a single IEEE block is one SSYRK that leaves
//     everything below the diagonal unwritten: only the upper triangle is defined, and stats_finalize reads
//     only that. precision (stats_gemm.hpp) picks how float32 products are formed on CUDA (IEEE SGEMM, TF32,
//     or TF32x3 on tensor cores); the CPU and float64 products ignore it. The CUDA products live in
//     cuda/stats_cuda.cu, which registers them for its device type (stats_gemm.hpp); this file only asks the
//     registry, so it compiles the same in every build.
//   mudsc::stats_finalize(moment, sums, shift, count, eps) -> (mean, cov, corr, zero_variance)
//   mudsc::stats_correlation(moment, sums, shift, count, eps) -> (corr, variance, zero_variance)
//       the same correlation written once in float32 ([F, F]), with the float64 variances [F]: what a matching
//       keeps, without the float64 mean, covariance and correlation of stats_finalize (2 * 8 F^2 bytes).
//   The moment is either a float64 [F, F] matrix whose upper triangle is defined, or the packed upper triangle
//   [F (F + 1) / 2], row after row (entry (i, j), i <= j, at i F - i (i - 1) / 2 + j - i: torch.triu_indices
//   order), which holds the same values in half the bytes. The GEMMs are the same; the fold adds only entries on
//   or above the diagonal. The CPU reads and writes it in place; other devices take the generic path.
//       d = sums / n;  mean = shift + d;  cov = sym(moment) / n - d d^T    (population covariance, fp64)
//       corr = cov / max(sigma sigma^T, eps); a zero-variance unit gets 0 off the diagonal and 1 on it.
//     Shifting by (nearly) the mean keeps d small, so the subtraction does not cancel.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_put.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/triu.h>
#include <ATen/ops/triu_indices.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cmath>
#include <tuple>
#include <vector>

#include "stats_gemm.hpp"

namespace mudsc {
namespace ops {
namespace {

constexpr size_t kDeviceTypes = static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES);

// One Gram step slot per device type (nullptr: the generic step); a function-local static, so registrations
// from other translation units' static initializers find it constructed whatever their order.
std::array<GramFoldFn, kDeviceTypes>& gram_folds() {
  static std::array<GramFoldFn, kDeviceTypes> fns{};
  return fns;
}

using PrepareFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(at::TensorList, at::IntArrayRef, const at::Tensor&,
                                                                 bool);

// Channel-first inputs ([B, C, H, W], channel not last) are written feature-major so each channel's samples
// stay contiguous runs; channel-last inputs ([.., C]) sample-major. Both feed the GEMM without a transpose.
bool feature_major_for(const at::Tensor& x, int64_t channel_dim) {
  const int64_t c = channel_dim < 0 ? channel_dim + x.dim() : channel_dim;
  int64_t after = 1;
  for (int64_t d = c + 1; d < x.dim(); ++d) after *= x.size(d);
  return after > 1;
}

// moment[i0 + r, i0 + c] += product[r, c] (float64 += product's dtype). On the CPU one parallel loop over rows:
// a single parallel region per block row (ATen's type-promoting add_ on a strided view costs several, which
// stall for milliseconds each when the cores are shared). Elsewhere the device's add_.
void fold_into(at::Tensor& moment, const at::Tensor& product, int64_t i0) {
  const int64_t ni = product.size(0), nj = product.size(1);
  if (!moment.device().is_cpu() || !moment.is_contiguous()) {
    moment.narrow(0, i0, ni).narrow(1, i0, nj).add_(product);
    return;
  }
  const int64_t F = moment.size(1);
  double* dst = moment.mutable_data_ptr<double>() + i0 * F + i0;
  auto run = [&](auto* src) {
    at::parallel_for(0, ni, std::max<int64_t>(1, 16384 / std::max<int64_t>(nj, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double* d = dst + r * F;
        const auto* q = src + r * nj;
        for (int64_t c = 0; c < nj; ++c) d[c] += static_cast<double>(q[c]);
      }
    });
  };
  if (product.scalar_type() == at::kFloat) {
    run(product.const_data_ptr<float>());
  } else {
    run(product.const_data_ptr<double>());
  }
}

// First element of row i of a packed upper triangle of an F x F matrix (row i holds columns i .. F - 1).
int64_t packed_row(int64_t i, int64_t F) { return i * F - i * (i - 1) / 2; }

// Whether a moment for F features is the packed layout ([F (F + 1) / 2]) rather than [F, F].
bool is_packed(const at::Tensor& moment, int64_t F) { return moment.dim() == 1 && moment.size(0) == F * (F + 1) / 2; }

// packed[(i0 + r, i0 + c)] += product[r, c] for c >= r (the entries on or above the diagonal of the block row
// starting at feature i0; product is [ni, F - i0]). On the CPU one parallel loop over rows; elsewhere one add_
// per row (a fallback: the library packs only CPU moments).
void fold_into_packed(at::Tensor& moment, const at::Tensor& product, int64_t i0, int64_t F) {
  const int64_t ni = product.size(0), nj = product.size(1);
  if (!moment.device().is_cpu()) {
    for (int64_t r = 0; r < ni; ++r) {
      moment.narrow(0, packed_row(i0 + r, F), nj - r).add_(product.select(0, r).narrow(0, r, nj - r));
    }
    return;
  }
  double* base = moment.mutable_data_ptr<double>();
  auto run = [&](auto* src) {
    at::parallel_for(0, ni, std::max<int64_t>(1, 16384 / std::max<int64_t>(nj, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double* d = base + packed_row(i0 + r, F) - r;  // d[c] is entry (i0 + r, i0 + c)
        const auto* q = src + r * nj;
        for (int64_t c = r; c < nj; ++c) d[c] += static_cast<double>(q[c]);
      }
    });
  };
  if (product.scalar_type() == at::kFloat) {
    run(product.const_data_ptr<float>());
  } else {
    run(product.const_data_ptr<double>());
  }
}

// The [F, F] matrix (zero below the diagonal) of a packed upper triangle: the generic paths' view of it.
at::Tensor unpacked(const at::Tensor& packed, int64_t F) {
  const at::Tensor idx = at::triu_indices(F, F, 0, packed.options().dtype(at::kLong));
  at::Tensor full = at::zeros({F, F}, packed.options().dtype(at::kDouble));
  full.index_put_({idx.select(0, 0), idx.select(0, 1)}, packed.to(at::kDouble));
  return full;
}

// The outermost sample axis of an input (its first non-channel axis): narrowing it selects a contiguous
// range of samples, since samples enumerate the non-channel axes in row-major order.
int64_t outer_axis(const at::Tensor& x, int64_t channel_dim) {
  const int64_t c = channel_dim < 0 ? channel_dim + x.dim() : channel_dim;
  return c == 0 ? 1 : 0;
}

// Outer indices per chunk (0: no chunking). Chunking needs every input to split its samples the same way
// (equal outer length) and a fold; a chunk covers fold_samples samples, or one outer index if that holds more.
int64_t outer_chunk(at::TensorList xs, at::IntArrayRef channel_dims, int64_t fold_samples) {
  if (fold_samples <= 0 || xs.empty() || channel_dims.size() != xs.size()) return 0;
  int64_t outer = -1, per = -1;
  for (size_t k = 0; k < xs.size(); ++k) {
    const at::Tensor& x = xs[k];
    if (x.dim() < 2) return 0;
    const int64_t c = channel_dims[k] < 0 ? channel_dims[k] + x.dim() : channel_dims[k];
    if (c < 0 || c >= x.dim()) return 0;  // stats_prepare reports it
    const int64_t a = outer_axis(x, channel_dims[k]);
    const int64_t n = x.size(a);
    const int64_t p = n > 0 && x.size(c) > 0 ? x.numel() / (n * x.size(c)) : 0;
    if ((outer >= 0 && n != outer) || (per >= 0 && p != per) || n == 0 || p == 0) return 0;
    outer = n;
    per = p;
  }
  const int64_t chunk = std::max<int64_t>(1, fold_samples / per);
  return chunk >= outer ? 0 : chunk;
}

}  // namespace

void register_gram_fold(c10::DeviceType device, GramFoldFn fn) {
  const auto k = static_cast<size_t>(device);
  TORCH_CHECK(k < kDeviceTypes, "register_gram_fold: device type ", static_cast<int>(device), " is out of range");
  gram_folds()[k] = fn;
}

GramFoldFn gram_fold_for(c10::DeviceType device) {
  const auto k = static_cast<size_t>(device);
  return k < kDeviceTypes ? gram_folds()[k] : nullptr;
}

// moment [F, F] (float64) += the block upper triangle of Y^T Y and sums [F] (float64) += the column sums of Y,
// for Y = the inputs with NaN/Inf zeroed, less shift (stats_prepare); returns the int64 count of NaN/Inf
// inputs (a 0-d tensor on shift's device). Formulas and chunking in the header comment.
at::Tensor stats_update_(at::Tensor& moment, at::Tensor& sums, at::TensorList xs, at::IntArrayRef channel_dims,
                         const at::Tensor& shift, int64_t block_size, int64_t fold_samples, int64_t precision) {
  TORCH_CHECK(!xs.empty(), "stats_update_: expected at least one input tensor");
  TORCH_CHECK(precision >= kIeee && precision <= kTf32x3, "stats_update_: precision must be 0 (ieee), 1 (tf32) or ",
              "2 (tf32x3), got ", precision);
  const int64_t F = shift.size(0);
  const bool packed = is_packed(moment, F);
  TORCH_CHECK(moment.scalar_type() == at::kDouble &&
                  (packed || (moment.dim() == 2 && moment.size(0) == F && moment.size(1) == F)),
              "stats_update_: moment must be float64 [", F, ", ", F, "] or packed [", F * (F + 1) / 2, "], got ",
              moment.scalar_type(), " ", moment.sizes());
  TORCH_CHECK(!packed || moment.is_contiguous(), "stats_update_: a packed moment must be contiguous");
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.dim() == 1 && sums.size(0) == F,
              "stats_update_: sums must be float64 [", F, "], got ", sums.scalar_type(), " ", sums.sizes());
  TORCH_CHECK(moment.device() == shift.device() && sums.device() == shift.device(),
              "stats_update_: moment, sums and shift must share a device");
  const int64_t c0 = channel_dims.empty() ? -1 : channel_dims[0];
  const bool fm = feature_major_for(xs[0], c0);
  static auto prepare =
      c10::Dispatcher::singleton().findSchemaOrThrow("mudsc::stats_prepare", "").typed<PrepareFn>();
  const int64_t bs = block_size > 0 ? std::min(block_size, F) : F;
  const int64_t chunk = outer_chunk(xs, channel_dims, fold_samples);
  const int64_t outer = chunk > 0 ? xs[0].size(outer_axis(xs[0], channel_dims[0])) : 1;
  const GramFoldFn device_fold = gram_fold_for(shift.device().type());
  at::Tensor nonfinite, scratch;
  // The samples go through prepare + GEMM a chunk of whole outer indices (<= fold_samples samples when one
  // outer index holds fewer) at a time: the prepared copy stays cache-sized and is allocated from the heap
  // instead of a fresh mmap of the whole batch per update (whose first-touch page faults are a visible share of
  // an update at small F).
  for (int64_t a0 = 0; a0 < outer; a0 += std::max<int64_t>(chunk, 1)) {
    std::vector<at::Tensor> part;
    part.reserve(xs.size());
    for (size_t k = 0; k < xs.size(); ++k) {
      part.push_back(chunk > 0 ? xs[k].narrow(outer_axis(xs[k], channel_dims[k]), a0, std::min(chunk, outer - a0))
                               : xs[k]);
    }
    auto [Y, s, nf] = prepare.call(part, channel_dims, shift, fm);
    sums.add_(s);
    nonfinite = nonfinite.defined() ? nonfinite.add_(nf) : nf;
    const int64_t L = fm ? Y.size(1) : Y.size(0);
    if (L == 0 || F == 0) continue;
    const int64_t fold = fold_samples > 0 ? fold_samples : L;
    // A device's own Gram step (cuBLAS on CUDA, stats_gemm.hpp) when it takes these inputs, else the generic one.
    if (!packed && device_fold != nullptr && device_fold(moment, Y, fm, bs, fold, precision)) continue;
    // One reused buffer for a block row of the product: [ni, F - i0] <= [bs, F] in Y's dtype.
    if (!scratch.defined()) scratch = at::empty({bs * F}, Y.options());
    for (int64_t l0 = 0; l0 < L; l0 += fold) {
      const int64_t nl = std::min(fold, L - l0);
      // rows(i0, n): the [n, nl] slice of features i0 .. i0 + n - 1 (a strided view, no copy).
      auto rows = [&](int64_t i0, int64_t n) {
        return fm ? Y.narrow(0, i0, n).narrow(1, l0, nl) : Y.narrow(0, l0, nl).narrow(1, i0, n).t();
      };
      for (int64_t i0 = 0; i0 < F; i0 += bs) {
        const int64_t ni = std::min(bs, F - i0), nj = F - i0;
        // Block row i: features i0.. against every feature from i0 on, as one GEMM.
        at::Tensor product = scratch.narrow(0, 0, ni * nj).view({ni, nj});
        at::mm_out(product, rows(i0, ni), rows(i0, nj).t());
        if (packed) {
          fold_into_packed(moment, product, i0, F);
        } else {
          fold_into(moment, product, i0);
        }
      }
    }
  }
  return nonfinite;
}

namespace {

// The per-feature part of the finalization, from a contiguous float64 CPU moment (full or packed): d = sums / n,
// the variances (exactly 0 for a zero-variance unit), sigma, and where row i's entries start (entry (i, j),
// j >= i, is m[row[i] + j] in both layouts).
struct Diagonal {
  std::vector<double> d, var, sigma;
  std::vector<int64_t> row;
  at::Tensor zero;  // bool [F]
};

Diagonal diagonal_cpu(const at::Tensor& moment, const at::Tensor& sums, int64_t F, double n, bool packed) {
  Diagonal g;
  g.d.resize(F);
  g.var.resize(F);
  g.sigma.resize(F);
  g.row.resize(F);
  g.zero = at::empty({F}, moment.options().dtype(at::kBool));
  const at::Tensor s64 = sums.to(at::kDouble).contiguous();
  const double* sp = s64.const_data_ptr<double>();
  const double* m = moment.const_data_ptr<double>();
  bool* zp = g.zero.mutable_data_ptr<bool>();
  for (int64_t i = 0; i < F; ++i) {
    g.row[i] = packed ? packed_row(i, F) - i : i * F;
    g.d[i] = sp[i] / n;
    const double second = m[g.row[i] + i] / n;
    const double raw = second - g.d[i] * g.d[i];
    zp[i] = raw <= second * 1e-13;
    g.var[i] = zp[i] ? 0.0 : std::max(raw, 0.0);
    g.sigma[i] = std::sqrt(g.var[i]);
  }
  return g;
}

// visit(i, j, c, r) once for every i <= j with the covariance c and the correlation r of features i and j,
// over 32 x 32 tiles of the upper triangle in parallel (the visitor writes (i, j) and its mirror). Tile row k
// (features 32k .. 32k + 31 against every later feature) goes with tile row tiles - 1 - k, so that every task
// holds the same work and two threads split the triangle evenly (contiguous ranges of tile rows do not: the
// first half of the rows holds three quarters of the triangle). A row's segment of a tile is computed into a
// local buffer first, a loop without stores to other rows, which the compiler vectorizes.
template <class Visit>
void visit_upper_cpu(const at::Tensor& moment, const Diagonal& g, int64_t F, double n, double eps, Visit visit) {
  const double* m = moment.const_data_ptr<double>();
  const bool* zp = g.zero.const_data_ptr<bool>();
  const double* dp = g.d.data();
  const double* sp = g.sigma.data();
  constexpr int64_t T = 32;
  const int64_t tiles = (F + T - 1) / T;
  auto tile_row = [&](int64_t ti) {
    double cs[T], rs[T];
    const int64_t i0 = ti * T, i1 = std::min(F, i0 + T);
    for (int64_t j0 = i0; j0 < F; j0 += T) {
      const int64_t j1 = std::min(F, j0 + T);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t jb = std::max(j0, i), w = j1 - jb;
        const double* mi = m + g.row[i] + jb;
        const double di = dp[i], si = sp[i];
        for (int64_t k = 0; k < w; ++k) {
          cs[k] = mi[k] / n - di * dp[jb + k];
          rs[k] = cs[k] / std::max(si * sp[jb + k], eps);
        }
        for (int64_t k = 0; k < w; ++k) {
          const int64_t j = jb + k;
          if (j == i) {
            visit(i, j, g.var[i], zp[i] ? 1.0 : g.var[i] / std::max(si * si, eps));
          } else {
            visit(i, j, cs[k], (zp[i] || zp[j]) ? 0.0 : rs[k]);
          }
        }
      }
    }
  };
  at::parallel_for(0, (tiles + 1) / 2, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      tile_row(p);
      if (tiles - 1 - p != p) tile_row(tiles - 1 - p);
    }
  });
}

// stats_finalize on a contiguous float64 CPU moment: the formulas element by element in one pass over the
// upper triangle, instead of a dozen full-matrix ATen passes, each a full read and write of [F, F] (the MuDSC
// descent finalizes once per group visit).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finalize_cpu(const at::Tensor& moment,
                                                                        const at::Tensor& sums,
                                                                        const at::Tensor& shift, int64_t count,
                                                                        double eps, bool packed) {
  const int64_t F = shift.size(0);
  const double n = static_cast<double>(count);
  const Diagonal g = diagonal_cpu(moment, sums, F, n, packed);
  const auto opts = moment.options().dtype(at::kDouble);
  at::Tensor mean = shift.to(at::kDouble).add(at::from_blob(const_cast<double*>(g.d.data()), {F}, opts));
  at::Tensor cov = at::empty({F, F}, opts), corr = at::empty({F, F}, opts);
  double* cp = cov.mutable_data_ptr<double>();
  double* rp = corr.mutable_data_ptr<double>();
  visit_upper_cpu(moment, g, F, n, eps, [&](int64_t i, int64_t j, double c, double r) {
    cp[i * F + j] = c;
    cp[j * F + i] = c;
    rp[i * F + j] = r;
    rp[j * F + i] = r;
  });
  return {mean, cov, corr, g.zero};
}

bool native_cpu_layout(const at::Tensor& moment, const at::Tensor& sums, const at::Tensor& shift) {
  return moment.device().is_cpu() && moment.scalar_type() == at::kDouble && moment.is_contiguous() &&
         sums.device().is_cpu() && shift.device().is_cpu();
}

void check_finalize_args(const char* op, const at::Tensor& moment, const at::Tensor& sums, const at::Tensor& shift,
                         int64_t count) {
  TORCH_CHECK(count > 0, op, ": no samples were accumulated");
  const int64_t F = shift.size(0);
  TORCH_CHECK((is_packed(moment, F) || (moment.dim() == 2 && moment.size(0) == F && moment.size(1) == F)) &&
                  sums.numel() == F,
              op, ": moment [", F, ", ", F, "] or packed [", F * (F + 1) / 2, "] and sums [", F,
              "] expected, got ", moment.sizes(), " and ", sums.sizes());
}

}  // namespace

// (mean [F], cov [F, F], corr [F, F], zero_variance [F]) of `count` samples from their shifted moment and sums
// (float64 out whatever the inputs; formulas in the header comment). Only moment's upper triangle is read.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stats_finalize(const at::Tensor& moment,
                                                                          const at::Tensor& sums,
                                                                          const at::Tensor& shift, int64_t count,
                                                                          double eps) {
  check_finalize_args("stats_finalize", moment, sums, shift, count);
  const int64_t F = shift.size(0);
  const bool packed = is_packed(moment, F);
  if (native_cpu_layout(moment, sums, shift)) {
    return finalize_cpu(moment, sums, shift, count, eps, packed);
  }
  const double n = static_cast<double>(count);
  const at::Tensor m = packed ? unpacked(moment, F) : moment.to(at::kDouble);
  const at::Tensor upper = at::triu(m);
  const at::Tensor second = upper.add(at::triu(m, 1).t()).div_(n);  // E[(x - shift)(x - shift)^T]
  const at::Tensor d = sums.to(at::kDouble).div(n);
  const at::Tensor mean = shift.to(at::kDouble).add(d);
  at::Tensor cov = second.sub(at::outer(d, d));
  const at::Tensor raw_var = cov.diagonal();
  // Zero variance: exactly none left after the shift, or only rounding noise of the shifted second moment.
  const at::Tensor zero_var = raw_var.le(second.diagonal().mul(1e-13));
  const at::Tensor var = raw_var.clamp_min(0.0).masked_fill(zero_var, 0.0);
  cov.diagonal().copy_(var);
  const at::Tensor sigma = var.sqrt();
  at::Tensor corr = cov.div(at::outer(sigma, sigma).clamp_min(eps));
  const at::Tensor dead = zero_var.unsqueeze(1).logical_or(zero_var.unsqueeze(0));
  corr.masked_fill_(dead, 0.0);
  corr.diagonal().masked_fill_(zero_var, 1.0);
  return {mean, cov, corr, zero_var};
}

// (corr float32 [F, F], variance float64 [F], zero_variance bool [F]): stats_finalize's correlation rounded once
// to float32 and the diagonal of its covariance, without its float64 [F, F] outputs. The CPU writes the float32
// matrix straight from the moment; elsewhere it is stats_finalize's, converted.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_correlation(const at::Tensor& moment, const at::Tensor& sums,
                                                                 const at::Tensor& shift, int64_t count,
                                                                 double eps) {
  check_finalize_args("stats_correlation", moment, sums, shift, count);
  const int64_t F = shift.size(0);
  if (native_cpu_layout(moment, sums, shift)) {
    const double n = static_cast<double>(count);
    const Diagonal g = diagonal_cpu(moment, sums, F, n, is_packed(moment, F));
    at::Tensor corr = at::empty({F, F}, moment.options().dtype(at::kFloat));
    float* rp = corr.mutable_data_ptr<float>();
    visit_upper_cpu(moment, g, F, n, eps, [&](int64_t i, int64_t j, double, double r) {
      const float v = static_cast<float>(r);
      rp[i * F + j] = v;
      rp[j * F + i] = v;
    });
    at::Tensor var = at::empty({F}, moment.options().dtype(at::kDouble));
    std::copy(g.var.begin(), g.var.end(), var.mutable_data_ptr<double>());
    return {corr, var, g.zero};
  }
  auto [mean, cov, corr, zero] = stats_finalize(moment, sums, shift, count, eps);
  return {corr.to(at::kFloat), cov.diagonal().clone(), zero};
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY_IMPL(mudsc, CompositeExplicitAutograd, m) {
  m.impl("stats_update_", &mudsc::ops::stats_update_);
  m.impl("stats_finalize", &mudsc::ops::stats_finalize);
  m.impl("stats_correlation", &mudsc::ops::stats_correlation);
}
