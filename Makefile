# mudsc: every target works on a fresh machine (it makes .venv and installs what it needs).
#   make demo       the embedded default job
#   make test       C++ unit tests (ctest) + pytest
#   make bench      benchmarks (tables + benchmarks/results/*.json)
#   make gpu-check  on a GPU machine: build, cuda-marked tests, GPU benchmarks, results to $OUT
#   make ci         what .ci/run runs: test + sanitizers + CPU-only build check + quick benchmark

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

# Build knobs (see setup.py). A GPU-less host still compiles the CUDA sources.
MUDSC_WITH_CUDA ?= auto
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
TORCH_CUDA_ARCH_LIST ?= 9.0
export MUDSC_WITH_CUDA CUDA_HOME TORCH_CUDA_ARCH_LIST
export MAX_JOBS ?= $(JOBS)

SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: all venv build demo test pytest ctest sanitize cpu-build-check bench bench-quick gpu-check ci clean

all: build

$(VENV)/.deps: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.deps

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	@mkdir -p build
	@# A failed compile must stop here (the previous .so would otherwise still import); the log has the details.
	$(PY) -m pip install -q --no-build-isolation --no-deps -e . > build/pip-build.log 2>&1 || \
		{ grep -E "error|Error" build/pip-build.log | head -40; echo "build failed: see build/pip-build.log"; exit 1; }
	$(PY) -c "import mudsc, json; i = mudsc.build_info(); print(json.dumps(i)); assert i['core'] and i['torch_ops'], i"
	touch $@

build: $(VENV)/.built

demo: build
	$(PY) -m mudsc demo

ctest: $(VENV)/.deps
	cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja >/dev/null
	cmake --build build/cmake
	ctest --test-dir build/cmake --output-on-failure

sanitize: $(VENV)/.deps
	cmake -S . -B build/cmake-asan -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja -DMUDSC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build/cmake-asan
	ctest --test-dir build/cmake-asan --output-on-failure

pytest: build
	$(PY) -m pytest -q

test: ctest pytest

# Proves the CPU-only build (MUDSC_WITH_CUDA=0) builds and imports, without touching the in-place build.
cpu-build-check: $(VENV)/.deps
	rm -rf build/cpu-only
	MUDSC_WITH_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/cpu-only/lib --build-temp build/cpu-only/tmp 2>&1 | grep -vE "Warning|warn" || true
	$(PY) scripts/check_cpu_build.py build/cpu-only/lib

bench: build
	$(VENV)/bin/pip install -q -r requirements-bench.txt || echo "some benchmark peers could not be installed; they will be reported as missing"
	$(PY) benchmarks/bench_lap.py
	$(PY) benchmarks/bench_zip.py
	$(PY) benchmarks/bench_stats.py
	$(PY) benchmarks/bench_merge.py
	$(PY) benchmarks/bench_samples.py

bench-quick: build
	$(PY) benchmarks/bench_lap.py --quick
	$(PY) benchmarks/bench_zip.py --quick
	$(PY) benchmarks/bench_stats.py --quick
	$(PY) benchmarks/bench_merge.py --quick

gpu-check:
	bash scripts/gpu_check.sh

ci: test sanitize cpu-build-check bench-quick

clean:
	rm -rf build $(VENV) mudsc/*.so *.egg-info
