#!/usr/bin/env bash
# GPU check, for a lent GPU machine (16 cores, PyTorch with CUDA, nvcc, no internet, no venv):
# build in place with every core, run the cuda-marked tests, run the GPU-relevant benchmarks, and
# write everything under $OUT (or build/gpu-check). Meant to finish well under 10 minutes.
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
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || true
echo "== build"; date
"$PY" setup.py -q build_ext --inplace 2>&1 | grep -vE "Warning|warn" || true
"$PY" -m mudsc info || status=1
# Each step is time-boxed so one hang cannot cost the rest of the run.
echo "== cuda tests"; date
timeout 300 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests -rfs --tb=short > "$OUT/pytest_cuda.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_cuda.log" | head -40
echo "== benchmarks"; date
timeout 240 "$PY" benchmarks/bench_stats.py --device cuda --profile --out "$OUT/stats_cuda.json" || status=1
timeout 60 "$PY" benchmarks/bench_zip.py --quick --out "$OUT/zip_quick.json" || status=1  # CPU side
echo "== distributed (NCCL, one rank per GPU, at most 2)"; date
ngpu=$("$PY" -c "import torch; print(min(2, torch.cuda.device_count()))" 2>/dev/null || echo 0)
if [ "$ngpu" -ge 1 ]; then
  timeout 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$ngpu" scripts/nccl_check.py \
    --out "$OUT/nccl_check.json" || status=1
fi
echo "== scale (the default merge call on the GPU)"; date
timeout 240 "$PY" benchmarks/bench_scale.py --device cuda --cases vit-b16 --method mudsc-zip --images 2048 \
  --batch 128 --out "$OUT/scale_vit-b16_cuda.json" || status=1
echo "== done (status $status)"; date
exit "$status"
