"""``SparseOptimizer``: sparse training as an optimizer wrapper, so that the model stays the user's model.

Like ``keras.optimizers.LossScaleOptimizer``, it owns an inner optimizer, serialises it in ``get_config`` and keeps
its own variables (one 0/1 mask per masked kernel, the method's per-kernel state, counters) next to the inner
optimizer's in the ``.keras`` file. Each ``apply`` (what ``fit``'s step and ``optimizer.apply_gradients`` call):

1. keeps the dense gradients of the masked kernels for methods that score with them (RigL, SNFS), and masks
   them only when the inner optimizer clips by a norm over the tensor (so that norm is the sparse network's);
2. applies the inner optimizer (EMA, gradient accumulation, weight decay and constraints included);
3. in cross-replica context: re-applies every mask to its kernel (so pruned weights are exactly zero after every
   step, whatever the inner optimizer did, and again after ``set_weights``/``load_weights``), lets the method
   observe the step (SNFS's gradient average), runs the drop/grow update under one scalar ``tf.cond`` on update
   steps (zeroing grown weights and every per-weight slot of the inner optimizer at changed positions), and
   advances the step counter.

The forward pass is untouched: layers run their own dense kernels, whose pruned entries are exact zeros.
"""

from __future__ import annotations

import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from morphsparse import keras_internals as _keras
from morphsparse.checks import flag
from morphsparse.wrapping import REQUIRES, WrappingOptimizer, find_wrapped, note_training_step, tf_variable  # noqa: F401

from .masks import stable_hash
from .metrics import attach_metrics
from .schedules import UpdateSchedule
from .updaters import KernelView, MaskUpdater, UpdateContext

_PACKAGE = "morphsparse"


def _mask_gradient(gradient, mask):
    if isinstance(gradient, tf.IndexedSlices):  # Embedding: only the looked-up rows have gradients
        rows = tf.gather(tf.cast(mask, gradient.values.dtype), gradient.indices)
        return tf.IndexedSlices(gradient.values * rows, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(mask, gradient.dtype)


class Unit:
    """One masked kernel: its static facts and the variables involved (kernel, mask, method state, slots)."""

    def __init__(self, spec: dict, kernel, mask, state: dict):
        self.key = spec["key"]                    # layer path + weight name, e.g. "block/conv/kernel"
        self.layer = spec["layer"]                # layer path, e.g. "block/conv"
        self.weight = spec["weight"]              # weight name, e.g. "kernel"
        self.path = spec["variable"]              # the Keras variable path, used to find it again after loading
        self.sparsity = float(spec["sparsity"])
        self.key_hash = stable_hash(self.key)
        self.kernel = kernel
        self.mask = mask
        self.state = state
        self.slots = []                           # [(inner optimizer variable, value of a fresh slot)]
        # Planned sparsity 0 (ERK gives small layers none): every method keeps the mask all ones, so the training
        # step neither re-masks nor updates this kernel; set_masks refuses a mask with zeros for it.
        self.always_dense = self.sparsity == 0.0

    @property
    def size(self) -> int:
        return int(np.prod(self.kernel.shape))

    def __repr__(self):
        return f"<Unit {self.key} sparsity={self.sparsity:.4f}>"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseOptimizer(WrappingOptimizer):
    """Trains masked kernels with an inner optimizer; build it with ``morphsparse.sparse_optimizer``.

    Args:
        inner_optimizer: the optimizer that does the actual update (any ``keras.optimizers.Optimizer``).
        kernels: one spec per masked kernel: ``{"key", "layer", "weight", "variable", "sparsity"}``.
        method: the ``MaskUpdater`` (RigL, SET, ...).
        schedule: the ``UpdateSchedule`` that says when masks change.
        seed: base seed of the method's randomness.
        end_step: the step from which masks no longer change (-1 or None: no end known).
        skip_optimizer_step: on update steps, update the masks first and skip the optimizer step (the official
            RigL order); default False (apply the step, then update; the TF1 SET order, and the only one
            available under tf.distribute).
    """

    def __init__(self, inner_optimizer, kernels=(), method=None, schedule=None, seed: int = 0,
                 end_step: int | None = None, skip_optimizer_step: bool = False, name=None, requires=None,
                 **kwargs):
        super().__init__(inner_optimizer, name=name, **kwargs)
        inner_optimizer = self.inner_optimizer
        if isinstance(method, dict):
            method = keras.saving.deserialize_keras_object(method)
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if not isinstance(method, MaskUpdater):
            raise TypeError(f"method must be a MaskUpdater, got {type(method).__name__}")
        if not isinstance(schedule, UpdateSchedule):
            raise TypeError(f"schedule must be an UpdateSchedule, got {type(schedule).__name__}")
        self._set("method", method)
        self._set("schedule", schedule)
        self._set("kernel_specs", [dict(spec) for spec in kernels])
        self.seed = int(seed)
        self.end_step = -1 if end_step is None or int(end_step) < 0 else int(end_step)
        self.skip_optimizer_step = flag(skip_optimizer_step, "skip_optimizer_step")
        self._set("units", [])
        self._set("_unit_index", {})
        self._set("_model_ref", None)
        self._set("_fit_ended", True)
        self._set("_epoch_start_step", None)
        self._set("_warned", set())
        # Pruned weights are re-masked after every step, so their gradients need no masking, except where the
        # inner optimizer scales gradients by a norm taken over the whole tensor: that norm must be the sparse
        # network's. (Slots at pruned positions may then hold values; they are reset when a position grows.)
        self._set("_mask_gradients", bool(getattr(inner_optimizer, "clipnorm", None)
                                          or getattr(inner_optimizer, "global_clipnorm", None)))

    # ------------------------------------------------------------------ Keras optimizer plumbing
    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        super().build(var_list)
        if self._model_ref is None:
            # a model loaded from a file: its compile_from_config builds this optimizer without saying for which
            # model; the kernels are found by their positions among the variables
            self._warn_once("unbound", (
                "this SparseOptimizer is built without its model (loaded with keras.saving.load_model?): masks "
                "are kept and updated as saved, but fit's logs show sparsity, mask_changes and alive_params only "
                "once it knows the model: call model.optimizer.bind(model) after loading"))
        kernels = self._resolve_kernels(var_list)
        self.total_trainable = int(sum(int(np.prod(v.shape)) for v in var_list))
        self.masked_total = int(sum(int(np.prod(kernel.shape)) for kernel in kernels))
        self.mask_updates = self.add_variable((), initializer="zeros", dtype="int64", name="mask_updates")
        self.mask_changes = self.add_variable((), initializer="zeros", dtype="int64", name="mask_changes")
        self.epoch_changes = self.add_variable((), initializer="zeros", dtype="int64", name="epoch_changes")
        self.live = self.add_variable((), initializer=keras.initializers.Constant(self.masked_total),
                                      dtype="int64", name="masked_live")
        units = []
        for spec, kernel in zip(self.kernel_specs, kernels):
            # Masks are float32 so that masking is one multiply; never trained, never autocast.
            mask = self.add_variable(tuple(kernel.shape), initializer="ones", dtype="float32",
                                     name=spec["key"].replace("/", "_") + "_mask")
            state = {name: self.add_variable(tuple(kernel.shape), initializer=init, dtype="float32",
                                             name=spec["key"].replace("/", "_") + "_" + name)
                     for name, init in self.method.kernel_state(tuple(kernel.shape)).items()}
            units.append(Unit(spec, kernel, mask, state))
        self._set("units", units)
        self._set("_unit_index", {id(unit.kernel): i for i, unit in enumerate(units)})
        self._find_slots(var_list)
        self.method.attach(self)

    def _resolve_kernels(self, var_list):
        """The kernel variable of every spec: from the model's layers when the model is known, else by its
        position among the trainable variables (what Keras itself relies on to reload optimizer slots), checked
        against its shape and name."""
        index = {id(v): i for i, v in enumerate(var_list)}
        model = self.bound_model()
        tree = None
        if model is not None:
            from .kernels import kernel_variable, layer_tree
            tree = layer_tree(model)
        kernels = []
        for spec in self.kernel_specs:
            kernel = None
            if tree is not None and spec["layer"] in tree:
                kernel = kernel_variable(tree[spec["layer"]], spec["weight"])
            elif spec.get("index") is not None and spec["index"] < len(var_list):
                candidate = var_list[spec["index"]]
                suffix = spec["layer"].rsplit("/", 1)[-1] + "/" + spec["weight"]
                if (tuple(candidate.shape) == tuple(spec.get("shape", candidate.shape))
                        and candidate.path.endswith(suffix)):
                    kernel = candidate
            if kernel is None or id(kernel) not in index:
                raise ValueError(
                    f"the masked kernel {spec['key']!r} is not among the {len(var_list)} trainable variables this "
                    f"optimizer is built with: was layer {spec['layer']!r} frozen (trainable=False) or the model "
                    "changed after sparse_optimizer()? Unfreeze it, or call ms.sparse_optimizer() on the model as "
                    "it now is.")
            spec["index"] = index[id(kernel)]
            spec["shape"] = [int(d) for d in kernel.shape]
            kernels.append(kernel)
        return kernels

    def _find_slots(self, var_list):
        """Per-weight slots of the inner optimizer, by Keras's naming (``<variable path>_<slot name>``)."""
        prefixes = sorted(((_keras.slot_prefix(v), v) for v in var_list), key=lambda p: -len(p[0]))
        owner, unowned = {}, []
        for slot in self.inner_optimizer.variables:
            name = slot.name.split("/")[-1]
            for prefix, variable in prefixes:
                if name.startswith(prefix):
                    owner.setdefault(id(variable), []).append(slot)
                    break
            else:
                unowned.append(slot)
        for slot in unowned:      # factored statistics (Adafactor's row/column slots) carry no variable path
            shape = tuple(slot.shape)
            for unit in self.units:
                kernel_shape = tuple(unit.kernel.shape)
                if len(shape) and shape in (kernel_shape[:-1], kernel_shape[:-2] + kernel_shape[-1:]):
                    self._warn_once(
                        ("factored", unit.key),
                        f"{type(self.inner_optimizer).__name__} keeps a slot {slot.name!r} of shape {shape} for "
                        f"kernel {unit.key!r} {kernel_shape}: it cannot be reset per position, so grown weights "
                        "start with the statistics of their row/column.")
        for unit in self.units:
            unit.slots = []
            for slot in owner.get(id(unit.kernel), []):
                if tuple(slot.shape) != tuple(unit.kernel.shape):
                    self._warn_once(
                        ("factored", unit.key),
                        f"{type(self.inner_optimizer).__name__} keeps a slot {slot.name!r} of shape "
                        f"{tuple(slot.shape)} for kernel {unit.key!r} {tuple(unit.kernel.shape)}: it cannot be reset "
                        "per position, so grown weights start with the statistics of their row/column.")
                    continue
                with tf.init_scope():
                    values = keras.ops.convert_to_numpy(slot)
                fresh = float(values.flat[0]) if values.size and np.all(values == values.flat[0]) else 0.0
                unit.slots.append((slot, fresh))

    def bind(self, model):
        """Remember ``model`` (weakly) and attach the sparse-training metrics to it (``sparsity`` etc. in logs);
        needed once after ``keras.saving.load_model``. Returns the optimizer."""
        self._set("_model_ref", weakref.ref(model))
        attach_metrics(model, self)
        return self

    def bound_model(self):
        """The model this optimizer trains, when known (a method, not a property: Keras's saver walks
        properties and must not reach the model from its optimizer)."""
        return None if self._model_ref is None else self._model_ref()

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)      # the inner optimizer may write its EMA into the weights
        self.apply_masks()
        self._set("_fit_ended", True)

    def get_config(self):
        return {**self.inner_config(),
                "kernels": [dict(spec) for spec in self.kernel_specs],
                "method": keras.saving.serialize_keras_object(self.method),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "seed": self.seed, "end_step": self.end_step, "skip_optimizer_step": self.skip_optimizer_step}

    # ------------------------------------------------------------------ masks
    def masks(self) -> dict:
        """``{kernel key: mask as numpy}``."""
        return {unit.key: keras.ops.convert_to_numpy(unit.mask) for unit in self.units}

    def apply_masks(self):
        """Zero every pruned weight now (training does it after every step; use this after writing weights)."""
        for unit in self.units:
            unit.kernel.assign(unit.kernel * keras.ops.cast(unit.mask, unit.kernel.dtype))

    def set_masks(self, masks: dict, apply: bool = True):
        """Replace masks (``{key: 0/1 array}``), keep the live count right, and zero the pruned weights."""
        live = 0
        for unit in self.units:
            if unit.key in masks:
                mask = np.asarray(masks[unit.key], np.float32).reshape(tuple(unit.mask.shape))
                if unit.always_dense and not np.all(mask == 1.0):
                    raise ValueError(
                        f"kernel {unit.key!r} has sparsity 0 in this optimizer's plan (the distribution gave it "
                        f"none), so training never masks it; got a mask with {int(np.sum(mask != 1.0))} zeros for "
                        f"it. Give it a sparsity, e.g. sparse_optimizer(..., layer_sparsity={{{unit.layer!r}: "
                        "0.5}), to mask it.")
                unit.mask.assign(mask)
            live += int(np.count_nonzero(keras.ops.convert_to_numpy(unit.mask)))
        self.live.assign(live)
        if apply:
            self.apply_masks()

    def global_sparsity(self) -> float:
        return 1.0 - int(keras.ops.convert_to_numpy(self.live)) / self.masked_total if self.masked_total else 0.0

    # ------------------------------------------------------------------ the training step
    def apply(self, grads, trainable_variables=None):
        grads, variables = self._prepare_apply(grads, trainable_variables)
        note_training_step(self)
        self._warn_if_endless()
        unit_grads = [None] * len(self.units)
        masked = []
        for gradient, variable in zip(grads, variables):
            index = self._unit_index.get(id(variable))
            if index is not None and gradient is not None:
                unit_grads[index] = gradient
                if self._mask_gradients and not self.units[index].always_dense:
                    gradient = _mask_gradient(gradient, tf_variable(self.units[index].mask))
            masked.append(gradient)
        if not self.method.uses_gradient:
            unit_grads = [None] * len(self.units)
        if self.skip_optimizer_step and self.method.changes_topology:
            self._update_then_maybe_apply(masked, variables, unit_grads)
        else:
            self.inner_optimizer.apply(masked, variables)
            self.in_cross_replica(self._after_step, unit_grads)

    def _warn_if_endless(self):
        if self.end_step < 0 and self.method.changes_topology and self.schedule.end_step is None:
            self._warn_once("no_end", (
                "no end of mask updates is known (neither total_steps= nor end_step= was given to "
                "sparse_optimizer()): masks change every {} steps for the whole of training and the drop "
                "fraction does not decay. Pass total_steps=epochs * steps_per_epoch to stop updates at "
                "{:.0%} of training as in the RigL paper.").format(self.schedule.update_every, 0.75))

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _update_then_maybe_apply(self, masked, variables, unit_grads):
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise NotImplementedError(
                "skip_optimizer_step=True needs a conditional optimizer step, which tf.distribute cannot run "
                "across replicas; use the default skip_optimizer_step=False under a distribution strategy.")
        step = tf.identity(tf_variable(self.iterations))
        is_update = self.schedule.is_update_step(step, self.end_step)
        self.in_cross_replica(self._after_step, unit_grads)

        def apply():
            self.inner_optimizer.apply(masked, variables)
            self.apply_masks_in_graph()
            return tf.constant(True)

        tf.cond(is_update, lambda: tf.constant(False), apply)

    def apply_masks_in_graph(self):
        for unit in self.units:
            if unit.always_dense:
                continue
            kernel = tf_variable(unit.kernel)
            kernel.assign(kernel * tf.cast(tf_variable(unit.mask), kernel.dtype))

    def _after_step(self, strategy, unit_grads):
        """Cross-replica part of a step: re-mask, observe, the conditional update, the step counter."""
        extended = strategy.extended
        method = self.method
        units = [unit for unit in self.units if not unit.always_dense]
        observes = type(method).observe is not MaskUpdater.observe
        if observes or method.changes_topology:
            step = tf.identity(tf_variable(self.iterations))
            context = UpdateContext(step=step, end_step=tf.constant(self.end_step, tf.int64),
                                    schedule=self.schedule, seed=self.seed)

        for unit in units:
            extended.update(tf_variable(unit.kernel), lambda k, m: k.assign(k * tf.cast(m, k.dtype)),
                            args=(tf_variable(unit.mask),), group=False)

        def reduced(gradient, unit):
            # Replicas hold gradients of their own share of the batch; the sum is the global gradient.
            if gradient is None:
                return None
            return extended.reduce_to(tf.distribute.ReduceOp.SUM, gradient, destinations=tf_variable(unit.mask))

        if observes:
            for unit, gradient in zip(self.units, unit_grads):
                if gradient is None or unit.always_dense:
                    continue

                def observe(mask, kernel, gradient, state, unit=unit):
                    view = KernelView(unit.key, unit.key_hash, unit.sparsity, kernel, mask,
                                      tf.convert_to_tensor(gradient), state)
                    return method.observe(view, context)

                extended.update(tf_variable(unit.mask), observe,
                                args=(tf_variable(unit.kernel), reduced(gradient, unit),
                                      {k: tf_variable(v) for k, v in unit.state.items()}), group=False)

        if method.changes_topology:
            is_update = self.schedule.is_update_step(step, self.end_step)

            def update_all():
                for unit, gradient in zip(self.units, unit_grads):
                    if unit.always_dense or (method.uses_gradient and gradient is None):
                        continue      # nothing to update, or no gradient in this step (e.g. an unused branch)
                    self._update_unit(extended, context, unit, reduced(gradient, unit))
                extended.update(tf_variable(self.mask_updates), lambda v: v.assign_add(1), group=False)
                return tf.constant(True)

            # (Measured: wrapping update_all in a non-inlined tf.function made RigL's ordinary steps slower, as
            # the dense gradients then flow into a function call; the plain cond is kept.)
            tf.cond(is_update, update_all, lambda: tf.constant(False))
        extended.update(tf_variable(self.iterations), lambda v: v.assign_add(1), group=False)

    def _update_unit(self, extended, context, unit, gradient):
        method = self.method

        def update(mask, kernel, gradient, state, slots, changes, epoch_changes, live):
            old_mask = tf.identity(mask)
            weight = tf.identity(kernel)
            dense_gradient = None if gradient is None else tf.convert_to_tensor(gradient)
            view = KernelView(unit.key, unit.key_hash, unit.sparsity, weight, old_mask, dense_gradient, state)
            new_mask = tf.stop_gradient(method.update_mask(view, context))
            # Keep only what was live before and after: grown weights restart from zero with fresh slots,
            # dropped ones become exact zeros, a re-grown position keeps its value and its slots.
            keep = old_mask * new_mask
            ops = [mask.assign(new_mask), kernel.assign(weight * tf.cast(keep, weight.dtype))]
            for slot, fresh in slots:
                keep_slot = tf.cast(keep, slot.dtype)
                value = slot * keep_slot
                if fresh:
                    value = value + fresh * (1 - keep_slot)
                ops.append(slot.assign(value))
            grown = tf.cast(tf.reduce_sum(new_mask * (1.0 - old_mask)), tf.int64)
            ops += [changes.assign_add(grown), epoch_changes.assign_add(grown)]
            ops.append(live.assign_add(tf.cast(tf.reduce_sum(new_mask) - tf.reduce_sum(old_mask), tf.int64)))
            return tf.group(ops)

        extended.update(tf_variable(unit.mask), update,
                        args=(tf_variable(unit.kernel), gradient,
                              {k: tf_variable(v) for k, v in unit.state.items()},
                              [(tf_variable(slot), fresh) for slot, fresh in unit.slots],
                              tf_variable(self.mask_changes), tf_variable(self.epoch_changes),
                              tf_variable(self.live)), group=False)

    # ------------------------------------------------------------------ schedule facts (Python ints)
    def last_update_step(self):
        """The last step at which masks may change; None when no end is known; -1 when never."""
        if not self.method.changes_topology:
            return -1
        return self.schedule.last_update_step(self.end_step)

    def check_fit_start(self, start_step: int):
        """Warn once when a training run starts with no mask update left in the schedule."""
        last = self.last_update_step()
        if last is not None and self.method.changes_topology and start_step > last:
            self._warn_once("past_end", (
                f"this training started at step {start_step}, after the last mask update of the schedule (step "
                f"{last}; end_step={self.end_step}): the masks stay fixed. Give total_steps= (or end_step=) for the "
                "whole training to sparse_optimizer() when you train in several fit() calls."))


def find_sparse_optimizer(obj, required: bool = True):
    """The ``SparseOptimizer`` of a model (compiled with it, or made sparse by ``sparse_optimizer``) or itself."""
    if isinstance(obj, keras.optimizers.Optimizer):
        current = find_wrapped(obj, SparseOptimizer)
        if current is not None:
            return current
    if isinstance(obj, keras.Model):
        current = find_wrapped(obj, SparseOptimizer)
        if current is not None:
            if current.bound_model() is None:
                current.bind(obj)
            return current
        metrics = getattr(obj, "_morphsparse_metrics", None)
        if metrics is not None and metrics.optimizer() is not None:
            return metrics.optimizer()
    if required:
        raise TypeError(f"{getattr(obj, 'name', type(obj).__name__)!r} is not sparse: expected a model made sparse "
                        "by ms.sparse_optimizer(model, optimizer, ...) (or compiled with its result), or a "
                        f"SparseOptimizer; got {type(obj).__name__}")
    return None
