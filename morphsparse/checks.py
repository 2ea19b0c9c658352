"""Argument checks shared by every public function: each returns the value it accepts or raises an error that
names the argument and says what to give. (The one place they live, so that the same argument is refused the
same way everywhere.)"""

from __future__ import annotations

import math
import numbers

import numpy as np


def flag(value, name: str):
    """``value`` as a bool, or a TypeError naming ``name``: only True/False (numpy's too) are accepted, since a
    string such as "no" or "False" is truthy and would silently turn the option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}; pass a bool (a "
                        "string such as 'no' or 'False' would count as True)")
    return bool(value)


def fraction(value, name: str, low: float = 0.0, high: float = 1.0, low_open: bool = False):
    """``value`` as a float in [low, high] ((low, high] with ``low_open``), or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")
    return value


def check_budget(budget, value_error=ValueError, type_error=TypeError):
    """``budget`` as a float > 0: ``type_error`` for anything but a real number (``True`` is not a budget of
    one), ``value_error`` for zero, negative or non-finite values; both name ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise type_error(f"budget must be a number (a fraction in (0, 1] of a cost, or an absolute FLOP or "
                         f"parameter count > 1), got {budget!r} of type {type(budget).__name__}")
    value = float(budget)
    if not math.isfinite(value) or value <= 0:
        raise value_error(f"budget must be a positive finite number (a fraction in (0, 1] of a cost, or an "
                          f"absolute count > 1), got {budget!r}")
    return value


def absolute_budget_hint(budget, unit):
    """A reminder for an absolute budget that reads like a percentage (1 < budget <= 100), else ''."""
    if 1 < budget <= 100:
        return (f" (budget={budget!r} > 1 is read as an absolute count of {unit}; for {budget:g}% of the model's "
                f"cost write budget={budget / 100:g})")
    return ""


def check_cost_power(cost_power):
    """``cost_power`` as a float in [0, 2], or an error naming it."""
    if isinstance(cost_power, bool) or not isinstance(cost_power, (int, float, np.integer, np.floating)):
        raise TypeError(f"cost_power must be a number, got {type(cost_power).__name__} {cost_power!r}")
    if not 0.0 <= float(cost_power) <= 2.0:
        raise ValueError(f"cost_power must be in [0, 2] (1: importance per unit of marginal cost, 0: importance "
                         f"alone), got {cost_power!r}")
    return float(cost_power)
