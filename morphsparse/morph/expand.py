"""Width-multiplier expansion: grow a (slim) model uniformly until it fills a resource budget.

``expand(slim, budget)`` multiplies the width of every removable channel group by one factor w, rounds per
group (every layer of a group gets the same count, a multiple of ``round_to`` if given, never below one
step), keeps non-removable groups (network inputs, outputs, ``ignore=`` layers) as they are, and finds the
largest w whose exact analytic cost fits the budget by bisection. The cost of each candidate is priced on the
channel graph (``graph.call_costs(counts)``, without the calls no output depends on, which a rebuilt network
leaves out), so no model is built until the end; the result is a
freshly initialised model for retraining (MorphNet reference, section 2.5).

``target="latency"`` prices the candidates with a measured latency table (or a roofline; see
:class:`LatencyPrice`) and takes its budget as a fraction of a predicted latency.

Rounding is a step function of w, so "largest w" means: the returned widths cost at most the budget, and the
next rounding step up (the widths at any larger w) costs more than the budget.

Attention heads are a group whose one step is a large share of the cost. Where such a step leaves the uniform
widths more than 5% under the budget, the heads keep a count w reaches and the other groups get a multiplier
of their own that spends the rest (:meth:`WidthSearch.fill`); the report gives both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse import costs as _costs
from morphsparse import checks as _checks
from morphsparse.cost_tables import KernelCalls
from morphsparse.costs import count_flops, count_params
from morphsparse.graph import GraphError, analyze
from morphsparse.morph import alive as _alive
from morphsparse.morph.alive import warn_user
from morphsparse.rebuild import build_at_widths
from morphsparse.latency import as_table
from morphsparse.morph.regularizers import is_latency_table, latency_target

TARGETS = tuple(_costs.BUDGET_TARGETS) + ("latency",)


class ExpandError(ValueError):
    """The expansion cannot be done as asked; the message says why."""


def _price(graph, counts, target):
    """The cost of the rebuilt network at ``counts``: calls no output depends on are not rebuilt."""
    rows = graph.call_costs(counts, used_only=True)
    return 2 * sum(r[1] for r in rows) if target == "flops" else sum(r[2] for r in rows)


class LatencyPrice:
    """target="latency": the predicted seconds of the rebuilt network at given group widths (a measured
    latency table's prediction, or the roofline of a device profile), without the calls no output depends on."""

    def __init__(self, graph, device=None):
        self.graph = graph
        self.target = latency_target(KernelCalls(graph), device, used_only=True)

    def weights(self, counts):
        return self.graph.channel_weights(counts)

    def __call__(self, counts=None):
        return float(self.target.cost(*self.target.sums(self.weights(counts))))

    def warn_extrapolated(self, counts, what):
        if hasattr(self.target, "model"):
            self.target.model.warn_extrapolated(self.weights(counts), what)


def _format(cost, target):
    return f"{cost * 1e3:.4g} ms" if target == "latency" else f"{cost:,.0f} {target}"


def rounded_width(size, multiplier, round_to=None):
    """A group of ``size`` channels scaled by ``multiplier``: rounded to the nearest multiple of
    ``round_to`` (or integer), at least one step."""
    step = round_to or 1
    return max(step, step * int(round(size * multiplier / step)))


def group_granularity(graph):
    """``{group id: step}``: the smallest change of a group's width that keeps every tensor's share of it a
    whole number of channels. A tensor holding n of a group's ``size`` channels gets n/size of its new width
    (NASNet concatenates two halves of one group, so that group can only grow in steps of two)."""
    steps = {g.id: 1 for g in graph.groups}
    for call in graph.calls:
        for groups in call.in_groups + call.out_groups:
            ids, entries = np.unique(groups, return_counts=True)
            for gid, n in zip(ids.tolist(), entries.tolist()):
                size = graph.groups[gid].size
                steps[gid] = math.lcm(steps[gid], size // math.gcd(size, n))
    return steps


def check_budget(budget):
    """``budget`` as a positive finite float, or an ExpandError naming it."""
    return _checks.check_budget(budget, ExpandError, ExpandError)


def check_round_to(round_to):
    """``round_to`` is None or a positive integer, else an ExpandError naming it."""
    return _alive.check_round_to(round_to, ExpandError)


def check_target(target):
    return _costs.check_target(target, TARGETS, error=ExpandError)


#: the widths are filled (see :meth:`WidthSearch.fill`) when the uniform ones cost less than this share of the
#: budget: a step of whole heads (a quarter of a 4-head layer) can leave a third of it unspent
FILL_BELOW = 0.95


class WidthSearch:
    """Bisection over the width multiplier on a channel graph.

    Where the model has groups of whole units (attention heads) and the uniform widths fall short of the budget
    by a step of them, :meth:`fill` keeps the units at a count the multiplier reaches and gives the other groups
    (the lanes: channels, hidden units) a multiplier of their own that spends the rest."""

    def __init__(self, graph, target="flops", round_to=None, device=None, lanes_only=False):
        """``lanes_only=True``: ``round_to`` is a device's step read off a latency table (the vector width its
        kernels pad channels to), and rounds only the channel groups at least one step wide: a narrower group
        already runs at one step's cost (a whole step would widen it past the table's grid), and a group of
        heads counts heads, not lanes. Otherwise it rounds every group, at least one step, as MorphNet's width
        multiplier does."""
        check_target(target)
        check_round_to(round_to)
        self.graph, self.target, self.round_to, self.lanes_only = graph, target, round_to, lanes_only
        self.price = LatencyPrice(graph, device) if target == "latency" else (
            lambda counts: _price(graph, counts, target))
        self.groups = [g for g in graph.groups if g.removable and g.size > 0]
        if not self.groups:
            raise ExpandError(f"model '{graph.model.name}' has no removable channel group to widen")
        # the heads: one step of them moves the cost by a lot
        self.units = set(graph.internal_group_ids()) & {g.id for g in self.groups}
        step = round_to or 1
        rounded = {g.id for g in self.groups if not lanes_only or (g.size >= step and g.id not in self.units)}
        granularity = group_granularity(graph)
        self.steps = {g.id: math.lcm(step if g.id in rounded else 1, granularity[g.id]) for g in self.groups}

    def counts(self, multiplier, lanes=None):
        """The widths at ``multiplier``; the groups that are not units at ``lanes`` where given."""
        return {g.id: rounded_width(g.size, multiplier if lanes is None or g.id in self.units else lanes,
                                    self.steps[g.id]) for g in self.groups}

    def cost(self, multiplier, lanes=None):
        return self.price(self.counts(multiplier, lanes))

    def largest_multiplier(self, budget, iterations=60):
        """(w, cost): the largest multiplier whose rounded widths cost at most ``budget``."""
        smallest = self.cost(0.0)
        if smallest > budget:
            narrower = " (or, narrower groups and heads, at their own smallest step)" if self.lanes_only else ""
            raise ExpandError(f"budget {_format(budget, self.target)} is below the smallest possible network "
                              f"({_format(smallest, self.target)} with every removable group at "
                              f"{self.round_to or 1} channel(s){narrower})")
        return self._largest(self.counts, budget, iterations)

    def _largest(self, counts, budget, iterations=60):
        """(m, cost): the largest ``m`` with ``price(counts(m)) <= budget``, ``price(counts(0))`` being within it."""
        low, high = 0.0, 1.0
        while self.price(counts(high)) <= budget:
            low, high = high, high * 2
            if high > 2 ** 20:
                raise ExpandError(f"budget {_format(budget, self.target)} is not reached even at width multiplier 2**20; the "
                                  f"{self.target} of this model does not grow with its width")
        for _ in range(iterations):
            middle = (low + high) / 2
            low, high = (middle, high) if self.price(counts(middle)) <= budget else (low, middle)
            if counts(low) == counts(high):
                break
        return low, self.price(counts(low))

    def fill(self, multiplier, budget):
        """``(units multiplier, lanes multiplier, cost)`` spending what the uniform widths at ``multiplier`` leave of
        ``budget``, or None where they spend at least ``FILL_BELOW`` of it (or the model has no units, or only
        units).

        Two ways to fill: the units where ``multiplier`` puts them and the lanes wider, or the units one step up
        and the lanes narrower. Of those within ``FILL_BELOW`` of the budget, the one whose lanes stay closest
        (in ratio) to the units' share of their full count is kept: the most uniform network that spends the
        budget."""
        uniform = self.cost(multiplier)
        lanes = [g for g in self.groups if g.id not in self.units]
        if not self.units or not lanes or uniform >= FILL_BELOW * budget:
            return None
        options = []
        for units_at in (multiplier, self._next_unit_step(multiplier)):
            if self.cost(units_at, 0.0) > budget:
                continue
            try:
                lanes_at, cost = self._largest(lambda m: self.counts(units_at, m), budget)
            except ExpandError:      # the lanes do not move the cost: nothing to fill with
                continue
            counts = self.counts(units_at, lanes_at)
            share = np.mean([counts[g] / self.graph.groups[g].size for g in self.units])
            lane_share = np.mean([counts[g.id] / g.size for g in lanes])
            options.append((cost < FILL_BELOW * budget, abs(math.log(lane_share / share)), -cost, units_at,
                            lanes_at))
        if not options:
            return None
        *_, minus_cost, units_at, lanes_at = min(options)
        return None if -minus_cost <= uniform else (units_at, lanes_at, -minus_cost)

    def _next_unit_step(self, multiplier):
        """The smallest multiplier above ``multiplier`` that adds a unit somewhere."""
        def unit_counts(m):
            counts = self.counts(m)
            return [counts[g] for g in sorted(self.units)]
        return _next_change(unit_counts, multiplier)

    def solve(self, budget):
        """``(multiplier, lanes, cost)``: the largest uniform multiplier within ``budget``, filled where a step of
        units leaves it short (``lanes`` is None where the widths are uniform)."""
        multiplier, cost = self.largest_multiplier(budget)
        return self.fill(multiplier, budget) or (multiplier, None, cost)

    def next_step(self, multiplier, lanes=None):
        """The cost one rounding step above ``multiplier`` (the smallest larger multiplier that changes a
        width; of the lanes' multiplier where the widths were filled), to show the result is within one step of
        the budget."""
        if lanes is None:
            return self.cost(_next_change(self.counts, multiplier))
        return self.cost(multiplier, _next_change(lambda m: self.counts(multiplier, m), lanes))


def _next_change(widths, start):
    """The smallest multiplier above ``start`` at which ``widths(multiplier)`` differs from ``widths(start)``
    (to bisection precision)."""
    base = widths(start)
    low, high = start, max(start * 2, 1.0)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if widths(middle) == base else (low, middle)
    return high


@dataclass
class ExpandReport(_alive.Report):
    """Per-layer widths before/after, the multiplier found and the costs."""

    model_name: str
    target: str
    budget: float
    multiplier: float
    round_to: int | None
    cost_before: int
    cost_after: int
    cost_next_step: int
    lanes_multiplier: float | None = None           # filled widths: the multiplier of the groups not of heads
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    widths: dict = field(default_factory=dict)      # producer layer path -> (before, after)
    latency_source: str = ""                        # target="latency": what priced it
    round_to_source: str = ""                       # where round_to came from ("argument", "latency table")
    seconds: float = 0.0

    def summary(self):
        unit = {"flops": "FLOPs", "size": "params"}.get(self.target)
        budget = f"{self.budget * 1e3:.4g} ms" if self.target == "latency" else f"{self.budget:,.0f} {unit}"
        latency = (f"; latency {self.cost_before * 1e3:.4g} -> {self.cost_after * 1e3:.4g} ms predicted by the "
                   f"{self.latency_source}" if self.target == "latency" else "")
        rounding = (f" (round_to={self.round_to}"
                    + (f", from the {self.round_to_source}" if self.round_to_source not in ("", "argument") else "")
                    + ")") if self.round_to else ""
        width = (f"x{self.multiplier:.4f}" if self.lanes_multiplier is None else
                 f"x{self.multiplier:.4f} for the heads, x{self.lanes_multiplier:.4f} for the other channels (a "
                 f"step of whole heads left the uniform width short)")
        return (f"{'expand' if self.multiplier >= 1 else 'resize'} of '{self.model_name}': width "
                f"{width}{rounding} to a budget of {budget}{latency}: "
                f"FLOPs {self.flops_before:,d} -> {self.flops_after:,d} (x{self.flops_after / max(self.flops_before, 1):.3f}), "
                f"params {self.params_before:,d} -> {self.params_after:,d} "
                f"(x{self.params_after / max(self.params_before, 1):.3f}); next rounding step would cost "
                f"{_format(self.cost_next_step, self.target) if self.target == 'latency' else f'{self.cost_next_step:,d}'}; "
                f"{self.seconds:.2f} s")

    def table(self):
        return _alive.widths_table("layer", self.widths, 44)


#: expand to a FLOP budget warns when the parameters grow more than this
PARAMS_GROWTH_WARNING = 1.5


def build_with_widths(model, graph, counts, name=None):
    """A freshly initialised copy of ``model`` whose removable groups have ``counts[group id]`` channels
    (groups not in ``counts`` keep their size). Layers get their new widths from their handler's
    ``rebuild_config``; nested models are flattened (inner layer names become ``outer__inner``). (The engine:
    :func:`morphsparse.rebuild.build_at_widths`, which ``ms.profile_latency`` uses too.)"""
    return build_at_widths(model, graph, counts, name=name, error=ExpandError)


def expand_with_report(model, budget, target="flops", reference=None, round_to=None, ignore=(), name=None,
                       device=None):
    """:func:`expand`, returning ``(model, ExpandReport)``."""
    start = time.perf_counter()
    if not isinstance(model, keras.Model):
        raise TypeError(f"expand() takes a keras.Model, got {type(model).__name__}")
    check_target(target)
    check_round_to(round_to)
    if device is not None and target != "latency":
        warn_user(f"device= is ignored: it prices target='latency' only (this expand's target is {target!r})")
        device = None
    if target == "latency":
        return _expand_to_latency(model, budget, reference, round_to, ignore, name, device, start)
    graph = analyze(model, ignore=ignore)
    if graph.unused_calls:
        names = ", ".join(c.path for c in graph.unused_calls[:3]) + (", ..." if len(graph.unused_calls) > 3 else "")
        warn_user(f"model '{model.name}' computes layers no output depends on ({names}): the expanded model "
                  "leaves them out, and a fractional budget is of the cost without them")
    absolute = (float(budget) * _price(graph, None, target) if reference is None and check_budget(budget) <= 1
                else _costs.resolve_budget(budget, target, graph, reference, ExpandError, ExpandError))
    search = WidthSearch(graph, target, round_to)
    multiplier, lanes, cost = search.solve(absolute)
    counts = search.counts(multiplier, lanes)
    wide = build_with_widths(model, graph, counts, name=name)
    wide_graph = analyze(wide)
    if _price(wide_graph, None, target) != cost:
        raise GraphError(f"expanded model costs {_price(wide_graph, None, target):,d} {target}, the search "
                         f"priced {cost:,d}; please report this model")
    report = _report(model, graph, wide_graph, search, (multiplier, lanes), absolute, _price(graph, None, target),
                     cost)
    if target == "flops" and report.params_after > PARAMS_GROWTH_WARNING * report.params_before:
        warn_user(f"expand of '{model.name}' to a FLOP budget multiplies its parameters by "
                  f"x{report.params_after / report.params_before:.2f} ({report.params_before:,d} -> "
                  f"{report.params_after:,d}): widening the cheap late layers costs few FLOPs but many weights. "
                  "Pass target=\"size\" to budget the parameters instead, or check that the FLOP budget is "
                  "what you want.")
    report.seconds = time.perf_counter() - start
    return wide, report


def _expand_to_latency(model, budget, reference, round_to, ignore, name, device, start):
    """expand_with_report for target="latency": the budget is a fraction of the predicted latency of
    ``reference`` (default: the model), and ``round_to`` defaults to the step the latency table shows."""
    fraction = check_budget(budget)
    if fraction > 1:
        raise ExpandError(f"budget={budget!r}: a latency budget is a fraction in (0, 1] of a model's predicted "
                          "latency (of reference=, default the model itself); divide your target time by "
                          "ms.predict_latency(model, table)")
    graph = analyze(model, ignore=ignore)
    if is_latency_table(device):
        device = as_table(device, "device")      # loaded once
    price = LatencyPrice(graph, device)
    if reference is None:
        base = price()
    elif isinstance(reference, keras.Model):
        base = LatencyPrice(analyze(reference), device)()
    else:
        raise ExpandError(f"reference must be a keras.Model, got {type(reference).__name__}")
    source = "argument" if round_to is not None else ""
    table = getattr(price.target, "latency_table", None)
    if round_to is None and table is not None:
        round_to = table.suggested_round_to()
        source = "latency table" if round_to else ""

    def searching(step):
        search = WidthSearch(graph, "latency", step, device, lanes_only=source == "latency table")
        search.price = price        # the one that priced the base
        return search

    search = searching(round_to)
    absolute = fraction * base
    try:
        multiplier, lanes, cost = search.solve(absolute)
        if source == "latency table":
            warn_user(f"expand to a latency budget rounds every channel group of at least {round_to} channels "
                      f"to a multiple of {round_to} (heads excepted): the latency table shows the device runs such "
                      f"widths faster (pass round_to= to choose)")
    except ExpandError as err:
        if source != "latency table":
            raise
        # the table's step is a preference: where one step per group is already more than the budget, the
        # widths between its multiples are used (they still cost less on a device that pads only in part)
        warn_user(f"expand to a latency budget: {err}; widths that are not multiples of {round_to}, which the "
                  f"latency table prefers, are used instead (pass round_to= to choose)")
        round_to, source = None, ""
        search = searching(None)
        multiplier, lanes, cost = search.solve(absolute)
    counts = search.counts(multiplier, lanes)
    price.warn_extrapolated(counts, f"the latency of the resized '{model.name}'")
    wide = build_with_widths(model, graph, counts, name=name)
    wide_graph = analyze(wide)
    check = LatencyPrice(wide_graph, device)()
    if not math.isclose(check, cost, rel_tol=1e-6, abs_tol=1e-12):
        raise GraphError(f"resized model's predicted latency is {check * 1e3:.4g} ms, the search priced "
                         f"{cost * 1e3:.4g} ms; please report this model")
    report = _report(model, graph, wide_graph, search, (multiplier, lanes), absolute, price(), cost,
                     latency_source=price.target.describe(), round_to_source=source)
    report.seconds = time.perf_counter() - start
    return wide, report


def _report(model, graph, wide_graph, search, multipliers, budget, cost_before, cost, **fields):
    """The :class:`ExpandReport` of ``model`` (``graph``) resized to ``wide_graph`` at ``search``'s
    ``multipliers`` (the multiplier, and the lanes' one where the widths were filled, else None)."""
    multiplier, lanes = multipliers
    counts = search.counts(multiplier, lanes)
    widths = {producer: (group.size, counts.get(group.id, group.size))
              for group in graph.groups for producer in group.producers}
    return ExpandReport(model.name, search.target, budget, multiplier, search.round_to, cost_before, cost,
                        search.next_step(multiplier, lanes), lanes_multiplier=lanes, flops_before=count_flops(graph),
                        flops_after=count_flops(wide_graph), params_before=count_params(graph),
                        params_after=count_params(wide_graph), widths=widths, **fields)


def expand(model, budget, target="flops", reference=None, round_to=None, ignore=(), name=None,
           return_report=False, device=None):
    """Resize ``model`` (usually an exported slim model) by the largest uniform width multiplier whose rounded
    widths cost at most ``budget``: it widens (multiplier > 1) or narrows (< 1), whichever the budget asks.

    ``budget``: an absolute cost (> 1: FLOPs for ``target="flops"``, parameters for ``"size"``), or a fraction
    (0 < budget <= 1) of the cost of ``reference`` (default: ``model`` itself), e.g.
    ``ms.expand(slim, budget=1.0, reference=seed)`` grows the slim model back to the seed's FLOPs.
    ``round_to`` (e.g. 8) rounds every group's width to a multiple; ``ignore`` names layers whose output width
    must not change (inputs and outputs never change).

    ``target="latency"``: ``budget`` is a fraction in (0, 1] of the predicted latency of ``reference`` (default:
    the model), priced by ``device``: a measured :class:`~morphsparse.latency.LatencyTable`
    (``ms.profile_latency``; its ``round_to`` suggestion is used when ``round_to`` is None, with a warning
    saying so), else the roofline of a device profile (the report's ``latency_source`` says which).

    On a model with attention heads, where a step of whole heads leaves the uniform widths more than 5% under
    the budget, the heads keep a count the multiplier reaches and the other groups get a multiplier of their own
    that spends the rest (``report.lanes_multiplier``; None where the widths are uniform).

    Returns a freshly initialised ``keras.Model`` (retrain it). For the :class:`ExpandReport` (FLOPs and
    parameters before and after, per-layer widths) call :func:`expand_with_report`. Warns when a FLOP budget
    multiplies the parameters by more than 1.5.
    """
    wide, report = expand_with_report(model, budget, target, reference, round_to, ignore, name, device)
    if return_report:
        warn_user("expand(..., return_report=True) is deprecated: it returns a pair where expand returns a "
                  "model; use ms.expand_with_report(...)", DeprecationWarning)
        return wide, report
    return wide


#: ``ms.resize`` is ``ms.expand``: the same width search shrinks as well as widens.
resize = expand


__all__ = ["expand", "expand_with_report", "resize", "ExpandReport", "ExpandError", "WidthSearch", "build_with_widths", "rounded_width", "TARGETS",
           "check_budget", "check_round_to", "check_target"]
