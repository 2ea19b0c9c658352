"""When masks change, and by how much: update schedules, drop-fraction decays and gradual-pruning targets.

All schedule methods take the step and the resolved ``end_step`` as tensors and return tensors, so that one
traced training step serves the whole run and nothing is re-traced when the schedule moves. The end step a
schedule method receives is the ``SparseOptimizer``'s (75% of ``total_steps`` by default, as in the RigL paper);
-1 means no end is known: masks then keep changing for the whole of training and decays stay at their initial
value.
"""

from __future__ import annotations

import importlib
import math

import keras
import numpy as np
import tensorflow as tf

from morphsparse.checks import flag, fraction

_PACKAGE = "morphsparse"


def _float(value):
    return tf.cast(value, tf.float32)


def whole_number(value, name: str, minimum: int = 0, allow_none: bool = False):
    """``value`` as an int, or a TypeError/ValueError that names the argument ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a whole number of steps, got {value!r} ({type(value).__name__})")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number of steps, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------- drop fraction
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropFraction:
    """Fraction of a layer's active weights that one drop/grow update replaces, as a function of the step."""

    def __init__(self, initial: float = 0.3):
        self.initial = fraction(initial, "drop_fraction")

    def __call__(self, step, end_step):
        raise NotImplementedError

    def get_config(self):
        return {"initial": self.initial}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantDropFraction(DropFraction):
    """``f(t) = initial``; what two of the official RigL drivers default to (the paper's numbers use cosine)."""

    def __call__(self, step, end_step):
        return tf.constant(self.initial, tf.float32)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CosineDropFraction(DropFraction):
    """``f(t) = initial / 2 * (1 + cos(pi * t / end_step))``, the RigL paper's setting."""

    def __call__(self, step, end_step):
        # No known end (-1): no decay, the initial fraction throughout.
        progress = tf.where(_float(end_step) > 0,
                            tf.clip_by_value(_float(step) / tf.maximum(_float(end_step), 1.0), 0.0, 1.0), 0.0)
        return self.initial * 0.5 * (1.0 + tf.cos(math.pi * progress))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InversePowerDropFraction(DropFraction):
    """``f(t) = initial * (1 + t / period) ** -power``: fast early decay that never reaches zero."""

    def __init__(self, initial: float = 0.3, power: float = 1.0, period: int = 100):
        super().__init__(initial)
        self.power = fraction(power, "power", 0.0, math.inf)
        self.period = whole_number(period, "period", 1)

    def __call__(self, step, end_step):
        return self.initial * tf.pow(1.0 + _float(step) / float(self.period), -self.power)

    def get_config(self):
        return {"initial": self.initial, "power": self.power, "period": self.period}


DROP_FRACTIONS = {"constant": ConstantDropFraction, "cosine": CosineDropFraction,
                  "inverse_power": InversePowerDropFraction}


def get_drop_fraction(value, initial: float = 0.3) -> DropFraction:
    """Resolve ``"cosine"``/``"constant"``/``"inverse_power"`` (with ``initial``), a number or an instance."""
    if isinstance(value, DropFraction):
        return value
    if isinstance(value, (int, float)):
        return ConstantDropFraction(float(value))
    if isinstance(value, str) and value in DROP_FRACTIONS:
        return DROP_FRACTIONS[value](initial)
    raise ValueError(f"Unknown drop fraction schedule {value!r}; known: {sorted(DROP_FRACTIONS)}, a number, "
                     "or a DropFraction instance")


# ---------------------------------------------------------------------------------------------- update schedules
@keras.saving.register_keras_serializable(package=_PACKAGE)
class UpdateSchedule:
    """Which steps update the masks, and (for gradual methods) each layer's sparsity at a step.

    Args:
        update_every, begin_step, end_step: masks change every ``update_every`` steps (default 100) from
            ``begin_step`` while ``step < end_step``. ``end_step=None``: ``end_fraction`` of the ``total_steps``
            given to ``sparse_optimizer`` (no end when it has none; a warning says so).
        end_fraction: the fraction of ``total_steps`` after which masks stop changing (default 0.75, as in
            the RigL paper); unused when ``end_step`` is given.
        skip_optimizer_step: on update steps, update the masks and skip the optimizer step (the official RigL
            order) instead of applying it first (the default, and the only choice under tf.distribute).
    """

    def __init__(self, update_every: int = 100, begin_step: int = 0, end_step: int | None = None,
                 end_fraction: float = 0.75, skip_optimizer_step: bool = False):
        self.update_every = whole_number(update_every, "update_every", 1)
        self.begin_step = whole_number(begin_step, "begin_step", 0)
        self.end_step = whole_number(end_step, "end_step", 0, allow_none=True)
        self.end_fraction = fraction(end_fraction, "end_fraction", 0.0, 1.0, low_open=True)
        self.skip_optimizer_step = flag(skip_optimizer_step, "skip_optimizer_step")
        if self.end_step is not None and self.end_step <= self.begin_step:
            raise ValueError(f"end_step={self.end_step} must be greater than begin_step={self.begin_step}: no mask "
                             "update would ever happen")

    def resolve_end(self, model_end_step):
        return tf.cast(model_end_step, tf.int64) if self.end_step is None else tf.constant(self.end_step, tf.int64)

    def is_update_step(self, step, model_end_step):
        step = tf.cast(step, tf.int64)
        if isinstance(model_end_step, (int, np.integer)) or self.end_step is not None:
            # The end is a Python number: decide what can be decided now, so that the traced step holds only
            # the few scalar ops it needs (this runs on every training step).
            end = self.end_step if self.end_step is not None else int(model_end_step)
            on_period = tf.equal((step - self.begin_step) % self.update_every, 0) if self.begin_step else \
                tf.equal(step % self.update_every, 0)
            if self.begin_step:
                on_period = on_period & (step >= self.begin_step)
            return on_period if end < 0 else on_period & (step < end)
        end = self.resolve_end(model_end_step)
        return ((step >= self.begin_step) & ((end < 0) | (step < end))
                & tf.equal((step - self.begin_step) % self.update_every, 0))

    def last_update_step(self, model_end_step: int):
        """The last step at which masks may change, or None when there is no end (Python ints)."""
        end = self.end_step if self.end_step is not None else model_end_step
        if end is None or end < 0:
            return None
        if end <= self.begin_step:
            return -1
        return self.begin_step + ((end - 1 - self.begin_step) // self.update_every) * self.update_every

    def layer_sparsity(self, target_sparsity: float, step, model_end_step):
        """Sparsity a layer with final ``target_sparsity`` should have at ``step`` (constant by default)."""
        return tf.constant(target_sparsity, tf.float64)

    def get_config(self):
        return {"update_every": self.update_every, "begin_step": self.begin_step, "end_step": self.end_step,
                "end_fraction": self.end_fraction, "skip_optimizer_step": self.skip_optimizer_step}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolynomialSchedule(UpdateSchedule):
    """Gradual pruning (Zhu & Gupta 2017): ``s(t) = s_f + (s_i - s_f) * (1 - p) ** exponent``.

    ``p = clip((t - begin) / (end - begin), 0, 1)``; pruning happens every ``update_every`` steps from
    ``begin_step`` up to and including ``end_step`` (so the final target is always reached). Each layer's
    ``s_f`` is its own target from the distribution.
    """

    def __init__(self, initial_sparsity: float = 0.0, update_every: int = 100, begin_step: int = 0,
                 end_step: int | None = None, exponent: float = 3.0, end_fraction: float = 0.75,
                 skip_optimizer_step: bool = False):
        super().__init__(update_every, begin_step, end_step, end_fraction, skip_optimizer_step)
        self.initial_sparsity = fraction(initial_sparsity, "initial_sparsity")
        self.exponent = fraction(exponent, "exponent", 0.0, math.inf)

    def is_update_step(self, step, model_end_step):
        step = tf.cast(step, tf.int64)
        end = self.resolve_end(model_end_step)
        on_period = tf.equal((step - self.begin_step) % self.update_every, 0)
        return (step >= self.begin_step) & (((step <= end) & on_period) | tf.equal(step, end))

    def last_update_step(self, model_end_step: int):
        end = self.end_step if self.end_step is not None else model_end_step
        return None if end is None or end < 0 else end

    def layer_sparsity(self, target_sparsity, step, model_end_step):
        end = tf.cast(self.resolve_end(model_end_step), tf.float64)
        span = tf.maximum(end - self.begin_step, 1.0)
        progress = tf.clip_by_value((tf.cast(step, tf.float64) - self.begin_step) / span, 0.0, 1.0)
        initial = min(self.initial_sparsity, target_sparsity)
        return target_sparsity + (initial - target_sparsity) * tf.pow(1.0 - progress, self.exponent)

    def get_config(self):
        return dict(super().get_config(), initial_sparsity=self.initial_sparsity, exponent=self.exponent)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PruningScheduleAdapter(UpdateSchedule):
    """Use a tensorflow-model-optimization pruning schedule (``PolynomialDecay``, ``ConstantSparsity``).

    Those objects are callables ``step -> (should_prune, sparsity)`` giving one model-wide sparsity. With a
    non-uniform distribution each layer is scaled: ``s_l(t) = s_l * s(t) / target``, where ``target`` is the
    schedule's final sparsity, so that layers keep their relative sparsities. Any object with that contract
    works; tensorflow-model-optimization itself is never imported by morphsparse.
    """

    def __init__(self, schedule, target_sparsity: float | None = None):
        super().__init__(update_every=1)
        self.schedule = schedule
        if target_sparsity is None:
            target_sparsity = getattr(schedule, "final_sparsity", getattr(schedule, "target_sparsity", None))
        if target_sparsity is None:
            raise ValueError(f"PruningScheduleAdapter({schedule!r}) cannot tell the final sparsity of this pruning "
                             "schedule (it has no final_sparsity attribute): pass target_sparsity=, the sparsity "
                             "it ends at")
        self.target_sparsity = float(target_sparsity)

    def _call(self, step):
        should_prune, sparsity = self.schedule(tf.cast(step, tf.int64))
        return tf.cast(should_prune, tf.bool), tf.cast(sparsity, tf.float64)

    def is_update_step(self, step, model_end_step):
        return self._call(step)[0]

    def last_update_step(self, model_end_step: int):
        end = getattr(self.schedule, "end_step", None)
        return None if end is None or int(end) < 0 else int(end)

    def layer_sparsity(self, target_sparsity, step, model_end_step):
        if self.target_sparsity == 0.0:
            return tf.constant(0.0, tf.float64)
        return self._call(step)[1] * (target_sparsity / self.target_sparsity)

    def get_config(self):
        inner = self.schedule
        return {"schedule": {"module": type(inner).__module__, "class_name": type(inner).__qualname__,
                             "config": inner.get_config()},
                "target_sparsity": self.target_sparsity}

    @classmethod
    def from_config(cls, config):
        spec = config["schedule"]
        if isinstance(spec, dict) and "module" in spec:
            inner_cls = importlib.import_module(spec["module"])
            for part in spec["class_name"].split("."):
                inner_cls = getattr(inner_cls, part)
            inner_config = spec["config"]
            # tensorflow-model-optimization's get_config nests the arguments under "config".
            if set(inner_config) == {"class_name", "config"}:
                inner_config = inner_config["config"]
            schedule = (inner_cls.from_config(inner_config) if hasattr(inner_cls, "from_config")
                        else inner_cls(**inner_config))
        else:
            schedule = spec
        return cls(schedule, config.get("target_sparsity"))


def is_pruning_schedule(value) -> bool:
    """True for tensorflow-model-optimization-style schedules (callable, not one of ours)."""
    return callable(value) and not isinstance(value, (UpdateSchedule, DropFraction, type))


def get_schedule(value, default: UpdateSchedule) -> UpdateSchedule:
    """Resolve the ``schedule=`` argument of ``sparsify``: None (the method's default), ours, or a tfmot one."""
    if value is None:
        return default
    if isinstance(value, UpdateSchedule):
        return value
    if is_pruning_schedule(value):
        if getattr(value, "final_sparsity", getattr(value, "target_sparsity", None)) is None:
            raise ValueError(f"schedule={value!r}: cannot tell the final sparsity of this callable (it has no "
                             "final_sparsity attribute). Give it one (the sparsity it ends at; the layers are "
                             "scaled by schedule(step)[1] / final_sparsity), or pass schedule=morphsparse.sparse."
                             "PruningScheduleAdapter(your_schedule, target_sparsity=...)")
        return PruningScheduleAdapter(value)
    raise TypeError(f"schedule must be an UpdateSchedule or a callable step -> (should_prune, sparsity), "
                    f"got {type(value).__name__}")
