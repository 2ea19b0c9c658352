"""How much sparsity each masked kernel gets: uniform, Erdos-Renyi (ER) and Erdos-Renyi-Kernel (ERK).

ER and ERK give a layer a density proportional to a raw score (small layers stay denser) and then scale all
densities by one factor ``epsilon`` chosen so that the whole model keeps exactly as many weights as uniform
sparsity would. When a scaled density exceeds 1 the layers with the largest raw score are made dense and
``epsilon`` is solved again over the rest (algorithms.md section 1.2). Only kernel shapes matter here, so these
functions take ``{name: shape}`` and return ``{name: sparsity}``; users may pass any callable of that form.
"""

from __future__ import annotations

import math

import numpy as np

from morphsparse.checks import fraction

from .masks import kept_count, pruned_count


class Distribution:
    """Base class: maps kernel shapes to per-kernel sparsities for a global target."""

    name = None

    def __call__(self, shapes: dict, sparsity: float) -> dict:
        return self.solve(shapes, sparsity)[0]

    def solve(self, shapes: dict, sparsity: float):
        """Return ``({name: sparsity}, epsilon)``; epsilon is None for distributions that do not scale."""
        raise NotImplementedError

    def get_config(self):
        return {}


class Uniform(Distribution):
    """Every kernel gets the global sparsity."""

    name = "uniform"

    def solve(self, shapes, sparsity):
        return {key: float(sparsity) for key in shapes}, None


class ErdosRenyiKernel(Distribution):
    """ERK: raw density ``(sum(shape) / prod(shape)) ** power``; power 0 gives uniform, 1 is the paper's."""

    name = "erk"

    def __init__(self, power: float = 1.0):
        self.power = fraction(power, "power", 0.0, math.inf)

    def raw_density(self, shape) -> float:
        return (sum(shape) / float(np.prod(shape))) ** self.power

    def solve(self, shapes, sparsity):
        sizes = {key: int(np.prod(shape)) for key, shape in shapes.items()}
        raw = {key: self.raw_density(tuple(int(d) for d in shape)) for key, shape in shapes.items()}
        dense = set()
        while True:
            free = [key for key in shapes if key not in dense]
            if not free:
                # Everything was forced dense: only possible at sparsity 0 or with a single tiny layer.
                return {key: 0.0 for key in shapes}, math.inf
            budget = (sum(kept_count(sizes[k], sparsity) for k in free)
                      - sum(pruned_count(sizes[k], sparsity) for k in dense))
            epsilon = budget / sum(raw[k] * sizes[k] for k in free)
            largest = max(raw[k] for k in free)
            if epsilon * largest <= 1.0:
                break
            # Exact comparison on purpose: layers tied at the largest raw density are forced dense together.
            dense.update(k for k in free if raw[k] == largest)
        result = {}
        for key in shapes:
            result[key] = 0.0 if key in dense else 1.0 - epsilon * raw[key]
        return result, epsilon

    def get_config(self):
        return {"power": self.power}


class ErdosRenyi(ErdosRenyiKernel):
    """ER: raw density ``(n_in + n_out) / (n_in * n_out)`` from the last two kernel dimensions."""

    name = "er"

    def __init__(self):
        super().__init__(power=1.0)

    def raw_density(self, shape) -> float:
        n_in, n_out = (shape[-2], shape[-1]) if len(shape) >= 2 else (shape[0], 1)
        return (n_in + n_out) / float(n_in * n_out)

    def get_config(self):
        return {}


DISTRIBUTIONS = {"uniform": Uniform, "er": ErdosRenyi, "erk": ErdosRenyiKernel}


def register_distribution(name: str, cls):
    """Make ``distribution=name`` available to ``sparsify``; ``cls()`` must return a ``Distribution``."""
    DISTRIBUTIONS[name] = cls
    return cls


def get_distribution(value, power: float | None = None) -> Distribution:
    """Resolve a distribution given by name (``"erk"``), instance or plain callable ``(shapes, s) -> dict``."""
    if isinstance(value, str):
        key = value.lower()
        if key not in DISTRIBUTIONS:
            raise ValueError(f"Unknown distribution {value!r}; known: {sorted(DISTRIBUTIONS)}")
        if key == "erk" and power is not None:
            return ErdosRenyiKernel(power)
        return DISTRIBUTIONS[key]()
    if isinstance(value, Distribution) or callable(value):
        return value
    raise TypeError(f"distribution must be a name, a Distribution or a callable, got {type(value).__name__}")


def layer_sparsities(shapes: dict, sparsity: float, distribution="erk", power: float | None = None,
                     overrides: dict | None = None) -> dict:
    """Per-kernel sparsities for ``shapes`` (``{name: shape}``) at global ``sparsity``.

    Kernels named in ``overrides`` get the given sparsity and stay outside the budget that ER/ERK balance.
    """
    overrides = dict(overrides or {})
    budgeted = {key: shape for key, shape in shapes.items() if key not in overrides}
    result = dict(get_distribution(distribution, power)(budgeted, sparsity)) if budgeted else {}
    result.update(overrides)
    return {key: float(result[key]) for key in shapes}
