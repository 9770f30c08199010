"""Benchmark of the streaming activation statistics (one ``CorrelationAccumulator.update`` per batch).

For N = 2 models, per shape, side by side in one run (medians of repeats, interleaved):

- ``native``: ``mudsc.CorrelationAccumulator.update([x_a, x_b], channel_dim)`` (the ``mudsc::stats_update_`` op:
  layout read + cast + shift + non-finite zeroing, blocked symmetric product, float64 fold);
- ``reference``: the original's per-batch pipeline (``mudsc.reference.stats``: transpose/reshape/concatenate,
  ``nan_to_num``, mean, ``XXᵀ/L``, the unused std, batch-weighted accumulation);
- ``mm``: a bare ``Yᵀ·Y`` (``torch.mm``) of the same shape on a ready contiguous float32 ``Y[L, F]``: the GEMM
  limit. GFLOP/s are reported for the full ``2·L·F²`` product in every column, so they compare directly (the
  native op multiplies only the upper block triangle, so it can beat the bare GEMM).

Shapes: ResNet stage (C = 256 per model, ``[32, 256, 8, 8]`` channel-first), ViT-B/L token layers
(``[32, 197, C]`` channel-last, C = 768, 3072, 4096). Correctness first: on one batch with large-mean channels,
the native and reference correlations are compared with float64 (reported, and the native one must agree to 1e-6).
Writes ``benchmarks/results/stats.json`` (or ``--out``).

    python benchmarks/bench_stats.py [--quick] [--device cpu|cuda] [--tf32] [--threads N] [--out path.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import RESULTS, device_name, interleaved_medians, write_json

import mudsc
from mudsc.reference.stats import CorrelationAccumulator as ReferenceCorrelationAccumulator

FLOOR_VS_MM_CPU = 0.7  # native update throughput / bare mm throughput
FLOOR_VS_REFERENCE_CPU = 1.5  # at F = 2·768, L = 32·197
FLOOR_VS_MM_CUDA = 0.8
FLOOR_VS_REFERENCE_CUDA = 2.0

SHAPES = [
    ("ResNet stage C=256", (32, 256, 8, 8), 1),
    ("ViT-B token d=768", (32, 197, 768), -1),
    ("ViT-B MLP 4d=3072", (32, 197, 3072), -1),
    ("ViT-L MLP 4d=4096", (32, 197, 4096), -1),
]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA), so a timer around a call measures the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PRECISIONS = ("ieee", "tf32", "tf32x3")


def accuracy_check(device: torch.device) -> dict:
    """Large-mean channels (mean 1e4, std 1): max |corr − float64 truth| for native (default precision; on CUDA
    also every precision, as ``native_<precision>``) and reference."""
    g = torch.Generator().manual_seed(0)
    xs = [(torch.randn(16, 197, 64, generator=g) + 1e4 * torch.rand(64, generator=g)) for _ in range(2)]
    truth = torch.corrcoef(torch.cat([x.reshape(-1, 64) for x in xs], 1).double().T)
    configs = {"native": dict(backend="native"), "reference": dict(backend="reference")}
    if device.type == "cuda":
        configs.update({f"native_{p}": dict(backend="native", precision=p) for p in PRECISIONS})
    out = {}
    for name, kw in configs.items():
        acc = mudsc.CorrelationAccumulator(128, device=device, **kw)
        for k in range(0, 16, 4):
            acc.update([x[k : k + 4].to(device) for x in xs], channel_dim=-1)
        out[name] = float((acc.correlation().double().cpu() - truth).abs().max())
    return out


def _with_tf32(fn):
    """fn run with TF32 cuBLAS matmuls allowed (the bare-GEMM limit at the TF32 variants' precision)."""

    def run():
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    return run


def cuda_variants(f: int, xs: list, cdim: int, y: torch.Tensor, device: torch.device) -> dict:
    """On CUDA: the native update at every precision and a few block sizes, and the bare GEMM in TF32."""
    fns = {}
    default_bs = mudsc.stats._default_block_size(f, device.type)
    for p in PRECISIONS:
        for bs in sorted({f, max(64, f // 2), default_bs, max(64, f // 8)}, reverse=True):
            acc = mudsc.CorrelationAccumulator(f, device=device, backend="native", precision=p, block_size=bs)
            fns[f"nat_{p}_b{bs}"] = (lambda a: lambda: a.update(xs, channel_dim=cdim))(acc)
    fns["mm_tf32"] = _with_tf32(lambda: torch.mm(y.T, y))
    return fns


def profile_update(acc, xs: list, cdim: int, title: str) -> None:
    """Per-kernel CUDA and CPU time of one ``update`` (torch.profiler), printed: where a small update's time goes."""
    from torch.profiler import ProfilerActivity, profile

    acc.update(xs, channel_dim=cdim)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            acc.update(xs, channel_dim=cdim)
        torch.cuda.synchronize()
    print(f"## profile, 5 updates: {title}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def run(quick: bool, device: torch.device, repeats: int, profile: bool = False) -> list:
    rows = []
    shapes = SHAPES[:2] if quick else SHAPES
    for name, shape, cdim in shapes:
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(*shape, generator=g).to(device) for _ in range(2)]
        c = shape[cdim]
        f = 2 * c
        length = xs[0].numel() // c
        y = torch.randn(length, f, generator=g).to(device)
        native = mudsc.CorrelationAccumulator(f, device=device, backend="native")
        reference = ReferenceCorrelationAccumulator(f, device=device)
        dims = [cdim % len(shape)] * 2
        fns = {
            "native": lambda: native.update(xs, channel_dim=cdim),
            "reference": lambda: reference.update(xs, dims),
            "mm": lambda: torch.mm(y.T, y),
        }
        if device.type == "cuda":
            fns.update(cuda_variants(f, xs, cdim, y, device))
        t = interleaved_medians(fns, repeats, sync=lambda: sync(device))
        if profile and device.type == "cuda" and f <= 1536:
            profile_update(native, xs, cdim, f"{name}, default accumulator ({native.precision}, "
                                             f"block {native.block_size})")
        flop = 2.0 * length * f * f
        row = {
            "shape": name,
            "input": list(shape),
            "F": f,
            "L": length,
            **{f"{k}_ms": v * 1e3 for k, v in t.items()},
            **{f"{k}_gflops": flop / v / 1e9 for k, v in t.items()},
            "native_vs_mm": t["mm"] / t["native"],
            "native_vs_reference": t["reference"] / t["native"],
        }
        rows.append(row)
        if device.type == "cuda":
            for k in sorted(t):
                if k.startswith("nat_") or k == "mm_tf32":
                    print(f"    {k:<22} {t[k] * 1e3:8.3f} ms  {flop / t[k] / 1e12:7.1f} TFLOP/s  "
                          f"vs mm {t['mm'] / t[k]:5.2f}x  vs mm_tf32 {t['mm_tf32'] / t[k]:5.2f}x  "
                          f"vs ref {t['reference'] / t[k]:5.2f}x", flush=True)
        print(
            f"| {name:<20} | {f:>5} | {length:>6} | {t['native'] * 1e3:>9.1f} | {t['reference'] * 1e3:>9.1f} | "
            f"{t['mm'] * 1e3:>9.1f} | {row['native_gflops']:>7.0f} | {row['mm_gflops']:>7.0f} | "
            f"{row['native_vs_mm']:>6.2f}x | {row['native_vs_reference']:>6.2f}x |",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes (CI smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 tensor-core matmuls (CUDA; both columns)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="CUDA: print a torch.profiler table of the small shapes")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    repeats = args.repeats or (3 if args.quick else 7)
    header = {
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
    }
    print(f"# stats update, N = 2 models: {header['device']} ({device.type}), {header['threads']} threads, "
          f"torch {torch.__version__}, median of {repeats}")
    acc = accuracy_check(device)
    print("large-mean channels (mean up to 1e4, std 1): max |corr error| "
          + ", ".join(f"{k} {v:.1e}" for k, v in acc.items()))
    print("| shape                |     F |      L | native ms |    ref ms |     mm ms | nat GF/s | mm GF/s | vs mm | vs ref |")
    print("|----------------------|-------|--------|-----------|-----------|-----------|---------|---------|-------|--------|")
    rows = run(args.quick, device, repeats, args.profile)
    floor_mm = FLOOR_VS_MM_CUDA if device.type == "cuda" else FLOOR_VS_MM_CPU
    floor_ref = FLOOR_VS_REFERENCE_CUDA if device.type == "cuda" else FLOOR_VS_REFERENCE_CPU
    vitb = next(r for r in rows if r["F"] == 1536)
    checks = [
        ("native accuracy on large-mean channels <= 1e-6", acc["native"] <= 1e-6, f"{acc['native']:.1e}"),
        (f"ViT-B d=768 update >= {floor_mm}x bare mm throughput", vitb["native_vs_mm"] >= floor_mm,
         f"{vitb['native_vs_mm']:.2f}x"),
        (f"ViT-B d=768 update >= {floor_ref}x the reference pipeline", vitb["native_vs_reference"] >= floor_ref,
         f"{vitb['native_vs_reference']:.2f}x"),
    ]
    for text, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text} ({value})")
    out = args.out or RESULTS / ("stats_quick.json" if args.quick else "stats.json")
    write_json(out, {"header": header, "accuracy": acc, "rows": rows,
                     "checks": [{"check": t, "pass": ok, "value": v} for t, ok, v in checks]}, indent=2)
    print(f"wrote {out}")
    # A wrong answer fails the run; timings never do (noisy machines).
    return 0 if checks[0][1] else 1


if __name__ == "__main__":
    sys.exit(main())
