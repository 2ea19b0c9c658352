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

**State** (u, the integral, the step count, the planned steps, R and v per channel): with a ``MorphOptimizer``
(:mod:`morphsparse.morph.optimizer`), variables of that optimizer, saved and restored with it by Keras. Without
one (the deprecated ``attach`` path, custom loops calling :meth:`BudgetController.update`), a small Keras
layer that the regulariser sets as a plain attribute of the model, ``model._morph_budget_state``. Keras's
saving walks a model's attributes, so ``model.save``/``save_weights`` (and ModelCheckpoint) write the state
into the file next to the weights, with the model's identity (:func:`model_identity`); a fresh model from
``keras.saving.load_model`` has no such attribute, so plain Keras loads the file and ignores the extra entries.
To resume, re-attach with ``resume_from=path``, which refuses a file saved from another network (or call
``model.load_weights(path)`` after attaching: Keras then restores the state itself, as BackupAndRestore does).
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from morphsparse.checks import absolute_budget_hint, check_budget

#: Model attribute holding the controller state (a plain attribute, not tracked: saving walks it by name).
STATE_ATTRIBUTE = "_morph_budget_state"
#: Key of the saved state's identity entry (:func:`model_identity`, JSON bytes) next to the variables.
IDENTITY_KEY = "identity"
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


def _variable(layer, name, shape=(), dtype="float32", value=0.0):
    return layer.add_weight(shape=shape, initializer=keras.initializers.Constant(value), dtype=dtype,
                            trainable=False, aggregation="only_first_replica", name=name)


class BudgetState(keras.layers.Layer):
    """The controller's variables. A Keras layer so that Keras's own saving writes them (see module doc);
    never called, never part of the model's layers or weights."""

    NAMES = ("log_multiplier", "integral", "step", "total_steps", "previous_r", "velocity")

    def __init__(self, n_channels, log_multiplier, previous_r, name="morph_budget_state", identity=None):
        super().__init__(name=name, trainable=False)
        #: what the state was learned on (:func:`model_identity`), saved next to the variables
        self.identity = identity
        self.log_multiplier = _variable(self, "log_multiplier", value=log_multiplier)
        self.integral = _variable(self, "integral", value=log_multiplier)
        self.step = _variable(self, "step", dtype="int64", value=0)
        self.total_steps = _variable(self, "total_steps", dtype="int64", value=0)
        self.previous_r = _variable(self, "previous_r", shape=(n_channels,), value=0.0)
        self.previous_r.assign(np.asarray(previous_r, dtype="float32"))
        self.velocity = _variable(self, "velocity", shape=(n_channels,), value=0.0)
        self.built = True

    def ordered(self):
        return [getattr(self, name) for name in self.NAMES]

    def numpy_state(self):
        return {name: keras.ops.convert_to_numpy(v) for name, v in zip(self.NAMES, self.ordered())}

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.identity is not None:       # JSON bytes: the stores hold arrays only
            store[IDENTITY_KEY] = np.frombuffer(json.dumps(self.identity).encode(), np.uint8)

    def load_own_variables(self, store):
        # Files written before the identity entry existed hold the variables only.
        variables = self.ordered()
        count = len([key for key in store.keys() if key != IDENTITY_KEY])
        if count != len(variables):
            raise ValueError(f"the budget controller state in this file has {count} variables, this controller "
                             f"{len(variables)}: it was not saved by this version of morphsparse")
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])


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
        self.budget = float(budget)
        self.ratio = float(ratio)
        self.steps = check_steps(steps)
        r0 = keras.ops.convert_to_numpy(regularizer.vector())
        with regularizer.model.distribute_strategy.scope():
            self.state = BudgetState(regularizer.kernel_calls.n_channels, math.log(self.settings.initial_multiplier),
                                     r0, identity=model_identity(regularizer))
        if self.steps is not None:
            self.state.total_steps.assign(self.steps)
        # on the model, where model.save writes it (the deprecated attach path, custom loops calling update())
        object.__setattr__(regularizer.model, STATE_ATTRIBUTE, self.state)

    def use_state(self, state=None):
        """Take the state off the model: a ``MorphOptimizer`` trains with this controller and keeps the state in
        its own variables, ``state`` (an object with the six variables of :attr:`BudgetState.NAMES`; None until
        the optimizer has made them)."""
        if self.reg.model.__dict__.get(STATE_ATTRIBUTE) is self.state:
            del self.reg.model.__dict__[STATE_ATTRIBUTE]
        if state is not None:
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
        return float(reg.target.cost(*reg.kernel_calls.sums(fixed.astype(float)))) / reg.initial_cost

    def cost_ratio(self, alive):
        """Target cost of a flat 0/1 alive vector (tensor) as a fraction of the seed's (float64 tensor)."""
        a_in, a_out = self.reg.kernel_calls.sums(tf.cast(alive, tf.float64), xp=keras.ops)
        return self.reg.target.cost(a_in, a_out, xp=keras.ops) / self.reg.initial_cost

    # --- in-graph pieces ----------------------------------------------------------------------------------
    def strength(self):
        """The current strength, exp(u) / initial_cost, as a float32 tensor (no gradient)."""
        return tf.stop_gradient(tf.exp(self.state.log_multiplier) / np.float32(self.reg.initial_cost))

    def update(self, r=None, alive=None):
        """One controller step (tf ops; call once per training step). Returns the alive cost ratio at ``r``
        (the model's current R when omitted) as a float64 tensor."""
        if self.steps is None and not self._fit_sets_steps():
            raise ValueError("MorphRegularizer(budget=...) needs the number of structure-learning steps: pass "
                             "steps= to MorphRegularizer or attach(), or train with fit() (which supplies it)")
        reg, st, s = self.reg, self.state, self.settings
        r = reg.vector() if r is None else r
        r = tf.stop_gradient(tf.cast(r, tf.float32))
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

    def _fit_sets_steps(self):
        return getattr(self, "_in_fit", False)

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

    def begin_fit(self, steps_this_fit):
        """Called by fit: the planned total is the explicit ``steps=`` if given, else the steps already taken
        plus this fit's."""
        if self.steps is None:
            if steps_this_fit is None:
                raise ValueError("MorphRegularizer(budget=...): fit() cannot tell how many steps it will run "
                                 "(a dataset of unknown length and no steps_per_epoch); pass steps= (the "
                                 "number of structure-learning steps) to MorphRegularizer or attach()")
            self.state.total_steps.assign(self.step + int(steps_this_fit))
        self._in_fit = True

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
        if ratio > self.ratio + LANDING_TOLERANCE:
            stop = " Training stopped before the planned steps." if step < total else ""
            return ratio, (
                f"MorphRegularizer budget not reached: {where}.{stop} Channels die only as fast as the optimizer "
                "moves their regularisation values to the threshold (about 1.5 / learning_rate steps with "
                "Adam, more with SGD), and the controller needs a few times that: train for more steps (more "
                "epochs, or steps=) or use a higher learning rate.")
        if ratio < self.ratio - LANDING_TOLERANCE:
            return ratio, (f"MorphRegularizer overshot the budget: {where}. Train for more steps (the "
                           "controller brakes better when channels die more slowly) or use a lower learning rate.")
        return ratio, None

    def report(self, stopped_early=False, warn=True):
        """End-of-run check for custom loops: returns the alive cost ratio and, with ``warn``, issues a
        :class:`BudgetWarning` when the cost missed the budget (see :meth:`verdict`)."""
        ratio, message = self.verdict(stopped_early)
        if warn and message:
            warnings.warn(message, BudgetWarning, stacklevel=2)
        return ratio

    # --- saving -----------------------------------------------------------------------------------------------
    def restore(self, path):
        """Load the controller state saved with a model (a .keras file or a .weights.h5 file). Refuses a file
        saved from another network (:func:`model_identity`); a file without the identity (written before it
        was saved) is accepted with a warning."""
        values, identity = read_saved_state(path)
        path = os.fspath(path)
        variables = self.state.ordered()
        current = self.state.identity
        if identity is not None and current is not None:
            mismatch = identity_mismatch(identity, current)
            if mismatch:
                raise ValueError(f"resume_from={path!r} was saved from model '{identity.get('model')}', not from "
                                 f"this one ('{current['model']}'): {mismatch}. Resume from a file saved from "
                                 "this network, or leave resume_from out to start the controller afresh")
        if len(values) != len(variables) or any(tuple(np.shape(a)) != tuple(v.shape)
                                                for a, v in zip(values, variables)):
            raise ValueError(f"resume_from={path!r}: the saved controller state does not fit this "
                             "regulariser (a different model or target?)")
        if identity is None:
            warnings.warn(f"resume_from={path!r} does not say which model it was saved from (written by an "
                          "earlier morphsparse), so it cannot be checked to be this one's; resuming. Save again "
                          "to include it.", UserWarning, stacklevel=3)
        for value, variable in zip(values, variables):
            variable.assign(value)


class BudgetWarning(UserWarning):
    """The alive cost at the end of structure learning is not within tolerance of the budget."""


def read_state(path):
    """The controller variables saved in ``path`` (.keras archive or .weights.h5), in BudgetState order."""
    return read_saved_state(path)[0]


def _checked_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"resume_from must be the path (str or os.PathLike) of a file saved by model.save, "
                        f"save_weights or ModelCheckpoint, got {type(path).__name__} {path!r}")
    path = os.fsdecode(path)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"resume_from={path!r} {what}: give the .keras or .weights.h5 file saved by "
                                "model.save, save_weights or ModelCheckpoint")
    return path


def read_saved_state(path):
    """(the controller variables saved in ``path``, in BudgetState order; the saved :func:`model_identity` or
    None for files written before it was saved)."""
    import h5py

    path = _checked_path(path)

    def from_h5(handle):
        with h5py.File(handle, "r") as f:
            if STATE_ATTRIBUTE not in f:
                raise ValueError(f"resume_from={path!r} holds no budget controller state: it was saved from a "
                                 "model without a MorphRegularizer(budget=...) attached")
            group = f[STATE_ATTRIBUTE]["vars"]
            values = [np.asarray(group[key]) for key in sorted((k for k in group if k.isdigit()), key=int)]
            identity = None
            if IDENTITY_KEY in group:
                identity = json.loads(np.asarray(group[IDENTITY_KEY]).tobytes().decode())
            return values, identity

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".weights.h5")]
                if not names:
                    raise ValueError(f"resume_from={path!r}: no weights file in this archive")
                return from_h5(io.BytesIO(archive.read(names[0])))
        return from_h5(path)
    except (OSError, KeyError, EOFError, UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile) as err:
        raise ValueError(f"resume_from={path!r} cannot be read as a Keras file (.keras archive or .weights.h5; "
                         f"damaged or another format?): {err}") from None


def fit_hook(original_fit, controller):
    """A ``fit`` for the model instance that adds a :class:`BudgetCallback` to the callbacks and warns, at
    the caller's ``fit`` line, when the budget was missed."""
    signature = inspect.signature(original_fit)

    def fit(self_model, *args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        callback = BudgetCallback(controller, bound.arguments.get("initial_epoch", 0))
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.append(callback)
        else:
            bound.arguments["callbacks"] = list(callbacks or []) + [callback]
        history = original_fit(*bound.args, **bound.kwargs)
        if callback.message:
            warnings.warn(callback.message, BudgetWarning, stacklevel=2)
        return history

    return fit


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


class BudgetCallback(keras.callbacks.Callback):
    """Added to fit() by an attached budget regulariser: sets the planned steps when the first epoch begins,
    judges the landing at the end (the fit hook issues the warning).

    The plan is made at the first epoch fit actually runs, not from fit's ``initial_epoch``: after every
    callback's ``on_train_begin``, so that a ``BackupAndRestore`` that restored the model has also restored the
    controller's step count (it is saved with the weights) and moved the start to the restored epoch. The
    planned total is then the steps taken plus the remaining epochs' steps. (``initial_epoch`` is kept for
    compatibility; the epoch fit starts from is used.)"""

    def __init__(self, controller, initial_epoch=0):
        super().__init__()
        self.controller = controller
        self.initial_epoch = int(initial_epoch or 0)
        self.message = None
        self._planned = False

    def on_train_begin(self, logs=None):
        self._planned = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._planned:
            return
        self._planned = True
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        this_fit = None if steps is None else max(int(epochs) - int(epoch), 0) * int(steps)
        self.controller.begin_fit(this_fit)
        message = too_few_steps(self.controller, getattr(self.model, "optimizer", None))
        if message:
            warnings.warn(message, BudgetWarning, stacklevel=2)

    def on_train_end(self, logs=None):
        self.controller._in_fit = False
        stopped = bool(getattr(self.model, "stop_training", False))
        _, self.message = self.controller.verdict(stopped_early=stopped)


__all__ = ["BudgetController", "BudgetState", "BudgetCallback", "BudgetWarning", "ControllerSettings",
           "LANDING_TOLERANCE", "STATE_ATTRIBUTE", "IDENTITY_KEY", "parse_budget", "read_state", "read_saved_state",
           "model_identity"]
