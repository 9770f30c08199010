"""Pure numpy/scipy/torch twins of every native function, with the same signatures.

They are the oracle of the tests and the "pure-Python matching" that every benchmark times next to the
native backend. Select them with ``backend="reference"``.
"""

from .lap import batch_linear_sum_assignment, linear_sum_assignment, solve_assignment

__all__ = ["linear_sum_assignment", "batch_linear_sum_assignment", "solve_assignment"]
