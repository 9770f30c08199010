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

    {"format": "mudsc.MergePlan/1", "version": <library version>, "method": ..., "hyperparameters": {...},
     "num_models": N, "spec": {...}, "fingerprints": [{name: [shape, dtype, sum, sumsq]}, ...],
     "groups": {name: {"num_outputs": K, "merge_value": v}}, "info": {...}}

Saving writes a temporary file next to the target and renames it, so a failed save leaves no partial file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._io import atomic_path
from ._version import __version__
from .maps import MatchResult
from .spec import PermSpec, apply_maps

__all__ = ["MergePlan", "fingerprint", "check_fingerprint"]

_FORMAT = "mudsc.MergePlan/1"
_SAMPLE = 4096


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


@dataclass
class MergePlan:
    """Per-group unit maps of N models plus what is needed to apply, reproduce and verify them.

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
            check: verify the fingerprints first (``ValueError`` naming the first differing parameter).
        """
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
        """Write the plan to one ``.safetensors`` file (layout in the module docstring); atomic."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a directory; MergePlan.save writes one .safetensors file")
        tensors = {f"labels/{k}": torch.as_tensor(np.asarray(v.labels), dtype=torch.int64).contiguous()
                   for k, v in self.maps.items()}
        meta = json.dumps(self._metadata())
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"mudsc_plan": meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergePlan":
        """Read a plan written by :meth:`save`; ``ValueError`` if the file is not one."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"no plan file at {path!r}")
        try:
            with safe_open(path, framework="pt") as f:
                meta_text = (f.metadata() or {}).get("mudsc_plan")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for foreign files
            raise ValueError(f"{path!r} is not a safetensors file: {exc}") from exc
        if meta_text is None:
            raise ValueError(f"{path!r} is a safetensors file but holds no mudsc plan (no 'mudsc_plan' metadata)")
        meta = json.loads(meta_text)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path!r} holds plan format {meta.get('format')!r}; this library reads {_FORMAT!r}")
        maps = {}
        for name, g in meta["groups"].items():
            key = f"labels/{name}"
            if key not in tensors:
                raise ValueError(f"{path!r} lacks the labels of group {name!r}")
            maps[name] = MatchResult(tensors[key].numpy().astype(np.int64), int(g["num_outputs"]),
                                     float(g["merge_value"]))
        return cls(spec=PermSpec.from_dict(meta["spec"]), maps=maps, num_models=int(meta["num_models"]),
                   method=meta["method"], hyperparameters=meta["hyperparameters"],
                   fingerprints=meta["fingerprints"], version=meta["version"], info=meta.get("info", {}))

    def __repr__(self) -> str:
        return (f"MergePlan(method={self.method!r}, num_models={self.num_models}, groups={len(self.maps)}, "
                f"version={self.version!r})")
