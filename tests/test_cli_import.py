"""``--arch`` / ``--data module:attr`` imported from the working directory, by ``main`` in-process and by the ``mudsc``
console script (a real subprocess: a script written from pyproject's ``[project.scripts]``, so ``sys.path[0]`` is its
bin folder and the working directory is not on ``sys.path``, unlike under ``python -m``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from mudsc import models
from mudsc.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLP_KWARGS = '{"in_features": 12, "hidden": [4]}'


LOADERS = """import torch
def loader():
    return [torch.randn(8, 12, generator=torch.Generator().manual_seed(i)) for i in range(2)]
def factory(**kwargs):
    from mudsc import models
    return models.mlp(**kwargs)
"""


def test_data_from_the_working_directory_in_process(tmp_path, checkpoints, monkeypatch, capsys):
    """Imported with the working directory off ``sys.path`` (as in a console script), which stays off after."""
    name = "cli14_loaders_in_process"
    (tmp_path / f"{name}.py").write_text(LOADERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.abspath(p) != str(tmp_path)])
    monkeypatch.delitem(sys.modules, name, raising=False)
    path_before = list(sys.path)
    argv = ["merge", "--arch", f"{name}:factory", "--arch-kwargs", MLP_KWARGS, "--data", f"{name}:loader",
            "--no-progress", "--max-sweeps", "2", "--checkpoints", *checkpoints, "--out", "merged.pt"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "merged.pt").is_file() and sys.path == path_before
    monkeypatch.delitem(sys.modules, name, raising=False)


def _console_script(folder: Path) -> Path:
    """A console script for ``[project.scripts] mudsc`` of pyproject.toml, written the way pip writes one."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["mudsc"]
    module, _, func = entry.partition(":")
    folder.mkdir()
    script = folder / "mudsc"
    script.write_text(f"import sys\nfrom {module} import {func}\nif __name__ == '__main__':\n"
                      f"    sys.exit({func}())\n")
    return script


def test_console_script_imports_data_from_the_working_directory(tmp_path, checkpoints):
    work = tmp_path / "work"
    work.mkdir()
    (work / "myloaders.py").write_text(LOADERS)
    script = _console_script(tmp_path / "bin")
    # only the tree on the path, no empty entry (which would stand for the working directory)
    pythonpath = os.pathsep.join(p for p in [str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    argv = ["merge", "--arch", "myloaders:factory", "--arch-kwargs", MLP_KWARGS, "--data", "myloaders:loader",
            "--no-progress", "--max-sweeps", "2", "--checkpoints", *checkpoints, "--out", "merged.pt"]
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env, cwd=work,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (work / "merged.pt").is_file() and "merged 2 models" in done.stdout
    missing = subprocess.run([sys.executable, str(script), *argv[:5], "--data", "nomodule_cli14:loader",
                              *argv[7:]], capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "cannot import module 'nomodule_cli14'" in missing.stderr and "Traceback" not in missing.stderr
