// ZipIt!'s greedy zip (ALGORITHM.md §4.c), torch-free, with output identical to
// mudsc/reference/matching.py::zip_match.
//
// Input: a symmetric similarity S[O, O] (float or double, row-major, no NaN, no
// +inf; -inf = forbidden pair), model-major (model i owns rows i*Om..(i+1)*Om-1).
// Repeatedly the first maximiser (row-major over surviving units, ascending
// index) is merged: the lower index survives and keeps its model label, its
// similarities become alpha*min of the two rows (alpha <= 0: it never merges
// again; under Decay::kSameModel only towards clusters the merge would share a
// model with, min alone towards the others), a within-model merge spends that
// model's budget and an exhausted
// budget forbids all pairs among the model's survivors, until K =
// floor(O(1-reduce)+1e-4) units remain.
//
// Work: one O x O working copy (the only O^2 memory), alive masks instead of
// deletions, per-row cached maxima. Per merge: O to update the survivor's row
// and column and to pick the global maximum, plus a row scan for each row whose
// cached maximum sat on a merged unit. Arithmetic in the input type, as the
// reference.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mudsc {
namespace zip {

/// Input that the zip cannot process, or a zip that cannot reach its width.
class ZipError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Which merged similarities decay by alpha.
///  kEveryMerge: all of them (ZipIt!'s rule).
///  kSameModel: only those towards a cluster whose union with the merged one
///    would hold two units of one model. The same as kEveryMerge for two models
///    (every such union repeats a model); for N >= 3 it lets a cluster of twins
///    from models A and B take in C's twin at full similarity.
enum class Decay { kEveryMerge, kSameModel };

/// What check_similarity found in a square matrix.
struct SimilarityCheck {
  bool has_nan = false;
  bool has_pos_inf = false;
  bool infinity_asymmetric = false;  // S[i,j] = -inf but S[j,i] is not
  double max_asymmetry = 0.0;        // max |S[i,j] - S[j,i]| over finite pairs
  double max_abs = 0.0;              // max |S[i,j]| over finite entries
};

/// One cache-blocked pass over S[O, O] (row stride O) for NaN, +inf and symmetry.
template <typename T>
SimilarityCheck check_similarity(const T* sim, int64_t num_units);

/// K = floor(O * (1 - reduce) + 1e-4).
int64_t target_width(int64_t num_units, double reduce);

/// Within-model merges allowed per model: floor(floor((O - K) / N) * beta + 1e-4).
int64_t model_budget(int64_t num_units, int64_t num_models, int64_t width, double beta);

/// Group zip (ALGORITHM.md §4.d) for heads / GroupNorm groups: heads of every
/// model are paired with model 0's by group alignment; then, per model-0 head in
/// order, the N paired heads are zipped down to floor(Og*N*(1-reduce)+1e-4)
/// units, with per-head budgets floor((O-K)/(N*groups)+1e-4) on top of the model
/// budgets. Outputs: head-set by head-set, ascending index inside each. Head-sets
/// are solved one after another on their own (N*Og)^2 copy; they interact only
/// through the model budgets, which are shared.
template <typename T>
double group_zip_match(const T* sim, int64_t num_units, int64_t num_models, int64_t groups, double reduce,
                       double alpha, double beta, Decay decay, int64_t* labels, int64_t* num_outputs);

/// Runs the zip. Writes labels[O] (output unit of each input unit; outputs are
/// the survivors in ascending index) and returns the mean of the merged
/// similarities (0 when nothing merges). *num_outputs receives K.
template <typename T>
double zip_match(const T* sim, int64_t num_units, int64_t num_models, double reduce, double alpha, double beta,
                 Decay decay, int64_t* labels, int64_t* num_outputs);

}  // namespace zip
}  // namespace mudsc
