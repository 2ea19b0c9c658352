"""``WrappingOptimizer``: the base of morphsparse's optimizer wrappers (``SparseOptimizer``, ``MorphOptimizer``).

Both join Keras the way ``keras.optimizers.LossScaleOptimizer`` does: the model stays the user's model, the
wrapper owns an inner optimizer that does the actual update, serialises it in its config, and keeps its own
variables next to the inner optimizer's, so that ``model.save``, ``save_weights``/``load_weights``,
``ModelCheckpoint`` and ``BackupAndRestore`` save and restore them with no help. Wrappers compose: the inner
optimizer may itself be a wrapper.

This module also holds what the wrappers' log metrics share (they live in ``model.metrics``, see
:func:`attach_metric`): marking a traced graph as a training step, and finding a wrapper on a model.
"""

from __future__ import annotations

import inspect
import warnings

import keras
import tensorflow as tf


def _optimizer_defaults():
    """Keras's defaults of the arguments every optimizer takes (learning_rate has none), from the base class
    whose ``__init__`` declares them, so that a value Keras itself passes back (ema_momentum=0.99) is accepted."""
    for klass in keras.optimizers.Optimizer.__mro__:
        parameters = inspect.signature(klass.__init__).parameters
        if "clipnorm" in parameters:
            return {name: p.default for name, p in parameters.items()
                    if name not in ("self", "name", "kwargs")}
    raise RuntimeError("keras.optimizers.Optimizer declares no clipnorm argument: unsupported Keras version")


#: {argument: Keras's default} of keras.optimizers.Optimizer.__init__ (learning_rate: inspect's "empty").
OPTIMIZER_ARGUMENTS = _optimizer_defaults()


def tf_variable(variable):
    """The backend tf.Variable (a MirroredVariable under a strategy) behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def get_optimizer(optimizer, what="inner_optimizer"):
    """An optimizer from an instance, a serialised config (dict) or a name such as ``"adam"``."""
    if isinstance(optimizer, (dict, str)):
        optimizer = keras.optimizers.get(optimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"{what} must be a keras.optimizers.Optimizer, its config or a name such as 'adam'; got "
                        f"{type(optimizer).__name__}")
    return optimizer


class WrappingOptimizer(keras.optimizers.Optimizer):
    """Owns ``inner_optimizer`` and delegates to it what belongs to the actual update (learning rate, loss
    scaling, EMA, clipping); subclasses add their work around ``inner_optimizer.apply`` in :meth:`apply`.

    Arguments of ``keras.optimizers.Optimizer`` (learning_rate, clipnorm, use_ema, ...) are refused unless they
    are Keras's defaults: they belong on the inner optimizer, and a wrapper that ignored them would train
    differently from what was asked."""

    #: True for a wrapper that must wrap the others (its work comes before and after theirs in every step)
    must_be_outermost = False

    def __init__(self, inner_optimizer, name=None, **kwargs):
        wrapper = type(self).__name__
        for key, value in kwargs.items():
            if key not in OPTIMIZER_ARGUMENTS:
                raise ValueError(f"{wrapper} got an unknown argument {key}={value!r}")
            default = OPTIMIZER_ARGUMENTS[key]
            if value is None or value is False or (default is not inspect.Parameter.empty and value == default):
                continue
            raise ValueError(f"{wrapper} does not take {key}={value!r}: set it on the inner optimizer (e.g. "
                             f"keras.optimizers.Adam(..., {key}={value!r})), which does the actual update")
        inner_optimizer = get_optimizer(inner_optimizer)
        inner = inner_optimizer
        while isinstance(inner, WrappingOptimizer):
            if inner.must_be_outermost:
                raise ValueError(f"a {type(inner).__name__} cannot be wrapped by a {wrapper}: wrap the {wrapper} in "
                                 f"it instead (make the {wrapper} first and pass it as the inner optimizer)")
            inner = inner.inner_optimizer
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer

    def _set(self, name, value):
        """A plain attribute (no Keras or TensorFlow tracking of lists/dicts of non-variables)."""
        object.__setattr__(self, name, value)

    def build(self, var_list):
        super().build(var_list)
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)

    @property
    def variables(self):
        return self._variables[:] + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        # Keras calls this at the end of every fit(); the inner optimizer may write its EMA into the weights.
        self.inner_optimizer.finalize_variable_values(var_list)

    def apply_gradients(self, grads_and_vars):
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError("apply_gradients(grads_and_vars) got no (gradient, variable) pairs: pass "
                             "zip(gradients, model.trainable_variables), made anew for every call (a zip that "
                             "was already iterated is empty)")
        return super().apply_gradients(pairs)

    def _prepare_apply(self, grads, trainable_variables):
        """(gradients, variables) as lists, building the optimizer on its first use."""
        if not self.built:
            if trainable_variables is None:
                raise ValueError("call optimizer.build(model.trainable_variables) before apply(grads) without "
                                 "variables")
            self.build(trainable_variables)
        variables = list(self._trainable_variables if trainable_variables is None else trainable_variables)
        grads = list(grads)
        if len(grads) != len(variables):
            raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
        return grads, variables

    @staticmethod
    def in_cross_replica(fn, *args):
        """Run ``fn(strategy, *args)`` once for all replicas (where variables are updated consistently)."""
        context = tf.distribute.get_replica_context()
        if context is None:  # already in cross-replica context
            return fn(tf.distribute.get_strategy(), *args)
        return context.merge_call(fn, args=args)

    def inner_config(self):
        return {"name": self.name, "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["inner_optimizer"] = keras.optimizers.deserialize(config["inner_optimizer"],
                                                                 custom_objects=custom_objects)
        return cls(**config)


def find_wrapped(obj, cls):
    """The optimizer of class ``cls`` in ``obj`` (an optimizer, or a model's compiled optimizer) or among the
    inner optimizers it wraps; None when there is none."""
    # an uncompiled model has no optimizer attribute yet
    current = getattr(obj, "optimizer", None) if isinstance(obj, keras.Model) else obj
    while current is not None and not isinstance(current, cls):
        current = current.inner_optimizer if isinstance(current, (WrappingOptimizer,
                                                                   keras.optimizers.LossScaleOptimizer)) else None
    return current


# --- metrics that report a wrapper's counters in fit's logs ------------------------------------------------------

def _root_graph(graph):
    """The outermost ``tf.function`` graph that ``graph`` is nested in (cond branches, inner functions)."""
    while True:
        outer = getattr(graph, "outer_graph", None)
        if outer is None or not hasattr(outer, "outer_graph"):
            return graph
        graph = outer


def mark_training(optimizer):
    """Record that the step being traced (or run eagerly) is a training step of ``optimizer``, so that its log
    metric reports in ``fit`` and stays silent in ``evaluate`` (see :func:`is_training_step`)."""
    if tf.executing_eagerly():
        object.__setattr__(optimizer, "_eager_training", True)
        return
    graph = _root_graph(tf.compat.v1.get_default_graph())
    marks = getattr(graph, "_morphsparse_training", None)
    if marks is None:
        marks = set()
        setattr(graph, "_morphsparse_training", marks)
    marks.add(id(optimizer))


def is_training_step(optimizer):
    """True inside a step that applied ``optimizer`` (a traced training step; eagerly: once per step)."""
    if tf.executing_eagerly():
        training = getattr(optimizer, "_eager_training", False)
        object.__setattr__(optimizer, "_eager_training", False)
        return training
    return id(optimizer) in getattr(_root_graph(tf.compat.v1.get_default_graph()), "_morphsparse_training", ())


def attach_metric(model, attribute, metric):
    """Set ``metric`` as ``model.<attribute>``: Keras tracks a metric set as a model attribute into
    ``model.metrics``, whose results fit logs. Returns the metric."""
    try:
        setattr(model, attribute, metric)
    except ValueError:
        # A built subclassed model locks its state; adding a metric changes no weight, so unlock around it.
        tracker = getattr(model, "_tracker", None)
        if tracker is None:
            warnings.warn(f"could not attach the {metric.name} metric to model {model.name!r}: fit's logs will not "
                          "show its values", UserWarning, stacklevel=3)
            return metric
        locked = tracker.locked
        tracker.unlock()
        try:
            setattr(model, attribute, metric)
        finally:
            tracker.locked = locked
    return metric
