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
  for (int64_t j = 0; j < groups; ++j) {
    for (int64_t k = 0; k < groups; ++k) {
      const T* sub = block + j * og * row_stride + k * og;
      int64_t* cols = &inner[(j * groups + k) * og];
      solve(MatrixView<T>{sub, og, og, row_stride, 1}, opt, cols, ws);
      double sum = 0.0;
      for (int64_t t = 0; t < og; ++t) sum += static_cast<double>(sub[t * row_stride + cols[t]]);
      score[j * groups + k] = static_cast<float>(sum / static_cast<double>(og));
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
