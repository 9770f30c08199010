"""The demo's merges, cached: one ``mudsc.merge`` per (endpoints, method, backend), or its stored plan re-applied.

Cache layout, under the demo's cache folder: ``merges/<method>-<backend>-<digest>.safetensors`` (the
:class:`mudsc.MergePlan`) and ``merges/<same stem>.json`` (``{"timing", "sweeps", "accuracy"}`` of the run that
computed it). The digest covers the endpoints' checkpoint names, the method, the backend, the number of merge
images and which set they are, the library version and :data:`mudsc.demo.endpoints.DEMO_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch.nn as nn

from .. import MergePlan, __version__, merge
from .._io import write_json
from .endpoints import DEMO_VERSION

__all__ = ["merge_or_load", "plan_paths", "read_json"]


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plan_paths(cache: Path, names: Sequence[str], method: str, backend: str, merge_images: int,
               merge_set: int = 0) -> tuple:
    """``(plan path, metadata path)`` of one cached merge (layout in the module docstring)."""
    blob = json.dumps({"endpoints": list(names), "method": method, "backend": backend, "images": merge_images,
                       "set": merge_set, "mudsc": __version__, "demo": DEMO_VERSION}, sort_keys=True)
    stem = f"{method}-{backend}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"
    folder = cache / "merges"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _load_cached(plan_path: Path, meta_path: Path, endpoints, want_accuracy: bool,
                 log: Callable[[str], None]) -> Optional[tuple]:
    """``merge_or_load``'s result from the cache, or None when nothing usable is stored (the reason is logged)."""
    if not (plan_path.exists() and meta_path.exists()):
        return None
    try:
        plan = MergePlan.load(plan_path)
        meta = json.loads(meta_path.read_text())
        if want_accuracy and meta.get("accuracy") is None:
            raise KeyError("no stored accuracies")
        plan.apply(endpoints)  # raises if the plan does not fit these endpoints
        return meta.get("accuracy"), plan, meta["timing"], meta["sweeps"], True
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:  # stale or damaged: merge again
        log(f"  cached plan {plan_path.name} unusable ({exc}); merging again")
        return None


def merge_or_load(endpoints, loader, method: str, spec, backend: str, cache: Path, names: Sequence[str],
                  merge_images: int, recompute: bool, log: Callable[[str], None],
                  evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None, merge_set: int = 0) -> tuple:
    """``(accuracies or None, plan, timing, sweeps, from_cache)`` of one demo merge.

    The plan is cached next to the endpoints (:meth:`mudsc.MergePlan.save`), with the timing of the run that
    computed it and ``evaluate(merged model)``, keyed as :func:`plan_paths` says. A cached plan is loaded and
    applied to the endpoints again, which checks it against their fingerprints; its accuracies and times are
    the stored ones. ``recompute`` ignores the cache. ``merge_set`` numbers the merge data (the demo's spread
    over several sets of merge images).
    """
    plan_path, meta_path = plan_paths(cache, names, method, backend, merge_images, merge_set)
    if not recompute:
        cached = _load_cached(plan_path, meta_path, endpoints, evaluate is not None, log)
        if cached is not None:
            return cached
    # the paper's protocol: statistics and BatchNorm reset over the whole merge loader (bench_samples.py measures
    # what the adaptive default changes on these endpoints)
    res = merge(endpoints, loader, method=method, spec=spec, progress=False, backend=backend, adaptive=False)
    timing = {k: float(v) for k, v in res.report.get("timing", {}).items()}
    acc = evaluate(res.model) if evaluate is not None else None
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    res.plan.save(plan_path)
    write_json(meta_path, {"timing": timing, "sweeps": res.report.get("sweeps"), "accuracy": acc})
    return acc, res.plan, timing, res.report.get("sweeps"), False
