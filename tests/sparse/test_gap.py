"""Cyclic and parallel GaP: phase-by-phase mask counts, growth from zero, prune-back, strip, save/load, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse as ms
from morphsparse.sparse import (GapSchedule, PeakParameterMonitor, find_sparse_optimizer, gap_phase, kept_count,
                                live_parameters, planned_peak_parameters, resolve_partitions, sparse_optimizer,
                                strip)

def _mlp():
    """Four masked Dense layers (dense, dense_1, dense_2, dense_3) with distinct sizes."""
    # Explicit names: masks are seeded by the kernel's path, so two builds must name their layers alike.
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="relu", name="dense"),
                             keras.layers.Dense(8, activation="relu", name="dense_1"),
                             keras.layers.Dense(7, activation="relu", name="dense_2"),
                             keras.layers.Dense(3, name="dense_3")])


def _data(n=96, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


class _Sparse:
    """A model with its SparseOptimizer (what the tests below look at)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.units = optimizer.units
        self.method = optimizer.method

    def masks(self):
        return self.optimizer.masks()


def _gap(model=None, inner=None, **options):
    options = {"partitions": 2, "steps_per_phase": 3, "rounds": 2, "distribution": "uniform", **options}
    model = model or _mlp()
    optimizer = sparse_optimizer(model, inner or keras.optimizers.Adam(0.01), 0.75, method="gap", **options)
    return _Sparse(model, optimizer)


def _counts(sparse):
    return {key: int(mask.sum()) for key, mask in sparse.masks().items()}


def _trainer(sparse):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model, optimizer = sparse.model, sparse.optimizer

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return step


def test_contiguous_and_explicit_partitions():
    paths = ["a", "b", "c", "d", "e"]
    assert resolve_partitions(paths, 2) == [["a", "b", "c"], ["d", "e"]]
    assert resolve_partitions(paths, 5) == [[p] for p in paths]
    assert resolve_partitions(paths, [["e", "a"], ["b*", "c", "d"]]) == [["a", "e"], ["b", "c", "d"]]
    with pytest.raises(ValueError, match="only 5 masked layer"):
        resolve_partitions(paths, 6)
    with pytest.raises(ValueError, match="matches no masked layer"):
        resolve_partitions(paths, [["a", "b", "c", "d"], ["zz"]])
    with pytest.raises(ValueError, match="in no partition"):
        resolve_partitions(paths, [["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="exactly one partition"):
        resolve_partitions(paths, [["a", "b", "c"], ["c", "d", "e"]])


@pytest.mark.slow
def test_mask_counts_through_every_phase():
    sparse = _gap()
    targets = {unit.key: kept_count(int(np.prod(unit.mask.shape)), unit.sparsity) for unit in sparse.units}
    sizes = {unit.key: int(np.prod(unit.mask.shape)) for unit in sparse.units}
    groups = sparse.method.partition_paths
    assert groups == [["dense", "dense_1"], ["dense_2", "dense_3"]]
    assert _counts(sparse) == targets                       # starts sparse at the target
    step = _trainer(sparse)
    x, y = _data()
    previous = sparse.masks()
    for t in range(16):
        step(x[6 * (t % 16):6 * (t % 16) + 6], y[6 * (t % 16):6 * (t % 16) + 6])
        phase = gap_phase(sparse.model)
        current = sparse.masks()
        for key, mask in current.items():
            layer = key.split("/")[0]
            grown = phase.grown_partition is not None and layer in groups[phase.grown_partition]
            assert int(mask.sum()) == (sizes[key] if grown else targets[key]), (t, key)
            if t % 3 != 0:                                   # inside a phase no mask moves
                np.testing.assert_array_equal(mask, previous[key])
            elif not grown and layer not in groups[((t // 3) - 1) % 2]:
                np.testing.assert_array_equal(mask, previous[key])   # neither grown nor pruned back
        expected_phase = t // 3 if t < 12 else None
        assert phase.phase == expected_phase, t
        assert phase.fine_tuning == (t >= 12)
        previous = current
    assert _counts(sparse) == targets                        # final prune: every layer at target
    for unit in sparse.units:                                # pruned weights are exactly zero
        kernel = keras.ops.convert_to_numpy(unit.kernel)
        assert np.all(kernel[keras.ops.convert_to_numpy(unit.mask) == 0] == 0)


def test_revived_weights_and_slots_start_at_zero():
    optimizer = keras.optimizers.Adam(0.01)
    sparse = _gap(steps_per_phase=2, inner=optimizer)
    before = sparse.masks()
    step = _trainer(sparse)
    x, y = _data()
    step(x[:8], y[:8])     # step 0: optimizer step on the sparse model, then partition 0 grows dense
    grown_units = [u for u in sparse.units if u.key.split("/")[0] in ("dense", "dense_1")]
    for unit in grown_units:
        revived = before[unit.key] == 0
        assert keras.ops.convert_to_numpy(unit.mask).all()
        assert revived.any()
        assert np.all(keras.ops.convert_to_numpy(unit.kernel)[revived] == 0)
        slots = [slot for slot, _fresh in unit.slots]
        assert len(slots) == 2
        for slot in slots:
            assert np.all(keras.ops.convert_to_numpy(slot)[revived] == 0)
    step(x[8:16], y[8:16])  # the revived weights now train
    for unit in grown_units:
        assert np.any(keras.ops.convert_to_numpy(unit.kernel)[before[unit.key] == 0] != 0)


def test_prune_back_keeps_the_largest_magnitudes():
    optimizer = keras.optimizers.SGD(0.1)      # no momentum: a zero learning rate then means no move
    sparse = _gap(steps_per_phase=2, partitions=4, inner=optimizer)
    step = _trainer(sparse)
    x, y = _data()
    step(x[:8], y[:8])
    step(x[8:16], y[8:16])   # partition 0 (layer "dense") is dense during step 1
    unit = sparse.units[0]
    assert keras.ops.convert_to_numpy(unit.mask).all()
    dense_kernel = keras.ops.convert_to_numpy(unit.kernel).copy()
    # With a zero learning rate the boundary step leaves the weights as they are, so the prune acts on exactly
    # the weights read here.
    optimizer.learning_rate.assign(0.0)
    step(x[16:24], y[16:24])
    pruned = keras.ops.convert_to_numpy(unit.mask)
    kept = kept_count(pruned.size, unit.sparsity)
    assert int(pruned.sum()) == kept
    order = np.argsort(-np.abs(dense_kernel).ravel(), kind="stable")
    np.testing.assert_array_equal(np.flatnonzero(pruned.ravel()), np.sort(order[:kept]))
    kernel = keras.ops.convert_to_numpy(unit.kernel)
    np.testing.assert_array_equal(kernel, dense_kernel * pruned)
    assert keras.ops.convert_to_numpy(sparse.units[1].mask).all()   # and partition 1 grew


def test_strip_mid_phase_returns_the_target_by_magnitude():
    sparse = _gap(steps_per_phase=4)
    step = _trainer(sparse)
    x, y = _data()
    for t in range(2):
        step(x[8 * t:8 * t + 8], y[8 * t:8 * t + 8])
    assert gap_phase(sparse.model).grown_partition == 0
    dense_unit = sparse.units[0]
    weights = keras.ops.convert_to_numpy(dense_unit.kernel).copy()
    assert keras.ops.convert_to_numpy(dense_unit.mask).all()
    plain = strip(sparse.model)
    assert plain is not sparse.model and find_sparse_optimizer(plain, required=False) is None
    for unit, layer in zip(sparse.units, [l for l in plain.layers if isinstance(l, keras.layers.Dense)]):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.count_nonzero(kernel) == kept_count(kernel.size, unit.sparsity)
    stripped = keras.ops.convert_to_numpy(plain.layers[0].kernel)
    kept = np.count_nonzero(stripped)
    order = np.argsort(-np.abs(weights).ravel(), kind="stable")
    expected = np.zeros(weights.size, bool)
    expected[order[:kept]] = True
    np.testing.assert_array_equal(stripped.ravel() != 0, expected)
    np.testing.assert_array_equal(stripped.ravel()[expected], weights.ravel()[expected])
    # The training model itself is untouched: its partition is still dense and training can go on.
    assert keras.ops.convert_to_numpy(dense_unit.mask).all()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dense_unit.kernel), weights)


@pytest.mark.slow
def test_save_load_mid_phase_resumes_the_schedule(tmp_path):
    x, y = _data()

    def build():
        keras.utils.set_random_seed(3)
        sparse = _gap(steps_per_phase=3, partitions=2, rounds=2)
        sparse.model.compile(optimizer=sparse.optimizer,
                             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return sparse.model

    straight = build()
    straight.fit(x[:64], y[:64], batch_size=8, epochs=1, shuffle=False, verbose=0)

    first = build()
    first.fit(x[:32], y[:32], batch_size=8, epochs=1, shuffle=False, verbose=0)   # 4 steps: mid phase 1
    assert gap_phase(first).grown_partition == 1
    path = tmp_path / "gap.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert type(find_sparse_optimizer(loaded).method).__name__ == "GaP"
    assert gap_phase(loaded) == gap_phase(first)
    loaded.fit(x[32:64], y[32:64], batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert gap_phase(loaded) == gap_phase(straight)
    assert (gap_phase(loaded).phase, gap_phase(loaded).grown_partition) == (2, 0)
    for key, mask in find_sparse_optimizer(straight).masks().items():
        np.testing.assert_array_equal(find_sparse_optimizer(loaded).masks()[key], mask)
    for a, b in zip(straight.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_phases_fill_the_end_step_when_unset_and_peak_is_measured():
    sparse = _gap(steps_per_phase=None, partitions=2, rounds=1, total_steps=16)
    model = sparse.model
    model.compile(optimizer=sparse.optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    monitor = PeakParameterMonitor()
    x, y = _data()
    model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])   # 16 steps
    assert sparse.optimizer.end_step == 12          # 75% of total_steps
    phase = gap_phase(model)
    assert phase.phase_length == 6 and phase.fine_tuning
    assert monitor.peak == planned_peak_parameters(model)
    counts = live_parameters(model)
    assert counts.live < monitor.peak < counts.total


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="partitions must be at least 1"):
        _gap(partitions=0)
    with pytest.raises(ValueError, match="rounds"):
        _gap(rounds=0)
    with pytest.raises(ValueError, match="steps_per_phase"):
        _gap(steps_per_phase=0)
    with pytest.raises(ValueError, match="only 4 masked layer"):
        _gap(partitions=5)
    with pytest.raises(TypeError, match="partitions must be"):
        _gap(partitions="two")
    with pytest.raises(ValueError, match="matches no masked layer"):
        _gap(partitions=[["dense", "dense_1"], ["nope"]])
    with pytest.raises(TypeError, match="GapSchedule"):
        sparse_optimizer(_mlp(), "adam", 0.75, method="gap", schedule=ms.PolynomialSchedule(end_step=10))
    with pytest.raises(ValueError, match=r"update_every=10 has no effect with method='gap'"):
        _gap(schedule=ms.UpdateSchedule(update_every=10))
    with pytest.raises(ValueError, match=r"method='gap' needs to know when its schedule ends"):
        _gap(steps_per_phase=None)
    assert isinstance(_gap().optimizer.schedule, GapSchedule)


def test_gap_phase_refuses_other_methods():
    model = _mlp()
    sparse_optimizer(model, "sgd", 0.5, method="static")
    with pytest.raises(TypeError, match="method='gap'"):
        gap_phase(model)


# ---------------------------------------------------------------------------------------------- parallel GaP
def test_parallel_combination_takes_partition_i_from_copy_i():
    from morphsparse.sparse.gap import (combine_contributions, copy_contribution, grow_copy, weight_owners)
    normalised = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, name="dense"),
                                   keras.layers.BatchNormalization(name="norm"), keras.layers.Dense(8, name="dense_1"),
                                   keras.layers.Dense(3, name="dense_2")])
    options = {"sparsity": 0.75, "distribution": "uniform", "seed": 0}
    combined_optimizer = sparse_optimizer(normalised, "adam", method="static", **options)
    combined = normalised
    groups = resolve_partitions(list(dict.fromkeys(u.layer for u in combined_optimizer.units)), 2)
    assert groups == [["dense", "dense_1"], ["dense_2"]]
    owners = weight_owners(combined, groups)
    names = [w.path.split("/", 1)[1] for w in combined.weights]
    assert [owners[names.index(n)] for n in ("dense/kernel", "dense/bias", "dense_1/kernel", "dense_2/kernel")] \
        == [0, 0, 0, 1]
    assert owners[names.index("norm/gamma")] is None and owners[names.index("norm/moving_mean")] is None

    copy, copy_optimizer = grow_copy(combined, groups[1], sparsify_options=options,
                                     compile_model=lambda model: model.compile(optimizer="adam", loss="mse"))
    assert copy_optimizer.masks()["dense_2/kernel"].all()
    np.testing.assert_array_equal(copy_optimizer.masks()["dense/kernel"], combined_optimizer.masks()["dense/kernel"])
    revived = combined_optimizer.masks()["dense_2/kernel"] == 0
    assert np.all(keras.ops.convert_to_numpy(copy.get_layer("dense_2").kernel)[revived] == 0)

    like = combined.get_weights()
    copies = [[np.full(w.shape, 1.0 + i, w.dtype) for w in like] for i in range(2)]
    total = combine_contributions([copy_contribution(c, owners, i, 2) for i, c in enumerate(copies)], like)
    for name, value in zip(names, total):
        owner = owners[names.index(name)]
        assert np.all(value == {0: 1.0, 1: 2.0, None: 1.5}[owner]), name


@pytest.mark.slow
def test_parallel_gap_end_to_end():
    x, y = _data()
    result = ms.parallel_gap(_mlp(), dict(x=x, y=y, epochs=1, batch_size=16, verbose=0), sparsity=0.75,
                             compile=dict(optimizer="adam",
                                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                             distribution="uniform", partitions=2, rounds=2, fine_tune=dict(epochs=1))
    assert len(result.phase_histories) == 4 and [h["copy"] for h in result.phase_histories] == [0, 1, 0, 1]
    sparse = find_sparse_optimizer(result.model)
    for unit in sparse.units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, unit.sparsity)
        assert np.all(keras.ops.convert_to_numpy(unit.kernel)[mask == 0] == 0)
    counts = live_parameters(result.model)
    sizes = {unit.key.split("/")[0]: int(np.prod(unit.mask.shape)) for unit in sparse.units}
    extra = max(sum(sizes[p] - kept_count(sizes[p], 0.75) for p in group) for group in result.partitions)
    assert result.peak_parameters == counts.live + extra
    assert len(result.fine_tune_history["loss"]) == 1 and result.training_seconds > 0
    fit = dict(x=x, y=y, verbose=0)
    with pytest.raises(ValueError, match="rounds"):
        ms.parallel_gap(_mlp(), fit, compile=dict(loss="mse"), rounds=0)
    with pytest.raises(ValueError, match=r"parallel_gap\(\) needs to compile the models"):
        ms.parallel_gap(_mlp(), fit)
    with pytest.raises(ValueError, match=r"fine_tune\['epochs'\] must be a whole number >= 0"):
        ms.parallel_gap(_mlp(), fit, compile=dict(loss="mse"), fine_tune=dict(epochs=-1))
    for option in ("bogus", "method"):      # nothing it does not pass on is taken, nor the method it sets itself
        with pytest.raises(TypeError, match=rf"parallel_gap\(\) got unexpected keyword argument\(s\) \['{option}'\]"):
            ms.parallel_gap(_mlp(), fit, compile=dict(loss="mse"), **{option: "rigl"})
    with pytest.warns(DeprecationWarning, match=r"parallel_gap\(model, x, y, .*phase_epochs=.*write parallel_gap"
                                                r"\(model, fit=dict\(x=\.\.\., y=\.\.\..*fine_tune=dict\(epochs"):
        old = ms.parallel_gap(_mlp(), x, y, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              partitions=2, phase_epochs=1, fine_tune_epochs=0, batch_size=32)
    assert len(old.phase_histories) == 2 and not old.fine_tune_history
