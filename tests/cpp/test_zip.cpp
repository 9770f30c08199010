// ctest for the torch-free matching core: the fast greedy zip against a direct
// O(O^3) transcription of ALGORITHM.md §4.c (compacting the matrix per merge),
// on random symmetric matrices with ties and forbidden blocks; group alignment
// on planted block permutations; similarity checks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "group_lap.hpp"
#include "zip.hpp"

namespace {


const float kNegInf = -std::numeric_limits<float>::infinity();

/// Whether the units in a and b together hold two of one model (om units per model).
bool repeats_a_model(const std::vector<int>& a, const std::vector<int>& b, int om) {
  std::vector<int> models;
  for (int v : a) models.push_back(v / om);
  for (int v : b) models.push_back(v / om);
  std::sort(models.begin(), models.end());
  return std::adjacent_find(models.begin(), models.end()) != models.end();
}

/// The spec, literally: compacted matrix, first maximum in row-major order. same_model: the decay applies
/// only towards clusters whose union with the merged one repeats a model (Decay::kSameModel).
bool slow_zip(std::vector<float> s, int o, int n_models, double reduce, double alpha, double beta,
              std::vector<long>& labels, bool same_model = false) {
  const int om = o / n_models;
  const int k_target = static_cast<int>(std::floor(o * (1.0 - reduce) + 1e-4));
  const long budget0 = static_cast<long>(std::floor(std::floor(double(o - k_target) / n_models) * beta + 1e-4));
  std::vector<long> budget(n_models, budget0);
  std::vector<int> alive(o), origin(o);
  std::vector<std::vector<int>> members(o);
  for (int u = 0; u < o; ++u) {
    alive[u] = u;
    origin[u] = u / om;
    members[u] = {u};
    s[u * o + u] = kNegInf;
  }
  int w = o;  // current width of the compacted matrix
  const float a = static_cast<float>(alpha);
  while (w > k_target) {
    int bx = 0, by = 0;
    float best = s[0];
    for (int x = 0; x < w; ++x)
      for (int y = 0; y < w; ++y)
        if (s[x * w + y] > best) {
          best = s[x * w + y];
          bx = x;
          by = y;
        }
    if (best == kNegInf) return false;
    const int lo = std::min(bx, by), hi = std::max(bx, by);
    for (int v : members[alive[hi]]) members[alive[lo]].push_back(v);
    for (int j = 0; j < w; ++j) {
      const bool decays = !same_model || repeats_a_model(members[alive[lo]], members[alive[j]], om);
      const float m = std::min(s[j * w + lo], s[j * w + hi]);
      const float v = !decays ? m : (alpha > 0 ? a * m : kNegInf);
      s[j * w + lo] = v;
      s[lo * w + j] = v;
    }
    s[lo * w + lo] = kNegInf;
    std::vector<float> t;
    t.reserve((w - 1) * (w - 1));
    for (int x = 0; x < w; ++x)
      for (int y = 0; y < w; ++y)
        if (x != hi && y != hi) t.push_back(s[x * w + y]);
    s.swap(t);
    const bool same = origin[lo] == origin[hi];
    alive.erase(alive.begin() + hi);
    origin.erase(origin.begin() + hi);
    --w;
    if (same && --budget[origin[lo]] <= 0) {
      const int m = origin[lo];
      for (int x = 0; x < w; ++x)
        for (int y = 0; y < w; ++y)
          if (origin[x] == m && origin[y] == m) s[x * w + y] = kNegInf;
    }
  }
  labels.assign(o, -1);
  for (int k = 0; k < w; ++k)
    for (int v : members[alive[k]]) labels[v] = k;
  return true;
}

void test_zip_against_spec() {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 1200; ++trial) {
    const bool same_model = trial % 2 == 1;
    const auto rule = same_model ? mudsc::zip::Decay::kSameModel : mudsc::zip::Decay::kEveryMerge;
    const int n_models = 2 + trial % 3, om = 1 + rng() % 12, o = n_models * om;
    const double reduce = std::vector<double>{0.5, 0.25, 0.75}[rng() % 3];
    const double alpha = std::vector<double>{0.5, 1.0, 0.0}[rng() % 3];
    const double beta = (rng() % 2) ? 1.0 : 0.5;
    std::vector<float> s(o * o);
    for (int i = 0; i < o; ++i)
      for (int j = i; j < o; ++j) {
        float v = std::normal_distribution<float>()(rng);
        if (trial % 3 == 0) v = std::round(v * 2) / 2;  // ties
        if (trial % 5 == 0 && i / om == 0 && j / om == 0) v = kNegInf;  // a forbidden block
        s[i * o + j] = s[j * o + i] = v;
      }
    std::vector<long> want;
    const bool ok = slow_zip(s, o, n_models, reduce, alpha, beta, want, same_model);
    std::vector<int64_t> got(o, -7);
    int64_t k = 0;
    bool threw = false;
    try {
      mudsc::zip::zip_match<float>(s.data(), o, n_models, reduce, alpha, beta, rule, got.data(), &k);
    } catch (const mudsc::zip::ZipError&) {
      threw = true;
    }
    CHECK(threw == !ok, "trial %d: spec %s, native %s", trial, ok ? "finished" : "stuck", threw ? "threw" : "finished");
    if (!ok || threw) continue;
    bool same = true;
    for (int u = 0; u < o; ++u) same &= got[u] == want[u];
    CHECK(same, "trial %d (N=%d Om=%d r=%g a=%g b=%g %s): labels differ", trial, n_models, om, reduce, alpha, beta,
          same_model ? "same-model" : "every-merge");
  }
}

void test_group_alignment_planted() {
  std::mt19937 rng(9);
  const int g = 4, og = 8, om = g * og;
  std::vector<int> head(g), inner(og);
  for (int t = 0; t < 20; ++t) {
    for (int i = 0; i < g; ++i) head[i] = i;
    for (int i = 0; i < og; ++i) inner[i] = i;
    std::shuffle(head.begin(), head.end(), rng);
    std::shuffle(inner.begin(), inner.end(), rng);
    // Model-0 unit (j, t) is model-1 unit (head[j], inner[t]): similarity 1 there, noise elsewhere.
    std::vector<double> block(om * om);
    for (double& x : block) x = 0.1 * std::uniform_real_distribution<double>(-1, 1)(rng);
    for (int j = 0; j < g; ++j)
      for (int q = 0; q < og; ++q) block[(j * og + q) * om + head[j] * og + inner[q]] = 1.0;
    std::vector<int64_t> cols(om);
    const double value = mudsc::lap::group_permute_match<double>(block.data(), om, om, g, cols.data());
    bool ok = true;
    for (int j = 0; j < g; ++j)
      for (int q = 0; q < og; ++q) ok &= cols[j * og + q] == head[j] * og + inner[q];
    CHECK(ok, "planted block permutation not recovered (trial %d)", t);
    CHECK(std::fabs(value - 1.0) < 1e-6, "merge value %g", value);
  }
}

void test_similarity_check() {
  std::vector<float> s = {0, 1, 2, 1, 0, 3, 2, 3, 0};
  mudsc::zip::SimilarityCheck c = mudsc::zip::check_similarity<float>(s.data(), 3);
  CHECK(!c.has_nan && !c.has_pos_inf && !c.infinity_asymmetric && c.max_asymmetry == 0, "symmetric");
  s[5] = 3.5f;
  c = mudsc::zip::check_similarity<float>(s.data(), 3);
  CHECK(std::fabs(c.max_asymmetry - 0.5) < 1e-6, "asymmetry %g", c.max_asymmetry);
  s[5] = kNegInf;
  c = mudsc::zip::check_similarity<float>(s.data(), 3);
  CHECK(c.infinity_asymmetric, "one-sided -inf");
  s[5] = std::nanf("");
  CHECK(mudsc::zip::check_similarity<float>(s.data(), 3).has_nan, "NaN");
  s[5] = std::numeric_limits<float>::infinity();
  CHECK(mudsc::zip::check_similarity<float>(s.data(), 3).has_pos_inf, "+inf");
}

}  // namespace

int main() {
  test_zip_against_spec();
  test_group_alignment_planted();
  test_similarity_check();
  if (test_support::failures) {
    std::printf("%d check(s) failed\n", test_support::failures);
    return 1;
  }
  std::printf("all matching core checks passed\n");
  return 0;
}
