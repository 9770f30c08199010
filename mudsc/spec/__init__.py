"""Model graphs: permutation specs (data model), the torch.fx tracer, the invariance check, and transforms.

- :class:`PermSpec` / :class:`Group` / :class:`Member` / :class:`Tap`: the spec data model (``data.py``).
- :func:`trace`: discover a spec with torch.fx (``tracer.py``: the interpreter loop; ``traceable.py``: the fx tracer
  :class:`SpecTracer`, which opens up ``torch.nn``'s transformer modules; ``state.py``: what it records;
  ``factors.py``: how an axis is described in channel spaces; ``handlers/``: the per-op rules and their registries;
  ``spaces.py``: the union-find; ``resolve.py``: spaces to groups; ``taps.py``: where to observe each group).
- :func:`check_spec`: verify a spec by random permutations (``check.py``); :func:`permuted_share`: how much of a
  model it permutes (``coverage.py``).
- :func:`permute_model`, :func:`apply_maps`: permute one model / merge N models by per-group maps
  (``transform.py``).
"""

from .check import SpecCheckError, check_spec
from .coverage import permuted_share
from .data import Group, Member, PermSpec, Tap
from .traceable import SpecTracer
from .tracer import SpecTraceError, trace
from .transform import apply_maps, permute_model

__all__ = [
    "Group", "Member", "PermSpec", "SpecCheckError", "SpecTraceError", "SpecTracer", "Tap", "apply_maps", "check_spec",
    "permute_model", "permuted_share", "trace",
]
