"""Sparsity types: which patterns of zeros a mask may hold, independent of method, distribution and schedule.

An updater (RigL, SET, magnitude, GaP, SNIP, ...) says *what it wants* as scores and counts; the distribution
says how many weights each kernel keeps; the schedule says when masks change. The sparsity type turns that into
mask positions that respect a structure (jaxpruner's split), so every method works with every type::

    ms.sparse_optimizer(model, opt, sparsity=0.9, method="rigl", sparsity_type="1x4")   # or "2:4", "fan_in"

Every kernel is seen as a matrix ``(rows, outputs)``: a Dense kernel ``(in, out)`` as it is, a convolution kernel
``(kh, kw, in, out)`` as ``(kh * kw * in, out)`` (rows in memory order, so for ``in`` divisible by the block or
group size, consecutive rows are consecutive input channels at one spatial tap). The last axis is the output
axis for Dense, Conv, DepthwiseConv, EinsumDense and SeparableConv pointwise kernels (for Conv*Transpose it is
the input channels, for Embedding the embedding dimension: the structure then runs along those axes).

A type implements five things (see :class:`Unstructured`, the base):

* ``check(shape, where)``: refuse a kernel the structure cannot tile (an error naming the layer);
* ``kept_count(shape, sparsity)`` (and ``kept_count_tensor``): the exact number of ones, in whole blocks/groups;
* ``random_mask(shape, sparsity, key_hash, seed)``: the initial mask, random within the structure;
* ``update(mask, drop_scores, grow_scores, n_target, n_grow)``: one drop/grow (or drop-only) update;
* ``keep_highest(scores, count)``: a fresh mask from scores (SNIP, lottery tickets).

Structure selection only runs on mask updates and at initialisation; ordinary training steps cost the same.
"""

from __future__ import annotations

import numbers
import re

import keras
import numpy as np
import tensorflow as tf

from .masks import _sorted_ranks, in_xla_context, kept_count, kept_count_tensor, random_mask, top_k_indices


@keras.saving.register_keras_serializable(package="morphsparse.sparsity_types", name="Unstructured")
class Unstructured:
    """Sparsity type "unstructured": any single weight may be kept or removed; the base of every sparsity type.

    Updaters express what they want as scores and counts; the sparsity type turns that into mask positions.
    Structured types (blocks, N:M, constant fan-in, below) override ``check``, ``kept_count``,
    ``random_mask``, ``update`` and ``keep_highest``; ``drop_lowest``/``grow_highest`` are the element-wise
    selections this type's ``update`` is made of.
    """

    name = "unstructured"

    def check(self, shape, where=None):
        """Raise a ValueError naming ``where`` when a kernel of ``shape`` cannot hold this structure."""
        return None

    def kept_count(self, shape, sparsity) -> int:
        """Exact number of ones a mask of ``shape`` keeps at ``sparsity`` (whole blocks/groups for structures)."""
        return kept_count(int(np.prod(shape)), sparsity)

    def kept_count_tensor(self, shape, sparsity):
        """``kept_count`` for a sparsity known only inside the graph (a schedule's output), as int32."""
        return kept_count_tensor(int(np.prod(shape)), sparsity)

    def random_mask(self, shape, sparsity, key_hash, seed=0) -> np.ndarray:
        """The initial mask: random positions within the structure, seeded by the kernel's key and ``seed``."""
        return random_mask(shape, sparsity, key_hash, seed)

    def update(self, mask, drop_scores, grow_scores, n_target, n_grow):
        """One mask update: drop the lowest ``drop_scores`` so that, after growing ``n_grow`` positions by the
        highest ``grow_scores`` (None: no growing), ``n_target`` positions are live."""
        n_active = tf.cast(tf.reduce_sum(mask), tf.int32)
        n_drop = tf.maximum(n_active - tf.cast(n_target, tf.int32) + tf.cast(n_grow, tf.int32), 0)
        mask = self.drop_lowest(mask, drop_scores, n_drop)
        if grow_scores is not None:
            mask = self.grow_highest(mask, grow_scores, n_grow)
        return mask

    def drop_lowest(self, mask, scores, count):
        """Clear the ``count`` active positions of ``mask`` whose ``scores`` are lowest (ties: lower index)."""
        flat_mask = tf.reshape(mask, [-1])
        if in_xla_context():
            keys = tf.where(flat_mask > 0, tf.cast(tf.reshape(scores, [-1]), tf.float32), np.inf)
            count = tf.minimum(tf.cast(count, tf.int32), tf.cast(tf.reduce_sum(flat_mask), tf.int32))
            dropped = (_sorted_ranks(keys) < count) & (flat_mask > 0)
            return tf.reshape(tf.where(dropped, tf.zeros_like(flat_mask), flat_mask), tf.shape(mask))
        active = tf.where(flat_mask > 0)[:, 0]
        # Only the active entries compete, which makes the top-k far smaller than the kernel at high sparsity.
        active_scores = tf.gather(tf.reshape(scores, [-1]), active)
        count = tf.minimum(tf.cast(count, tf.int32), tf.size(active))
        lowest = top_k_indices(-active_scores, count)
        cleared = tf.gather(active, lowest)
        flat_mask = tf.tensor_scatter_nd_update(flat_mask, cleared[:, None], tf.zeros_like(cleared, mask.dtype))
        return tf.reshape(flat_mask, tf.shape(mask))

    def grow_highest(self, mask, scores, count):
        """Set the ``count`` inactive positions of ``mask`` whose ``scores`` are highest (ties: lower index)."""
        flat_mask = tf.reshape(mask, [-1])
        flat_scores = tf.cast(tf.reshape(scores, [-1]), tf.float32)
        candidates = tf.where(flat_mask > 0, tf.fill(tf.shape(flat_scores), -np.inf), flat_scores)
        if in_xla_context():
            count = tf.cast(count, tf.int32)
            grown = (_sorted_ranks(-candidates) < count) & (flat_mask <= 0)
            return tf.reshape(tf.where(grown, tf.ones_like(flat_mask), flat_mask), tf.shape(mask))
        highest = top_k_indices(candidates, count)
        flat_mask = tf.tensor_scatter_nd_update(flat_mask, highest[:, None], tf.ones_like(highest, mask.dtype))
        return tf.reshape(flat_mask, tf.shape(mask))

    def keep_highest(self, scores, count, dtype=tf.float32):
        """A fresh mask holding ones at the ``count`` highest ``scores`` (one-shot methods such as SNIP)."""
        flat_scores = tf.reshape(scores, [-1])
        if in_xla_context():
            kept = _sorted_ranks(-tf.cast(flat_scores, tf.float32)) < tf.cast(count, tf.int32)
            return tf.reshape(tf.cast(kept, dtype), tf.shape(scores))
        _, highest = tf.math.top_k(flat_scores, k=tf.cast(count, tf.int32))
        flat_mask = tf.scatter_nd(highest[:, None], tf.ones_like(highest, dtype), tf.shape(flat_scores))
        return tf.reshape(flat_mask, tf.shape(scores))

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"<sparsity_type {self.name!r}{' ' + config if config else ''}>"


SPARSITY_TYPES: dict[str, type] = {"unstructured": Unstructured}
_PACKAGE = "morphsparse.sparsity_types"
_N_BY_M = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


#: names of the types morphsparse defines; ``register_sparsity_type`` refuses them (see there)
BUILT_IN_NAMES = ("unstructured", "block", "n:m", "fan_in")


def register_sparsity_type(name: str):
    """Class decorator: make ``sparsity_type=name`` available and the class loadable from ``.keras`` files.

    ``name`` is matched without case or surrounding spaces. It may not be a built-in name (``"unstructured"``,
    ``"fan_in"``, ``"block"``, ``"n:m"``) nor a block or N:M pattern (``"1x4"``, ``"2:4"``): those would be
    replaced for the whole process, every model that uses them included, so that is an error; pick another
    name (your class may subclass the built-in). Registering a name again (a re-run notebook cell) replaces
    the earlier class.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"register_sparsity_type: name must be a non-empty string, got {name!r}")
    key = name.strip().lower()
    if key in BUILT_IN_NAMES or _N_BY_M.match(key) or _BLOCK.match(key):
        raise ValueError(f"register_sparsity_type: name {name!r} is a built-in sparsity type; registering it "
                         "would replace the built-in for every model in this process. Give your type another "
                         "name (it may subclass ms.Block, ms.NByM, ms.FanIn or ms.Unstructured)")
    return _register(key)


def _register(key):
    def decorator(cls):
        cls.name = key
        SPARSITY_TYPES[key] = cls
        return keras.saving.register_keras_serializable(package=_PACKAGE, name=cls.__name__)(cls)
    return decorator


def _instance_name(instance, built_in, default):
    """The name of a Block or NByM instance: ``default`` (its pattern, ``"1x4"``) for the built-in class, but
    the registered name of a subclass registered under its own name (else it would be saved as the built-in
    pattern and load as the built-in class, or not at all)."""
    registered = type(instance).name
    return default if registered == built_in else registered


def _matrix(shape):
    """``(rows, outputs)`` of the matrix view of a kernel of ``shape``."""
    shape = tuple(int(d) for d in shape)
    return int(np.prod(shape[:-1])), shape[-1]


def _desc_ranks(keys):
    """Rank of every entry along the last axis in descending order, ties by lower index (static shapes)."""
    order = tf.argsort(keys, axis=-1, direction="DESCENDING", stable=True)
    return tf.argsort(order, axis=-1, stable=True)


def _where_text(where):
    return f" (kernel {where!r})" if where else ""


@_register("block")
class Block(Unstructured):
    """Blocks of ``outputs x inputs`` weights kept or removed whole: ``"1x4"`` is one output neuron times 4
    consecutive inputs (4 consecutive rows of one column of a Dense kernel: LiteRT's 1x4 sparse fully-connected
    layout). Scores are summed over each block and the unstructured selection runs on blocks, so counts are
    exact in blocks: ``kept_count(n_blocks, sparsity)`` blocks are kept."""

    def __init__(self, outputs: int = 1, inputs: int = 4):
        self.outputs, self.inputs = _positive(outputs, "outputs"), _positive(inputs, "inputs")
        self.name = _instance_name(self, "block", f"{self.outputs}x{self.inputs}")
        self.block_size = self.outputs * self.inputs

    def check(self, shape, where=None):
        rows, cols = _matrix(shape)
        if rows % self.inputs or cols % self.outputs:
            raise ValueError(
                f"sparsity_type={self.name!r} tiles kernels with blocks of {self.outputs} output(s) x "
                f"{self.inputs} input row(s), but{_where_text(where)} of shape {tuple(shape)} is a {rows} x {cols} "
                f"matrix (rows = all axes but the last), not divisible. Keep that layer dense with "
                f"keep_dense=[...], or use sparsity_type='unstructured'.")

    def _blocks(self, shape):
        rows, cols = _matrix(shape)
        return rows // self.inputs, cols // self.outputs

    def _pool(self, values, shape):
        rows, cols = self._blocks(shape)
        grid = tf.reshape(tf.cast(values, tf.float32), [rows, self.inputs, cols, self.outputs])
        return tf.reduce_sum(grid, axis=[1, 3])

    def _expand(self, blocks, shape, dtype):
        rows, cols = self._blocks(shape)
        grid = tf.reshape(tf.cast(blocks, dtype), [rows, 1, cols, 1]) * tf.ones([1, self.inputs, 1, self.outputs],
                                                                                 dtype)
        return tf.reshape(grid, shape)

    def kept_count(self, shape, sparsity):
        rows, cols = self._blocks(shape)
        return kept_count(rows * cols, sparsity) * self.block_size

    def kept_count_tensor(self, shape, sparsity):
        rows, cols = self._blocks(shape)
        return kept_count_tensor(rows * cols, sparsity) * self.block_size

    def random_mask(self, shape, sparsity, key_hash, seed=0):
        blocks = Unstructured.random_mask(self, self._blocks(shape), sparsity, key_hash, seed)
        return keras.ops.convert_to_numpy(self._expand(blocks, tuple(shape), tf.float32))

    def update(self, mask, drop_scores, grow_scores, n_target, n_grow):
        shape = tuple(mask.shape)
        blocks = tf.cast(self._pool(mask, shape) > 0, mask.dtype)
        grow = None if grow_scores is None else self._pool(grow_scores, shape)
        new = Unstructured.update(self, blocks, self._pool(drop_scores, shape), grow, n_target // self.block_size,
                                  n_grow // self.block_size)
        return self._expand(new, shape, mask.dtype)

    def keep_highest(self, scores, count, dtype=tf.float32):
        shape = tuple(scores.shape)
        kept = Unstructured.keep_highest(self, self._pool(scores, shape), count // self.block_size, dtype)
        return self._expand(kept, shape, dtype)

    def get_config(self):
        return {"outputs": self.outputs, "inputs": self.inputs}


class Grouped(Unstructured):
    """Base of the types that fix how many weights each *group* keeps (N:M groups, neurons for fan-in).

    ``update`` works in three steps, with static shapes (also inside XLA): (1) each group keeps at most its
    quota, its highest drop scores (this alone is the whole update for pruning-only methods: magnitude, GaP's
    prune-back); (2) the ``n_grow`` lowest survivors of the whole kernel are dropped, competing across groups as
    in RigL (a per-group count such as floor(k * drop_fraction) would be 0 for small groups and freeze the
    topology); (3) every group is refilled to its quota by its highest grow scores, just-dropped positions
    included. So the update replaces exactly ``n_grow`` weights and every group ends at its quota.
    """

    def groups(self, values, shape):
        """``values`` of a kernel of ``shape`` as ``(groups, group size)``."""
        raise NotImplementedError

    def ungroup(self, grouped, shape):
        raise NotImplementedError

    def quotas(self, active, drop, grow, n_target, n_grow):
        """How many weights each group keeps after the update (int32, one per group)."""
        raise NotImplementedError

    def update(self, mask, drop_scores, grow_scores, n_target, n_grow):
        shape = tuple(mask.shape)
        active = self.groups(mask, shape) > 0
        drop = self.groups(tf.cast(drop_scores, tf.float32), shape)
        grow = None if grow_scores is None else self.groups(tf.cast(grow_scores, tf.float32), shape)
        n_target, n_grow = tf.cast(n_target, tf.int32), tf.cast(n_grow, tf.int32)
        quota = self.quotas(active, drop, grow, n_target, n_grow)[:, None]
        keep = active & (_desc_ranks(tf.where(active, drop, -np.inf)) < quota)
        if grow is not None:
            lowest = _sorted_ranks(tf.reshape(tf.where(keep, drop, np.inf), [-1])) < n_grow
            keep = keep & ~tf.reshape(lowest, tf.shape(keep))
            deficit = quota - tf.reduce_sum(tf.cast(keep, tf.int32), axis=1, keepdims=True)
            keep = keep | (~keep & (_desc_ranks(tf.where(keep, -np.inf, grow)) < deficit))
        return self.ungroup(tf.cast(keep, mask.dtype), shape)

    def keep_highest(self, scores, count, dtype=tf.float32):
        return self.update(tf.ones(tuple(scores.shape), dtype), scores, None, count, 0)

    def random_mask(self, shape, sparsity, key_hash, seed=0):
        rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, key_hash])
        scores = tf.constant(rng.random(tuple(shape)), tf.float32)
        return keras.ops.convert_to_numpy(self.keep_highest(scores, self.kept_count(shape, sparsity)))


@_register("n:m")
class NByM(Grouped):
    """``"N:M"``: in every group of M consecutive rows (inputs) of each output column exactly N weights are kept
    (``"2:4"``: the pattern sparse tensor cores accelerate). The type fixes every kernel's sparsity at 1 - N/M,
    so ``sparse_optimizer`` requires ``sparsity=1 - N/M`` (its default then) and warns that the distribution
    has no say."""

    def __init__(self, n: int = 2, m: int = 4):
        self.n, self.m = _positive(n, "N"), _positive(m, "M")
        if self.n >= self.m:
            raise ValueError(f"sparsity_type='{n}:{m}' keeps {n} of every {m} weights, so nothing is pruned: N "
                             "must be smaller than M (e.g. '2:4')")
        self.name = _instance_name(self, "n:m", f"{self.n}:{self.m}")

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check(self, shape, where=None):
        rows, cols = _matrix(shape)
        if rows % self.m:
            raise ValueError(
                f"sparsity_type={self.name!r} groups every {self.m} consecutive rows (inputs) of each output, but"
                f"{_where_text(where)} of shape {tuple(shape)} has {rows} rows (all axes but the last), not a "
                f"multiple of {self.m}. Keep that layer dense with keep_dense=[...].")

    def groups(self, values, shape):
        rows, cols = _matrix(shape)
        grid = tf.reshape(values, [rows // self.m, self.m, cols])
        return tf.reshape(tf.transpose(grid, [0, 2, 1]), [-1, self.m])

    def ungroup(self, grouped, shape):
        rows, cols = _matrix(shape)
        grid = tf.transpose(tf.reshape(grouped, [rows // self.m, cols, self.m]), [0, 2, 1])
        return tf.reshape(grid, shape)

    def quotas(self, active, drop, grow, n_target, n_grow):
        return tf.fill(tf.shape(active)[:1], self.n)

    def kept_count(self, shape, sparsity):
        return int(np.prod(shape)) // self.m * self.n

    def keep_highest(self, scores, count, dtype=tf.float32):
        expected = self.kept_count(tuple(scores.shape), None)
        if isinstance(count, (int, np.integer)) and int(count) != expected:
            raise ValueError(f"sparsity_type={self.name!r} keeps {expected} weights of a kernel of shape "
                             f"{tuple(scores.shape)}, not {int(count)}")
        return super().keep_highest(scores, count, dtype)

    def kept_count_tensor(self, shape, sparsity):
        return tf.constant(self.kept_count(shape, sparsity), tf.int32)

    def get_config(self):
        return {"n": self.n, "m": self.m}


@_register("fan_in")
class FanIn(Grouped):
    """Constant fan-in (SRigL, Lasby et al., ICLR 2024): every output neuron keeps the same number of inputs
    ``k = kept_count(fan_in, layer sparsity)``, which a dense kernel with k inputs per neuron can run.

    Args:
        ablation: after each mask update, mask whole the neurons with fewer than ``min_salient_fraction * k``
            salient weights, and give their budget to the remaining neurons (SRigL's neuron ablation). A weight
            is salient when the layer-wide unstructured criteria would keep it: among the ``n_target - n_grow``
            largest drop scores (|W|) of the active weights, or the ``n_grow`` largest grow scores (RigL: |grad|)
            of the inactive ones. The layer keeps exactly its count: the ``A`` live neurons keep
            ``n // A`` or ``n // A + 1`` weights each (the extra one to the most salient neurons), so fan-in is
            constant up to one weight once a neuron has been ablated. Ablation is re-decided at every update
            (an ablated neuron grows back when its gradients become salient); ``ms.export(model,
            source="zeros")`` then removes the ablated neurons physically.
        min_salient_fraction: SRigL's gamma_sal (default 0.3, as in the paper); only with ``ablation=True``
            (without it, it would have no effect, so it is an error).
    """

    #: SRigL's gamma_sal, the default ``min_salient_fraction``
    DEFAULT_MIN_SALIENT_FRACTION = 0.3

    def __init__(self, ablation: bool = False, min_salient_fraction: float | None = None):
        if not isinstance(ablation, (bool, np.bool_)):
            raise TypeError(f"ablation must be True or False, got {ablation!r}")
        if min_salient_fraction is not None and not ablation:
            raise ValueError(f"min_salient_fraction={min_salient_fraction!r} has no effect without ablation=True "
                             "(it is the threshold below which a neuron is ablated): pass ablation=True, or leave "
                             "min_salient_fraction out")
        if min_salient_fraction is None:
            min_salient_fraction = self.DEFAULT_MIN_SALIENT_FRACTION
        if isinstance(min_salient_fraction, bool) or not isinstance(min_salient_fraction, numbers.Real) \
                or not 0.0 <= float(min_salient_fraction) <= 1.0:
            raise ValueError(f"min_salient_fraction must be a number in [0, 1], got {min_salient_fraction!r}")
        self.ablation = bool(ablation)
        self.min_salient_fraction = float(min_salient_fraction)

    def check(self, shape, where=None):
        return None        # any kernel: a column is a neuron's inputs

    def groups(self, values, shape):
        return tf.transpose(tf.reshape(values, _matrix(shape)))

    def ungroup(self, grouped, shape):
        return tf.reshape(tf.transpose(grouped), shape)

    def kept_count(self, shape, sparsity):
        rows, cols = _matrix(shape)
        return cols * kept_count(rows, sparsity)

    def kept_count_tensor(self, shape, sparsity):
        rows, cols = _matrix(shape)
        return cols * kept_count_tensor(rows, sparsity)

    def quotas(self, active, drop, grow, n_target, n_grow):
        cols, rows = active.shape
        k = n_target // cols
        if not self.ablation:
            return tf.fill([cols], k)
        flat_active = tf.reshape(active, [-1])
        keep_rank = _desc_ranks(tf.where(flat_active, tf.reshape(drop, [-1]), -np.inf))
        salient = flat_active & (keep_rank < n_target - n_grow)
        if grow is not None:
            grow_rank = _desc_ranks(tf.where(flat_active, -np.inf, tf.reshape(grow, [-1])))
            salient |= ~flat_active & (grow_rank < n_grow)
        salient = tf.reduce_sum(tf.cast(tf.reshape(salient, [cols, rows]), tf.int32), axis=1)
        weak = tf.cast(salient, tf.float32) < self.min_salient_fraction * tf.cast(k, tf.float32)
        # Never ablate every neuron: the layer would output constants and cut the network (export refuses a
        # model whose outputs no input reaches). Keep at least enough neurons to hold the layer's whole count.
        must_live = tf.maximum(1, (n_target + rows - 1) // rows)
        ablated = weak & (_desc_ranks(-salient) < cols - must_live)     # the least salient go first
        alive = cols - tf.reduce_sum(tf.cast(ablated, tf.int32))
        base, extra = n_target // alive, n_target % alive
        rank = _desc_ranks(tf.where(ablated, -1, salient))               # the most salient get the extra ones
        return tf.where(ablated, 0, base + tf.cast(rank < extra, tf.int32))

    def get_config(self):
        if not self.ablation:
            return {"ablation": False}
        return {"ablation": True, "min_salient_fraction": self.min_salient_fraction}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if not config.get("ablation", False):
            config.pop("min_salient_fraction", None)   # earlier versions saved it without ablation too
        return cls(**config)


def _positive(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"sparsity_type: {what} must be a positive whole number, got {value!r}")
    return int(value)


def known_sparsity_types() -> list:
    return ["unstructured", "fan_in", "1x4", "1x16", "4x1", "<outputs>x<inputs>", "N:M (e.g. '2:4')"] + sorted(
        name for name in SPARSITY_TYPES if name not in ("unstructured", "fan_in", "block", "n:m"))


def get_sparsity_type(value):
    """Resolve a sparsity type given by name (``"unstructured"``, ``"1x4"``, ``"2:4"``, ``"fan_in"``, a
    registered name), by config (what ``serialize_sparsity_type`` wrote) or as an instance."""
    if isinstance(value, Unstructured):
        return value
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    if not isinstance(value, str):
        raise TypeError(f"sparsity_type must be a name such as 'unstructured', '1x4', '2:4' or 'fan_in', or a "
                        f"sparsity type object; got {type(value).__name__} {value!r}")
    name = value.strip().lower()
    if name in SPARSITY_TYPES and name not in ("block", "n:m"):
        return SPARSITY_TYPES[name]()
    if ":" in name:
        found = _N_BY_M.match(name)
        if not found:
            raise ValueError(f"sparsity_type={value!r} is not a valid 'N:M' pattern: write two whole numbers "
                             "N < M, e.g. sparsity_type='2:4'")
        return NByM(int(found.group(1)), int(found.group(2)))
    found = _BLOCK.match(name)
    if found:
        return Block(int(found.group(1)), int(found.group(2)))
    raise ValueError(f"Unknown sparsity_type {value!r}; known: {known_sparsity_types()}. Register your own with "
                     "morphsparse.sparse.register_sparsity_type.")


def serialize_sparsity_type(sparsity_type):
    """Its name when the name alone rebuilds it (``"2:4"``, ``"fan_in"``), else a Keras config dict."""
    try:
        if get_sparsity_type(sparsity_type.name).get_config() == sparsity_type.get_config() and \
                type(get_sparsity_type(sparsity_type.name)) is type(sparsity_type):
            return sparsity_type.name
    except (ValueError, TypeError):
        pass
    return keras.saving.serialize_keras_object(sparsity_type)


__all__ = ["SPARSITY_TYPES", "register_sparsity_type", "get_sparsity_type", "serialize_sparsity_type",
           "Unstructured", "Block", "NByM", "FanIn", "Grouped"]
