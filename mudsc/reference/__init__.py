"""Pure numpy/scipy/torch twins of every native function: the same module names and function names.

======================  ==========================================
native                  reference twin
======================  ==========================================
:mod:`mudsc.lap`        :mod:`mudsc.reference.lap` (scipy)
:mod:`mudsc.matching`   :mod:`mudsc.reference.matching` (the original's zip loop, scipy LAPs)
:mod:`mudsc.stats`      :mod:`mudsc.reference.stats` (the original's per-batch float32 moments)
:mod:`mudsc.similarity` :mod:`mudsc.reference.similarity` (dense ``P_iᵀ W`` products, float32)
======================  ==========================================

They are the oracle of the tests and the "pure-Python matching" that every benchmark times next to the
native backend. Select them with ``backend="reference"`` (or ``MUDSC_BACKEND=reference`` for every stage).
"""

from .lap import batch_linear_sum_assignment, linear_sum_assignment, solve_assignment

__all__ = ["linear_sum_assignment", "batch_linear_sum_assignment", "solve_assignment"]
