"""The ``mudsc`` command line: subcommands, exit codes, the entry points, and how the apps sit on the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mudsc
from mudsc import models
from mudsc.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_info_prints_the_build_configuration(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == mudsc.__version__ and info["core"] == mudsc.build_info()["core"]


def test_every_subcommand_is_registered():
    parser = build_parser()
    merge = ["merge", "--arch", "mlp", "--checkpoints", "a", "b", "--out", "m.pt"]
    for argv in (["info"], ["demo", "--quick"], ["bench", "--quick", "lap"], merge):
        assert parser.parse_args(argv).command == argv[0]
    with pytest.raises(SystemExit):
        parser.parse_args(["frobnicate"])


def test_bench_refuses_unknown_names(capsys):
    assert main(["bench", "no-such-benchmark"]) == 2
    out = capsys.readouterr().out
    assert "unknown benchmark(s) ['no-such-benchmark']" in out and "'lap'" in out


def test_merge_refuses_a_missing_output_folder_before_merging(tmp_path, capsys):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"m{i}.pt")
        torch.save(models.mlp(in_features=12, hidden=(4,)).state_dict(), paths[-1])
    argv = ["merge", "--arch", "mlp", "--arch-kwargs", '{"in_features": 12, "hidden": [4]}', "--no-progress",
            "--checkpoints", *map(str, paths)]
    assert main(argv + ["--out", str(tmp_path / "missing" / "merged.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "m.pt"), "--plan", str(tmp_path / "nope" / "p.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt"]


def test_python_dash_m_runs_the_cli():
    done = _run_python(["-m", "mudsc", "info"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == mudsc.__version__


def test_the_library_does_not_import_the_apps_and_the_apps_import_alone():
    """``import mudsc`` loads neither the CLI nor the demo; each app module imports first, on its own."""
    done = _run_python(["-c", "import sys, mudsc; print(sorted(m for m in sys.modules if m.startswith("
                              "('mudsc.cli', 'mudsc.demo'))))"])
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr + done.stdout
    for module in ("mudsc.cli", "mudsc.cli.merge", "mudsc.demo.problems", "mudsc.demo.job"):
        done = _run_python(["-c", f"import {module}"])
        assert done.returncode == 0, f"{module}: {done.stderr}"
