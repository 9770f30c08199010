"""Group zip (ALGORITHM.md §4.d): native == reference exactly, structure of the result, bad input.

Head pairing is an LAP; with tied similarities two optimal pairings can differ between scipy and the native
solver, so the exactness tests use continuous random matrices (exact ties inside the greedy zip are covered by
tests/test_matching.py and the ctest).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mudsc


def symmetric(rng, o, dtype):
    x = rng.standard_normal((o, o)).astype(dtype)
    return np.triu(x) + np.triu(x, 1).T


@given(
    seed=st.integers(0, 2**32 - 1),
    num_models=st.sampled_from([2, 3]),
    groups=st.sampled_from([1, 2, 3, 4]),
    og=st.integers(1, 6),
    reduce=st.sampled_from([0.5, 0.25, 0.75]),
    alpha=st.sampled_from([0.5, 1.0, 0.0]),
    beta=st.sampled_from([1.0, 0.5]),
    dtype=st.sampled_from([np.float32, np.float64]),
    forbid=st.booleans(),
    decay=st.sampled_from(["same-model", "every-merge"]),
)
def test_native_equals_reference(seed, num_models, groups, og, reduce, alpha, beta, dtype, forbid, decay):
    rng = np.random.default_rng(seed)
    o = num_models * groups * og
    s = symmetric(rng, o, dtype)
    if forbid:  # forbid every pair inside model 0's first head
        s[:og, :og] = -np.inf
    out = []
    for backend in ("reference", "native"):
        try:
            out.append(mudsc.group_zip_match(s, num_models, groups, reduce, alpha, beta, decay=decay,
                                             backend=backend))
        except ValueError as exc:
            assert "forbidden" in str(exc)
            out.append(None)
    ref, nat = out
    assert (ref is None) == (nat is None)
    if ref is None:
        return
    np.testing.assert_array_equal(nat.labels, ref.labels)
    assert nat.num_outputs == ref.num_outputs
    assert nat.merge_value == pytest.approx(ref.merge_value, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_three_copies_of_one_model_zip_twin_by_twin(backend):
    """Heads of 3 copies of one model (within-head similarity 0.6, twins 1): every output is one unit's three
    twins with the default decay (ZipIt!'s every-merge decay pairs units inside a head before the third twin)."""
    groups, og, n = 2, 3, 3
    om = groups * og
    base = np.full((om, om), 0.1) + 0.5 * np.kron(np.eye(groups), np.ones((og, og))) + 0.4 * np.eye(om)
    sim = np.tile(base, (n, n))
    res = mudsc.group_zip_match(sim, n, groups, backend=backend)
    assert res.num_outputs == om
    for k in range(om):
        members = np.flatnonzero(res.labels == k)
        assert len(set((members % om).tolist())) == 1 and len(members) == n, (k, members)
    old = mudsc.group_zip_match(sim, n, groups, decay="every-merge", backend=backend)
    assert any(len(set((np.flatnonzero(old.labels == k) % om).tolist())) > 1 for k in range(om))


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_every_output_head_keeps_its_width(backend):
    """Each head-set yields exactly R = floor(Og·N·(1-r)+1e-4) outputs, contiguous in the output order, and
    every output cluster lies inside one head-set (the paired heads)."""
    rng = np.random.default_rng(7)
    n_models, groups, og, reduce = 2, 4, 8, 0.5
    s = symmetric(rng, n_models * groups * og, np.float32)
    res = mudsc.group_zip_match(s, n_models, groups, reduce=reduce, backend=backend)
    r = math.floor(og * n_models * (1 - reduce) + 1e-4)
    assert res.num_outputs == groups * r
    assert sorted(set(res.labels.tolist())) == list(range(groups * r))
    om = groups * og
    heads = mudsc.group_permute_match(s, n_models, groups, backend=backend)
    for j in range(groups):
        outputs = set(range(j * r, (j + 1) * r))
        members = np.flatnonzero(np.isin(res.labels, list(outputs)))
        # model 0's units of head j and the units of the model-1 head paired with it
        model1_head = heads.labels[om + np.arange(om)]
        expected0 = set(range(j * og, (j + 1) * og))
        expected1 = {om + u for u in range(om) if model1_head[u] // og == j}
        assert set(members.tolist()) == expected0 | expected1


def test_planted_heads_are_zipped_together():
    """Model 1 = model 0 with heads and units inside heads permuted: zipping pairs each unit with its copy."""
    rng = np.random.default_rng(3)
    groups, og = 3, 4
    om = groups * og
    head = rng.permutation(groups)
    inner = [rng.permutation(og) for _ in range(groups)]
    partner = np.empty(om, dtype=np.int64)  # model-1 unit of each model-0 unit
    for j in range(groups):
        partner[j * og : (j + 1) * og] = head[j] * og + inner[j]
    s = 0.05 * symmetric(rng, 2 * om, np.float64)
    s[np.arange(om), om + partner] = 1.0
    s[om + partner, np.arange(om)] = 1.0
    for backend in ("native", "reference"):
        res = mudsc.group_zip_match(s, 2, groups, backend=backend)
        assert np.array_equal(res.labels[:om], res.labels[om + partner])
        assert res.merge_value == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_models=2, groups=5), "groups"),
        (dict(num_models=5, groups=1), "models"),
        (dict(num_models=2, groups=2, reduce=1.0), "reduce"),
    ],
)
def test_bad_input(kwargs, match):
    s = symmetric(np.random.default_rng(0), 24, np.float32)
    with pytest.raises(ValueError, match=match):
        mudsc.group_zip_match(s, **kwargs)


def test_nan_and_asymmetry_are_rejected():
    s = symmetric(np.random.default_rng(0), 16, np.float32)
    bad = s.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mudsc.group_zip_match(bad, 2, 2)
    bad = s.copy()
    bad[1, 2] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        mudsc.group_zip_match(bad, 2, 2)
