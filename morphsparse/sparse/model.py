"""``SparseModel``: a Keras model whose own training step keeps the masks and runs the mask updates.

Why a model and not a callback: the optimizer step itself must mask the gradients (so pruned weights never leave
zero) and, on update steps, change the masks and zero the grown weights' optimizer slots. Doing that in
``train_step`` means ``fit`` needs no callback, a custom loop needs exactly one call (``apply_gradients``), and
under ``tf.distribute`` every replica runs the same deterministic update in cross-replica context.

Per step the cost is one multiply per masked kernel (gradient times mask) plus a scalar ``tf.cond``; the mask
update runs only inside the taken branch of that ``cond``, i.e. on update steps.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from .masks import stable_hash
from .schedules import UpdateSchedule
from .updaters import KernelView, MaskUpdater, UpdateContext
from .wrappers import SparseWrapper, kernel_variable

_PACKAGE = "morphsparse"

# Optimizer slot lists, per optimizer class, indexed like the trainable variables. Every one of these optimizers
# leaves a weight untouched when its gradient and all its slots are zero, which is what keeps pruned weights at
# exactly zero; that property is why the list is explicit rather than "any optimizer".
_OPTIMIZER_SLOTS = (
    (keras.optimizers.AdamW, ("_momentums", "_velocities", "_velocity_hats")),
    (keras.optimizers.Adam, ("_momentums", "_velocities", "_velocity_hats")),
    (keras.optimizers.RMSprop, ("_velocities", "_momentums", "_average_gradients")),
    (keras.optimizers.SGD, ("momentums",)),
)


class UnsupportedOptimizerError(TypeError):
    """Raised for an optimizer whose slots sparse training cannot zero at grown positions."""


def layer_tree(model) -> dict:
    """``{path: layer}`` of every layer inside ``model``, recursively; paths join layer names with '/'."""
    found = {}

    def visit(layer, prefix):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if isinstance(child, keras.layers.InputLayer):
                continue
            path = f"{prefix}{child.name}"
            if path not in found:
                found[path] = child
                visit(child, path + "/")

    visit(model, "")
    return found


def build_by_calling(model):
    """Build every sublayer of ``model`` by calling it once on zeros of its recorded input shape.

    ``Model.build(shape)`` on a subclassed model marks it built without building the layers its ``call`` uses
    (and loading a subclassed model goes through that path); one call on zeros builds them all.
    """
    if all(layer.built for layer in model._flatten_layers(include_self=False)):
        return
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        raise ValueError(f"Model {model.name!r} has layers that are not built; call it on a batch first")
    zeros = tf.nest.map_structure(lambda s: tf.zeros([1 if d is None else d for d in s]), shape,
                                  check_types=False) if not _is_shape(shape) else \
        tf.zeros([1 if d is None else d for d in shape])
    model(zeros)


def _is_shape(value):
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def optimizer_slots(optimizer, variable, allow_unknown: bool = False) -> list:
    """The optimizer variables that hold per-element state for ``variable`` (momentum, Adam m and v, ...)."""
    optimizer = _inner_optimizer(optimizer)
    for optimizer_class, names in _OPTIMIZER_SLOTS:
        if isinstance(optimizer, optimizer_class):
            index = optimizer._get_variable_index(variable)
            slots = []
            for name in names:
                values = getattr(optimizer, name, None) or []
                if index < len(values) and values[index] is not None:
                    slots.append(values[index])
            return slots
    if allow_unknown:
        return []
    raise UnsupportedOptimizerError(
        f"Sparse training zeroes the optimizer slots of grown weights for SGD (with or without momentum, "
        f"Nesterov), Adam, AdamW and RMSprop; {type(optimizer).__name__} is not one of them. Pass "
        "allow_unknown_optimizer=True to sparsify() to train anyway with its slots left as they are (grown "
        "weights then start from whatever state the optimizer kept for them).")


def _tf_variable(variable):
    """The backend tf.Variable (a MirroredVariable under a strategy) behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class _Unit:
    """Bookkeeping for one masked kernel (static facts and the Keras variables involved)."""

    def __init__(self, wrapper: SparseWrapper, name: str):
        self.wrapper = wrapper
        self.name = name
        self.kernel = kernel_variable(wrapper.layer, name)
        self.mask = wrapper.masks[name]
        self.state = wrapper.states[name]
        self.key = wrapper.keys[name]
        self.key_hash = stable_hash(self.key)
        self.sparsity = wrapper.sparsities[name]


def _mask_gradient(gradient, mask):
    if isinstance(gradient, tf.IndexedSlices):  # Embedding: only the looked-up rows have gradients
        rows = tf.gather(tf.cast(mask, gradient.values.dtype), gradient.indices)
        return tf.IndexedSlices(gradient.values * rows, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(mask, gradient.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseModel(keras.Model):
    """A model trained with masked kernels; build it with ``morphsparse.sparsify``.

    Args:
        model: the wrapped (already built) Keras model; its layers are shared, not copied.
        updater: the method (a ``MaskUpdater``).
        schedule: the ``UpdateSchedule`` that says when masks change.
        layers: one spec per sparsified layer: ``{"path", "sparsities", "keys"}``.
        seed: base seed for the methods' randomness.
        end_step: last update step; None means 75% (``end_fraction``) of the first ``fit``'s length.
        skip_optimizer_step: on update steps, update the masks before the optimizer step and skip that step
            (the official RigL order). Default False: apply the step, then update (TF1 SET order).
        allow_unknown_optimizer: train with an optimizer whose slots cannot be zeroed at grown positions.
    """

    def __init__(self, model, updater: MaskUpdater, schedule: UpdateSchedule, layers: list, seed: int = 0,
                 end_step: int | None = None, end_fraction: float = 0.75, skip_optimizer_step: bool = False,
                 allow_unknown_optimizer: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.updater = updater
        self.schedule = schedule
        self.seed = int(seed)
        self.configured_end_step = None if end_step is None else int(end_step)
        self.end_fraction = float(end_fraction)
        self.skip_optimizer_step = bool(skip_optimizer_step)
        self.allow_unknown_optimizer = bool(allow_unknown_optimizer)
        self.layer_specs = [dict(spec) for spec in layers]
        build_by_calling(model)
        tree = layer_tree(model)
        wrappers = []
        for spec in self.layer_specs:
            if spec["path"] not in tree:
                raise ValueError(f"No layer at path {spec['path']!r} in model {model.name!r}")
            layer = tree[spec["path"]]
            wrappers.append(SparseWrapper(layer, spec["sparsities"], spec.get("keys"),
                                          state=updater.kernel_state(None), name=f"sparse_{layer.name}"))
        self.sparse_layers = wrappers
        self._units = [_Unit(wrapper, name) for wrapper in wrappers for name in wrapper.sparsities]
        self._unit_index = {id(unit.kernel): i for i, unit in enumerate(self._units)}
        # Training state that must survive save/load: the step counter drives the schedule, the end step may be
        # resolved by the first fit, the counters feed the logging callback.
        self.sparse_step = self.add_weight(name="sparse_step", shape=(), dtype="int64", initializer="zeros",
                                           trainable=False)
        self.end_step = self.add_weight(
            name="end_step", shape=(), dtype="int64", trainable=False,
            initializer=keras.initializers.Constant(-1 if end_step is None else int(end_step)))
        self.mask_updates = self.add_weight(name="mask_updates", shape=(), dtype="int64", initializer="zeros",
                                            trainable=False)
        self.mask_changes = self.add_weight(name="mask_changes", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False)
        self._end_step_checked = False
        if model.built:
            self.built = True
        updater.attach(self)

    # ------------------------------------------------------------------ Keras plumbing
    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def build(self, input_shape=None):
        if not self.model.built and input_shape is not None:
            self.model.build(input_shape)
        self.built = True

    def compile(self, *args, **kwargs):
        # The mask update uses top-k with a count known only at run time, which XLA cannot compile.
        if kwargs.get("jit_compile", "auto") == "auto":
            kwargs["jit_compile"] = False
        return super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compiling on load when compile() is overridden (and then drops the saved optimizer
        # state); ours only defaults jit_compile, so compile as Keras would and build the optimizer to load into.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            model=keras.saving.serialize_keras_object(self.model),
            updater=keras.saving.serialize_keras_object(self.updater),
            schedule=keras.saving.serialize_keras_object(self.schedule),
            layers=[dict(spec) for spec in self.layer_specs],
            seed=self.seed, end_step=self.configured_end_step, end_fraction=self.end_fraction,
            skip_optimizer_step=self.skip_optimizer_step,
            allow_unknown_optimizer=self.allow_unknown_optimizer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("model", "updater", "schedule"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # ------------------------------------------------------------------ masks
    @property
    def units(self) -> list:
        return list(self._units)

    def masks(self) -> dict:
        """``{kernel key: mask as numpy}``."""
        return {unit.key: keras.ops.convert_to_numpy(unit.mask) for unit in self._units}

    def apply_masks(self):
        """Zero every pruned weight (needed only after writing dense values into the kernels yourself)."""
        for wrapper in self.sparse_layers:
            wrapper.apply_masks()

    def initialize_masks(self, rescale_weights: bool = False):
        """Draw each kernel's initial mask from the method (random exact count, or all ones) and apply it.

        ``rescale_weights`` divides each kernel by sqrt(density) so that a sparse layer's outputs keep the
        variance the dense initialiser designed for (a 90%-sparse conv stack otherwise starts with activations
        ~3x smaller per layer and learns slowly).
        """
        for unit in self._units:
            shape = tuple(unit.kernel.shape)
            mask = self.updater.initial_mask(shape, unit.sparsity, unit.key_hash, self.seed)
            unit.mask.assign(mask)
            density = float(mask.mean())
            if rescale_weights and 0.0 < density < 1.0:
                unit.kernel.assign(unit.kernel * (1.0 / np.sqrt(density)))
        self.apply_masks()

    # ------------------------------------------------------------------ schedule length
    def resolve_end_step(self, total_steps: int | None):
        """Set ``end_step`` to ``end_fraction * total_steps`` unless it is already known."""
        if int(keras.ops.convert_to_numpy(self.end_step)) >= 0 or total_steps is None:
            return
        self.end_step.assign(int(self.end_fraction * int(total_steps)))

    def _needs_end_step(self):
        return self.updater.changes_topology and getattr(self.schedule, "end_step", 0) is None

    def _check_end_step(self):
        if self._end_step_checked or not self._needs_end_step():
            return
        with tf.init_scope():
            end = int(keras.ops.convert_to_numpy(self.end_step))
        if end < 0:
            raise ValueError(
                "The mask update schedule does not know when to stop: pass end_step= (or total_steps=) to "
                "sparsify(), or train with fit() on data of known length (end_step then defaults to "
                f"{self.end_fraction:.0%} of the first fit's steps).")
        self._end_step_checked = True

    def fit(self, x=None, y=None, batch_size=None, epochs=1, *args, **kwargs):
        if self._needs_end_step() and int(keras.ops.convert_to_numpy(self.end_step)) < 0:
            steps = _steps_per_epoch(x, y, batch_size, kwargs.get("steps_per_epoch"),
                                     kwargs.get("validation_split", 0.0))
            if steps is None:
                raise ValueError("Cannot tell the number of training steps of this fit() (an input of unknown "
                                 "length); pass steps_per_epoch= to fit() or end_step= to sparsify().")
            self.resolve_end_step(steps * int(epochs))
        return super().fit(x, y, batch_size, epochs, *args, **kwargs)

    # ------------------------------------------------------------------ the training step
    def train_step(self, data):
        # Keras's own TensorFlow train_step, with the optimizer call replaced by the sparse one.
        from keras.src import tree
        from keras.src.losses import loss as loss_module
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(next(i for i in tree.flatten(x) if i is not None))[0])
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.apply_gradients(self.optimizer, gradients, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def apply_gradients(self, optimizer, gradients, variables=None):
        """The one call per step of a custom training loop; use it instead of ``optimizer.apply_gradients``.

        Masks the gradients of masked kernels, applies the optimizer step and, on update steps, updates the
        masks (zeroing grown weights and their optimizer slots). Works inside ``tf.function`` and inside
        ``strategy.run``. ``variables`` defaults to ``self.trainable_variables``.
        """
        variables = list(self.trainable_variables if variables is None else variables)
        gradients = list(gradients)
        if len(gradients) != len(variables):
            raise ValueError(f"Got {len(gradients)} gradients for {len(variables)} variables")
        self._check_end_step()
        unit_gradients = [None] * len(self._units)
        masked = []
        for gradient, variable in zip(gradients, variables):
            index = self._unit_index.get(id(variable))
            if index is not None and gradient is not None:
                unit_gradients[index] = gradient
                gradient = _mask_gradient(gradient, _tf_variable(self._units[index].mask))
            masked.append(gradient)
        if not self.updater.uses_gradient:
            unit_gradients = [None] * len(self._units)
        if self.skip_optimizer_step and self.updater.changes_topology:
            return self._update_then_maybe_apply(optimizer, masked, variables, unit_gradients)
        optimizer.apply_gradients(zip(masked, variables))
        slots = self._unit_slots(optimizer)
        self._in_cross_replica(self._after_optimizer_step, unit_gradients, slots)

    def _unit_slots(self, optimizer):
        if optimizer is not None and not _inner_optimizer(optimizer).built:
            _inner_optimizer(optimizer).build(self.trainable_variables)
        return [[_tf_variable(slot) for slot in
                 optimizer_slots(optimizer, unit.kernel, self.allow_unknown_optimizer)]
                for unit in self._units]

    def _update_then_maybe_apply(self, optimizer, masked, variables, unit_gradients):
        strategy = tf.distribute.get_strategy()
        if strategy.num_replicas_in_sync > 1:
            raise NotImplementedError(
                "skip_optimizer_step=True needs a conditional optimizer step, which tf.distribute cannot run "
                "across replicas; use the default skip_optimizer_step=False under a distribution strategy.")
        slots = self._unit_slots(optimizer)
        step = tf.identity(_tf_variable(self.sparse_step))
        is_update = self.schedule.is_update_step(step, _tf_variable(self.end_step))
        self._in_cross_replica(self._after_optimizer_step, unit_gradients, slots)

        def apply():
            optimizer.apply_gradients(zip(masked, variables))
            return tf.constant(True)

        tf.cond(is_update, lambda: tf.constant(False), apply)

    @staticmethod
    def _in_cross_replica(fn, *args):
        context = tf.distribute.get_replica_context()
        if context is None:  # already in cross-replica context (a strategy scope outside strategy.run)
            return fn(tf.distribute.get_strategy(), *args)
        return context.merge_call(fn, args=args)

    def _after_optimizer_step(self, strategy, unit_gradients, unit_slots):
        """Cross-replica part of a step: per-step observation, the conditional update, the step counter."""
        extended = strategy.extended
        step = tf.identity(_tf_variable(self.sparse_step))
        end_step = tf.identity(_tf_variable(self.end_step))
        context = UpdateContext(step=step, end_step=end_step, schedule=self.schedule, seed=self.seed)
        updater = self.updater

        def reduced(gradient, unit):
            # Replicas hold gradients of their own share of the batch; the sum is the global gradient.
            if gradient is None:
                return None
            return extended.reduce_to(tf.distribute.ReduceOp.SUM, gradient, destinations=_tf_variable(unit.mask))

        if type(updater).observe is not MaskUpdater.observe:
            for unit, gradient in zip(self._units, unit_gradients):
                if gradient is None:
                    continue

                def observe(mask, kernel, gradient, state, unit=unit):
                    # Variables, not reads: an observer that never looks at the weights pays nothing for them.
                    view = KernelView(unit.key, unit.key_hash, unit.sparsity, kernel, mask,
                                      tf.convert_to_tensor(gradient), state)
                    return updater.observe(view, context)

                extended.update(_tf_variable(unit.mask), observe,
                                args=(_tf_variable(unit.kernel), reduced(gradient, unit),
                                      {k: _tf_variable(v) for k, v in unit.state.items()}), group=False)

        if updater.changes_topology:
            is_update = self.schedule.is_update_step(step, end_step)

            def update_all():
                for unit, gradient, slots in zip(self._units, unit_gradients, unit_slots):
                    self._update_unit(extended, context, unit, reduced(gradient, unit), slots)
                extended.update(_tf_variable(self.mask_updates), lambda v: v.assign_add(1), group=False)
                return tf.constant(True)

            tf.cond(is_update, update_all, lambda: tf.constant(False))
        extended.update(_tf_variable(self.sparse_step), lambda v: v.assign_add(1), group=False)

    def _update_unit(self, extended, context, unit, gradient, slots):
        updater = self.updater

        def update(mask, kernel, gradient, state, slots, changes):
            old_mask = tf.identity(mask)
            weight = tf.identity(kernel)
            dense_gradient = None if gradient is None else tf.convert_to_tensor(gradient)
            view = KernelView(unit.key, unit.key_hash, unit.sparsity, weight, old_mask, dense_gradient, state)
            new_mask = tf.stop_gradient(updater.update_mask(view, context))
            # Keep only what was live before and after: grown weights restart from zero with fresh slots,
            # dropped ones become exact zeros, a re-grown position keeps its value and its slots.
            keep = old_mask * new_mask
            ops = [mask.assign(new_mask), kernel.assign(weight * tf.cast(keep, weight.dtype))]
            ops += [slot.assign(slot * tf.cast(keep, slot.dtype)) for slot in slots]
            grown = tf.reduce_sum(new_mask * (1.0 - old_mask))
            ops.append(changes.assign_add(tf.cast(grown, tf.int64)))
            return tf.group(ops)

        extended.update(_tf_variable(unit.mask), update,
                        args=(_tf_variable(unit.kernel), gradient,
                              {k: _tf_variable(v) for k, v in unit.state.items()}, list(slots),
                              _tf_variable(self.mask_changes)), group=False)


def _steps_per_epoch(x, y, batch_size, steps_per_epoch, validation_split):
    """Batches per epoch of a fit() call, or None when the input has no known length."""
    if steps_per_epoch:
        return int(steps_per_epoch)
    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        return cardinality if cardinality >= 0 else None
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except TypeError:
            return None
    first = next((a for a in tf.nest.flatten(x) if hasattr(a, "shape") and len(a.shape)), None)
    if first is None:
        return None
    samples = int(first.shape[0])
    if validation_split:
        samples = int(math.floor(samples * (1.0 - validation_split)))
    return int(math.ceil(samples / float(batch_size or 32)))


def find_sparse_model(model) -> SparseModel:
    """``model`` itself when it is a SparseModel, else a clear error."""
    if isinstance(model, SparseModel):
        return model
    raise TypeError(f"Expected a model returned by morphsparse.sparsify(), got {type(model).__name__}")


def global_sparsity(model) -> float:
    """Fraction of zeros over all masks of a SparseModel."""
    model = find_sparse_model(model)
    total = sum(int(np.prod(unit.mask.shape)) for unit in model.units)
    live = sum(int(np.count_nonzero(keras.ops.convert_to_numpy(unit.mask))) for unit in model.units)
    return 1.0 - live / total if total else 0.0
