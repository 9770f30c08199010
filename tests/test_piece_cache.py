"""The PieceCache (mudsc.piece_cache): kept versions reused, changed pieces brought up to date from a kept version
(slots removed and added), full products where too much changed; always equal to recomputing up to rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mudsc
from mudsc import AxisMap

torch.set_num_threads(2)


def _descent_like_maps(rng, m, steps, n=3):
    """Joint labels of n models over m units, changed a little per step as the descent does: pairings swapped,
    sometimes a within-model merge (a slot with two units of one model and an empty slot), an old version back."""
    lab = np.concatenate([rng.permutation(m) for _ in range(n)])
    history = []
    for step in range(steps):
        if step == 6:
            lab = history[2].copy()  # a sweep without improvement restarts from earlier maps
        else:
            lab = lab.copy()
            for _ in range(int(rng.integers(1, 6))):
                a, b = rng.integers(m, n * m, size=2)
                lab[a], lab[b] = lab[b], lab[a]
            if step % 4 == 3:
                lab[m + 3] = lab[m + 5]
        history.append(lab)
        yield step, lab


@pytest.mark.skipif(not mudsc.build_info()["torch_ops"], reason="native ops not built")
@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("scaled", [False, True])
def test_piece_cache_versions_and_incremental_updates_match_recomputing(scaled, dev):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    n, m = 3, 40
    gen = torch.Generator().manual_seed(3)
    conv = [(torch.randn(m, m, 3, 3, generator=gen) + 0.5).to(dev) for _ in range(n)]  # units on 1, map on 0
    lin = [torch.randn(m, 2 * m, generator=gen).to(dev) for _ in range(n)]             # units on 0, map on 1
    other = [torch.randn(2 * m, generator=gen).to(dev) for _ in range(n)]
    cache = mudsc.PieceCache(small_work=0)
    kinds = set()
    for step, lab in _descent_like_maps(np.random.default_rng(0), m, 14, n):
        counts = np.bincount(lab, minlength=m)
        scale = torch.tensor(n / (counts + 1e-5), dtype=torch.float32) if scaled else None
        maps = [AxisMap(torch.as_tensor(lab[i * m:(i + 1) * m]), m, scale) for i in range(n)]
        # the linear piece: the mapped axis also holds units of no group (pass-through slots)
        wide = [AxisMap(torch.cat([torch.as_tensor(lab[i * m:(i + 1) * m]), torch.arange(m, 2 * m)]), 2 * m,
                        None if scale is None else torch.cat([scale, torch.ones(m)])) for i in range(n)]
        pieces = [[(conv[i], 1, {0: maps[i]}), (lin[i], 0, {1: wide[i]}), (other[i][:m].reshape(m, 1), 0)]
                  for i in range(n)]
        key = lab.tobytes()
        before = (cache.computed, cache.reused, cache.updated)
        got = mudsc.similarity.weight_moments(pieces, cache, "g", [key, key, None])
        want = mudsc.similarity.weight_moments(pieces)
        after = (cache.computed, cache.reused, cache.updated)
        kinds.add(tuple(b - a for a, b in zip(before, after)))
        assert got.num_samples == want.num_samples
        torch.testing.assert_close(got.correlation(), want.correlation(), rtol=0, atol=2e-6)
        torch.testing.assert_close(got.mean(), want.mean(), rtol=1e-6, atol=1e-6)
    assert (0, 0, 2) in kinds   # both large pieces brought up to date from a kept version
    assert (0, 2, 0) in kinds   # an earlier version reused as it is
    assert any(k[0] > 0 for k in kinds)  # and recomputed where too much changed (first call, within-model merges)
