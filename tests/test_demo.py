"""The demo: MNIST-5k split, the quick end-to-end run (table, chart, JSON), the checkpoint cache, and the exit
status when a native plan differs from its reference twin."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mudsc
from mudsc import demo
from mudsc.cli import main
from mudsc.demo import mnist


def test_digits_shape_and_normalisation():
    images, labels = mnist.load_digits(32)
    assert images.shape == (5000, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    # The 2-pixel padding holds the background value (0 before normalisation).
    assert torch.allclose(images[:, :, :2, :], torch.tensor(-mnist.MEAN / mnist.STD))
    assert np.bincount(labels.numpy()).tolist() == [500] * 10


def test_split_is_deterministic_stratified_and_disjoint():
    _, labels = mnist.load_digits(28)
    train, test = mnist.stratified_split(labels, test_per_class=100)
    train2, test2 = mnist.stratified_split(labels.clone(), test_per_class=100)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test)
    assert np.bincount(labels.numpy()[test]).tolist() == [100] * 10
    other = mnist.stratified_split(labels, test_per_class=100, seed=1)[1]
    assert not np.array_equal(other, test)
    a = mnist.task_subset(labels, train, 0)
    assert len(a) == 2000 and set(labels.numpy()[a]) == {0, 1, 2, 3, 4}
    assert mnist.task_of(torch.tensor([0, 4, 5, 9])).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="cannot hold out"):
        mnist.stratified_split(labels, test_per_class=500)


def test_accuracies_joint_and_per_task():
    labels = torch.tensor([1, 7])
    logits = torch.full((2, 10), -5.0)
    logits[0, 1], logits[0, 8] = 1.0, 2.0   # joint argmax 8 (wrong), task-A argmax 1 (right)
    logits[1, 7] = 3.0                      # right both ways
    acc = demo.accuracies(logits, labels)
    assert acc["joint"] == 0.5 and acc["task_A"] == 1.0 and acc["task_B"] == 1.0 and acc["task_avg"] == 1.0


def test_checkpoint_key_changes_with_what_determines_weights():
    arch = demo.quick_archs()[0]
    key = demo.checkpoint_key(arch, 1, 0, 100)
    assert key == demo.checkpoint_key(arch, 1, 0, 100)
    assert len({key, demo.checkpoint_key(arch, 2, 0, 100), demo.checkpoint_key(arch, 1, 1, 100),
                demo.checkpoint_key(arch, 1, 0, 99)}) == 4


def test_quick_demo_end_to_end_and_cache_hit(tmp_path):
    lines = []
    png = tmp_path / "chart.png"
    methods = ("avg", "zipit")  # all methods and the reference twin: the slow CLI test below
    code = demo.run_demo(quick=True, cache_dir=tmp_path / "cache", out=png, methods=methods, log=lines.append)
    text = "\n".join(lines)
    assert code == 0, text
    assert png.exists() and png.stat().st_size > 1000
    assert "| model A |" in text and "| zipit |" in text and "MuDSC >= ZipIt" in text
    assert "model A (trained" in text
    saved = json.loads(png.with_suffix(".json").read_text())
    rows = saved["results"][0]["rows"]
    assert set(rows) == {"model A", "model B", "ensemble", *methods}
    assert all(0.0 <= rows[k]["joint"] <= 1.0 for k in rows)
    ckpts = sorted(p.name for p in (tmp_path / "cache").glob("*.pt"))
    assert len(ckpts) == 2

    # Second run: both endpoints come from the cache (nothing retrained, same files).
    lines.clear()
    assert demo.run_demo(quick=True, cache_dir=tmp_path / "cache", out=png, methods=("avg",),
                         log=lines.append) == 0
    text = "\n".join(lines)
    assert "model A (cached), model B (cached)" in text, text
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.pt")) == ckpts
    # ... and so does the merge: its plan is applied again, with the same accuracies
    assert "1 of 1 from the cache" in text, text
    again = json.loads(png.with_suffix(".json").read_text())["results"][0]["rows"]
    assert again["avg"]["cached_plan"] and again["avg"]["joint"] == rows["avg"]["joint"]

    # A damaged cached plan is reported and merged again; --recompute ignores the cache.
    plans = sorted((tmp_path / "cache" / "merges").glob("avg-native-*.safetensors"))
    assert len(plans) == 1
    plans[0].write_bytes(b"not a plan")
    lines.clear()
    assert demo.run_demo(quick=True, cache_dir=tmp_path / "cache", out=png, methods=("avg",),
                         log=lines.append) == 0
    text = "\n".join(lines)
    assert "unusable" in text and "from the cache" not in text, text
    lines.clear()
    assert demo.run_demo(quick=True, cache_dir=tmp_path / "cache", out=png, methods=("avg",), recompute=True,
                         log=lines.append) == 0
    assert "from the cache" not in "\n".join(lines)
    assert json.loads(png.with_suffix(".json").read_text())["results"][0]["rows"]["model A"] == rows["model A"]


def _fake_plan(groups):
    """A stand-in for a MergePlan: only what the demo compares (``maps[group].labels``)."""
    return SimpleNamespace(maps={k: SimpleNamespace(labels=np.asarray(v)) for k, v in groups.items()})


def test_differing_groups_names_changed_and_missing_groups():
    a = _fake_plan({"g1": [0, 1, 0, 1], "g2": [0, 0], "g3": [1, 0]})
    assert demo.differing_groups(a, a) == []
    b = _fake_plan({"g1": [0, 1, 0, 1], "g2": [0, 1], "g4": [1, 0]})
    assert demo.differing_groups(a, b) == ["g2", "g3", "g4"]


def test_exit_status_counts_only_plans_that_differ():
    rows = {"model A": {}, "avg": {}, "mudsc-zip": {"same_plan_as_reference": True}}
    assert demo.job.plans_differing_from_reference([{"arch": "a", "rows": rows}]) == []
    rows["mudsc-zip"]["same_plan_as_reference"] = False
    assert demo.job.plans_differing_from_reference([{"arch": "a", "rows": rows}]) == ["a mudsc-zip"]


@pytest.fixture
def forged_reference(monkeypatch):
    """Replace the demo's reference mudsc-zip merge by the native plan, its first group's labels shifted when
    ``forged_reference.differ`` (the native merge itself runs for real)."""
    real = demo.job.merge_or_load
    state = SimpleNamespace(differ=True, calls=[])

    def merge_or_load(endpoints, loader, method, spec, backend, *args, **kwargs):
        state.calls.append((method, backend))
        if backend != "reference":
            return real(endpoints, loader, method, spec, backend, *args, **kwargs)
        _, plan, timing, sweeps, hit = real(endpoints, loader, method, spec, "native", *args, **kwargs)
        groups = {k: np.asarray(v.labels) for k, v in plan.maps.items()}
        first = sorted(groups)[0]
        if state.differ:
            groups[first] = groups[first] + 1
        state.first = first
        return None, _fake_plan(groups), timing, sweeps, hit

    monkeypatch.setattr(demo.job, "merge_or_load", merge_or_load)
    return state


def test_identical_plans_are_required_unless_allowed():
    assert demo.job.identical_plans_required(quick=False) is True
    assert demo.job.identical_plans_required(quick=True) is True
    assert demo.job.identical_plans_required(quick=True, require=False) is False
    assert demo.job.identical_plans_required(quick=False, require=False) is False


def test_demo_exit_status_is_1_when_a_native_plan_differs_from_its_reference(tmp_path, forged_reference):
    lines = []
    kwargs = dict(quick=True, cache_dir=tmp_path / "cache", out=tmp_path / "d.png", methods=("mudsc-zip",),
                  log=lines.append)
    assert demo.run_demo(**kwargs) == 1, "\n".join(lines)  # the default, in the quick run too
    assert ("mudsc-zip", "reference") in forged_reference.calls
    text = "\n".join(lines)
    assert "identical plans: NO" in text and f"groups that differ: {forged_reference.first}" in text, text
    assert "FAILED: native plan differs from its reference twin: VGG-11/8 (BN) mudsc-zip" in text, text
    row = json.loads((tmp_path / "d.json").read_text())["results"][0]["rows"]["mudsc-zip"]
    assert row["same_plan_as_reference"] is False
    assert row["groups_differing_from_reference"] == [forged_reference.first]

    # Allowed: the difference is reported, not a failure (cached endpoints and native plan).
    lines.clear()
    assert demo.run_demo(**kwargs, require_identical_plans=False) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "identical plans: NO" in text and "note: native plan differs" in text and "FAILED" not in text, text

    # The control: with an unaltered twin the strict run passes.
    forged_reference.differ = False
    lines.clear()
    assert demo.run_demo(**kwargs, require_identical_plans=True) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "identical plans: yes" in text and "differs" not in text, text


@pytest.mark.slow
def test_cli_quick_demo_all_methods(tmp_path, capsys):
    """Every method, plus mudsc-zip on the reference backend with its plan compared; the exit status says
    whether the two plans are identical."""
    code = main(["demo", "--quick", "--cache-dir", str(tmp_path),
                 "--out", str(tmp_path / "d.png")])
    assert (tmp_path / "d.png").exists()
    text = capsys.readouterr().out
    assert "matching (similarity + solve)" in text and "identical plans:" in text
    rows = json.loads((tmp_path / "d.json").read_text())["results"][0]["rows"]
    assert set(rows) >= {"avg", "rebasin", "act-align", "zipit", "wzip", "mudsc-align", "mudsc-zip"}
    assert code == (0 if rows["mudsc-zip"]["same_plan_as_reference"] else 1), text


def test_digits_resized_for_the_resnets_keep_the_background():
    images, labels = mnist.load_digits(16)
    assert images.shape == (5000, 1, 16, 16) and images.dtype == torch.float32 and labels.shape == (5000,)
    # corners are background in every MNIST digit: antialiased resizing keeps them at the background value
    assert torch.allclose(images[:, 0, 0, 0], torch.tensor(-mnist.MEAN / mnist.STD), atol=1e-5)
    assert images.std() > 0.5  # the digits survived the resize


def test_default_archs_are_the_issue_sizes():
    archs = {a.name: a for a in demo.default_archs()}
    resnets = [a for a in archs.values() if a.builder == "resnet20"]
    assert {a.kwargs["norm"] for a in resnets} == {"bn", "gn"}
    assert all(a.kwargs["width"] == 4 and a.image_size == 16 for a in resnets)
    assert all(a.image_size == 32 for a in archs.values() if a.builder != "resnet20")
    # the input size is part of what determines the weights, so it is part of the cache key
    a = resnets[0]
    b = demo.ArchConfig(a.name, a.builder, a.kwargs, a.epochs, a.lr, a.optimizer, a.batch_size, image_size=32)
    assert demo.checkpoint_key(a, 1, 0, 100) != demo.checkpoint_key(b, 1, 0, 100)


@pytest.mark.parametrize("bf16", ["0", "1"])
def test_trained_endpoint_is_float32_contiguous_and_learns(monkeypatch, bf16):
    monkeypatch.setenv("MUDSC_DEMO_BF16", bf16)
    if bf16 == "1" and not demo.bf16_training():
        pytest.skip("this CPU has no native bfloat16")
    assert demo.bf16_training() == (bf16 == "1")
    images, labels = mnist.load_digits(16)
    train, test = mnist.stratified_split(labels, test_per_class=20)
    arch = demo.ArchConfig("ResNet-20x1 (BN)", "resnet20", {"width": 1, "norm": "bn"}, epochs=2, image_size=16)
    model = demo.train_endpoint(arch, images[train[::4]], labels[train[::4]], seed=0)
    for name, p in model.state_dict().items():
        assert p.dtype in (torch.float32, torch.int64), name
        assert p.is_contiguous(), name
    acc = demo.accuracies(demo.predict(model, images[test]), labels[test])
    assert acc["joint"] > 0.6, acc  # 1,000 images, 2 epochs: far above the 10% of chance


# -- the prototype head (the paper's protocol) and the spread over merge sets -------------------------------------
def test_prototypes_are_fixed_unit_norm_and_scored_by_cosine():
    from mudsc.demo import prototypes as pr

    p = pr.class_prototypes()
    assert p.shape == (10, pr.EMBED_DIM) and torch.allclose(p.norm(dim=1), torch.ones(10))
    assert torch.equal(p, pr.class_prototypes())  # seeded, not redrawn
    emb = torch.stack([3.0 * p[7], -p[2] + 0.0 * p[0]])
    logits = pr.class_logits(emb)
    # cosine to its own prototype is 1 (and -1 for the negated one), times the logit scale
    assert torch.isclose(logits[0, 7], torch.tensor(pr.LOGIT_SCALE), atol=1e-5)
    assert torch.isclose(logits[1, 2], torch.tensor(-pr.LOGIT_SCALE), atol=1e-5)
    assert logits[0].argmax() == 7
    with pytest.raises(ValueError, match="embeddings must be"):
        pr.class_logits(torch.zeros(2, 10))


def test_task_loss_is_the_cross_entropy_over_the_own_prototypes():
    from mudsc.demo import prototypes as pr

    torch.manual_seed(0)
    emb, labels = torch.randn(4, pr.EMBED_DIM), torch.tensor([5, 9, 7, 5])
    cos = torch.nn.functional.normalize(emb, dim=1) @ pr.class_prototypes()[5:].T
    by_hand = -torch.log_softmax(pr.LOGIT_SCALE * cos, dim=1)[torch.arange(4), labels - 5].mean()
    assert torch.isclose(pr.task_loss(emb, labels, (5, 6, 7, 8, 9)), by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="outside the task"):
        pr.task_loss(emb, torch.tensor([0, 5, 5, 5]), (5, 6, 7, 8, 9))


def test_ordering_spread_merges_every_set_and_counts_where_the_ordering_holds(tmp_path):
    from mudsc.demo import job

    data = job.prepare_data(tmp_path, quick=True)
    pool = np.concatenate(data.task_idx)
    data.mix_sets = [pool[::4][:64], pool[1::4][:64]]
    arch = demo.quick_archs()[0]
    ends, names, _ = job.train_endpoints(arch, data, lambda s: None)
    images = data.images(arch.image_size)
    x_test = images[data.test_idx]
    spec = mudsc.trace(ends[0], images[:2])
    rows = {"avg": {"joint": 0.3}, "zipit": {"joint": 0.1}}  # set 0's rows, as run_arch passes them
    lines = []
    out = job.ordering_spread(ends, names, spec, images, x_test, data, rows, ["avg", "zipit"], False, lines.append)
    assert [len(v) for v in out["joint"].values()] == [2, 2] and out["joint"]["avg"][0] == 0.3
    assert out["per_set"][0] is False  # ZipIt 0.1 below avg 0.3 on set 0
    assert "holds on" in "\n".join(lines) and "of 2 merge sets" in "\n".join(lines)
    data.mix_sets = data.mix_sets[:1]
    assert job.ordering_spread(ends, names, spec, images, x_test, data, rows, ["avg", "zipit"], False,
                               lines.append) is None
