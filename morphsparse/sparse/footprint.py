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

from .model import SparseModel


@dataclass
class LiveCounts:
    live: int            # live trainable values (what the peak is measured in)
    total: int           # trainable values of the dense network
    masked_live: int     # live positions of masked kernels
    masked_total: int    # size of the masked kernels


def _trainable_size(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def live_parameters(model) -> LiveCounts:
    """Live and total trainable parameters of a SparseModel, or of a plain (dense) Keras model."""
    if not isinstance(model, SparseModel):
        total = _trainable_size(model)
        return LiveCounts(total, total, 0, 0)
    total = _trainable_size(model.model)
    masked_total = sum(int(np.prod(unit.mask.shape)) for unit in model.units)
    masked_live = sum(int(np.count_nonzero(keras.ops.convert_to_numpy(unit.mask))) for unit in model.units)
    return LiveCounts(total - masked_total + masked_live, total, masked_live, masked_total)


class PeakParameterMonitor(keras.callbacks.Callback):
    """Records the most live parameters the model held during ``fit`` (``peak``) and when (``peak_step``).

    Masks only change on update steps, so the monitor reads one scalar per batch (the model's update counter)
    and counts mask non-zeros only when that counter moved. Works on any SparseModel and on dense models
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
        counter = getattr(self.model, "mask_updates", None)
        return None if counter is None else int(keras.ops.convert_to_numpy(counter))

    def on_train_begin(self, logs=None):
        self._seen_updates = self._updates()
        self._record(self._step())

    def _step(self):
        counter = getattr(self.model, "sparse_step", None)
        if counter is None:
            return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        return int(keras.ops.convert_to_numpy(counter))

    def on_train_batch_end(self, batch, logs=None):
        updates = self._updates()
        if updates is not None and updates != self._seen_updates:
            self._seen_updates = updates
            self._record(self._step())

    def on_epoch_end(self, epoch, logs=None):
        live = self._record(self._step())
        if logs is not None:
            logs["live_parameters"] = live
