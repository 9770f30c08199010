"""Union-find over channel index spaces, with partitions (slices) and block splits, used by the tracer.

A *space* is an index set of ``size`` channels; ids are ints. How tensor axes are described in spaces (factors
and dims) is ``factors.py``; this module only stores the constraints between spaces:

- ``union(a, b)``: the two spaces must use one permutation;
- ``fix(a)``: the space must keep the identity (it touches a model input/output, or an unknown op);
- ``add_stride(a, st)``: the space is split into blocks of ``st`` channels (only block-respecting permutations);
- ``tie(a, b)``: the block digits of a and b are one index (shared head permutation);
- ``partition(a, cuts)``: the space is a concatenation of independent child spaces (fused qkv, ``torch.cat``);
- ``alias_block(a, b, st)``: space a is the block digit of b (a per-head table indexed like b's heads).

Layout. Parallel lists indexed by space id: ``parent`` (the union-find forest), and at each root ``size``,
``fixed``, ``strides`` (block sizes), ``children`` (``[(start, stop, child)]`` once partitioned) and ``origin``
(the fx node that created the space, for messages); ``ties`` lists tied pairs, ``block_aliases`` the
``(a, b, stride)`` of ``alias_block``, ``misaligned`` the children that straddle a block boundary of their parent
(filled by ``propagate``).
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple


class SpaceError(Exception):
    """A structural constraint the tracer cannot express; the message says which."""


class Spaces:
    """The union-find store; space ids are ints, roots carry size/fixed/strides/children."""

    def __init__(self):
        self.parent: List[int] = []
        self.size: List[int] = []
        self.fixed: List[bool] = []
        self.strides: List[Set[int]] = []
        self.children: List[Optional[List[Tuple[int, int, int]]]] = []
        self.origin: List[str] = []
        self.ties: List[Tuple[int, int]] = []
        self.block_aliases: List[Tuple[int, int, int]] = []
        self.misaligned: Set[Tuple[int, int]] = set()

    def new(self, size: int, origin: str) -> int:
        """A fresh space of ``size`` channels; ``origin`` names the fx node that created it (for messages)."""
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(False)
        self.strides.append(set())
        self.children.append(None)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        """The root of ``a`` (with path halving)."""
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def fix(self, a: int) -> None:
        """Mark ``a``'s root as not permutable."""
        self.fixed[self.find(a)] = True

    def add_stride(self, a: int, stride: int) -> None:
        """Record that ``a`` is split into blocks of ``stride`` channels."""
        r = self.find(a)
        if 1 < stride < self.size[r]:
            self.strides[r].add(int(stride))

    def tie(self, a: int, b: int) -> None:
        """The block digits of ``a`` and ``b`` must be permuted together."""
        self.ties.append((a, b))

    def alias_block(self, a: int, b: int, stride: int) -> None:
        """Space ``a`` (whole) indexes the blocks of ``stride`` channels of ``b``: a tensor axis holding ``a`` has one
        entry per block of ``b`` (a relative-position-bias table's heads); resolution reads it as ``b`` repeated."""
        self.add_stride(b, stride)
        self.block_aliases.append((a, b, int(stride)))

    def union(self, a: int, b: int) -> None:
        """Make ``a`` and ``b`` one space (equal sizes required); partitions are aligned and unioned pairwise."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise SpaceError(f"channel spaces of sizes {self.size[ra]} and {self.size[rb]} cannot be identified")
        ca, cb = self.children[ra], self.children[rb]
        pairs = []
        if ca is not None or cb is not None:
            cuts = _cuts(ca) | _cuts(cb)
            self.partition(ra, cuts)
            self.partition(rb, cuts)
            ca, cb = self.children[ra], self.children[rb]
            pairs = [(x[2], y[2]) for x, y in zip(ca, cb)]
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.strides[ra] |= self.strides[rb]
        for x, y in pairs:
            self.union(x, y)

    def partition(self, a: int, cuts) -> List[Tuple[int, int, int]]:
        """Split ``a``'s root at ``cuts`` (channel offsets) into child spaces; returns ``[(start, stop, child)]``."""
        r = self.find(a)
        n = self.size[r]
        cuts = sorted({int(c) for c in cuts if 0 < c < n})
        if self.children[r] is None:
            if not cuts:
                return [(0, n, r)]
            bounds = [0] + cuts + [n]
            self.children[r] = [(lo, hi, self.new(hi - lo, self.origin[r])) for lo, hi in zip(bounds[:-1], bounds[1:])]
            return self.children[r]
        refined = []
        for lo, hi, child in self.children[r]:
            inner = [c - lo for c in cuts if lo < c < hi]
            if inner:
                for clo, chi, grandchild in self.partition(child, inner):
                    refined.append((lo + clo, lo + chi, grandchild))
            else:
                refined.append((lo, hi, child))
        self.children[r] = refined
        return refined

    def child_covering(self, a: int, lo: int, hi: int) -> int:
        """The child space that is exactly channels ``[lo, hi)`` of ``a`` (partitioning as needed)."""
        r = self.find(a)
        if lo == 0 and hi == self.size[r]:
            return r
        self.partition(r, [lo, hi])
        for clo, chi, child in self._leaf_intervals(r):
            if clo == lo and chi == hi:
                return child
        raise SpaceError(f"channels [{lo}, {hi}) of a space of size {self.size[r]} span several fused parts")

    def _leaf_intervals(self, a: int, base: int = 0):
        """Top-level children intervals of ``a`` (not descending), offsets relative to ``a``."""
        r = self.find(a)
        if self.children[r] is None:
            return [(base, base + self.size[r], r)]
        return [(base + lo, base + hi, c) for lo, hi, c in self.children[r]]

    def leaves(self, a: int, base: int = 0) -> List[Tuple[int, int, int]]:
        """``[(start, stop, leaf root)]``: ``a`` resolved through all partitions, offsets relative to ``a``."""
        r = self.find(a)
        if self.children[r] is None:
            return [(base, base + self.size[r], r)]
        out = []
        for lo, hi, c in self.children[r]:
            out += self.leaves(c, base + lo)
        return out

    def propagate(self) -> None:
        """Push ``fixed`` and block strides from partitioned spaces down to their children (to a fixpoint)."""
        self.misaligned: Set[Tuple[int, int]] = set()
        changed = True
        while changed:
            changed = False
            for r in range(len(self.parent)):
                if self.find(r) != r or self.children[r] is None:
                    continue
                for lo, hi, c in self.children[r]:
                    rc = self.find(c)
                    if self.fixed[r] and not self.fixed[rc]:
                        self.fixed[rc] = True
                        changed = True
                    for st in self.strides[r]:
                        aligned = lo % st == 0 and hi % st == 0
                        if aligned and st < hi - lo and st not in self.strides[rc]:
                            self.strides[rc].add(st)
                            changed = True
                        elif not aligned and lo // st != (hi - 1) // st and not self.fixed[rc]:
                            # the child straddles a block boundary (GroupNorm groups across a concat)
                            self.misaligned.add((rc, st))


def _cuts(children) -> Set[int]:
    if children is None:
        return set()
    return {lo for lo, _, _ in children[1:]}

