"""Property tests of the linear assignment solvers against scipy.optimize.linear_sum_assignment.

The oracle is the optimal OBJECTIVE (assignments may differ on ties): our assignment is scored on the float64
values of the very matrix that was solved (a float32 / float16 / int matrix is widened to float64, and scipy
sees the same widened matrix). Relative tolerance: 1e-9 for float64 inputs, 1e-5 for float32/float16 ones,
relative to sum(|c[i, x(i)]|) of scipy's assignment (so that objectives near 0 are not held to 0 exactly).
Every result is also checked to be a valid assignment: ``min(n, m)`` rows, strictly ascending, distinct
columns, all in range.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mudsc

HAS_NATIVE = "native" in mudsc.available_backends()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="the native core did not load")

# --------------------------------------------------------------------------------------------------------------
# Oracle and assertions
# --------------------------------------------------------------------------------------------------------------


def scipy_optimum(c64: np.ndarray, maximize: bool):
    """``(feasible, objective, scale)`` of scipy on a float64 matrix (scale = sum |c| along its assignment)."""
    assert c64.dtype == np.float64
    try:
        rows, cols = scipy.optimize.linear_sum_assignment(c64, maximize=maximize)
    except ValueError as exc:
        assert "infeasible" in str(exc), exc  # the oracle only ever sees valid values
        return False, None, None
    picked = c64[rows, cols]
    return True, float(picked.sum()), float(np.abs(picked).sum())


def to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_valid_assignment(rows, cols, n: int, m: int) -> None:
    rows, cols = to_np(rows), to_np(cols)
    k = min(n, m)
    assert rows.dtype == np.int64 and cols.dtype == np.int64, (rows.dtype, cols.dtype)
    assert rows.shape == (k,) and cols.shape == (k,), (rows.shape, cols.shape, n, m)
    assert np.all(np.diff(rows) > 0), f"rows not strictly ascending: {rows}"
    if k:
        assert rows.min() >= 0 and rows.max() < n, rows
        assert cols.min() >= 0 and cols.max() < m, cols
    assert len(np.unique(cols)) == k, f"columns not distinct: {cols}"


def assert_objective_close(got: float, best: float, scale: float, rtol: float, what: str = "") -> None:
    assert np.isfinite(got), f"{what}: objective {got} is not finite (a forbidden entry was used)"
    assert abs(got - best) <= rtol * scale, f"{what}: objective {got!r} vs optimum {best!r} (scale {scale!r})"


def rtol_for(dtype) -> float:
    return 1e-9 if np.dtype(dtype) == np.float64 else 1e-5


def shape_str(shape) -> str:
    return str(tuple(int(d) for d in shape))


def check_solution(c, maximize: bool, rows, cols, rtol: float, what: str = "") -> None:
    """``(rows, cols)`` is a valid optimal assignment of ``c`` (oracle: scipy on float64 of c)."""
    c64 = to_np(c).astype(np.float64)
    n, m = c64.shape
    feasible, best, scale = scipy_optimum(c64, maximize)
    assert feasible, f"{what}: we solved a problem scipy calls infeasible"
    assert_valid_assignment(rows, cols, n, m)
    r, k = to_np(rows), to_np(cols)
    assert_objective_close(float(c64[r, k].sum()), best, scale, rtol, what)


# --------------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------------


@st.composite
def dims(draw, big: int = 300):
    """A matrix dimension in [0, big]: mostly <= 12, sometimes <= 60, rarely up to ``big``."""
    cls = draw(st.integers(0, 19))
    if cls < 14:
        return draw(st.integers(0, 12))
    if cls < 19:
        return draw(st.integers(0, min(60, big)))
    return draw(st.integers(0, big))


@st.composite
def shapes(draw, big: int = 300):
    relation = draw(st.sampled_from(["square", "wide", "tall", "any"]))
    a, b = draw(dims(big)), draw(dims(big))
    if relation == "square":
        return a, a
    if relation == "wide":  # n < m (or n == m == 0)
        return min(a, b), max(a, b) + (0 if a == b == 0 else int(a == b))
    if relation == "tall":  # n > m
        return max(a, b) + (0 if a == b == 0 else int(a == b)), min(a, b)
    return a, b


KINDS = ["uniform", "normal", "int_ties", "binary", "all_equal", "huge", "huge_ties", "tiny", "mixed_magnitude"]


def make_values(kind: str, shape, seed: int, param: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, m = shape
    if kind == "uniform":
        return rng.random((n, m))
    if kind == "normal":
        return rng.standard_normal((n, m)) * 10.0
    if kind == "int_ties":  # very many ties
        return rng.integers(-2, 3, (n, m)).astype(np.float64)
    if kind == "binary":
        return (rng.random((n, m)) < 0.1).astype(np.float64)
    if kind == "all_equal":
        return np.full((n, m), param)
    if kind == "huge":
        return rng.standard_normal((n, m)) * 1e12
    if kind == "huge_ties":  # 1e12 offset, small integer differences
        return 1e12 + rng.integers(0, 4, (n, m)).astype(np.float64)
    if kind == "tiny":
        return rng.standard_normal((n, m)) * 1e-12
    if kind == "mixed_magnitude":
        return rng.random((n, m)) * 10.0 ** rng.integers(-12, 13, (n, m))
    raise AssertionError(kind)


@st.composite
def cost_matrices(draw, big: int = 300, forbidden: bool = True, dtypes=(np.float64, np.float32)):
    """``(matrix, maximize)``: values of one kind, optional forbidden entries of the right sign."""
    shape = draw(shapes(big))
    maximize = draw(st.booleans())
    dtype = draw(st.sampled_from(dtypes))
    n, m = shape
    if n * m <= 36 and draw(st.integers(0, 3)) == 0:
        # Small matrices with hypothesis-drawn elements (shrink well, find tie patterns).
        elems = st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5]) | st.floats(-100, 100, width=32)
        c = draw(hnp.arrays(np.float64, shape, elements=elems))
    else:
        kind = draw(st.sampled_from(KINDS))
        param = draw(st.sampled_from([0.0, 1.0, -3.5, 1e12, 1e-12]))
        c = make_values(kind, shape, draw(st.integers(0, 2**32 - 1)), param)
        note(f"kind={kind}")
    if forbidden:
        p = draw(st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.3, 0.8, 1.0]))
        if p > 0:
            mask = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random(shape) < p
            c = np.where(mask, -np.inf if maximize else np.inf, c)
    c = c.astype(dtype)
    note(f"shape={shape} dtype={c.dtype} maximize={maximize}")
    return c, maximize


LAYOUTS = ["C", "F", "T", "step", "neg", "neg_rows", "neg_cols"]


def relayout(a: np.ndarray, how: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout (mostly views with unusual strides)."""
    n, m = a.shape
    if how == "C":
        out = np.ascontiguousarray(a)
    elif how == "F":
        out = np.asfortranarray(a)
    elif how == "T":  # a transposed view of a contiguous (m, n) array
        out = np.ascontiguousarray(a.T).T
    elif how == "step" and (n, m) == (1, 1):
        out = np.ascontiguousarray(a)  # a 1x1 step view hits a known bug: test_one_by_one_strided_views
    elif how == "step":  # strided view with steps on both axes
        big = np.zeros((2 * n + 1, 3 * m + 1), dtype=a.dtype)
        big[1::2, 1::3] = a
        out = big[1::2, 1::3]
    elif how == "neg":
        out = np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    elif how == "neg_rows":
        out = np.ascontiguousarray(a[::-1])[::-1]
    elif how == "neg_cols":
        out = np.asfortranarray(a[:, ::-1])[:, ::-1]
    else:
        raise AssertionError(how)
    assert out.shape == a.shape
    np.testing.assert_array_equal(out, a)
    return out


def forbidden_value(maximize: bool) -> float:
    return -np.inf if maximize else np.inf


# --------------------------------------------------------------------------------------------------------------
# linear_sum_assignment / solve_assignment against scipy
# --------------------------------------------------------------------------------------------------------------


@given(problem=cost_matrices(), layout=st.sampled_from(LAYOUTS))
def test_linear_sum_assignment_matches_scipy(backend, problem, layout):
    c, maximize = problem
    a = relayout(c, layout)
    c64 = c.astype(np.float64)
    feasible, best, scale = scipy_optimum(c64, maximize)
    if not feasible:
        with pytest.raises(ValueError, match="infeasible") as info:
            mudsc.linear_sum_assignment(a, maximize, backend=backend)
        if not (backend == "native" and c.shape[0] > c.shape[1]):  # see test_error_shape_of_tall_matrices
            assert shape_str(c.shape) in str(info.value)
        return
    rows, cols = mudsc.linear_sum_assignment(a, maximize, backend=backend)
    assert isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)
    check_solution(c, maximize, rows, cols, rtol_for(c.dtype), f"{backend}/{layout}")


@given(problem=cost_matrices(), layout=st.sampled_from(LAYOUTS))
def test_solve_assignment_matches_scipy(backend, problem, layout):
    c, maximize = problem
    a = relayout(c, layout)
    n, m = c.shape
    c64 = c.astype(np.float64)
    feasible, best, scale = scipy_optimum(c64, maximize)
    if not feasible:
        with pytest.raises(ValueError, match="infeasible"):
            mudsc.solve_assignment(a, maximize, backend=backend)
        return
    res = mudsc.solve_assignment(a, maximize, backend=backend)
    assert isinstance(res, mudsc.AssignmentResult)
    check_solution(c, maximize, res.row_ind, res.col_ind, rtol_for(c.dtype), backend)
    # objective is sum(cost[row_ind, col_ind]) in float64 (summation order aside)
    exact = float(c64[res.row_ind, res.col_ind].sum())
    assert isinstance(res.objective, float)
    assert abs(res.objective - exact) <= 1e-12 * max(np.abs(c64[res.row_ind, res.col_ind]).sum(), 1e-300)
    rows, cols = res  # pair unpacking
    np.testing.assert_array_equal(rows, res.row_ind)
    np.testing.assert_array_equal(cols, res.col_ind)
    if backend == "reference":
        assert res.potentials is None
    elif n == m:
        assert isinstance(res.potentials, np.ndarray) and res.potentials.shape == (m,)
        assert res.potentials.dtype == np.float64 and np.isfinite(res.potentials).all()
    else:
        assert res.potentials is None


# Square problems of at most 64 rows take the native small-problem solver (csrc/core/lap_small.hpp), rows padded
# to 8, 16, 32 or 64 columns: sizes on both sides of each padding, and just past the limit (the general solver).
SMALL_SQUARE_SIZES = [1, 2, 7, 8, 9, 16, 17, 32, 33, 63, 64, 65]


@pytest.mark.parametrize("n", SMALL_SQUARE_SIZES)
@pytest.mark.parametrize("kind", ["uniform", "int_ties", "binary", "all_equal", "signed_zeros", "forbidden"])
@pytest.mark.parametrize("maximize", [False, True])
def test_small_square_sizes_match_scipy(backend, n, kind, maximize):
    for seed, dtype in ((n, np.float64), (n + 1000, np.float32)):
        rng = np.random.default_rng(seed)
        if kind == "signed_zeros":
            c = np.where(rng.random((n, n)) < 0.5, 0.0, -0.0)
        elif kind == "forbidden":
            c = np.where(rng.random((n, n)) < 0.3, forbidden_value(maximize), make_values("normal", (n, n), seed, 0))
        else:
            c = make_values(kind, (n, n), seed, -3.5)
        c = c.astype(dtype)
        what = f"n={n} {kind} {np.dtype(dtype).name} maximize={maximize}"
        if not scipy_optimum(c.astype(np.float64), maximize)[0]:
            with pytest.raises(ValueError, match="infeasible"):
                mudsc.linear_sum_assignment(c, maximize, backend=backend)
            continue
        rows, cols = mudsc.linear_sum_assignment(c, maximize, backend=backend)
        check_solution(c, maximize, rows, cols, rtol_for(dtype), what)


@given(
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]),
    layout=st.sampled_from(["contiguous", "T", "step", "requires_grad"]),
    maximize=st.booleans(),
)
def test_torch_tensors(backend, data, dtype, layout, maximize):
    n, m = data.draw(shapes(big=80), label="shape")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(["int", "float"]), label="kind")
    base = rng.integers(-5, 6, (n, m)).astype(np.float64) if kind == "int" else rng.random((n, m)) * 100
    if dtype == torch.int64:
        base = np.round(base)
    t = torch.from_numpy(base).to(dtype)
    if layout == "T":
        t = t.T.contiguous().T
    elif layout == "step" and (n, m) != (1, 1):  # 1x1: a known bug, see test_one_by_one_strided_views
        big = torch.zeros((2 * n, 3 * m), dtype=dtype)
        big[::2, ::3] = t
        t = big[::2, ::3]
    elif layout == "requires_grad":
        if not dtype.is_floating_point:
            t = t.clone()
        else:
            t = t.clone().requires_grad_(True)
    c64 = t.detach().double().numpy()  # the values the solver sees (float16 -> float32 is exact)
    rtol = 1e-9 if dtype in (torch.float64, torch.int64) else 1e-5

    rows, cols = mudsc.linear_sum_assignment(t, maximize, backend=backend)
    assert isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor)
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64
    check_solution(c64, maximize, rows, cols, rtol, f"torch {dtype}")

    res = mudsc.solve_assignment(t, maximize, backend=backend)
    assert isinstance(res.row_ind, torch.Tensor) and isinstance(res.col_ind, torch.Tensor)
    check_solution(c64, maximize, res.row_ind, res.col_ind, rtol, f"torch {dtype} solve_assignment")
    if res.potentials is not None:
        assert isinstance(res.potentials, torch.Tensor) and res.potentials.dtype == torch.float64


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (1, 1), (1, 7), (7, 1), (40, 40), (300, 300), (13, 300)])
@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 1e12, 1e-12])
def test_all_equal_matrices(backend, shape, value):
    c = np.full(shape, value)
    for maximize in (False, True):
        rows, cols = mudsc.linear_sum_assignment(c, maximize, backend=backend)
        assert_valid_assignment(rows, cols, *shape)
        assert float(c[rows, cols].sum()) == pytest.approx(value * min(shape), rel=1e-12, abs=0)


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0)])
def test_empty_matrices(backend, shape):
    for maximize in (False, True):
        res = mudsc.solve_assignment(np.zeros(shape), maximize, backend=backend)
        assert res.row_ind.shape == (0,) and res.col_ind.shape == (0,)
        assert res.row_ind.dtype == np.int64 and res.col_ind.dtype == np.int64
        assert res.objective == 0.0
        rows, cols = mudsc.linear_sum_assignment(torch.zeros(shape), maximize, backend=backend)
        assert isinstance(rows, torch.Tensor) and rows.shape == (0,) and cols.shape == (0,)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("magnitude", [1e12, 1e-12])
@pytest.mark.parametrize("shape", [(50, 50), (30, 70), (70, 30), (250, 250)])
def test_huge_and_tiny_magnitudes(backend, maximize, magnitude, shape):
    rng = np.random.default_rng(int(np.log10(magnitude)) + 100 + shape[0] + shape[1])
    c = rng.standard_normal(shape) * magnitude
    rows, cols = mudsc.linear_sum_assignment(c, maximize, backend=backend)
    check_solution(c, maximize, rows, cols, 1e-9, f"magnitude {magnitude}")


@pytest.mark.parametrize("maximize", [False, True])
def test_int_costs_with_ties_large(backend, maximize):
    rng = np.random.default_rng(7)
    for shape in [(300, 300), (120, 300), (300, 120)]:
        c = rng.integers(0, 3, shape)
        rows, cols = mudsc.linear_sum_assignment(c, maximize, backend=backend)
        check_solution(c, maximize, rows, cols, 1e-9, f"int ties {shape}")


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_, np.float16])
def test_numpy_integer_bool_and_half_dtypes(backend, dtype):
    rng = np.random.default_rng(3)
    c = rng.integers(0, 5, (9, 12)).astype(dtype)
    for maximize in (False, True):
        for a in (c, c.T):
            rows, cols = mudsc.linear_sum_assignment(a, maximize, backend=backend)
            check_solution(a, maximize, rows, cols, 1e-9, str(dtype))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.bfloat16])
def test_torch_integer_bool_and_bfloat16_dtypes(backend, dtype):
    rng = np.random.default_rng(4)
    t = torch.from_numpy(rng.integers(0, 2 if dtype == torch.bool else 5, (7, 10))).to(dtype)
    c64 = t.double().numpy()
    for maximize in (False, True):
        rows, cols = mudsc.linear_sum_assignment(t, maximize, backend=backend)
        assert isinstance(rows, torch.Tensor)
        check_solution(c64, maximize, rows, cols, 1e-9, str(dtype))


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_torch_unsigned_dtypes(backend, dtype):
    dt = getattr(torch, dtype)
    c = np.random.default_rng(4).integers(0, 5, (6, 8))
    t = torch.from_numpy(c).to(dt)
    rows, cols = mudsc.linear_sum_assignment(t, backend=backend)
    check_solution(c.astype(np.float64), False, rows, cols, 1e-9, dtype)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_torch_float8_is_solved_or_rejected_with_value_error(backend, dtype):
    t = torch.rand(3, 4).to(getattr(torch, dtype))
    try:
        rows, cols = mudsc.linear_sum_assignment(t, backend=backend)
    except ValueError as exc:
        assert "(3, 4)" in str(exc)
    else:
        check_solution(t.float().double().numpy(), False, rows, cols, 1e-5, dtype)


def test_python_lists_are_accepted(backend):
    c = [[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]
    rows, cols = mudsc.linear_sum_assignment(c, backend=backend)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    assert np.asarray(c)[rows, cols].sum() == 5.0


def _one_by_one_views():
    big = np.arange(12.0).reshape(3, 4)
    tbig = torch.arange(12.0).reshape(3, 4)
    return [
        ("numpy_step", lambda: big[1::2, 1::3][:1, :1], None),  # strides (64, 24), value 5
        ("numpy_float32", lambda: big.astype(np.float32)[::2, ::3][:1, :1], None),
        ("torch_step", lambda: tbig[::2, ::3][:1, :1], None),
        ("numpy_broadcast_scalar", lambda: np.broadcast_to(np.float64(3.0), (1, 1)), None),  # strides (0, 0)
        ("torch_expand", lambda: torch.tensor(3.0).expand(1, 1), None),  # strides (0, 0)
        ("batch_1x1x1", lambda: np.arange(8.0).reshape(1, 2, 4)[:, ::2, ::4], "batch"),
        ("batch_broadcast_1x1x1", lambda: np.broadcast_to(np.ones((1, 1, 1)), (1, 1, 1)), "batch"),
        # (3, 1, 1) with strides (8, 16, 16): numpy calls it C-contiguous, so it is not copied either
        ("batch_3x1x1", lambda: np.lib.stride_tricks.as_strided(np.arange(3.0), (3, 1, 1), (8, 16, 16)), "batch"),
    ]


ONE_BY_ONE = _one_by_one_views()


@pytest.mark.parametrize("make,kind", [(m, k) for _, m, k in ONE_BY_ONE], ids=[i for i, _, _ in ONE_BY_ONE])
def test_one_by_one_strided_views(backend, make, kind):
    """1x1 matrices are solvable whatever their strides (numpy / torch call any 1x1 view contiguous)."""
    x = make()
    if kind == "batch":
        col = mudsc.batch_linear_sum_assignment(x, backend=backend)
        np.testing.assert_array_equal(to_np(col), np.zeros((x.shape[0], 1), dtype=np.int64))
    else:
        rows, cols = mudsc.linear_sum_assignment(x, backend=backend)
        np.testing.assert_array_equal(to_np(rows), [0])
        np.testing.assert_array_equal(to_np(cols), [0])
        res = mudsc.solve_assignment(x, True, backend=backend)
        assert res.objective == float(to_np(x)[0, 0])


# --------------------------------------------------------------------------------------------------------------
# Forbidden entries and feasibility
# --------------------------------------------------------------------------------------------------------------

I = np.inf
FEASIBILITY_CASES = [
    # (matrix with +inf as forbidden, feasible?)
    ([[I, 1.0], [2.0, I]], True),
    ([[I, I], [1.0, 2.0]], False),  # a row with no allowed entry
    ([[I, 1.0], [I, 2.0]], False),  # a column with no allowed entry (square)
    ([[1.0, I, I], [2.0, I, I], [3.0, 4.0, 5.0]], False),  # Hall violation: two rows share one column
    ([[1.0, I, I], [I, 2.0, I], [I, I, 3.0]], True),  # only the diagonal
    ([[I, 1.0, I], [I, 2.0, I]], False),  # wide: both rows need column 1
    ([[I, 1.0, I], [I, I, 2.0]], True),  # wide: a forbidden column is fine
    ([[1.0, I], [I, I], [I, 2.0]], True),  # tall: one row is left out
    ([[1.0, I], [2.0, I], [3.0, I]], False),  # tall: column 1 cannot be covered
    ([[I] * 4] * 3, False),  # everything forbidden
    ([[5.0]], True),
    ([[I]], False),
]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("matrix,feasible", FEASIBILITY_CASES)
def test_forbidden_entries_feasibility(backend, matrix, feasible, maximize):
    c = np.array(matrix, dtype=np.float64)
    if maximize:
        c = -c  # forbidden entries become -inf, allowed ones change sign
    assert scipy_optimum(c, maximize)[0] == feasible  # the table agrees with scipy
    for layout in ("C", "F", "neg"):
        a = relayout(c, layout)
        for fn in (mudsc.linear_sum_assignment, mudsc.solve_assignment):
            if feasible:
                rows, cols = fn(a, maximize, backend=backend)  # a pair, or an AssignmentResult (iterable pair)
                check_solution(c, maximize, rows, cols, 1e-9, f"{fn.__name__}/{layout}")
            else:
                with pytest.raises(ValueError, match="infeasible") as info:
                    fn(a, maximize, backend=backend)
                assert ("-inf" if maximize else "+inf") in str(info.value)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("shape", [(4, 2), (7, 3), (300, 5)])
def test_error_shape_of_tall_matrices(backend, maximize, shape):
    """Errors must name the caller's shape, also for n > m (which the native core solves transposed)."""
    n, m = shape
    bad = forbidden_value(maximize)
    infeasible = np.ones(shape)
    infeasible[:, 0] = bad  # column 0 cannot be covered
    nan = np.ones(shape)
    nan[n - 1, m - 1] = np.nan
    unbounded = np.ones(shape)
    unbounded[0, 0] = -bad
    for c, what in [(infeasible, "infeasible"), (nan, "NaN"), (unbounded, "+inf" if maximize else "-inf")]:
        with pytest.raises(ValueError, match="NaN|inf") as info:
            mudsc.linear_sum_assignment(c, maximize, backend=backend)
        assert what in str(info.value)
        assert shape_str(shape) in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "matrix,square",
    [
        ([[I, I, I], [np.nan, 1.0, 2.0]], False),  # wide: an all-forbidden row before the NaN row
        ([[I, I, I], [-I, 1.0, 2.0]], False),
        ([[I, I], [np.nan, 1.0]], True),  # square, warm start (init_potentials)
    ],
)
def test_invalid_values_are_reported_even_next_to_infeasible_rows(backend, matrix, square):
    """NaN / the unbounded infinity must be reported as such (like scipy and the reference backend do),
    not hidden behind an "infeasible" message because an earlier row happened to be all-forbidden."""
    c = np.array(matrix)
    expected = "NaN" if np.isnan(c).any() else "-inf"
    with pytest.raises(ValueError) as info:
        if square:
            mudsc.solve_assignment(c, init_potentials=np.zeros(c.shape[1]), backend=backend)
        else:
            mudsc.linear_sum_assignment(c, backend=backend)
    assert expected in str(info.value), str(info.value)
    assert shape_str(c.shape) in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# Warm start
# --------------------------------------------------------------------------------------------------------------


@st.composite
def square_problems(draw, big: int = 150, forbidden: bool = True):
    n = draw(dims(big))
    maximize = draw(st.booleans())
    kind = draw(st.sampled_from(KINDS))
    c = make_values(kind, (n, n), draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([0.0, 1.0, 1e12])))
    if forbidden and draw(st.integers(0, 3)) == 0:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        c = np.where(rng.random((n, n)) < draw(st.sampled_from([0.1, 0.5])), forbidden_value(maximize), c)
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    note(f"kind={kind} n={n} maximize={maximize} dtype={dtype}")
    return c.astype(dtype), maximize


def magnitude(c: np.ndarray) -> float:
    """max |c| over the allowed entries (1 when there are none or all are 0)."""
    finite = np.abs(c[np.isfinite(c)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def potential_scale(c: np.ndarray, maximize: bool) -> float:
    """A scale for random potentials: the mean |c| along an optimal assignment (1 when that is 0).

    Potentials far larger than the costs that matter (e.g. 1e12 next to an optimum of 1e-2 in a
    mixed-magnitude matrix) make every reduced cost c - v lose those costs to rounding, so no solver
    working in float64 could be held to a 1e-9 relative objective from them.
    """
    c64 = c.astype(np.float64)
    try:
        rows, cols = scipy.optimize.linear_sum_assignment(c64, maximize=maximize)
    except ValueError:
        return magnitude(c64)
    s = float(np.abs(c64[rows, cols]).mean()) if len(rows) else 0.0
    return s if s > 0 else 1.0


@given(problem=square_problems(), seed=st.integers(0, 2**32 - 1), rel=st.sampled_from([1e-6, 1e-3, 1e-1]))
def test_warm_start_after_perturbation(backend, problem, seed, rel):
    c, maximize = problem
    n = c.shape[0]
    assume(scipy_optimum(c.astype(np.float64), maximize)[0])
    rng = np.random.default_rng(seed)
    first = mudsc.solve_assignment(c, maximize, backend=backend)
    potentials = first.potentials
    if backend == "native":
        assert potentials is not None and potentials.shape == (n,)
    current = c
    # A few MuDSC-like sweeps: each matrix is a small perturbation of the last (same forbidden pattern).
    for sweep in range(3):
        noise = rng.standard_normal(c.shape) * rel * magnitude(c)
        current = (current.astype(np.float64) + noise).astype(c.dtype)
        init = potentials if potentials is not None else np.zeros(n)
        warm = mudsc.solve_assignment(current, maximize, init_potentials=init, backend=backend)
        cold = mudsc.solve_assignment(current, maximize, backend=backend)
        c64 = current.astype(np.float64)
        check_solution(current, maximize, warm.row_ind, warm.col_ind, rtol_for(c.dtype), f"warm sweep {sweep}")
        scale = float(np.abs(c64[cold.row_ind, cold.col_ind]).sum())
        assert_objective_close(warm.objective, cold.objective, scale, 1e-9, f"warm vs cold, sweep {sweep}")
        potentials = warm.potentials


@given(
    problem=square_problems(big=80),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([0.0, 0.01, 1.0, 10.0]),
    source=st.sampled_from(["numpy", "torch", "list"]),
)
def test_arbitrary_init_potentials_give_the_optimum(backend, problem, seed, spread, source):
    c, maximize = problem
    n = c.shape[0]
    c64 = c.astype(np.float64)
    feasible = scipy_optimum(c64, maximize)[0]
    rng = np.random.default_rng(seed)
    # Random finite potentials on the scale of the costs (much larger ones lose the costs to rounding,
    # see potential_scale).
    scale = potential_scale(c, maximize)
    init = rng.standard_normal(n) * spread * scale + rng.integers(-3, 4) * scale
    if source == "torch":
        init = torch.from_numpy(init)
    elif source == "list":
        init = init.tolist()
    if not feasible:
        with pytest.raises(ValueError, match="infeasible"):
            mudsc.solve_assignment(c, maximize, init_potentials=init, backend=backend)
        return
    res = mudsc.solve_assignment(c, maximize, init_potentials=init, backend=backend)
    check_solution(c, maximize, res.row_ind, res.col_ind, rtol_for(c.dtype), "random init")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_init_potentials_must_be_finite(backend, bad):
    init = np.zeros(4)
    init[2] = bad
    with pytest.raises(ValueError, match="finite"):
        mudsc.solve_assignment(np.ones((4, 4)), init_potentials=init, backend=backend)
    with pytest.raises(ValueError, match="finite"):
        mudsc.batch_linear_sum_assignment(np.ones((2, 4, 4)), init_potentials=np.stack([init, init]), backend=backend)


@pytest.mark.parametrize("shape", [(3,), (5,), (4, 1), ()])
def test_init_potentials_shape_is_checked(backend, shape):
    with pytest.raises(ValueError, match="shape"):
        mudsc.solve_assignment(np.ones((4, 4)), init_potentials=np.zeros(shape), backend=backend)
    with pytest.raises(ValueError, match="shape"):
        mudsc.batch_linear_sum_assignment(np.ones((2, 4, 4)), init_potentials=np.zeros((3, 4)), backend=backend)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
@pytest.mark.parametrize("which", ["auto", "native", "reference"])
def test_non_square_init_potentials_raise_value_error(which, shape):
    if which not in ("auto", *mudsc.available_backends()):
        pytest.skip(f"{which} is unavailable")
    c = np.random.default_rng(0).random(shape)
    with pytest.raises(ValueError, match="square") as info:
        mudsc.solve_assignment(c, init_potentials=np.zeros(shape[1]), backend=which)
    assert shape_str(shape) in str(info.value)


@pytest.mark.parametrize("which", ["auto", "native", "reference"])
def test_non_square_batch_init_potentials_raise_value_error(which):
    if which not in ("auto", *mudsc.available_backends()):
        pytest.skip(f"{which} is unavailable")
    c = np.random.default_rng(0).random((2, 3, 5))
    with pytest.raises(ValueError, match="square"):
        mudsc.batch_linear_sum_assignment(c, init_potentials=np.zeros((2, 5)), backend=which)


@needs_native
def test_non_square_potentials_through_the_core_raise_value_error():
    """The native core itself rejects potentials on a non-square matrix with a ValueError naming the shape."""
    core = mudsc._native.core
    with pytest.raises(ValueError, match=r"square.*\(3, 5\)"):
        core.lap_solve(np.ones((3, 5)), False, np.zeros(5), False)
    with pytest.raises(ValueError, match=r"square.*\(5, 3\)"):
        core.lap_solve(np.ones((5, 3)), False, None, True)


# --------------------------------------------------------------------------------------------------------------
# Dual certificate (native potentials)
# --------------------------------------------------------------------------------------------------------------


def assert_dual_certificate(c: np.ndarray, maximize: bool, res) -> None:
    """u_i = c'[i, x(i)] - v[x(i)] and every reduced cost c'[i, j] - u_i - v_j >= -1e-9 * scale."""
    c64 = to_np(c).astype(np.float64)
    signed = -c64 if maximize else c64
    v = to_np(res.potentials)
    rows, cols = to_np(res.row_ind), to_np(res.col_ind)
    n = c64.shape[0]
    assert v.shape == (n,) and np.isfinite(v).all()
    np.testing.assert_array_equal(rows, np.arange(n))
    u = signed[rows, cols] - v[cols]
    assert np.isfinite(u).all(), "an assigned entry is forbidden"
    with np.errstate(invalid="ignore"):
        reduced = signed - u[:, None] - v[None, :]
    allowed = np.isfinite(signed)
    scale = magnitude(c64)
    worst = float(reduced[allowed].min()) if allowed.any() else 0.0
    assert worst >= -1e-9 * scale, f"reduced cost {worst} < 0 (scale {scale})"
    # complementary slackness on the assignment holds by construction, so sum(u) + sum(v) equals the
    # objective up to the rounding of u (the potentials may be much larger than the objective).
    big = max(scale, float(np.abs(v).max()) if n else 0.0)
    assert abs((u.sum() + v.sum()) - signed[rows, cols].sum()) <= 1e-12 * (n + 1) * big


@needs_native
@given(problem=square_problems(big=200), layout=st.sampled_from(["C", "F", "neg"]), warm=st.booleans())
def test_dual_certificate(problem, layout, warm):
    c, maximize = problem
    assume(scipy_optimum(c.astype(np.float64), maximize)[0])
    n = c.shape[0]
    init = np.random.default_rng(n).standard_normal(n) * potential_scale(c, maximize) if warm else None
    res = mudsc.solve_assignment(relayout(c, layout), maximize, init_potentials=init, backend="native")
    check_solution(c, maximize, res.row_ind, res.col_ind, rtol_for(c.dtype), "dual")
    assert_dual_certificate(c, maximize, res)


@needs_native
def test_dual_certificate_batch_potentials():
    rng = np.random.default_rng(11)
    costs = rng.random((5, 30, 30))
    for maximize in (False, True):
        col, pot = mudsc.batch_linear_sum_assignment(costs, maximize, 2, return_potentials=True, backend="native")
        assert pot.shape == (5, 30) and pot.dtype == np.float64
        for b in range(5):
            res = mudsc.AssignmentResult(np.arange(30), col[b], float("nan"), pot[b])
            assert_dual_certificate(costs[b], maximize, res)


# --------------------------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------------------------


BATCH_LAYOUTS = ["C", "inner_T", "step", "rows_step", "neg", "broadcast"]


def batch_relayout(a: np.ndarray, how: str) -> np.ndarray:
    b, n, m = a.shape
    if how == "C":
        out = np.ascontiguousarray(a)
    elif how == "inner_T":
        out = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    elif how == "step" and (n, m) == (1, 1):
        out = np.ascontiguousarray(a)  # a (1, 1, 1) step view hits a known bug: test_one_by_one_strided_views
    elif how == "step":
        big = np.zeros((b, 2 * n, 2 * m), dtype=a.dtype)
        big[:, ::2, ::2] = a
        out = big[:, ::2, ::2]
    elif how == "rows_step":
        big = np.zeros((2 * b, 3 * n, m), dtype=a.dtype)
        big[::2, ::3] = a
        out = big[::2, ::3]
    elif how == "neg":
        out = np.ascontiguousarray(a[::-1, ::-1, ::-1])[::-1, ::-1, ::-1]
    elif how == "broadcast" and (b, n, m) == (1, 1, 1):
        out = a  # broadcast_to gives strides (0, 0, 0) here, a known bug: test_one_by_one_strided_views
    elif how == "broadcast":  # every problem is the first one, batch stride 0
        out = np.broadcast_to(a[:1], a.shape) if b else a
    else:
        raise AssertionError(how)
    assert out.shape == a.shape
    return out


@st.composite
def batches(draw, forbidden: bool = True):
    b = draw(st.integers(0, 6))
    n, m = draw(shapes(big=60))
    maximize = draw(st.booleans())
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    c = np.stack([make_values(kind, (n, m), seed + k, 1.0) for k in range(b)]) if b else np.zeros((0, n, m))
    if forbidden and b and draw(st.integers(0, 2)) == 0:
        rng = np.random.default_rng(seed)
        p = draw(st.sampled_from([0.1, 0.5, 0.9]))
        c = np.where(rng.random(c.shape) < p, forbidden_value(maximize), c)
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    note(f"kind={kind} shape={c.shape} dtype={dtype} maximize={maximize}")
    return c.astype(dtype), maximize


def check_batch_result(costs: np.ndarray, maximize: bool, col: np.ndarray, rtol: float) -> None:
    b, n, m = costs.shape
    col = to_np(col)
    assert col.shape == (b, n) and col.dtype == np.int64
    for k in range(b):
        rows = np.flatnonzero(col[k] >= 0)
        assert np.all(col[k][col[k] < 0] == -1)
        if n > m:
            assert (col[k] == -1).sum() == n - m
        check_solution(costs[k], maximize, rows, col[k][rows], rtol, f"problem {k}")


@given(problem=batches(), layout=st.sampled_from(BATCH_LAYOUTS))
def test_batch_matches_per_problem_solves(backend, problem, layout):
    costs, maximize = problem
    a = batch_relayout(costs, layout)
    effective = np.ascontiguousarray(a)  # what was actually passed (broadcast repeats problem 0)
    b, n, m = costs.shape
    infeasible = [k for k in range(b) if not scipy_optimum(effective[k].astype(np.float64), maximize)[0]]
    results = []
    for threads in (1, 2):
        if infeasible:
            with pytest.raises(ValueError, match=f"problem {infeasible[0]} .*infeasible"):
                mudsc.batch_linear_sum_assignment(a, maximize, threads, backend=backend)
            continue
        col = mudsc.batch_linear_sum_assignment(a, maximize, threads, backend=backend)
        assert isinstance(col, np.ndarray)
        check_batch_result(effective, maximize, col, rtol_for(costs.dtype))
        results.append(col)
    if len(results) == 2:
        np.testing.assert_array_equal(results[0], results[1])  # num_threads does not change the answer
        # per-problem solves give the same objectives
        for k in range(b):
            rows, cols = mudsc.linear_sum_assignment(effective[k], maximize, backend=backend)
            e64 = effective[k].astype(np.float64)
            sel = results[0][k] >= 0
            ours = float(e64[np.flatnonzero(sel), results[0][k][sel]].sum())
            single = float(e64[rows, cols].sum())
            assert_objective_close(ours, single, float(np.abs(e64[rows, cols]).sum()), rtol_for(costs.dtype))


@pytest.mark.parametrize("shape", [(4, 7, 3), (3, 1, 5), (2, 9, 1)])
def test_batch_tall_problems_mark_unassigned_rows(backend, shape):
    costs = np.random.default_rng(1).random(shape)
    col = mudsc.batch_linear_sum_assignment(costs, backend=backend)
    check_batch_result(costs, False, col, 1e-9)


@pytest.mark.parametrize("shape", [(0, 3, 3), (0, 2, 5), (3, 0, 4), (3, 4, 0), (2, 0, 0)])
def test_batch_empty(backend, shape):
    col = mudsc.batch_linear_sum_assignment(np.zeros(shape), backend=backend)
    assert col.shape == shape[:2] and col.dtype == np.int64
    assert np.all(col == -1)


@given(data=st.data())
def test_batch_warm_start(backend, data):
    b = data.draw(st.integers(1, 5), label="batch")
    n = data.draw(dims(big=80), label="n")
    maximize = data.draw(st.booleans(), label="maximize")
    dtype = data.draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    costs = (rng.random((b, n, n)) * 10).astype(dtype)
    col, pot = mudsc.batch_linear_sum_assignment(costs, maximize, 2, return_potentials=True, backend=backend)
    if backend == "reference":
        assert pot is None
        pot = rng.standard_normal((b, n))
    else:
        assert isinstance(pot, np.ndarray) and pot.shape == (b, n) and np.isfinite(pot).all()
    perturbed = (costs + rng.standard_normal(costs.shape) * 1e-2).astype(dtype)
    for threads in (1, 2):
        warm, pot2 = mudsc.batch_linear_sum_assignment(
            perturbed, maximize, threads, init_potentials=pot, return_potentials=True, backend=backend
        )
        check_batch_result(perturbed, maximize, warm, rtol_for(dtype))
        cold = mudsc.batch_linear_sum_assignment(perturbed, maximize, threads, backend=backend)
        p64 = perturbed.astype(np.float64)
        for k in range(b):
            w = float(p64[k][np.arange(n), warm[k]].sum())
            c_ = float(p64[k][np.arange(n), cold[k]].sum())
            assert_objective_close(w, c_, float(np.abs(p64[k][np.arange(n), cold[k]]).sum()), 1e-9, f"problem {k}")
    # warm-started batch == warm-started single solves (objective)
    for k in range(b):
        single = mudsc.solve_assignment(perturbed[k], maximize, init_potentials=pot[k], backend=backend)
        w = float(perturbed[k].astype(np.float64)[np.arange(n), warm[k]].sum())
        scale = float(np.abs(perturbed[k].astype(np.float64)[single.row_ind, single.col_ind]).sum())
        assert_objective_close(w, single.objective, scale, 1e-9, f"single {k}")


def test_batch_torch_in_torch_out(backend):
    rng = np.random.default_rng(5)
    costs = torch.from_numpy(rng.random((3, 6, 6)))
    col = mudsc.batch_linear_sum_assignment(costs, backend=backend)
    assert isinstance(col, torch.Tensor) and col.dtype == torch.int64 and col.shape == (3, 6)
    check_batch_result(costs.numpy(), False, col, 1e-9)
    col2, pot = mudsc.batch_linear_sum_assignment(costs.float(), True, 2, return_potentials=True, backend=backend)
    assert isinstance(col2, torch.Tensor)
    check_batch_result(costs.float().numpy(), True, col2, 1e-5)
    if backend == "native":
        assert isinstance(pot, torch.Tensor) and pot.dtype == torch.float64 and pot.shape == (3, 6)
        col3 = mudsc.batch_linear_sum_assignment(costs.float(), True, 2, init_potentials=pot, backend=backend)
        check_batch_result(costs.float().numpy(), True, col3, 1e-5)
    else:
        assert pot is None


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("k", [0, 3, 6])
@pytest.mark.parametrize("problem", ["nan", "unbounded", "infeasible"])
@pytest.mark.parametrize("maximize", [False, True])
def test_batch_error_names_the_problem(backend, threads, k, problem, maximize):
    b, n, m = 7, 5, 6
    costs = np.random.default_rng(k).random((b, n, m))
    bad = forbidden_value(maximize)
    if problem == "nan":
        costs[k, 2, 3] = np.nan
        expected = "NaN"
    elif problem == "unbounded":
        costs[k, 1, 1] = -bad
        expected = "+inf" if maximize else "-inf"
    else:
        costs[k, :, 2:] = bad  # 5 rows, only 2 allowed columns
        expected = "infeasible"
    if k + 1 < b:  # a later problem fails too: the lowest index is the one reported
        costs[b - 1, 0, :] = bad
    with pytest.raises(ValueError) as info:
        mudsc.batch_linear_sum_assignment(costs, maximize, threads, backend=backend)
    msg = str(info.value)
    assert f"problem {k} " in msg, msg
    assert expected in msg, msg
    assert shape_str((n, m)) in msg, msg


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_batch_num_threads_validation(backend, threads):
    with pytest.raises(ValueError, match="num_threads"):
        mudsc.batch_linear_sum_assignment(np.ones((2, 3, 3)), False, threads, backend=backend)


def test_batch_more_threads_than_problems(backend):
    costs = np.random.default_rng(2).random((2, 8, 8))
    a = mudsc.batch_linear_sum_assignment(costs, num_threads=64, backend=backend)
    b = mudsc.batch_linear_sum_assignment(costs, num_threads=None, backend=backend)
    np.testing.assert_array_equal(a, b)
    check_batch_result(costs, False, a, 1e-9)


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def _solvers_2d():
    return [
        ("linear_sum_assignment", lambda c, mx, be: mudsc.linear_sum_assignment(c, mx, backend=be)),
        ("solve_assignment", lambda c, mx, be: mudsc.solve_assignment(c, mx, backend=be)),
        ("batch_linear_sum_assignment", lambda c, mx, be: mudsc.batch_linear_sum_assignment(c[None], mx, backend=be)),
    ]


SOLVERS_2D = _solvers_2d()


@pytest.mark.parametrize("name,fn", SOLVERS_2D, ids=[s[0] for s in SOLVERS_2D])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (5, 2), (1, 1), (40, 40)])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_invalid_values_raise(backend, name, fn, dtype, shape, maximize, layout):
    n, m = shape
    good = np.random.default_rng(0).random(shape)
    unbounded_sign = "+inf" if maximize else "-inf"
    cases = [(np.nan, "NaN"), (-forbidden_value(maximize), unbounded_sign)]
    for value, word in cases:
        for pos in [(0, 0), (n - 1, m - 1), (n // 2, m - 1)]:
            c = good.copy()
            c[pos] = value
            c = relayout(c.astype(dtype), layout)
            with pytest.raises(ValueError) as info:
                fn(c, maximize, backend)
            msg = str(info.value)
            assert word in msg, msg
            if not (backend == "native" and n > m):  # see test_error_shape_of_tall_matrices
                assert shape_str(shape) in msg, msg


@pytest.mark.parametrize("maximize", [False, True])
def test_forbidden_sign_is_not_an_error(backend, maximize):
    """The forbidden infinity is allowed (when feasible); NaN next to it still raises."""
    c = np.random.default_rng(1).random((6, 6))
    c[0, 1:] = forbidden_value(maximize)
    rows, cols = mudsc.linear_sum_assignment(c, maximize, backend=backend)
    check_solution(c, maximize, rows, cols, 1e-9)
    assert cols[0] == 0
    c[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mudsc.linear_sum_assignment(c, maximize, backend=backend)


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(3),
        np.zeros((2, 2, 2)),
        np.zeros((1, 2, 3, 4)),
        np.float64(1.0),
        torch.zeros(4),
        torch.zeros(2, 3, 4),
    ],
    ids=["1d", "3d", "4d", "scalar", "torch1d", "torch3d"],
)
def test_wrong_ndim_2d(backend, value):
    shape = tuple(value.shape)
    for fn in (mudsc.linear_sum_assignment, mudsc.solve_assignment):
        with pytest.raises(ValueError, match="2-D") as info:
            fn(value, backend=backend)
        assert str(shape) in str(info.value)


@pytest.mark.parametrize(
    "value",
    [np.zeros(3), np.zeros((2, 2)), np.zeros((1, 2, 3, 4)), torch.zeros(2, 2)],
    ids=["1d", "2d", "4d", "torch2d"],
)
def test_wrong_ndim_batch(backend, value):
    with pytest.raises(ValueError, match="3-D") as info:
        mudsc.batch_linear_sum_assignment(value, backend=backend)
    assert str(tuple(value.shape)) in str(info.value)


BAD_DTYPES = [
    ("complex", lambda: np.ones((2, 3), dtype=np.complex128), "complex"),
    ("complex64", lambda: np.ones((2, 3), dtype=np.complex64), "complex"),
    ("torch_complex", lambda: torch.ones(2, 3, dtype=torch.complex64), "complex"),
    ("strings", lambda: np.array([["a", "b", "c"], ["d", "e", "f"]]), "numeric"),
    ("bytes", lambda: np.array([[b"a", b"b", b"c"], [b"d", b"e", b"f"]]), "numeric"),
    ("object", lambda: np.array([[1.0, None, 2.0], [3.0, 4.0, 5.0]], dtype=object), "numeric"),
    ("object_numbers", lambda: np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], dtype=object), "numeric"),
    ("datetime", lambda: np.zeros((2, 3), dtype="datetime64[s]"), "numeric"),
]


@pytest.mark.parametrize("make,word", [(m, w) for _, m, w in BAD_DTYPES], ids=[i for i, _, _ in BAD_DTYPES])
def test_bad_dtypes_raise_value_error(backend, make, word):
    value = make()
    for fn in (mudsc.linear_sum_assignment, mudsc.solve_assignment):
        with pytest.raises(ValueError, match=word) as info:
            fn(value, backend=backend)
        assert "(2, 3)" in str(info.value), str(info.value)
    batched = value[None] if not isinstance(value, torch.Tensor) else value.unsqueeze(0)
    with pytest.raises(ValueError, match=word) as info:
        mudsc.batch_linear_sum_assignment(batched, backend=backend)
    assert "(1, 2, 3)" in str(info.value), str(info.value)


@pytest.mark.parametrize("fn", [mudsc.linear_sum_assignment, mudsc.solve_assignment])
def test_bogus_backend(fn):
    with pytest.raises(ValueError, match="bogus"):
        fn(np.ones((2, 2)), backend="bogus")
    with pytest.raises(ValueError, match="backend"):
        mudsc.batch_linear_sum_assignment(np.ones((1, 2, 2)), backend="bogus")


def test_concurrent_calls_from_python_threads(backend):
    """The native solves release the GIL: concurrent calls from Python threads must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    problems = [(rng.random((60, 80)) * 100).astype(np.float32 if k % 2 else np.float64) for k in range(16)]
    serial = [mudsc.solve_assignment(c, bool(k % 3 == 0), backend=backend) for k, c in enumerate(problems)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(mudsc.solve_assignment, c, bool(k % 3 == 0), backend=backend) for k, c in enumerate(problems)
        ]
        parallel = [f.result() for f in futures]
    for k, (a, b) in enumerate(zip(serial, parallel)):
        np.testing.assert_array_equal(a.col_ind, b.col_ind)
        assert a.objective == b.objective
        check_solution(problems[k], k % 3 == 0, b.row_ind, b.col_ind, rtol_for(problems[k].dtype), f"thread {k}")
