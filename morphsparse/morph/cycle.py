"""MorphNet's shrink -> export -> expand -> retrain cycle, with the user's own data and fit arguments.

One cycle (algorithms.md 2.5): train the current model with a :class:`MorphRegularizer` (shrink), export the
slim network (dead channels removed), widen it with a uniform width multiplier back to the budget (by default
the cost of the model you started from), and retrain the widened network from scratch. The next cycle
shrinks the retrained network again. The user's model, data and ``fit`` arguments are passed through as they
are: ``cycle`` adds no training logic of its own. Each step's slim model (``CycleStep.slim``) has its
BatchNorm statistics re-estimated on up to 20 batches of the shrink data (``ms.recalibrate_batchnorm``), so it
can be evaluated as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras

from morphsparse.costs import BUDGET_TARGETS, count_flops, count_params
from morphsparse.morph import alive as _alive
from morphsparse.morph.expand import check_budget, check_round_to
from morphsparse.morph.optimizer import MorphOptimizer
from morphsparse.recipe import compile_wrapped, compiler_like, fit_arguments
from morphsparse.morph.regularizers import DEFAULT_STRENGTH_MULTIPLIER, MorphRegularizer, check_arguments

#: targets that ``ms.expand`` can budget; other regulariser targets expand on FLOPs unless told otherwise.
EXPANDABLE = tuple(BUDGET_TARGETS)


@dataclass
class CycleStep:
    """What one cycle produced: the slim and widened models' costs, widths and training histories."""

    index: int
    slim: keras.Model
    model: keras.Model                   # the widened, retrained network (input to the next cycle)
    shrink_history: dict
    retrain_history: dict
    slim_flops: int
    slim_params: int
    flops: int
    params: int
    evaluation: dict | None = None
    seconds: float = 0.0

    def summary(self):
        text = (f"cycle {self.index}: slim {self.slim_flops:,d} FLOPs / {self.slim_params:,d} params -> expanded "
                f"{self.flops:,d} FLOPs / {self.params:,d} params ({self.seconds:.0f} s)")
        if self.evaluation:
            text += "; " + ", ".join(f"{k} {v:.4g}" for k, v in self.evaluation.items())
        return text


@dataclass
class CycleResult:
    """``model``: the last retrained network; ``steps``: one :class:`CycleStep` per cycle; ``budget``: the
    cost every expansion aimed at (in ``expand_target`` units)."""

    model: keras.Model
    budget: float
    expand_target: str
    steps: list = field(default_factory=list)

    def summary(self):
        return "\n".join([f"{len(self.steps)} cycle(s) at a budget of {self.budget:,.0f} {self.expand_target}"]
                         + [s.summary() for s in self.steps])


def _expand(slim, budget, target, round_to):
    from morphsparse.morph.expand import expand
    return expand(slim, budget=budget, target=target, round_to=round_to)


def _budget_of(model, target):
    return count_flops(model) if target == "flops" else count_params(model)


def cycle(model, fit, cycles=1, *, retrain=None, compile=None, retrain_compile=None, target="flops", source="gamma",
          threshold=_alive.DEFAULT_THRESHOLD, strength=None, strength_multiplier=None, l1_fraction=0.0,
          device=None, expand_target=None, budget=None, round_to=1, evaluate=None, exact=False, verbose=True,
          **regularizer_kwargs):
    """Run ``cycles`` MorphNet cycles (shrink -> export -> expand -> retrain) and return a :class:`CycleResult`.

    Args:
        model: the seed network (a built functional or Sequential model; trained or not). It is not modified:
            every shrink phase trains a copy.
        fit: keyword arguments for ``Model.fit`` during the shrink phase: your data and settings, e.g.
            ``dict(x=x, y=y, epochs=5, batch_size=128, validation_data=(xv, yv), callbacks=[...])``.
        cycles: how many cycles to run.
        retrain: ``fit`` arguments for retraining the widened network; merged over ``fit`` (so
            ``retrain=dict(epochs=10)`` only changes the epochs). Default: the same as ``fit``.
        compile: ``callable(model)`` that compiles a model, or a dict of ``Model.compile`` arguments; by
            default every new model is compiled with the seed's compile configuration
            (``model.get_compile_config()``), so compile the seed first.
        retrain_compile: ``callable(model)`` compiling the widened network for retraining (default: ``compile``),
            e.g. a lower learning rate than structure learning uses.
        target, source, threshold, strength, strength_multiplier, l1_fraction, device: passed to
            :class:`MorphRegularizer` (``threshold`` also to ``export``), and checked before any training.
        expand_target: "flops" or "size": the cost the width multiplier restores (default: ``target`` when
            it is one of those, else "flops").
        budget: the cost to expand back to (default: the seed model's cost in ``expand_target`` units).
        round_to: channel rounding of the expansion (e.g. 8).
        evaluate: optional ``callable(model) -> dict`` run after each retraining (e.g. test accuracy).
        exact: passed to ``export`` (keep dead channels whose fold would be inexact at image borders).
    """
    fit = fit_arguments(fit)
    if not (isinstance(cycles, int) and not isinstance(cycles, bool) and cycles >= 1):
        raise ValueError(f"cycles must be an integer >= 1, got {cycles!r}")
    _check_pass_through(target, source, threshold, strength, strength_multiplier, l1_fraction, device, retrain,
                        evaluate, budget, round_to)
    expand_target = expand_target or (target if target in EXPANDABLE else "flops")
    if expand_target not in EXPANDABLE:
        raise ValueError(f"expand_target must be one of {EXPANDABLE}, got {expand_target!r}")
    compile_model = compiler_like(model, compile, "cycle()")
    compile_retrain = compile_model if retrain_compile is None else compiler_like(model, retrain_compile,
                                                                                    "cycle()")
    retrain_fit = {**fit, **fit_arguments(retrain, "retrain", required=False)}
    budget = _budget_of(model, expand_target) if budget is None else budget
    # the device matters (and was checked, with a warning if it has no effect) for the latency target only
    reg_options = dict(target=target, source=source, threshold=threshold, strength=strength,
                       l1_fraction=l1_fraction, device=device if target == "latency" else None,
                       **regularizer_kwargs)
    if strength_multiplier is not None:
        reg_options["strength_multiplier"] = strength_multiplier
    result = CycleResult(model=model, budget=budget, expand_target=expand_target)
    current = model
    for index in range(1, cycles + 1):
        start = time.perf_counter()
        # Shrink a copy: the seed and every step's retrained model stay as they were (the next cycle's
        # structure learning would otherwise overwrite the previous cycle's result).
        trainable = _copy_model(current)
        regularizer = MorphRegularizer(trainable, **reg_options)
        # the user's compile, with its optimizer wrapped so that its steps add the regulariser's gradient
        compile_wrapped(trainable, compile_model, lambda network, inner: MorphOptimizer(inner, regularizer))
        shrink_history = trainable.fit(**fit).history
        slim = _export(trainable, source, threshold, l1_fraction, exact, _calibration_data(fit))
        wide = _expand(slim, budget, expand_target, round_to)
        compile_retrain(wide)
        retrain_history = wide.fit(**retrain_fit).history
        step = CycleStep(index, slim, wide, shrink_history, retrain_history, count_flops(slim),
                         count_params(slim), count_flops(wide), count_params(wide))
        if evaluate is not None:
            step.evaluation = dict(evaluate(wide))
        step.seconds = time.perf_counter() - start
        result.steps.append(step)
        if verbose:
            print(f"[morphsparse.cycle] {regularizer.summary()}")
            print(f"[morphsparse.cycle] {step.summary()}")
        current = wide
    result.model = current
    return result


def _check_pass_through(target, source, threshold, strength, strength_multiplier, l1_fraction, device, retrain,
                        evaluate, budget, round_to):
    """Check, before any training, the arguments that reach the regulariser, export and expand only later
    (a bad ``round_to`` would otherwise fail after a whole shrink phase). Errors name the argument."""
    check_arguments(target, source, threshold, strength,
                    DEFAULT_STRENGTH_MULTIPLIER if strength_multiplier is None else strength_multiplier,
                    l1_fraction, device)
    fit_arguments(retrain, "retrain", required=False)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate= must be a callable taking a model and returning a dict, got "
                        f"{type(evaluate).__name__}")
    if budget is not None:
        check_budget(budget)
    check_round_to(round_to)


def _copy_model(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


#: batches of the shrink data that re-estimate the slim model's BatchNorm statistics (ms.recalibrate_batchnorm)
CALIBRATION_BATCHES = 20


def _calibration_data(fit):
    """The shrink phase's inputs, when they can be read again without side effects (an array or a
    tf.data.Dataset; a generator would lose the batches it yields), batched like the shrink phase."""
    import tensorflow as tf

    x = fit.get("x")
    if isinstance(x, tf.data.Dataset):
        return x
    if hasattr(x, "shape") and hasattr(x, "__getitem__"):
        size = int(fit.get("batch_size") or 32)
        return [x[i:i + size] for i in range(0, min(len(x), size * CALIBRATION_BATCHES), size)]
    return None


def _export(model, source, threshold, l1_fraction, exact, calibration_data):
    """The slim model, its BatchNorm statistics re-estimated on the shrink data when it can be read again
    (the moving averages lag the weights after structure learning at a high learning rate)."""
    from morphsparse.morph.export import export
    return export(model, source=source, threshold=threshold, l1_fraction=l1_fraction, exact=exact,
                  calibration_data=calibration_data, calibration_steps=CALIBRATION_BATCHES)


__all__ = ["cycle", "CycleResult", "CycleStep"]
