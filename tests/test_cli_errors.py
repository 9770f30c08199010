"""``mudsc merge`` error paths: each runs the CLI and checks the exit code (2) and the one-line message.

Outputs and ``--device`` are refused before any checkpoint loads (a spy on the loader and on ``mudsc.merge``);
``--data mnist`` never changes the architecture. (Imports from the working directory: test_cli_import.py.)
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


@pytest.mark.parametrize("flag, adaptive", [((), True), (("--full-pass",), False)])
def test_full_pass_turns_the_adaptive_sample_count_off(flag, adaptive, tmp_path, checkpoints, monkeypatch, capsys):
    seen = {}
    real = mudsc.merge

    def spy(*args, **kwargs):
        seen["adaptive"] = kwargs.get("adaptive")
        return real(*args, **kwargs)

    monkeypatch.setattr(mudsc, "merge", spy)
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), *flag)) == 0
    assert seen == {"adaptive": adaptive}


@pytest.mark.parametrize("flag, repair", [((), None), (("--repair", "on"), True), (("--repair", "off"), False)])
def test_repair_flag_reaches_merge(flag, repair, tmp_path, checkpoints, monkeypatch, capsys):
    seen = {}
    real = mudsc.merge

    def spy(*args, **kwargs):
        seen["repair"] = kwargs.get("repair")
        return real(*args, **kwargs)

    monkeypatch.setattr(mudsc, "merge", spy)
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"), *flag)) == 0
    assert seen == {"repair": repair}


def test_an_os_error_while_writing_is_one_line(tmp_path, checkpoints, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cli_merge.torch, "save", full)
    assert main(_argv(checkpoints, "--out", str(tmp_path / "merged.pt"))) == 2
    _one_line_error(capsys, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt"]


def _vgg_checkpoints(tmp_path, in_channels):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(str(tmp_path / f"v{in_channels}_{i}.pt"))
        torch.save(models.vgg11(width=1, in_channels=in_channels).state_dict(), paths[-1])
    return paths


def test_mnist_refuses_a_three_channel_model_before_any_work(tmp_path, no_work, capsys):
    paths = _vgg_checkpoints(tmp_path, 3)
    argv = ["merge", "--arch", "vgg11", "--data", "mnist", "--no-progress", "--checkpoints", *paths,
            "--out", str(tmp_path / "merged.pt")]
    assert main(argv) == 2
    _one_line_error(capsys, "--data mnist gives 1-channel digits", "in_channels=3",
                    "--arch-kwargs '{\"in_channels\": 1}'", "--data random")
    assert main(argv[:3] + ["--arch-kwargs", '{"in_channels": 3}'] + argv[3:]) == 2  # said explicitly: the same
    _one_line_error(capsys, "in_channels=3")
    assert no_work == []


def test_mnist_refuses_an_mlp_whose_input_is_not_a_square_image(tmp_path, checkpoints, no_work, capsys):
    assert main(_argv(checkpoints, "--data", "mnist", "--out", str(tmp_path / "merged.pt"))) == 2
    _one_line_error(capsys, "in_features=12", "not a square", "--data random")
    assert no_work == []


def test_mnist_with_a_one_channel_checkpoint_keeps_its_architecture(tmp_path, capsys):
    paths = _vgg_checkpoints(tmp_path, 1)
    out = tmp_path / "merged.pt"
    argv = ["merge", "--arch", "vgg11", "--arch-kwargs", '{"in_channels": 1}', "--data", "mnist", "--no-progress",
            "--batch-size", "16", "--max-batches", "2", "--max-sweeps", "2", "--checkpoints", *paths, "--out",
            str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert torch.load(out, weights_only=True)["features.0.weight"].shape[1] == 1


def test_mnist_digits_take_the_size_of_the_mlp_input(monkeypatch):
    """28x28 digits for the default MLP (784 features), 32x32 for 1024: the data fit the model, not the reverse."""
    args = build_parser().parse_args(["merge", "--arch", "mlp", "--data", "mnist", "--checkpoints", "a", "b",
                                      "--out", "m.pt"])
    assert cli_merge._data_source(args, models.mlp, {}) == ("mnist", 28)
    assert cli_merge._data_source(args, models.mlp, {"in_features": 1024}) == ("mnist", 32)


def test_merge_help_documents_the_checks(capsys):
    with pytest.raises(SystemExit) as done:
        main(["merge", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--data never changes them", "in_channels", "working directory", "before the models load",
                   "must exist and be writable", "exit code 2"):
        assert phrase in text, phrase


def test_missing_data_module_is_one_line(tmp_path, checkpoints, no_work, capsys):
    assert main(_argv(checkpoints, "--data", "cli14_no_such_module:loader", "--out", str(tmp_path / "m.pt"))) == 2
    _one_line_error(capsys, "cannot import module 'cli14_no_such_module'")
    assert no_work == []


def test_an_existing_out_is_kept_on_failure_and_replaced_on_success(tmp_path, checkpoints, monkeypatch, capsys):
    out = tmp_path / "merged.pt"
    out.write_bytes(b"old")
    real_save = cli_merge.torch.save

    def half_then_fail(obj, path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cli_merge.torch, "save", half_then_fail)
    assert main(_argv(checkpoints, "--out", str(out))) == 2
    _one_line_error(capsys, "No space left on device")
    assert out.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt", "merged.pt"]
    monkeypatch.setattr(cli_merge.torch, "save", real_save)
    umask = os.umask(0o022)
    os.umask(umask)
    assert main(_argv(checkpoints, "--out", str(out))) == 0
    assert "layers.0.weight" in torch.load(out, weights_only=True)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["m0.pt", "m1.pt", "merged.pt"]


def test_three_checkpoints_keep_the_architecture_by_default(tmp_path, checkpoints, capsys):
    """--reduce defaults to 1 - 1/N (it was 0.5 for every N: three checkpoints gave a 1.5x wider model)."""
    torch.manual_seed(2)
    third = str(tmp_path / "m2.pt")
    torch.save(models.mlp(in_features=12, hidden=(4,)).state_dict(), third)
    out = tmp_path / "merged.pt"
    assert main(_argv([*checkpoints, third], "--method", "zipit", "--out", str(out))) == 0
    fresh = models.mlp(in_features=12, hidden=(4,))
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_bn_reset_modes_reach_the_merge(tmp_path, capsys):
    """--bn-reset plain | calibrated | off: three different BatchNorm statistics for the same plan; off keeps the
    plan's merge of the endpoints' own."""
    paths = _vgg_checkpoints(tmp_path, 3)
    stats = {}
    for mode in ("plain", "calibrated", "off"):
        out = tmp_path / f"merged_{mode}.pt"
        argv = ["merge", "--arch", "vgg11", "--no-progress", "--method", "zipit", "--batch-size", "16",
                "--num-samples", "32", "--max-sweeps", "2", "--bn-reset", mode, "--checkpoints", *paths,
                "--out", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        state = torch.load(out, weights_only=True)
        stats[mode] = torch.cat([v for k, v in state.items() if k.endswith("running_mean")])
    assert not torch.allclose(stats["plain"], stats["calibrated"])
    assert not torch.allclose(stats["plain"], stats["off"]) and not torch.allclose(stats["calibrated"], stats["off"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", "--arch", "vgg11", "--bn-reset", "yes", "--checkpoints", "a", "b",
                                   "--out", "m.pt"])
