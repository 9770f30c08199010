"""Progress bars of the long stages (the statistics pass, the descent): tqdm when asked for, else nothing."""

from __future__ import annotations

from typing import Iterable


def progress_bar(iterable: Iterable, enabled: bool, **kwargs) -> Iterable:
    """``iterable`` wrapped in a ``tqdm.auto`` bar (``kwargs`` go to tqdm) when ``enabled``, else unchanged."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # third-party and slow to import: only when a bar is shown

    return tqdm(iterable, **kwargs)
