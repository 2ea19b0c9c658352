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


#: an array of inputs (or an (x, y) tuple of arrays) is cut into batches of this many examples
ARRAY_BATCH_SIZE = 32


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "__getitem__") and len(value.shape) > 0


def _is_arrays(value):
    """An array, or a list/dict of arrays (one per network input), as opposed to an iterable of batches."""
    if isinstance(value, (list, dict)):
        entries = list(value.values()) if isinstance(value, dict) else value
        return bool(entries) and all(_is_array(entry) for entry in entries)
    return _is_array(value)


def _input_batches(data, steps, n_inputs=1):
    """Input batches from ``data`` (what :func:`recalibrate_batchnorm` and ``export(calibration_data=)`` take):
    a tf.data.Dataset or any iterable of batches, each ``x`` or an ``(x, y)`` / ``(x, y, sample_weight)``
    tuple; one array of inputs (a numpy array or tensor; for a model of ``n_inputs`` > 1 inputs a list or dict
    of them); or an ``(x, y)`` / ``(x, y, sample_weight)`` tuple of such arrays, as ``Model.fit`` and
    ``ms.prune(data=)`` take them. Arrays are cut into batches of :data:`ARRAY_BATCH_SIZE`; y and the sample
    weights are never read (only x feeds the network)."""
    if isinstance(data, tuple) and len(data) in (2, 3) and _is_arrays(data[0]):
        data = data[0]                         # (x, y[, sample_weight]) arrays: the inputs only
    several = isinstance(data, dict) or (isinstance(data, list) and n_inputs > 1 and len(data) == n_inputs)
    if keras.ops.is_tensor(data) or isinstance(data, np.ndarray) or (several and _is_arrays(data)):
        total = int(keras.tree.flatten(data)[0].shape[0])
        batches = (keras.tree.map_structure(lambda a: a[start:start + ARRAY_BATCH_SIZE], data)
                   for start in range(0, total, ARRAY_BATCH_SIZE))
    else:
        batches = iter(data)
    for batch in itertools.islice(batches, steps):
        if isinstance(batch, tuple) and len(batch) in (2, 3):
            batch = batch[0]       # (x, y) or (x, y, sample_weight): only x feeds the network
        yield batch


def _input_shapes(model):
    """The shapes the model's inputs expect (one shape, or a list for several inputs); None when unbuilt."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    shapes = [tuple(tensor.shape) for tensor in inputs]
    return shapes[0] if len(shapes) == 1 else shapes


def _check_first_batch(model, batch, expected):
    """Run ``model`` once on ``batch`` in inference mode (no statistic moves; an unbuilt model gets built), so
    that data the model cannot take (``expected``: its :func:`_input_shapes`) is refused before anything is reset."""
    try:
        model(batch, training=False)
    except Exception as err:  # noqa: BLE001 - Keras's shape/dtype errors vary; ours names the argument
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        wanted = (f"it expects inputs of shape {expected}" if expected is not None else
                  f"model '{model.name}' is not built, so build it first (model.build(input_shape), or call it "
                  "on a batch of the right shape)")
        shapes = keras.tree.map_structure(lambda a: tuple(np.shape(a)), batch)
        raise ValueError(f"recalibrate_batchnorm: the model cannot run on the first batch of data (inputs of "
                         f"shape {shapes}): {wanted}; pass data= as batches of inputs x, (x, y) batches or an "
                         f"(x, y) tuple of arrays. The moving statistics were left as they were. "
                         f"({type(err).__name__}: {first[:300]})") from err


def recalibrate_batchnorm(model, data, steps=None):
    """Reset the moving mean and variance of every BatchNormalization in ``model`` and re-estimate them as
    the cumulative average of the batch statistics over ``data`` (see the module docstring).

    ``data``: a ``tf.data.Dataset`` or iterable of batches (``x`` or ``(x, y)``), an array of inputs, or an
    ``(x, y)`` / ``(x, y, sample_weight)`` tuple of arrays (arrays are batched by 32; only x is used).
    ``steps``: the number of batches to use (default: all). Returns the number of batches used. Dropout and
    other training-only layers are active during the passes, as in training. The first batch is tried in
    inference mode before anything is reset: data the model cannot take raises a ValueError and leaves the
    statistics as they were (as does any later failure). An unbuilt model is built by that first batch.
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
    expected = _input_shapes(model)
    batches = _input_batches(data, steps, len(expected) if isinstance(expected, list) else 1)
    first = next(batches, None)
    if first is None:
        raise ValueError("recalibrate_batchnorm: data gave no batch; the moving statistics were left as they "
                         "were. Pass at least one batch.")
    _check_first_batch(model, first, expected)
    unbuilt = [layer.name for layer in layers
               if getattr(layer, "moving_mean", None) is None or getattr(layer, "moving_variance", None) is None]
    if unbuilt:
        raise ValueError(f"recalibrate_batchnorm: BatchNormalization layer(s) {unbuilt} of model '{model.name}' are "
                         "not built (the first batch did not reach them); build the model first "
                         "(model.build(input_shape), or call it on a batch)")
    momenta = [layer.momentum for layer in layers]
    saved = [(keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))
             for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    used = 0
    try:
        for t, batch in enumerate(itertools.chain([first], batches)):
            for layer in layers:
                layer.momentum = t / (t + 1.0)
            model(batch, training=True)
            used = t + 1
    except BaseException:        # a later batch the model cannot take: put the statistics back
        for layer, (mean, variance) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


__all__ = ["recalibrate_batchnorm", "batch_norm_layers"]
