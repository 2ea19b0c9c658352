"""``MorphOptimizer``: structure learning (MorphNet) as an optimizer wrapper, like ``SparseOptimizer``.

    reg = ms.MorphRegularizer(model, target="flops", budget=0.5, steps=epochs * steps_per_epoch)
    model.compile(optimizer=ms.MorphOptimizer(keras.optimizers.Adam(1e-2), reg), loss=...)
    model.fit(...)                 # logs gain regularization_loss, alive_flops, alive_params (+ budget columns)

(or ``ms.morph_optimizer(model, keras.optimizers.Adam(1e-2), budget=0.5, steps=...)``). The model stays the
user's model. Each ``apply`` (what ``fit``'s step and ``apply_gradients`` call):

1. adds the gradient of ``strength * term`` to the gradients. The term depends on the weights only, so its
   gradient is taken with a tape of its own; under tf.distribute every replica adds it, and Keras sums the
   replicas' gradients, so each adds 1 / num_replicas_in_sync of it;
2. in cross-replica context, at the weights those gradients were taken at: records the logged values and,
   with a budget, runs one step of the strength controller (:mod:`morphsparse.morph.budget`), whose state (log
   multiplier, integral, step, planned steps, R and velocity per channel) are variables of this optimizer:
   ``model.save``, ``save_weights``/``load_weights``, ``ModelCheckpoint`` and ``BackupAndRestore`` save and
   restore them. (Stepping it after the update instead lands the budget measurably worse: 56.6% for 50% on
   tests/morph/test_budget.py's digits MLP, against 47.1%);
3. applies the inner optimizer (which may be a ``SparseOptimizer``: masks and a budget in one run).

**Logs.** The values are kept in one optimizer variable; a :class:`MorphTrainingMetrics` set as a model
attribute (Keras tracks it into ``model.metrics``, whose results ``fit`` logs) reads it in training steps only:
``regularization_loss`` (mean over the epoch), ``alive_flops``, ``alive_params`` and, with a budget,
``strength``, ``strength_multiplier`` (strength x initial cost) and ``alive_<target>_ratio``.

**Loading.** The config holds the regulariser's arguments, the number of channels (so a file loads with the
right number of variables) and the model's identity (:func:`~morphsparse.morph.budget.model_identity`). A
loaded optimizer has no regulariser until ``model.optimizer.bind(model)``, which analyses the model again with
the saved arguments and refuses another network; training it unbound raises at the first step.

**Budget.** ``steps=`` (the planned structure-learning steps) is required, as a schedule's decay steps are.
A plan too short for the learning rate warns when the optimizer is built; the landing verdict
(:class:`~morphsparse.morph.budget.BudgetWarning`) is issued at the end of the ``fit`` in which the planned
steps are complete.
"""

from __future__ import annotations

import math
import warnings
import weakref

import keras
import tensorflow as tf

from morphsparse.morph import budget as _budget
from morphsparse.morph.regularizers import MorphRegularizer
from morphsparse.wrapping import WrappingOptimizer, attach_metric, find_wrapped, is_training_step, note_training_step

METRIC_ATTRIBUTE = "_morph_training_metrics"
#: the logs variable: [loss sum, loss count, alive FLOPs, alive params, strength, multiplier, cost ratio]
_LOSS_SUM, _LOSS_COUNT = 0, 1


@keras.saving.register_keras_serializable(package="morphsparse")
class MorphOptimizer(WrappingOptimizer):
    """Trains with ``inner_optimizer`` and a :class:`MorphRegularizer`'s term (see the module doc); make one
    with ``MorphOptimizer(inner, reg)`` or ``ms.morph_optimizer(model, inner, ...)``.

    Args:
        inner_optimizer: the optimizer doing the update: an instance (a ``SparseOptimizer`` too), a config or
            a name such as ``"adam"``.
        regularizer: the ``MorphRegularizer`` (bound to its model), or its saved arguments (a dict; unbound
            until :meth:`bind`).
        n_channels, identity: what the saved config records of the model (read from ``regularizer`` when it
            is one).
    """

    must_be_outermost = True

    def __init__(self, inner_optimizer, regularizer=None, n_channels=None, identity=None, name=None,
                 requires=None, **kwargs):
        super().__init__(inner_optimizer, name=name, **kwargs)
        if isinstance(self.inner_optimizer, keras.optimizers.LossScaleOptimizer):
            # its apply unscales the gradients: the term's gradient must be added after that, inside it
            raise ValueError("MorphOptimizer cannot wrap a LossScaleOptimizer: wrap its inner optimizer (under a "
                             "mixed_float16 policy, compile() puts the MorphOptimizer in a LossScaleOptimizer "
                             "itself)")

        self._set("regularizer", None)
        if isinstance(regularizer, MorphRegularizer):
            arguments = dict(regularizer.arguments)
            n_channels = regularizer.kernel_calls.n_channels
            identity = _budget.model_identity(regularizer)
        elif isinstance(regularizer, dict):
            arguments = dict(regularizer)
        else:
            raise TypeError(f"regularizer must be a MorphRegularizer (or its saved arguments, a dict), got "
                            f"{type(regularizer).__name__}; make one with MorphOptimizer(inner, reg) or "
                            "ms.morph_optimizer(model, inner, ...)")
        if arguments.get("budget") is not None and arguments.get("steps") is None:
            raise ValueError("a MorphOptimizer with a budget needs the number of structure-learning steps, as a "
                             "learning-rate schedule needs its decay steps: pass steps=epochs * steps_per_epoch "
                             "to MorphRegularizer(...) or ms.morph_optimizer()")
        if n_channels is None or identity is None:
            raise ValueError("MorphOptimizer(regularizer=<dict>) also needs n_channels= and identity= (as saved "
                             "in its config); make a new one with MorphOptimizer(inner, reg)")
        self._set("arguments", arguments)
        self.n_channels = int(n_channels)
        self._set("identity", dict(identity))
        self._set("_state", None)
        self._set("_reported", False)
        if isinstance(regularizer, MorphRegularizer):
            self._connect(regularizer)

    @property
    def has_budget(self):
        return self.arguments.get("budget") is not None

    # ------------------------------------------------------------------ binding
    def bind(self, model):
        """Give a loaded optimizer its model: analyse ``model`` with the saved arguments (refusing a network other
        than the one the optimizer was saved from) and attach the log metric. Returns the optimizer."""
        if self.regularizer is not None and self.regularizer.model is model:
            return self
        regularizer = MorphRegularizer(model, **self.arguments)
        mismatch = _budget.identity_mismatch(self.identity, _budget.model_identity(regularizer))
        if mismatch or regularizer.kernel_calls.n_channels != self.n_channels:
            raise ValueError(f"this MorphOptimizer was made for model '{self.identity.get('model')}', and model "
                             f"'{model.name}' is another network: {mismatch or 'its channel count differs'}. Bind "
                             "it to the network it was saved from, or make a new optimizer with "
                             "ms.MorphOptimizer(inner, ms.MorphRegularizer(model, ...))")
        self._connect(regularizer)
        return self

    def _connect(self, regularizer):
        self._set("regularizer", regularizer)
        if regularizer.controller is not None and self._state is not None:
            # a loaded state's plan was checked when it was made
            regularizer.controller.use_state(self._state)
        model = regularizer.model
        if not isinstance(getattr(model, METRIC_ATTRIBUTE, None), MorphTrainingMetrics):
            attach_metric(model, METRIC_ATTRIBUTE, MorphTrainingMetrics(model))

    def bound_model(self):
        """The model this optimizer trains, or None before :meth:`bind` (a method, not a property: Keras's saver
        walks properties and must not reach the model from its optimizer)."""
        return None if self.regularizer is None else self.regularizer.model

    def _check_plan(self):
        # a fresh state holds the planned steps and none taken (fit builds the optimizer while tracing its first
        # step, where the variables cannot be read)
        message = _budget.too_few_steps(self.regularizer.controller, self, int(self.arguments["steps"]), 0)
        if message:
            warnings.warn(message, _budget.BudgetWarning, stacklevel=4)

    # ------------------------------------------------------------------ Keras optimizer plumbing
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        n_logs = 7 if self.has_budget else 4
        self.logs = self.add_variable((n_logs,), initializer="zeros", dtype="float64", name="morph_logs")
        if self.has_budget:
            start = keras.initializers.Constant(math.log(_budget.ControllerSettings().initial_multiplier))
            shapes = {"previous_r": (self.n_channels,), "velocity": (self.n_channels,)}
            initial = {"log_multiplier": start, "integral": start,
                       "total_steps": keras.initializers.Constant(int(self.arguments["steps"]))}
            if self.regularizer is not None:      # R now (a loaded optimizer gets the saved one)
                with tf.init_scope():             # fit builds the optimizer while tracing its first step
                    r0 = keras.ops.convert_to_numpy(self.regularizer.vector())
                initial["previous_r"] = lambda shape, dtype=None: keras.ops.cast(r0, dtype)
            variables = [self.add_variable(shapes.get(name, ()), initializer=initial.get(name, "zeros"),
                                           dtype="int64" if "step" in name else "float32", name=name)
                         for name in _budget.STATE_NAMES]
            self._set("_state", _budget.ControllerState(variables))
            if self.regularizer is not None:
                self.regularizer.controller.use_state(self._state)
                self._check_plan()

    def state(self):
        """The budget controller's variables as numpy arrays (``{name: value}``), or None without a budget."""
        return None if self._state is None else self._state.numpy_state()

    def apply(self, grads, trainable_variables=None):
        grads, variables = self._prepare_apply(grads, trainable_variables)
        if self.regularizer is None:
            raise ValueError("this MorphOptimizer is not bound to a model (it was loaded from a file, or made "
                             "from a config): call model.optimizer.bind(model) before training")
        note_training_step(self)
        extra, parts = self._term_gradients(variables)
        combined = []
        for gradient, added, variable in zip(grads, extra, variables):
            if added is not None:
                added = tf.cast(added, variable.dtype)
                gradient = added if gradient is None else tf.convert_to_tensor(gradient) + added
            combined.append(gradient)
        # the controller steps on the weights the gradients were taken at (the strength it read is that step's)
        with tf.control_dependencies([g for g in combined if g is not None]):
            self.in_cross_replica(self._controller_step, parts)
        self.inner_optimizer.apply(combined, variables)

    def _term_gradients(self, variables):
        """The gradient of strength x term on every variable (None where it does not depend on it), and the
        term's parts (``MorphRegularizer._loss_parts``) for the controller step, which reuses them."""
        with tf.GradientTape() as tape:
            parts = self.regularizer._loss_parts()
        gradients = tape.gradient(parts[0], variables)
        # Keras sums the replicas' gradients; each replica computes the whole term, so it adds a share of it.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            gradients = [None if g is None else g / replicas for g in gradients]
        return gradients, parts

    def _controller_step(self, strategy, parts):
        """Cross-replica part of a step: the logged values, one controller step, the count. Every replica
        computed the same ``parts`` from the same mirrored weights: the first replica's are used."""
        parts = [strategy.experimental_local_results(p)[0] for p in parts]
        loss, *rest = self.regularizer._loss_and_costs(training=True, budget_logs=True, parts=parts)
        logs = tf.convert_to_tensor(self.logs.value)
        totals = tf.stack([logs[_LOSS_SUM] + tf.cast(loss, tf.float64), logs[_LOSS_COUNT] + 1.0])
        self.logs.assign(tf.concat([totals, tf.stack([tf.cast(v, tf.float64) for v in rest])], axis=0))
        self.iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        # Keras calls this at the end of every fit: say once whether the budget was landed when the plan is done
        controller = None if self.regularizer is None else self.regularizer.controller
        if controller is None or self._reported or controller.step < controller.total_steps:
            return
        self._set("_reported", True)
        _, message = controller.verdict()
        if message:
            warnings.warn(message, _budget.BudgetWarning, stacklevel=2)

    def get_config(self):
        arguments = dict(self.arguments)
        for key in ("budget", "threshold", "strength", "strength_multiplier", "l1_fraction", "cost_power"):
            if arguments.get(key) is not None:
                arguments[key] = float(arguments[key])
        if arguments.get("steps") is not None:
            arguments["steps"] = int(arguments["steps"])
        return {**self.inner_config(), "regularizer": arguments,
                "n_channels": self.n_channels, "identity": dict(self.identity)}


class MorphTrainingMetrics(keras.metrics.Metric):
    """Reports the logged values of the model's MorphOptimizer in training steps (see the module doc)."""

    def __init__(self, model, name="morph_training"):
        super().__init__(name=name)
        object.__setattr__(self, "_model_ref", weakref.ref(model))     # not tracked: saving must not walk it

    def _optimizer(self):
        model = self._model_ref()
        optimizer = None if model is None else find_wrapped(model, MorphOptimizer)
        return optimizer if optimizer is not None and optimizer.built else None

    def update_state(self, *args, **kwargs):
        return None

    def reset_state(self):
        optimizer = self._optimizer()
        if optimizer is not None and tf.executing_eagerly():      # Keras resets metrics eagerly, per epoch
            values = keras.ops.convert_to_numpy(optimizer.logs).copy()
            values[[_LOSS_SUM, _LOSS_COUNT]] = 0.0
            optimizer.logs.assign(values)

    def result(self):
        optimizer = self._optimizer()
        if optimizer is None or optimizer.regularizer is None or not is_training_step(optimizer):
            return {}
        logs = optimizer.logs.value
        results = {"regularization_loss": logs[_LOSS_SUM] / tf.maximum(logs[_LOSS_COUNT], 1.0),
                   "alive_flops": logs[2], "alive_params": logs[3]}
        if optimizer.has_budget:
            results.update({"strength": logs[4], "strength_multiplier": logs[5],
                            optimizer.regularizer._ratio_name(): logs[6]})
        return results

    def get_config(self):
        return {"name": self.name}


def morph_optimizer(model, optimizer, **regularizer_arguments):
    """``MorphOptimizer(optimizer, MorphRegularizer(model, **regularizer_arguments))``: compile ``model`` with the
    result to learn its structure in ``fit`` (with ``budget=``, give ``steps=`` too)."""
    return MorphOptimizer(optimizer, MorphRegularizer(model, **regularizer_arguments))


__all__ = ["MorphOptimizer", "MorphTrainingMetrics", "morph_optimizer"]
