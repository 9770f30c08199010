#!/usr/bin/env bash
# GPU check, for a lent GPU machine (16 cores, PyTorch with CUDA, nvcc, no internet, no venv):
# build in place with every core, run the cuda-marked tests, run the GPU-relevant benchmarks, and
# write everything under $OUT (or build/gpu-check). Meant to finish well under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export MUDSC_WITH_CUDA="${MUDSC_WITH_CUDA:-1}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
status=0
exec > >(tee "$OUT/gpu_check.log") 2>&1
echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
echo "== build"; date
"$PY" setup.py -q build_ext --inplace 2>&1 | grep -vE "Warning|warn" || true
"$PY" -m mudsc info || status=1
echo "== cuda tests"; date
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests || status=1
echo "== cpu tests (sanity)"; date
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_lap.py || status=1
echo "== benchmarks"; date
"$PY" benchmarks/bench_lap.py --quick --out "$OUT/lap_quick.json" || status=1  # CPU-side
"$PY" benchmarks/bench_zip.py --quick --out "$OUT/zip_quick.json" || status=1
"$PY" benchmarks/bench_stats.py --device cuda --out "$OUT/stats_cuda.json" || status=1
"$PY" benchmarks/bench_stats.py --device cuda --tf32 --out "$OUT/stats_cuda_tf32.json" || status=1
echo "== done (status $status)"; date
exit "$status"
