"""The merge methods (ALGORITHM.md §4–§6) and the one-call API.

Pipeline: :func:`mudsc.collect_stats` (:mod:`mudsc.collect`: activation correlation per group, once) ->
:func:`match` (:mod:`.descent`: per-group unit maps, a :class:`mudsc.MergePlan`) -> ``MergePlan.apply`` (merged
module) -> :func:`mudsc.reset_bn`. :func:`merge` (:mod:`.merge`) runs all of them.

Modules: :mod:`.registry` (the methods, argument checks), :mod:`.weights` (weight vectors under the current maps,
the axis rule), :mod:`.coordinates` (a group or a head tie, solved), :mod:`.descent` (the coordinate descent,
:func:`match`), :mod:`.merge` (:func:`merge`).

Methods (``METHODS``; "start" is the matching the descent starts from, S the similarity it solves on):

========== =========== ======== ===========================================================================
method      activations descent  what it is
========== =========== ======== ===========================================================================
avg         no          no       weight averaging (identity maps)
rebasin     no          yes      Git Re-Basin-style weight matching: LAP on weight Pearson correlation, start
                                 from identity (MuDSC's ``_useperm``)
act-align   yes         no       activation alignment: LAP on activation correlation (``_act_useperm``)
zipit       yes         no       ZipIt!: greedy zip on activation correlation (``_act``)
wzip        no          yes      weight-space zip from identity (``""``)
mudsc-align yes         yes      MuDSC (alignment): start from act-align, LAP on S = b·S_w + (1−b)·S_act
mudsc-zip   yes         yes      MuDSC (zip): start from zipit, zip on S = b·S_w + (1−b)·S_act
========== =========== ======== ===========================================================================

``b`` = ``balance`` (the paper's balanced factor ``fix_rate``): the weight of the **weight-space** term, 0..1.
Groups with ``num_blocks > 1`` (attention heads, GroupNorm groups) use the group solvers
(:func:`mudsc.group_permute_match` / :func:`mudsc.group_zip_match`).
"""

from ..collect import ActivationStats, collect_stats
from .descent import Descent, match
from .merge import MergeResult, merge
from .registry import METHODS, MethodInfo

__all__ = ["METHODS", "ActivationStats", "Descent", "MergeResult", "MethodInfo", "collect_stats", "match", "merge"]
