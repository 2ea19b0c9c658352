"""Lottery-ticket rewinding (Frankle & Carbin 2019; rewinding to step k: Frankle et al. 2020) in one call.

    result = ms.lottery_ticket(model, fit=dict(x=x_train, y=y_train, epochs=10, batch_size=128),
                               compile=dict(optimizer="adam", loss="sparse_categorical_crossentropy",
                                            metrics=["accuracy"]), sparsity=0.9, rewind_step=0)
    result.model            # a copy of the model, sparse (method "static"), holding the retrained ticket
    ms.strip(result.model)  # plain Keras model, pruned weights exactly zero

Steps: (1) train a dense copy of ``model`` with ``fit``, keeping a copy of every weight as it was after
``rewind_step`` optimizer steps (0: the initialisation); (2) prune by magnitude, each kernel keeping its
``kept_count(N_l, S_l)`` largest ``|W|`` with ``S_l`` from the distribution (ERK by default, as for RigL);
(3) rewind every weight (survivors of the masked kernels, biases, normalisation parameters) to the stored early
values; (4) retrain with the mask fixed (``retrain`` merged over ``fit``) with a fresh optimizer. Only one round of
pruning is done (one-shot); iterate the call for iterative magnitude pruning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse.recipe import compile_wrapped, compiler_like, two_phases

from .api import check_passed_options, copy_model, sparse_optimizer
from .footprint import live_parameters
from .optimizer import find_sparse_optimizer


class WeightSnapshot(keras.callbacks.Callback):
    """Keeps a copy of every model weight as it is after ``step`` optimizer steps (0: before training)."""

    def __init__(self, step: int = 0):
        super().__init__()
        if isinstance(step, bool) or int(step) < 0:
            raise ValueError(f"rewind_step must be a whole number of steps >= 0, got {step!r}")
        self.step = int(step)
        self.weights = None

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        if self.weights is None and self._iterations() == self.step:
            self.weights = [np.array(w) for w in self.model.get_weights()]

    def on_train_batch_end(self, batch, logs=None):
        if self.weights is None and self._iterations() == self.step:
            self.weights = [np.array(w) for w in self.model.get_weights()]


def prune_by_magnitude(model):
    """Set every mask of the sparse ``model`` to its kernel's largest ``|W|`` at the kernel's target count, and
    apply it."""
    sparse = find_sparse_optimizer(model)
    masks = {}
    for unit in sparse.units:
        weights = keras.ops.abs(keras.ops.convert_to_tensor(unit.kernel))
        sparsity_type = sparse.method.sparsity_type
        mask = sparsity_type.keep_highest(weights, sparsity_type.kept_count(tuple(unit.kernel.shape), unit.sparsity))
        masks[unit.key] = keras.ops.convert_to_numpy(mask)
    sparse.set_masks(masks)


@dataclass
class LotteryTicket:
    """What ``lottery_ticket`` returns."""

    model: keras.Model                 # the retrained ticket (a copy, compiled with a static SparseOptimizer)
    dense_model: keras.Model           # the dense network after step (1)
    rewind_step: int
    rewound_weights: list              # every weight of the network at rewind_step (before masking)
    masks: dict                        # {kernel key: 0/1 mask from the magnitude pruning}
    dense_history: dict = field(default_factory=dict)
    sparse_history: dict = field(default_factory=dict)
    peak_parameters: int = 0           # live trainable parameters at the peak (the dense phase)
    dense_seconds: float = 0.0
    sparse_seconds: float = 0.0

    @property
    def training_seconds(self):
        return self.dense_seconds + self.sparse_seconds


def lottery_ticket(model, fit=None, y=None, *, compile=None, retrain=None, sparsity: float | None = 0.9,
                   distribution=None, rewind_step: int = 0, seed: int = 0, reuse: LotteryTicket | None = None,
                   **sparsify_options) -> LotteryTicket:
    """Find and retrain a lottery ticket of ``model`` at ``sparsity``: train, prune, rewind, retrain.

    Args:
        model: a built Keras model (left unchanged: a copy is trained).
        fit: ``Model.fit`` keyword arguments of the dense training, e.g. ``dict(x=x, y=y, epochs=10,
            batch_size=128, validation_data=(xv, yv))`` (the convention of ``ms.prune`` and ``ms.cycle``).
        compile: ``dict(optimizer=..., loss=..., metrics=[...])`` or a callable compiling a model; by default
            the seed model's compile configuration. Each phase gets a fresh optimizer.
        retrain: ``fit`` arguments of retraining the ticket, merged over ``fit`` (``dict(epochs=0)``: no
            retraining).
        sparsity, distribution: the target and its per-layer split (as ``sparse_optimizer``; its other keywords
            such as ``layers=ms.LayerSelection(...)`` pass through).
        rewind_step: rewind the survivors to their values after this many optimizer steps of the dense run
            (0: to initialisation, the original lottery ticket; a few hundred steps: "late rewinding").
        reuse: the result of an earlier call on the same model and data: its dense run and early weights are
            used instead of training dense again (tickets at several sparsities from one dense run); the
            returned ``dense_seconds`` is then 0.

    The form of earlier releases, ``lottery_ticket(model, x, y, epochs=..., retrain_epochs=..., optimizer=...,
    loss=..., ...)``, still works for one release with a DeprecationWarning.
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise TypeError("lottery_ticket expects a built keras.Model")
    fit, compile, retrain = two_phases("lottery_ticket", fit, y, compile, retrain, "retrain",
                                       ("epochs", "retrain_epochs"), sparsify_options)
    compile_model = compiler_like(model, compile, "lottery_ticket()")
    check_passed_options("lottery_ticket", sparsify_options)
    snapshot = WeightSnapshot(rewind_step)
    # Validate the sparsity, distribution and layer options (on a throw-away copy) before dense training.
    probe = copy_model(model)
    sparse_optimizer(probe, "sgd", sparsity, method="static", distribution=distribution, seed=seed,
                     **sparsify_options)
    del probe
    if reuse is not None:
        if reuse.rewind_step != int(rewind_step):
            raise ValueError(f"reuse= holds weights rewound to step {reuse.rewind_step}, not {rewind_step}")
        dense, dense_history, dense_seconds = reuse.dense_model, reuse.dense_history, 0.0
        snapshot.weights = reuse.rewound_weights
    else:
        dense, dense_history, dense_seconds = _train_dense(model, fit, compile_model, snapshot)

    ticket = copy_model(dense)
    sparse = compile_wrapped(ticket, compile_model, lambda network, inner: sparse_optimizer(
        network, inner, sparsity, method="static", distribution=distribution, seed=seed, **sparsify_options))
    sparse = find_sparse_optimizer(ticket)          # under a LossScaleOptimizer: the wrapped one
    # sparse_optimizer applied a random static mask; score the trained dense values instead (same weight order).
    ticket.set_weights(dense.get_weights())
    prune_by_magnitude(ticket)
    masks = sparse.masks()
    ticket.set_weights(snapshot.weights)   # same architecture, so the weight order is the dense model's
    sparse.apply_masks()

    sparse_history, sparse_seconds = {}, 0.0
    if retrain.get("epochs", 1):
        started = time.perf_counter()
        sparse_history = ticket.fit(**retrain).history
        sparse_seconds = time.perf_counter() - started
    return LotteryTicket(model=ticket, dense_model=dense, rewind_step=int(rewind_step),
                         rewound_weights=snapshot.weights, masks=masks, dense_history=dense_history,
                         sparse_history=sparse_history, peak_parameters=live_parameters(dense).live,
                         dense_seconds=dense_seconds, sparse_seconds=sparse_seconds)


def _train_dense(model, fit, compile_model, snapshot):
    """Step (1): train a dense copy while ``snapshot`` keeps the early weights; returns (model, history, s)."""
    dense = copy_model(model)
    compile_model(dense)
    started = time.perf_counter()
    history = dense.fit(**dict(fit, callbacks=[snapshot, *fit.get("callbacks", ())]))
    seconds = time.perf_counter() - started
    if snapshot.weights is None:
        done = int(keras.ops.convert_to_numpy(dense.optimizer.iterations))
        raise ValueError(f"rewind_step={snapshot.step} was never reached: dense training ran {done} steps")
    return dense, history.history, seconds
