"""Optional logging for sparse training. Training never depends on it: the model's own step updates the masks.

``SparsityMonitor`` reads counters the training step maintains (no per-step Python work) and adds them to
Keras's epoch logs (so they show in the progress bar and in ``History``) and, with ``log_dir``, to TensorBoard.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .model import find_sparse_model


def _write_scalar(name, value, step):
    """A TensorBoard scalar; works without the tensorboard package (tf.summary.scalar needs it)."""
    try:
        tf.summary.scalar(name, value, step=step)
    except tf.errors.OpError:
        raise
    except Exception:  # TBNotInstalledError: write the same record through the core summary op
        from tensorflow.core.framework import summary_pb2
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)


class SparsityMonitor(keras.callbacks.Callback):
    """Adds ``sparsity``, ``mask_updates`` and ``mask_changes`` (weights grown since the last epoch) to logs.

    Args:
        log_dir: also write these, and each kernel's sparsity with ``per_layer``, as TensorBoard scalars.
        per_layer: log every masked kernel's sparsity too (as ``sparsity/<kernel key>``).
    """

    def __init__(self, log_dir: str | None = None, per_layer: bool = False):
        super().__init__()
        self.log_dir = log_dir
        self.per_layer = per_layer
        self._writer = None
        self._last_changes = 0
        self._last_updates = 0
        self.history = []

    def on_train_begin(self, logs=None):
        sparse = find_sparse_model(self.model)
        self._last_changes = int(keras.ops.convert_to_numpy(sparse.mask_changes))
        self._last_updates = int(keras.ops.convert_to_numpy(sparse.mask_updates))
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        sparse = find_sparse_model(self.model)
        changes = int(keras.ops.convert_to_numpy(sparse.mask_changes))
        updates = int(keras.ops.convert_to_numpy(sparse.mask_updates))
        kernels = {unit.key: keras.ops.convert_to_numpy(unit.mask) for unit in sparse.units}
        live = sum(int(np.count_nonzero(m)) for m in kernels.values())
        total = sum(m.size for m in kernels.values())
        values = {"sparsity": 1.0 - live / total, "mask_updates": updates - self._last_updates,
                  "mask_changes": changes - self._last_changes}
        if self.per_layer:
            values.update({f"sparsity/{key}": 1.0 - np.count_nonzero(m) / m.size for key, m in kernels.items()})
        self._last_changes, self._last_updates = changes, updates
        self.history.append(dict(values, epoch=epoch))
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in values.items():
                    _write_scalar(name, value, epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
