"""The mudsc torch ops library (``mudsc._C``, registered by ``import mudsc``).

``torch.ops.mudsc.affine_selftest(x, scale, shift)`` computes ``scale * x + shift`` elementwise for float32 /
float64 tensors on every compiled backend; ``torch.ops.mudsc.build_info()`` names those backends.
"""

from __future__ import annotations

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
        assert info["core_simd"] in ("avx2", "scalar")


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
