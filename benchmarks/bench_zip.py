"""Benchmark of the matching solvers: greedy zip (ZipIt! / MuDSC-zip) and group alignment (attention heads).

What is measured, single-threaded, side by side in one run:

- ``zip``: ``mudsc.zip_match`` native (C++) vs reference (the original's Θ(O³) torch loop) on the merge similarity
  of two synthetic models (``mudsc.demo.problems.merge_similarity``), O = 512, 1024, 2048; then native alone up to
  O = 10240 (ViT-H MLP size). Correctness first: where the reference runs, labels must be identical. Peak extra
  memory of the native zip is measured in a fresh subprocess (growth of the peak resident size, VmHWM, reset
  right before the call) and reported against one O² float32 matrix.
- ``group``: ``mudsc.group_permute_match`` native vs reference at ViT-B (12 heads x 64) and ViT-L (16 x 64) head
  shapes, N = 2 (the shared validation is included in both times).
- ``group zip``: ``mudsc.group_zip_match`` native vs reference at the same head shapes.
Prints markdown tables naming the CPU and thread count, and writes ``benchmarks/results/zip.json``.

    python benchmarks/bench_zip.py [--quick] [--max-o 10240] [--out path.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import ROOT, RESULTS, device_name, median_time, write_json  # noqa: E402

import mudsc  # noqa: E402
from mudsc.demo.problems import merge_similarity  # noqa: E402

torch.set_num_threads(1)

FLOOR_ZIP_VS_REFERENCE = 100.0  # O = 2048
FLOOR_ZIP_8192_SECONDS = 10.0
FLOOR_ZIP_MEMORY = 1.5  # x one O^2 float32 matrix
FLOOR_GROUP_VS_REFERENCE = 10.0  # ViT-B heads

MEMORY_PROBE = """
import sys, time, numpy as np
from mudsc import _core

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024

s = np.load(sys.argv[1])
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak (VmHWM) to the current resident size
before = status('VmRSS')
t0 = time.perf_counter()
_core.zip_match(s, 2, 0.5, 0.5, 1.0)
elapsed = time.perf_counter() - t0
print(max(0, status('VmHWM') - before), elapsed)
"""


def peak_extra_memory(s: np.ndarray) -> tuple[float, float]:
    """(peak resident bytes added by one native zip of ``s``, seconds), measured in a fresh interpreter: the
    kernel's peak-RSS counter (VmHWM) is reset right before the call (Linux)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sim.npy")
        np.save(path, s)
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, path], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.split()
    return float(out[0]), float(out[1])


def run_zip(sizes_ref: list, sizes_native: list) -> list:
    """Zip rows: native vs reference where the reference runs, native alone beyond."""
    rows = []
    for o in sorted(set(sizes_ref) | set(sizes_native)):
        s = merge_similarity(o // 2, 2, seed=o)
        row = {"family": "zip", "O": o, "dtype": "float32"}
        t_nat, nat = median_time(lambda: mudsc.zip_match(s, 2, backend="native"), 3 if o <= 4096 else 1)
        row["native_s"] = t_nat
        row["merge_value"] = nat.merge_value
        if o in sizes_ref:
            t_ref, ref = median_time(lambda: mudsc.zip_match(s, 2, backend="reference"), 1)
            row["reference_s"] = t_ref
            row["identical"] = bool(np.array_equal(ref.labels, nat.labels) and ref.num_outputs == nat.num_outputs)
            row["speedup"] = t_ref / t_nat
            if not row["identical"]:
                print(f"WRONG: native and reference zip differ at O={o}", file=sys.stderr)
        mem, t_probe = peak_extra_memory(s)
        row["peak_extra_bytes"] = mem
        row["peak_extra_vs_matrix"] = mem / (4.0 * o * o)
        row["probe_s"] = t_probe
        rows.append(row)
        print(f"  zip O={o}: native {t_nat:.3f} s" + (f", reference {row['reference_s']:.2f} s" if o in sizes_ref else ""),
              flush=True)
    return rows


def run_group(shapes: list) -> list:
    """Group alignment rows at head shapes (heads, head_dim), N = 2."""
    rows = []
    for heads, dim in shapes:
        om = heads * dim
        s = merge_similarity(om, 2, seed=om + heads)
        t_nat, nat = median_time(lambda: mudsc.group_permute_match(s, 2, heads, backend="native"), 7)
        t_ref, ref = median_time(lambda: mudsc.group_permute_match(s, 2, heads, backend="reference"), 3)
        rows.append({
            "family": "group_lap", "heads": heads, "head_dim": dim, "O": 2 * om,
            "native_s": t_nat, "reference_s": t_ref, "speedup": t_ref / t_nat,
            "identical": bool(np.array_equal(ref.labels, nat.labels)),
        })
        print(f"  group LAP {heads}x{dim}: native {t_nat * 1e3:.2f} ms, reference {t_ref * 1e3:.1f} ms", flush=True)
    return rows


def run_group_zip(shapes: list, reference: bool) -> list:
    """Group zip rows at head shapes, N = 2 (native vs reference where ``reference``)."""
    rows = []
    for heads, dim in shapes:
        om = heads * dim
        s = merge_similarity(om, 2, seed=om + heads)
        t_nat, nat = median_time(lambda: mudsc.group_zip_match(s, 2, heads, backend="native"), 5)
        row = {"family": "group_zip", "heads": heads, "head_dim": dim, "O": 2 * om, "native_s": t_nat}
        if reference:
            t_ref, ref = median_time(lambda: mudsc.group_zip_match(s, 2, heads, backend="reference"), 1)
            row.update(reference_s=t_ref, speedup=t_ref / t_nat, identical=bool(np.array_equal(ref.labels, nat.labels)))
        rows.append(row)
        print(f"  group zip {heads}x{dim}: native {t_nat * 1e3:.2f} ms"
              + (f", reference {row['reference_s']:.2f} s" if reference else ""), flush=True)
    return rows


def acceptance(zip_rows: list, group_rows: list) -> list:
    """The issue's floors, PASS/FAIL/n/a with the numbers."""
    out = []

    def find(rows, **kw):
        return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)

    r = find(zip_rows, O=2048)
    if r and "speedup" in r:
        out.append(("PASS" if r["speedup"] >= FLOOR_ZIP_VS_REFERENCE and r["identical"] else "FAIL",
                    f"zip O=2048 native >= {FLOOR_ZIP_VS_REFERENCE:g}x reference",
                    f"native {r['native_s'] * 1e3:.1f} ms, reference {r['reference_s']:.2f} s ({r['speedup']:.0f}x), "
                    f"identical {r['identical']}"))
    else:
        out.append(("n/a", f"zip O=2048 native >= {FLOOR_ZIP_VS_REFERENCE:g}x reference", "not run"))
    r = find(zip_rows, O=8192)
    if r:
        ok = r["native_s"] < FLOOR_ZIP_8192_SECONDS and r["peak_extra_vs_matrix"] <= FLOOR_ZIP_MEMORY
        out.append(("PASS" if ok else "FAIL", "zip O=8192 native < 10 s, peak extra memory <= 1.5 x O^2 float32",
                    f"{r['native_s']:.2f} s, peak extra {r['peak_extra_bytes'] / 2**20:.0f} MiB = "
                    f"{r['peak_extra_vs_matrix']:.2f} x O^2 float32"))
    else:
        out.append(("n/a", "zip O=8192 native < 10 s, peak extra memory <= 1.5 x O^2 float32", "not run"))
    r = find(group_rows, heads=12)
    if r:
        out.append(("PASS" if r["speedup"] >= FLOOR_GROUP_VS_REFERENCE and r["identical"] else "FAIL",
                    f"group LAP ViT-B (12x64) native >= {FLOOR_GROUP_VS_REFERENCE:g}x reference",
                    f"native {r['native_s'] * 1e3:.2f} ms, reference {r['reference_s'] * 1e3:.1f} ms "
                    f"({r['speedup']:.1f}x), identical {r['identical']}"))
    else:
        out.append(("n/a", "group LAP ViT-B native >= 10x reference", "not run"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (CI smoke, < 1 min)")
    parser.add_argument("--max-o", type=int, default=10240, help="largest native zip size")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)

    if args.quick:
        sizes_ref, sizes_native, shapes = [256, 512], [256, 512, 1024], [(12, 64)]
    else:
        sizes_ref = [512, 1024, 2048]
        sizes_native = [o for o in (512, 1024, 2048, 4096, 6144, 8192, 10240) if o <= args.max_o]
        shapes = [(12, 64), (16, 64)]
    header = (f"device: {device_name()} | threads: 1 (torch, BLAS and native) | numpy {np.__version__} | "
              f"torch {torch.__version__} | mudsc {mudsc.__version__}")
    print("# Matching benchmark\n\n" + header + "\n", flush=True)
    zip_rows = run_zip(sizes_ref, sizes_native)
    group_rows = run_group(shapes)
    group_zip_rows = run_group_zip(shapes, reference=True)

    print("\n## Greedy zip, N = 2, reduce 0.5, alpha 0.5, beta 1, float32\n")
    print("| O | native s | reference s | reference / native | identical | native peak extra MiB | x O² float32 |")
    print("|---:|---:|---:|---:|:---:|---:|---:|")
    for r in zip_rows:
        ref = f"{r['reference_s']:.2f}" if "reference_s" in r else "not run"
        sp = f"{r['speedup']:.0f}x" if "speedup" in r else ""
        ident = ("yes" if r["identical"] else "NO") if "identical" in r else ""
        print(f"| {r['O']} | {r['native_s']:.3f} | {ref} | {sp} | {ident} | "
              f"{r['peak_extra_bytes'] / 2**20:.1f} | {r['peak_extra_vs_matrix']:.2f} |")
    print("\n## Group alignment (heads), N = 2, float32\n")
    print("| heads x dim | native ms | reference ms | reference / native | identical |")
    print("|---|---:|---:|---:|:---:|")
    for r in group_rows:
        print(f"| {r['heads']} x {r['head_dim']} | {r['native_s'] * 1e3:.2f} | {r['reference_s'] * 1e3:.1f} | "
              f"{r['speedup']:.1f}x | {'yes' if r['identical'] else 'NO'} |")
    print("\n## Group zip (heads), N = 2, reduce 0.5, float32\n")
    print("| heads x dim | native ms | reference s | reference / native | identical |")
    print("|---|---:|---:|---:|:---:|")
    for r in group_zip_rows:
        ref = f"{r['reference_s']:.2f} | {r['speedup']:.0f}x | {'yes' if r['identical'] else 'NO'}" \
            if "reference_s" in r else "not run | | "
        print(f"| {r['heads']} x {r['head_dim']} | {r['native_s'] * 1e3:.2f} | {ref} |")

    accept = acceptance(zip_rows, group_rows)
    print("\n## Acceptance\n")
    for status, name, detail in accept:
        print(f"- {status:4s} {name}: {detail}")
    out = args.out or RESULTS / ("zip_quick.json" if args.quick else "zip.json")
    write_json(out, {"header": header, "zip": zip_rows, "group": group_rows, "group_zip": group_zip_rows,
                     "acceptance": [dict(zip(("status", "name", "detail"), a)) for a in accept]}, indent=1)
    print(f"\nresults written to {out}")
    wrong = [r for r in zip_rows + group_rows + group_zip_rows if r.get("identical") is False]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
