"""sparsify / strip / sparsity_report / the custom-loop call, save-load, resume, mixed precision, errors."""

import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse as ms
import morphsparse.sparse as mss
from morphsparse.sparse.masks import kept_count


def _np(variable):
    return keras.ops.convert_to_numpy(variable)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu", name="a"),
                             keras.layers.Dense(12, activation="relu", name="b"), keras.layers.Dense(3, name="c")],
                            name="mlp")


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype("float32"), rng.integers(0, 3, n)


def _compile(model):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_top_level_lazy_exports():
    assert ms.sparsify is mss.sparsify and ms.strip is mss.strip and ms.SparseModel is mss.SparseModel
    assert ms.apply_sparse_gradients is mss.apply_sparse_gradients


def test_fit_needs_no_callback_and_end_step_defaults_to_75_percent():
    x, y = _data()
    sparse = _compile(mss.sparsify(_mlp(), 0.8, "rigl", update_every=2))
    before = sparse.masks()
    sparse.fit(x, y, batch_size=8, epochs=2, verbose=0)           # 12 steps
    assert int(_np(sparse.end_step)) == 9
    assert int(_np(sparse.mask_updates)) == 5                     # steps 0, 2, 4, 6, 8
    after = sparse.masks()
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert mss.strip(sparse) is not None


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_save_load_round_trip_and_resume_equals_uninterrupted(method, tmp_path):
    x, y = _data(64)

    def fresh():
        return _compile(mss.sparsify(_mlp(), 0.75, method, update_every=3, end_step=14, seed=2))

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)          # 16 steps

    first = fresh()
    first.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)                  # 8 steps
    path = tmp_path / "half.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)          # no custom_objects, no scope
    assert isinstance(loaded, mss.SparseModel)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), first.predict(x, verbose=0), atol=1e-6)
    for key, mask in first.masks().items():
        np.testing.assert_array_equal(loaded.masks()[key], mask)
    assert int(_np(loaded.sparse_step)) == 8 and int(_np(loaded.optimizer.iterations)) == 8
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)                 # 8 more

    assert int(_np(loaded.sparse_step)) == 16
    assert int(_np(loaded.mask_changes)) == int(_np(uninterrupted.mask_changes)) > 0
    for key, mask in uninterrupted.masks().items():
        np.testing.assert_array_equal(loaded.masks()[key], mask)
    for a, b in zip(loaded.weights, uninterrupted.weights):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert loaded.updater.get_config() == uninterrupted.updater.get_config()


def test_saved_file_holds_exact_zeros(tmp_path):
    import h5py
    x, y = _data()
    sparse = _compile(mss.sparsify(_mlp(), 0.9, "rigl", update_every=1, end_step=6))
    sparse.fit(x, y, batch_size=8, verbose=0)
    path = tmp_path / "m.keras"
    sparse.save(path)
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
    arrays = []
    with h5py.File(tmp_path / "model.weights.h5") as store:
        store.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    masks = [a for a in arrays if a.ndim == 2 and set(np.unique(a)) <= {0.0, 1.0} and a.mean() < 0.5]
    assert len(masks) >= 2
    for mask in masks:
        kernels = [a for a in arrays if a.shape == mask.shape and a is not mask
                   and not set(np.unique(a)) <= {0.0, 1.0}]
        assert kernels and all(not np.any(k[mask == 0]) for k in kernels)


def test_custom_loop_matches_fit():
    x, y = _data(32)
    by_fit = _compile(mss.sparsify(_mlp(), 0.7, "rigl", update_every=2, end_step=3))
    by_fit.fit(x, y, batch_size=8, verbose=0, shuffle=False)

    sparse = mss.sparsify(_mlp(), 0.7, "rigl", update_every=2, end_step=3)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(batch_x, batch_y):
        with tf.GradientTape() as tape:
            loss = loss_fn(batch_y, sparse(batch_x, training=True))
        gradients = tape.gradient(loss, sparse.trainable_variables)
        ms.apply_sparse_gradients(sparse, optimizer, gradients)      # the one call per step
        return loss

    for start in range(0, 32, 8):
        train_step(x[start:start + 8], y[start:start + 8])
    for key, mask in by_fit.masks().items():
        np.testing.assert_array_equal(sparse.masks()[key], mask)
    for a, b in zip(sparse.trainable_weights, by_fit.trainable_weights):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


def test_custom_loop_without_end_step_is_a_clear_error():
    sparse = mss.sparsify(_mlp(), 0.7, "rigl")
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sparse(np.ones((2, 10), "float32")))
    with pytest.raises(ValueError, match="end_step"):
        mss.apply_sparse_gradients(sparse, optimizer, tape.gradient(loss, sparse.trainable_variables))


def test_strip_returns_plain_layers_with_exact_zeros():
    x, y = _data()
    sparse = _compile(mss.sparsify(_mlp(), 0.8, "set", update_every=2, end_step=5))
    sparse.fit(x, y, batch_size=8, verbose=0)
    plain = mss.strip(sparse)
    assert not isinstance(plain, mss.SparseModel)
    assert not any(isinstance(layer, mss.SparseWrapper) for layer in plain._flatten_layers())
    np.testing.assert_allclose(plain.predict(x, verbose=0), sparse.predict(x, verbose=0), atol=1e-6)
    masks = sparse.masks()
    for name in ("a", "b", "c"):
        kernel = _np(plain.get_layer(name).kernel)
        assert np.all(kernel[masks[f"{name}/kernel"] == 0] == 0)


def test_sparsity_report_counts_and_flops():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])
    sparse = mss.sparsify(model, 0.5, "static", "uniform")
    report = mss.sparsity_report(sparse)
    conv, fc = report.kernels
    assert conv.shape == (3, 3, 3, 8) and conv.nonzeros == kept_count(216, 0.5)
    assert conv.dense_flops == 2 * 216 * 64 and conv.sparse_flops == 2 * conv.nonzeros * 64
    assert fc.dense_flops == 2 * 512 * 5 and fc.nonzeros == kept_count(2560, 0.5)
    assert report.sparsity == pytest.approx(1 - (conv.nonzeros + fc.nonzeros) / (216 + 2560))
    text = str(report)
    assert "conv/kernel" in text and "total" in text
    assert report.to_dict()["kernels"][1]["key"] == "fc/kernel"


def test_monitor_logs_and_tensorboard(tmp_path):
    x, y = _data()
    sparse = _compile(mss.sparsify(_mlp(), 0.8, "rigl", update_every=2, end_step=10))
    monitor = mss.SparsityMonitor(log_dir=str(tmp_path / "tb"), per_layer=True)
    history = sparse.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[monitor])
    assert history.history["sparsity"][0] == pytest.approx(mss.model.global_sparsity(sparse))
    assert history.history["mask_updates"] == [3, 2]
    assert all(v >= 0 for v in history.history["mask_changes"])
    assert "sparsity/a/kernel" in history.history
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))


def test_mixed_float16_keeps_masks_exact():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x, y = _data()
        model = _mlp()
        sparse = mss.sparsify(model, 0.8, "rigl", update_every=2, end_step=8)
        sparse.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9)),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = sparse.fit(x, y, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        assert int(_np(sparse.mask_updates)) > 0
        for unit in sparse.units:
            mask = _np(unit.mask)
            assert mask.dtype == np.float32 and int(mask.sum()) == kept_count(mask.size, unit.sparsity)
            assert not np.any(_np(unit.kernel)[mask == 0])
    finally:
        keras.config.set_dtype_policy(previous)


def test_bad_input_errors():
    model = _mlp()
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            mss.sparsify(model, bad)
    with pytest.raises(ValueError, match="Unknown sparse training method 'lottery'"):
        mss.sparsify(model, 0.5, "lottery")
    nothing = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.ReLU()])
    with pytest.raises(ValueError, match="nothing to sparsify"):
        mss.sparsify(nothing, 0.5)
    with pytest.raises(ValueError, match="keep_dense names 'missing', which matches no sparsifiable layer"):
        mss.sparsify(model, 0.5, keep_dense=["missing"])
    with pytest.raises(ValueError, match="matches no sparsifiable layer"):
        mss.sparsify(model, 0.5, layer_sparsity={"nope*": 0.2})
    with pytest.raises(ValueError, match=r"layer_sparsity\['a'\]"):
        mss.sparsify(model, 0.5, layer_sparsity={"a": 1.0})
    with pytest.raises(ValueError, match="not built"):
        mss.sparsify(keras.Sequential([keras.layers.Dense(3)]), 0.5)
    with pytest.raises(ValueError, match="Unknown distribution"):
        mss.sparsify(model, 0.5, distribution="normal")


def test_overrides_keep_dense_and_first_layer_switch():
    model = _mlp()
    sparse = mss.sparsify(model, 0.9, "static", "uniform", keep_dense=["c"], layer_sparsity={"b": 0.5})
    assert [u.key for u in sparse.units] == ["a/kernel", "b/kernel"]
    assert sparse.units[1].sparsity == 0.5 and sparse.units[0].sparsity == 0.9
    first = mss.sparsify(model, 0.9, "static", "uniform", first_layer_dense=True)
    assert [u.key for u in first.units] == ["b/kernel", "c/kernel"]
    # The user's model keeps its dense weights (sparsify trains a copy).
    assert np.count_nonzero(_np(model.get_layer("a").kernel)) == 160


def test_rescale_init_keeps_the_dense_initialisers_scale():
    model = _mlp()
    sparse = mss.sparsify(model, 0.75, "static", "uniform", rescale_init=True)
    for unit in sparse.units:
        mask = _np(unit.mask)
        original = _np(model.get_layer(unit.key.split("/")[0]).kernel)
        np.testing.assert_allclose(_np(unit.kernel), original * mask / np.sqrt(mask.mean()), rtol=1e-6)
