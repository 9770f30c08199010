"""The merge methods and their hyperparameters: what each method needs (activation statistics, a coordinate
descent, which solver) and the checks of the arguments every method takes."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Dict, Optional

from ..matching import check_zip_parameters

__all__ = ["AXIS_RULES", "METHODS", "MethodInfo", "check_hyperparameters", "check_method"]


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs and does: activation statistics, coordinate descent, solver ("lap"/"zip"/None)."""

    name: str
    activations: bool
    descent: bool
    solver: Optional[str]
    description: str


METHODS: Dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("avg", False, False, None, "weight averaging"),
        MethodInfo("rebasin", False, True, "lap", "weight matching (LAP on weight correlation), from identity"),
        MethodInfo("act-align", True, False, "lap", "activation alignment (LAP on activation correlation)"),
        MethodInfo("zipit", True, False, "zip", "ZipIt! zip on activation correlation"),
        MethodInfo("wzip", False, True, "zip", "weight-space zip, from identity"),
        MethodInfo("mudsc-align", True, True, "lap", "MuDSC alignment: act-align start, dual-space LAP descent"),
        MethodInfo("mudsc-zip", True, True, "zip", "MuDSC zip: zipit start, dual-space zip descent"),
    )
}

AXIS_RULES = ("merge", "original")


def check_method(method: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``method``; ValueError listing the methods otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


def check_hyperparameters(balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule,
                          zip_decay: str = "same-model") -> None:
    """ValueError naming the first argument out of its range."""
    if not isinstance(balance, numbers.Real) or not 0.0 <= float(balance) <= 1.0:
        raise ValueError(f"balance (the weight of the weight-space term) must be in [0, 1], got {balance!r}")
    check_zip_parameters(reduce, alpha, beta, zip_decay)
    for name, value, low in (("max_sweeps", max_sweeps, 1), ("patience", patience, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if axis_rule not in AXIS_RULES:
        raise ValueError(f"axis_rule must be one of {AXIS_RULES}, got {axis_rule!r}")
