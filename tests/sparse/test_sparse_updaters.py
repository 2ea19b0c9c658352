"""The drop/grow updates, optimizer-slot handling and the updater registry (algorithms.md 1.3)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse.sparse as mss
from morphsparse.sparse.masks import kept_count
from morphsparse.sparse.schedules import UpdateSchedule
from morphsparse.sparse.updaters import KernelView, RigL, UpdateContext


def _np(variable):
    return keras.ops.convert_to_numpy(variable)


def _linear_layer_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, use_bias=False, name="lin")])


def test_rigl_drops_smallest_and_grows_largest_hand_computed_gradient():
    model = _linear_layer_model()
    # SGD with learning rate 0: weights stay put, only the update acts.
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(learning_rate=0.0), 0.6, "rigl", "uniform",
                                  schedule=mss.UpdateSchedule(update_every=1, end_step=10),
                                  drop_fraction=0.5, drop_fraction_schedule="constant")
    unit = sparse.units[0]
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    t = np.random.default_rng(2).normal(size=(8, 5)).astype("float32")
    mask0, w0 = _np(unit.mask).copy(), _np(unit.kernel).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - t))
    gradients = tape.gradient(loss, model.trainable_variables)
    sparse.apply_gradients(zip(gradients, model.trainable_variables))

    # Hand-computed dense gradient of mean((x W - t)^2) w.r.t. the effective weight W = w0 (already masked).
    grad = 2.0 / (8 * 5) * x.T @ (x @ w0 - t)
    n_active = int(mask0.sum())
    assert n_active == kept_count(30, 0.6)
    k = math.floor(n_active * 0.5)
    active = np.flatnonzero(mask0.ravel())
    dropped = active[np.argsort(np.abs(w0.ravel()[active]), kind="stable")[:k]]
    m1 = mask0.ravel().copy()
    m1[dropped] = 0
    candidates = np.flatnonzero(m1 == 0)
    grown = candidates[np.argsort(-np.abs(grad.ravel()[candidates]), kind="stable")[:k]]
    expected = m1.copy()
    expected[grown] = 1
    np.testing.assert_array_equal(_np(unit.mask).ravel(), expected)
    assert int(_np(unit.mask).sum()) == n_active
    # Newly grown weights start at zero; weights kept throughout keep their values.
    new = (expected == 1) & (mask0.ravel() == 0)
    assert np.all(_np(unit.kernel).ravel()[new] == 0)
    kept = (expected == 1) & (mask0.ravel() == 1)
    np.testing.assert_array_equal(_np(unit.kernel).ravel()[kept], w0.ravel()[kept])


def test_just_dropped_weight_may_be_regrown_and_keeps_its_value():
    weight = tf.constant([[0.01, 0.5], [0.4, 0.0]])
    mask = tf.constant([[1.0, 1.0], [1.0, 0.0]])
    gradient = tf.constant([[9.0, 0.0], [0.0, 1.0]])         # the smallest active weight has the largest gradient
    view = KernelView("k", 1, 0.25, weight, mask, gradient)
    context = UpdateContext(tf.constant(0, tf.int64), tf.constant(100, tf.int64), UpdateSchedule())
    updater = RigL(drop_fraction=0.34, drop_fraction_schedule="constant")    # floor(3 * 0.34) = 1
    new_mask = updater.update_mask(view, context).numpy()
    np.testing.assert_array_equal(new_mask, mask.numpy())   # dropped (0, 0) and grew it right back


def test_set_grows_at_random_reproducibly():
    def run(seed):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(12, name="d")])  # same key each run
        sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.1), 0.8, "set", "uniform",
                                      schedule=mss.UpdateSchedule(update_every=1, end_step=10),
                                          seed=seed, drop_fraction_schedule="constant")
        model.compile(sparse, "mse")
        before = _np(sparse.units[0].mask).copy()
        model.fit(np.ones((4, 10), "float32"), np.zeros((4, 12), "float32"), batch_size=4, verbose=0)
        return before, _np(sparse.units[0].mask)

    before, after = run(seed=0)
    _, again = run(seed=0)
    _, other = run(seed=5)
    np.testing.assert_array_equal(after, again)
    assert not np.array_equal(after, before) and not np.array_equal(after, other)
    assert after.sum() == before.sum() == kept_count(120, 0.8)


class _CountChecker(keras.callbacks.Callback):
    """Checks after every batch (so before and after every update) counts and exact zeros."""

    def __init__(self):
        super().__init__()
        self.checked = 0

    def on_train_batch_end(self, batch, logs=None):
        for unit in mss.find_sparse_optimizer(self.model).units:
            mask, weight = _np(unit.mask), _np(unit.kernel)
            assert int(mask.sum()) == kept_count(mask.size, unit.sparsity), unit.key
            assert not np.any(weight[mask == 0]), unit.key
        self.checked += 1


@pytest.mark.parametrize("method", ["rigl", "set", "snfs", "static"])
def test_exact_counts_and_zeros_at_every_step(method):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(7, activation="relu"),
                              keras.layers.Dense(3)])
    schedule = mss.UpdateSchedule(update_every=2, end_step=12) if method != "static" else None
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), 0.85, method, "erk",
                                  schedule=schedule)
    model.compile(sparse, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    checker = _CountChecker()
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 64), batch_size=8, epochs=2,
               verbose=0, callbacks=[checker])
    assert checker.checked == 16
    assert int(_np(sparse.mask_updates)) == (6 if method != "static" else 0)
    if method in ("rigl", "set"):
        assert int(_np(sparse.mask_changes)) > 0


@pytest.mark.parametrize("optimizer,expected_slots", [
    (lambda: keras.optimizers.SGD(0.05, momentum=0.9), 1),
    (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), 1),
    (lambda: keras.optimizers.Adam(0.01), 2),
    (lambda: keras.optimizers.Adam(0.01, amsgrad=True), 3),
    (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1), 2),
    (lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True), 3),
    (lambda: keras.optimizers.Adam(0.01, use_ema=True), 3),
    (lambda: keras.optimizers.Nadam(0.01), 2),
    (lambda: keras.optimizers.Lion(0.01), 1),
], ids=["sgd-momentum", "nesterov", "adam", "adam-amsgrad", "adamw", "rmsprop", "adam-ema", "nadam", "lion"])
def test_grown_weights_and_their_slots_start_at_zero(optimizer, expected_slots):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9), keras.layers.Dense(2)])
    # The first update comes at step 3, once every slot has state, and replaces half the active weights.
    sparse = mss.sparse_optimizer(model, optimizer(), 0.7, "rigl", "uniform",
                                  schedule=mss.UpdateSchedule(update_every=3, begin_step=3, end_step=100),
                                  drop_fraction=0.5, drop_fraction_schedule="constant")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        sparse.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    for _ in range(3):   # steps 0, 1, 2: slots fill up
        step()
    unit = sparse.units[0]
    before = _np(unit.mask).copy()
    step()               # step 3: optimizer step, then the update
    after = _np(unit.mask)
    grown = (after == 1) & (before == 0)
    assert grown.any()
    slots = [slot for slot, _fresh in unit.slots]
    assert len(slots) == expected_slots, [s.name for s in slots]
    assert np.all(_np(unit.kernel)[grown] == 0)
    for slot in slots:
        values = _np(slot)
        assert np.all(values[grown] == 0), slot.name
        assert np.all(values[after == 0] == 0), slot.name
        assert np.any(values[(after == 1) & (before == 1)] != 0), slot.name
    step()               # pruned weights stay exactly zero through the next optimizer steps
    assert not np.any(_np(unit.kernel)[_np(unit.mask) == 0])


def test_any_optimizer_works_and_slots_restart_from_their_initial_value():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), np.ones((8, 6), "float32")
    sparse = mss.sparse_optimizer(model, keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.25), 0.5,
                                  "rigl",
                                      schedule=mss.UpdateSchedule(update_every=2, begin_step=2, end_step=6),
                                      drop_fraction=0.5,
                                  drop_fraction_schedule="constant")
    (slot, fresh), = sparse.units[0].slots
    assert fresh == 0.25
    model.compile(sparse, "mse")
    before = _np(sparse.units[0].mask).copy()
    model.fit(x[:6], y[:6], batch_size=2, epochs=1, verbose=0)      # steps 0-2; the update ends step 2
    after = _np(sparse.units[0].mask)
    grown = (after == 1) & (before == 0)
    assert grown.any() and int(after.sum()) == 12
    assert np.all(_np(slot)[grown] == 0.25)                         # a fresh Adagrad accumulator
    assert np.all(_np(slot)[(after == 1) & (before == 1)] > 0.25)   # trained positions keep theirs


def test_factored_optimizer_slots_are_named_in_a_warning():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    with pytest.warns(UserWarning, match=r"Adafactor keeps a slot .* cannot be reset per position"):
        mss.sparse_optimizer(model, keras.optimizers.Adafactor(0.1), 0.5, "rigl",
                             schedule=mss.UpdateSchedule(end_step=4))


def test_skip_optimizer_step_option():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    inner = keras.optimizers.SGD(0.1)
    sparse = mss.sparse_optimizer(model, inner, 0.5, "rigl",
                                  schedule=mss.UpdateSchedule(update_every=2, end_step=100, skip_optimizer_step=True))
    model.compile(sparse, "mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 6), "float32"), batch_size=2, verbose=0)
    assert int(_np(sparse.iterations)) == 4
    assert int(_np(inner.iterations)) == 2                  # steps 0 and 2 were update steps, skipped
    assert int(_np(sparse.mask_updates)) == 2


def test_magnitude_prunes_dense_to_target_on_polynomial_schedule():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(40), keras.layers.Dense(3)])
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.0), 0.9, "magnitude", "uniform",
                                  schedule=mss.UpdateSchedule(update_every=2, end_step=10))
    assert int(_np(sparse.units[0].mask).sum()) == 200         # starts dense
    initial = {unit.key: _np(unit.kernel).copy() for unit in sparse.units}
    model.compile(sparse, "mse")
    rng = np.random.default_rng(0)
    counts = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            counts.append(int(_np(sparse.units[0].mask).sum()))

    model.fit(rng.random((24, 5), dtype=np.float32), rng.random((24, 3), dtype=np.float32), batch_size=2,
              verbose=0, callbacks=[Count()])
    assert counts == sorted(counts, reverse=True) and counts[-1] == kept_count(200, 0.9) < counts[2] < 200
    for unit in sparse.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, 0.9)
        # Learning rate 0: the weights never moved, so the survivors are exactly the largest initial |W|.
        magnitudes = np.abs(initial[unit.key]).ravel()
        expected = np.zeros(magnitudes.size)
        expected[np.argsort(-magnitudes, kind="stable")[:kept_count(mask.size, 0.9)]] = 1
        np.testing.assert_array_equal(mask.ravel(), expected)


def test_registry_is_extensible_and_rejects_unknown_names(updater_registry):
    @mss.register_updater("gradient_times_weight")
    class GradientTimesWeight(mss.DropGrow):
        uses_gradient = True

        def grow_scores(self, kernel, context):
            return tf.abs(kernel.gradient)

    assert "gradient_times_weight" in mss.UPDATERS
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    sparse = mss.sparse_optimizer(model, "sgd", 0.5, "gradient_times_weight",
                                  schedule=mss.UpdateSchedule(update_every=1, end_step=3))
    assert isinstance(sparse.method, GradientTimesWeight)
    model.compile(sparse, "mse")
    model.fit(np.ones((4, 4), "float32"), np.ones((4, 6), "float32"), batch_size=2, verbose=0)
    assert int(_np(sparse.mask_updates)) == 2
    with pytest.raises(ValueError, match="Unknown sparse training method 'rigl2'.*rigl"):
        mss.sparse_optimizer(keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)]), "sgd", 0.5, "rigl2")


def test_snfs_keeps_a_gradient_average():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.0), 0.5, "snfs",
                                  # no mask update in the two steps below
                                  schedule=mss.UpdateSchedule(update_every=10, begin_step=5, end_step=30))
    model.compile(sparse, "mse")
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 6), "float32")
    model.fit(x, y, batch_size=2, verbose=0)        # two steps on the same batch, weights fixed (lr 0)
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y[:2], model(x[:2]))
    gradient = _np(tape.gradient(loss, model.trainable_variables[0]))
    average = _np(sparse.units[0].state["gradient_average"])
    # average_t = 0.9 average_{t-1} + 0.1 g, twice from zero: 0.19 g (the dense gradient, pruned entries too).
    np.testing.assert_allclose(average, 0.19 * gradient, rtol=1e-5, atol=1e-7)
