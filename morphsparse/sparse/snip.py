"""SNIP (Lee et al., 2019): one-shot pruning at initialisation by connection sensitivity ``|g * W|``.

    optimizer = ms.sparse_optimizer(model, "adam", 0.9, method="snip", data=(x, y),
                                    loss="sparse_categorical_crossentropy")
    model.compile(optimizer=optimizer, ...); model.fit(...)      # the mask never changes again

Before any training step, the loss gradient ``g`` of each masked kernel is taken on ``batches`` batches of
``data`` (averaged, i.e. the gradient of the mean loss over those batches) at the initial weights, and each
kernel keeps the ``kept_count(N_l, S_l)`` positions with the largest ``|g * W|``; ``S_l`` comes from the chosen
distribution, exactly as for RigL. Ties go to the lower flat index. The network is run with ``training=False`` so
that scoring changes nothing (no BatchNorm statistics update, no dropout noise). After scoring SNIP behaves like
``static``: a saved SNIP model reloads with its mask and needs no data.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .updaters import Static, register_updater


def _check_batched(data, model):
    """A tf.data.Dataset of single examples would be fed to the model as if each were a batch: refuse it."""
    if not isinstance(data, tf.data.Dataset) or model is None:
        return
    inputs = getattr(model, "inputs", None)
    spec = data.element_spec
    if not inputs or not isinstance(spec, (tuple, list)) or not hasattr(spec[0], "shape"):
        return
    rank, expected = len(spec[0].shape), len(inputs[0].shape)
    if rank == expected - 1:
        raise ValueError(f"data= is a tf.data.Dataset of single examples (x of shape {tuple(spec[0].shape)}, the "
                         f"model expects batches of rank {expected}); batch it first, e.g. data=dataset.batch(128)")


def first_batches(data, batches: int, batch_size: int):
    """The first ``batches`` ``(x, y)`` batches of ``data``: a tuple of arrays, a tf.data.Dataset or an iterable."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = data
        count = int(x.shape[0]) if not isinstance(x, dict) else None
        if not count:
            raise ValueError("data=(x, y) holds no examples")
        return [(x[i:i + batch_size], y[i:i + batch_size])
                for i in range(0, min(count, batches * batch_size), batch_size)]
    if isinstance(data, tf.data.Dataset):
        data = data.take(batches)
    found = []
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError("each batch of data must be an (x, y) pair")
        found.append((item[0], item[1]))
        if len(found) == batches:
            break
    if not found:
        raise ValueError("data yielded no batches")
    return found


def connection_sensitivity(model, data, loss, batches: int = 1, batch_size: int = 128, units=None) -> dict:
    """``{kernel key: |g * W|}`` for every masked kernel of the sparse ``model`` (numpy arrays).

    ``g`` is the gradient of the mean of ``loss`` over the first ``batches`` batches, at the current weights.
    """
    from .optimizer import find_sparse_optimizer
    loss_fn = keras.losses.get(loss)
    if loss_fn is None:
        raise ValueError("SNIP needs loss= (a Keras loss name or callable) to score connections")
    units = find_sparse_optimizer(model).units if units is None else units
    kernels = [unit.kernel for unit in units]
    totals = [tf.zeros(k.shape, tf.float32) for k in kernels]
    _check_batched(data, model)
    chosen = first_batches(data, batches, batch_size)
    for x, y in chosen:
        with tf.GradientTape() as tape:
            prediction = model(x, training=False)
            value = tf.reduce_mean(loss_fn(y, prediction))
        gradients = tape.gradient(value, kernels)
        for i, gradient in enumerate(gradients):
            if gradient is not None:
                totals[i] += tf.convert_to_tensor(gradient, tf.float32)
    return {unit.key: np.abs(keras.ops.convert_to_numpy(total / len(chosen))
                             * keras.ops.convert_to_numpy(unit.kernel).astype(np.float32))
            for unit, total in zip(units, totals)}


@register_updater("snip")
class SNIP(Static):
    """Fixed mask chosen at initialisation by ``|g * W|`` on a few batches.

    Args:
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)`` batches, or any iterable of batches. Only
            needed when the mask is first drawn (not when a saved model is loaded).
        loss: the training loss (a Keras loss name or callable).
        batches: how many batches to average the gradient over (SNIP uses one).
        batch_size: batch size when ``data`` is given as arrays.
    """

    def __init__(self, data=None, loss=None, batches: int = 1, batch_size: int = 128,
                 sparsity_type="unstructured"):
        super().__init__(sparsity_type)
        from .schedules import whole_number
        whole_number(batches, "batches", 1)
        whole_number(batch_size, "batch_size", 1)
        self.data = data
        self.loss = loss
        self.batches = int(batches)
        self.batch_size = int(batch_size)
        self.scores = {}       # key hash -> |g * W|, filled by attach() when data is given

    def attach(self, sparse):
        if self.data is None:
            return  # a loaded model: its masks come from the file
        if self.loss is None:
            raise ValueError("method='snip' needs loss= (e.g. 'sparse_categorical_crossentropy') to score "
                             "connections on data=")
        if sparse.bound_model() is None:
            raise ValueError("method='snip' scores connections on the model: build it with ms.sparse_optimizer()")
        scores = connection_sensitivity(sparse.bound_model(), self.data, self.loss, self.batches, self.batch_size,
                                        units=sparse.units)
        self.scores = {unit.key_hash: scores[unit.key] for unit in sparse.units}
        self.data = None   # scoring is done; do not keep a reference to the user's data set

    def initial_mask(self, shape, sparsity, key_hash, seed):
        if key_hash not in self.scores:
            raise ValueError("method='snip' scores connections on data before training: pass data=(x, y) (or a "
                             "tf.data.Dataset of batches) and loss= to sparse_optimizer()")
        scores = self.scores[key_hash]
        mask = self.sparsity_type.keep_highest(tf.constant(scores.reshape(shape)),
                                              self.sparsity_type.kept_count(shape, sparsity))
        return keras.ops.convert_to_numpy(mask).astype(np.float32)

    def get_config(self):
        config = dict(super().get_config(), batches=self.batches, batch_size=self.batch_size)
        if isinstance(self.loss, str):
            config["loss"] = self.loss
        return config
