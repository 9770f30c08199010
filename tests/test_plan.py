"""MergePlan: save/load round trip, apply == merge's model, fingerprint refusals; the `mudsc merge` CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mudsc import MergePlan, merge, models
from mudsc.cli import main

torch.set_num_threads(2)


def _loader(batches=2, size=8):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(size, 3, 32, 32, generator=gen) for _ in range(batches)]


@pytest.fixture(scope="module")
def merged():
    torch.manual_seed(1)
    ms = [models.resnet20(width=1, norm="gn") for _ in range(2)]
    return ms, merge(ms, _loader(), method="mudsc-zip", max_sweeps=2, patience=1, progress=False,
                     repair=False)  # plan.apply rebuilds the model before REPAIR


def test_save_load_round_trip_and_apply(tmp_path, merged):
    ms, result = merged
    path = tmp_path / "plan.safetensors"
    result.plan.save(path)
    plan = MergePlan.load(path)
    assert plan.method == "mudsc-zip" and plan.num_models == 2 and plan.spec == result.plan.spec
    assert plan.hyperparameters == result.plan.hyperparameters and plan.version == result.plan.version
    for name, r in result.plan.maps.items():
        np.testing.assert_array_equal(plan.maps[name].labels, r.labels)
        assert plan.maps[name].num_outputs == r.num_outputs
        assert plan.maps[name].merge_value == pytest.approx(r.merge_value)
    x = _loader()[0]
    rebuilt = plan.apply(ms)
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(rebuilt(x), result.model(x))


def test_apply_refuses_other_models(merged):
    ms, result = merged
    other = [ms[0], models.resnet20(width=1, norm="gn")]
    with pytest.raises(ValueError, match=r"model 1: parameter 'conv1.weight' differs"):
        result.plan.apply(other)
    with pytest.raises(ValueError, match=r"shape"):
        result.plan.apply([ms[0], models.resnet20(width=2, norm="gn")])
    with pytest.raises(ValueError, match="merges 2 models, got 1"):
        result.plan.apply(ms[:1])


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="holds no mudsc plan"):
        MergePlan.load(path)
    with pytest.raises(ValueError, match="no plan file"):
        MergePlan.load(tmp_path / "missing.safetensors")


def test_cli_merge_writes_outputs_only_on_success(tmp_path, capsys):
    torch.manual_seed(2)
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.pt"
        torch.save(models.mlp(in_features=3 * 32 * 32, hidden=(16,)).state_dict(), p)
        paths.append(str(p))
    out, plan = tmp_path / "merged.pt", tmp_path / "plan.safetensors"
    base = ["merge", "--arch", "mlp", "--arch-kwargs", '{"in_features": 3072, "hidden": [16]}', "--data", "random",
            "--num-samples", "32", "--no-progress", "--max-sweeps", "3", "--out", str(out), "--plan", str(plan)]
    assert main(base + ["--checkpoints", *paths]) == 0
    state = torch.load(out, weights_only=True)
    assert state["layers.0.weight"].shape == (16, 3072)
    assert MergePlan.load(plan).method == "mudsc-zip"
    out.unlink()
    plan.unlink()
    bad = tmp_path / "bad.pt"
    torch.save(models.mlp(in_features=3 * 32 * 32, hidden=(8,)).state_dict(), bad)
    assert main(base + ["--checkpoints", paths[0], str(bad)]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(base + ["--checkpoints", paths[0]]) == 2
    assert "at least two" in capsys.readouterr().err
    assert not out.exists() and not plan.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".mudsc-")]
