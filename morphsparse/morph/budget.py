"""A cost budget for :class:`~morphsparse.morph.regularizers.MorphRegularizer`: the strength is controlled.

``MorphRegularizer(model, target="flops", budget=0.5)`` replaces the hand-scanned ``strength_multiplier`` by a
feedback controller that runs inside the compiled train step (tf ops on non-trainable variables, no Python
per batch). With N planned structure-learning steps it steers the alive cost along a target that falls from
the seed's cost to the budget over the first 80% of the steps (a half cosine) and holds it there.

**The signal.** A channel dies only once the optimiser has moved its regularisation value R from ~1 to the
threshold (~1 / learning_rate steps with Adam), so the alive cost lags the strength by hundreds of steps and
an integral controller on it winds up and overshoots; and deaths are nearly irreversible (a dead channel's
ReLU passes no gradient). The controller therefore watches where channels are *heading*: it keeps an
exponential moving average v of every channel's per-step change of R (window W = 5% of N, 5 to 200 steps)
and counts as dead the channels that are dead now or that, extrapolated h = max(6% of N, W) steps ahead,
cross the threshold: ``R + h * min(v, 0) <= threshold``. This *projected* cost P responds to a change of
strength within the window, tens of steps instead of hundreds.

**The update** (a proportional-integral controller on the log of the strength multiplier, i.e. dual ascent
on the Lagrange multiplier lambda = exp(u) of the constraint "projected cost <= target", in log space)::

    e   = P - target(t + h)                             (approach: t <= 0.8 N)
    e   = max(P - budget, C - budget - 0.02)            (hold: also the alive cost C, with a 2-point dead band)
    I  += min(257 e, 31) / N  if e > 0  else  max(871 e, -12) / N      (rises x 0.3 in the hold phase)
    u   = I + 6 (P - target(t + h))     strength = exp(u) / initial_cost,   I, u within [log 1e-4, log 1e4]

Braking is faster than pushing (871 vs 257) because overshoot cannot be undone; the per-step clip bounds how
far lambda can wind up while the network has not responded yet; the proportional term brakes at once when a
wave of channels heads for the threshold and lets go as soon as it has passed. Gains scale with 1/N, so the
behaviour is the same in units of the run length. The constants came from a random search on a toy model of
the dynamics (channels pushed down by the strength and up by a task gradient that grows as they shrink, under
Adam or SGD with momentum) and were then checked on real networks (docs/structure_learning.md).

**State** (u, the integral, the step count, the planned steps, R and v per channel): variables of the
``MorphOptimizer`` (:mod:`morphsparse.morph.optimizer`) that trains with the controller, which Keras saves and
restores with it (``model.save``, ``save_weights``/``load_weights``, ModelCheckpoint, BackupAndRestore). Until an
optimizer takes it over (a custom loop calling :meth:`BudgetController.update`), plain variables of the
controller (:class:`ControllerState`), not saved with the model.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from morphsparse.checks import absolute_budget_hint, check_budget
from morphsparse.morph.alive import flat_mask

#: The controller's variables, in the order the optimizer makes (and Keras saves) them.
STATE_NAMES = ("log_multiplier", "integral", "step", "total_steps", "previous_r", "velocity")
#: A final cost more than this (as a fraction of the seed's cost) from the budget is reported at the end.
LANDING_TOLERANCE = 0.03


@dataclass(frozen=True)
class ControllerSettings:
    """Tuning of the budget controller (see the module doc; the defaults are what docs/structure_learning.md
    measured). Step sizes are per total steps N: the integral moves by at most ``up_clip / N`` per step."""

    approach: float = 0.8           # fraction of the N steps over which the target falls to the budget
    horizon: float = 0.06           # look-ahead of the projected cost, as a fraction of N (at least the window)
    velocity_window: float = 0.05   # EMA window of each channel's velocity, as a fraction of N ...
    min_window: float = 5.0         # ... at least this many steps
    max_window: float = 200.0       # ... at most this many
    kp: float = 6.0                 # proportional gain (nats of strength per unit of cost-ratio error)
    ki_up: float = 257.0            # integral gain while the cost is above target ...
    ki_down: float = 871.0          # ... and while it is below (braking is faster: deaths are irreversible)
    up_clip: float = 31.0           # clip of the integral's per-step rise ...
    down_clip: float = 12.0         # ... and fall
    hold_margin: float = 0.02       # in the hold phase, also push when the alive cost exceeds budget + this
    hold_gain: float = 0.3          # ... with the integral's rises scaled by this
    initial_multiplier: float = 1.0
    min_multiplier: float = 1e-4
    max_multiplier: float = 1e4


class ControllerState:
    """The controller's variables (:data:`STATE_NAMES`): a MorphOptimizer's, or fresh ones (:meth:`fresh`) for a
    controller no optimizer trains with (a custom loop calling :meth:`BudgetController.update`)."""

    def __init__(self, variables):
        for name, variable in zip(STATE_NAMES, variables):
            setattr(self, name, variable)

    @classmethod
    def fresh(cls, n_channels, log_multiplier, previous_r, total_steps=0):
        values = (log_multiplier, log_multiplier, 0, total_steps, np.asarray(previous_r, "float32"),
                  np.zeros(n_channels, "float32"))
        return cls([keras.Variable(value, dtype="int64" if "step" in name else "float32", trainable=False,
                                   aggregation="only_first_replica", name=name)
                    for name, value in zip(STATE_NAMES, values)])

    def ordered(self):
        return [getattr(self, name) for name in STATE_NAMES]

    def numpy_state(self):
        return {name: keras.ops.convert_to_numpy(v) for name, v in zip(STATE_NAMES, self.ordered())}


def model_identity(regularizer):
    """What identifies the network a controller state belongs to, saved with the state: the channel groups
    (size and regularised channels of each) and the seed's FLOPs and parameters, which :meth:`BudgetController.
    restore` compares; the model's name, target and source, which its message reports (a rebuilt instance of the
    same network may get another automatic name, so names are not compared)."""
    reg = regularizer
    offsets = np.asarray(reg.graph.offsets)
    groups = [[int(hi - lo), int(reg.regularized[lo:hi].sum())] for lo, hi in zip(offsets[:-1], offsets[1:])]
    a_in, a_out = reg.kernel_calls.sums(np.ones(reg.kernel_calls.n_channels))
    return {"model": reg.model.name, "target": reg.target_name, "source": reg.source, "groups": groups,
            "flops": float(reg.kernel_calls.flops.value(a_in, a_out)),
            "params": float(reg.kernel_calls.params.value(a_in, a_out))}


def identity_mismatch(saved, current):
    """A sentence saying how the saved identity differs from the current one (None when it fits)."""
    if saved.get("groups") != current["groups"]:
        return (f"its channel groups ({len(saved.get('groups') or [])} groups) are not this model's "
                f"({len(current['groups'])} groups)")
    for key, unit in (("flops", "FLOPs"), ("params", "parameters")):
        if not math.isclose(float(saved.get(key, float("nan"))), current[key], rel_tol=1e-9):
            return f"its seed has {saved.get(key):,.0f} {unit}, this model {current[key]:,.0f}"
    return None


def parse_budget(budget, target):
    """Validate ``budget`` and return (ratio or None, absolute or None): a fraction in (0, 1] or an absolute
    cost > 1 in the target's unit."""
    budget = check_budget(budget)
    if budget <= 1.0:
        return budget, None
    if target.name == "latency":
        raise ValueError(f"budget={budget!r}: a latency budget is a fraction of the seed's latency in (0, 1] "
                         "(an absolute latency in seconds would be below 1); divide your target time by the "
                         "seed's, reg.initial_cost")
    return None, budget


def check_arguments(budget, strength, strength_multiplier, steps):
    """MorphRegularizer's budget-related argument rules (everything else is checked where it is used)."""
    if budget is None:
        if steps is not None:
            raise ValueError("steps= is the number of structure-learning steps of a budget: pass budget= too "
                             "(or leave steps out)")
        return
    for name, value in (("strength", strength), ("strength_multiplier", strength_multiplier)):
        if value is not None:
            raise ValueError(f"pass either budget= or {name}=, not both: with a budget the strength is "
                             f"controlled during training (got budget={budget!r}, {name}={value!r})")
    check_steps(steps)


def check_steps(steps, name="steps"):
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{name} must be a positive integer (the number of structure-learning steps), got "
                         f"{steps!r}")
    return int(steps)


class BudgetController:
    """Drives ``regularizer``'s strength so that its alive cost reaches ``budget`` (see the module doc)."""

    def __init__(self, regularizer, budget, steps=None, settings=None):
        self.reg = regularizer
        self.settings = settings or ControllerSettings()
        ratio, absolute = parse_budget(budget, regularizer.target)
        initial = regularizer.initial_cost
        if absolute is not None:
            if absolute >= initial:
                raise ValueError(f"budget={budget!r} {regularizer.unit} is not below the seed's cost "
                                 f"({initial:.6g} {regularizer.unit}): nothing to remove. Give a fraction "
                                 "in (0, 1] or a smaller count.")
            ratio = absolute / initial
        floor = self._floor_ratio()
        if ratio <= floor:
            raise ValueError(f"budget={budget!r} is {ratio:.2%} of the seed's {regularizer.unit}, but the "
                             f"smallest network the regulariser can leave (pinned inputs/outputs, unregularised "
                             f"groups, one channel in every regularised group) already costs {floor:.2%}: raise "
                             f"the budget{absolute_budget_hint(float(budget), regularizer.unit)}")
        self.budget, self.ratio, self.steps = float(budget), float(ratio), check_steps(steps)
        r0 = keras.ops.convert_to_numpy(regularizer.vector())
        with regularizer.model.distribute_strategy.scope():
            self.state = ControllerState.fresh(regularizer.kernel_calls.n_channels,
                                               math.log(self.settings.initial_multiplier), r0, self.steps or 0)

    def use_state(self, state):
        """Train with ``state`` (a :class:`ControllerState` of a MorphOptimizer's variables) from now on."""
        self.state = state

    # --- costs ------------------------------------------------------------------------------------------
    def _floor_ratio(self):
        """Cost ratio of the smallest network: what cannot shrink, plus one channel of every regularised group
        (a budget below it can only be reached by killing whole layers of a chain, which export refuses)."""
        reg = self.reg
        fixed = ~reg.regularized
        offsets = reg.graph.offsets
        for group in reg.graph.groups:
            lo, hi = offsets[group.id], offsets[group.id + 1]
            if hi > lo and reg.regularized[lo:hi].any() and not fixed[lo:hi].any():
                fixed[lo + int(np.argmax(reg.regularized[lo:hi]))] = True
        return float(reg.target.cost(*reg.target.sums(fixed.astype(float)))) / reg.initial_cost

    def cost_ratio(self, alive):
        """Target cost of a flat 0/1 alive vector (tensor) as a fraction of the seed's (float64 tensor)."""
        a_in, a_out = self.reg.target.sums(tf.cast(alive, tf.float64), xp=keras.ops)
        return self.reg.target.cost(a_in, a_out, xp=keras.ops) / self.reg.initial_cost

    # --- in-graph pieces ----------------------------------------------------------------------------------
    def strength(self):
        """The current strength, exp(u) / initial_cost, as a float32 tensor (no gradient)."""
        return tf.stop_gradient(tf.exp(self.state.log_multiplier) / np.float32(self.reg.initial_cost))

    def update(self, r=None, alive=None):
        """One controller step (tf ops; call once per training step). Returns the alive cost ratio at ``r``
        (the model's current R when omitted) as a float64 tensor."""
        if self.steps is None:
            raise ValueError("MorphRegularizer(budget=...) needs the number of structure-learning steps: pass "
                             "steps= to MorphRegularizer")
        reg, st, s = self.reg, self.state, self.settings
        r = tf.stop_gradient(tf.cast(reg.vector() if r is None else r, tf.float32))
        alive = reg._alive_vector(r) if alive is None else tf.stop_gradient(tf.cast(alive, tf.float32))
        step = st.step + 1
        t = tf.cast(step, tf.float32)
        total = tf.cast(tf.maximum(st.total_steps, 1), tf.float32)
        # where each channel is heading: an EMA of its velocity, extrapolated over the horizon
        window = tf.clip_by_value(s.velocity_window * total, s.min_window, s.max_window)
        velocity = st.velocity + (r - st.previous_r - st.velocity) / window
        horizon = tf.maximum(s.horizon * total, window)
        # the channels alive at the extrapolated R (r only falls there, so this is alive minus those heading
        # dead); through _alive_vector, so an attention layer still keeps one head in the projection
        projected = reg._alive_vector(r + horizon * tf.minimum(velocity, 0.0))
        ratio = self.cost_ratio(alive)
        e_projected = tf.cast(self.cost_ratio(projected), tf.float32) - self.target_ratio(t + horizon, total)
        e_alive = tf.cast(ratio, tf.float32) - self.target_ratio(t, total)
        holding = t > s.approach * total
        error = tf.where(holding, tf.maximum(e_projected, e_alive - s.hold_margin), e_projected)
        du = tf.where(error > 0, tf.minimum(s.ki_up * error, s.up_clip),
                      tf.maximum(s.ki_down * error, -s.down_clip)) / total
        du = tf.where(tf.logical_and(holding, du > 0), s.hold_gain * du, du)
        low, high = math.log(s.min_multiplier), math.log(s.max_multiplier)
        integral = tf.clip_by_value(st.integral + du, low, high)
        st.integral.assign(integral)
        st.log_multiplier.assign(tf.clip_by_value(integral + s.kp * e_projected, low, high))
        st.velocity.assign(velocity)
        st.previous_r.assign(r)
        st.step.assign(step)
        return ratio

    def target_ratio(self, step, total):
        """The cost ratio asked for at ``step``: from 1 down to the budget along a half cosine over the
        approach, then held."""
        progress = tf.clip_by_value(step / (self.settings.approach * total), 0.0, 1.0)
        return 1.0 - (1.0 - np.float32(self.ratio)) * 0.5 * (1.0 - tf.cos(np.pi * progress))

    # --- Python-side ----------------------------------------------------------------------------------------
    @property
    def current_strength(self):
        return float(np.exp(float(self.state.log_multiplier.numpy()))) / self.reg.initial_cost

    @property
    def step(self):
        return int(self.state.step.numpy())

    @property
    def total_steps(self):
        return int(self.state.total_steps.numpy())

    def set_steps(self, steps):
        self.steps = check_steps(steps)
        self.state.total_steps.assign(self.steps)

    def verdict(self, stopped_early=False):
        """(cost ratio, message or None): the message says how far the alive cost is from the budget and what
        to change when it is more than :data:`LANDING_TOLERANCE` away and structure learning is over (all
        planned steps taken, or ``stopped_early``)."""
        ratio = self.reg.cost() / self.reg.initial_cost
        step, total = self.step, self.total_steps
        if step < total and not stopped_early:
            return ratio, None
        where = (f"alive {self.reg.unit} are {ratio:.1%} of the seed's after {step} of {total} planned "
                 f"structure-learning steps (budget {self.ratio:.1%}, strength {self.current_strength:.3g})")
        # export(budget=) keeps the channels with the largest regularisation values that fit: the ones this
        # run drove towards zero go first, and finer channels take the share of a head that does not fit
        # min_width=0: the floor would revive channels this run removed and pay for them with ones it kept
        close = (f" To land on the budget now, export with it: ms.export(model, source={self.reg.source!r}, "
                 f"budget={self.ratio:.2f}, target={self.reg.target_name!r}, min_width=0) keeps the channels with "
                 f"the largest {self.reg.source} values that fit (a layer left under 10% of its channels is "
                 "named in a warning).") if self.reg.target_name in ("flops", "size") else ""
        if ratio > self.ratio + LANDING_TOLERANCE:
            stop = " Training stopped before the planned steps." if step < total else ""
            coarse = self.cheapest_alive_ratio()
            if coarse is not None and ratio - coarse < self.ratio - LANDING_TOLERANCE:
                # a transformer's attention head can be 7% of its FLOPs: one more death lands far below
                return ratio, (
                    f"MorphRegularizer budget not reached: {where}.{stop} The cheapest channel still alive costs "
                    f"{coarse:.1%} of the seed's {self.reg.unit}, so one more death would land at "
                    f"{ratio - coarse:.1%} or below: this network cannot be cut finer near the budget. Ask for "
                    f"{ratio:.0%} or {ratio - coarse:.0%}, or keep this result.{close}")
            return ratio, (
                f"MorphRegularizer budget not reached: {where}.{stop} Channels die only as fast as the optimizer "
                "moves their regularisation values to the threshold (about 1.5 / learning_rate steps with "
                "Adam, more with SGD), and the controller needs a few times that: train for more steps (more "
                f"epochs, or steps=).{close}")
        if ratio < self.ratio - LANDING_TOLERANCE:
            return ratio, (f"MorphRegularizer overshot the budget: {where}. Train for more steps (the "
                           "controller brakes better when channels die more slowly) or use a lower learning rate.")
        return ratio, None

    def cheapest_alive_ratio(self):
        """The smallest cost, as a fraction of the seed's, that removing one alive regularised channel saves at
        the current widths (its marginal cost); None for a target that cannot price one channel (activations)."""
        alive = flat_mask(self.reg.graph, self.reg.alive_masks()).astype(float)
        marginal = self.reg.target.marginal(alive)
        if marginal is None:
            return None
        candidates = marginal[alive.astype(bool) & self.reg.regularized & (marginal > 0)]
        return float(candidates.min()) / self.reg.initial_cost if candidates.size else None

    def report(self, stopped_early=False, warn=True):
        """End-of-run check for custom loops: returns the alive cost ratio and, with ``warn``, issues a
        :class:`BudgetWarning` when the cost missed the budget (see :meth:`verdict`)."""
        ratio, message = self.verdict(stopped_early)
        if warn and message:
            warnings.warn(message, BudgetWarning, stacklevel=2)
        return ratio

class BudgetWarning(UserWarning):
    """The alive cost at the end of structure learning is not within tolerance of the budget."""


#: the controller lands a budget in about this many / learning_rate steps with Adam (docs/structure_learning.md)
STEPS_PER_INVERSE_RATE = 4.0


def too_few_steps(controller, optimizer, planned=None, taken=None):
    """A warning text when the planned structure-learning steps are fewer than half of what the controller
    needs at the optimizer's current learning rate (about 4 / learning_rate steps with Adam), else None: said at
    the start of fit, so that a run that cannot land is not trained to the end first. ``planned``/``taken``:
    the step counts when known without reading the controller's variables (an optimizer built while tracing)."""
    rate = getattr(optimizer, "learning_rate", None)
    try:
        with tf.init_scope():
            rate = float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        return None
    planned = controller.total_steps if planned is None else planned
    taken = controller.step if taken is None else taken
    needed = STEPS_PER_INVERSE_RATE / rate if rate > 0 else float("inf")
    if planned - taken >= 0.5 * needed or planned <= 0:
        return None
    return (f"MorphRegularizer(budget=...) plans {planned} structure-learning steps at learning rate {rate:.3g}, "
            f"but the controller needs about {STEPS_PER_INVERSE_RATE:g} / learning_rate = {needed:,.0f} steps with "
            "Adam to land the budget (a channel dies only once its regularisation value has moved from ~1 to the "
            "threshold): train more epochs, use smaller batches or a higher learning rate, or pass steps=")


__all__ = ["BudgetController", "ControllerState", "BudgetWarning", "ControllerSettings", "LANDING_TOLERANCE",
           "STATE_NAMES", "parse_budget", "model_identity", "identity_mismatch", "too_few_steps"]
