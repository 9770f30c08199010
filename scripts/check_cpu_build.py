"""Loads a CPU-only build of mudsc's native modules from a build directory, without importing the
in-place package, and checks that the torch ops report exactly the CPU backend.

Usage: python scripts/check_cpu_build.py build/cpu-only/lib
"""

import glob
import importlib.util
import os
import sys

import numpy as np
import torch

lib = sys.argv[1]
(c_path,) = glob.glob(os.path.join(lib, "mudsc", "_C.*"))
(core_path,) = glob.glob(os.path.join(lib, "mudsc", "_core.*"))
torch.ops.load_library(c_path)
backends = torch.ops.mudsc.build_info()
assert backends == "cpu", f"CPU-only build reports backends {backends!r}"
y = torch.ops.mudsc.affine_selftest(torch.arange(4.0), 2.0, 1.0)
assert torch.equal(y, torch.tensor([1.0, 3.0, 5.0, 7.0])), y
spec = importlib.util.spec_from_file_location("_core", core_path)
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
cols, objective, _ = core.lap_solve(np.array([[4.0, 1.0], [2.0, 3.0]]), False, None, False)
assert list(cols) == [1, 0] and objective == 3.0, (cols, objective)
print(f"cpu-only build OK: torch ops backends = {backends!r}, core simd = {core.simd}")
