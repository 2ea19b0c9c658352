"""sparse_optimizer / strip / sparsity_report: the model stays the user's, fit is ordinary, nothing is dense."""

import warnings
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


def _functional(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="c")(hidden), name="func")


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype("float32"), rng.integers(0, 3, n)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _sparse(model, sparsity=0.8, method="rigl", inner=None, **options):
    inner = inner or keras.optimizers.SGD(0.05, momentum=0.9)
    optimizer = mss.sparse_optimizer(model, inner, sparsity, method, **options)
    model.compile(optimizer, LOSS)
    return model, optimizer


def _assert_exact(optimizer):
    for unit in optimizer.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, unit.sparsity), unit.key
        assert not np.any(_np(unit.kernel)[mask == 0]), unit.key


def test_top_level_exports():
    assert ms.sparse_optimizer is mss.sparse_optimizer and ms.strip is mss.strip
    assert ms.SparseOptimizer is mss.SparseOptimizer and ms.apply_masks is mss.apply_masks


def test_model_stays_the_users_model_and_logs_need_no_callback():
    model = _functional()
    kind = type(model)
    x, y = _data()
    same, optimizer = _sparse(model, schedule=ms.UpdateSchedule(update_every=2), total_steps=12)
    assert same is model and type(model) is kind and kind.__name__ == "Functional"
    assert model.inputs and model.outputs and model.get_layer("a") is model.layers[1]
    assert isinstance(optimizer, mss.SparseOptimizer) and optimizer.end_step == 9      # 75% of 12
    before = optimizer.masks()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)             # 12 steps, no callback
    assert int(_np(optimizer.mask_updates)) == 5                             # steps 0, 2, 4, 6, 8
    assert history.history["sparsity"][-1] == pytest.approx(optimizer.global_sparsity(), abs=1e-6)
    assert sum(history.history["mask_changes"]) == int(_np(optimizer.mask_changes)) > 0
    live = sum(int(m.sum()) for m in optimizer.masks().values())
    assert history.history["alive_params"][-1] == live + 16 + 3             # plus the biases
    assert any(not np.array_equal(before[k], v) for k, v in optimizer.masks().items())
    # evaluate() still returns what it returned for the dense model: no val_ sparsity columns.
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    _assert_exact(optimizer)


def test_summary_counts_each_weight_once_and_masks_apart():
    model = _mlp()
    dense_params = model.count_params()
    _sparse(model, 0.9, "static", distribution="uniform")
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)
    assert f"Trainable params: {dense_params:,}" in text
    masks = sum(int(np.prod(u.mask.shape)) for u in model.optimizer.units)
    assert "Optimizer params" in text and model.count_params() == dense_params
    assert masks == 16 * 10 + 12 * 16 + 3 * 12


def test_functional_api_analysis_and_export_work_on_the_sparse_model(tmp_path):
    model = _functional()
    _sparse(model, 0.5, "static", distribution="uniform")
    assert ms.analyze(model).group_of("a").size == 16
    assert ms.count_flops(model) > 0
    model.export(str(tmp_path / "saved"), format="tf_saved_model")
    assert (tmp_path / "saved" / "saved_model.pb").exists()


def test_two_fits_continue_one_schedule_and_a_fit_past_the_end_warns_once():
    x, y = _data()
    model, optimizer = _sparse(_mlp(), schedule=ms.UpdateSchedule(update_every=2),
                               total_steps=24)          # end_step 18
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)                          # steps 0-5
    first = int(_np(optimizer.mask_updates))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)                      # steps 6-17
    assert not [w for w in caught if "mask update" in str(w.message)]          # no warning: updates remain
    assert first == 3 and int(_np(optimizer.mask_updates)) == 9                 # the second fit updated too
    with pytest.warns(UserWarning, match=r"started at step 18, after the last mask update .*total_steps="):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not [w for w in caught if "mask update" in str(w.message)]          # once


def test_no_end_known_warns_once_and_keeps_updating():
    x, y = _data()
    model, optimizer = _sparse(_mlp(), schedule=ms.UpdateSchedule(update_every=2))
    with pytest.warns(UserWarning, match="no end of mask updates is known.*total_steps="):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(_np(optimizer.mask_updates)) == 6


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_save_load_round_trip_and_resume_equals_uninterrupted(method, tmp_path):
    x, y = _data(64)

    def fresh():
        return _sparse(_mlp(), 0.75, method, schedule=ms.UpdateSchedule(update_every=3, end_step=14), seed=2)

    uninterrupted, straight = fresh()
    uninterrupted.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)          # 16 steps

    first, _ = fresh()
    first.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)                  # 8 steps
    path = tmp_path / "half.keras"
    first.save(path)
    with pytest.warns(UserWarning, match=r"model.optimizer.bind\(model\)"):
        loaded = keras.saving.load_model(path)      # no custom_objects, no scope
    assert type(loaded) is keras.Sequential and isinstance(loaded.optimizer, mss.SparseOptimizer)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), first.predict(x, verbose=0), atol=1e-6)
    for key, mask in first.optimizer.masks().items():
        np.testing.assert_array_equal(loaded.optimizer.masks()[key], mask)
    assert int(_np(loaded.optimizer.iterations)) == 8
    loaded.optimizer.bind(loaded)
    history = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)        # 8 more
    assert "sparsity" in history.history                                                # logs after binding

    assert int(_np(loaded.optimizer.iterations)) == 16
    assert int(_np(loaded.optimizer.mask_changes)) == int(_np(straight.mask_changes)) > 0
    for key, mask in straight.masks().items():
        np.testing.assert_array_equal(loaded.optimizer.masks()[key], mask)
    for a, b in zip(loaded.weights, uninterrupted.weights):
        np.testing.assert_array_equal(_np(a), _np(b), err_msg=a.path)                  # bit-identical
    assert loaded.optimizer.method.get_config() == straight.method.get_config()


def test_saved_file_holds_exact_zeros(tmp_path):
    import h5py
    x, y = _data()
    model, optimizer = _sparse(_mlp(), 0.9, "rigl", schedule=ms.UpdateSchedule(update_every=1, end_step=6))
    model.fit(x, y, batch_size=8, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
    kernels = {}
    with h5py.File(tmp_path / "model.weights.h5") as store:
        def visit(name, item):
            if isinstance(item, h5py.Dataset) and name.startswith("layers/") and item.ndim == 2:
                kernels[name.split("/")[1]] = item[()]
        store.visititems(visit)
    assert len(kernels) == 3
    by_shape = {kernel.shape: kernel for kernel in kernels.values()}
    for key, mask in optimizer.masks().items():
        assert not np.any(by_shape[mask.shape][mask == 0]), key


def test_custom_loop_needs_no_extra_call_and_matches_fit():
    x, y = _data(32)
    by_fit, fit_optimizer = _sparse(_mlp(), 0.7, "rigl", schedule=ms.UpdateSchedule(update_every=2, end_step=3))
    by_fit.fit(x, y, batch_size=8, verbose=0, shuffle=False)

    model = _mlp()
    optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), 0.7, "rigl",
                                     schedule=mss.UpdateSchedule(update_every=2, end_step=3))

    @tf.function
    def train_step(batch_x, batch_y):
        with tf.GradientTape() as tape:
            loss = LOSS(batch_y, model(batch_x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))     # the usual call
        return loss

    for start in range(0, 32, 8):
        train_step(x[start:start + 8], y[start:start + 8])
    for key, mask in fit_optimizer.masks().items():
        np.testing.assert_array_equal(optimizer.masks()[key], mask)
    for a, b in zip(model.trainable_weights, by_fit.trainable_weights):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


def test_strip_returns_a_plain_copy_with_exact_zeros(tmp_path):
    x, y = _data()
    model, optimizer = _sparse(_mlp(), 0.8, "set", schedule=ms.UpdateSchedule(update_every=2, end_step=5))
    model.fit(x, y, batch_size=8, verbose=0)
    plain = mss.strip(model)
    assert plain is not model and getattr(plain, "optimizer", None) is None
    assert mss.find_sparse_optimizer(plain, required=False) is None
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    masks = optimizer.masks()
    for name in ("a", "b", "c"):
        assert not np.any(_np(plain.get_layer(name).kernel)[masks[f"{name}/kernel"] == 0])



def test_strip_copies_a_functional_subclass_that_from_config_cannot_rebuild():
    class Wrapped(keras.Model):        # Keras' from_config would call Wrapped(inputs=..., outputs=...)
        def __init__(self, width):
            inputs = keras.Input((6,))
            super().__init__(inputs, keras.layers.Dense(width, name="fc")(inputs), name="wrapped")

    model = Wrapped(4)
    optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.1), 0.5, "static")
    model.compile(optimizer=optimizer, loss="mse")
    plain = mss.strip(model)
    assert plain is not model and not plain.compiled
    assert mss.find_sparse_optimizer(plain, required=False) is None
    kernel = plain.get_layer("fc").kernel
    assert kernel is not model.get_layer("fc").kernel
    np.testing.assert_array_equal(_np(kernel), _np(model.get_layer("fc").kernel) * optimizer.masks()["fc/kernel"])


def test_strip_names_a_model_it_cannot_copy_instead_of_returning_it():
    class Net(keras.Model):            # a layer argument: Keras cannot write it into a config
        def __init__(self, head):
            super().__init__(name="net")
            self.head = head

        def call(self, x):
            return self.head(x)

    model = Net(keras.layers.Dense(3))
    model(np.zeros((1, 5), "float32"))
    model.compile(optimizer=mss.sparse_optimizer(model, "sgd", 0.5, "static"), loss="mse")
    with pytest.raises(ValueError, match=r"cannot copy model 'net' \(Net\).*get_config"):
        mss.strip(model)

@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_sparsity_report_counts_and_flops(data_format):
    keras.utils.set_random_seed(0)
    shape = (10, 10, 3) if data_format == "channels_last" else (3, 10, 10)
    model = keras.Sequential([keras.Input(shape), keras.layers.Conv2D(8, 3, name="conv", data_format=data_format),
                              keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])
    mss.sparse_optimizer(model, "sgd", 0.5, "static", "uniform")
    report = mss.sparsity_report(model)
    conv, fc = report.kernels
    assert conv.shape == (3, 3, 3, 8) and conv.nonzeros == kept_count(216, 0.5)
    assert conv.dense_flops == 2 * 216 * 64 and conv.sparse_flops == 2 * conv.nonzeros * 64   # 8x8 outputs
    assert fc.dense_flops == 2 * 512 * 5 and fc.nonzeros == kept_count(2560, 0.5)
    assert report.sparsity == pytest.approx(1 - (conv.nonzeros + fc.nonzeros) / (216 + 2560))
    text = str(report)
    assert "conv/kernel" in text and "total" in text
    assert report.to_dict()["kernels"][1]["key"] == "fc/kernel"


def test_mixed_float16_keeps_masks_exact():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x, y = _data()
        model = _mlp()
        optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), 0.8, "rigl",
                                         schedule=mss.UpdateSchedule(update_every=2, end_step=8))
        model.compile(optimizer, LOSS)           # Keras wraps it in a LossScaleOptimizer
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert mss.find_sparse_optimizer(model) is optimizer
        history = model.fit(x, y, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][-1]) and "sparsity" in history.history
        assert int(_np(optimizer.mask_updates)) > 0
        for unit in optimizer.units:
            assert _np(unit.mask).dtype == np.float32
        _assert_exact(optimizer)
    finally:
        keras.config.set_dtype_policy(previous)


def test_a_loss_scale_optimizer_stays_outside():
    outer = mss.sparse_optimizer(_mlp(), keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), 0.5,
                                 "static")
    assert isinstance(outer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(outer.inner_optimizer, mss.SparseOptimizer)


@pytest.mark.parametrize("options", [{"use_ema": True, "ema_overwrite_frequency": 2},
                                     {"use_ema": True},
                                     {"gradient_accumulation_steps": 3}], ids=["ema-overwrite", "ema", "accum"])
def test_pruned_weights_stay_zero_with_ema_and_gradient_accumulation(options, tmp_path):
    x, y = _data(64)
    model = _mlp()
    inner = keras.optimizers.Adam(0.05, **options)
    optimizer = mss.sparse_optimizer(model, inner, 0.8, "rigl",
                                     schedule=mss.UpdateSchedule(update_every=2, end_step=14))
    model.compile(optimizer, LOSS)
    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(sum(int(np.count_nonzero(_np(u.kernel)[_np(u.mask) == 0])) for u in optimizer.units))

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[Check()])      # 16 steps, EMA written at end
    assert len(seen) == 16 and not any(seen)
    _assert_exact(optimizer)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    _assert_exact(loaded.optimizer)


def test_set_weights_is_masked_by_the_next_step_or_apply_masks():
    x, y = _data()
    model, optimizer = _sparse(_mlp(), 0.8, "static")
    dense = [np.ones_like(w) for w in model.get_weights()]
    model.set_weights(dense)
    with pytest.warns(UserWarning, match=r"pruned weights .* are not zero.*apply_masks"):
        report = mss.sparsity_report(model)
    assert report.stray > 0 and "apply_masks" in str(report)
    model.fit(x[:8], y[:8], batch_size=8, verbose=0)                  # one step re-applies every mask
    _assert_exact(optimizer)
    model.set_weights(dense)
    ms.apply_masks(model)
    _assert_exact(optimizer)
    assert mss.sparsity_report(model).stray == 0


def test_overrides_keep_dense_and_first_layer_switch():
    model = _mlp()
    optimizer = mss.sparse_optimizer(model, "sgd", 0.9, "static", "uniform",
                                     layers=mss.LayerSelection(keep_dense=["c"], layer_sparsity={"b": 0.5}))
    assert [u.key for u in optimizer.units] == ["a/kernel", "b/kernel"]
    assert optimizer.units[1].sparsity == 0.5 and optimizer.units[0].sparsity == 0.9
    first = mss.sparse_optimizer(_mlp(), "sgd", 0.9, "static", "uniform",
                                 layers=mss.LayerSelection(first_layer_dense=True))
    assert [u.key for u in first.units] == ["b/kernel", "c/kernel"]
    # The model itself is made sparse (in place): its kernel now holds the mask's zeros.
    assert np.count_nonzero(_np(model.get_layer("a").kernel)) == kept_count(160, 0.9)


def test_rescale_init_keeps_the_dense_initialisers_scale():
    model = _mlp()
    original = {layer.name: _np(layer.kernel).copy() for layer in model.layers}
    optimizer = mss.sparse_optimizer(model, "sgd", 0.75, "static", "uniform", rescale_init=True)
    for unit in optimizer.units:
        mask = _np(unit.mask)
        np.testing.assert_allclose(_np(unit.kernel), original[unit.layer] * mask / np.sqrt(mask.mean()),
                                   rtol=1e-6)


def test_compiling_a_sparse_model_with_a_plain_optimizer_is_refused():
    x, y = _data()
    model = _mlp()
    mss.sparse_optimizer(model, "sgd", 0.5, "static")
    model.compile("sgd", LOSS)
    with pytest.raises(ValueError, match=r"compiled with SGD, not with the SparseOptimizer.*dense"):
        model.fit(x, y, verbose=0)


def test_xla_compiled_step_gives_the_same_masks():
    x, y = _data(32)
    runs = []
    for jit in (False, True):
        model = _mlp()
        optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.05), 0.7, "rigl",
                                         schedule=mss.UpdateSchedule(update_every=1, end_step=4),
                                         drop_fraction_schedule="constant")
        model.compile(optimizer, LOSS, jit_compile=jit)
        model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
        runs.append(optimizer.masks())
        _assert_exact(optimizer)
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key])


def test_norm_clipping_sees_the_sparse_networks_gradient():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, use_bias=False, name="lin")])
    optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(1.0, global_clipnorm=1e-3), 0.6, "static")
    unit = optimizer.units[0]
    mask, before = _np(unit.mask), _np(unit.kernel).copy()
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - 1.0))
    gradient = _np(tape.gradient(loss, model.trainable_variables)[0])
    optimizer.apply_gradients(zip([tf.constant(gradient)], model.trainable_variables))
    sparse_gradient = gradient * mask
    expected = before - sparse_gradient * (1e-3 / np.linalg.norm(sparse_gradient))
    np.testing.assert_allclose(_np(unit.kernel), expected, rtol=1e-5, atol=1e-8)


def test_a_kernel_planned_dense_stays_dense_and_refuses_a_sparse_mask():
    # ERK gives small layers sparsity 0; layer_sparsity=0 does the same on purpose. Training never masks or
    # updates such a kernel (no per-step cost), so set_masks must not accept zeros for it.
    x, y = _data()
    model, optimizer = _sparse(_mlp(), 0.8, "rigl", layers=ms.LayerSelection(layer_sparsity={"c": 0.0}),
                               schedule=ms.UpdateSchedule(update_every=2), total_steps=12)
    dense_unit = next(unit for unit in optimizer.units if unit.layer == "c")
    assert dense_unit.always_dense and not any(u.always_dense for u in optimizer.units if u is not dense_unit)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert int(_np(optimizer.mask_updates)) == 5
    assert np.all(_np(dense_unit.mask) == 1.0) and np.all(_np(dense_unit.kernel) != 0.0)
    _assert_exact(optimizer)
    masks = optimizer.masks()
    masks["c/kernel"] = np.zeros_like(masks["c/kernel"])
    with pytest.raises(ValueError, match=r"'c/kernel' has sparsity 0 .*layer_sparsity=\{'c'"):
        optimizer.set_masks(masks)


def test_steps_per_execution_keeps_one_schedule_and_the_logs():
    # Several steps per call (what users of small models compile with to save Keras's per-step overhead).
    x, y = _data()
    model = _mlp()
    optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), 0.8, "rigl",
                                     schedule=mss.UpdateSchedule(update_every=2),
                                     total_steps=24)
    model.compile(optimizer, LOSS, steps_per_execution=4)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0)               # 24 steps, 4 per call
    assert int(_np(optimizer.iterations)) == 24
    assert int(_np(optimizer.mask_updates)) == 9                               # steps 0, 2, ..., 16 (end 18)
    assert history.history["sparsity"][-1] == pytest.approx(optimizer.global_sparsity(), abs=1e-6)
    assert sum(history.history["mask_changes"]) == int(_np(optimizer.mask_changes)) > 0
    _assert_exact(optimizer)
