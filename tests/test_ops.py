"""The mudsc torch ops library (``mudsc._C``, registered by ``import mudsc``).

``torch.ops.mudsc.affine_selftest(x, scale, shift)`` computes ``scale * x + shift`` elementwise for float32 /
float64 tensors on every compiled backend; ``torch.ops.mudsc.build_info()`` names those backends.

Every op of the library also goes through ``torch.library.opcheck`` (schema and alias annotations, the fake
kernels of ``mudsc/_ops.py`` against the real ones, AOT dispatch with dynamic shapes) over the input layouts
(contiguous, channels-last, transposed, strided, expanded, empty) and dtypes (float16/bfloat16/float32/float64
where accepted) it meets; CUDA cases carry the ``cuda`` mark. The values of the statistics ops are tested
against the float64 reference in tests/test_stats.py and tests/test_similarity.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

import mudsc

pytestmark = pytest.mark.skipif(not mudsc.build_info()["torch_ops"], reason="mudsc._C did not load")

DTYPES = [torch.float32, torch.float64]
PARAMS = [(2.0, 1.0), (-0.5, 3.25), (0.0, -7.0), (1.0, 0.0), (1e3, -1e-3)]


def affine(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    return torch.ops.mudsc.affine_selftest(x, scale, shift)


def expected(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    return scale * x + shift


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    # The kernels may fuse the multiply-add (one rounding instead of two): allow a couple of ulps.
    assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
    eps = torch.finfo(want.dtype).eps
    peak = want.abs().max().item() if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=4 * eps, atol=4 * eps * max(1.0, peak))


def test_op_is_registered():
    assert hasattr(torch.ops.mudsc, "affine_selftest")
    assert hasattr(torch.ops.mudsc, "build_info")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,shift", PARAMS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4), (100_003,), ()])
def test_affine_cpu_matches_formula(dtype, scale, shift, shape):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape)))
    y = affine(x, scale, shift)
    assert_close(y, expected(x, scale, shift))
    assert y.data_ptr() != x.data_ptr()  # a new tensor; the input is untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_cpu_exact_on_representable_values(dtype):
    x = torch.arange(-50, 50, dtype=dtype)
    torch.testing.assert_close(affine(x, 2.0, 1.0), 2 * x + 1, rtol=0, atol=0)
    torch.testing.assert_close(affine(x, 0.0, 3.0), torch.full_like(x, 3.0), rtol=0, atol=0)
    torch.testing.assert_close(affine(x, 1.0, 0.0), x, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.T,  # transposed
        lambda t: t[:, ::3],  # stepped columns
        lambda t: t[::2, 1:],  # stepped rows with an offset
        lambda t: t.T[2:7],  # transposed slice
        lambda t: t.unsqueeze(0).expand(3, *t.shape),  # zero stride
    ],
    ids=["transposed", "step_cols", "step_rows_offset", "transposed_slice", "expanded"],
)
def test_affine_cpu_non_contiguous(dtype, make):
    base = torch.randn(8, 12, dtype=dtype, generator=torch.Generator().manual_seed(3))
    x = make(base)
    assert not x.is_contiguous()
    before = base.clone()
    y = affine(x, -1.5, 0.25)
    assert y.shape == x.shape
    assert_close(y, expected(x, -1.5, 0.25))
    torch.testing.assert_close(base, before, rtol=0, atol=0)  # input not modified


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
def test_affine_cpu_empty(dtype, shape):
    x = torch.empty(shape, dtype=dtype)
    y = affine(x, 2.0, 1.0)
    assert y.shape == x.shape and y.dtype == dtype and y.numel() == 0


def test_affine_cpu_special_values():
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0], dtype=torch.float64)
    y = affine(x, 2.0, 1.0)
    want = 2.0 * x + 1.0
    torch.testing.assert_close(y, want, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float16, torch.bfloat16]
)
def test_affine_rejects_other_dtypes(dtype):
    x = torch.ones(4, dtype=dtype)
    with pytest.raises(RuntimeError, match="float32") as info:
        affine(x, 2.0, 1.0)
    assert "float64" in str(info.value)


def test_affine_rejects_complex():
    with pytest.raises(RuntimeError, match="float32"):
        affine(torch.ones(3, dtype=torch.complex64), 2.0, 1.0)


def test_build_info():
    info = torch.ops.mudsc.build_info()
    assert isinstance(info, str)
    backends = info.split(",")
    assert "cpu" in backends
    assert set(backends) <= {"cpu", "cuda"}
    assert mudsc.build_info()["torch_ops_backends"] == info


def test_python_build_info():
    info = mudsc.build_info()
    assert info["torch_ops"] is True and info["torch_ops_error"] is None
    assert info["cuda_available"] == torch.cuda.is_available()
    if info["core"]:
        # The level itself is checked against the compiler's macros in tests/test_core_build.py.
        assert info["core_simd"] in ("avx512", "avx2", "scalar")
        assert info["core_simd"] == mudsc._native.core.simd


def test_build_info_names_the_backends_with_kernels():
    """build_info lists a backend exactly when its kernels are registered with the dispatcher."""
    backends = torch.ops.mudsc.build_info().split(",")
    for key, name in (("CPU", "cpu"), ("CUDA", "cuda")):
        has = torch._C._dispatch_has_kernel_for_dispatch_key("mudsc::affine_selftest", key)
        assert has == (name in backends), (key, backends)
    assert backends == sorted(backends, key=["cpu", "cuda"].index)  # device-type order, CPU first


# ------------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU by conftest)
# ------------------------------------------------------------------------------------------------------------


def _needs_cuda_build():
    if "cuda" not in torch.ops.mudsc.build_info().split(","):
        pytest.fail("a CUDA device is present but mudsc._C was built without CUDA kernels")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", [1, 255, 256, 257, 4099, 1_000_000, 17_000_000])
def test_affine_cuda_matches_cpu(dtype, numel):
    _needs_cuda_build()
    gen = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, dtype=dtype, generator=gen)
    for scale, shift in [(2.0, 1.0), (-0.5, 3.25)]:
        y_gpu = affine(x.cuda(), scale, shift)
        assert y_gpu.is_cuda and y_gpu.dtype == dtype and y_gpu.shape == x.shape
        y_cpu = affine(x, scale, shift)
        # CPU and GPU may differ by fused multiply-add rounding only.
        assert_close(y_gpu.cpu(), y_cpu)
        assert_close(y_gpu.cpu(), expected(x, scale, shift))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_cuda_non_contiguous_and_empty(dtype):
    _needs_cuda_build()
    base = torch.randn(64, 96, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for x in (base.T, base[:, ::5], base[3:40:2, 7:]):
        y = affine(x.cuda(), 3.0, -2.0)
        assert y.shape == x.shape
        assert_close(y.cpu(), affine(x.contiguous(), 3.0, -2.0))
    empty = affine(torch.empty(0, 5, dtype=dtype, device="cuda"), 2.0, 1.0)
    assert empty.is_cuda and empty.shape == (0, 5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_cuda_runs_on_the_current_stream(dtype):
    """On a non-default stream, the kernel must be ordered after earlier work on that stream.

    The stream first sleeps, then overwrites x; a kernel launched on another stream would read the old x.
    """
    _needs_cuda_build()
    n = 1_000_000
    src = torch.randn(n, dtype=dtype, device="cuda")
    x = torch.zeros(n, dtype=dtype, device="cuda")
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream
        x.copy_(src)
        y = affine(x, 2.0, 1.0)
    stream.synchronize()
    assert_close(y.cpu(), affine(src.cpu(), 2.0, 1.0))
    # and the default stream still works afterwards
    z = affine(src, -1.0, 0.5)
    torch.cuda.synchronize()
    assert_close(z.cpu(), affine(src.cpu(), -1.0, 0.5))


@pytest.mark.cuda
def test_affine_cuda_rejects_int():
    _needs_cuda_build()
    with pytest.raises(RuntimeError, match="float32"):
        affine(torch.ones(4, dtype=torch.int64, device="cuda"), 2.0, 1.0)


@pytest.mark.cuda
def test_lap_accepts_cuda_tensors():
    """CUDA tensors are copied to the host by the solvers; outputs are (CPU) torch tensors."""
    c = torch.rand(20, 30, device="cuda", dtype=torch.float64)
    rows, cols = mudsc.linear_sum_assignment(c)
    assert isinstance(rows, torch.Tensor) and rows.shape == (20,)
    import scipy.optimize

    r, k = scipy.optimize.linear_sum_assignment(c.cpu().numpy())
    assert abs(c.cpu()[rows, cols].sum().item() - c.cpu().numpy()[r, k].sum()) <= 1e-9 * c.cpu().numpy()[r, k].sum()


# ------------------------------------------------------------------------------------------------------------
# opcheck: schema (mutation/aliasing), fake kernels (mudsc/_ops.py) and torch.compile for every op, over the
# input layouts and dtypes each op accepts. CUDA cases carry the cuda mark (skipped without a GPU).
# ------------------------------------------------------------------------------------------------------------

# Ops with only a CPU kernel (mudsc.similarity uses index_add_ elsewhere): no CUDA cases.
CPU_ONLY_OPS = {"axis_segment_sum"}
# Ops that take no tensor (build_info returns a string): nothing for opcheck or a fake kernel to check.
NO_TENSOR_OPS = {"build_info"}

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
CHANNELS_LAST = torch.channels_last


def _randn(shape, dtype, device, seed):
    """Normal values of `dtype` on `device` (drawn in float64 on the CPU, so every dtype sees the same data)."""
    return torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


# One activation of C = 4 features over L = 24 samples in each layout the statistics pass meets:
# name -> (make(dtype, device) -> x, channel dim).
_C = 4
ACTIVATION_LAYOUTS = {
    "nchw": (lambda dt, dev: _randn((2, _C, 3, 4), dt, dev, 1), 1),
    "channels_last": (lambda dt, dev: _randn((2, _C, 3, 4), dt, dev, 2).contiguous(memory_format=CHANNELS_LAST), 1),
    "nhwc": (lambda dt, dev: _randn((2, 3, 4, _C), dt, dev, 3), -1),
    "tokens": (lambda dt, dev: _randn((2, 12, _C), dt, dev, 4), 2),
    "transposed": (lambda dt, dev: _randn((_C, 24), dt, dev, 5).t(), 1),
    "strided_channels": (lambda dt, dev: _randn((2, 2 * _C, 3, 4), dt, dev, 6)[:, ::2], 1),
    "strided_rows": (lambda dt, dev: _randn((48, _C), dt, dev, 7)[::2], -1),
}


def _feature_major(x, dim):
    """The layout stats_update_ picks for its prepared copy (stats.cpp: feature_major_for)."""
    c = dim % x.dim()
    return any(s > 1 for s in x.shape[c + 1 :])


def _prepare_args(layouts, dtypes, shift_dtype, *, device, feature_major=None, nonfinite=False):
    """(xs, channel_dims, shift, feature_major) for stats_prepare: one input per layout, C features each."""
    xs, dims = [], []
    for layout, dtype in zip(layouts, dtypes):
        make, dim = ACTIVATION_LAYOUTS[layout]
        xs.append(make(dtype, device))
        dims.append(dim)
    if nonfinite:
        xs[0] = xs[0].clone()
        xs[0].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    shift = _randn((_C * len(xs),), shift_dtype, device, 11) * 0.1
    fm = _feature_major(xs[0], dims[0]) if feature_major is None else feature_major
    return xs, dims, shift, fm


def _no_samples_args(*, device):
    return [torch.empty((0, 3, _C), device=device)], [-1], torch.zeros(_C, device=device), False


def _affine_args(shape, dtype, scale, shift, *, device, layout="contiguous", seed=1):
    """(x, scale, shift) for affine_selftest with x in the given layout."""
    x = _randn(shape, dtype, device, seed)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    elif layout == "transposed":
        x = x.t()
    elif layout == "stepped":
        x = x[::2, 1::3]
    elif layout == "expanded":
        x = x.expand(3, *shape)
    return x, scale, shift


def _affine_cases():
    return [
        ("contiguous_f32", partial(_affine_args, (3, 5), F32, 2.0, 1.0)),
        ("contiguous_f64", partial(_affine_args, (3, 5), F64, -0.5, 3.25)),
        ("channels_last_f32", partial(_affine_args, (2, 3, 4, 5), F32, 2.0, 1.0, layout="channels_last")),
        ("transposed_f64", partial(_affine_args, (4, 6), F64, 1.5, -1.0, layout="transposed")),
        ("stepped_f32", partial(_affine_args, (8, 12), F32, 2.0, 0.5, layout="stepped")),
        ("expanded_f32", partial(_affine_args, (5,), F32, 2.0, 1.0, layout="expanded")),
        ("scalar_f64", partial(_affine_args, (), F64, 3.0, 1.0)),
        ("empty_f32", partial(_affine_args, (0, 3), F32, 2.0, 1.0)),
    ]


def _prepare_cases():
    cases = [(f"{layout}_f32", partial(_prepare_args, [layout], [F32], F32)) for layout in ACTIVATION_LAYOUTS]
    for fm in (False, True):  # both output layouts, whichever stats_update_ would pick
        for layout in ("nchw", "tokens"):
            cases.append((f"{layout}_f32_fm{int(fm)}", partial(_prepare_args, [layout], [F32], F32, feature_major=fm)))
    for name, dtype, shift_dtype in (("f16", F16, F32), ("bf16", BF16, F32), ("f64", F64, F64), ("f32_s64", F32, F64)):
        for layout in ("nchw", "tokens"):
            cases.append((f"{layout}_{name}", partial(_prepare_args, [layout], [dtype], shift_dtype)))
    cases.append(("two_models_mixed", partial(_prepare_args, ["nchw", "channels_last"], [F32, F16], F32)))
    cases.append(("nonfinite", partial(_prepare_args, ["tokens"], [F32], F32, nonfinite=True)))
    cases.append(("no_samples", _no_samples_args))
    return cases


def _update_args(layouts, dtypes, shift_dtype, *, device, block_size=0, fold_samples=0, precision=0,
                 moment_strided=False, nonfinite=False, packed=False):
    """(moment, sums, xs, channel_dims, shift, block_size, fold_samples, precision) for stats_update_."""
    xs, dims, shift, _ = _prepare_args(layouts, dtypes, shift_dtype, device=device, nonfinite=nonfinite)
    f = shift.shape[0]
    if moment_strided:  # a view: every other column of a wider buffer
        moment = torch.zeros((f, 2 * f), dtype=F64, device=device)[:, ::2]
    elif packed:  # the packed upper triangle
        moment = torch.zeros(f * (f + 1) // 2, dtype=F64, device=device)
    else:
        moment = torch.zeros((f, f), dtype=F64, device=device)
    sums = torch.zeros(f, dtype=F64, device=device)
    return moment, sums, xs, dims, shift, block_size, fold_samples, precision


def _update_cases():
    cases = [(f"{layout}_f32", partial(_update_args, [layout], [F32], F32)) for layout in ACTIVATION_LAYOUTS]
    # Block rows (block_size < F) and folds/chunks (fold_samples < L): the generic and cuBLAS block paths.
    cases.append(("nchw_blocks_folds", partial(_update_args, ["nchw"], [F32], F32, block_size=3, fold_samples=12)))
    cases.append(("tokens_blocks_folds", partial(_update_args, ["tokens"], [F32], F32, block_size=2, fold_samples=5)))
    for p in (1, 2):  # TF32 / TF32x3 on CUDA; ignored on the CPU
        cases.append((f"tokens_precision{p}", partial(_update_args, ["tokens"], [F32], F32, block_size=3, precision=p)))
    for name, dtype, shift_dtype in (("f16", F16, F32), ("bf16", BF16, F32), ("f64", F64, F64)):
        cases.append((f"nchw_{name}", partial(_update_args, ["nchw"], [dtype], shift_dtype)))
        cases.append((f"tokens_{name}", partial(_update_args, ["tokens"], [dtype], shift_dtype, block_size=3)))
    cases.append(("two_models_mixed", partial(_update_args, ["nhwc", "tokens"], [F32, BF16], F32, block_size=3)))
    cases.append(("moment_strided", partial(_update_args, ["tokens"], [F32], F32, moment_strided=True)))
    cases.append(
        ("moment_strided_blocks", partial(_update_args, ["nchw"], [F32], F32, block_size=3, moment_strided=True))
    )
    cases.append(("nonfinite", partial(_update_args, ["nchw"], [F32], F32, nonfinite=True)))
    cases.append(("packed", partial(_update_args, ["tokens"], [F32], F32, packed=True)))
    cases.append(("packed_blocks_folds", partial(_update_args, ["nchw"], [F32], F32, block_size=3, fold_samples=12,
                                                 packed=True)))
    cases.append(("packed_f64", partial(_update_args, ["tokens"], [F64], F64, block_size=2, packed=True)))
    return cases


def _finalize_args(*, device, shift_dtype=F64, moment_layout="contiguous", constant_unit=False):
    """(moment, sums, shift, count, eps) for stats_finalize, from 50 samples of 6 features."""
    x = _randn((50, 6), F64, device, 21) * 3 + 1
    if constant_unit:
        x[:, 2] = 0.75  # a zero-variance unit
    shift = x[:5].mean(0).to(shift_dtype)
    y = x - shift.to(F64)
    moment = (y.T @ y).triu()  # only the upper triangle is defined after stats_update_
    if moment_layout == "strided":
        wide = torch.zeros((6, 12), dtype=F64, device=device)
        wide[:, ::2] = moment
        moment = wide[:, ::2]
    elif moment_layout == "float32":
        moment = moment.to(F32)
    elif moment_layout == "packed":
        rows, cols = torch.triu_indices(6, 6, device=device)
        moment = moment[rows, cols].contiguous()
    return moment, y.sum(0), shift, x.shape[0], 1e-7


def _finalize_cases():
    return [
        ("contiguous_f64", _finalize_args),
        ("shift_f32", partial(_finalize_args, shift_dtype=F32)),
        ("moment_strided", partial(_finalize_args, moment_layout="strided")),
        ("moment_f32", partial(_finalize_args, moment_layout="float32")),
        ("zero_variance", partial(_finalize_args, constant_unit=True)),
        ("packed", partial(_finalize_args, moment_layout="packed")),
        ("packed_zero_variance", partial(_finalize_args, moment_layout="packed", constant_unit=True)),
    ]


def _segment_args(shape, axis, size, dtype, *, device, scale=False, layout="contiguous"):
    """(t, axis, labels, size, scale) for axis_segment_sum; labels j % size along t's axis."""
    t = _randn(shape, dtype, device, 31)
    if layout == "channels_last":
        t = t.contiguous(memory_format=CHANNELS_LAST)
    elif layout == "transposed":
        t = t.transpose(0, -1)
    labels = torch.arange(t.shape[axis], device=device) % size
    return t, axis, labels, size, _randn((size,), dtype, device, 32) if scale else None


def _segment_cases():
    return [
        ("rows_f32", partial(_segment_args, (6, 5), 0, 3, F32)),
        ("cols_f64_scale", partial(_segment_args, (6, 5), 1, 2, F64, scale=True)),
        ("channels_last_f32", partial(_segment_args, (2, 6, 3, 3), 1, 4, F32, layout="channels_last")),
        ("transposed_f64_last_axis", partial(_segment_args, (5, 4, 6), -1, 2, F64, scale=True, layout="transposed")),
        ("vector_f32", partial(_segment_args, (7,), 0, 3, F32, scale=True)),
    ]


OPCHECK_CASES = {
    "affine_selftest": _affine_cases(),
    "stats_prepare": _prepare_cases(),
    "stats_update_": _update_cases(),
    "stats_finalize": _finalize_cases(),
    "stats_correlation": _finalize_cases(),
    "axis_segment_sum": _segment_cases(),
}


def _opcheck_params():
    params = []
    for op_name, cases in OPCHECK_CASES.items():
        for case, make in cases:
            params.append(pytest.param(op_name, make, "cpu", id=f"{op_name}-{case}-cpu"))
            if op_name not in CPU_ONLY_OPS:
                params.append(pytest.param(op_name, make, "cuda", id=f"{op_name}-{case}-cuda", marks=pytest.mark.cuda))
    return params


def _mudsc_op_names():
    return sorted(
        name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("mudsc::")
    )


def test_every_op_has_opcheck_cases():
    """A new op must come with opcheck cases here and a fake kernel in mudsc/_ops.py."""
    assert set(_mudsc_op_names()) == set(OPCHECK_CASES) | NO_TENSOR_OPS


def test_cpu_only_ops_have_no_cuda_kernel():
    """If one of CPU_ONLY_OPS gains a CUDA kernel, it must get CUDA opcheck cases (drop it from the set)."""
    for name in _mudsc_op_names():
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"mudsc::{name}", "CUDA")
        if name in CPU_ONLY_OPS:
            assert not has_cuda, name


@pytest.mark.parametrize("op_name,make,device", _opcheck_params())
def test_opcheck(op_name, make, device):
    if device == "cuda":
        _needs_cuda_build()
    args = make(device=device)
    torch.library.opcheck(getattr(torch.ops.mudsc, op_name).default, args)


def test_fakes_give_the_kernels_shapes_under_compile():
    """End to end: the statistics ops traced by torch.compile (fullgraph) return what eager returns."""
    make, dim = ACTIVATION_LAYOUTS["nchw"]
    x = make(F32, "cpu")
    shift = torch.zeros(_C)

    def update(moment, sums, x):
        nonfinite = torch.ops.mudsc.stats_update_(moment, sums, [x], [dim], shift, 3, 12, 0)
        return torch.ops.mudsc.stats_finalize(moment, sums, shift, 24, 1e-7), nonfinite

    eager_state = (torch.zeros(_C, _C, dtype=torch.float64), torch.zeros(_C, dtype=torch.float64))
    compiled_state = (torch.zeros(_C, _C, dtype=torch.float64), torch.zeros(_C, dtype=torch.float64))
    want, want_nf = update(*eager_state, x)
    got, got_nf = torch.compile(update, fullgraph=True, backend="aot_eager")(*compiled_state, x)
    assert torch.equal(got_nf, want_nf)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.testing.assert_close(compiled_state[0], eager_state[0], rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_update_takes_the_registered_cublas_step():
    """stats_update_ on CUDA float32 reaches cuda/stats_cuda.cu's Gram step (registered at load time).

    Only that step honours `precision`: a TF32 product differs from the IEEE one (10-bit mantissa inputs),
    whereas the generic at::mm_out fallback would ignore precision and give identical moments.
    """
    _needs_cuda_build()
    x = _randn((4096, 64), F32, "cuda", 41) * 3 + 1
    shift = torch.zeros(64, device="cuda")
    moments = []
    for precision in (0, 1):
        moment = torch.zeros((64, 64), dtype=F64, device="cuda")
        sums = torch.zeros(64, dtype=F64, device="cuda")
        torch.ops.mudsc.stats_update_(moment, sums, [x], [1], shift, 32, 0, precision)
        moments.append(moment.triu())
    ieee, tf32 = moments
    want = (x.double().T @ x.double()).triu()
    torch.testing.assert_close(ieee, want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(tf32, want, rtol=5e-3, atol=1.0)
    assert not torch.equal(ieee, tf32), "precision=1 was ignored: the CUDA Gram step was not used"


# ------------------------------------------------------------------------------------------------------------
# Source layout: generic files of csrc/ops never test the build for CUDA (the twins register themselves).
# ------------------------------------------------------------------------------------------------------------


def test_generic_op_sources_have_no_cuda_conditionals():
    """CUDA code lives in csrc/ops/cuda/ and registers itself; nothing else tests the build for it."""
    import pathlib

    ops = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "ops"
    if not ops.is_dir():
        pytest.skip("not a source checkout")
    sources = [p for p in ops.rglob("*") if p.suffix in (".cpp", ".hpp", ".h")]
    generic = [p for p in sources if "cuda" not in p.relative_to(ops).parts]
    assert generic
    for path in generic:
        text = path.read_text()
        assert "MUDSC_WITH_CUDA" not in text, path
        assert "#include <ATen/cuda" not in text and "#include <c10/cuda" not in text, path
