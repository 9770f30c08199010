// Group alignment; see group_lap.hpp.
#include "group_lap.hpp"

#include <string>
#include <vector>

#include "lap.hpp"

namespace mudsc {
namespace lap {

template <typename T>
double group_permute_match(const T* block, int64_t om, int64_t row_stride, int64_t groups, int64_t* col_of_row) {
  if (groups <= 0 || om % groups != 0) {
    throw LapError(ErrorKind::invalid_argument, "group_permute_match: " + std::to_string(om) +
                                                    " units do not split into " + std::to_string(groups) + " groups");
  }
  const int64_t og = om / groups;
  Workspace ws;
  SolveOptions opt;
  opt.maximize = true;
  std::vector<float> score(groups * groups);
  std::vector<int64_t> inner(groups * groups * og);
  // Inner problems two at a time (solve_pair: same results as one at a time, faster
  // for heads of <= 64 units), in row-major order of (j, k).
  auto sub_block = [&](int64_t q) { return block + (q / groups) * og * row_stride + (q % groups) * og; };
  auto score_of = [&](int64_t q, const int64_t* cols) {
    const T* sub = sub_block(q);
    double sum = 0.0;
    for (int64_t t = 0; t < og; ++t) sum += static_cast<double>(sub[t * row_stride + cols[t]]);
    score[q] = static_cast<float>(sum / static_cast<double>(og));
  };
  const int64_t count = groups * groups;
  double objective[2];
  for (int64_t q = 0; q < count; q += 2) {
    int64_t* cols = &inner[q * og];
    const MatrixView<T> first{sub_block(q), og, og, row_stride, 1};
    if (q + 1 < count) {
      const MatrixView<T> second{sub_block(q + 1), og, og, row_stride, 1};
      solve_pair(first, second, true, cols, cols + og, objective, ws);
      score_of(q, cols);
      score_of(q + 1, cols + og);
    } else {
      solve(first, opt, cols, ws);
      score_of(q, cols);
    }
  }
  std::vector<int64_t> partner(groups);
  solve(MatrixView<float>{score.data(), groups, groups, groups, 1}, opt, partner.data(), ws);
  double total = 0.0;
  for (int64_t j = 0; j < groups; ++j) {
    const int64_t k = partner[j];
    total += static_cast<double>(score[j * groups + k]);
    const int64_t* cols = &inner[(j * groups + k) * og];
    for (int64_t t = 0; t < og; ++t) col_of_row[j * og + t] = k * og + cols[t];
  }
  return groups ? total / static_cast<double>(groups) : 0.0;
}

template double group_permute_match<float>(const float*, int64_t, int64_t, int64_t, int64_t*);
template double group_permute_match<double>(const double*, int64_t, int64_t, int64_t, int64_t*);

}  // namespace lap
}  // namespace mudsc
