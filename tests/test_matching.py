"""Tests of the matching solvers over a similarity of N models' units (ALGORITHM.md §4.a-4.c, §8.1.5-8.1.8).

- ``zip_match``: the native greedy zip must reproduce the reference EXACTLY (same labels in the same order, same
  K, merge value to 1e-6 relative), ties and ``-inf`` blocks included, and both must raise ``ValueError`` together
  when every remaining pair is forbidden. Independent checks (not relying on the reference): a small numpy
  re-implementation written from the §4.c pseudo-code, the K formula, label structure and output order, planted
  permutations, a greedy-matching oracle for ``alpha = 0`` with forbidden within-model pairs, and hand-worked
  examples.
- ``permute_match`` / ``group_permute_match``: native == reference on tie-free matrices; objectives against scipy's
  optimum; planted (block) permutations are recovered.
- Bad input raises ``ValueError`` naming the problem; torch tensors give the same labels as numpy.

Matrices are generated from a hypothesis-drawn seed (numpy Generator) rather than element by element: the
structure (ties, -inf patterns, sizes) is what matters here and the seed keeps generation cheap.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import mudsc

HAS_NATIVE = "native" in mudsc.available_backends()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="the native core did not load")

NEG_INF = -np.inf


def examples(n: int) -> settings:
    """``n`` examples under the default profile (250), scaled with the active profile (e.g. thorough = 2000)."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 250))


# --------------------------------------------------------------------------------------------------------------
# Matrix generators
# --------------------------------------------------------------------------------------------------------------

VALUE_KINDS = ("normal", "uniform", "integer", "rounded", "binary", "constant")
INF_MODES = ("none", "model_block", "all_within", "random")


def symmetrize(x: np.ndarray) -> np.ndarray:
    """``triu(X) + triu(X, 1).T``: an exactly symmetric matrix."""
    return np.triu(x) + np.triu(x, 1).T


def make_sim(seed: int, o: int, n: int, kind: str, inf_mode: str, dtype) -> np.ndarray:
    """A symmetric [O, O] similarity of N models (model-major) with the requested value and -inf structure."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((o, o))
    elif kind == "uniform":
        x = rng.uniform(-1.0, 1.0, (o, o))
    elif kind == "integer":  # many exact ties
        x = rng.integers(-3, 4, (o, o)).astype(np.float64)
    elif kind == "rounded":  # ties and values not exact in binary
        x = np.round(rng.standard_normal((o, o)), 1)
    elif kind == "binary":
        x = rng.integers(0, 2, (o, o)).astype(np.float64)
    elif kind == "constant":  # every pair ties
        x = np.full((o, o), float(rng.choice([0.0, 1.0, -0.5, 0.3])))
    else:  # pragma: no cover
        raise AssertionError(kind)
    s = symmetrize(x.astype(dtype))
    om = o // n
    if inf_mode == "model_block":  # forbid every within-model pair of one model
        m = int(rng.integers(n))
        s[m * om : (m + 1) * om, m * om : (m + 1) * om] = NEG_INF
    elif inf_mode == "all_within":  # forbid every within-model pair of every model
        for m in range(n):
            s[m * om : (m + 1) * om, m * om : (m + 1) * om] = NEG_INF
    elif inf_mode == "random":
        p = float(rng.choice([0.05, 0.2, 0.5]))
        mask = np.triu(rng.random((o, o)) < p, 1)
        mask = mask | mask.T
        s[mask] = NEG_INF
    assert np.array_equal(s, s.T)
    return s


# --------------------------------------------------------------------------------------------------------------
# Helpers and assertions
# --------------------------------------------------------------------------------------------------------------


def target_width(o: int, reduce: float) -> int:
    return int(math.floor(o * (1.0 - reduce) + 1e-4))


def run_zip(sim, n, reduce, alpha, beta, backend, decay="same-model"):
    """The MatchResult, or the ValueError raised."""
    try:
        return mudsc.zip_match(sim, n, reduce, alpha, beta, decay=decay, backend=backend)
    except ValueError as exc:
        return exc


def assert_value_close(got: float, want: float, sim: np.ndarray) -> None:
    """1e-6 relative, with an absolute floor of 1e-12·max|S| so that means near 0 are not held to 0 exactly."""
    finite = np.abs(sim[np.isfinite(sim)])
    scale = float(finite.max()) if finite.size else 1.0
    assert math.isfinite(got), got
    assert abs(got - want) <= 1e-6 * abs(want) + 1e-12 * scale, (got, want)


def assert_labels_structure(res, o: int, k: int) -> None:
    """labels: int64[O], onto range(K), outputs ordered by ascending smallest member index."""
    labels = np.asarray(res.labels)
    assert labels.dtype == np.int64
    assert labels.shape == (o,)
    assert res.num_outputs == k
    if o == 0:
        return
    assert labels.min() >= 0 and labels.max() < k, labels
    np.testing.assert_array_equal(np.unique(labels), np.arange(k))  # every output used
    first = np.array([np.flatnonzero(labels == q)[0] for q in range(k)])
    assert np.all(np.diff(first) > 0), f"outputs not ordered by smallest member: {first}"
    assert labels[0] == 0


def assert_zip_parity(sim, n, reduce, alpha, beta, decay="same-model"):
    """Native and reference agree exactly (or both raise the 'forbidden' ValueError). Returns the result."""
    nat = run_zip(sim, n, reduce, alpha, beta, "native", decay)
    ref = run_zip(sim, n, reduce, alpha, beta, "reference", decay)
    if isinstance(nat, ValueError) or isinstance(ref, ValueError):
        assert isinstance(nat, ValueError) and isinstance(ref, ValueError), (
            f"only one backend raised: native={nat!r} reference={ref!r}"
        )
        assert "forbidden" in str(nat) and "forbidden" in str(ref), (str(nat), str(ref))
        return None
    np.testing.assert_array_equal(nat.labels, ref.labels)
    assert nat.num_outputs == ref.num_outputs
    assert_value_close(nat.merge_value, ref.merge_value, sim)
    assert_labels_structure(nat, sim.shape[0], target_width(sim.shape[0], reduce))
    return nat


def naive_zip(sim: np.ndarray, n: int, reduce: float, alpha: float, beta: float, decay: str = "every-merge"):
    """An independent, mask-based transcription of ALGORITHM.md §4.c (no compaction): (labels, K, value).

    The first maximiser in row-major order over the surviving units (in original index order), the lower index
    survives with its model label, alpha·min on its row and column (alpha <= 0: never merges again), budgets
    floor(floor((O-K)/N)·beta + 1e-4), an exhausted budget forbids all pairs among the model's survivors.
    With ``decay="same-model"`` the entry towards a survivor v is decayed only when the merged cluster and v's
    cluster together hold two units of one model (the plain min otherwise). Raises ValueError when every
    remaining pair is forbidden.
    """
    s = np.array(sim, copy=True)
    dt = s.dtype.type
    o = s.shape[0]
    om = o // n
    k = target_width(o, reduce)
    np.fill_diagonal(s, NEG_INF)
    alive = np.ones(o, dtype=bool)
    origin = np.arange(o) // om if o else np.zeros(0, dtype=np.int64)
    members = {u: [u] for u in range(o)}
    budget = [int(math.floor(math.floor((o - k) / n) * beta + 1e-4))] * n
    values = []
    while alive.sum() > k:
        masked = np.where(alive[:, None] & alive[None, :], s, NEG_INF)
        x, y = divmod(int(np.argmax(masked)), o)
        if masked[x, y] == NEG_INF:
            raise ValueError("naive: every remaining pair is forbidden")
        lo, hi = min(x, y), max(x, y)
        values.append(float(masked[x, y]))
        members[lo] += members.pop(hi)
        new = dt(alpha) * np.minimum(s[lo], s[hi]) if alpha > 0 else np.full(o, NEG_INF, dtype=s.dtype)
        if decay == "same-model":
            for v in np.flatnonzero(alive):
                together = [u // om for u in members[lo] + members.get(int(v), [])]
                if len(set(together)) == len(together):
                    new[v] = min(s[lo, v], s[hi, v])
        s[lo, :] = new
        s[:, lo] = new
        s[lo, lo] = NEG_INF
        alive[hi] = False
        if origin[lo] == origin[hi]:
            m = origin[lo]
            budget[m] -= 1
            if budget[m] <= 0:
                idx = np.flatnonzero(alive & (origin == m))
                s[np.ix_(idx, idx)] = NEG_INF
    labels = np.empty(o, dtype=np.int64)
    for q, u in enumerate(np.flatnonzero(alive)):
        labels[members[int(u)]] = q
    return labels, k, float(np.mean(values)) if values else 0.0


# --------------------------------------------------------------------------------------------------------------
# 1. zip_match: native == reference, exactly
# --------------------------------------------------------------------------------------------------------------

REDUCES = (0.5, 0.25, 0.75)
ALPHAS = (0.5, 1.0, 0.0)
BETAS = (1.0, 0.5)


@needs_native
@examples(200)
@given(
    n=st.sampled_from([2, 3, 4]),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(VALUE_KINDS),
    inf_mode=st.sampled_from(INF_MODES),
    dtype=st.sampled_from([np.float32, np.float64]),
    reduce=st.sampled_from(REDUCES),
    alpha=st.sampled_from(ALPHAS),
    beta=st.sampled_from(BETAS),
    decay=st.sampled_from(["same-model", "every-merge"]),
)
def test_zip_native_matches_reference(n, data, seed, kind, inf_mode, dtype, reduce, alpha, beta, decay):
    om = data.draw(st.one_of(st.integers(1, 8), st.integers(1, 64 // n)), label="om")
    sim = make_sim(seed, n * om, n, kind, inf_mode, dtype)
    note(f"O={n * om} N={n} kind={kind} inf={inf_mode} dtype={np.dtype(dtype).name} r={reduce} a={alpha} b={beta} "
         f"decay={decay}")
    assert_zip_parity(sim, n, reduce, alpha, beta, decay)


LARGE_CASES = [
    # (O, N, dtype, kind, inf_mode, reduce, alpha, beta, seed)
    (256, 2, np.float32, "normal", "none", 0.5, 0.5, 1.0, 1),
    (256, 4, np.float64, "integer", "none", 0.75, 1.0, 0.5, 2),
    (256, 2, np.float32, "rounded", "random", 0.25, 0.5, 1.0, 3),
    (256, 2, np.float64, "constant", "model_block", 0.5, 1.0, 1.0, 4),
    (512, 2, np.float32, "normal", "none", 0.5, 0.5, 1.0, 5),
    (512, 2, np.float64, "rounded", "model_block", 0.5, 0.5, 1.0, 6),
    (512, 4, np.float32, "integer", "random", 0.75, 0.0, 1.0, 7),
]


@needs_native
@pytest.mark.parametrize("o,n,dtype,kind,inf_mode,reduce,alpha,beta,seed", LARGE_CASES)
def test_zip_native_matches_reference_large(o, n, dtype, kind, inf_mode, reduce, alpha, beta, seed):
    sim = make_sim(seed, o, n, kind, inf_mode, dtype)
    assert_zip_parity(sim, n, reduce, alpha, beta)


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 1.0, -2.0])
@pytest.mark.parametrize("n,om", [(2, 5), (3, 4), (4, 16)])
def test_zip_all_equal_matrix(dtype, value, n, om):
    sim = np.full((n * om, n * om), value, dtype=dtype)
    for reduce in REDUCES:
        for alpha in ALPHAS:
            for beta in BETAS:
                assert_zip_parity(sim, n, reduce, alpha, beta)


@needs_native
def test_zip_both_backends_raise_when_everything_is_forbidden():
    # Every off-diagonal pair forbidden: the first step already finds no allowed pair.
    sim = np.full((6, 6), NEG_INF)
    for backend in ("native", "reference"):
        with pytest.raises(ValueError, match="forbidden"):
            mudsc.zip_match(sim, 2, backend=backend)
    # K = floor(2·0.25 + 1e-4) = 0 < 1: the last unit has no partner.
    sim = np.ones((2, 2))
    for backend in ("native", "reference"):
        with pytest.raises(ValueError, match="forbidden"):
            mudsc.zip_match(sim, 2, 0.75, backend=backend)


# --------------------------------------------------------------------------------------------------------------
# 2. zip_match: independent semantics
# --------------------------------------------------------------------------------------------------------------


@examples(120)
@given(
    n=st.sampled_from([1, 2, 3, 4]),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(VALUE_KINDS),
    inf_mode=st.sampled_from(INF_MODES),
    dtype=st.sampled_from([np.float32, np.float64]),
    reduce=st.sampled_from(REDUCES + (0.0, 0.1, 1 / 3)),
    alpha=st.sampled_from(ALPHAS + (0.3, -1.0)),
    beta=st.sampled_from(BETAS + (0.0, 2.0)),
    decay=st.sampled_from(["same-model", "every-merge"]),
)
def test_zip_matches_naive_transcription(backend, n, data, seed, kind, inf_mode, dtype, reduce, alpha, beta, decay):
    """Both backends against a mask-based numpy transcription of the §4.c pseudo-code (small O), both decays."""
    om = data.draw(st.integers(1, 24 // n), label="om")
    o = n * om
    sim = make_sim(seed, o, n, kind, inf_mode, dtype)
    try:
        want = naive_zip(sim, n, reduce, alpha, beta, decay)
    except ValueError:
        with pytest.raises(ValueError, match="forbidden"):
            mudsc.zip_match(sim, n, reduce, alpha, beta, decay=decay, backend=backend)
        return
    got = mudsc.zip_match(sim, n, reduce, alpha, beta, decay=decay, backend=backend)
    np.testing.assert_array_equal(got.labels, want[0])
    assert got.num_outputs == want[1]
    assert_value_close(got.merge_value, want[2], sim)
    assert_labels_structure(got, o, target_width(o, reduce))


@examples(60)
@given(
    n=st.sampled_from([1, 2, 3, 4]),
    om=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
    reduce=st.one_of(st.sampled_from([0.0, 0.5, 0.25, 0.75, 1 / 3, 2 / 3, 0.1, 0.9]), st.floats(0.0, 0.95)),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_zip_width_and_label_structure(backend, n, om, seed, reduce, dtype):
    """K == floor(O·(1 − reduce) + 1e-4); labels map onto range(K), every output used, ordered by smallest member."""
    o = n * om
    sim = make_sim(seed, o, n, "normal", "none", dtype)
    res = run_zip(sim, n, reduce, 0.5, 1.0, backend)
    if isinstance(res, ValueError):  # budgets can leave only forbidden pairs for aggressive reductions
        assert "forbidden" in str(res)
        assume(False)
    k = target_width(o, reduce)
    assert res.num_outputs == k
    assert_labels_structure(res, o, k)
    if k == o:
        np.testing.assert_array_equal(res.labels, np.arange(o))
        assert res.merge_value == 0.0


@pytest.mark.parametrize("o,reduce,k", [(64, 0.5, 32), (60, 1 / 3, 40), (30, 0.9, 3), (12, 0.75, 3), (10, 0.0, 10)])
def test_zip_width_examples(backend, o, reduce, k):
    sim = make_sim(0, o, 2, "normal", "none", np.float64)
    assert mudsc.zip_match(sim, 2, reduce, backend=backend).num_outputs == k


@examples(40)
@given(om=st.integers(1, 32), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_zip_recovers_planted_permutation(backend, om, seed, dtype):
    """Model B is a permuted copy of model A: S = [[0.1·I, P], [Pᵀ, 0.1·I]] + small symmetric noise.

    Every greedy step takes a cross pair of value ≈ 1 (everything else is ≤ 0.1 + noise, and merged rows decay to
    0.5·min ≈ 0), so each output is one unit of A with its image in B, labelled by the A unit (smallest member).
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(om)  # unit i of A is unit perm[i] of B
    p = np.zeros((om, om))
    p[np.arange(om), perm] = 1.0
    eye = 0.1 * np.eye(om)
    sim = np.block([[eye, p], [p.T, eye]]) + symmetrize(rng.uniform(-1e-3, 1e-3, (2 * om, 2 * om)))
    sim = sim.astype(dtype)
    res = mudsc.zip_match(sim, 2, 0.5, 0.5, 1.0, backend=backend)
    assert res.num_outputs == om
    np.testing.assert_array_equal(res.labels[:om], np.arange(om))
    np.testing.assert_array_equal(res.labels[om + perm], np.arange(om))
    assert res.merge_value == pytest.approx(1.0, abs=2e-3)


@examples(60)
@given(
    om=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["normal", "integer", "binary", "constant"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_zip_alpha_zero_within_forbidden_is_greedy_matching(backend, om, seed, kind, dtype):
    """N = 2, r = .5, alpha = 0, all within-model pairs -inf: a greedy maximum-weight bipartite matching.

    Merged units never merge again, so the Om merges are disjoint cross pairs taken in decreasing value, ties by
    (A unit, B unit) ascending (the first maximiser in row-major order; A units precede B units).
    """
    sim = make_sim(seed, 2 * om, 2, kind, "all_within", dtype)
    cross = sim[:om, om:]
    order = sorted(((-float(cross[i, j]), i, j) for i in range(om) for j in range(om)))
    used_a, used_b, partner, picked = set(), set(), {}, []
    for neg, i, j in order:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            partner[i] = j
            picked.append(-neg)
    res = mudsc.zip_match(sim, 2, 0.5, 0.0, 1.0, backend=backend)
    assert res.num_outputs == om
    np.testing.assert_array_equal(res.labels[:om], np.arange(om))
    for i, j in partner.items():
        assert res.labels[om + j] == i
    assert_value_close(res.merge_value, float(np.mean(picked)), sim)


# the random cases of the alpha = 0 properties (both decay rules)
ALPHA_ZERO_CASES = dict(n=st.sampled_from([2, 3, 4]), om=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
                        kind=st.sampled_from(VALUE_KINDS), reduce=st.sampled_from(REDUCES))


@examples(40)
@given(**ALPHA_ZERO_CASES)
def test_zip_alpha_zero_clusters_have_at_most_two_units(backend, n, om, seed, kind, reduce):
    """ZipIt!'s rule with alpha = 0: a merged unit never merges again."""
    sim = make_sim(seed, n * om, n, kind, "none", np.float64)
    res = run_zip(sim, n, reduce, 0.0, 1.0, backend, decay="every-merge")
    if isinstance(res, ValueError):
        assert "forbidden" in str(res)
        return
    assert np.bincount(res.labels).max() <= 2


@examples(40)
@given(**ALPHA_ZERO_CASES)
def test_zip_same_model_alpha_zero_clusters_hold_one_unit_per_model(backend, n, om, seed, kind, reduce):
    """decay="same-model" with alpha = 0: a merge that would put two units of one model together is forbidden
    once a cluster is involved, so a cluster is either units of distinct models or one within-model pair."""
    sim = make_sim(seed, n * om, n, kind, "none", np.float64)
    res = run_zip(sim, n, reduce, 0.0, 1.0, backend, decay="same-model")
    if isinstance(res, ValueError):
        assert "forbidden" in str(res)
        return
    for k in range(res.num_outputs):
        models = np.flatnonzero(res.labels == k) // om
        assert len(set(models.tolist())) == len(models) or len(models) == 2, (k, models)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("reduce", [None, 0.5])
def test_zip_same_model_keeps_twins_together(backend, n, reduce):
    """N copies of one model's units (within-model similarity 0.6 < 1, above alpha·1 = 0.5): with the default
    decay every output is one unit's N twins; for N = 3 ZipIt!'s every-merge decay merges within-model pairs
    before the third twins."""
    om = 4
    base = np.full((om, om), 0.6) + 0.4 * np.eye(om)
    sim = np.tile(base, (n, n))
    res = mudsc.zip_match(sim, n, reduce, backend=backend)
    if reduce is None:
        np.testing.assert_array_equal(res.labels, np.tile(np.arange(om), n))
    clusters = [set((np.flatnonzero(res.labels == k) % om).tolist()) for k in range(res.num_outputs)]
    assert all(len(c) == 1 for c in clusters), clusters  # never two different units in one output
    if n != 3:
        return
    old = mudsc.zip_match(sim, n, reduce, decay="every-merge", backend=backend)  # a·min = 0.5 < 0.6 for C's twin
    assert any(len(set((np.flatnonzero(old.labels == k) % om).tolist())) > 1 for k in range(old.num_outputs))


@examples(30)
@given(om=st.integers(1, 10), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(VALUE_KINDS),
       reduce=st.sampled_from(REDUCES), alpha=st.sampled_from(ALPHAS + (0.3,)))
def test_zip_decays_agree_for_two_models(backend, om, seed, kind, reduce, alpha):
    """For N = 2 every merge that involves a cluster repeats a model, so both decay rules give the same zip."""
    sim = make_sim(seed, 2 * om, 2, kind, "none", np.float64)
    a = run_zip(sim, 2, reduce, alpha, 1.0, backend, "same-model")
    b = run_zip(sim, 2, reduce, alpha, 1.0, backend, "every-merge")
    if isinstance(a, ValueError) or isinstance(b, ValueError):
        assert isinstance(a, ValueError) and isinstance(b, ValueError)
        return
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.merge_value == b.merge_value


def test_zip_decay_is_checked(backend):
    with pytest.raises(ValueError, match="decay must be one of"):
        mudsc.zip_match(np.eye(4), 2, decay="sometimes", backend=backend)


# Hand-worked examples (ALGORITHM.md §4.c; N = 2, r = 0.5 -> K = O/2, a = 0.5, b = 1 -> budget floor(O/4) per model).
#
# Example A, O = 4 (A = {0, 1}, B = {2, 3}), K = 2, budget = floor(floor(2/2)·1) = 1:
#   s01 = .9, s02 = .8, s03 = .1, s12 = .3, s13 = .7, s23 = .1
#   step 1: max .9 at (0, 1) -> {0, 1}, survivor 0; within A: budget A 1 -> 0 -> ban A pairs among survivors {0}.
#           row 0 <- .5·min(row 0, row 1): s02 = .5·min(.8, .3) = .15, s03 = .5·min(.1, .7) = .05
#   step 2: survivors 0, 2, 3: (0,2) = .15, (0,3) = .05, (2,3) = .1 -> max .15 at (0, 2) -> {0, 1, 2}
#   survivors 0, 3 -> labels [0, 0, 0, 1]; merge value = (.9 + .15) / 2 = .525
#
# Example B, all off-diagonal entries 1 (O = 4): first maximiser in row-major order is (0, 1) (within A) ->
#   budget A exhausted; s02 = s03 = .5; step 2: (2, 3) = 1 wins -> labels [0, 0, 1, 1], value (1 + 1)/2 = 1.
#
# Example C, O = 6 (A = {0, 1, 2}, B = {3, 4, 5}), K = 3, budget = floor(floor(3/2)) = 1:
#   within A: s01 = .9, s02 = .85, s12 = .8; within B: s34 = .05, s35 = .04, s45 = .03; every cross pair .1
#   step 1: .9 at (0, 1) -> {0, 1}; budget A -> 0: ban pairs among A survivors {0, 2}: s02 = -inf
#           (without the ban s02 would be .5·min(.85, .8) = .4 and win step 2); s03 = s04 = s05 = .5·.1 = .05
#   step 2: survivors 0, 2, 3, 4, 5; max .1 at (2, 3) (first of the ties (2,3), (2,4), (2,5); row 0 holds .05)
#           -> {2, 3}, survivor 2 (model A); s20 = -inf, s24 = .5·min(.1, .05) = .025, s25 = .5·min(.1, .04) = .02
#   step 3: survivors 0, 2, 4, 5: (0,4) = (0,5) = .05, (4,5) = .03, (2,4) = .025 -> first maximiser (0, 4)
#   survivors 0, 2, 5 -> labels [0, 0, 1, 1, 0, 2]; merge value = (.9 + .1 + .05) / 3 = .35
def _from_upper(o: int, entries: dict) -> np.ndarray:
    s = np.zeros((o, o))
    for (i, j), v in entries.items():
        s[i, j] = s[j, i] = v
    return s


HAND_EXAMPLES = {
    "A": (
        _from_upper(4, {(0, 1): 0.9, (0, 2): 0.8, (0, 3): 0.1, (1, 2): 0.3, (1, 3): 0.7, (2, 3): 0.1}),
        [0, 0, 0, 1],
        0.525,
    ),
    "B": (np.ones((4, 4)), [0, 0, 1, 1], 1.0),
    "C": (
        _from_upper(
            6,
            {
                **{(i, j): 0.1 for i in range(3) for j in range(3, 6)},
                (0, 1): 0.9,
                (0, 2): 0.85,
                (1, 2): 0.8,
                (3, 4): 0.05,
                (3, 5): 0.04,
                (4, 5): 0.03,
            },
        ),
        [0, 0, 1, 1, 0, 2],
        0.35,
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(HAND_EXAMPLES))
def test_zip_hand_worked_examples(backend, name, dtype):
    sim, labels, value = HAND_EXAMPLES[name]
    res = mudsc.zip_match(sim.astype(dtype), 2, 0.5, 0.5, 1.0, backend=backend)
    np.testing.assert_array_equal(res.labels, labels)
    assert res.num_outputs == len(sim) // 2
    assert res.merge_value == pytest.approx(value, rel=1e-6)


def test_zip_output_order_is_smallest_member(backend):
    # Model A = {0, 1, 2}, B = {3, 4, 5}; strongest pairs (2, 3) then (1, 5) then (0, 4):
    # clusters {2, 3}, {1, 5}, {0, 4} -> outputs ordered by smallest member: {0,4}=0, {1,5}=1, {2,3}=2.
    sim = _from_upper(6, {(2, 3): 0.9, (1, 5): 0.8, (0, 4): 0.7})
    res = mudsc.zip_match(sim, 2, backend=backend)
    np.testing.assert_array_equal(res.labels, [0, 1, 2, 2, 0, 1])
    assert res.merge_value == pytest.approx((0.9 + 0.8 + 0.7) / 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_and_unmerge(backend, dtype):
    sim = HAND_EXAMPLES["C"][0]
    res = mudsc.zip_match(sim, 2, backend=backend)  # labels [0, 0, 1, 1, 0, 2]
    u = res.unmerge(dtype)
    assert u.shape == (6, 3) and u.dtype == dtype
    want = np.zeros((6, 3), dtype=dtype)
    want[np.arange(6), res.labels] = 1
    np.testing.assert_array_equal(u, want)
    np.testing.assert_array_equal(u.sum(axis=1), np.ones(6))
    m = res.merge(dtype)
    assert m.shape == (6, 3) and m.dtype == dtype
    sizes = np.array([3, 2, 1], dtype=dtype)
    np.testing.assert_allclose(m, want / (sizes + dtype(1e-5)), rtol=1e-6)
    assert m[0, 0] == pytest.approx(1 / (3 + 1e-5), rel=1e-6)
    # default dtype float32
    assert res.unmerge().dtype == np.float32 and res.merge().dtype == np.float32
    # alignment result: U = [I; P], M = U / (N + 1e-5)
    pr = mudsc.permute_match(sim, 2, backend=backend)
    mp = pr.merge()
    assert mp.shape == (6, 3)
    np.testing.assert_allclose(mp.sum(axis=0), 2 / (2 + 1e-5), rtol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3. permute_match and group_permute_match
# --------------------------------------------------------------------------------------------------------------


def continuous_sim(seed: int, o: int, dtype, symmetric: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((o, o))
    return (symmetrize(x) if symmetric else x).astype(dtype)


@needs_native
@examples(60)
@given(
    n=st.sampled_from([2, 3]),
    groups=st.sampled_from([1, 2, 4, 12]),
    og=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    symmetric=st.booleans(),
)
def test_permute_native_matches_reference(n, groups, og, seed, dtype, symmetric):
    om = groups * og
    sim = continuous_sim(seed, n * om, dtype, symmetric)
    nat = mudsc.permute_match(sim, n, backend="native")
    ref = mudsc.permute_match(sim, n, backend="reference")
    np.testing.assert_array_equal(nat.labels, ref.labels)
    assert nat.num_outputs == ref.num_outputs == om
    assert_value_close(nat.merge_value, ref.merge_value, sim)
    nat = mudsc.group_permute_match(sim, n, groups, backend="native")
    ref = mudsc.group_permute_match(sim, n, groups, backend="reference")
    np.testing.assert_array_equal(nat.labels, ref.labels)
    assert nat.num_outputs == ref.num_outputs == om
    assert_value_close(nat.merge_value, ref.merge_value, sim)


@needs_native
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("og", [5, 8, 9, 16, 33, 64, 65])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_permute_native_matches_reference_head_sizes(groups, og, dtype):
    """Head-sized groups: the native inner problems of up to 64 units are solved two at a time by the small-problem
    solver (an odd count leaves the last one alone); 65 units take the general solver."""
    om = groups * og
    sim = continuous_sim(100 * groups + og, 2 * om, dtype)
    nat = mudsc.group_permute_match(sim, 2, groups, backend="native")
    ref = mudsc.group_permute_match(sim, 2, groups, backend="reference")
    np.testing.assert_array_equal(nat.labels, ref.labels)
    assert nat.num_outputs == ref.num_outputs == om
    assert_value_close(nat.merge_value, ref.merge_value, sim)


def _model_perms(labels: np.ndarray, n: int, om: int) -> list[np.ndarray]:
    """For each model i, ``col[k]`` = unit of model i (local index) matched to model 0's unit k."""
    labels = np.asarray(labels)
    np.testing.assert_array_equal(labels[:om], np.arange(om))
    cols = []
    for i in range(n):
        li = labels[i * om : (i + 1) * om]
        np.testing.assert_array_equal(np.sort(li), np.arange(om))  # a permutation of the outputs
        col = np.empty(om, dtype=np.int64)
        col[li] = np.arange(om)
        cols.append(col)
    return cols


@examples(60)
@given(
    n=st.sampled_from([1, 2, 3, 4]),
    om=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    kind=st.sampled_from(["normal", "integer"]),
)
def test_permute_objective_is_scipy_optimum(backend, n, om, seed, dtype, kind):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n * om, n * om)) if kind == "normal" else rng.integers(-3, 4, (n * om, n * om))
    sim = x.astype(dtype)
    res = mudsc.permute_match(sim, n, backend=backend)
    assert res.num_outputs == om
    cols = _model_perms(res.labels, n, om)
    means = []
    for i in range(1, n):
        block = sim[:om, i * om : (i + 1) * om].astype(np.float64)
        rows, opt_cols = scipy.optimize.linear_sum_assignment(block, maximize=True)
        optimum = block[rows, opt_cols].sum()
        ours = block[np.arange(om), cols[i]].sum()
        assert ours == pytest.approx(optimum, rel=1e-9, abs=1e-9 * np.abs(block).sum())
        means.append(optimum / om)
    want = float(np.mean(means)) if means else 0.0
    assert res.merge_value == pytest.approx(want, rel=1e-6, abs=1e-9)


@examples(50)
@given(
    n=st.sampled_from([2, 3]),
    groups=st.sampled_from([1, 2, 3, 4]),
    og=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_group_permute_is_hierarchical_optimum(backend, n, groups, og, seed, dtype):
    """Whole groups move to whole groups; each inner assignment is optimal on its block; the group pairing is
    optimal for the float32 block-mean scores G[j, k]; the merge value is mean_i mean_j G[j, k(j)]."""
    om = groups * og
    sim = continuous_sim(seed, n * om, dtype)
    res = mudsc.group_permute_match(sim, n, groups, backend=backend)
    assert res.num_outputs == om
    cols = _model_perms(res.labels, n, om)
    values = []
    for i in range(1, n):
        block = sim[:om, i * om : (i + 1) * om].astype(np.float64)
        g = np.empty((groups, groups))
        for j in range(groups):
            for k in range(groups):
                sub = block[j * og : (j + 1) * og, k * og : (k + 1) * og]
                r, c = scipy.optimize.linear_sum_assignment(sub, maximize=True)
                g[j, k] = np.float32(sub[r, c].sum() / og)
        partner = cols[i].reshape(groups, og) // og
        assert np.all(partner == partner[:, :1]), f"groups split: {partner}"
        partner = partner[:, 0]
        np.testing.assert_array_equal(np.sort(partner), np.arange(groups))
        for j in range(groups):
            k = partner[j]
            got = block[j * og + np.arange(og), cols[i][j * og : (j + 1) * og]].sum() / og
            assert got == pytest.approx(g[j, k], rel=1e-6, abs=1e-6)
        r, c = scipy.optimize.linear_sum_assignment(g, maximize=True)
        assert g[np.arange(groups), partner].sum() == pytest.approx(g[r, c].sum(), rel=1e-9, abs=1e-9)
        values.append(g[r, c].mean())
    assert res.merge_value == pytest.approx(float(np.mean(values)), rel=1e-6, abs=1e-7)


@examples(40)
@given(
    groups=st.sampled_from([1, 2, 3, 4, 12]),
    og=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_group_permute_recovers_planted_block_permutation(backend, groups, og, seed, dtype):
    """Model 1 = model 0 with whole groups permuted (sigma) and units permuted inside groups (tau_j)."""
    rng = np.random.default_rng(seed)
    om = groups * og
    sigma = rng.permutation(groups)
    taus = [rng.permutation(og) for _ in range(groups)]
    planted = np.empty(om, dtype=np.int64)  # model-1 unit of model-0 unit j·Og + t
    for j in range(groups):
        planted[j * og : (j + 1) * og] = sigma[j] * og + taus[j]
    cross = rng.uniform(-0.1, 0.1, (om, om))
    cross[np.arange(om), planted] = 1.0
    within = symmetrize(rng.uniform(-0.1, 0.1, (om, om)))
    sim = np.block([[within, cross], [cross.T, within]]).astype(dtype)
    want = np.empty(2 * om, dtype=np.int64)
    want[:om] = np.arange(om)
    want[om + planted] = np.arange(om)
    res = mudsc.group_permute_match(sim, 2, groups, backend=backend)
    np.testing.assert_array_equal(res.labels, want)
    assert res.merge_value == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(mudsc.permute_match(sim, 2, backend=backend).labels, want)


def test_permute_single_model(backend):
    sim = continuous_sim(0, 5, np.float64)
    for res in (mudsc.permute_match(sim, 1, backend=backend), mudsc.group_permute_match(sim, 1, 5, backend=backend)):
        np.testing.assert_array_equal(res.labels, np.arange(5))
        assert res.num_outputs == 5 and res.merge_value == 0.0


def test_permute_reads_only_cross_blocks(backend):
    """NaN / +inf outside the model-0 × model-i blocks are never read (ALGORITHM.md §4.a notes)."""
    sim = continuous_sim(3, 8, np.float64)
    clean = mudsc.permute_match(sim, 2, backend=backend).labels
    clean_g = mudsc.group_permute_match(sim, 2, 2, backend=backend).labels
    dirty = sim.copy()
    dirty[4:, 4:] = np.nan  # model 1's within block
    dirty[4:, :4] = np.inf  # model 1 × model 0 (the transposed block is not read)
    np.testing.assert_array_equal(mudsc.permute_match(dirty, 2, backend=backend).labels, clean)
    np.testing.assert_array_equal(mudsc.group_permute_match(dirty, 2, 2, backend=backend).labels, clean_g)


# --------------------------------------------------------------------------------------------------------------
# 4. Bad input
# --------------------------------------------------------------------------------------------------------------


def _zip(sim, n=2, **kw):
    return lambda backend: mudsc.zip_match(sim, n, backend=backend, **kw)


def _perm(sim, n=2):
    return lambda backend: mudsc.permute_match(sim, n, backend=backend)


def _gperm(sim, n=2, groups=2):
    return lambda backend: mudsc.group_permute_match(sim, n, groups, backend=backend)


def _sym(o=8, seed=0):
    return continuous_sim(seed, o, np.float64, symmetric=True)


def _with(sim, i, j, value, mirror=True):
    s = sim.copy()
    s[i, j] = value
    if mirror:
        s[j, i] = value
    return s


def _asym(scale):
    s = _sym()
    s[1, 6] += scale
    return s


BAD_INPUTS = {
    "zip non-square": (_zip(np.zeros((4, 6))), "square"),
    "perm non-square": (_perm(np.zeros((4, 6))), "square"),
    "gperm non-square": (_gperm(np.zeros((4, 6))), "square"),
    "zip O % N": (_zip(_sym(6), 4), "split into 4 models"),
    "perm O % N": (_perm(_sym(6), 4), "split into 4 models"),
    "gperm O % N": (_gperm(_sym(9), 2, 1), "split into 2 models"),
    "zip num_models 0": (_zip(_sym(), 0), "num_models"),
    "perm num_models float": (_perm(_sym(), 2.0), "num_models"),
    "gperm Om % groups": (_gperm(_sym(12), 2, 4), "groups"),
    "gperm groups 0": (_gperm(_sym(12), 2, 0), "groups"),
    "zip reduce 1.0": (_zip(_sym(), reduce=1.0), "reduce"),
    "zip reduce -0.1": (_zip(_sym(), reduce=-0.1), "reduce"),
    "zip reduce nan": (_zip(_sym(), reduce=float("nan")), "reduce"),
    "zip beta < 0": (_zip(_sym(), beta=-1.0), "beta"),
    "zip NaN": (_zip(_with(_sym(), 2, 5, np.nan)), "NaN"),
    "zip NaN diagonal": (_zip(_with(_sym(), 3, 3, np.nan)), "NaN"),
    "zip +inf": (_zip(_with(_sym(), 2, 5, np.inf)), r"\+inf"),
    "zip +inf float32": (_zip(_with(_sym(), 0, 7, np.inf).astype(np.float32)), r"\+inf"),
    "zip asymmetric": (_zip(_asym(1e-3)), "not symmetric"),
    "zip asymmetric float32": (_zip(_asym(1e-3).astype(np.float32)), "not symmetric"),
    "zip -inf not mirrored": (_zip(_with(_sym(), 1, 6, -np.inf, mirror=False)), "symmetric"),
    "zip 3-D": (_zip(np.zeros((2, 4, 4))), "2-D"),
    "perm 3-D": (_perm(np.zeros((2, 4, 4))), "2-D"),
    "gperm 3-D": (_gperm(np.zeros((2, 4, 4))), "2-D"),
    "zip 1-D": (_zip(np.zeros(4)), "2-D"),
    "perm NaN in read block": (_perm(_with(_sym(), 1, 5, np.nan, mirror=False)), "NaN"),
    "perm +inf in read block": (_perm(_with(_sym(), 1, 5, np.inf, mirror=False)), r"\+inf"),
    "perm NaN in block of model 2": (_perm(_with(_sym(9), 0, 8, np.nan, mirror=False), 3), "NaN"),
    "gperm NaN in read block": (_gperm(_with(_sym(), 2, 4, np.nan, mirror=False)), "NaN"),
    "gperm +inf in read block": (_gperm(_with(_sym(), 2, 4, np.inf, mirror=False)), r"\+inf"),
    "zip complex": (_zip(_sym().astype(np.complex128)), "real"),
    "zip strings": (_zip(np.array([["a", "b"], ["b", "a"]])), "numeric"),
    "zip bad backend": (lambda backend: mudsc.zip_match(_sym(), 2, backend="gpu"), "backend"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error(backend, name):
    call, pattern = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=pattern):
        call(backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearly_symmetric_accepted(dtype, seed):
    """Asymmetry within 1e-7 relative is accepted; the upper triangle is used, and both backends agree."""
    rng = np.random.default_rng(seed)
    o = 24
    base = symmetrize(np.round(rng.standard_normal((o, o)), 1)).astype(dtype)  # ties too
    noise = rng.uniform(-1e-7, 1e-7, (o, o)) * np.abs(base).max()
    sim = (base.astype(np.float64) + noise).astype(dtype)
    if dtype == np.float32:  # make sure float32 rounding left some asymmetry in
        sim[0, 5] = np.nextafter(sim[5, 0], np.float32(np.inf))
    assert not np.array_equal(sim, sim.T)
    upper = symmetrize(sim)
    for reduce, alpha, beta in [(0.5, 0.5, 1.0), (0.75, 1.0, 1.0), (0.25, 0.0, 1.0), (0.75, 1.0, 0.5)]:
        want = run_zip(upper, 2, reduce, alpha, beta, "reference")
        for b in mudsc.available_backends():
            res = run_zip(sim, 2, reduce, alpha, beta, b)
            if isinstance(want, ValueError):
                assert isinstance(res, ValueError) and "forbidden" in str(res), res
                continue
            assert not isinstance(res, ValueError), res
            np.testing.assert_array_equal(res.labels, want.labels)
            assert_value_close(res.merge_value, want.merge_value, upper)


def test_input_is_not_modified(backend):
    sim = make_sim(0, 16, 2, "integer", "random", np.float32)
    before = sim.copy()
    mudsc.zip_match(sim, 2, 0.5, 0.5, 1.0, backend=backend)
    mudsc.permute_match(np.where(np.isinf(sim), 0, sim), 2, backend=backend)
    np.testing.assert_array_equal(sim, before)


# --------------------------------------------------------------------------------------------------------------
# 5. torch tensors
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_input_same_labels_as_numpy(backend, seed):
    sim = make_sim(seed, 32, 2, "rounded", "none", np.float32)
    t = torch.from_numpy(sim.copy())
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    for reduce, alpha in [(0.5, 0.5), (0.75, 1.0)]:
        want = mudsc.zip_match(sim, 2, reduce, alpha, backend=backend)
        got = mudsc.zip_match(t, 2, reduce, alpha, backend=backend)
        np.testing.assert_array_equal(np.asarray(got.labels), want.labels)
        assert got.num_outputs == want.num_outputs and got.merge_value == want.merge_value
        got_t = mudsc.zip_match(t.t(), 2, reduce, alpha, backend=backend)  # non-contiguous view, same values
        np.testing.assert_array_equal(np.asarray(got_t.labels), want.labels)
    cont = continuous_sim(seed, 32, np.float32)
    tc = torch.from_numpy(cont.copy())
    np.testing.assert_array_equal(
        np.asarray(mudsc.permute_match(tc, 4, backend=backend).labels),
        mudsc.permute_match(cont, 4, backend=backend).labels,
    )
    np.testing.assert_array_equal(
        np.asarray(mudsc.group_permute_match(tc, 2, 4, backend=backend).labels),
        mudsc.group_permute_match(cont, 2, 4, backend=backend).labels,
    )
    np.testing.assert_array_equal(
        np.asarray(mudsc.group_permute_match(tc.t(), 2, 4, backend=backend).labels),
        mudsc.group_permute_match(np.ascontiguousarray(cont.T), 2, 4, backend=backend).labels,
    )


# --------------------------------------------------------------------------------------------------------------
# Bad hyper-parameters and empty input (found as bugs by these tests, fixed)
# --------------------------------------------------------------------------------------------------------------


def test_zip_nan_beta_rejected(backend):
    with pytest.raises(ValueError, match="beta"):
        mudsc.zip_match(np.ones((4, 4)), 2, 0.5, 0.5, float("nan"), backend=backend)


@needs_native
def test_zip_infinite_beta_backends_agree():
    sim = np.ones((4, 4))
    outcomes = []
    for backend in ("native", "reference"):
        try:
            res = mudsc.zip_match(sim, 2, 0.75, 1.0, float("inf"), backend=backend)
            outcomes.append((tuple(res.labels.tolist()), res.num_outputs, res.merge_value))
        except ValueError as exc:
            outcomes.append(("ValueError", "beta" in str(exc)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "backend_name,solver",
    [
        pytest.param("native", "permute", marks=needs_native),
        pytest.param("reference", "permute"),
        pytest.param("native", "group_permute", marks=needs_native),
        pytest.param("reference", "group_permute"),
    ],
)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_empty_input_is_an_empty_match(backend_name, solver):
    sim = np.zeros((0, 0))
    if solver == "permute":
        res = mudsc.permute_match(sim, 2, backend=backend_name)
    else:
        res = mudsc.group_permute_match(sim, 2, 1, backend=backend_name)
    assert res.labels.shape == (0,) and res.num_outputs == 0
    assert res.merge_value == 0.0


def test_empty_input_zip(backend):
    res = mudsc.zip_match(np.zeros((0, 0)), 2, backend=backend)
    assert res.labels.shape == (0,) and res.num_outputs == 0 and res.merge_value == 0.0


def _numpy_check(a: np.ndarray) -> dict:
    """check_similarity's findings written with numpy (finite pairs' asymmetry and magnitude in float64)."""
    a64 = a.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(a.T)
    return {
        "has_nan": bool(np.isnan(a).any()),
        "has_pos_inf": bool((a == np.inf).any()),
        "infinity_asymmetric": not np.array_equal(np.isfinite(a), np.isfinite(a.T)),
        "max_asymmetry": float(np.abs(a64 - a64.T)[finite].max()) if finite.any() else 0.0,
        "max_abs": float(np.abs(a64)[finite].max()) if finite.any() else 0.0,
    }


@needs_native
@pytest.mark.parametrize("o", [5, 64, 100, 1100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("defect", ["none", "asym", "nan", "+inf", "-inf pair", "-inf unmirrored"])
def test_native_similarity_check_matches_numpy(o, dtype, defect):
    """The core's scan (tiles with a vectorised fast path, two threads from 1024 units) reports exactly what
    numpy finds, wherever the defect sits (diagonal tiles, inner tiles, the ragged edge)."""
    rng = np.random.default_rng(o)
    a = rng.standard_normal((o, o))
    a = ((a + a.T) / 2).astype(dtype)
    i, j = o // 3, o - 2  # an off-diagonal pair in an inner or edge tile
    if defect == "asym":
        a[i, j] += dtype(1e-3)
    elif defect == "nan":
        a[j, i] = np.nan
    elif defect == "+inf":
        a[i, j] = a[j, i] = np.inf
    elif defect == "-inf pair":
        a[i, j] = a[j, i] = -np.inf
    elif defect == "-inf unmirrored":
        a[i, j] = -np.inf
    a[o // 2, o // 2] = dtype(7.5)  # the largest magnitude, on the diagonal
    got = mudsc._native.core.check_similarity(np.ascontiguousarray(a))
    want = _numpy_check(a)
    for key in ("has_nan", "has_pos_inf", "infinity_asymmetric"):
        if key != "infinity_asymmetric" or not want["has_nan"]:  # a NaN is reported as such, not as an infinity
            assert got[key] == want[key], key
    assert got["max_asymmetry"] == pytest.approx(want["max_asymmetry"], rel=0, abs=0)
    assert got["max_abs"] == want["max_abs"]
