"""MergePlan validation: what load, construction and apply refuse (always a ValueError naming the file and the group
or key), the checksum of format 2, format-1 files (read with a warning), and that valid plans behave as before."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mudsc import MatchResult, MergePlan, merge, models
from mudsc import plan as plan_module

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def merged():
    torch.manual_seed(0)
    ms = [models.mlp(in_features=12, hidden=(16, 16)) for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(32, 12, generator=gen) for _ in range(2)]
    return ms, merge(ms, loader, method="mudsc-zip", max_sweeps=2, patience=1, progress=False,
                   repair=False)  # plan.apply rebuilds the model before REPAIR


@pytest.fixture()
def saved(tmp_path, merged):
    path = tmp_path / "plan.safetensors"
    merged[1].plan.save(path)
    return path


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["mudsc_plan"]), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(src, dst, meta_edit=None, tensor_edit=None, resign=False):
    """Copy plan file ``src`` to ``dst`` with edits; ``resign`` recomputes the checksum (only the content checks
    can then find the edit)."""
    meta, tensors = _read(src)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    if resign:
        labels = {k[len("labels/"):]: t.numpy() for k, t in tensors.items()}
        meta["checksum"] = plan_module._checksum(meta, labels)
    save_file(tensors, str(dst), metadata={"mudsc_plan": json.dumps(meta)})
    return dst


def _refused(path, *patterns):
    """``pytest.raises`` for a ValueError whose message names ``path`` and matches every pattern, in order."""
    return pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*" + ".*".join(patterns))


def _first_group(plan):
    return next(iter(plan.maps))


# ------------------------------------------------------------------------------------------ the reported defects
@pytest.mark.parametrize("resign", [False, True])
def test_raised_num_outputs_is_refused(tmp_path, saved, merged, resign):
    name = _first_group(merged[1].plan)

    def edit(meta):
        meta["groups"][name]["num_outputs"] += 1

    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit, resign=resign)
    with _refused(bad, f"group {name!r}", r"1 of its num_outputs=17 merged units have no input unit \(first: \[16\]\)"):
        MergePlan.load(bad)


@pytest.mark.parametrize("resign", [False, True])
def test_all_labels_zero_is_refused(tmp_path, saved, merged, resign):
    name = _first_group(merged[1].plan)

    def edit(tensors):
        tensors[f"labels/{name}"] = torch.zeros_like(tensors[f"labels/{name}"])

    bad = _rewrite(saved, tmp_path / "bad.safetensors", tensor_edit=edit, resign=resign)
    with _refused(bad, f"group {name!r}", "15 of its num_outputs=16 merged units have no input unit"):
        MergePlan.load(bad)


def test_dropped_spec_member_is_refused(tmp_path, saved):
    def edit(meta):
        meta["spec"]["groups"][0]["members"].pop()

    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit)
    with _refused(bad, "checksum mismatch"):
        MergePlan.load(bad)


def test_missing_fingerprints_key_is_named(tmp_path, saved):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=lambda meta: meta.pop("fingerprints"))
    with _refused(bad, "lacks the key 'fingerprints'"):
        MergePlan.load(bad)


def test_damaged_plan_json_is_named(tmp_path, saved):
    meta, tensors = _read(saved)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"mudsc_plan": json.dumps(meta)[:-10]})
    with _refused(bad, "'mudsc_plan' metadata is not valid JSON"):
        MergePlan.load(bad)


# ------------------------------------------------------------------------------------------ damaged files
def test_truncated_file_is_named(tmp_path, saved):
    raw = saved.read_bytes()
    for n, cut in enumerate((len(raw) - 9, 100, 5, 0)):
        bad = tmp_path / f"cut{n}.safetensors"
        bad.write_bytes(raw[:cut])
        with _refused(bad, "not a readable safetensors file"):
            MergePlan.load(bad)


def test_garbage_header_is_named(tmp_path, saved):
    raw = saved.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(raw[:8] + bytes(range(256)) * (size // 256) + b"\x01" * (size % 256) + raw[8 + size:])
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((2**40).to_bytes(8, "little") + raw[8:])
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for bad in (garbage, huge, noise):
        with _refused(bad, "not a readable safetensors file"):
            MergePlan.load(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m.pop(k) for k in list(m) if k != "format"], "lacks the key 'version'"),
    (lambda m: m.update(groups=[1, 2]), "key 'groups' must be a JSON object, got list"),
    (lambda m: m.update(num_models="2"), "key 'num_models' must be a JSON integer, got str"),
    (lambda m: m.update(num_models=True), "key 'num_models' must be a JSON integer, got bool"),
    (lambda m: m.update(version=""), "key 'version' is empty"),
    (lambda m: m.update(info=[]), "key 'info' must be a JSON object"),
    (lambda m: next(iter(m["groups"].values())).update(num_outputs="16"), r"group 'layers\.0'.*num_outputs"),
    (lambda m: next(iter(m["groups"].values())).pop("merge_value"), r"group 'layers\.0'.*merge_value"),
    (lambda m: m["spec"]["groups"][0]["members"][0].update(colour=1), "'spec' is not a valid permutation spec"),
    (lambda m: m["spec"].pop("groups"), "'spec' is not a valid permutation spec"),
    (lambda m: m.pop("checksum"), "lacks the key 'checksum'"),
    (lambda m: m.update(format="mudsc.MergePlan/3"), "written by a newer mudsc.*upgrade mudsc"),
    (lambda m: m.update(format="mudsc.MergePlan/x"), "holds plan format 'mudsc.MergePlan/x'"),
    (lambda m: m.update(format=None), "holds plan format None"),
])
def test_wrong_json_is_named(tmp_path, saved, edit, message):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit)
    with _refused(bad, message):
        MergePlan.load(bad)


def test_metadata_json_that_is_not_an_object(tmp_path, saved):
    _, tensors = _read(saved)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"mudsc_plan": "[1, 2]"})
    with _refused(bad, "must be a JSON object, got list"):
        MergePlan.load(bad)


# ------------------------------------------------------------------------------------------ content checks
def test_labels_and_groups_must_agree(tmp_path, saved, merged):
    name = _first_group(merged[1].plan)
    cases = [
        (dict(tensor_edit=lambda t: t.pop(f"labels/{name}")), f"lacks the labels of group {name!r}"),
        (dict(tensor_edit=lambda t: t.update({"labels/extra": torch.zeros(4, dtype=torch.int64)})),
         "labels of group 'extra', which the metadata's 'groups' does not list"),
        (dict(tensor_edit=lambda t: t.update({"weights": torch.zeros(4)})), "tensor 'weights'"),
        (dict(tensor_edit=lambda t: t.update({f"labels/{name}": t[f"labels/{name}"].int()})),
         f"group {name!r}: labels must be a 1-D int64 tensor, got torch.int32"),
        (dict(tensor_edit=lambda t: t.update({f"labels/{name}": t[f"labels/{name}"].view(2, -1)})),
         f"group {name!r}: labels must be a 1-D int64 tensor"),
        (dict(tensor_edit=lambda t: t.update({f"labels/{name}": t[f"labels/{name}"][:-1]}), resign=True),
         rf"group {re.escape(repr(name))}: labels have shape \(31,\)"),
        (dict(tensor_edit=lambda t: t[f"labels/{name}"].__setitem__(0, 16), resign=True),
         r"must lie in \[0, num_outputs=16\)"),
    ]
    for n, (edit, message) in enumerate(cases):
        bad = _rewrite(saved, tmp_path / f"bad{n}.safetensors", **edit)
        with _refused(bad, message):
            MergePlan.load(bad)


def test_group_renamed_consistently_must_be_in_the_spec(tmp_path, saved, merged):
    name = _first_group(merged[1].plan)

    def meta_edit(meta):
        meta["groups"]["ghost"] = meta["groups"].pop(name)

    def tensor_edit(tensors):
        tensors["labels/ghost"] = tensors.pop(f"labels/{name}")

    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=meta_edit, tensor_edit=tensor_edit, resign=True)
    with _refused(bad, "group 'ghost' has a map but is not a group of the spec"):
        MergePlan.load(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["spec"]["groups"][0]["members"][0].update(name="nowhere.weight"),
     "member 'nowhere.weight' is not a parameter or buffer of the fingerprinted models"),
    (lambda m: m["spec"]["groups"][0]["members"][0].update(axis=3), "axis 3 .* does not fit its fingerprinted shape"),
    (lambda m: m["spec"]["groups"][0]["members"][0].update(offset=4), "extent 20 .* does not fit"),
    (lambda m: m["fingerprints"].pop(), "merges 2 models but holds 1 fingerprints"),
    (lambda m: m["fingerprints"][1].pop("layers.0.weight"), "fingerprints of models 0 and 1 differ"),
    (lambda m: m["fingerprints"][1]["layers.0.weight"].__setitem__(0, [16, 13]), "model 1: tensor 'layers.0.weight'"),
    (lambda m: m["fingerprints"][0]["layers.0.weight"].__setitem__(1, 7), "entry 'layers.0.weight' must be"),
])
def test_spec_members_must_fit_the_fingerprints(tmp_path, saved, edit, message):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit, resign=True)
    with _refused(bad, message):
        MergePlan.load(bad)


@pytest.mark.parametrize("edit", [
    lambda m: next(iter(m["groups"].values())).update(merge_value=0.5),
    lambda m: m["hyperparameters"].update(alpha=0.25),
    lambda m: m["fingerprints"][0]["layers.0.weight"].__setitem__(2, 1.0),
    lambda m: m.update(checksum="sha256:" + "0" * 64),
])
def test_checksum_detects_valid_looking_edits(tmp_path, saved, edit):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", meta_edit=edit)
    with _refused(bad, "checksum mismatch"):
        MergePlan.load(bad)


def test_checksum_detects_swapped_labels(tmp_path, saved, merged):
    name = _first_group(merged[1].plan)

    def edit(tensors):  # swap two units' merged units: the labels stay a valid map, only the checksum can tell
        lab = tensors[f"labels/{name}"]
        i = int(np.flatnonzero(lab.numpy() != int(lab[0]))[0])
        lab[0], lab[i] = int(lab[i]), int(lab[0])

    bad = _rewrite(saved, tmp_path / "bad.safetensors", tensor_edit=edit)
    with _refused(bad, "checksum mismatch"):
        MergePlan.load(bad)


# ------------------------------------------------------------------------------------------ construction, apply
def test_construction_validates(merged):
    plan = merged[1].plan
    name = _first_group(plan)
    good = plan.maps[name]
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}

    def build(**changes):
        return MergePlan(**{**fields, **changes})

    g = f"group {name!r}: "
    cases = [
        (dict(maps={**plan.maps, name: MatchResult(good.labels, good.num_outputs + 1, 0.0)}),
         g + "1 of its num_outputs=17 merged units have no input unit"),
        (dict(maps={**plan.maps, name: MatchResult(np.zeros_like(good.labels), good.num_outputs, 0.0)}),
         g + "15 of its num_outputs=16 merged units have no input unit"),
        (dict(maps={**plan.maps, name: MatchResult(good.labels.astype(np.float64), good.num_outputs, 0.0)}),
         g + "labels must be integers"),
        (dict(maps={**plan.maps, name: MatchResult(good.labels, 0, 0.0)}),
         g + r"num_outputs is 0; it must lie in \[1, 32\]"),
        (dict(maps={**plan.maps, "ghost": good}), "group 'ghost' has a map but is not a group of the spec"),
        (dict(num_models=3), g + r"labels have shape \(32,\)"),
        (dict(num_models=0), "num_models must be at least 1"),
        (dict(fingerprints=plan.fingerprints[:1]), "merges 2 models but holds 1 fingerprints"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            build(**changes)
    # torch labels of any integer dtype and no fingerprints are accepted, as before
    build(maps={name: MatchResult(torch.as_tensor(good.labels, dtype=torch.int32), good.num_outputs, 0.0)},
          fingerprints=[])


def test_apply_and_save_validate_a_changed_plan(tmp_path, merged):
    ms, result = merged
    plan = copy.deepcopy(result.plan)
    name = _first_group(plan)
    plan.maps[name] = MatchResult(np.zeros_like(plan.maps[name].labels), plan.maps[name].num_outputs, 0.0)
    for call in (lambda: plan.apply(ms), lambda: plan.apply(ms, check=False),
                 lambda: plan.save(tmp_path / "x.safetensors")):
        with pytest.raises(ValueError, match=f"group {name!r}: 15 of its num_outputs=16 merged units"):
            call()
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------ valid plans
def test_round_trip_is_verified_and_applies_identically(tmp_path, saved, merged):
    ms, result = merged
    meta, _ = _read(saved)
    assert meta["format"] == "mudsc.MergePlan/2" and re.fullmatch(r"sha256:[0-9a-f]{64}", meta["checksum"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = MergePlan.load(saved)
    assert plan.spec == result.plan.spec and plan.fingerprints == result.plan.fingerprints
    for name, r in result.plan.maps.items():
        np.testing.assert_array_equal(plan.maps[name].labels, r.labels)
        assert plan.maps[name].labels.dtype == np.int64 and plan.maps[name].num_outputs == r.num_outputs
    expected = result.plan.apply(ms).state_dict()
    for k, v in plan.apply(ms).state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
        torch.testing.assert_close(v, result.model.state_dict()[k], rtol=0, atol=0)
    again = tmp_path / "again.safetensors"
    plan.save(again)
    assert _read(again)[0]["checksum"] == meta["checksum"]


def test_format_1_file_loads_with_a_warning(tmp_path, saved, merged):
    ms, result = merged

    def legacy(meta):
        meta.pop("checksum")
        meta["format"] = "mudsc.MergePlan/1"

    old = _rewrite(saved, tmp_path / "old.safetensors", meta_edit=legacy)
    with pytest.warns(plan_module.UnverifiedPlanWarning, match=re.escape(repr(str(old))) + ".*no checksum"):
        plan = MergePlan.load(old)
    for k, v in plan.apply(ms).state_dict().items():
        torch.testing.assert_close(v, result.model.state_dict()[k], rtol=0, atol=0)
    # still validated: an inconsistent format-1 file is refused (and not merely warned about)
    name = _first_group(result.plan)
    bad = _rewrite(old, tmp_path / "bad.safetensors",
                   meta_edit=lambda m: m["groups"][name].update(num_outputs=m["groups"][name]["num_outputs"] + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _refused(bad, f"group {name!r}", "have no input unit"):
            MergePlan.load(bad)
    # saving it again writes format 2 with a checksum
    new = tmp_path / "new.safetensors"
    plan.save(new)
    assert _read(new)[0]["format"] == "mudsc.MergePlan/2" and _read(new)[0]["checksum"] == _read(saved)[0]["checksum"]
