"""Tests of ``mudsc.weight_similarity`` and ``mudsc.AxisMap`` (ALGORITHM.md §3).

The expected similarity is built here from scratch in float64 numpy: each model's transformed weights
(permutation = gather, unmerge/merge = dense ``Pᵀ W`` with the documented scale ``N / (count + 1e-5)``), each
unit's vector = concatenation of its slices (conv ``[O, I, 3, 3]`` axis 0, bias ``[O]``, next Linear ``[Kn, O]``
axis 1), then Pearson (population, ``cov / max(σσᵀ, eps)``, a constant vector: row 0, diagonal 1) or cosine.
The MatchResults are zip-like: a random partition of the N·I previous units into clusters of 1 to 3 units.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mudsc
from mudsc import AxisMap, MatchResult, weight_similarity

from float64_oracle import truth

HAS_NATIVE = "native" in mudsc.available_backends() and mudsc.build_info().get("torch_ops", False)
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="mudsc._C (the stats torch ops) did not load")
TRANSFORMS = ("none", "perm", "unmerge", "merge")


def examples(n: int) -> settings:
    return settings(max_examples=max(1, n * settings.default.max_examples // 250))


def zip_like_result(rng: np.random.Generator, num_models: int, units: int) -> MatchResult:
    """A random partition of the N·units inputs into clusters of 1..3 units, labelled in order of appearance."""
    order = rng.permutation(num_models * units)
    labels = np.empty(num_models * units, dtype=np.int64)
    k, pos = 0, 0
    while pos < order.size:
        size = int(rng.integers(1, 4))
        labels[order[pos : pos + size]] = k
        k += 1
        pos += size
    return MatchResult(labels=labels, num_outputs=k, merge_value=0.0)


def dense_map(kind: str, result: MatchResult, model: int, num_models: int, units: int, perm: np.ndarray):
    """float64 ``P[units, K]`` such that the transformed axis is ``Pᵀ·old`` (independent of mudsc)."""
    if kind == "perm":
        p = np.zeros((units, units))
        p[perm, np.arange(units)] = 1.0  # new[j] = old[perm[j]]
        return p
    mine = result.labels[model * units : (model + 1) * units]
    p = np.zeros((units, result.num_outputs))
    p[np.arange(units), mine] = 1.0
    if kind == "merge":
        counts = np.bincount(result.labels, minlength=result.num_outputs).astype(np.float64)
        p = p * (num_models / (counts + 1e-5))[None, :]
    return p


def apply_dense(w: np.ndarray, axis: int, p: np.ndarray) -> np.ndarray:
    moved = np.moveaxis(w, axis, 0)
    out = p.T @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(out.reshape(p.shape[1], *moved.shape[1:]), 0, axis)


def pearson64(v: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Rows of ``v`` are the units' vectors."""
    return truth(v.T, eps=eps)["corr"]


def cosine64(v: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return truth(v.T, cos_eps=eps)["cos"]


def build_problem(seed: int, n: int, o: int, i: int, kn: int, transform: str, next_perm: bool, dtype=torch.float32):
    """(pieces, float64 unit vectors [N·O, D]) for N models of a conv -> bias -> linear group."""
    rng = np.random.default_rng(seed)
    prev = zip_like_result(rng, n, i)
    base_w = rng.standard_normal((o, i, 3, 3))
    base_l = rng.standard_normal((kn, o))
    pieces, vectors = [], []
    for m in range(n):
        w = base_w[rng.permutation(o)][:, rng.permutation(i)] + 0.5 * rng.standard_normal((o, i, 3, 3))
        b = 0.1 * rng.standard_normal(o) + 0.3
        lin = base_l[:, rng.permutation(o)] + 0.5 * rng.standard_normal((kn, o))
        # what the library sees: the values in `dtype`; the truth uses those exact values in float64
        w_t, b_t, l_t = (torch.tensor(a).to(dtype) for a in (w, b, lin))
        w, b, lin = (t.double().numpy() for t in (w_t, b_t, l_t))
        perm = rng.permutation(i)
        conv_piece = (w_t, 0)
        if transform == "perm":
            conv_piece = (w_t, 0, {1: torch.from_numpy(perm)})
        elif transform == "unmerge":
            conv_piece = (w_t, 0, {1: AxisMap.unmerge(prev, m, n)})
        elif transform == "merge":
            conv_piece = (w_t, 0, {-3: AxisMap.merge(prev, m, n)})  # negative axes are accepted too
        wt = w if transform == "none" else apply_dense(w, 1, dense_map(transform, prev, m, n, i, perm))
        lin_piece = (l_t, 1)
        lt = lin
        if next_perm:
            nperm = rng.permutation(kn)
            lin_piece = (l_t, -1, {0: torch.from_numpy(nperm).to(torch.int32)})
            lt = lin[nperm]
        pieces.append([conv_piece, (b_t, 0), lin_piece])
        vectors.append(np.concatenate([wt.reshape(o, -1), b[:, None], lt.T], axis=1))
    return pieces, np.concatenate(vectors, axis=0)


@st.composite
def problems(draw):
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        n=draw(st.sampled_from([2, 3])),
        o=draw(st.integers(1, 6)),
        i=draw(st.integers(1, 7)),
        kn=draw(st.integers(1, 5)),
        transform=draw(st.sampled_from(TRANSFORMS)),
        next_perm=draw(st.booleans()),
    )


@needs_native
@examples(40)
@given(problem=problems())
def test_native_reference_and_float64_numpy_agree(problem):
    pieces, v = build_problem(**problem)
    for kind, want in (("pearson", pearson64(v)), ("cosine", cosine64(v))):
        native = weight_similarity(pieces, kind=kind, backend="native")
        ref = weight_similarity(pieces, kind=kind, backend="reference")
        n_units = problem["n"] * problem["o"]
        assert native.shape == ref.shape == (n_units, n_units) and native.dtype == torch.float32
        np.testing.assert_allclose(native.double().numpy(), want, rtol=0, atol=2e-6)
        np.testing.assert_allclose(ref.double().numpy(), want, rtol=0, atol=2e-5)
        torch.testing.assert_close(native, ref, rtol=0, atol=2e-5)


@needs_native
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_float64_weights_exact(n, transform):
    """float64 weights run the accumulator in float64: numpy's result to 1e-12 (merge's scale is float32 by
    design, so it is given here as an explicit float64 AxisMap)."""
    pieces, v = build_problem(seed=7 + n, n=n, o=5, i=6, kn=4, transform="none" if transform == "merge" else transform,
                              next_perm=True, dtype=torch.float64)
    if transform == "merge":
        rng = np.random.default_rng(3)
        prev = zip_like_result(rng, n, 6)
        counts = np.bincount(prev.labels, minlength=prev.num_outputs)
        scale = n / (counts + 1e-5)
        vectors = []
        for m in range(n):
            am = AxisMap(torch.from_numpy(prev.labels[m * 6 : (m + 1) * 6]), prev.num_outputs, torch.from_numpy(scale))
            w = pieces[m][0][0]
            pieces[m][0] = (w, 0, {1: am})
            p = dense_map("merge", prev, m, n, 6, None)
            wt = apply_dense(w.numpy(), 1, p)
            vectors.append(np.concatenate([wt.reshape(5, -1), v[m * 5 : (m + 1) * 5, 6 * 9 :]], axis=1))
        v = np.concatenate(vectors, axis=0)
    got = weight_similarity(pieces, dtype=torch.float64)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), pearson64(v), rtol=0, atol=1e-12)
    np.testing.assert_allclose(weight_similarity(pieces, kind="cosine", dtype=torch.float64).numpy(), cosine64(v),
                               rtol=0, atol=1e-12)


@needs_native
def test_eps_and_constant_unit():
    pieces, v = build_problem(seed=1, n=2, o=4, i=3, kn=2, transform="perm", next_perm=False)
    # model 1 unit 2: all of its weights equal -> zero variance
    for k in range(3):
        t, axis = pieces[1][k][0], pieces[1][k][1]
        t.select(axis, 2).fill_(0.25)
    v[4 + 2, :] = 0.25
    got = weight_similarity(pieces).double().numpy()
    np.testing.assert_allclose(got, pearson64(v), rtol=0, atol=2e-6)
    assert got[6, 6] == 1 and np.all(got[6, np.arange(8) != 6] == 0)
    np.testing.assert_allclose(weight_similarity(pieces, eps=5.0).double().numpy(), pearson64(v, eps=5.0), rtol=0,
                               atol=2e-6)
    np.testing.assert_allclose(weight_similarity(pieces, kind="cosine", eps=1e3).double().numpy(),
                               cosine64(v, eps=1e3), rtol=0, atol=2e-6)


def test_axis_map_constructors():
    labels = np.array([0, 1, 1, 2, 0, 3, 2, 3, 4], dtype=np.int64)  # N = 3 models of 3 units, K = 5
    result = MatchResult(labels=labels, num_outputs=5, merge_value=0.0)
    u = AxisMap.unmerge(result, 1, 3)
    assert u.size == 5 and u.scale is None and u.labels.tolist() == [2, 0, 3]
    m = AxisMap.merge(result, 2, 3)
    assert m.size == 5 and m.labels.tolist() == [2, 3, 4]
    np.testing.assert_allclose(m.scale.double().numpy(), 3 / (np.array([2, 2, 2, 2, 1]) + 1e-5), rtol=1e-6)
    x = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    out = u.apply(x, 0)  # segment sum of rows into 5 merged units
    want = np.zeros((5, 4))
    for r, k in enumerate([2, 0, 3]):
        want[k] += x[r].numpy()
    np.testing.assert_array_equal(out.numpy(), want)
    out = m.apply(x.T, 1)
    np.testing.assert_allclose(out.numpy(), (np.eye(5)[[2, 3, 4]] * m.scale.double().numpy()).T.dot(x.numpy()).T,
                               rtol=1e-12)


def test_axis_map_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        AxisMap(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        AxisMap(torch.tensor([-1, 0]), 3)
    with pytest.raises(TypeError, match="1-d integer tensor"):
        AxisMap(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(TypeError, match="1-d integer tensor"):
        AxisMap(torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"scale must be \[3\]"):
        AxisMap(torch.tensor([0, 1]), 3, torch.ones(2))
    with pytest.raises(ValueError, match=r"AxisMap for 2 units applied to axis 1 of a tensor of shape \(4, 3\)"):
        AxisMap(torch.tensor([0, 1]), 3).apply(torch.zeros(4, 3), 1)


@pytest.mark.parametrize("backend", mudsc.available_backends())
def test_bad_input(backend):
    pieces, _ = build_problem(seed=2, n=2, o=4, i=3, kn=2, transform="perm", next_perm=False)
    good_conv = pieces[1][0]

    def with_piece(k, piece, model=1):
        new = [list(p) for p in pieces]
        new[model][k] = piece
        return new

    with pytest.raises(ValueError, match="kind must be 'pearson' or 'cosine'"):
        weight_similarity(pieces, kind="spearman", backend=backend)
    with pytest.raises(TypeError, match="non-empty list"):
        weight_similarity([], backend=backend)
    with pytest.raises(ValueError, match="same non-zero number of pieces"):
        weight_similarity([pieces[0], pieces[1][:2]], backend=backend)
    if backend == "reference":
        return  # the reference (the original's code) does not validate pieces further
    with pytest.raises(ValueError, match=r"piece 0: model 1 gives shape \(4, 4, 3, 3\) \(axis 0\) but model 0 gives "
                                         r"\(4, 3, 3, 3\)"):
        weight_similarity(with_piece(0, (torch.randn(4, 4, 3, 3), 0, {})), backend=backend)
    with pytest.raises(ValueError, match="piece 1 has 5 units on its axis, piece 0 has 4"):
        weight_similarity([[p[0], (torch.randn(5), 0), p[2]] for p in pieces], backend=backend)
    with pytest.raises(TypeError, match=r"model 1 piece 0: a piece is \(tensor, axis\)"):
        weight_similarity(with_piece(0, (good_conv[0],)), backend=backend)
    with pytest.raises(TypeError, match="a piece is"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {}, 1)), backend=backend)
    with pytest.raises(TypeError, match="expected a tensor, got ndarray"):
        weight_similarity(with_piece(0, (np.zeros((4, 3, 3, 3)), 0)), backend=backend)
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        weight_similarity(with_piece(1, (torch.zeros(4, dtype=torch.long), 0)), backend=backend)
    with pytest.raises(ValueError, match=r"axis 4 is out of range for shape \(4, 3, 3, 3\)"):
        weight_similarity(with_piece(0, (good_conv[0], 4)), backend=backend)
    with pytest.raises(TypeError, match="transforms must be a dict"):
        weight_similarity(with_piece(0, (good_conv[0], 0, [1, 2])), backend=backend)
    with pytest.raises(ValueError, match="index out of range for axis 1"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {1: torch.tensor([0, 1, 3])})), backend=backend)
    with pytest.raises(ValueError, match="index out of range"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {1: torch.tensor([0, -1, 2])})), backend=backend)
    with pytest.raises(TypeError, match="1-d integer tensor"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {1: torch.tensor([0.0, 1.0, 2.0])})), backend=backend)
    with pytest.raises(ValueError, match="transform axis 7 is out of range"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {7: torch.tensor([0, 1, 2])})), backend=backend)
    with pytest.raises(ValueError, match="unit axis 0 itself cannot be transformed"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {0: torch.arange(4)})), backend=backend)
    with pytest.raises(ValueError, match="AxisMap for 2 units applied to axis 1"):
        weight_similarity(with_piece(0, (good_conv[0], 0, {1: AxisMap(torch.tensor([0, 1]), 2)})), backend=backend)


@needs_native
@pytest.mark.cuda
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cuda_matches_cpu(transform):
    pieces, v = build_problem(seed=5, n=3, o=6, i=5, kn=4, transform=transform, next_perm=True)

    def to_cuda(piece):
        moved = [piece[0].cuda(), piece[1]]
        if len(piece) == 3:
            moved.append({
                a: (AxisMap(m.labels.cuda(), m.size, None if m.scale is None else m.scale.cuda())
                    if isinstance(m, AxisMap) else m.cuda())
                for a, m in piece[2].items()
            })
        return tuple(moved)

    gpu_pieces = [[to_cuda(p) for p in model] for model in pieces]
    for kind, want in (("pearson", pearson64(v)), ("cosine", cosine64(v))):
        got = weight_similarity(gpu_pieces, kind=kind)
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), weight_similarity(pieces, kind=kind), rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.double().cpu().numpy(), want, rtol=0, atol=1e-5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("scaled", [False, True])
def test_axis_segment_sum_op_equals_index_add(dtype, axis, scaled):
    """The CPU op behind AxisMap.apply adds rows in index_add_'s order and scales after: bitwise the same."""
    gen = torch.Generator().manual_seed(3 + axis + 10 * scaled)
    t = torch.randn(5, 7, 4, 3, generator=gen, dtype=dtype)
    m = t.shape[axis]
    k = max(1, m - 2)
    labels = torch.randint(0, k, (m,), generator=gen)
    scale = torch.rand(k, generator=gen) + 0.5 if scaled else None
    got = torch.ops.mudsc.axis_segment_sum(t, axis, labels, k, scale)
    moved = t.movedim(axis, 0).contiguous()
    want = torch.zeros((k,) + tuple(moved.shape[1:]), dtype=dtype).index_add_(0, labels, moved).movedim(0, axis)
    if scaled:
        view = [1] * t.dim()
        view[axis] = k
        want = want * scale.to(dtype).view(view)
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.equal(got, want)
    assert torch.equal(AxisMap(labels, k, scale).apply(t, axis % t.dim()), want)
    # a non-contiguous input gives the same
    assert torch.equal(torch.ops.mudsc.axis_segment_sum(t.transpose(0, 3).contiguous().transpose(0, 3), axis,
                                                         labels, k, scale), want)


@needs_native
def test_axis_segment_sum_op_errors():
    t = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.mudsc.axis_segment_sum(t, 1, torch.tensor([0, 1, 2, 5]), 3, None)
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.mudsc.axis_segment_sum(t, 1, torch.tensor([0, 1, 2]), 3, None)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.mudsc.axis_segment_sum(t, 2, torch.tensor([0, 1, 2]), 3, None)
    with pytest.raises(RuntimeError, match="scale must be"):
        torch.ops.mudsc.axis_segment_sum(t, 0, torch.tensor([0, 1, 1]), 2, torch.ones(3))
