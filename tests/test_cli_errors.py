"""``mudsc merge`` error paths: each runs the CLI and checks the exit code (2) and the one-line message.

Outputs and ``--device`` are refused before any checkpoint loads (a spy on the loader and on ``mudsc.merge``).
Imports from the working directory: test_cli_import.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import mudsc
from mudsc import models
from mudsc.cli import build_parser, main
from mudsc.cli import merge as cli_merge

ROOT = Path(__file__).resolve().parents[1]
MLP_KWARGS = '{"in_features": 12, "hidden": [4]}'


def _one_line_error(capsys, *phrases: str) -> str:
    """The stderr of the last run: exactly one ``mudsc merge: error:`` line holding every phrase."""
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("mudsc merge: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture
def checkpoints(tmp_path):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(str(tmp_path / f"m{i}.pt"))
        torch.save(models.mlp(in_features=12, hidden=(4,)).state_dict(), paths[-1])
    return paths


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test when a checkpoint is loaded or ``mudsc.merge`` runs."""
    calls = []
    monkeypatch.setattr(cli_merge, "_load_checkpoint", lambda *a, **k: calls.append("load"))
    monkeypatch.setattr(mudsc, "merge", lambda *a, **k: calls.append("merge"))
    return calls


def _argv(checkpoints, *extra):
    return ["merge", "--arch", "mlp", "--arch-kwargs", MLP_KWARGS, "--no-progress", "--max-sweeps", "2",
            "--num-samples", "16", "--checkpoints", *checkpoints, *extra]


@pytest.mark.parametrize("case", ["missing-folder", "directory", "plan-missing-folder", "plan-directory",
                                  "same-file", "unwritable-folder"])
def test_output_errors_come_before_any_work(case, tmp_path, checkpoints, no_work, monkeypatch, capsys):
    out = str(tmp_path / "merged.pt")
    extra, phrases = {
        "missing-folder": (["--out", str(tmp_path / "no" / "m.pt")], ["--out", "does not exist"]),
        "directory": (["--out", str(tmp_path)], ["--out", "is a directory"]),
        "plan-missing-folder": (["--out", out, "--plan", str(tmp_path / "no" / "p.st")], ["--plan", "does not exist"]),
        "plan-directory": (["--out", out, "--plan", str(tmp_path)], ["--plan", "is a directory"]),
        "same-file": (["--out", out, "--plan", out], ["same file"]),
        "unwritable-folder": (["--out", out], ["--out", "cannot create a file in", "Permission denied"]),
    }[case]
    if case == "unwritable-folder":  # root writes anywhere chmod allows nothing: refuse the probe file itself
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(cli_merge.tempfile, "mkstemp", refuse)
    before = sorted(os.listdir(tmp_path))
    assert main(_argv(checkpoints, *extra)) == 2
    _one_line_error(capsys, *phrases)
    assert no_work == [] and sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a folder no one can create files in)")
def test_out_in_proc_is_one_line_before_any_work(checkpoints, no_work, capsys):
    assert main(_argv(checkpoints, "--out", "/proc/merged.pt")) == 2
    _one_line_error(capsys, "--out '/proc/merged.pt'", "cannot create a file in '/proc'")
    assert no_work == []


def test_the_probe_file_is_removed(tmp_path, checkpoints, capsys):
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), "--plan", str(tmp_path / "p.st"))) == 0
    assert sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt", "merged.pt", "p.st"]


@pytest.mark.parametrize("device, gpus, phrases", [
    ("cuda", 0, ["--device 'cuda'", "no CUDA GPU"]),
    ("cuda:0", 0, ["--device 'cuda:0'", "no CUDA GPU"]),
    ("cuda:7", 1, ["--device 'cuda:7'", "has 1 CUDA device(s), cuda:0 to cuda:0"]),
    ("bogus", 0, ["--device 'bogus'", "not a device torch knows"]),
    ("cuda:x", 0, ["--device 'cuda:x'", "not a device torch knows"]),
    ("meta", 0, ["--device 'meta'", "not usable here"]),
])
def test_device_errors_come_before_any_work(device, gpus, phrases, tmp_path, checkpoints, no_work, monkeypatch,
                                            capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), "--device", device)) == 2
    _one_line_error(capsys, *phrases)
    assert no_work == [] and not (tmp_path / "merged.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real no-GPU path")
def test_device_cuda_without_a_gpu_unpatched(tmp_path, checkpoints, no_work, capsys):
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), "--device", "cuda")) == 2
    _one_line_error(capsys, "no CUDA GPU is usable here")
    assert no_work == []


def test_device_cpu_merges(tmp_path, checkpoints, capsys):
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), "--device", "cpu")) == 0
    assert (tmp_path / "merged.pt").is_file()


def test_an_os_error_while_writing_is_one_line(tmp_path, checkpoints, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cli_merge.torch, "save", full)
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"))) == 2
    _one_line_error(capsys, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt"]


def test_merge_help_documents_the_checks(capsys):
    with pytest.raises(SystemExit) as done:
        main(["merge", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("working directory", "before the models load",
                   "must exist and be writable", "exit code 2"):
        assert phrase in text, phrase


def test_missing_data_module_is_one_line(tmp_path, checkpoints, no_work, capsys):
    assert main(_argv(checkpoints, "--data", "cli14_no_such_module:loader", "--out", str(tmp_path / "m.pt"))) == 2
    _one_line_error(capsys, "cannot import module 'cli14_no_such_module'")
    assert no_work == []
