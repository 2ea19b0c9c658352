"""Mask updaters: one small base class, one subclass per method, and a registry users can extend.

An updater only decides *which* positions of a kernel are live. Where the sparsity comes from (a distribution),
*when* updates happen (a schedule) and *how* scores become positions (a sparsity type) are separate objects, so
a new method is usually a subclass that overrides one scoring method::

    @register_updater("my_method")
    class MyMethod(DropGrow):
        uses_gradient = True                  # hand me this step's dense gradient
        def grow_scores(self, kernel, context):
            return tf.abs(kernel.gradient) * tf.abs(kernel.weight + 1e-3)

The base update (algorithms.md section 1.3) for one kernel with mask M and weights W is::

    n = sum(M); k = grow_count(n)                      # floor(n * drop_fraction(t)) for drop/grow methods
    M1 = M minus the (n - target + k) active positions with the lowest drop_scores     (|W| by default)
    M2 = M1 plus the k inactive positions of M1 with the highest grow_scores           (just-dropped included)

The ``SparseOptimizer`` then zeroes W and resets every per-weight optimizer slot wherever M_old * M_new is 0, so
grown weights start at zero with fresh slots and a re-grown position keeps its old value.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from .masks import step_seed
from .sparsity_types import get_sparsity_type, serialize_sparsity_type
from .schedules import PolynomialSchedule, UpdateSchedule, get_drop_fraction

UPDATERS: dict[str, type] = {}


def register_updater(name: str):
    """Class decorator: make ``method=name`` available to ``sparsify`` and the class loadable from ``.keras``."""
    def decorator(cls):
        cls.name = name
        UPDATERS[name] = cls
        return keras.saving.register_keras_serializable(package="morphsparse.updaters", name=cls.__name__)(cls)
    return decorator


def updater_class(value) -> type:
    """The updater class a ``method=`` value names (registered name, class or instance)."""
    if isinstance(value, MaskUpdater):
        return type(value)
    if isinstance(value, type) and issubclass(value, MaskUpdater):
        return value
    if isinstance(value, str) and value.lower() in UPDATERS:
        return UPDATERS[value.lower()]
    raise ValueError(f"Unknown sparse training method {value!r}; known: {sorted(UPDATERS)}. "
                     "Register your own with morphsparse.sparse.register_updater.")


def get_updater(value, **options) -> "MaskUpdater":
    """Resolve a method given by registered name, class or instance; ``options`` go to the constructor."""
    if isinstance(value, MaskUpdater):
        if options:
            raise ValueError(f"options {sorted(options)} cannot be applied to the method instance "
                             f"{type(value).__name__}; pass them to its constructor")
        return value
    return updater_class(value)(**options)


@dataclass
class KernelView:
    """One masked kernel as an updater sees it during an update; tensors and variables are device-local."""

    key: str                 # stable path, e.g. "dense_1/kernel"
    key_hash: int            # stable 31-bit hash of key (never Python's hash())
    sparsity: float          # this kernel's final target sparsity
    weight: tf.Tensor
    mask: tf.Tensor
    gradient: tf.Tensor | None
    state: dict = field(default_factory=dict)   # the updater's own per-kernel variables (see kernel_state)

    @property
    def size(self) -> int:
        return int(np.prod(self.weight.shape))


@dataclass
class UpdateContext:
    """What an update may depend on besides the kernel: the step, the resolved end step and the schedule."""

    step: tf.Tensor
    end_step: tf.Tensor
    schedule: UpdateSchedule
    seed: int = 0


class MaskUpdater:
    """Base updater: random initial mask, drop by |W|, grow by ``grow_scores`` (none by default)."""

    name = None
    uses_gradient = False          # grow_scores or observe read this step's dense gradient
    changes_topology = True        # False: the mask never moves after initialisation (static, dense)
    dense_start = False            # True: masks start all ones and the schedule prunes (magnitude)
    forced_sparsity = None         # a number overrides every layer's sparsity (dense baseline: 0)

    def __init__(self, sparsity_type="unstructured"):
        self.sparsity_type = get_sparsity_type(sparsity_type)

    # ------------------------------------------------------------------ pieces a subclass overrides
    def default_schedule(self, **cadence) -> UpdateSchedule:
        """The schedule used when ``sparse_optimizer`` is given none (``cadence``: its arguments)."""
        return UpdateSchedule(**cadence)

    def kernel_state(self, shape) -> dict:
        """Extra per-kernel variables the method keeps, ``{name: initializer}`` (saved with the model)."""
        return {}

    def initial_mask(self, shape, sparsity, key_hash, seed) -> np.ndarray:
        if self.dense_start:
            return np.ones(shape, np.float32)
        return self.sparsity_type.random_mask(shape, sparsity, key_hash, seed)

    def observe(self, kernel: KernelView, context: UpdateContext):
        """Runs on every training step (before any update); SNFS keeps its gradient average here."""
        return None

    def drop_scores(self, kernel: KernelView, context: UpdateContext):
        return tf.abs(kernel.weight)

    def grow_scores(self, kernel: KernelView, context: UpdateContext):
        """Scores for growing; None means the method never grows (pure pruning)."""
        return None

    def target_kept(self, kernel: KernelView, context: UpdateContext):
        """How many weights the kernel keeps after this update (int32 tensor)."""
        sparsity = context.schedule.layer_sparsity(kernel.sparsity, context.step, context.end_step)
        return self.sparsity_type.kept_count_tensor(tuple(kernel.weight.shape), sparsity)

    def grow_count(self, kernel: KernelView, n_active, context: UpdateContext):
        return tf.zeros([], tf.int32)

    def attach(self, sparse):
        """Called once by ``SparseOptimizer.build`` (also when loading) after its masks exist.

        ``sparse`` is the optimizer: ``sparse.units`` are the masked kernels (key, layer path, kernel, mask,
        sparsity), ``sparse.model`` the model when known (not after loading). Methods that need the whole model
        rather than one kernel use it: GaP resolves its partitions here, SNIP scores the kernels on its batches
        before the initial masks are drawn.
        """
        return None

    def export_mask(self, kernel: KernelView):
        """The mask ``strip`` applies to this kernel; a method whose masks may be denser than the target in
        the middle of training (GaP's grown partition) prunes them back here. Never changes the model."""
        return kernel.mask

    # ------------------------------------------------------------------ the update itself
    def update_mask(self, kernel: KernelView, context: UpdateContext):
        """Return the kernel's new mask (same shape and dtype as ``kernel.mask``)."""
        n_active = tf.cast(tf.reduce_sum(kernel.mask), tf.int32)
        n_target = self.target_kept(kernel, context)
        grow_scores = self.grow_scores(kernel, context)
        n_grow = (self.grow_count(kernel, n_active, context) if grow_scores is not None
                  else tf.zeros([], tf.int32))
        # The sparsity type drops (n_active - n_target + n_grow) and grows n_grow within its structure.
        return self.sparsity_type.update(kernel.mask, self.drop_scores(kernel, context), grow_scores, n_target,
                                         n_grow)

    def get_config(self):
        return {"sparsity_type": serialize_sparsity_type(self.sparsity_type)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class DropGrow(MaskUpdater):
    """The RigL family: each update replaces ``floor(n_active * drop_fraction(t))`` weights per kernel."""

    def __init__(self, drop_fraction=0.3, drop_fraction_schedule="cosine", sparsity_type="unstructured"):
        super().__init__(sparsity_type)
        self.drop_fraction = get_drop_fraction(drop_fraction_schedule, drop_fraction)

    def target_kept(self, kernel, context):
        # Drop/grow keeps each kernel's count fixed; no schedule can change it.
        return tf.constant(self.sparsity_type.kept_count(tuple(kernel.weight.shape), kernel.sparsity), tf.int32)

    def grow_count(self, kernel, n_active, context):
        fraction = self.drop_fraction(context.step, context.end_step)
        return tf.cast(tf.floor(tf.cast(n_active, tf.float32) * fraction), tf.int32)

    def get_config(self):
        return dict(super().get_config(), drop_fraction=self.drop_fraction.initial,
                    drop_fraction_schedule=keras.saving.serialize_keras_object(self.drop_fraction))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.get("drop_fraction_schedule")
        if isinstance(schedule, dict):
            config["drop_fraction_schedule"] = keras.saving.deserialize_keras_object(schedule)
        return cls(**config)


@register_updater("static")
class Static(MaskUpdater):
    """Random sparse mask fixed for the whole run."""

    changes_topology = False


@register_updater("dense")
class Dense(Static):
    """Dense baseline through the same API (every mask is all ones, nothing is ever updated)."""

    forced_sparsity = 0.0


@register_updater("set")
class SET(DropGrow):
    """Sparse Evolutionary Training: grow at random (stateless, seeded by the weight's path and the step)."""

    def grow_scores(self, kernel, context):
        seed = step_seed(kernel.key_hash ^ (context.seed & 0x7FFFFFFF), context.step)
        return tf.random.stateless_uniform(tf.shape(kernel.weight), seed=seed)


@register_updater("rigl")
class RigL(DropGrow):
    """Rigged Lottery: grow where the dense gradient w.r.t. the effective (masked) weight is largest."""

    uses_gradient = True

    def grow_scores(self, kernel, context):
        return tf.abs(kernel.gradient)


@register_updater("snfs")
class SNFS(DropGrow):
    """Sparse Networks From Scratch without redistribution: grow by |EMA of the dense gradient|."""

    uses_gradient = True

    def __init__(self, decay=0.9, **kwargs):
        super().__init__(**kwargs)
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), the weight the gradient average keeps at each step "
                             f"(1 would never update it, above 1 it diverges); got {decay!r}")
        self.decay = float(decay)

    def kernel_state(self, shape):
        return {"gradient_average": "zeros"}

    def observe(self, kernel, context):
        average = kernel.state["gradient_average"]
        # average += (1 - decay) * (gradient - average): one fused read-modify-write of the state.
        return average.assign_add((1.0 - self.decay) * (kernel.gradient - average))

    def grow_scores(self, kernel, context):
        return tf.abs(kernel.state["gradient_average"])

    def get_config(self):
        return dict(super().get_config(), decay=self.decay)


@register_updater("magnitude")
class Magnitude(MaskUpdater):
    """Gradual magnitude pruning (Zhu & Gupta 2017): dense to sparse on a polynomial schedule."""

    dense_start = True

    def default_schedule(self, **cadence):
        return PolynomialSchedule(**cadence)
