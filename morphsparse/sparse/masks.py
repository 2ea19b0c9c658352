"""Mask arithmetic shared by every updater: exact counts, stable seeds and top-k selection.

Everything here keeps the invariant the rest of the package relies on: a mask for ``n`` weights at sparsity ``s``
holds exactly ``n - floor(s * n)`` ones, and the positions chosen depend only on the scores, with ties broken by
the lower flat index (``tf.math.top_k`` and a stable sort are both stable), never on thread timing or on Python's
salted ``hash()``.

Two implementations of each selection give the same masks: outside XLA a top-k over the active positions only
(fast on CPU, dynamic shapes), inside an XLA-compiled step (Keras compiles with XLA by default on a GPU) a stable
sort of the whole kernel (static shapes, which XLA requires).
"""

from __future__ import annotations

import math
import zlib

import keras
import numpy as np
import tensorflow as tf

# A product like 0.29 * 100 is 28.999999999999996 in binary floating point; this slack makes floor() give the
# count a reader expects without changing any count that is not within rounding error of an integer.
_FLOOR_SLACK = 1e-9


def pruned_count(size: int, sparsity: float) -> int:
    """Number of zeros a mask of ``size`` weights holds at ``sparsity``: ``floor(sparsity * size)``."""
    return int(math.floor(sparsity * size + _FLOOR_SLACK))


def kept_count(size: int, sparsity: float) -> int:
    """Number of ones a mask of ``size`` weights holds at ``sparsity``: ``size - floor(sparsity * size)``."""
    return int(size) - pruned_count(size, sparsity)


def kept_count_tensor(size: int, sparsity):
    """``kept_count`` for a sparsity that is only known inside the graph (a schedule's output), as int32."""
    sparsity = tf.cast(sparsity, tf.float64)
    pruned = tf.floor(sparsity * float(size) + _FLOOR_SLACK)
    return tf.cast(size - tf.cast(pruned, tf.int64), tf.int32)


def in_xla_context() -> bool:
    """True while tracing inside an XLA-compiled function (``jit_compile=True``), where shapes must be static."""
    try:
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001 - a TensorFlow without this helper: assume no XLA
        return False


def _sorted_ranks(keys):
    """Rank of every entry of the 1-D ``keys`` in ascending order, ties by lower index (static shapes)."""
    order = tf.argsort(keys, stable=True)
    return tf.scatter_nd(order[:, None], tf.range(tf.size(keys)), tf.shape(keys))


def top_k_indices(values, count):
    """Indices of the ``count`` largest entries of the 1-D ``values`` (ties: lower index), like
    ``tf.math.top_k(values, count).indices`` as a set, faster when ``count`` is a small part of ``values``.

    TensorFlow's top-k costs O(n log k); for a few percent of a large kernel (RigL's grow step) a strided sample
    first gives a threshold that keeps about twice ``count`` candidates, and the exact top-k runs on those. When
    the sample misjudges (fewer than ``count`` pass), the full top-k runs instead, so the result is always exact.
    """
    count = tf.cast(count, tf.int32)
    size = values.shape[0]
    if size is None or size < 65536:
        return tf.math.top_k(values, k=count, sorted=False).indices
    stride = 16
    sample = values[::stride]
    sample_k = tf.minimum(tf.size(sample), 2 * count // stride + 16)
    threshold = tf.reduce_min(tf.math.top_k(sample, k=sample_k, sorted=False).values)
    passing = values >= threshold
    enough = tf.reduce_sum(tf.cast(passing, tf.int32)) >= count

    def filtered():
        candidates = tf.cast(tf.where(passing)[:, 0], tf.int32)
        chosen = tf.math.top_k(tf.gather(values, candidates), k=count, sorted=False).indices
        return tf.gather(candidates, chosen)

    return tf.cond(enough & (count > 0), filtered, lambda: tf.math.top_k(values, k=count, sorted=False).indices)


def stable_hash(text: str) -> int:
    """A 31-bit hash of ``text`` that is the same in every process (CRC-32, unlike Python's salted hash())."""
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def step_seed(key_hash: int, step):
    """Seed for a stateless random op: the weight's stable hash and the training step."""
    return tf.stack([tf.constant(key_hash, tf.int64), tf.cast(step, tf.int64)])


def random_mask(shape, sparsity: float, key_hash: int, seed: int = 0) -> np.ndarray:
    """A 0/1 float32 mask with the exact kept count, positions drawn from a generator seeded by the key."""
    size = int(np.prod(shape))
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, key_hash])
    flat = np.zeros(size, np.float32)
    flat[rng.permutation(size)[:kept_count(size, sparsity)]] = 1.0
    return flat.reshape(shape)


@keras.saving.register_keras_serializable(package="morphsparse.sparsity_types", name="Unstructured")
class Unstructured:
    """Sparsity type "unstructured": any single weight may be kept or removed; the base of every sparsity type.

    Updaters express what they want as scores and counts; the sparsity type turns that into mask positions.
    Structured types (blocks, N:M, constant fan-in; sparsity_types.py) override ``check``, ``kept_count``,
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


def __getattr__(name):
    # The registry and the other types live in sparsity_types.py (which imports this module).
    if name in ("SPARSITY_TYPES", "get_sparsity_type"):
        from . import sparsity_types
        return getattr(sparsity_types, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
