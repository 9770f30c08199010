"""The factor algebra of the tracer (mudsc.spec.factors): normalizing, refining and identifying axes described in
channel spaces, and resolving an axis into member layouts."""

from __future__ import annotations

import pytest

from mudsc.spec.factors import (Factor, ResolveProblem, Unsupported, dim_size, none_dim, normalize, pieces,
                                prefix_products, refine, running_sums, space_dim, union_dims)
from mudsc.spec.spaces import Spaces


def test_factor_is_a_named_tuple_equal_to_the_plain_triple():
    f = Factor(3, 4, 2)
    assert (f.space, f.size, f.stride) == (3, 4, 2) and f == (3, 4, 2) and Factor(None, 5).stride == 1


def test_dim_helpers():
    sp = Spaces()
    a = sp.new(6, "a")
    assert none_dim(1) == () and none_dim(5) == (Factor(None, 5, 1),)
    assert space_dim(a, 1) == () and space_dim(a, 6) == (Factor(a, 6, 1),)
    assert dim_size((Factor(a, 2, 3), Factor(None, 5))) == 10 and dim_size(()) == 1
    assert prefix_products([2, 3, 4]) == [2, 6, 24] and list(running_sums([2, 3, 4])) == [2, 5, 9]


def test_normalize_merges_neighbouring_digits_and_drops_size_one():
    sp = Spaces()
    a, b = sp.new(12, "a"), sp.new(12, "b")
    assert normalize(sp, (Factor(a, 3, 4), Factor(None, 1), Factor(a, 4, 1))) == (Factor(a, 12, 1),)
    assert normalize(sp, (Factor(None, 2), Factor(None, 3))) == (Factor(None, 6, 1),)
    # digits of different spaces, or not consecutive, stay apart
    assert len(normalize(sp, (Factor(a, 3, 4), Factor(b, 4, 1)))) == 2
    assert len(normalize(sp, (Factor(a, 4, 1), Factor(a, 3, 4)))) == 2


def test_refine_splits_a_space_into_block_digits():
    sp = Spaces()
    a = sp.new(12, "a")
    out = refine(sp, (Factor(None, 2), Factor(a, 12, 1)), [2, 3, 4])
    assert out == [(Factor(None, 2, 1),), (Factor(a, 3, 4),), (Factor(a, 4, 1),)]
    assert sp.strides[a] == {4}
    # and joins them back
    assert refine(sp, [f for d in out for f in d], [2, 12]) == [(Factor(None, 2, 1),), (Factor(a, 12, 1),)]


def test_refine_rejects_layouts_it_cannot_regroup():
    sp = Spaces()
    a = sp.new(6, "a")
    with pytest.raises(Unsupported, match="unevenly"):
        refine(sp, (Factor(a, 6, 1),), [4, 1])
    with pytest.raises(Unsupported, match="unaccounted"):
        refine(sp, (Factor(a, 6, 1),), [1])


def test_union_dims_of_whole_spaces_and_of_a_fixed_axis():
    sp = Spaces()
    a, b, c = sp.new(4, "a"), sp.new(4, "b"), sp.new(4, "c")
    union_dims(sp, space_dim(a, 4), space_dim(b, 4))
    assert sp.find(a) == sp.find(b)
    union_dims(sp, space_dim(c, 4), none_dim(4))
    assert sp.fixed[sp.find(c)] and not sp.fixed[sp.find(a)]
    with pytest.raises(Unsupported, match="lengths 4 and 5"):
        union_dims(sp, space_dim(a, 4), none_dim(5))


def test_union_dims_refines_to_a_common_factorization():
    """A whole space against another split into heads: the first is split too, block digits are tied and
    within-block digits unioned."""
    sp = Spaces()
    a, b = sp.new(6, "a"), sp.new(6, "b")
    d = union_dims(sp, space_dim(a, 6), (Factor(b, 2, 3), Factor(b, 3, 1)))
    assert d == (Factor(a, 2, 3), Factor(a, 3, 1))
    assert sp.find(a) == sp.find(b) and (a, b) in sp.ties and 3 in sp.strides[sp.find(a)]


def test_pieces_give_member_layouts():
    sp = Spaces()
    a = sp.new(8, "a")
    assert [(p.offset, p.outer, p.inner, p.size) for p in pieces(sp, space_dim(a, 8))] == [(0, 1, 1, 8)]
    # a flattened [C, H·W] axis: channel c occupies c·16 + i
    flat = pieces(sp, (Factor(a, 8, 1), Factor(None, 16)))
    assert [(p.offset, p.outer, p.span, p.inner) for p in flat] == [(0, 1, 128, 16)]
    # a partitioned space (a fused axis) resolves into one piece per part
    sp.partition(a, [3])
    assert [(p.start, p.stop, p.offset, p.size) for p in pieces(sp, space_dim(a, 8))] == [(0, 3, 0, 3), (3, 8, 3, 5)]
    assert pieces(sp, none_dim(8)) == []


def test_pieces_reject_products_of_spaces_and_lone_head_digits():
    sp = Spaces()
    a, b = sp.new(4, "a"), sp.new(3, "b")
    with pytest.raises(ResolveProblem, match="several spaces") as err:
        pieces(sp, (Factor(a, 4, 1), Factor(b, 3, 1)))
    assert sorted(err.value.spaces) == [a, b]
    with pytest.raises(ResolveProblem, match="block"):
        pieces(sp, (Factor(a, 2, 2),))
