"""Per-op handlers of the tracer: how each op relates the channel spaces of its inputs and its result.

A handler is ``handler(state, call) -> tensor info``: it reads one fx node's real arguments and result and their
tensor infos (:class:`~mudsc.spec.state.Call`), records identities, block strides, ties, partitions and parameter
bindings in the :class:`~mudsc.spec.state.TraceState`, and returns the result's info (see ``factors.py``); it
raises :class:`~mudsc.spec.factors.Unsupported` for what it cannot prove permutation-invariant.

Layout: ``shape.py`` (elementwise, reshapes, transposes, pools, reductions, cat/stack, splits, indexing, pad,
roll), ``layers.py`` (Linear, convolutions, norms, Embedding, PReLU, parameter-free leaf modules), ``attention.py``
(matmul, scaled-dot-product and multi-head attention), ``swin.py`` (torchvision's wrapped Swin functions),
``dispatch.py`` (the registries keyed by function, method name and module type, and :func:`handle_node`).
"""

from .dispatch import (FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS, NAMED_FUNCTION_HANDLERS, handle_node,
                       module_handler)

__all__ = ["FUNCTION_HANDLERS", "METHOD_HANDLERS", "MODULE_HANDLERS", "NAMED_FUNCTION_HANDLERS", "handle_node",
           "module_handler"]
