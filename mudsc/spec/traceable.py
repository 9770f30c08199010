""":class:`SpecTracer`: torch.fx's tracer with the ``torch.nn`` transformer modules opened up.

torch.fx keeps every ``torch.nn`` module as a leaf, and the tracer has no rule for ``nn.TransformerEncoder`` & co.
Their own ``forward`` cannot be traced symbolically either: ``TransformerEncoderLayer.forward`` first decides
whether to take its fused "fast path" with Python control flow on the input (``if src.dim() != 3``), the
containers read ``src.is_nested`` to find the sequence length and compare a given mask with a causal one, and
``nn.Transformer`` checks shapes with ``if``. That is control flow on symbolic values, which torch.fx refuses, in
eval mode and under ``no_grad`` alike (the fast-path test reaches ``src.dim()`` before it looks at the training
flag or at grad mode).

So :class:`SpecTracer` traces these modules through a forward of its own that computes their documented math
with their submodules (Linear, LayerNorm, Dropout, ``nn.MultiheadAttention``, the activation), and those
submodules are what the graph records:

- ``TransformerEncoderLayer``: ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``, or with ``norm_first``
  ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, where ``sa`` and ``ff`` are the layer's own ``_sa_block`` and
  ``_ff_block`` (self-attention then dropout; ``linear2(dropout(activation(linear1(x))))`` then dropout);
- ``TransformerDecoderLayer``: the same with a cross-attention block (``_mha_block``, queries from the target,
  keys and values from the memory) between them and ``norm3`` for the last;
- ``TransformerEncoder`` / ``TransformerDecoder``: the layers in turn, then ``norm`` if any;
- ``Transformer``: the encoder on the source, the decoder on the target and the encoder's output.

The masks are handed to ``nn.MultiheadAttention`` unchanged (it converts boolean masks itself, as the layers
would); ``is_causal`` is passed on as given (``None`` as ``False``): it is only a hint that the mask given is
the causal one, so the attention computed is the same. The fused fast path and the nested-tensor conversion are
inference optimisations of the same function and are not traced. The model itself is not modified: its forward
keeps running torch's code.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional

import torch.fx as fx
import torch.nn as nn

__all__ = ["SpecTracer", "traceable_forward"]


def _encoder_layer(layer: nn.TransformerEncoderLayer, src, src_mask=None, src_key_padding_mask=None,
                   is_causal=False):
    """``nn.TransformerEncoderLayer``'s math (post-norm, or pre-norm with ``norm_first``) without the fast path."""
    causal = bool(is_causal)
    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal=causal)
        return x + layer._ff_block(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal=causal))
    return layer.norm2(x + layer._ff_block(x))


def _decoder_layer(layer: nn.TransformerDecoderLayer, tgt, memory, tgt_mask=None, memory_mask=None,
                   tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=False,
                   memory_is_causal=False):
    """``nn.TransformerDecoderLayer``'s math: self-attention, cross-attention on ``memory``, feed-forward."""
    self_causal, memory_causal = bool(tgt_is_causal), bool(memory_is_causal)
    x = tgt
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), tgt_mask, tgt_key_padding_mask, self_causal)
        x = x + layer._mha_block(layer.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_causal)
        return x + layer._ff_block(layer.norm3(x))
    x = layer.norm1(x + layer._sa_block(x, tgt_mask, tgt_key_padding_mask, self_causal))
    x = layer.norm2(x + layer._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_causal))
    return layer.norm3(x + layer._ff_block(x))


def _encoder(encoder: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None, is_causal=None):
    """``nn.TransformerEncoder``: its layers in turn, then its final norm (if any)."""
    output = src
    for layer in encoder.layers:
        output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
    return output if encoder.norm is None else encoder.norm(output)


def _decoder(decoder: nn.TransformerDecoder, tgt, memory, tgt_mask=None, memory_mask=None,
             tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
    """``nn.TransformerDecoder``: its layers in turn on the target and the memory, then its final norm (if any)."""
    output = tgt
    for layer in decoder.layers:
        output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                       tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                       tgt_is_causal=bool(tgt_is_causal), memory_is_causal=bool(memory_is_causal))
    return output if decoder.norm is None else decoder.norm(output)


def _transformer(model: nn.Transformer, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                 src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                 src_is_causal=None, tgt_is_causal=None, memory_is_causal=False):
    """``nn.Transformer``: the encoder on ``src``, the decoder on ``tgt`` and the encoder's output."""
    memory = model.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return model.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


TRACEABLE_FORWARDS: Dict[type, Callable[..., Any]] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerDecoderLayer: _decoder_layer,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}


def traceable_forward(module: nn.Module) -> Optional[Callable[..., Any]]:
    """The forward :class:`SpecTracer` traces ``module`` with (``module`` bound), or None to use its own.

    Only the exact ``torch.nn`` classes are replaced: a subclass may have changed ``forward``, and is then traced
    (or kept as a leaf) like any other module."""
    forward = TRACEABLE_FORWARDS.get(type(module))
    return None if forward is None else functools.partial(forward, module)


class SpecTracer(fx.Tracer):
    """``torch.fx.Tracer`` that traces into the ``torch.nn`` transformer modules (see the module docstring);
    every other module is a leaf or not exactly as with ``fx.Tracer``. Subclass it to add leaf modules of your own
    and pass an instance as ``tracer=`` to :func:`mudsc.trace`."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """False for the transformer modules with a traceable forward, else ``fx.Tracer``'s rule."""
        if type(m) in TRACEABLE_FORWARDS:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args, kwargs):
        """Trace a transformer module through its traceable forward, any other module as ``fx.Tracer`` does."""
        replacement = traceable_forward(m)
        if replacement is not None and not self.is_leaf_module(m, self.path_of_module(m)):
            forward = replacement
        return super().call_module(m, forward, args, kwargs)
