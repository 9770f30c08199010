"""Handlers of contractions and attention: ``matmul``/``bmm``/``@``, ``F.scaled_dot_product_attention`` and
``nn.MultiheadAttention``.

A contraction identifies the contracted axes (``q @ kᵀ`` makes q's and k's head-dim spaces one); the batch axes
broadcast like an elementwise op, which ties the head digits of the operands. ``nn.MultiheadAttention`` is a leaf
module, so its fused ``in_proj_weight`` rows are partitioned into q/k/v by hand, q and k unioned, the heads of
q/k and v tied, and q/k/v taps built that apply the projection rows to the module's input (``Tap.linear``).
"""

from __future__ import annotations

from ..data import Tap
from ..factors import Factor, TensorInfo, Unsupported, broadcast, union_dims
from ..state import Call, SpecialTap, TraceState, is_tensor


def matmul(s: TraceState, c: Call) -> TensorInfo:
    """``a @ b`` (``matmul``, ``bmm``): a's last axis is b's second-to-last; batch axes broadcast."""
    a, b = c.args[0], c.args[1]
    ia, ib = c.iargs[0], c.iargs[1]
    if a.dim() < 2 or b.dim() < 2:
        raise Unsupported("matmul with a 1-D operand")
    union_dims(s.sp, ia[-1], ib[-2])
    s.set_role(c.node.args[1], -2, "input")
    s.set_role(c.node.args[1], -1, "output")
    s.set_role(c.node.args[0], -1, "input")
    # b first: the result's channels come from b (attn @ v must keep v's head digit)
    batch = broadcast(s.sp, [(ib[:-2], b[..., 0, 0]), (ia[:-2], a[..., 0, 0])], c.result.shape[:-2])
    return batch + (ia[-2], ib[-1])


def scaled_dot_product_attention(s: TraceState, c: Call) -> TensorInfo:
    """``F.scaled_dot_product_attention(q, k, v)``: q·k contract over head dim, attention over k/v tokens."""
    q, k, v = c.args[0], c.args[1], c.args[2]
    iq, ik, iv = c.iargs[0], c.iargs[1], c.iargs[2]
    union_dims(s.sp, iq[-1], ik[-1])
    union_dims(s.sp, ik[-2], iv[-2])
    # v first: the result's head digit must be v's (tied to q's through this broadcast)
    pairs = [(iv[:-2], v[..., 0, 0]), (iq[:-2], q[..., 0, 0]), (ik[:-2], k[..., 0, 0])]
    mask = c.arg(3, "attn_mask")
    if is_tensor(mask):
        imask = c.info(3, "attn_mask")
        pairs.append((imask[:-2], mask[..., 0, 0]))
    batch = broadcast(s.sp, pairs, c.result.shape[:-2])
    return batch + (iq[-2], iv[-1])


def _check_multihead_attention(m) -> None:
    """Raise unless ``m`` uses one fused q/k/v projection without ``bias_k``/``add_zero_attn``."""
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise Unsupported("MultiheadAttention with separate q/k/v projections, bias_k or add_zero_attn")


def _attention_taps(s: TraceState, c: Call, spaces) -> None:
    """Taps of the q, k and v spaces: the module's input through the matching rows of ``in_proj``."""
    m, p, e = c.module, c.prefix, c.module.embed_dim
    for space, lo in zip(spaces, (0, e, 2 * e)):
        linear = {"weight": p + "in_proj_weight", "bias": p + "in_proj_bias" if m.in_proj_bias is not None
                  else None, "rows": (lo, lo + e)}
        s.special_taps.append(SpecialTap(space, Tap(module=c.node.target, kind="input", channel_dim=-1,
                                                    linear=linear)))


def multihead_attention(s: TraceState, c: Call):
    """``nn.MultiheadAttention``: fused q/k/v rows partitioned, q∪k, heads of q/k tied to v/o's."""
    m, p = c.module, c.prefix
    _check_multihead_attention(m)
    iq, ik, iv = (c.info(i, key) for i, key in enumerate(("query", "key", "value")))
    e, h = m.embed_dim, m.num_heads
    s.bind(p + "in_proj_weight", 1, iq[-1], "input")
    union_dims(s.sp, iq[-1], ik[-1])
    union_dims(s.sp, iq[-1], iv[-1])
    rows = s.fresh(p + "in_proj_weight", 0, "output")
    children = s.sp.partition(rows[0].space, [e, 2 * e])
    (_, _, cq), (_, _, ck), (_, _, cv) = children
    s.sp.union(cq, ck)
    if h > 1:
        s.sp.add_stride(cq, e // h)
        s.sp.add_stride(cv, e // h)
        s.sp.tie(cq, cv)
    if m.in_proj_bias is not None:
        s.bind(p + "in_proj_bias", 0, rows, "output")
    s.bind(p + "out_proj.weight", 1, (Factor(cv, e, 1),), "input")
    out = s.fresh(p + "out_proj.weight", 0, "output")
    if m.out_proj.bias is not None:
        s.bind(p + "out_proj.bias", 0, out, "output")
    _attention_taps(s, c, (cq, ck, cv))
    attn_out = iq[:-1] + (out,)
    if isinstance(c.result, tuple):
        return (attn_out, s.none_info(c.result[1]))
    return attn_out
