"""Width-multiplier expansion: grow a (slim) model uniformly until it fills a resource budget.

``expand(slim, budget)`` multiplies the width of every removable channel group by one factor w, rounds per
group (every layer of a group gets the same count, a multiple of ``round_to`` if given, never below one
step), keeps non-removable groups (network inputs, outputs, ``ignore=`` layers) as they are, and finds the
largest w whose exact analytic cost fits the budget by bisection. The cost of each candidate is priced on the
channel graph (``cost_report(graph, alive=counts)``), so no model is built until the end; the result is a
freshly initialised model for retraining (MorphNet reference, section 2.5).

Rounding is a step function of w, so "largest w" means: the returned widths cost at most the budget, and the
next rounding step up (the widths at any larger w) costs more than the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse.costs import cost_report
from morphsparse.graph import ChannelGraph, GraphError, analyze
from morphsparse.morph.replay import TensorIndex

TARGETS = ("flops", "size")


class ExpandError(ValueError):
    """The expansion cannot be done as asked; the message says why."""


def _price(graph, counts, target):
    report = cost_report(graph, alive=counts)
    return report.flops if target == "flops" else report.params


def rounded_width(size, multiplier, round_to=None):
    """A group of ``size`` channels scaled by ``multiplier``: rounded to the nearest multiple of
    ``round_to`` (or integer), at least one step."""
    step = round_to or 1
    return max(step, step * int(round(size * multiplier / step)))


def check_budget(budget):
    """``budget`` as a positive finite float, or an ExpandError naming it (``True`` is refused rather than
    read as a budget of one)."""
    if isinstance(budget, bool):
        raise ExpandError(f"budget must be a number (FLOPs or parameters), got {budget!r}")
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ExpandError(f"budget must be a number (FLOPs or parameters), got {budget!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ExpandError(f"budget must be a positive finite number, got {budget!r}")
    return value


def check_round_to(round_to):
    """``round_to`` is None or a positive integer (a float such as 2.5 has no meaning as a channel step)."""
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer))
                                 or round_to < 1):
        raise ExpandError(f"round_to must be a positive integer or None, got {round_to!r}")
    return round_to


def check_target(target):
    if not isinstance(target, str) or target not in TARGETS:
        raise ExpandError(f"unknown target {target!r}; use one of {TARGETS}")
    return target


class WidthSearch:
    """Bisection over the width multiplier on a channel graph."""

    def __init__(self, graph, target="flops", round_to=None):
        check_target(target)
        check_round_to(round_to)
        self.graph, self.target, self.round_to = graph, target, round_to
        self.groups = [g for g in graph.groups if g.removable and g.size > 0]
        if not self.groups:
            raise ExpandError(f"model '{graph.model.name}' has no removable channel group to widen")

    def counts(self, multiplier):
        return {g.id: rounded_width(g.size, multiplier, self.round_to) for g in self.groups}

    def cost(self, multiplier):
        return _price(self.graph, self.counts(multiplier), self.target)

    def largest_multiplier(self, budget, iterations=60):
        """(w, cost): the largest multiplier whose rounded widths cost at most ``budget``."""
        low, high = 0.0, 1.0
        smallest = self.cost(low)
        if smallest > budget:
            raise ExpandError(f"budget {budget:,.0f} ({self.target}) is below the smallest possible network "
                              f"({smallest:,} with every removable group at {self.round_to or 1} channel(s))")
        while self.cost(high) <= budget:
            low, high = high, high * 2
            if high > 2 ** 20:
                raise ExpandError(f"budget {budget:,.0f} is not reached even at width multiplier 2**20; the "
                                  f"{self.target} of this model does not grow with its width")
        for _ in range(iterations):
            middle = (low + high) / 2
            if self.cost(middle) <= budget:
                low = middle
            else:
                high = middle
            if self.counts(low) == self.counts(high):
                break
        return low, self.cost(low)

    def next_step(self, multiplier):
        """The cost one rounding step above ``multiplier`` (the smallest larger multiplier that changes a
        width), to show the result is within one step of the budget."""
        base = self.counts(multiplier)
        high = max(multiplier * 2, 1.0)
        low = multiplier
        for _ in range(60):
            middle = (low + high) / 2
            if self.counts(middle) == base:
                low = middle
            else:
                high = middle
        return self.cost(high)


@dataclass
class ExpandReport:
    """Per-layer widths before/after, the multiplier found and the costs."""

    model_name: str
    target: str
    budget: float
    multiplier: float
    round_to: int | None
    cost_before: int
    cost_after: int
    cost_next_step: int
    widths: dict = field(default_factory=dict)      # producer layer path -> (before, after)
    seconds: float = 0.0

    def summary(self):
        return (f"expand of '{self.model_name}': width x{self.multiplier:.4f}"
                f"{f' (round_to={self.round_to})' if self.round_to else ''}; {self.target} "
                f"{self.cost_before:,d} -> {self.cost_after:,d} (budget {self.budget:,.0f}, next rounding step "
                f"{self.cost_next_step:,d}); {self.seconds:.2f} s")

    def table(self):
        lines = [f"{'layer':44s} {'before':>8s} {'after':>8s}"]
        for path, (before, after) in self.widths.items():
            lines.append(f"{path[:44]:44s} {before:8d} {after:8d}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def build_with_widths(model, graph, counts, name=None, index=None):
    """A freshly initialised copy of ``model`` whose removable groups have ``counts[group id]`` channels
    (groups not in ``counts`` keep their size). Layers get their new widths from their handler's
    ``rebuild_config``; nested models are flattened (inner layer names become ``outer__inner``)."""
    from morphsparse.graph import _functional_of

    index = index or TensorIndex(graph)
    factor = np.ones(len(graph.groups))
    for gid, count in counts.items():
        factor[gid] = count / graph.groups[gid].size

    def width(groups):
        # every channel of a group appears equally often in a tensor (tiling, depth multipliers), so each
        # group's share is a whole number of channels; a concatenation is the sum of its inputs' shares
        ids, entries = np.unique(groups, return_counts=True)
        return int(sum(round(n * factor[g]) for g, n in zip(ids.tolist(), entries.tolist())))

    functional = _functional_of(model)
    tensors, new_inputs, layers = {}, [], {}
    for key, tensor in zip(index.model_inputs, functional.inputs):
        new = keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype,
                          name=tensor._keras_history.operation.name)
        tensors[key] = new
        new_inputs.append(new)
    for k, call in enumerate(graph.calls):
        if call.node is None:
            continue
        keep_in = [np.ones(width(g), bool) for g in call.in_groups]
        keep_out = [np.ones(width(g), bool) for g in call.out_groups]
        node = call.node
        args, kwargs = node.arguments.fill_in({id(t): tensors[key] for t, key in zip(node.input_tensors,
                                                                                      index.inputs_of[k])})
        layer = call.layer
        try:
            if isinstance(layer, keras.layers.Layer):
                if id(layer) not in layers:
                    config = dict(call.handler.rebuild_config(call, keep_in, keep_out))
                    config.pop("build_config", None)
                    config["name"] = call.path.replace("/", "__")
                    layers[id(layer)] = type(layer).from_config(config)
                outputs = layers[id(layer)](*args, **kwargs)
            else:
                outputs = layer(*args, **kwargs)
        except Exception as err:  # the layer's class decides what it accepts; say which one failed
            raise ExpandError(f"cannot rebuild layer '{call.path}' ({type(layer).__name__}) with "
                              f"{[len(m) for m in keep_in]} input and {[len(m) for m in keep_out]} output "
                              f"channels: {err}. Register a handler whose rebuild_config sets its width.") from err
        outputs = keras.tree.flatten(outputs)
        for key, tensor, keep in zip(index.outputs_of[k], outputs, keep_out):
            if len(tensor.shape) > 1 and tensor.shape[-1] != len(keep):
                raise ExpandError(f"layer '{call.path}' ({type(layer).__name__}) is not supported by expand: "
                                  f"rebuilt with {tensor.shape[-1]} output channels instead of {len(keep)}; "
                                  "register a handler whose rebuild_config sets its width")
            tensors[key] = tensor
    outputs = [tensors[key] for key in index.model_outputs]
    single_in = not isinstance(functional._inputs_struct, (list, tuple, dict)) and len(new_inputs) == 1
    single_out = not isinstance(functional._outputs_struct, (list, tuple, dict)) and len(outputs) == 1
    return keras.Model(new_inputs[0] if single_in else new_inputs, outputs[0] if single_out else outputs,
                       name=name or model.name)


def expand(model, budget, target="flops", round_to=None, ignore=(), name=None, return_report=False):
    """Widen ``model`` (usually an exported slim model) by the largest uniform width multiplier whose
    rounded widths cost at most ``budget`` (FLOPs for ``target="flops"``, parameters for ``"size"``).

    Returns a freshly initialised ``keras.Model`` (retrain it), or ``(model, ExpandReport)`` with
    ``return_report=True``. ``round_to`` (e.g. 8) rounds every group's width to a multiple; ``ignore`` names
    layers whose output width must not change (inputs and outputs never change).
    """
    start = time.perf_counter()
    if not isinstance(model, keras.Model):
        raise TypeError(f"expand() takes a keras.Model, got {type(model).__name__}")
    check_target(target)
    budget = check_budget(budget)
    check_round_to(round_to)
    graph = model if isinstance(model, ChannelGraph) else analyze(model, ignore=ignore)
    search = WidthSearch(graph, target, round_to)
    multiplier, cost = search.largest_multiplier(budget)
    counts = search.counts(multiplier)
    wide = build_with_widths(model, graph, counts, name=name)
    wide_cost = _price(analyze(wide), None, target)
    if wide_cost != cost:
        raise GraphError(f"expanded model costs {wide_cost:,d} {target}, the search priced {cost:,d}; "
                         "please report this model")
    report = ExpandReport(model.name, target, budget, multiplier, round_to, _price(graph, None, target), cost,
                          search.next_step(multiplier))
    for group in graph.groups:
        for producer in group.producers:
            report.widths[producer] = (group.size, counts.get(group.id, group.size))
    report.seconds = time.perf_counter() - start
    return (wide, report) if return_report else wide


__all__ = ["expand", "ExpandReport", "ExpandError", "WidthSearch", "build_with_widths", "rounded_width", "TARGETS",
           "check_budget", "check_round_to", "check_target"]
