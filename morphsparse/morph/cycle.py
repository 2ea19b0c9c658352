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

import inspect
import time
import warnings
from dataclasses import dataclass, field

import keras

from morphsparse.costs import BUDGET_TARGETS, count_flops, count_params
from morphsparse.morph import alive as _alive
from morphsparse.morph.expand import check_budget, check_round_to, expand as _expand
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


#: the old keywords of cycle() and the dict they now belong to (deprecated; removed in the next release)
_LEGACY = {"target": "regularizer", "source": "regularizer", "threshold": "regularizer", "strength": "regularizer",
           "strength_multiplier": "regularizer", "l1_fraction": "regularizer", "device": "regularizer",
           "expand_target": "expand", "budget": "expand", "round_to": "expand"}
#: what ``expand=`` takes: ms.expand's budget, target and rounding
EXPAND_KEYS = ("target", "budget", "round_to")


def cycle(model, fit, cycles=1, *, regularizer=None, expand=None, retrain=None, compile=None, retrain_compile=None,
          evaluate=None, exact=False, verbose=True, **legacy):
    """Run ``cycles`` MorphNet cycles (shrink -> export -> expand -> retrain) and return a :class:`CycleResult`.

    Args:
        model: the seed network (a built functional or Sequential model; trained or not). It is not modified:
            every shrink phase trains a copy.
        fit: keyword arguments for ``Model.fit`` during the shrink phase: your data and settings, e.g.
            ``dict(x=x, y=y, epochs=5, batch_size=128, validation_data=(xv, yv), callbacks=[...])``.
        cycles: how many cycles to run.
        regularizer: keyword arguments of :class:`MorphRegularizer` (``target``, ``source``, ``threshold``,
            ``strength``, ``strength_multiplier``, ``l1_fraction``, ``device``, ...), checked before any
            training; ``threshold`` and ``source`` also decide what ``export`` removes. Default: its defaults
            (FLOPs, BatchNorm gammas).
        expand: keyword arguments of :func:`morphsparse.expand` for growing the slim model back: ``target``
            ("flops" or "size"; default: the regulariser's target when it is one of those, else "flops"),
            ``budget`` (default: the seed's cost in that unit) and ``round_to`` (default 1).
        retrain: ``fit`` arguments for retraining the widened network; merged over ``fit`` (so
            ``retrain=dict(epochs=10)`` only changes the epochs). Default: the same as ``fit``.
        compile: ``callable(model)`` that compiles a model, or a dict of ``Model.compile`` arguments; by
            default every new model is compiled with the seed's compile configuration
            (``model.get_compile_config()``), so compile the seed first.
        retrain_compile: ``callable(model)`` compiling the widened network for retraining (default: ``compile``),
            e.g. a lower learning rate than structure learning uses.
        evaluate: optional ``callable(model) -> dict`` run after each retraining (e.g. test accuracy).
        exact: passed to ``export`` (keep dead channels whose fold would be inexact at image borders).
    """
    regularizer, expand = _fold_legacy(legacy, regularizer, expand)
    fit = fit_arguments(fit)
    if not (isinstance(cycles, int) and not isinstance(cycles, bool) and cycles >= 1):
        raise ValueError(f"cycles must be an integer >= 1, got {cycles!r}")
    reg_options = {"target": "flops", "source": "gamma", "threshold": _alive.DEFAULT_THRESHOLD, **regularizer}
    target, source = reg_options["target"], reg_options["source"]
    threshold, l1_fraction = reg_options["threshold"], reg_options.get("l1_fraction", 0.0)
    expand_target = expand.get("target") or (target if target in EXPANDABLE else "flops")
    budget, round_to = expand.get("budget"), expand.get("round_to", 1)
    _check_pass_through(reg_options, retrain, evaluate, budget, round_to)
    if expand_target not in EXPANDABLE:
        raise ValueError(f"expand=dict(target=...) must be one of {EXPANDABLE}, got {expand_target!r}")
    compile_model = compiler_like(model, compile, "cycle()")
    compile_retrain = compile_model if retrain_compile is None else compiler_like(model, retrain_compile,
                                                                                    "cycle()")
    retrain_fit = {**fit, **fit_arguments(retrain, "retrain", required=False)}
    budget = BUDGET_TARGETS[expand_target](model) if budget is None else budget
    # the device matters (and was checked, with a warning if it has no effect) for the latency target only
    if target != "latency":
        reg_options.pop("device", None)
    result = CycleResult(model=model, budget=budget, expand_target=expand_target)
    current = model
    for index in range(1, cycles + 1):
        start = time.perf_counter()
        # Shrink a copy: the seed and every step's retrained model stay as they were (the next cycle's
        # structure learning would otherwise overwrite the previous cycle's result).
        trainable = keras.models.clone_model(current)
        trainable.set_weights(current.get_weights())
        term = MorphRegularizer(trainable, **reg_options)
        # the user's compile, with its optimizer wrapped so that its steps add the regulariser's gradient
        compile_wrapped(trainable, compile_model, lambda network, inner: MorphOptimizer(inner, term))
        shrink_history = trainable.fit(**fit).history
        slim = _export(trainable, source, threshold, l1_fraction, exact, _calibration_data(fit))
        wide = _expand(slim, budget=budget, target=expand_target, round_to=round_to)
        compile_retrain(wide)
        retrain_history = wide.fit(**retrain_fit).history
        step = CycleStep(index, slim, wide, shrink_history, retrain_history, count_flops(slim),
                         count_params(slim), count_flops(wide), count_params(wide))
        if evaluate is not None:
            step.evaluation = dict(evaluate(wide))
        step.seconds = time.perf_counter() - start
        result.steps.append(step)
        if verbose:
            print(f"[morphsparse.cycle] {term.summary()}")
            print(f"[morphsparse.cycle] {step.summary()}")
        current = wide
    result.model = current
    return result


def _fold_legacy(legacy, regularizer, expand):
    """``(regularizer, expand)`` dicts, with the old keywords (``target=``, ``round_to=``, ``**regularizer
    arguments``...) folded in and a DeprecationWarning that writes out the new call."""
    for name, value in (("regularizer", regularizer), ("expand", expand)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name}= must be a dict of keyword arguments, got {type(value).__name__}")
    regularizer, expand = dict(regularizer or {}), dict(expand or {})
    unknown = sorted(set(expand) - set(EXPAND_KEYS))
    if unknown:
        raise TypeError(f"expand= got unexpected key(s) {unknown}; it takes {list(EXPAND_KEYS)}")
    if not legacy:
        return regularizer, expand
    moved = {"regularizer": {}, "expand": {}}
    for name, value in legacy.items():
        # an old keyword of the expansion keeps its old name's meaning: expand_target= is expand's target=
        group = _LEGACY.get(name, "regularizer")
        moved[group]["target" if name == "expand_target" else name] = value
    clashes = sorted(f"{group}=dict({key}=...)" for group, values in moved.items() for key in values
                     if key in (regularizer if group == "regularizer" else expand))
    if clashes:
        raise ValueError(f"cycle() got {', '.join(clashes)} twice: once as an old keyword, once in the dict")
    regularizer.update(moved["regularizer"])
    expand.update(moved["expand"])
    advice = ", ".join(f"{group}=dict({', '.join(f'{k}={v!r}' for k, v in values.items())})"
                       for group, values in moved.items() if values)
    warnings.warn(f"cycle({', '.join(f'{k}=...' for k in legacy)}): these keywords are deprecated and will be "
                  f"removed in the next release; write cycle(model, fit, ..., {advice})", DeprecationWarning,
                  stacklevel=3)
    return regularizer, expand


def _check_pass_through(reg_options, retrain, evaluate, budget, round_to):
    """Check, before any training, the arguments that reach the regulariser, export and expand only later
    (a bad ``round_to`` would otherwise fail after a whole shrink phase). Errors name the argument."""
    takes = set(inspect.signature(MorphRegularizer).parameters) - {"model", "self"}
    unknown = sorted(set(reg_options) - takes)
    if unknown:
        raise TypeError(f"regularizer= got unexpected key(s) {unknown}; MorphRegularizer takes {sorted(takes)}")
    check_arguments(reg_options["target"], reg_options["source"], reg_options["threshold"],
                    reg_options.get("strength"),
                    reg_options.get("strength_multiplier", DEFAULT_STRENGTH_MULTIPLIER),
                    reg_options.get("l1_fraction", 0.0), reg_options.get("device"))
    fit_arguments(retrain, "retrain", required=False)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate= must be a callable taking a model and returning a dict, got "
                        f"{type(evaluate).__name__}")
    if budget is not None:
        check_budget(budget)
    check_round_to(round_to)


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
