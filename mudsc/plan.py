"""MergePlan: the result of matching N models, independent of their weights' values, applicable and storable.

A plan holds, per permutation group, the unit map of the N models (``labels: int64[N·Om]`` model-major, and K
merged units; never dense matrices), the method and hyperparameters that produced it, the library version, the
spec (:meth:`mudsc.PermSpec.to_dict`) and a fingerprint of every model it was computed for. ``apply(models)``
merges models with it (:func:`mudsc.apply_maps`) after checking the fingerprints.

Fingerprint of one model: for every parameter and buffer (``named_parameters`` + ``named_buffers``), its shape,
dtype and a cheap checksum: the float64 sum and sum of squares of a strided sample of at most 4096 entries
(every ``ceil(numel / 4096)``-th entry of the flattened tensor).

File layout (one file, ``.safetensors``): tensors ``labels/<group name>`` (int64[N·Om]) and, in the safetensors
header metadata, the key ``mudsc_plan`` holding a JSON document::

    {"format": "mudsc.MergePlan/2", "version": <library version>, "method": ..., "hyperparameters": {...},
     "num_models": N, "spec": {...}, "fingerprints": [{name: [shape, dtype, sum, sumsq]}, ...],
     "groups": {name: {"num_outputs": K, "merge_value": v}}, "info": {...}, "checksum": "sha256:<hex>"}

Checksum (format 2): sha256 over a fixed tag, the canonical JSON of the document without ``"checksum"``
(``sort_keys``, separators ``,`` and ``:``, ASCII) and, in group-name order, every group's name and labels
(little-endian int64 bytes), each part preceded by its length as 8 little-endian bytes. Any edit of the labels
or of the metadata (a group's K, the spec, the fingerprints, ...) is detected on load.

Format 1 (written before the checksum existed; the same layout without ``"checksum"``) is still read: it is
validated like format 2 but cannot be verified, so loading it warns (:class:`UnverifiedPlanWarning`); saving the
plan again writes format 2. A format newer than 2 is refused (written by a newer mudsc).

What is validated (``ValueError``; on load the message names the file, and the group or key at fault):

- construction (``MergePlan(...)``, hence also load) and :meth:`MergePlan.apply`: ``num_models >= 1``; every
  map names a group of the spec; its labels are an integer ``[N·size]`` vector onto exactly ``[0, K)`` with
  ``K = num_outputs`` (values in range, every merged unit has at least one member) and K splits into the
  group's blocks; there are 0 or N fingerprints, all of the same parameter names, shapes and dtypes, and every
  spec member is one of their tensors, with the member's axis and extent inside the fingerprinted shape;
- load, in addition: the file is a readable safetensors file (not truncated, header intact), the metadata is a
  JSON object with every key of the layout above of the right type, the format is 1 or 2 (a newer one is
  refused), the labels tensors are 1-D int64 and name exactly the groups the metadata lists, and (format 2) the
  checksum matches. The content checks run before the checksum, so a message names what is wrong where it can.

Saving writes a temporary file next to the target and renames it, so a failed save leaves no partial file.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._io import atomic_path
from ._version import __version__
from .maps import MatchResult
from .spec import PermSpec, apply_maps
from .spec.views import dense_shape

__all__ = ["MergePlan", "UnverifiedPlanWarning", "fingerprint", "check_fingerprint"]

_FORMAT_NAME = "mudsc.MergePlan"
_FORMAT_VERSION = 2  # written; 1 is read too (no checksum)
_FORMAT = f"{_FORMAT_NAME}/{_FORMAT_VERSION}"
_CHECKSUM_TAG = b"mudsc.MergePlan checksum v1\0"
_SAMPLE = 4096


class UnverifiedPlanWarning(UserWarning):
    """A plan file of format 1 was loaded: it holds no checksum, so edits of it cannot be detected."""


def _named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def fingerprint(model: nn.Module) -> Dict[str, list]:
    """``{tensor name: [shape list, dtype str, sample sum, sample sum of squares]}`` of a model (see module doc)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    out = {}
    with torch.no_grad():
        for name, t in _named_tensors(model).items():
            flat = t.detach().reshape(-1)
            step = max(1, -(-flat.numel() // _SAMPLE))
            sample = flat[::step].to("cpu", torch.float64)
            out[name] = [list(t.shape), str(t.dtype).replace("torch.", ""), float(sample.sum()),
                         float((sample * sample).sum())]
    return out


def check_fingerprint(model: nn.Module, expected: Mapping[str, list], where: str = "model") -> None:
    """Raise ``ValueError`` naming the first parameter/buffer of ``model`` that differs from ``expected``."""
    actual = fingerprint(model)
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    if missing:
        raise ValueError(f"{where} lacks parameter/buffer {missing[0]!r} that the plan was computed with"
                         f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    if extra:
        raise ValueError(f"{where} has parameter/buffer {extra[0]!r} that the plan's models did not have")
    for name, (shape, dtype, s, ss) in expected.items():
        a_shape, a_dtype, a_s, a_ss = actual[name]
        if list(a_shape) != list(shape):
            raise ValueError(f"{where}: parameter {name!r} has shape {tuple(a_shape)} but the plan was computed "
                             f"for shape {tuple(shape)}")
        if a_dtype != dtype:
            raise ValueError(f"{where}: parameter {name!r} has dtype {a_dtype} but the plan was computed for {dtype}")
        tol = 1e-6 * (1.0 + math.sqrt(abs(ss) * _SAMPLE))  # bounds 1e-6 of the sample's sum of |x|
        if abs(a_s - s) > tol or abs(a_ss - ss) > 1e-6 * (1.0 + abs(ss)):
            raise ValueError(f"{where}: parameter {name!r} differs from the one the plan was computed for "
                             f"(sample sum {a_s:.6g} vs {s:.6g}, sum of squares {a_ss:.6g} vs {ss:.6g})")


# ---------------------------------------------------------------------------------------------- validation
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _as_int(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _check_map(group, entry, num_models: int) -> None:
    """``ValueError`` unless ``entry``'s labels are an integer ``[N·size]`` map onto exactly ``[0, K)``."""
    where = f"group {group.name!r}"
    if not hasattr(entry, "labels") or not hasattr(entry, "num_outputs"):
        raise ValueError(f"{where}: the map must have .labels and .num_outputs (a MatchResult), "
                         f"got {type(entry).__name__}")
    k = _as_int(entry.num_outputs, f"{where}: num_outputs")
    labels = entry.labels
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    want = num_models * group.size
    if labels.shape != (want,):
        raise ValueError(f"{where}: labels have shape {labels.shape}; {num_models} models of {group.size} units "
                         f"need ({want},)")
    if not 1 <= k <= want:
        raise ValueError(f"{where}: num_outputs is {k}; it must lie in [1, {want}] (models x group size)")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{where}: labels must lie in [0, num_outputs={k}), got range [{lo}, {hi}]")
    empty = np.flatnonzero(np.bincount(labels.astype(np.int64), minlength=k) == 0)
    if empty.size:
        raise ValueError(f"{where}: {empty.size} of its num_outputs={k} merged units have no input unit (first: "
                         f"{empty[:5].tolist()}); the labels must map onto every unit of [0, num_outputs)")
    if group.num_blocks > 1 and k % group.num_blocks:
        raise ValueError(f"{where} has {group.num_blocks} blocks but num_outputs={k} does not split into them")


def _fingerprint_shapes(fp, i: int) -> Dict[str, tuple]:
    """``{tensor name: (shape, dtype)}`` of fingerprint ``i``, after checking its entries' form."""
    if not isinstance(fp, Mapping):
        raise ValueError(f"the fingerprint of model {i} must be a dict {{tensor name: [shape, dtype, sum, sumsq]}}, "
                         f"got {type(fp).__name__}")
    out = {}
    for name, entry in fp.items():
        ok = (isinstance(entry, (list, tuple)) and len(entry) == 4 and isinstance(entry[0], (list, tuple))
              and all(_is_int(d) and d >= 0 for d in entry[0]) and isinstance(entry[1], str)
              and all(_is_number(x) for x in entry[2:]))
        if not ok:
            raise ValueError(f"the fingerprint of model {i}: entry {name!r} must be [shape, dtype, sum, sumsq], "
                             f"got {str(entry)[:80]}")
        out[name] = (tuple(int(d) for d in entry[0]), entry[1])
    return out


def _check_fingerprints(spec: PermSpec, fingerprints, num_models: int) -> None:
    """0 or N fingerprints of one set of tensors (names, shapes, dtypes) that holds every spec member."""
    if not isinstance(fingerprints, (list, tuple)):
        raise ValueError(f"fingerprints must be a list (one per model), got {type(fingerprints).__name__}")
    if len(fingerprints) not in (0, num_models):
        raise ValueError(f"the plan merges {num_models} models but holds {len(fingerprints)} fingerprints")
    if not fingerprints:
        return
    shapes = [_fingerprint_shapes(fp, i) for i, fp in enumerate(fingerprints)]
    ref = shapes[0]
    for i, other in enumerate(shapes[1:], 1):
        diff = sorted(set(other) ^ set(ref))
        if diff:
            raise ValueError(f"the fingerprints of models 0 and {i} differ in their tensors ({diff[0]!r})")
        for name, shape_dtype in other.items():
            if shape_dtype != ref[name]:
                raise ValueError(f"the fingerprint of model {i}: tensor {name!r} has shape/dtype {shape_dtype}, "
                                 f"model 0's has {ref[name]}")
    for g in spec.groups:
        for m in g.members:
            if m.name not in ref:
                raise ValueError(f"group {g.name!r}: member {m.name!r} is not a parameter or buffer of the "
                                 "fingerprinted models")
            shape = ref[m.name][0]
            view = spec.views.get(m.name)
            shape = dense_shape(shape, view, m.name) if view is not None else shape
            if m.axis >= len(shape) or m.extent(g.size) > shape[m.axis]:
                raise ValueError(f"group {g.name!r}: member {m.name!r} axis {m.axis} (extent {m.extent(g.size)} "
                                 f"for group size {g.size}) does not fit its fingerprinted shape {shape}")


def _validate(plan: "MergePlan") -> None:
    if not isinstance(plan.spec, PermSpec):
        raise TypeError(f"spec must be a PermSpec, got {type(plan.spec).__name__}")
    if not isinstance(plan.maps, Mapping):
        raise TypeError(f"maps must be a dict {{group name: MatchResult}}, got {type(plan.maps).__name__}")
    num_models = _as_int(plan.num_models, "num_models")
    if num_models < 1:
        raise ValueError(f"num_models must be at least 1, got {num_models}")
    groups = {g.name: g for g in plan.spec.groups}
    unknown = sorted(set(plan.maps) - set(groups))
    if unknown:
        raise ValueError(f"group {unknown[0]!r} has a map but is not a group of the spec"
                         f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}")
    for name, entry in plan.maps.items():
        _check_map(groups[name], entry, num_models)
    _check_fingerprints(plan.spec, plan.fingerprints, num_models)


def _canonical_json(doc: Mapping) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _checksum(doc: Mapping, labels: Mapping[str, np.ndarray]) -> str:
    """``"sha256:<hex>"`` of the document (its ``"checksum"`` left out) and the labels (see the module doc)."""
    h = hashlib.sha256(_CHECKSUM_TAG)

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    part(_canonical_json({k: v for k, v in doc.items() if k != "checksum"}))
    for name in sorted(labels):
        part(name.encode("utf-8"))
        part(np.ascontiguousarray(labels[name], dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------- reading
_KEYS = {"version": str, "method": str, "hyperparameters": dict, "num_models": int, "spec": dict,
         "fingerprints": list, "groups": dict}
_JSON_TYPE = {str: "string", dict: "object", int: "integer", list: "array"}


def _read_file(path: str) -> tuple:
    """``(metadata document, {tensor name: tensor})`` of a plan file; ``ValueError`` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta_text = (f.metadata() or {}).get("mudsc_plan")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise ValueError(f"{path!r} is not a readable safetensors file (truncated, damaged header or another "
                         f"format): {exc}") from exc
    if meta_text is None:
        raise ValueError(f"{path!r} is a safetensors file but holds no mudsc plan (no 'mudsc_plan' metadata)")
    try:
        meta = json.loads(meta_text)
    except ValueError as exc:
        raise ValueError(f"{path!r}: the 'mudsc_plan' metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r}: the 'mudsc_plan' metadata must be a JSON object, got {type(meta).__name__}")
    return meta, tensors


def _format_version(path: str, meta: dict) -> int:
    fmt = meta.get("format")
    tail = fmt[len(_FORMAT_NAME) + 1:] if isinstance(fmt, str) and fmt.startswith(_FORMAT_NAME + "/") else ""
    if not (tail.isascii() and tail.isdigit()) or int(tail) < 1:
        raise ValueError(f"{path!r} holds plan format {fmt!r}; this library reads {_FORMAT_NAME + '/1'!r} to "
                         f"{_FORMAT!r}")
    if int(tail) > _FORMAT_VERSION:
        raise ValueError(f"{path!r} holds plan format {fmt!r}, written by a newer mudsc; this one ({__version__}) "
                         f"reads formats up to {_FORMAT!r}: upgrade mudsc to load it")
    return int(tail)


def _check_keys(path: str, meta: dict, fmt_version: int) -> None:
    for key, typ in _KEYS.items():
        if key not in meta:
            raise ValueError(f"{path!r}: the plan metadata lacks the key {key!r}")
        if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            raise ValueError(f"{path!r}: the plan metadata key {key!r} must be a JSON {_JSON_TYPE[typ]}, got "
                             f"{type(meta[key]).__name__}")
    if not meta["version"]:
        raise ValueError(f"{path!r}: the plan metadata key 'version' is empty")
    if not isinstance(meta.get("info", {}), dict):
        raise ValueError(f"{path!r}: the plan metadata key 'info' must be a JSON object")
    if fmt_version >= 2 and not isinstance(meta.get("checksum"), str):
        raise ValueError(f"{path!r}: the plan metadata lacks the key 'checksum' (a string), which format "
                         f"{meta['format']!r} requires")
    for name, g in meta["groups"].items():
        if not (isinstance(g, dict) and _is_int(g.get("num_outputs")) and _is_number(g.get("merge_value"))):
            raise ValueError(f"{path!r}: group {name!r}: its metadata must be {{\"num_outputs\": int, "
                             f"\"merge_value\": number}}, got {str(g)[:80]}")


def _labels_of(path: str, meta: dict, tensors: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """``{group name: int64 labels}``; the tensors must be exactly the labels of the metadata's groups."""
    listed = set(meta["groups"])
    labels = {}
    for key, t in tensors.items():
        name = key[len("labels/"):] if key.startswith("labels/") else None
        if name is None:
            raise ValueError(f"{path!r} holds the tensor {key!r}, which is not a 'labels/<group>' tensor")
        if name not in listed:
            raise ValueError(f"{path!r} holds labels of group {name!r}, which the metadata's 'groups' does not list")
        if t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(f"{path!r}: group {name!r}: labels must be a 1-D int64 tensor, got {t.dtype} of shape "
                             f"{tuple(t.shape)}")
        labels[name] = t.numpy()
    missing = sorted(listed - set(labels))
    if missing:
        raise ValueError(f"{path!r} lacks the labels of group {missing[0]!r}")
    return labels


def _verify_checksum(path: str, meta: dict, labels: Mapping[str, np.ndarray]) -> None:
    stored = meta.get("checksum")
    if stored is None:  # format 1 (format 2 requires the key: _check_keys)
        warnings.warn(f"{path!r} is a plan of format '{_FORMAT_NAME}/1', which holds no checksum: its content was "
                      f"validated, but edits of it cannot be detected; save it again to write {_FORMAT!r}",
                      UnverifiedPlanWarning, stacklevel=3)
        return
    actual = _checksum(meta, labels)
    if stored != actual:
        raise ValueError(f"{path!r}: checksum mismatch (stored {stored[:19]}..., content {actual[:19]}...): the "
                         "labels or the metadata were changed or damaged after the plan was saved")


@dataclass
class MergePlan:
    """Per-group unit maps of N models plus what is needed to apply, reproduce and verify them.

    Construction validates the plan (:meth:`validate`; ``ValueError`` naming the group at fault).

    Attributes:
        spec: the :class:`mudsc.PermSpec` the maps refer to.
        maps: ``{group name: MatchResult}`` (``labels: int64[N·Om]``, ``num_outputs`` K, ``merge_value``);
            groups left out are merged by identity (plain averaging).
        num_models: N.
        method: the method name (``mudsc.METHODS``).
        hyperparameters: the method's settings (balance, reduce, alpha, beta, ...).
        fingerprints: one :func:`fingerprint` per input model, in order (empty: no check on apply).
        version: ``mudsc.__version__`` that computed the plan.
        info: JSON-serialisable extras (merge value history, timings).
    """

    spec: PermSpec
    maps: Dict[str, MatchResult]
    num_models: int
    method: str = "custom"
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    fingerprints: List[Dict[str, list]] = field(default_factory=list)
    version: str = ""
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.version:
            self.version = __version__
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` unless the plan is consistent (the construction checks of the module docstring).

        Every map names a spec group and its labels are an integer ``[N·size]`` map onto exactly
        ``[0, num_outputs)``; the fingerprints (0 or N) agree with each other and hold every spec member with a
        shape that fits it. Cheap (linear in the labels and the tensor count); :meth:`apply` runs it again since
        ``maps`` may have been changed since construction.
        """
        _validate(self)

    # ------------------------------------------------------------------ applying
    def check(self, models: Sequence[nn.Module]) -> None:
        """Raise ``ValueError`` unless ``models`` are the N models the plan was computed for (by fingerprint)."""
        if isinstance(models, nn.Module) or not isinstance(models, Sequence):
            raise TypeError("models must be a list of nn.Module")
        if len(models) != self.num_models:
            raise ValueError(f"the plan merges {self.num_models} models, got {len(models)}")
        for i, (m, fp) in enumerate(zip(models, self.fingerprints)):
            check_fingerprint(m, fp, where=f"model {i}")

    def apply(self, models: Sequence[nn.Module], merge_eps: float = 0.0, check: bool = True) -> nn.Module:
        """The merged model ``Σ_i M_iᵀ W_i U_i`` per tensor (:func:`mudsc.apply_maps`); inputs are not modified.

        Args:
            models: the N models, in the order the plan was computed for.
            merge_eps: the eps of ``M = U / (colsum(U) + eps)`` (1e-5 reproduces the original exactly).
            check: verify the fingerprints first (``ValueError`` naming the first differing parameter). The plan
                itself is validated (:meth:`validate`) either way.
        """
        self.validate()
        if check:
            self.check(models)
        elif len(models) != self.num_models:
            raise ValueError(f"the plan merges {self.num_models} models, got {len(models)}")
        return apply_maps(list(models), self.spec, self.maps, merge_eps=merge_eps)

    @property
    def merge_values(self) -> Dict[str, float]:
        """``{group name: merge value}``."""
        return {k: float(v.merge_value) for k, v in self.maps.items()}

    # ------------------------------------------------------------------ storage
    def _metadata(self) -> dict:
        return {
            "format": _FORMAT,
            "version": self.version,
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "num_models": self.num_models,
            "spec": self.spec.to_dict(),
            "fingerprints": self.fingerprints,
            "groups": {k: {"num_outputs": int(v.num_outputs), "merge_value": float(v.merge_value)}
                       for k, v in self.maps.items()},
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan to one ``.safetensors`` file (layout in the module docstring); atomic.

        The plan is validated first (:meth:`validate`), so an inconsistent plan is never written.
        """
        from safetensors.torch import save_file

        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a directory; MergePlan.save writes one .safetensors file")
        self.validate()
        tensors = {f"labels/{k}": torch.as_tensor(np.asarray(v.labels), dtype=torch.int64).contiguous()
                   for k, v in self.maps.items()}
        doc = json.loads(json.dumps(self._metadata()))  # the document exactly as load will read it
        doc["checksum"] = _checksum(doc, {k[len("labels/"):]: t.numpy() for k, t in tensors.items()})
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"mudsc_plan": json.dumps(doc)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergePlan":
        """Read a plan written by :meth:`save` (format 1 or 2), validated as the module docstring says.

        Raises ``ValueError`` naming the file (and the group or metadata key) if the file is not a readable plan,
        is inconsistent, or (format 2) does not match its checksum; warns :class:`UnverifiedPlanWarning` for a
        format-1 plan, which has no checksum.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"no plan file at {path!r}")
        meta, tensors = _read_file(path)
        fmt_version = _format_version(path, meta)
        _check_keys(path, meta, fmt_version)
        labels = _labels_of(path, meta, tensors)
        try:
            spec = PermSpec.from_dict(meta["spec"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{path!r}: the plan's 'spec' is not a valid permutation spec: {exc}") from exc
        maps = {name: MatchResult(labels[name].astype(np.int64), int(g["num_outputs"]), float(g["merge_value"]))
                for name, g in meta["groups"].items()}
        try:
            plan = cls(spec=spec, maps=maps, num_models=int(meta["num_models"]), method=meta["method"],
                       hyperparameters=meta["hyperparameters"], fingerprints=meta["fingerprints"],
                       version=meta["version"], info=meta.get("info", {}))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path!r}: {exc}") from exc
        _verify_checksum(path, meta, labels)
        return plan

    def __repr__(self) -> str:
        return (f"MergePlan(method={self.method!r}, num_models={self.num_models}, groups={len(self.maps)}, "
                f"version={self.version!r})")
