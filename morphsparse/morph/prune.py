"""Prune a trained model to a budget in one call: ``ms.prune(model, budget=0.5, target="flops")``.

Channels are ranked **globally**, across all groups, by their importance normalised within their own group
(divided by the group's mean, as Torch-Pruning's mean normaliser does: a BatchNorm undoes its layer's scale, so
raw gammas of two layers are not comparable; the calibration importances "wanda" and "flap" are compared as
they are, since each measures what a unit adds to the outputs that read it) over a price, the channel's *marginal cost* to the power
``cost_power`` (the marginal cost is what the target would lose if the channel were removed, at the current
widths: the gradient of the MorphNet term, :mod:`morphsparse.morph.regularizers`). Power 1 ranks by importance
per unit of cost and, on a plain chain, cuts the expensive high-resolution layers first; power 0 ranks by
importance alone; the default 0.5 is the compromise benchmarks/structure_quality.py measured. Every group keeps
at least ``min_width`` of its channels (a floor: a chain cut to one channel is an information bottleneck that
fine-tuning does not repair), and a result with a layer collapsed below 10% of its channels warns, naming it.
Channels are removed greedily in small chunks: after every chunk the marginal costs are computed again, because
a channel's saving depends on the widths of its neighbours. The chunk stops as soon as the estimated saving
covers the distance to the budget, and the exact analytic cost (``count_flops`` / ``count_params``) decides when
to stop, so the result lands at or just under the budget.

With ``target="latency", device=table`` (a measured :class:`~morphsparse.latency.LatencyTable`) the price is a
channel's marginal latency in the table (its share of the line through the grid's multiples; on a table that
shows steps, the average saving of a step's worth of channels, as one channel in a padded stretch saves
nothing), the table's prediction is the exact cost, and the table's ``suggested_round_to`` rounds the pruned
widths down unless ``round_to`` is given.

The slim model is then built by :func:`morphsparse.export` with the chosen masks (weights copied; a removed
channel is exported as if its gamma, or for networks without BatchNorm its kernel column, were zero: the
constant it leaves behind is folded into the next layer), and its exact cost is checked against the budget.

Importance of a channel (higher = keep):

* ``"gamma"``: |gamma| of the BatchNormalization after the channel's producer;
* ``"l1"``: mean |w| of the kernel column feeding the channel;
* ``"taylor"``: |first-order change of the loss when the channel is removed| = |sum over a few batches of
  dL/dgamma * gamma| (Molchanov et al. 2019), from ``data``;
* ``"wanda"`` and ``"flap"``: from calibration inputs ``data``, how much each channel or head contributes to
  what reads it (Wanda-sp's activation-weighted magnitude; FLAP's fluctuation, with the removed channels'
  calibration means folded into the next bias): :mod:`morphsparse.morph.calibration`, for pruning without
  retraining (docs/pruning_transformers.md);
* a callable ``importance(graph) -> {group id: per-channel scores}``.

Coupled channels (one channel of a group with several producers, tied by residual Adds) are scored together:
the sum of their sources' scores (for taylor, the sum of the signed estimates, then the absolute value: the
estimate for removing all of them at once). Channels with no importance source are never pruned; every group
keeps at least its floor (no whole block is removed), so the network stays connected. To fine-tune the slim
model from the unpruned one, see :func:`morphsparse.distill`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse.checks import absolute_budget_hint, check_budget, check_cost_power
from morphsparse.cost_tables import KernelCalls
from morphsparse.costs import (BUDGET_TARGETS, DEFAULT_COST_POWER, check_target, count_flops, count_params,
                               resolve_budget)
from morphsparse.graph import analyze
from morphsparse.morph import alive as _alive
from morphsparse.morph.batchnorm import recalibrate_batchnorm
from morphsparse.morph.calibration import CALIBRATION_IMPORTANCES, CalibrationStatistics, input_arrays
from morphsparse.morph.export import export_with_report
from morphsparse.latency import as_table
from morphsparse.morph.regularizers import is_latency_table, latency_target
from morphsparse.recipe import compiler_like, fit_arguments

TARGETS = tuple(BUDGET_TARGETS) + ("latency",)
IMPORTANCES = ("gamma", "l1", "taylor") + CALIBRATION_IMPORTANCES
#: importances computed from data= (the others read the weights alone)
DATA_IMPORTANCES = ("taylor",) + CALIBRATION_IMPORTANCES
#: fraction of the remaining candidate channels removed per round before marginal costs are recomputed
DEFAULT_CHUNK = 0.05
#: a result more than this fraction under the budget is reported by a warning (over-pruning)
OVERSHOOT_WARNING = 0.05
#: batch size used to split ``data=(x, y)`` arrays for the taylor importance
ARRAY_BATCH_SIZE = 64
_EXPORT_ATTEMPTS = 4


class PruneError(ValueError):
    """The model cannot be pruned as asked (an unreachable budget, say); the message says why."""


# --- reports -----------------------------------------------------------------------------------------------

@dataclass
class PruneStep:
    """One prune(-and-fine-tune) step: the budget it aimed at (in the target's unit), what the slim model
    costs, the export source used for removal, the ExportReport and the fine-tuning history (or None)."""

    index: int
    budget: float
    flops: int
    params: int
    removal: str
    channels_before: int
    channels_after: int
    export_report: object = None
    history: dict | None = None
    seconds: float = 0.0

    def summary(self):
        text = (f"step {self.index}: budget {self.budget:,.0f} -> {self.flops:,d} FLOPs, {self.params:,d} params; "
                f"{self.channels_before} -> {self.channels_after} removable channels ({self.seconds:.1f} s)")
        if self.history:
            last = {k: v[-1] for k, v in self.history.items() if v}
            text += "; fine-tuned: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items())
        return text


@dataclass
class PruneReport(_alive.Report):
    """What :func:`prune` did: the budget (absolute, in the target's unit, and as a fraction of the model's
    own cost), FLOPs and parameters before and after, the width of every removable group before and after
    (``groups``: producer layer names -> (before, after)), the importance used and one :class:`PruneStep` per
    step (``steps``)."""

    model_name: str
    target: str
    importance: str
    budget: float
    budget_fraction: float
    flops_before: int
    params_before: int
    flops_after: int = 0
    params_after: int = 0
    latency_before: float = 0.0                      # target="latency": predicted seconds
    latency_after: float = 0.0
    latency_source: str = ""                         # what priced the latency (measured table or roofline)
    round_to: int | None = None                      # pruned widths rounded down to multiples of this
    round_to_source: str = ""                        # "latency table" when the table suggested it
    groups: dict = field(default_factory=dict)      # "producer, producer" -> (channels before, after)
    steps: list = field(default_factory=list)
    never_pruned: int = 0                            # removable channels without an importance source
    seconds: float = 0.0

    @property
    def unit(self):
        return {"flops": "FLOPs", "latency": "seconds"}.get(self.target, "params")

    @property
    def cost_before(self):
        return {"flops": self.flops_before, "latency": self.latency_before}.get(self.target, self.params_before)

    @property
    def cost_after(self):
        return {"flops": self.flops_after, "latency": self.latency_after}.get(self.target, self.params_after)

    @property
    def histories(self):
        """The fine-tuning history of every step (None where there was none)."""
        return [step.history for step in self.steps]

    def summary(self):
        before = sum(b for b, _ in self.groups.values())
        after = sum(a for _, a in self.groups.values())
        latency = (f"; latency {self.latency_before * 1e3:.3f} -> {self.latency_after * 1e3:.3f} ms predicted by "
                   f"the {self.latency_source}" if self.target == "latency" else "")
        return (f"prune of '{self.model_name}' to {_format(self.budget, self.target)} "
                f"({self.budget_fraction:.1%} of {_format(self.cost_before, self.target)}), importance={self.importance!r}, "
                f"{len(self.steps)} step(s): {self.flops_before:,d} -> {self.flops_after:,d} FLOPs "
                f"(x{self.flops_after / max(self.flops_before, 1):.3f}), {self.params_before:,d} -> "
                f"{self.params_after:,d} params (x{self.params_after / max(self.params_before, 1):.3f}); "
                f"{before} -> {after} removable channels"
                + (f" ({self.never_pruned} never pruned: no importance source)" if self.never_pruned else "")
                + latency + f"; {self.seconds:.1f} s")

    def table(self):
        return _alive.widths_table("producers", self.groups, 60)


def _format(cost, target):
    """A cost in the target's unit, for messages."""
    return f"{cost * 1e3:.4g} ms" if target == "latency" else f"{cost:,.0f} {'FLOPs' if target == 'flops' else 'params'}"


# --- argument checks ---------------------------------------------------------------------------------------

def _check_arguments(model, budget, target, importance, data, loss, steps, fit, compile, batches, chunk):
    if not isinstance(model, keras.Model):
        raise TypeError(f"prune() takes a keras.Model, got {type(model).__name__}")
    check_budget(budget)
    check_target(target, TARGETS)
    if target == "latency" and budget > 1:
        raise ValueError(f"budget={budget!r}: a latency budget is a fraction in (0, 1] of the model's predicted "
                         "latency (ms.predict_latency(model, table)); divide your target time by it")
    if not callable(importance) and (not isinstance(importance, str) or importance not in IMPORTANCES):
        raise ValueError(f"unknown importance {importance!r}; use one of {IMPORTANCES} or a callable "
                         "importance(graph) -> {group id: per-channel scores}")
    if importance == "taylor":
        if data is None:
            raise ValueError("importance='taylor' needs data=: a tf.data.Dataset of (x, y) batches or (x, y) "
                             "arrays, to compute dL/dgamma on")
        _check_data(data)
    elif importance in CALIBRATION_IMPORTANCES:
        if data is None:
            raise ValueError(f"importance={importance!r} needs data=: calibration inputs (an array, (x, y) arrays "
                             "or a tf.data.Dataset of batches) to measure the activations on")
        _check_data(data, inputs_only=True)
    elif data is not None:
        _alive.warn_user(f"data= is only used by importance in {DATA_IMPORTANCES} and is ignored with "
                         f"importance={_importance_name(importance)!r}")
    if importance != "taylor" and loss is not None:
        _alive.warn_user(f"loss= is only used by importance='taylor' and is ignored with "
                         f"importance={_importance_name(importance)!r}")
    for name, count in (("steps", steps), ("batches", batches)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    fit_arguments(fit, required=False)
    if steps > 1 and fit is None:
        raise ValueError(f"steps={steps} prunes iteratively and fine-tunes between steps: pass fit=dict(...) "
                         "(Model.fit keyword arguments), or use steps=1")
    if compile is not None:
        compiler_like(model, compile, "prune()")       # checks what compile= is
    if not 0.0 < _alive.real_number("chunk", chunk) <= 1.0:
        raise ValueError(f"chunk must be in (0, 1], got {chunk!r}")
    if loss is not None and not callable(loss) and not isinstance(loss, str):
        raise TypeError(f"loss must be a Keras loss (a name, a function or a keras.losses.Loss), got "
                        f"{type(loss).__name__}")


def _importance_name(importance):
    return importance if isinstance(importance, str) else getattr(importance, "__name__", "callable")


def _inputs_alone(data):
    """True for model inputs given without labels (an array, a tensor, or a dict of them by input name)."""
    return isinstance(data, (np.ndarray, Mapping)) or keras.ops.is_tensor(data)


def _check_data(data, inputs_only=False):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset) or (inputs_only and _inputs_alone(data)):
        return
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        lengths = {int(np.shape(a)[0]) for a in keras.tree.flatten(data) if a is not None}
        if len(lengths) != 1:
            raise ValueError(f"data=(x, y) arrays must have the same number of examples, got lengths "
                             f"{sorted(lengths)}")
        return
    raise TypeError(f"data must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of arrays"
                    f"{' (or an array of inputs)' if inputs_only else ''}, got {type(data).__name__}")


# --- importance --------------------------------------------------------------------------------------------

def _covered(graph, sources):
    """Flat boolean vector: channels every producer of which has a source in ``sources`` (only those can be
    removed by export's rule for that source: a producer without one would keep the channel varying)."""
    offsets = graph.offsets
    covered = np.ones(int(offsets[-1]), bool)
    have = {}
    for src in sources:
        have.setdefault((src.group, src.producer.path), set()).update(np.asarray(src.channels).tolist())
    for group in graph.groups:
        for path, channels in group.producer_channels.items():
            missing = set(np.asarray(channels).tolist()) - have.get((group.id, path), set())
            if missing:
                covered[offsets[group.id] + np.fromiter(missing, np.int64)] = False
    return covered


def _summed_scores(graph, sources, values):
    """Flat per-channel sum of each source's values over the channels it covers (nan where none does)."""
    offsets = graph.offsets
    total = np.zeros(int(offsets[-1]))
    seen = np.zeros(int(offsets[-1]), bool)
    for src, value in zip(sources, values):
        index = offsets[src.group] + np.asarray(src.channels)
        np.add.at(total, index, np.asarray(value, np.float64).reshape(-1))
        seen[index] = True
    total[~seen] = np.nan
    return total


def _user_scores(graph, importance):
    scores = importance(graph)
    if not isinstance(scores, Mapping):
        raise TypeError(f"importance callable must return a mapping group id -> per-channel scores, got "
                        f"{type(scores).__name__}")
    flat = np.full(int(graph.offsets[-1]), np.nan)
    for key, value in scores.items():
        try:
            group = graph.resolve_group(key)
        except (KeyError, ValueError) as err:
            raise ValueError(f"importance callable returned key {key!r}: {err.args[0]}") from None
        value = np.asarray(value, dtype=np.float64)
        if value.shape != (group.size,):
            raise ValueError(f"importance callable returned scores of shape {value.shape} for group G{group.id}, "
                             f"expected ({group.size},)")
        if np.isnan(value).any() or np.isneginf(value).any():
            raise ValueError(f"importance callable returned nan or -inf scores for group G{group.id}; use +inf "
                             "for a channel that must never be pruned")
        flat[graph.offsets[group.id]:graph.offsets[group.id + 1]] = value
    return flat


def _loss_function(model, loss):
    """``f(x, y, y_pred, sample_weight) -> scalar`` for the taylor importance."""
    chosen = loss if loss is not None else (getattr(model, "loss", None) if model.compiled else None)
    if chosen is None:
        raise ValueError(f"importance='taylor' needs a loss: compile model '{model.name}' first or pass loss= "
                         "(e.g. loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))")
    if isinstance(chosen, (str, keras.losses.Loss)) or callable(chosen):
        function = keras.losses.get(chosen) if isinstance(chosen, str) else chosen   # an unknown name raises
        if isinstance(function, keras.losses.Loss):
            return lambda x, y, p, sw: function(y, p, sample_weight=sw)
        return lambda x, y, p, sw: keras.ops.mean(function(y, p))
    # several outputs with a dict/list of losses: the model's own loss computation
    return lambda x, y, p, sw: model.compute_loss(x=x, y=y, y_pred=p, sample_weight=sw, training=False)


def _batches(data, batches):
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        for batch in data.take(batches):
            yield keras.utils.unpack_x_y_sample_weight(batch)
        return
    if _inputs_alone(data):
        data = (data,)
    n = int(np.shape(keras.tree.flatten(data)[0])[0])
    for start in range(0, min(n, batches * ARRAY_BATCH_SIZE), ARRAY_BATCH_SIZE):
        piece = keras.tree.map_structure(lambda a: None if a is None else a[start:start + ARRAY_BATCH_SIZE], data)
        yield keras.utils.unpack_x_y_sample_weight(tuple(piece))


def _taylor_values(model, sources, data, loss, batches):
    """Per gamma source: the sum over ``batches`` batches of dL/dgamma * gamma (signed, per BN entry), with
    the model in inference mode (moving statistics, no dropout), as the exported model runs."""
    import tensorflow as tf

    loss_fn = _loss_function(model, loss)
    gammas = [src.weight for src in sources]
    totals = [np.zeros(tuple(g.shape)) for g in gammas]
    seen = 0
    for x, y, sample_weight in _batches(data, batches):
        with tf.GradientTape() as tape:
            for g in gammas:
                tape.watch(g.value)
            y_pred = model(x, training=False)
            value = loss_fn(x, y, y_pred, sample_weight)
        grads = tape.gradient(value, [g.value for g in gammas])
        for total, g, grad in zip(totals, gammas, grads):
            if grad is not None:
                total += keras.ops.convert_to_numpy(grad).astype(np.float64) * keras.ops.convert_to_numpy(g)
        seen += 1
    if not seen:
        raise ValueError("data= gave no batch for importance='taylor'")
    return totals


def _flat_importance(model, importance, data=None, loss=None, batches=8, graph=None):
    """``(flat per-channel importance, export source, removed values)`` on ``graph``: nan where a channel has no
    importance source or cannot be removed by the export rule chosen ("gamma": as if its gamma were zero;
    "group_lasso": as if its kernel column were zero). ``removed values``: what removed channels carry where
    they are read in place of that rule's constant (FLAP's bias compensation), or None."""
    graph = graph or analyze(model)
    replaced = None
    gamma_sources = _alive.find_sources(graph, "gamma")
    gamma_covered = _covered(graph, gamma_sources)
    if importance in ("gamma", "taylor"):   # |gamma|, or |the sum of the signed taylor estimates|
        values = ([src.values() for src in gamma_sources] if importance == "gamma"
                  else _taylor_values(model, gamma_sources, data, loss, batches))
        scores, removal = np.abs(_summed_scores(graph, gamma_sources, values)), "gamma"
    else:
        if importance == "l1":
            lasso = _alive.find_sources(graph, "group_lasso")
            scores = _summed_scores(graph, lasso, [src.values(l1_fraction=1.0) for src in lasso])
        elif importance in CALIBRATION_IMPORTANCES:
            statistics = CalibrationStatistics(graph, (input_arrays(graph, x) for x, _, _ in _batches(data, batches)))
            scores = statistics.scores(importance)
            replaced = statistics.means() if importance == "flap" else None
        else:
            scores = _user_scores(graph, importance)
        candidates = _removable_flat(graph) & np.isfinite(scores)
        # removal as if gamma were zero (the channel keeps its mean, act(beta)) wherever every candidate has
        # a BatchNorm after each producer; otherwise as if the kernel column were zero
        removal = "gamma" if gamma_covered[candidates].all() else "group_lasso"
    covered = gamma_covered if removal == "gamma" else _covered(graph, _alive.find_sources(graph, "group_lasso"))
    scores = np.where(covered, scores, np.nan)
    return scores, removal, replaced


def channel_importance(model, importance="gamma", data=None, loss=None, batches=8, ignore=()):
    """``{group id: per-channel importance}`` of every removable group, as :func:`prune` ranks them (before
    dividing by the marginal cost); nan marks a channel prune never removes (no importance source)."""
    _check_arguments(model, 0.5, "flops", importance, data, loss, 1, None, None, batches, DEFAULT_CHUNK)
    graph = analyze(model, ignore=ignore)
    scores, _, _ = _flat_importance(model, importance, data, loss, batches, graph)
    offsets = graph.offsets
    return {g.id: scores[offsets[g.id]:offsets[g.id + 1]] for g in graph.groups if g.removable}


def _normalised_within_groups(graph, scores, prunable):
    """Scores divided by their group's mean over its prunable channels (Torch-Pruning's mean normaliser):
    gamma and kernel norms have no common scale across layers (the BatchNorm after a layer undoes its scale),
    so only a channel's importance relative to its own group is compared globally."""
    scores = np.array(scores, np.float64)
    offsets = graph.offsets
    for group in graph.groups:
        lo, hi = offsets[group.id], offsets[group.id + 1]
        chosen = prunable[lo:hi]
        if chosen.any():
            mean = float(np.mean(np.abs(scores[lo:hi][chosen])))
            if mean > 0 and np.isfinite(mean):
                scores[lo:hi] = scores[lo:hi] / mean
    return scores


def _removable_flat(graph):
    return np.concatenate([np.full(g.size, g.removable, bool) for g in graph.groups] or [np.zeros(0, bool)])


# --- the greedy search -------------------------------------------------------------------------------------

class _Search:
    """Greedy global removal on one channel graph, priced with the regulariser's exact cost tables."""

    def __init__(self, graph, target, scores, chunk, cost_power=DEFAULT_COST_POWER,
                 min_width=_alive.DEFAULT_MIN_WIDTH, device=None, normalise=True):
        self.graph, self.target, self.chunk, self.cost_power = graph, target, chunk, cost_power
        self.calls = KernelCalls(graph)
        self.latency = latency_target(self.calls, device) if target == "latency" else None
        # a measured table that shows steps (widths padded to a multiple) has flat stretches where one channel
        # saves nothing: price channels by the saving of a step's worth of them instead
        table = getattr(self.latency, "latency_table", None)
        self.window = max(1, (table.suggested_round_to() or 1) if table is not None else 1)
        self.table = self.calls.flops if target == "flops" else self.calls.params
        self.count = count_flops if target == "flops" else count_params
        offsets = graph.offsets
        self.group_of = np.repeat(np.arange(len(graph.groups)), np.diff(offsets))
        self.prunable = _removable_flat(graph) & np.isfinite(scores)
        self.scores = _normalised_within_groups(graph, scores, self.prunable) if normalise else scores
        self.alive = np.ones(int(offsets[-1]), bool)
        self.floor = np.array([_alive.floor_width(g.size, min_width) for g in graph.groups], np.int64)
        self.last_chunk = []

    def cost(self, alive=None):
        a = (self.alive if alive is None else alive).astype(np.float64)
        if self.latency is not None:
            return float(self.latency.cost(*self.latency.sums(a)))
        return float(self.table.value(*self.calls.sums(a)))

    def exact_cost(self, alive=None):
        if self.latency is not None:    # the table's (or roofline's) prediction is the latency's exact count
            return self.cost(alive)
        return self.count(self.graph, alive=self.masks(alive))

    def masks(self, alive=None):
        alive = self.alive if alive is None else alive
        offsets = self.graph.offsets
        return {g.id: alive[offsets[g.id]:offsets[g.id + 1]].copy() for g in self.graph.groups}

    def marginal(self, alive=None):
        """What the cost loses per channel if that channel alone is removed (``KernelCalls.marginal``)."""
        alive = self.alive if alive is None else alive
        if self.latency is None:
            return self.calls.marginal(self.table, alive)
        return self.latency.marginal(alive, self.window) if self.window > 1 else self.latency.marginal(alive)

    def smallest(self):
        """Alive vector of the smallest network: unprunable channels, plus the most important channels of
        every group up to its floor (``min_width`` of its channels, at least one)."""
        alive = ~self.prunable
        for group in self.graph.groups:
            lo, hi = self.graph.offsets[group.id], self.graph.offsets[group.id + 1]
            missing = int(self.floor[group.id]) - int(alive[lo:hi].sum())
            if group.size and missing > 0:
                order = np.argsort(-np.where(alive[lo:hi], -np.inf, np.nan_to_num(self.scores[lo:hi], nan=-1.0)))
                alive[lo + order[:missing]] = True
        return alive

    def price(self, marginal, channels):
        """What removing each of ``channels`` is charged: its marginal cost to the power ``cost_power`` (only
        the ratios between channels matter: the ranking divides importance by it)."""
        return marginal[channels] ** self.cost_power

    def run(self, budget):
        """Remove channels until the table cost is <= ``budget``; returns False when stuck above it."""
        while self.cost() > budget:
            gap = self.cost() - budget
            marginal = self.marginal()
            candidates = np.flatnonzero(self.alive & self.prunable & (marginal > 0))
            if not len(candidates):
                # the tables can price a call above what count_* counts (attention's fixed terms): trust the exact count
                return self.exact_cost() <= budget
            score = self.scores[candidates] / self.price(marginal, candidates)
            order = candidates[np.lexsort((-marginal[candidates], score))]
            limit = max(1, int(math.ceil(self.chunk * len(candidates))))
            left = np.bincount(self.group_of[self.alive], minlength=len(self.graph.groups))
            taken, saved = [], 0.0
            for c in order.tolist():
                g = self.group_of[c]
                if left[g] <= self.floor[g]:
                    continue   # every group keeps its floor
                taken.append(c)
                left[g] -= 1
                saved += marginal[c]
                if len(taken) >= limit or saved >= gap:
                    break
            if not taken:
                return self.exact_cost() <= budget
            self.alive[taken] = False
            self.last_chunk = taken
        return True

    def round_down(self, step):
        """Round every pruned group's alive count down to a multiple of ``step`` (widths the device runs
        faster), removing its least important prunable channels; a group is left as it is where that would
        take it under its floor or remove a channel that cannot be pruned. Only removes, so the cost stays
        under the budget."""
        offsets = self.graph.offsets
        for group in self.graph.groups:
            lo, hi = offsets[group.id], offsets[group.id + 1]
            alive = self.alive[lo:hi]
            count = int(alive.sum())
            extra = count % step
            if not extra or count == group.size or count - extra < max(step, int(self.floor[group.id])):
                continue
            candidates = np.flatnonzero(alive & self.prunable[lo:hi])
            if len(candidates) < extra:
                continue
            weakest = candidates[np.argsort(self.scores[lo:hi][candidates])[:extra]]
            self.alive[lo + weakest] = False

    def fill(self, budget):
        """Give back channels of the last chunk while the budget allows (that chunk may overshoot by up to
        one channel's saving): the best importance per unit of cost among those that still fit, one at a
        time. Channels removed in earlier chunks ranked lower than all of these and stay removed."""
        last = np.zeros(len(self.alive), bool)
        last[self.last_chunk] = True
        for _ in range(len(self.last_chunk)):
            slack = budget - self.cost()
            marginal = self.marginal()   # for a removed channel: what adding it back costs
            fits = np.flatnonzero(last & ~self.alive & (marginal <= slack) & (marginal > 0))
            if not len(fits):
                return
            best = fits[np.argmax(self.scores[fits] / self.price(marginal, fits))]
            self.alive[best] = True
            if self.cost() > budget:   # the estimate was exact for every bilinear cost; never keep an excess
                self.alive[best] = False
                return


# --- export and compile helpers ----------------------------------------------------------------------------

def _export_with_report(model, masks, source, ignore, name, removed_values=None):
    """``(slim, ExportReport)`` of ``export(model, alive=masks)``; the one place that calls the exporter."""
    with warnings.catch_warnings():
        if all(np.all(m) for m in masks.values()):   # a budget at the model's own cost: a plain copy is asked for
            warnings.filterwarnings("ignore", message=r"export of .* removed nothing")
        return export_with_report(model, source=source, alive=masks, ignore=ignore, name=name,
                                  removed_values=removed_values)


def _price(model_or_graph):
    return count_flops(model_or_graph), count_params(model_or_graph)


def _latency(model_or_graph, device, warn=False):
    """(predicted seconds, what priced them) of a model at its own widths, for target="latency"."""
    graph = model_or_graph if not isinstance(model_or_graph, keras.Model) else analyze(model_or_graph)
    pricer = latency_target(KernelCalls(graph), device)
    full = np.ones(int(graph.offsets[-1]))
    if warn and hasattr(pricer, "model"):
        pricer.model.warn_extrapolated(full, f"the latency of the pruned '{graph.model.name}'")
    return float(pricer.cost(*pricer.sums(full))), pricer.describe()


# --- one step ----------------------------------------------------------------------------------------------

def _prune_once(model, budget, target, importance, data, loss, batches, ignore, chunk, name, budget_arg,
                cost_power, min_width, calibration_data=None, device=None, round_to=None):
    """Prune ``model`` to ``budget`` (absolute, target units): returns (slim, PruneStep)."""
    start = time.perf_counter()
    graph = analyze(model, ignore=ignore)
    scores, removal, replaced = _flat_importance(model, importance, data, loss, batches, graph)
    # calibration scores share one unit (what a unit adds to the outputs that read it), so they are compared
    # across groups as they are: a layer that matters little gives up more (FLAP's global structure). Weight
    # norms and gammas have no common scale across layers and are compared within their group.
    search = _Search(graph, target, scores, chunk, cost_power, min_width, device,
                     normalise=importance not in CALIBRATION_IMPORTANCES)
    unit = {"flops": "FLOPs", "latency": "seconds"}.get(target, "params")
    removable = _removable_flat(graph)
    never = int((removable & ~search.prunable).sum())

    def unreachable(smallest):
        why = ""
        if never:
            why = (f"; {never} of {int(removable.sum())} removable channels have no importance source for "
                   f"importance={_importance_name(importance)!r} and are never pruned (e.g. a conv with no "
                   "BatchNorm after it for 'gamma'/'taylor': try importance='l1')")
        if fixed_by_export:
            why += (f"; export keeps {fixed_by_export} channel(s) it cannot remove exactly, e.g. a residual stream "
                    "that a LayerNormalization normalises whole")
        return PruneError(f"budget={budget_arg!r} ({_format(budget, target)}) cannot be reached: the smallest network "
                          f"prune can make of '{model.name}' costs {_format(smallest, target)} (every prunable group at "
                          f"its floor, min_width={min_width!r} of its channels and at least one{why}); lower "
                          f"min_width= or raise the budget{absolute_budget_hint(budget_arg, unit)}")

    fixed_by_export = 0
    smallest = search.exact_cost(search.smallest())
    if smallest > budget:
        raise unreachable(smallest)
    target_cost = budget
    slim = report = None
    for _ in range(_EXPORT_ATTEMPTS):
        if not search.run(target_cost):
            raise unreachable(search.exact_cost())
        search.fill(target_cost)
        if round_to:
            search.round_down(round_to)
        exact = search.exact_cost()
        if exact > budget:   # the tables and count_* disagree (they should not): aim lower
            target_cost -= exact - budget
            continue
        masks = search.masks()
        _alive.check_connected(graph, masks)
        slim, report = _export_with_report(model, masks, removal, ignore, name, replaced)
        cost = _latency(slim, device)[0] if target == "latency" else BUDGET_TARGETS[target](slim)
        if cost <= budget:
            break
        # export kept channels it could not remove exactly: keep them too, and aim lower by what the slim
        # model costs beyond its masks (a bias added to hold a folded constant, say)
        kept = {}
        for gid, channel, _reason in report.kept:
            kept.setdefault(gid, set()).add(int(channel))
        for gid, channels in kept.items():
            removed = set(np.flatnonzero(~masks[gid]).tolist())
            # export kept every channel removed from this group: it cannot shrink at all (a stream that a
            # LayerNormalization normalises whole), so fix all of it rather than one guess at a time
            index = graph.offsets[gid] + np.asarray(
                sorted(range(graph.groups[gid].size) if channels >= removed else channels), np.int64)
            fixed_by_export += int(search.prunable[index].sum())
            search.alive[index] = True
            search.prunable[index] = False
        extra = cost - search.exact_cost()
        if extra > 0:
            target_cost = budget - extra
        elif not report.kept:
            target_cost = min(target_cost, search.cost()) - (cost - budget)
        # else: the same target; the kept channels are now fixed and others go instead (a residual stream
        # that a LayerNorm normalises whole, say)
        slim = None
    if slim is None:
        raise PruneError(f"could not export '{model.name}' under budget={budget_arg!r} ({_format(budget, target)}) in "
                         f"{_EXPORT_ATTEMPTS} attempts: export keeps channels the masks remove; please report "
                         "this model")
    if calibration_data is not None:   # once, on the export that held the budget
        recalibrate_batchnorm(slim, calibration_data)
    step = PruneStep(0, budget, *_price(slim), removal, int(removable.sum()), int((removable & search.alive).sum()),
                     report, seconds=time.perf_counter() - start)
    return slim, step, never


def _group_widths(graph, slim):
    """``{"producer, producer": (before, after)}`` for every removable group of the original graph (a group on
    an internal axis, attention heads, is read on that axis of its layer in the slim model)."""
    slim_graph = analyze(slim)
    widths = {}
    for group in graph.groups:
        if not group.removable or not group.size:
            continue
        after = 0
        for producer in group.producers:
            call = graph.calls_of(producer)[0]
            position = next((p for p, ids in enumerate(call.out_groups) if group.id in ids), 0)
            try:
                slim_call = slim_graph.calls_of(producer.replace("/", "__"))[0]
            except (KeyError, ValueError):
                continue
            if position < len(slim_call.out_groups) and len(slim_call.out_groups[position]):
                after = slim_graph.groups[int(slim_call.out_groups[position][0])].size
                break
        widths[", ".join(group.producers)] = (group.size, after)
    return widths


# --- entry points ------------------------------------------------------------------------------------------

def prune_with_report(model, budget=0.5, target="flops", importance="gamma", data=None, *, steps=1, fit=None,
                      compile=None, loss=None, batches=8, ignore=(), chunk=DEFAULT_CHUNK, name=None,
                      cost_power=DEFAULT_COST_POWER, min_width=_alive.DEFAULT_MIN_WIDTH, calibration_data=None,
                      device=None, round_to=None):
    """:func:`prune`, returning ``(slim model, PruneReport)``."""
    start = time.perf_counter()
    _check_arguments(model, budget, target, importance, data, loss, steps, fit, compile, batches, chunk)
    cost_power, min_width = check_cost_power(cost_power), _alive.check_min_width(min_width)
    if device is not None and target != "latency":
        _alive.warn_user(f"device= is ignored: it prices target='latency' only (this prune's target is {target!r})")
        device = None
    graph = analyze(model, ignore=ignore)
    flops_before, params_before = _price(graph)
    if target == "latency":
        own, source = _latency(graph, device)
        absolute = float(budget) * own
    else:
        own = flops_before if target == "flops" else params_before
        absolute = resolve_budget(budget, target, graph)
    compile_model = compiler_like(model, compile, "prune() with fit=", required=fit is not None)
    report = PruneReport(model.name, target, _importance_name(importance), absolute,
                         absolute / own if target == "latency" else absolute / max(own, 1),
                         flops_before, params_before)
    if target == "latency":
        report.latency_before, report.latency_source = own, source
    report.round_to = _alive.check_round_to(round_to)
    if target == "latency" and is_latency_table(device):
        device = as_table(device, "device")      # loaded once, not at every step
    if round_to is None and target == "latency" and is_latency_table(device):
        report.round_to = device.suggested_round_to()
        if report.round_to:
            report.round_to_source = "latency table"
            _alive.warn_user(f"prune to a latency budget rounds every pruned width down to a multiple of "
                             f"{report.round_to}: the latency table shows the device runs such widths faster "
                             "(pass round_to= to choose, round_to=1 not to round)")
    if absolute >= own and budget > 1:
        _alive.warn_user(f"budget={budget!r} is at or above the cost of model '{model.name}' ({own:,d} "
                         f"{report.unit}): nothing is pruned")
    reach = min(absolute, own)
    current, slim_ignore = model, tuple(ignore)
    for index in range(1, steps + 1):
        step_budget = own * (reach / own) ** (index / steps) if own and index < steps else reach
        slim, step, never = _prune_once(current, step_budget, target, importance, data, loss, batches,
                                        slim_ignore, chunk, name, budget, cost_power, min_width,
                                        calibration_data, device, report.round_to)
        step.index = index
        if index == 1:
            report.never_pruned = never
        if compile_model is not None:
            try:
                compile_model(slim)
            except Exception as err:
                if fit is not None or compile is not None:
                    raise
                _alive.warn_user(f"the slim model could not be compiled like '{model.name}' ({err}); it is "
                                 "returned uncompiled: pass compile=lambda m: m.compile(...)")
        if fit is not None:
            step.history = slim.fit(**fit).history
        report.steps.append(step)
        current = slim
        # the slim model is flat: nested layer paths became "outer__inner" names
        slim_ignore = tuple(n.replace("/", "__") for n in slim_ignore)
    report.flops_after, report.params_after = _price(current)
    if target == "latency":
        report.latency_after = _latency(current, device, warn=True)[0]
    report.groups = _group_widths(graph, current)
    _alive.warn_collapsed(f"prune of '{model.name}'", [
        f"{producers} ({before} -> {after})" for producers, (before, after) in report.groups.items()
        if _alive.is_collapsed(before, after)], min_width)
    if report.cost_after < (1 - OVERSHOOT_WARNING) * reach:
        _alive.warn_user(f"prune of '{model.name}' over-pruned: the slim model costs "
                         f"{_format(report.cost_after, target)}, {1 - report.cost_after / reach:.1%} below "
                         f"budget={budget!r} ({_format(reach, target)}): the last channel removed saved more than "
                         "was left to reach the budget "
                         "(this model's channels are coarse for it), or export removed more than asked")
    report.seconds = time.perf_counter() - start
    return current, report


def prune(model, budget=0.5, target="flops", importance="gamma", data=None, *, steps=1, fit=None, compile=None,
          loss=None, batches=8, ignore=(), chunk=DEFAULT_CHUNK, name=None, cost_power=DEFAULT_COST_POWER,
          min_width=_alive.DEFAULT_MIN_WIDTH, calibration_data=None, device=None, round_to=None):
    """Prune a trained model to a budget and return the slim ``keras.Model`` (weights copied, via export).

    Args:
        model: a built functional or Sequential model (trained). It is not modified.
        budget: a fraction of the model's own cost in (0, 1], or an absolute cost (> 1) in the target's unit.
            The slim model's exact ``count_flops`` / ``count_params`` is at most the budget; a budget below
            the smallest network prune can make (one channel per group, unprunable channels kept) raises
            :class:`PruneError` with that smallest cost.
        target: "flops", "size" (parameters) or "latency" (seconds: a fraction ``budget`` in (0, 1] of the
            model's predicted latency, priced by ``device``).
        importance: "gamma", "l1", "taylor" (needs ``data``), "wanda" or "flap" (calibration importances,
            need ``data``; flap also folds what removed channels carried on average into the next bias), or
            ``callable(graph) -> {group id: scores}``.
        data: for taylor: a tf.data.Dataset of (x, y) batches or (x, y) arrays (split into batches of 64);
            for wanda and flap the same, or inputs alone; ``batches`` of them are used.
        steps: prune to ``steps`` budgets geometric from the model's cost to ``budget``, fine-tuning with
            ``fit`` after each (``steps > 1`` needs ``fit``).
        fit: ``Model.fit`` keyword arguments for fine-tuning after every step (also with ``steps=1``).
        compile: ``callable(model)`` compiling every slim model, or a dict of ``Model.compile`` arguments; by
            default the seed's compile configuration
            (the slim model is returned compiled when the seed was compiled).
        loss: the loss for taylor (default: the compiled model's).
        ignore: layers whose output channels must never shrink.
        chunk: fraction of the remaining candidate channels removed between two recomputations of the
            marginal costs (the last chunk stops as soon as the budget is reached).
        name: the slim model's name (default: the model's).
        cost_power: channels are ranked by importance (normalised within each group) divided by their
            marginal cost to this power: 1 ranks by importance per unit of cost (thins the expensive
            high-resolution layers first), 0 by importance alone; the default 0.5 is what
            benchmarks/structure_quality.py found best (docs/structure_learning.md).
        min_width: every group keeps at least this fraction of its channels (and at least one); a result with
            a layer under 10% of its channels warns, naming it.
        calibration_data: inputs (or ``(x, y)`` batches) to re-estimate the slim model's BatchNorm statistics
            on (:func:`morphsparse.recalibrate_batchnorm`), after every step: removing channels changes the
            statistics the next layers see, and stale ones can put a good model at chance until fine-tuned.
        device: target="latency" only: a measured :class:`~morphsparse.latency.LatencyTable`
            (``ms.profile_latency``, or its JSON path): channels are priced by their marginal latency in the
            table and the slim model's predicted latency is at most the budget; without one, the roofline of a
            :class:`~morphsparse.morph.regularizers.DeviceProfile` ("v100" by default; the report's
            ``latency_source`` says which priced it).
        round_to: round every pruned group's width down to a multiple of this (widths the device runs
            faster; a group stays as it is where that would break its floor). With a latency table and no
            ``round_to``, the table's :meth:`~morphsparse.latency.LatencyTable.suggested_round_to` is used
            (with a warning); ``round_to=1`` does not round.

    See :func:`prune_with_report` for the :class:`PruneReport` too, and docs/export_and_expand.md.
    """
    slim, _ = prune_with_report(model, budget, target, importance, data, steps=steps, fit=fit, compile=compile,
                                loss=loss, batches=batches, ignore=ignore, chunk=chunk, name=name,
                                cost_power=cost_power, min_width=min_width, calibration_data=calibration_data,
                                device=device, round_to=round_to)
    return slim


__all__ = ["prune", "prune_with_report", "PruneReport", "PruneStep", "PruneError", "channel_importance",
           "TARGETS", "IMPORTANCES"]
