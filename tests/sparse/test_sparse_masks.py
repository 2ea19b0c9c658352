"""Mask primitives: exact counts, stable seeds, drop/grow selection and its tie-breaking."""

import numpy as np
import pytest
import tensorflow as tf

from morphsparse.sparse.masks import kept_count, random_mask, stable_hash
from morphsparse.sparse.sparsity_types import Unstructured


@pytest.mark.parametrize("size,sparsity,expected", [(1000, 0.9, 100), (100, 0.29, 71), (10, 0.0, 10),
                                                    (7, 0.5, 4), (235200, 0.920432, 235200 - 216485)])
def test_kept_count_is_n_minus_floor_sn(size, sparsity, expected):
    assert kept_count(size, sparsity) == expected


def test_random_mask_exact_count_and_deterministic():
    a = random_mask((30, 20), 0.83, stable_hash("dense/kernel"), seed=3)
    b = random_mask((30, 20), 0.83, stable_hash("dense/kernel"), seed=3)
    c = random_mask((30, 20), 0.83, stable_hash("dense_1/kernel"), seed=3)
    assert a.sum() == kept_count(600, 0.83)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stable_hash_is_a_fixed_crc32_not_pythons_salted_hash():
    # A literal: every process, whatever its PYTHONHASHSEED, must compute exactly this value.
    assert stable_hash("block/conv/kernel") == 1466006107
    assert stable_hash("block/conv/kernel") != stable_hash("block/conv/kernel_1")


def test_drop_lowest_removes_smallest_active_magnitudes_with_index_ties():
    mask = tf.constant([1, 1, 1, 0, 1, 1], tf.float32)
    scores = tf.constant([0.5, 0.1, 0.3, 0.0, 0.1, 0.9])
    out = Unstructured().drop_lowest(mask, scores, 2).numpy()
    # 0.1 at index 1 and 4 are the two smallest active; the inactive 0.0 does not compete.
    np.testing.assert_array_equal(out, [1, 0, 1, 0, 0, 1])
    out = Unstructured().drop_lowest(mask, scores, 1).numpy()
    np.testing.assert_array_equal(out, [1, 0, 1, 0, 1, 1])   # tie 0.1/0.1: the lower index goes first


def test_grow_highest_only_among_inactive():
    mask = tf.constant([[1, 0], [0, 0]], tf.float32)
    scores = tf.constant([[9.0, 1.0], [3.0, 3.0]])
    out = Unstructured().grow_highest(mask, scores, 1).numpy()
    np.testing.assert_array_equal(out, [[1, 0], [1, 0]])   # tie 3/3 resolved to the lower flat index
    out = Unstructured().grow_highest(mask, scores, 3).numpy()
    np.testing.assert_array_equal(out, [[1, 1], [1, 1]])


def test_keep_highest_exact_count():
    scores = tf.random.stateless_uniform([50], seed=[1, 2])
    out = Unstructured().keep_highest(scores, 7).numpy()
    assert out.sum() == 7
    assert set(np.argsort(-scores.numpy())[:7]) == set(np.flatnonzero(out))


@pytest.mark.parametrize("count", [0, 7, 3000, 60000, 100000])
def test_prefiltered_top_k_picks_the_same_set_as_top_k(count):
    from morphsparse.sparse.masks import top_k_indices
    values = tf.round(tf.random.stateless_normal([100000], seed=[3, 4]) * 4)      # many ties
    values = tf.where(tf.range(100000) % 7 == 0, -np.inf, values)                   # like grow's active positions
    expected = tf.math.top_k(values, k=count).indices.numpy()
    np.testing.assert_array_equal(np.sort(top_k_indices(values, count).numpy()), np.sort(expected))


def test_masks_is_the_bottom_module():
    """masks.py holds the arithmetic the sparsity types are built on, so it imports no other morphsparse module
    (sparsity_types imports it; a cycle would make import order matter)."""
    import ast
    import morphsparse.sparse.masks as masks

    tree = ast.parse(open(masks.__file__).read())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    absolute = [alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names if alias.name.startswith("morphsparse")]
    absolute += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level
                 and (node.module or "").startswith("morphsparse")]
    assert relative == [] and absolute == []
