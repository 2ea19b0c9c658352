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
