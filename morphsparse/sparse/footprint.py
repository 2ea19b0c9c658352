"""How many parameters a model holds live, and the peak of that during training.

"Live" counts every trainable value a sparse training run must store and update: the unmasked positions of
masked kernels plus every trainable weight that is never masked (biases, normalisation scales). A dense model's
live count is its trainable parameter count. Methods differ most in the peak: RigL, SNIP and static stay at the
target; GaP holds one partition dense at a time; lottery tickets and gradual magnitude pruning start dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from .optimizer import find_sparse_optimizer


@dataclass
class LiveCounts:
    live: int            # live trainable values (what the peak is measured in)
    total: int           # trainable values of the dense network
    masked_live: int     # live positions of masked kernels
    masked_total: int    # size of the masked kernels


def _trainable_size(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def live_parameters(model) -> LiveCounts:
    """Live and total trainable parameters of a sparse model, or of a plain (dense) Keras model."""
    sparse = find_sparse_optimizer(model, required=False)
    total = _trainable_size(model)
    if sparse is None:
        return LiveCounts(total, total, 0, 0)
    masked_total = sum(unit.size for unit in sparse.units)
    masked_live = sum(int(np.count_nonzero(keras.ops.convert_to_numpy(unit.mask))) for unit in sparse.units)
    return LiveCounts(total - masked_total + masked_live, total, masked_live, masked_total)


class PeakParameterMonitor(keras.callbacks.Callback):
    """Records the most live parameters the model held during ``fit`` (``peak``) and when (``peak_step``).

    Masks only change on update steps, so the monitor reads one scalar per batch (the optimizer's update counter)
    and counts mask non-zeros only when that counter moved. Works on any sparse model and on dense models
    (where the peak is simply the trainable parameter count). Adds ``live_parameters`` to the epoch logs.
    """

    def __init__(self):
        super().__init__()
        self.peak = 0
        self.peak_step = 0
        self._seen_updates = None

    def _record(self, step):
        live = live_parameters(self.model).live
        if live > self.peak:
            self.peak, self.peak_step = live, step
        return live

    def _updates(self):
        sparse = find_sparse_optimizer(self.model, required=False)
        return None if sparse is None else int(keras.ops.convert_to_numpy(sparse.mask_updates))

    def on_train_begin(self, logs=None):
        self._seen_updates = self._updates()
        self._record(self._step())

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        updates = self._updates()
        if updates is not None and updates != self._seen_updates:
            self._seen_updates = updates
            self._record(self._step())

    def on_epoch_end(self, epoch, logs=None):
        live = self._record(self._step())
        if logs is not None:
            logs["live_parameters"] = live
