"""The factor algebra: how the tracer describes a tensor axis in channel spaces, and how two axes are identified.

Data model. A :class:`Factor` ``(space, size, stride)`` is one mixed-radix digit of an axis index. Its values
``0 … size-1`` step through channel space ``space`` (an id of :class:`~mudsc.spec.spaces.Spaces`) by ``stride``
channels; ``space is None`` marks positions that are not permutable (batch, spatial, tokens, anything touching
the model's inputs/outputs). A *dim* (:data:`Dim`) is the row-major tuple of the factors of one axis (the first
factor is the most significant digit; the axis length is the product of the sizes). ``(s, n, 1)`` with
``n == size(s)`` is the whole space; ``(s, a, st)`` with ``a·st == size(s)``, ``st > 1`` is its *block digit*
(e.g. the head index) and ``(s, st, 1)`` its *within-block digit*. A :data:`TensorInfo` is one dim per axis.

Operations (each records its constraints in the ``Spaces`` store passed first):

- :func:`normalize`: drop size-1 factors, merge neighbouring non-permutable factors and neighbouring digits of
  one space;
- :func:`split_factor`, :func:`refine`: regroup a factor list into axes of given lengths (a reshape), splitting a
  digit where an axis boundary falls inside it (which records a block stride);
- :func:`union_factors`, :func:`union_dims`: identify two axes (an elementwise op, a contraction, a shared
  parameter), refining both to a common factorization first;
- :func:`broadcast`: identify the right-aligned axes of several operands of a broadcasting op;
- :func:`pieces`: resolve one axis into the leaf spaces it holds, with the member layout
  ``offset + o·span + c·inner + i`` of :class:`~mudsc.spec.data.Member`.

A construct the algebra cannot express raises :class:`Unsupported` (while tracing) or :class:`ResolveProblem`
(while resolving, naming the spaces to fix).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from .spaces import Spaces


class Factor(NamedTuple):
    """One digit of an axis index: ``size`` values stepping through channel space ``space`` by ``stride``."""

    space: Optional[int]
    size: int
    stride: int = 1


Dim = Tuple[Factor, ...]
TensorInfo = Tuple[Dim, ...]


class Unsupported(Exception):
    """An op or layout the tracer cannot prove permutation-invariant (the message says which)."""


class UnsupportedPart(Unsupported):
    """One unsupported step of an op whose other constraints were recorded: with ``strict=False`` the tracer fixes
    only the spaces of ``touched`` (nested infos) and keeps ``result`` as the op's info."""

    def __init__(self, message: str, touched, result):
        """``message`` as for :class:`Unsupported`; ``touched``: the infos the step met; ``result``: the op's info."""
        super().__init__(message)
        self.touched = touched
        self.result = result


class ResolveProblem(Exception):
    """A traced axis that has no member layout; ``spaces`` are the channel spaces to leave unpermuted."""

    def __init__(self, message: str, spaces: Sequence[int]):
        super().__init__(message)
        self.spaces = spaces


class Piece(NamedTuple):
    """The channels ``[start, stop)`` of a space of ``total`` channels, held by one axis as leaf space ``leaf``.

    Along the axis the piece occupies ``offset + o·span + c·inner + i`` (``o < outer``, ``c < size``,
    ``i < inner``), the layout of :class:`~mudsc.spec.data.Member`.
    """

    leaf: int
    offset: int
    outer: int
    span: int
    inner: int
    size: int
    start: int
    stop: int
    total: int


def dim_size(dim: Dim) -> int:
    """The axis length a dim describes."""
    n = 1
    for f in dim:
        n *= f.size
    return n


def none_dim(size: int) -> Dim:
    """A non-permutable axis of ``size`` (empty for size 1)."""
    return (Factor(None, int(size), 1),) if size > 1 else ()


def space_dim(space: int, size: int) -> Dim:
    """An axis holding the whole ``size``-channel ``space`` (empty for size 1)."""
    return (Factor(space, size, 1),) if size > 1 else ()


def is_permutable(dim: Dim) -> bool:
    """Whether any digit of the axis is a channel space."""
    return any(f.space is not None for f in dim)


def looks_like_factor(value: Any) -> bool:
    """Whether ``value`` has a factor's shape: a 3-tuple ``(int or None, int, int)`` (plain tuples count too)."""
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], int) and \
        isinstance(value[2], int) and (value[0] is None or isinstance(value[0], int))


def prefix_products(sizes: Iterable[int]) -> List[int]:
    """``[s0, s0·s1, s0·s1·s2, …]``: the digit boundaries of a row-major factor list."""
    out, p = [], 1
    for s in sizes:
        p *= s
        out.append(p)
    return out


def running_sums(sizes: Iterable[int]) -> Iterator[int]:
    """``s0, s0+s1, …``: the end offsets of concatenated parts."""
    total = 0
    for s in sizes:
        total += s
        yield total


def normalize(sp: Spaces, dim: Sequence[Factor]) -> Dim:
    """Drop size-1 factors; merge neighbours that are both non-permutable or consecutive digits of one space."""
    out: List[Factor] = []
    for f in dim:
        space, size, stride = f
        if size == 1:
            continue
        if out:
            prev = out[-1]
            if prev.space is None and space is None:
                out[-1] = Factor(None, prev.size * size, 1)
                continue
            if prev.space is not None and space is not None and sp.find(prev.space) == sp.find(space) and \
                    prev.stride == stride * size:
                out[-1] = Factor(prev.space, prev.size * size, stride)
                continue
        out.append(Factor(space, size, stride))
    return tuple(out)


def split_factor(sp: Spaces, f: Factor, high: int) -> Tuple[Factor, Factor]:
    """Split factor ``f`` into digits of sizes ``(high, f.size // high)`` (the space gets a block stride)."""
    space, size, stride = f
    low = size // high
    if space is not None:
        sp.add_stride(space, stride * low)
    return Factor(space, high, stride * low), Factor(space, low, stride)


def refine(sp: Spaces, factors: Sequence[Factor], sizes: Sequence[int]) -> List[Dim]:
    """Regroup a row-major factor list into consecutive dims of the given sizes, splitting factors."""
    queue = [f for f in factors if f.size > 1]
    out = []
    for s in sizes:
        need, dim = int(s), []
        while need > 1:
            if not queue:
                raise Unsupported(f"a reshape to sizes {list(sizes)} does not match the input's layout")
            f = queue.pop(0)
            if need % f.size == 0:
                dim.append(f)
                need //= f.size
            elif f.size % need == 0:
                hi, lo = split_factor(sp, f, need)
                dim.append(hi)
                queue.insert(0, lo)
                need = 1
            else:
                raise Unsupported(f"a reshape to sizes {list(sizes)} splits an axis of size {f.size} unevenly")
        out.append(normalize(sp, dim))
    if queue:
        raise Unsupported(f"a reshape to sizes {list(sizes)} leaves channels unaccounted for")
    return out


def union_factors(sp: Spaces, f: Factor, g: Factor) -> None:
    """Identify two digits of equal size: whole spaces are unioned, block digits tied, within-block digits unioned,
    a whole space and a block digit aliased (``Spaces.alias_block``)."""
    (a, n, sa), (b, m, sb) = f, g
    if n != m:
        raise Unsupported(f"axes of sizes {n} and {m} are identified")
    if a is None and b is None:
        return
    if a is None or b is None:
        sp.fix(a if a is not None else b)
        return
    ra, rb = sp.find(a), sp.find(b)
    na, nb = sp.size[ra], sp.size[rb]
    if sa == 1 and n == na and sb == 1 and m == nb:
        sp.union(a, b)
    elif ra == rb and sa == sb:
        return
    elif sa == 1 and n == na and sb > 1 and sb * m == nb:
        sp.alias_block(a, b, sb)  # a whole space of one entry per block of b (a per-head table)
    elif sb == 1 and m == nb and sa > 1 and sa * n == na:
        sp.alias_block(b, a, sa)
    elif sa > 1 and sb > 1 and sa * n == na and sb * m == nb and sa == sb:
        sp.add_stride(a, sa)
        sp.add_stride(b, sb)
        sp.tie(a, b)
    elif sa == 1 and sb == 1 and n < na and n < nb and na == nb:
        # within-block digits identified (a contraction over head_dim); heads are tied by the batch axes
        sp.add_stride(a, n)
        sp.add_stride(b, n)
        sp.union(a, b)
    else:
        raise Unsupported(
            f"a block digit (size {n}, stride {sa}, of a {na}-channel space) is identified with another "
            f"(size {m}, stride {sb}, of a {nb}-channel space); mixed block structures are not supported"
        )


def union_dims(sp: Spaces, d1: Dim, d2: Dim) -> Dim:
    """Identify two axes of equal length; returns the (refined) first dim."""
    if dim_size(d1) != dim_size(d2):
        raise Unsupported(f"axes of lengths {dim_size(d1)} and {dim_size(d2)} are identified")
    s1, s2 = [f.size for f in d1], [f.size for f in d2]
    if s1 != s2:
        bounds = sorted(set(prefix_products(s1)) | set(prefix_products(s2)))
        sizes = [b // a for a, b in zip([1] + bounds[:-1], bounds)]
        if any(b % a for a, b in zip([1] + bounds[:-1], bounds)):
            raise Unsupported(f"axis factorizations {s1} and {s2} have no common refinement")
        d1 = tuple(f for d in refine(sp, d1, sizes) for f in d)
        d2 = tuple(f for d in refine(sp, d2, sizes) for f in d)
    for f, g in zip(d1, d2):
        union_factors(sp, f, g)
    return d1


def broadcast(sp: Spaces, infos_values, out_shape) -> TensorInfo:
    """Identify broadcast axes of several ``(info, tensor)`` operands (right-aligned); returns the result's dims."""
    out = []
    ndim = len(out_shape)
    for j in range(ndim):
        size = out_shape[j]
        chosen = None
        for info, value in infos_values:
            k = j - (ndim - value.dim())
            if k < 0 or value.shape[k] == 1:
                continue
            if value.shape[k] != size:
                raise Unsupported(f"operand shape {tuple(value.shape)} does not broadcast to {tuple(out_shape)}")
            chosen = info[k] if chosen is None else union_dims(sp, chosen, info[k])
        out.append(chosen if chosen is not None else none_dim(size))
    return tuple(out)


def pieces(sp: Spaces, dim: Dim) -> List[Piece]:
    """The permutable channels of one axis: one :class:`Piece` per non-fixed leaf (of more than one channel)."""
    dim = normalize(sp, dim)
    real = [(j, f) for j, f in enumerate(dim) if f.space is not None]
    if not real:
        return []
    if len(real) > 1:
        raise ResolveProblem("holds channels of several spaces in one axis (a product of permutable factors)",
                             [f.space for _, f in real])
    j, (space, n, stride) = real[0]
    root = sp.find(space)
    if stride != 1 or n != sp.size[root]:
        raise ResolveProblem("holds only the block (head) digit or the within-block digit of a space", [space])
    outer = math.prod(f.size for f in dim[:j])
    inner = math.prod(f.size for f in dim[j + 1:])
    out = []
    for lo, hi, leaf in sp.leaves(root):
        if sp.fixed[sp.find(leaf)] or hi - lo <= 1:
            continue
        out.append(Piece(sp.find(leaf), lo * inner, outer, n * inner, inner, hi - lo, lo, hi, n))
    return out
