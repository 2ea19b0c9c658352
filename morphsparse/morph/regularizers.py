"""MorphNet's resource-weighted sparsifying regulariser for Keras 3 (reference: algorithms.md section 2.2).

Every channel group has a regularisation vector R (|gamma| of the BatchNorm after each producer, or a group-lasso
norm of its kernel; :mod:`morphsparse.morph.alive` finds them) and an alive mask (R > threshold). For every layer
call that multiplies by weights, the cost of the call is a bilinear function of the number of alive entries on
its input and output channel axes, A_in and A_out::

    cost = c_io * A_in * A_out + c_i * A_in + c_o * A_out + c_0

The coefficients are read off the layer's own handler (``handler.macs`` / ``handler.params``), so the cost the
regulariser targets is exactly what :func:`morphsparse.count_flops` and :func:`morphsparse.count_params` count.
The regularisation term replaces each alive count by the sum of R over the same entries, *one side at a time*::

    term = c_io * (A_in * R_out + A_out * R_in) + c_i * R_in + c_o * R_out

with A_in and A_out held constant, so the gradient on a channel's R is its marginal cost: how much the target
would drop if that channel died. For Conv2D this is MorphNet's ``coeff * (A_in * R_out + A_out * R_in)`` with
``coeff = 2 * H_out * W_out * kh * kw`` (FLOPs) or ``kh * kw`` plus the bias (size). DepthwiseConv follows
MorphNet: ``term = coeff * (R_in + R_out)``, its input and output being the same channels.

Channels of pinned groups (network inputs and outputs, ``ignore=`` layers) and channels with no regularisation
source are not regularised: R = 0 in the term, and they always count as alive.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from morphsparse.checks import check_cost_power
from morphsparse.cost_tables import COEFFICIENTS, Bilinear, KernelCalls, UnsupportedLayerError
from morphsparse.costs import BUDGET_TARGETS, count_flops, count_params
from morphsparse.graph import analyze
from morphsparse.latency import LatencyModel, LatencyTable, as_table
from morphsparse.morph import alive as _alive
import morphsparse.morph.budget as _budget

TARGETS = tuple(BUDGET_TARGETS) + ("latency", "activations")

#: strength = DEFAULT_STRENGTH_MULTIPLIER / initial cost. With |gamma| ~ 1 at initialisation the term is about
#: twice the cost, so the regularisation loss starts near 2 x multiplier: comparable to a classifier's
#: cross-entropy. See docs/structure_learning.md for how to scan it.
DEFAULT_STRENGTH_MULTIPLIER = 1.0


# --- device profiles for the latency target ----------------------------------------------------------------

@dataclass(frozen=True)
class DeviceProfile:
    """A roofline: a layer takes max(FLOPs / peak_flops, bytes / memory_bandwidth) seconds."""

    name: str
    peak_flops: float            # FLOP/s
    memory_bandwidth: float      # bytes/s
    bytes_per_element: int = 4   # float32 weights and activations

    def __post_init__(self):
        if not (self.peak_flops > 0 and self.memory_bandwidth > 0 and self.bytes_per_element > 0):
            raise ValueError(f"device profile {self.name!r}: peak_flops, memory_bandwidth and bytes_per_element "
                             "must be positive")


#: Nominal fp32 peak compute and memory bandwidth from the vendors' data sheets. Only the ratio of the two
#: decides which layers are memory-bound; pass your own DeviceProfile for a measured machine.
DEVICE_PROFILES = {
    "p100": DeviceProfile("p100", 9.3e12, 732e9),
    "v100": DeviceProfile("v100", 15.7e12, 900e9),
    "t4": DeviceProfile("t4", 8.1e12, 320e9),
    "a100": DeviceProfile("a100", 19.5e12, 1555e9),
    "h100": DeviceProfile("h100", 67e12, 3350e9),
    # A two-core AVX2 laptop/server share: 2 cores x 3 GHz x 32 fp32 FLOP/cycle, ~20 GB/s.
    "cpu": DeviceProfile("cpu", 192e9, 20e9),
}


def device_profile(device) -> DeviceProfile:
    if isinstance(device, DeviceProfile):
        return device
    if isinstance(device, dict):        # as MorphOptimizer's config saves a DeviceProfile
        return DeviceProfile(**device)
    if isinstance(device, str) and device.lower() in DEVICE_PROFILES:
        return DEVICE_PROFILES[device.lower()]
    raise ValueError(f"unknown device {device!r}: use one of {sorted(DEVICE_PROFILES)} or a "
                     "morphsparse.morph.regularizers.DeviceProfile(name, peak_flops, memory_bandwidth)")


# --- targets -------------------------------------------------------------------------------------------------

class Target:
    """A resource as a function of the alive counts (``cost``) and its regularisation term (``term``)."""

    name = "?"
    unit = ""
    #: the kernel calls' cost table this target is ("flops" or "params"), or None when it has none
    table = None

    def __init__(self, kernel_calls):
        self.k = kernel_calls

    def sums(self, vector, xp=np):
        """(per-row input sums, per-row output sums) of a flat per-channel vector: what :meth:`cost` and
        :meth:`term` take (the kernel calls' rows, unless the target prices other rows)."""
        return self.k.sums(vector, xp)

    def marginal(self, alive):
        """What the cost loses per channel if that channel alone is removed, at the flat ``alive``; None for a
        target that cannot say."""
        return None

    def describe(self):
        return f"{self.name} ({self.unit})"

    def cost(self, a_in, a_out, xp=np):
        raise NotImplementedError

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        raise NotImplementedError


class _CostTableTarget(Target):
    """A target whose cost and term come straight from one of the kernel calls' cost tables."""


    def cost(self, a_in, a_out, xp=np):
        return getattr(self.k, self.table).value(a_in, a_out, xp)

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        return getattr(self.k, self.table).term(a_in, a_out, r_in, r_out, xp)

    def marginal(self, alive):
        return self.k.marginal(getattr(self.k, self.table), alive)


class FlopsTarget(_CostTableTarget):
    name, unit, table = "flops", "FLOPs", "flops"


class SizeTarget(_CostTableTarget):
    """Parameter count, as count_params counts it: kernels (kh*kw*A_in*A_out), biases and BatchNorm."""

    name, unit, table = "size", "parameters", "params"


class ActivationsTarget(Target):
    """Alive output channels of every kernel layer (cost = A_out, term = R_out), as in MorphNet."""

    name, unit = "activations", "output channels"

    def cost(self, a_in, a_out, xp=np):
        return xp.sum(self.k.kernel_mask * a_out)

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        return xp.sum(self.k.kernel_mask * r_out)


class LatencyTarget(Target):
    """Roofline latency in seconds: per call max(FLOPs / peak, bytes / bandwidth). Bytes are the call's weights
    (read at every call) plus its input and output activations. Only the binding side is regularised."""

    name, unit = "latency", "seconds"

    def __init__(self, kernel_calls, device):
        super().__init__(kernel_calls)
        self.device = device_profile(device)
        k, bpe = kernel_calls, self.device.bytes_per_element
        weights = self._weights_of_every_call(k)
        activations = Bilinear(len(k.calls))
        activations.ci, activations.co = k.in_positions.copy(), k.out_positions.copy()
        self.compute = k.flops.scaled(1.0 / self.device.peak_flops)
        # Only layers that compute are timed (as in MorphNet); BatchNorm and friends are left out.
        self.memory = weights.plus(activations).scaled(bpe / self.device.memory_bandwidth * k.has_macs)

    @staticmethod
    def _weights_of_every_call(k):
        # params() counts a shared layer's weights at its first call only; a call reads them every time.
        weights = Bilinear(len(k.calls))
        by_layer = {(id(call.layer), k.terms[j]): j for j, call in enumerate(k.calls) if call.first_call}
        for j, call in enumerate(k.calls):
            src = by_layer.get((id(call.layer), k.terms[j]), j)
            for name in COEFFICIENTS:
                getattr(weights, name)[j] = getattr(k.params, name)[src]
        return weights

    def compute_bound(self, a_in, a_out):
        return self.compute.per_call(a_in, a_out) >= self.memory.per_call(a_in, a_out)

    def cost(self, a_in, a_out, xp=np):
        return xp.sum(xp.maximum(self.compute.per_call(a_in, a_out), self.memory.per_call(a_in, a_out)))

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        bound = self.compute_bound(a_in, a_out)
        return xp.sum(xp.where(bound, self.compute.per_call_term(a_in, a_out, r_in, r_out),
                               self.memory.per_call_term(a_in, a_out, r_in, r_out)))

    def marginal(self, alive):
        """The marginal cost of the binding side of each call's roofline at ``alive``."""
        bound = self.compute_bound(*self.k.sums(np.asarray(alive, np.float64)))
        binding = Bilinear(len(bound))
        for name in COEFFICIENTS:
            setattr(binding, name, np.where(bound, getattr(self.compute, name), getattr(self.memory, name)))
        return self.k.marginal(binding, alive)

    def describe(self):
        return (f"latency from the roofline of device {self.device.name!r} (data-sheet peak FLOP/s and memory "
                "bandwidth, not measured; pass device=ms.profile_latency(model) for a measured table)")


class MeasuredLatencyTarget(Target):
    """Latency in seconds predicted by a measured :class:`~morphsparse.latency.LatencyTable`: the sum of every
    timed call's entry at its widths plus the table's overhead. Its rows are the timed calls (not the kernel
    calls' rows): BatchNorm, activations and pooling take time too. The term's gradient on a channel's R is
    the channel's marginal latency, the slope of the table at the current widths."""

    name, unit = "latency", "seconds"

    def __init__(self, kernel_calls, table, used_only=False):
        super().__init__(kernel_calls)
        self.table = None           # no kernel-call cost table: see sums()
        self.latency_table = table
        self.model = LatencyModel(kernel_calls.graph, table, used_only=used_only)

    def sums(self, vector, xp=np):
        return self.model.sums(vector, xp)

    def cost(self, a_in, a_out, xp=np):
        return self.model.cost(a_in, a_out, xp)

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        return self.model.term(a_in, a_out, r_in, r_out, xp)

    def marginal(self, alive, window=1):
        return self.model.marginal(alive, window)

    def describe(self):
        return f"latency from the {self.latency_table.describe()}"


_log = logging.getLogger("morphsparse")


def latency_target(kernel_calls, device, used_only=False):
    """The latency target on ``device``: a measured :class:`MeasuredLatencyTarget` for a latency table (or its
    dict or JSON path), else the roofline :class:`LatencyTarget` of a :class:`DeviceProfile` (a name, a
    profile, or None for :data:`DEFAULT_DEVICE`). Logs which one prices the latency."""
    target = (MeasuredLatencyTarget(kernel_calls, as_table(device, "device"), used_only=used_only)
              if is_latency_table(device) else
              LatencyTarget(kernel_calls, DEFAULT_DEVICE if device is None else device))
    _log.info("target='latency': %s", target.describe())
    return target


def is_latency_table(device):
    """True for a measured latency table, its dict or the path of its JSON (a ``device=`` that is no roofline)."""
    return isinstance(device, LatencyTable) or (isinstance(device, dict) and "entries" in device) or (
        isinstance(device, (str, os.PathLike)) and str(device).lower().endswith(".json"))


def _make_target(name, kernel_calls, device):
    """The :class:`Target` called ``name`` (already checked by :func:`check_arguments`)."""
    if name == "latency":
        return latency_target(kernel_calls, device)
    return {"flops": FlopsTarget, "size": SizeTarget, "activations": ActivationsTarget}[name](kernel_calls)


# --- the regulariser ----------------------------------------------------------------------------------------

#: the latency target's device when none is given
DEFAULT_DEVICE = "v100"


def check_arguments(target="flops", source="gamma", threshold=_alive.DEFAULT_THRESHOLD, strength=None,
                    strength_multiplier=DEFAULT_STRENGTH_MULTIPLIER, l1_fraction=0.0, device=None):
    """Check MorphRegularizer's arguments before any model work (``ms.cycle`` calls it too, so a typo fails
    before training rather than after a shrink phase). Errors name the argument: TypeError for a wrong type,
    ValueError for a value out of range. Returns (threshold, strength, strength_multiplier, l1_fraction,
    device) resolved: numbers as floats, ``device`` a :class:`DeviceProfile` for the latency target (the
    :data:`DEFAULT_DEVICE` when None) and None otherwise; a device given with another target warns."""
    if not isinstance(target, str):
        raise TypeError(f"target must be a string, one of {TARGETS}; got {type(target).__name__} {target!r}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    _alive._check_source(source)
    if source == "zeros":
        raise ValueError("source='zeros' only reads which channels are already all zero (ms.export after sparse "
                         "training); a regulariser needs 'gamma' or 'group_lasso'")
    threshold = _alive.check_threshold(threshold)
    l1_fraction = _alive.check_l1_fraction(l1_fraction, source)
    if strength is not None:
        strength = _alive.real_number("strength", strength)
        if not (np.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be a finite number >= 0 (or None for strength_multiplier / "
                             f"initial cost), got {strength!r}")
    strength_multiplier = _alive.real_number("strength_multiplier", strength_multiplier)
    if not (np.isfinite(strength_multiplier) and strength_multiplier > 0):
        raise ValueError(f"strength_multiplier must be a finite number > 0, got {strength_multiplier!r}")
    if device is not None and not isinstance(device, (str, os.PathLike, DeviceProfile, dict, LatencyTable)):
        raise TypeError(f"device must be a measured LatencyTable (ms.profile_latency, or the path of its JSON), a "
                        f"name in {sorted(DEVICE_PROFILES)} or a DeviceProfile, got {type(device).__name__} "
                        f"{device!r}")
    if target != "latency":
        if device is not None:
            _alive.warn_user(f"device={device!r} is ignored: it only applies to target='latency' (this "
                             f"regulariser's target is {target!r}); drop device= or use target='latency'")
        return threshold, strength, strength_multiplier, l1_fraction, None
    if is_latency_table(device):
        return threshold, strength, strength_multiplier, l1_fraction, as_table(device, "device")
    return threshold, strength, strength_multiplier, l1_fraction, device_profile(
        DEFAULT_DEVICE if device is None else device)


class MorphRegularizer:
    """MorphNet's resource-weighted group-sparsity regulariser for a Keras 3 functional or Sequential model.

    Args:
        model: the built model to regularise (its channel graph is read once, here).
        target: "flops", "size" (parameters), "latency" (seconds: measured with a latency table as ``device``,
            else the roofline of a device profile) or "activations".
        source: "gamma" (|gamma| of the BatchNorm after each conv/dense) or "group_lasso" (kernel norms).
        threshold: a channel is alive when its R exceeds this (the same value you pass to ``ms.export``).
        strength: weight of the term in the loss; by default ``strength_multiplier / initial_cost``.
        strength_multiplier: see :data:`DEFAULT_STRENGTH_MULTIPLIER` and docs/structure_learning.md.
        budget: instead of a strength, the cost to reach: a fraction of the seed's cost in (0, 1], or an
            absolute count > 1 in the target's unit. The strength is then controlled during training
            (:mod:`morphsparse.morph.budget`); not with ``strength`` / ``strength_multiplier``.
        steps: with ``budget``: the number of structure-learning steps (required, as a learning-rate schedule
            needs its decay steps). Plan about 4 / learning_rate steps with Adam (400 at 1e-2): fewer cannot
            land the budget, and the MorphOptimizer warns when it is built if the plan is under half of that.
        l1_fraction: group-lasso mix of L1 (mean |w|) into the L2 norm (sqrt(mean w^2)); 0 by default.
        device: latency target only: a measured :class:`~morphsparse.latency.LatencyTable`
            (``ms.profile_latency``, or the path of its JSON): the latency is its prediction and each channel is
            charged its marginal latency; or a roofline, a name in :data:`DEVICE_PROFILES` or a
            :class:`DeviceProfile`; None (the default) means the roofline of "v100". :attr:`latency_source` (and
            the summary) says which is used. Passing one with another target warns, as it would have no effect.
        ignore: layers whose output channels must not shrink (pinned, never regularised).
        cost_power: each channel is charged its marginal cost (at full width) to this power: 1 (the default)
            is MorphNet's exact marginal cost, 0 charges every channel alike; with a budget, the controller
            lands the real cost either way (docs/structure_learning.md, "When a learned structure helps").

    For ``fit``, compile with ``MorphOptimizer(inner_optimizer, reg)`` (with a budget,
    ``steps`` is required). In a custom loop, apply gradients with that optimizer too, or add ``reg.loss()`` to
    your loss (with a budget, also call ``reg.update()`` once per step).
    """

    def __init__(self, model, target="flops", source="gamma", threshold=_alive.DEFAULT_THRESHOLD, strength=None,
                 strength_multiplier=None, l1_fraction=0.0, device=None, ignore=(), budget=None, steps=None,
                 cost_power=1.0):
        _budget.check_arguments(budget, strength, strength_multiplier, steps)
        self.cost_power = check_cost_power(cost_power)
        # what MorphOptimizer saves in its config, to rebuild this regulariser on another instance of the model
        self.arguments = {"target": target, "source": source, "threshold": threshold, "strength": strength,
                          "strength_multiplier": strength_multiplier, "l1_fraction": l1_fraction,
                          "device": (dataclasses.asdict(device) if isinstance(device, DeviceProfile) else
                                     device.to_dict() if isinstance(device, LatencyTable) else device),
                          "ignore": list(ignore), "budget": budget, "steps": steps, "cost_power": cost_power}
        threshold, strength, strength_multiplier, l1_fraction, device = check_arguments(
            target, source, threshold, strength,
            DEFAULT_STRENGTH_MULTIPLIER if strength_multiplier is None else strength_multiplier, l1_fraction, device)
        self.model = model
        self.arguments.update(threshold=threshold, l1_fraction=l1_fraction, cost_power=self.cost_power)
        self.target_name, self.source, self.threshold, self.l1_fraction = target, source, threshold, l1_fraction
        self.graph = analyze(model, ignore=ignore)
        self._check_layers_supported()
        self.sources = _alive.find_sources(self.graph, source)
        self._index_sources()
        self._keep_one = _alive.keep_one_groups(self.graph)
        self.kernel_calls = KernelCalls(self.graph)
        self.target = _make_target(target, self.kernel_calls, device)
        # Raises AliveError for a threshold that kills a group which cannot be removed.
        _alive.alive_masks(self.graph, source, threshold, l1_fraction, check=True)
        full = np.ones(self.kernel_calls.n_channels)
        self.initial_cost = float(self.target.cost(*self.target.sums(full)))
        self._price_weights = self._cost_power_weights()
        self.controller = None
        if budget is not None:
            self.controller = _budget.BudgetController(self, budget, steps)
        elif strength is None:
            strength = strength_multiplier / self.initial_cost
        self._strength = None if strength is None else float(strength)

    @property
    def strength(self):
        """Weight of the term in the loss (with a budget: the controller's current value)."""
        return self.controller.current_strength if self.controller is not None else self._strength

    @strength.setter
    def strength(self, value):
        if self.controller is not None:
            raise AttributeError("strength is set by the budget controller (MorphRegularizer(budget=...))")
        self._strength = float(value)

    def _strength_tensor(self):
        return self.controller.strength() if self.controller is not None else self._strength

    # --- construction helpers ----------------------------------------------------------------------------
    def _check_layers_supported(self):
        """A producer whose handler cannot say which weights feed each output channel (a custom handler with
        no ``kernel_matrix``) cannot be regularised; refuse rather than silently leave it out."""
        for call in self.graph.calls:
            if call.handler.produces_channels and not call.handler.kernel_layer:
                groups = np.unique(np.concatenate(call.out_groups)) if call.out_groups else []
                if any(self.graph.groups[int(g)].removable for g in groups):
                    raise UnsupportedLayerError(
                        f"layer '{call.path}' ({type(call.layer).__name__}) creates removable channels but its "
                        f"handler {type(call.handler).__name__} has no kernel_matrix(), so MorphRegularizer "
                        "cannot tell which weights feed each channel. Register a handler that subclasses "
                        "morphsparse.handlers.Dense or Conv, or pin the layer with ignore=[...].")

    def _cost_power_weights(self):
        """Per-channel factors turning each channel's price (its marginal cost at full width) into that cost to
        the power ``cost_power``, scaled so that the term starts at the same value; None at power 1."""
        if self.cost_power == 1.0:
            return None
        ones = tf.Variable(np.ones(self.kernel_calls.n_channels, np.float32))
        a_in, a_out = self.target.sums(np.ones(self.kernel_calls.n_channels), xp=np)
        with tf.GradientTape() as tape:
            r_in, r_out = self.target.sums(ones, xp=keras.ops)
            term = self.target.term(a_in.astype(np.float32), a_out.astype(np.float32), r_in, r_out, xp=keras.ops)
        marginal = np.asarray(tf.convert_to_tensor(tape.gradient(term, ones)), np.float64)
        priced = self.regularized & (marginal > 0)
        if not priced.any():
            return None
        weights = np.ones_like(marginal)
        m = marginal[priced]
        weights[priced] = (m / m.mean()) ** (self.cost_power - 1.0)
        weights[priced] *= m.sum() / (weights[priced] * m).sum()
        return tf.constant(weights, tf.float32)

    def _ratio_name(self):
        return {"flops": "alive_flops_ratio", "size": "alive_params_ratio"}.get(
            self.target_name, f"alive_{self.target_name}_ratio")

    def _index_sources(self):
        """Flat channel index of every entry of every source, and which channels are regularised: those of
        removable groups that at least one source covers."""
        offsets = self.graph.offsets
        removable = {g.id for g in self.graph.groups if g.removable}
        self._source_index = [offsets[s.group] + np.asarray(s.channels) for s in self.sources]
        covered = np.zeros(int(offsets[-1]), dtype=bool)
        for s, idx in zip(self.sources, self._source_index):
            if s.group in removable:
                covered[idx] = True
        self.regularized = covered
        if not covered.any():
            hint = ("source='gamma' needs a BatchNormalization(scale=True) after the Conv/Dense layers; use "
                    "source='group_lasso' for networks without one" if self.source == "gamma" else
                    "no removable group has a kernel layer producing it")
            raise ValueError(f"MorphRegularizer found no channel to regularise in model '{self.model.name}': {hint}.")
        unregularized = [g.id for g in self.graph.groups if g.removable and not covered[
            offsets[g.id]:offsets[g.id + 1]].any()]
        if unregularized:
            warnings.warn(f"channel groups {unregularized} of model '{self.model.name}' have no {self.source} "
                          "source (e.g. a conv with no BatchNorm after it) and will not shrink", stacklevel=3)

    # --- differentiable pieces ----------------------------------------------------------------------------
    def vector(self):
        """R for every channel of every group, concatenated in group order (``graph.offsets``): a
        differentiable tensor, 0 where a channel is not regularised."""
        values = [keras.ops.reshape(s.values(self.l1_fraction, xp=keras.ops), (-1,)) for s in self.sources]
        values = tf.concat([tf.cast(v, tf.float32) for v in values], axis=0)
        index = tf.constant(np.concatenate(self._source_index), dtype=tf.int32)
        r = tf.math.unsorted_segment_max(values, index, self.kernel_calls.n_channels)
        return tf.where(tf.constant(self.regularized), r, tf.zeros_like(r))

    def _alive_vector(self, r):
        """1 for alive channels, 0 for dead ones; a constant in the gradient (the marginal-cost rule). A group
        that must keep a channel (an attention layer's heads) keeps its largest R when all fall below the
        threshold, as :func:`morphsparse.morph.alive.alive_masks` does, so the cost steered is exportable."""
        alive = tf.logical_or(tf.logical_not(tf.constant(self.regularized)), r > self.threshold)
        if self._keep_one:
            offsets = self.graph._offsets
            for gid in self._keep_one:
                lo, hi = int(offsets[gid]), int(offsets[gid + 1])
                segment = r[lo:hi]
                strongest = tf.one_hot(tf.argmax(segment), hi - lo, on_value=True, off_value=False)
                none = tf.logical_not(tf.reduce_any(alive[lo:hi]))
                kept = tf.logical_or(alive[lo:hi], tf.logical_and(none, strongest))
                alive = tf.concat([alive[:lo], kept, alive[hi:]], axis=0)
        return tf.stop_gradient(tf.cast(alive, r.dtype))

    def _state(self, r=None):
        r = self.vector() if r is None else r
        a = self._alive_vector(r)
        a_in, a_out = self.target.sums(a, xp=keras.ops)
        priced = r if self._price_weights is None else r * self._price_weights
        r_in, r_out = self.target.sums(priced, xp=keras.ops)
        return a, a_in, a_out, r_in, r_out

    def term(self, r=None):
        """The unweighted regularisation term (differentiable; its gradient is the marginal cost). ``r``: a
        flat per-channel vector to evaluate it at instead of the model's current :meth:`vector`."""
        _, a_in, a_out, r_in, r_out = self._state(r)
        return self.target.term(a_in, a_out, r_in, r_out, xp=keras.ops)

    def loss(self):
        """``strength * term``: add this to the task loss in a custom training loop. Under a tf.distribute
        strategy, pass it through ``tf.nn.scale_regularization_loss`` as for any regularisation loss. With a
        budget, call :meth:`update` once per training step as well."""
        return self._strength_tensor() * self.term()

    def update(self):
        """Budget only: advance the strength controller by one training step (tf ops, works inside a
        ``tf.function``). Returns the alive cost as a fraction of the seed's."""
        if self.controller is None:
            raise ValueError("update() drives the budget controller: construct MorphRegularizer(budget=...)")
        return self.controller.update()

    def _loss_parts(self):
        """``(strength x term, R, alive, alive inputs, alive outputs)`` at the current weights: what a training
        step differentiates and then hands to :meth:`_loss_and_costs`, so R is read once per step."""
        r = self.vector()
        a, a_in, a_out, r_in, r_out = self._state(r)
        loss = self._strength_tensor() * self.target.term(a_in, a_out, r_in, r_out, xp=keras.ops)
        return loss, r, a, a_in, a_out

    def _loss_and_costs(self, training=False, budget_logs=False, parts=None):
        """(regularisation loss, alive FLOPs, alive parameters), computed in-graph for fit's logs. With a
        budget and ``training``, also advances the controller (after the loss has read the strength);
        ``budget_logs`` appends (strength after the step, strength multiplier = strength x initial cost,
        alive cost ratio). ``parts``: :meth:`_loss_parts` of this step, when already computed."""
        loss, r, a, a_in, a_out = self._loss_parts() if parts is None else parts
        if isinstance(self.target, MeasuredLatencyTarget):   # its rows are not the kernel calls'
            a_in, a_out = self.kernel_calls.sums(a, xp=keras.ops)
        a_in64, a_out64 = tf.cast(a_in, tf.float64), tf.cast(a_out, tf.float64)
        flops = self.kernel_calls.flops.value(a_in64, a_out64, xp=keras.ops)
        params = self.kernel_calls.params.value(a_in64, a_out64, xp=keras.ops)
        if self.controller is None:
            return loss, flops, params
        if training:
            with tf.control_dependencies([loss]):
                ratio = self.controller.update(r, a)
        else:
            ratio = self.controller.cost_ratio(a)
        if not budget_logs:
            return loss, flops, params
        with tf.control_dependencies([ratio]):
            strength = self.controller.strength()
        # the multiplier the docs reason with (strength x initial cost), logged next to the absolute strength
        multiplier = strength * np.float32(self.initial_cost)
        return loss, flops, params, strength, multiplier, ratio


    # --- numpy reports ---------------------------------------------------------------------------------------
    def alive_masks(self, check=False):
        """``{group id: boolean mask}`` at the current weights (as ``ms.export`` will see them)."""
        return _alive.alive_masks(self.graph, self.source, self.threshold, self.l1_fraction, check=check)

    def alive_counts(self):
        return _alive.alive_counts(self.alive_masks())

    def cost(self, masks=None):
        """The target's cost at the current alive channels (or at ``masks``), in :attr:`unit`."""
        flat = _alive.flat_mask(self.graph, masks if masks is not None else self.alive_masks()).astype(float)
        return float(self.target.cost(*self.target.sums(flat)))

    @property
    def unit(self):
        return self.target.unit

    def alive_flops(self, masks=None):
        return count_flops(self.graph, alive=masks if masks is not None else self.alive_masks())

    def alive_params(self, masks=None):
        return count_params(self.graph, alive=masks if masks is not None else self.alive_masks())

    def summary(self):
        masks = self.alive_masks()
        removable = [g for g in self.graph.groups if g.removable]
        alive = sum(int(masks[g.id].sum()) for g in removable)
        total = sum(g.size for g in removable)
        return (f"MorphRegularizer(target={self.target_name!r}, source={self.source!r}, threshold={self.threshold:g}, "
                f"strength={self.strength:.3g}): cost {self.cost(masks):.4g} of {self.initial_cost:.4g} {self.unit}, "
                f"{alive}/{total} removable channels alive, {self.alive_flops(masks):,d} FLOPs, "
                f"{self.alive_params(masks):,d} params"
                + (f"; {self.target.describe()}" if self.target_name == "latency" else ""))

    @property
    def latency_source(self):
        """For the latency target: what prices it (the measured table, or the roofline of which device)."""
        return self.target.describe() if self.target_name == "latency" else None

    def __repr__(self):
        return (f"<MorphRegularizer target={self.target_name!r} source={self.source!r} threshold={self.threshold:g} "
                f"strength={self.strength:.3g}>")

    # --- fit integration (deprecated) ----------------------------------------------------------------------------
    def attach(self, model=None, steps=None, resume_from=None):
        """Deprecated, removed in the next release: compile with ``optimizer=ms.MorphOptimizer(inner, reg)``.

        Wraps ``model``'s compiled optimizer in a :class:`~morphsparse.morph.optimizer.MorphOptimizer` (so the
        model must be compiled first) and returns the model. ``steps``: with a budget, the number of
        structure-learning steps, if not given to the regulariser. ``resume_from`` is no longer supported: a
        model compiled with a MorphOptimizer saves the controller's state with it."""
        warnings.warn("MorphRegularizer.attach(model) is deprecated and will be removed in the next release: "
                      "compile with model.compile(optimizer=ms.MorphOptimizer(keras.optimizers.Adam(...), reg), "
                      "...) (or ms.morph_optimizer(model, optimizer, ...)), which saves and resumes with the model",
                      DeprecationWarning, stacklevel=2)
        model = self.model if model is None else model
        if [id(w) for w in model.weights] != [id(w) for w in self.model.weights]:
            raise ValueError("attach() takes the model this regulariser was built for (or one sharing its weights)")
        if resume_from is not None:
            raise ValueError("attach(resume_from=...) is no longer supported: compile with ms.MorphOptimizer(inner, "
                             "reg), whose state model.save writes; load the file with keras.saving.load_model and "
                             "call model.optimizer.bind(model) to go on")
        if steps is not None:
            if self.controller is None:
                raise ValueError("attach(steps=...) is the number of structure-learning steps of a budget: construct "
                                 "MorphRegularizer(budget=...)")
            self.controller.set_steps(steps)
            self.arguments["steps"] = self.controller.steps
        inner = getattr(model, "optimizer", None)
        if inner is None:
            raise ValueError(f"attach() wraps the compiled optimizer of model '{model.name}', which is not compiled: "
                             "compile it first, or compile with optimizer=ms.MorphOptimizer(inner, reg)")
        # the optimizer's module imports this one: the class is taken from Keras's registry, where
        # `import morphsparse` put it
        morph_optimizer = keras.saving.get_registered_object("morphsparse>MorphOptimizer")
        model.optimizer = morph_optimizer(inner, self)
        model.make_train_function(force=True)
        return model

    @staticmethod
    def detach(model):
        """Deprecated with :meth:`attach`: compile the model with its inner optimizer instead. Unwraps a
        MorphOptimizer that :meth:`attach` put around the compiled optimizer; returns the model."""
        warnings.warn("MorphRegularizer.detach(model) is deprecated with attach() and will be removed in the next "
                      "release: compile the model with the optimizer you want", DeprecationWarning, stacklevel=2)
        morph_optimizer = keras.saving.get_registered_object("morphsparse>MorphOptimizer")
        if isinstance(getattr(model, "optimizer", None), morph_optimizer):
            model.optimizer = model.optimizer.inner_optimizer
            model.make_train_function(force=True)
        return model


__all__ = ["MorphRegularizer", "DeviceProfile", "DEVICE_PROFILES", "TARGETS", "DEFAULT_STRENGTH_MULTIPLIER",
           "DEFAULT_DEVICE", "UnsupportedLayerError", "device_profile", "check_arguments"]
