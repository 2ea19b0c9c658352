"""``WrappingOptimizer``: the base of morphsparse's optimizer wrappers (``SparseOptimizer``, ``MorphOptimizer``).

Both join Keras the way ``keras.optimizers.LossScaleOptimizer`` does: the model stays the user's model, the
wrapper owns an inner optimizer that does the actual update, serialises it in its config, and keeps its own
variables next to the inner optimizer's, so that ``model.save``, ``save_weights``/``load_weights``,
``ModelCheckpoint`` and ``BackupAndRestore`` save and restore them with no help. Wrappers compose: the inner
optimizer may itself be a wrapper.

A wrapper that needs its model (to read its channel graph, or to log in ``fit``) is told it with ``bind(model)``;
Keras builds an optimizer without saying for which model, so one loaded with ``keras.saving.load_model`` is
bound once after loading. This module also holds what the wrappers' log metrics share (they live in
``model.metrics``, see :func:`attach_metric`; they report in training steps only, :func:`is_training_step`)
and finding a wrapper on a model.
"""

from __future__ import annotations

import inspect
import weakref

import keras
import tensorflow as tf

from morphsparse import keras_internals as _keras


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


#: The first entry of a wrapper's saved config, so that Keras's "Could not locate class" error (raised when
#: morphsparse was not imported) shows it at the start of the config it prints: short, the fix first.
REQUIRES = "import morphsparse first (or load_model(path, compile=False))"


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
        inner = inner_optimizer = get_optimizer(inner_optimizer)
        while isinstance(inner, WrappingOptimizer):
            if inner.must_be_outermost:
                raise ValueError(f"a {type(inner).__name__} cannot be wrapped by a {wrapper}: wrap the {wrapper} in "
                                 f"it instead (make the {wrapper} first and pass it as the inner optimizer)")
            inner = inner.inner_optimizer
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self._set("_training_graphs", weakref.WeakSet())     # see note_training_step
        self._set("_eager_training", False)

    def _set(self, name, value):
        """A plain attribute (no Keras or TensorFlow tracking of lists/dicts of non-variables)."""
        object.__setattr__(self, name, value)

    def build(self, var_list):
        _check_distributed(var_list)
        super().build(var_list)
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)

    @property
    def variables(self):
        return super().variables + self.inner_optimizer.variables

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
        variables = list(_keras.built_variables(self) if trainable_variables is None else trainable_variables)
        _check_distributed(variables)      # once per trace: the optimizer may have been built outside the scope
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
        """The config entries every wrapper saves: the hint first (see :data:`REQUIRES`), its name, the inner
        optimizer."""
        return {"requires": REQUIRES, "name": self.name,
                "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["inner_optimizer"] = keras.optimizers.deserialize(config["inner_optimizer"],
                                                                 custom_objects=custom_objects)
        return cls(**config)


def _check_distributed(var_list):
    """Under a mirrored strategy every variable the optimizer updates must be mirrored: one made outside
    ``strategy.scope()`` fails deep inside Keras's update with a bare AssertionError."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return
    outside = [v.path for v in var_list if not isinstance(tf_variable(v), tf.distribute.DistributedValues)]
    if outside:
        raise ValueError(
            f"{len(outside)} of the model's variables ({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}) "
            f"were created outside the {type(strategy).__name__}'s scope, in which this optimizer is built: build "
            "the model, call ms.sparse_optimizer / ms.morph_optimizer and compile, all inside `with "
            "strategy.scope():` (then call fit anywhere)")


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
# A metric in model.metrics is read in training and test steps alike, and Keras returns a bare float from
# evaluate() only when the loss is the one result: the wrappers' metrics report inside training steps only. Which
# steps those are is known when a step is traced: the wrapper notes the (outermost) graph its apply is traced
# in, and the metric, traced later in the same step, looks for it there.

def _root_graph(graph):
    """The outermost ``tf.function`` graph that ``graph`` is nested in (cond branches, inner functions); the
    process-wide graph that holds every function is not one of them."""
    while True:
        outer = getattr(graph, "outer_graph", None)
        if outer is None or not hasattr(outer, "outer_graph"):     # a function graph has one; the global not
            return graph
        graph = outer


def note_training_step(optimizer):
    """Record, inside ``optimizer.apply``, that the step being traced (or run eagerly) trains with it."""
    if tf.executing_eagerly():
        optimizer._set("_eager_training", True)
    else:
        optimizer._training_graphs.add(_root_graph(tf.compat.v1.get_default_graph()))


def is_training_step(optimizer):
    """True inside a step that applies ``optimizer`` (a traced training step; eagerly: once per step)."""
    if tf.executing_eagerly():
        training = optimizer._eager_training
        optimizer._set("_eager_training", False)
        return training
    return _root_graph(tf.compat.v1.get_default_graph()) in optimizer._training_graphs


def attach_metric(model, attribute, metric):
    """Set ``metric`` as ``model.<attribute>``: Keras tracks a metric set as a model attribute into
    ``model.metrics``, whose results fit logs. Returns the metric."""
    try:
        setattr(model, attribute, metric)
    except ValueError:
        # A built subclassed model locks its state; adding a metric changes no weight, so unlock around it.
        with _keras.unlocked(model):
            setattr(model, attribute, metric)
    return metric
