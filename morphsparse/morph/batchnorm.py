"""BatchNorm statistics of a model whose weights changed: re-estimate them from data.

An exported slim model (or a pruned one) keeps the moving means and variances its BatchNorms had in the
original network, but the channels feeding them changed, so the statistics no longer describe what they see.
Running ``fit`` is no fix: at Keras's default momentum (0.99) a moving average forgets its old value by 1% per
batch, so twenty batches move it only a fifth of the way.

:func:`recalibrate_batchnorm` resets every BatchNormalization's moving statistics and re-estimates them as the
cumulative average over the calibration batches: batch t (counting from 0) enters with weight 1 / (t + 1),
which is what Keras's own update computes when the layer's momentum is t / (t + 1) at that batch. After
``n`` batches the moving mean is the average of the n batch means and the moving variance the average of the
n batch variances, whatever momentum the layer was built with (its momentum is restored afterwards). The
forward passes run in training mode, as when the statistics were first learned: every BatchNorm normalises
with its batch's statistics, so the statistics of the layers downstream are those that training sees.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np

from morphsparse.morph.alive import warn_user


def batch_norm_layers(model):
    """Every BatchNormalization in ``model``, nested models included (each layer once)."""
    found, seen = [], set()

    def walk(layers):
        for layer in layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer)
            elif isinstance(layer, keras.Model):
                walk(layer.layers)

    walk(model.layers)
    return found


def _batches(data, steps):
    """Input batches from ``data``: a tf.data.Dataset or any iterable of batches (x or (x, y[, w]) tuples),
    or one array (a numpy array or a list/dict of them for several inputs), split into batches of 32."""
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        size = 32
        total = int(data.shape[0])
        batches = (data[start:start + size] for start in range(0, total, size))
    else:
        batches = iter(data)
    for batch in itertools.islice(batches, steps):
        if isinstance(batch, tuple) and len(batch) in (2, 3):
            batch = batch[0]       # (x, y) or (x, y, sample_weight): only x feeds the network
        yield batch


def recalibrate_batchnorm(model, data, steps=None):
    """Reset the moving mean and variance of every BatchNormalization in ``model`` and re-estimate them as
    the cumulative average of the batch statistics over ``data`` (see the module docstring).

    ``data``: a ``tf.data.Dataset`` or iterable of batches (``x`` or ``(x, y)``), or an array of inputs
    (batched by 32). ``steps``: the number of batches to use (default: all). Returns the number of batches
    used. Dropout and other training-only layers are active during the passes, as in training.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"recalibrate_batchnorm() takes a keras.Model, got {type(model).__name__}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    if data is None or isinstance(data, (str, bytes)):
        raise TypeError(f"data must be a dataset, an iterable of batches or an array of inputs, got {data!r}")
    layers = batch_norm_layers(model)
    if not layers:
        warn_user(f"recalibrate_batchnorm: model '{model.name}' has no BatchNormalization layer; nothing to do")
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    used = 0
    try:
        for t, batch in enumerate(_batches(data, steps)):
            for layer in layers:
                layer.momentum = t / (t + 1.0)
            model(batch, training=True)
            used = t + 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if used == 0:
        raise ValueError("recalibrate_batchnorm: data gave no batch; the moving statistics were reset and "
                         "are now meaningless (mean 0, variance 1). Pass at least one batch.")
    return used


__all__ = ["recalibrate_batchnorm", "batch_norm_layers"]
