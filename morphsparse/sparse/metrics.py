"""``sparsity``, ``mask_changes`` and ``alive_params`` in every ``fit``'s logs, with no callback.

Keras reports in ``fit``'s logs (progress bar, ``History``, ``TensorBoard``, ``CSVLogger``...) the results of every
metric in ``model.metrics``, and a metric assigned as an attribute of a model is tracked into that list (the
public mechanism Keras documents for custom metrics). ``sparse_optimizer`` attaches one such metric to the model;
it has no state of its own and reads three scalar counters the ``SparseOptimizer`` keeps, so it costs a few
scalar reads per step. Because it lives in ``model.metrics`` and not in a callback, no callback order matters.

Its result is a dict (Keras spreads dict results into the logs):

- ``sparsity``: fraction of zeros over the masked kernels;
- ``mask_changes``: weights regrown since the start of the epoch (``reset_state`` runs at each epoch start);
- ``alive_params``: live trainable values (unmasked kernel positions plus every unmasked trainable weight).

It reports inside training steps only (:func:`morphsparse.wrapping.is_training_step`), so ``evaluate()``
returns what it returned before (a bare loss for a model with no other metric), with no ``val_sparsity``
columns. It also guards against a sparsified model being compiled
with a plain optimizer (training would silently be dense): that raises at the first step.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

from ..wrapping import attach_metric, find_wrapped, is_training_step

ATTRIBUTE = "_morphsparse_metrics"


class _Holder:
    """A plain reference: Keras's saver walks a metric's attributes, and must not find the optimizer here."""

    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


class SparseTrainingMetrics(keras.metrics.Metric):
    """Reports the sparse-training counters of the model's ``SparseOptimizer`` (see the module docstring)."""

    def __init__(self, model, optimizer, name="sparse_training"):
        super().__init__(name=name)
        object.__setattr__(self, "_model_ref", weakref.ref(model))
        object.__setattr__(self, "optimizer", _Holder(optimizer))

    def update_state(self, *args, **kwargs):
        return None

    def reset_state(self):
        optimizer = self._current()
        if optimizer is None or not optimizer.built or not tf.executing_eagerly():
            return
        optimizer.epoch_changes.assign(0)
        object.__setattr__(optimizer, "_epoch_start_step",
                           int(keras.ops.convert_to_numpy(optimizer.iterations)))

    def _current(self):
        model = self._model_ref()
        if model is None:
            return self.optimizer()
        # the optimizer the model is compiled with now (a recompile may have replaced the one given here)
        return find_wrapped(model, type(self.optimizer()))

    def result(self):
        model = self._model_ref()
        optimizer = self._current()
        if optimizer is None:
            if model is not None and getattr(model, "optimizer", None) is not None and not tf.executing_eagerly():
                raise ValueError(
                    f"model {model.name!r} was made sparse by ms.sparse_optimizer() but is compiled with "
                    f"{type(model.optimizer).__name__}, not with the SparseOptimizer that sparse_optimizer() "
                    "returned: its training would be dense. Compile with "
                    "model.compile(optimizer=ms.sparse_optimizer(model, keras.optimizers.SGD(...), ...), ...), "
                    "or train the dense copy ms.strip(model).")
            return {}
        if not is_training_step(optimizer):
            if tf.executing_eagerly():
                self._check_epoch(optimizer)
            return {}
        # Few ops: Keras runs these and converts their values to Python on every step (one read of each counter).
        live = optimizer.live.value
        sparsity = 1.0 - tf.cast(live, tf.float32) * (1.0 / max(optimizer.masked_total, 1))
        alive = live + (optimizer.total_trainable - optimizer.masked_total)
        return {"sparsity": sparsity, "mask_changes": optimizer.epoch_changes.value, "alive_params": alive}

    def _check_epoch(self, optimizer):
        """At the end of a training epoch (Keras reads results eagerly then): did a fit start past the end?"""
        start = optimizer._epoch_start_step
        if start is None or not optimizer.built:
            return
        now = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if now > start:                      # steps ran since the epoch began: a training epoch
            if optimizer._fit_ended:         # the first epoch since the last fit() ended (or ever)
                optimizer.check_fit_start(start)
            object.__setattr__(optimizer, "_fit_ended", False)
        object.__setattr__(optimizer, "_epoch_start_step", None)

    def get_config(self):
        return {"name": self.name}


def attach_metrics(model, optimizer):
    """Attach (or re-point) the sparse-training metric of ``model`` to ``optimizer`` (a ``SparseOptimizer``)."""
    existing = getattr(model, ATTRIBUTE, None)
    if isinstance(existing, SparseTrainingMetrics):
        object.__setattr__(existing, "optimizer", _Holder(optimizer))
        return existing
    return attach_metric(model, ATTRIBUTE, SparseTrainingMetrics(model, optimizer))
