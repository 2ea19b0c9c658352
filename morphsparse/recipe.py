"""How to train: the one convention of every call that trains models for the user.

``prune``, ``cycle``, ``lottery_ticket`` and ``parallel_gap`` take ``fit=dict(...)`` (``Model.fit``'s keyword
arguments: data, epochs, batch size, callbacks, ...) and ``compile=`` (a callable that compiles a model, or a
dict of ``Model.compile``'s keyword arguments; by default every model is compiled as the seed model was).
A second phase (retraining, fine-tuning) takes a dict merged over ``fit``.
"""

from __future__ import annotations

import numbers
import warnings

import keras


def compiler_like(model, compile=None, caller="this function", required=True):
    """A function compiling a new model: ``compile`` (the user's callable, or a dict of ``Model.compile``
    arguments whose optimizer is made afresh for every model) or the configuration ``model`` was compiled with.
    When none exists: a ValueError naming ``caller`` if ``required``, else None."""
    if isinstance(compile, dict):
        arguments = dict(compile)
        if arguments.get("loss") is None:
            raise ValueError(f"{caller} trains the models it builds: compile= needs loss=, e.g. "
                             "compile=dict(optimizer='adam', loss='sparse_categorical_crossentropy')")

        def compile_with(new_model):
            new_model.compile(**dict(arguments, optimizer=fresh_optimizer(arguments.get("optimizer", "rmsprop"))))

        return compile_with
    if compile is not None:
        if not callable(compile):
            raise TypeError(f"compile= must be a callable taking a model (and compiling it) or a dict of "
                            f"Model.compile arguments, got {compile!r}")
        return compile
    config = model.get_compile_config() if model.compiled else None
    if not config:
        if required:
            raise ValueError(f"{caller} needs to compile the models it builds: compile the seed model '{model.name}' "
                             "first, or pass compile=dict(optimizer=..., loss=..., metrics=[...]) or "
                             "compile=lambda m: m.compile(...)")
        return None

    def compile_like_seed(new_model):
        new_model.compile_from_config(config)

    return compile_like_seed


def fresh_optimizer(optimizer):
    """A new, unbuilt optimizer from ``optimizer``: a name, a config dict, an instance (copied through its
    config) or a callable taking no arguments that returns a new optimizer (for schedules built per phase)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    if callable(optimizer) and not isinstance(optimizer, type):
        made = optimizer()
        if not isinstance(made, keras.optimizers.Optimizer):
            raise TypeError(f"the optimizer factory returned {type(made).__name__}, not a keras optimizer")
        return made
    return keras.optimizers.get(optimizer)


def fit_arguments(fit, name="fit", required=True) -> dict:
    """``fit`` checked as a dict of ``Model.fit`` keyword arguments (a copy), or a TypeError naming ``name``."""
    if fit is None and not required:
        return {}
    if not isinstance(fit, dict):
        raise TypeError(f"{name}= must be a dict of Model.fit keyword arguments, e.g. dict(x=x, y=y, epochs=5, "
                        f"batch_size=128), got {type(fit).__name__}")
    return dict(fit)


def compile_wrapped(model, compile_model, wrap):
    """Compile ``model`` with ``compile_model``, then put ``wrap(model, its optimizer)`` in the optimizer's place
    (a sparse or structure-learning wrapper around the user's optimizer)."""
    compile_model(model)
    inner = model.optimizer
    if inner.built:        # compile_from_config builds the optimizer it restores; a wrapper needs a new one
        inner = fresh_optimizer(inner)
    model.optimizer = wrap(model, inner)
    return model.optimizer


# The keywords lottery_ticket and parallel_gap took before they followed the convention above. Each still works
# for one release, with a DeprecationWarning saying where it goes now.
_FIT_KEYWORDS = ("batch_size", "validation_data", "callbacks", "verbose")
_COMPILE_KEYWORDS = ("optimizer", "loss", "metrics")


def legacy_training(caller, x, y, options, epochs):
    """Fold the old ``(x, y, epochs=..., optimizer=..., loss=..., ...)`` form into ``(fit, compile, phases)``.

    ``epochs`` maps each old epoch keyword to the dict it belongs to now (``"fit"`` or a phase name such as
    ``"retrain"``). ``compile`` is None when no compile keyword was given. Returns None when nothing old was
    given; pops what it uses from ``options``."""
    used = [name for name in (*_FIT_KEYWORDS, *_COMPILE_KEYWORDS, "fit_options", *epochs) if name in options]
    if y is None and not used:       # data alone in fit's place: fit_arguments says what to write
        return None
    fit = {"x": x, "y": y} if y is not None else {"x": x}
    fit.update(options.pop("fit_options", None) or {})
    fit.update({name: options.pop(name) for name in _FIT_KEYWORDS if name in options})
    compile = {name: options.pop(name) for name in _COMPILE_KEYWORDS if name in options}
    if compile:                      # none of them: the caller's compile= (or the seed's configuration)
        compile.setdefault("optimizer", "adam")
    phases = {}
    for name, phase in epochs.items():
        if name in options:
            target = fit if phase == "fit" else phases.setdefault(phase, {})
            target["epochs"] = options.pop(name)
    advice = [f"fit=dict({', '.join(f'{k}=...' for k in fit)})"]
    advice += [f"compile=dict({', '.join(f'{k}=...' for k in compile)})"] if compile else []
    advice += [f"{phase}=dict(epochs=...)" for phase in phases]
    warnings.warn(f"{caller}(model, x, y, {', '.join(f'{k}=...' for k in used)}) is deprecated and will be removed "
                  f"in the next release: write {caller}(model, {', '.join(advice)})", DeprecationWarning, stacklevel=3)
    return fit, compile, phases


def two_phases(caller, fit, y, compile, second, phase, old_epochs, options):
    """``(fit, compile, second)`` of a call that trains in two phases (dense then retraining; grow phases then
    fine-tuning): the old form folded in (``old_epochs``: its epoch keywords of the two phases), ``second``
    (named ``phase``) merged over ``fit``, each phase's epochs checked (the first must train)."""
    legacy = legacy_training(caller, None if isinstance(fit, dict) else fit, y, options,
                             {old_epochs[0]: "fit", old_epochs[1]: phase})
    if legacy is not None:
        fit, old_compile, phases = legacy
        compile = old_compile or compile
        second = phases.get(phase, second)
    fit = fit_arguments(fit)
    second = {**fit, **fit_arguments(second, phase, required=False)}
    for name, arguments, least in (("fit", fit, 1), (phase, second, 0)):
        epochs = arguments.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < least:
            raise ValueError(f"{name}['epochs'] must be a whole number >= {least}, got {epochs!r}")
    return fit, compile, second


__all__ = ["compiler_like", "fresh_optimizer", "fit_arguments", "compile_wrapped", "legacy_training", "two_phases"]
