// Hierarchical group alignment (ALGORITHM.md §4.b), torch-free: the block of
// model 0 against model i (Om x Om, maximised) is cut into groups x groups
// sub-blocks of Og x Og (heads, GroupNorm groups). Each sub-block gets a LAP
// scored by its mean matched value G[j, k] (float64 sum / Og, rounded to the
// input type's float32 score as the reference does); one outer LAP on G pairs
// group j of model 0 with group k(j) of model i; unit j*Og + t of model 0 is
// matched to unit k(j)*Og + inner(t) of model i.
#pragma once

#include <cstdint>

namespace mudsc {
namespace lap {

/// block: Om x Om, row stride `row_stride` (elements), unit column stride.
/// Writes col_of_row[Om] (model-i unit matched to each model-0 unit) and returns
/// the mean over groups of G[j, k(j)].
template <typename T>
double group_permute_match(const T* block, int64_t om, int64_t row_stride, int64_t groups, int64_t* col_of_row);

}  // namespace lap
}  // namespace mudsc
