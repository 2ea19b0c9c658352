"""MorphOptimizer: structure learning as an optimizer wrapper. The regulariser's gradient is added, the budget
controller's state is saved and restored by Keras with the optimizer, a loaded optimizer needs bind(model), it
composes with SparseOptimizer, and it agrees across replicas."""

import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.morph.budget import BudgetWarning
from morphsparse.morph.optimizer import MorphOptimizer
from morphsparse.morph.regularizers import MorphRegularizer
from morphsparse.sparse import find_sparse_optimizer

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH, SAMPLES = 16, 64
SPE = SAMPLES // BATCH
WORKER = Path(__file__).with_name("morph_distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def convnet(widths=(8, 16)):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for width in widths:
        x = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(4)(x))


def data(samples=SAMPLES):
    rng = np.random.default_rng(0)
    return rng.normal(size=(samples, 8, 8, 3)).astype("float32"), rng.integers(0, 4, samples)


def gammas(model):
    return [keras.ops.convert_to_numpy(layer.gamma) for layer in model.layers
            if isinstance(layer, L.BatchNormalization)]


def fit_quietly(model, x, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        return model.fit(x, y, batch_size=BATCH, verbose=0, **kwargs)


def test_one_apply_adds_the_regulariser_gradient_to_the_gammas_only():
    """Zero task gradients, plain SGD: with strength 0 nothing moves; with strength > 0 every regularised gamma
    shrinks (its gradient is its marginal cost, > 0) and nothing else moves."""
    after = {}
    for strength in (0.0, 1e-3):
        keras.utils.set_random_seed(0)
        model = convnet()
        before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        optimizer = ms.morph_optimizer(model, keras.optimizers.SGD(0.1), strength=strength)
        zeros = [np.zeros(w.shape, "float32") for w in model.trainable_weights]
        optimizer.apply_gradients(zip(zeros, model.trainable_weights))
        after[strength] = (before, gammas(model), model)
    before, unchanged, model = after[0.0]
    for weight, value in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)
    _, shrunk, model = after[1e-3]
    for old, new in zip(unchanged, shrunk):
        assert np.all(new < old)
    gamma_ids = {id(layer.gamma) for layer in model.layers if isinstance(layer, L.BatchNormalization)}
    for weight, value in zip(model.trainable_weights, before):
        if id(weight) not in gamma_ids:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)


def test_fit_logs_counts_steps_and_warns_about_the_plan_and_the_landing():
    x, y = data()
    model = convnet()
    optimizer = ms.morph_optimizer(model, keras.optimizers.Adam(1e-2), budget=0.5, steps=2 * SPE)
    model.compile(optimizer, LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(messages) == 1 and "plans 8 structure-learning steps" in messages[0]     # 8 << 4 / 1e-2
    assert set(history.history) == {"loss", "regularization_loss", "alive_flops", "alive_params", "strength",
                                     "strength_multiplier", "alive_flops_ratio"}
    assert optimizer.state()["step"] == SPE and optimizer.state()["total_steps"] == 2 * SPE
    assert int(optimizer.iterations) == SPE
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss"}      # training steps only
    with warnings.catch_warnings(record=True) as caught:                           # the plan is done: a verdict
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(messages) == 1 and "budget not reached" in messages[0] and "after 8 of 8" in messages[0]


def test_trains_under_xla():
    x, y = data()
    model = convnet()
    optimizer = ms.morph_optimizer(model, keras.optimizers.Adam(1e-2), budget=0.5, steps=2 * SPE)
    model.compile(optimizer, LOSS, jit_compile=True)
    history = fit_quietly(model, x, y, epochs=2)
    assert optimizer.state()["step"] == 2 * SPE and len(history.history["strength"]) == 2


def test_save_load_bind_restores_the_state_bit_identically(tmp_path):
    x, y = data()
    model = convnet()
    optimizer = ms.morph_optimizer(model, "adam", budget=0.5, steps=4 * SPE)
    model.compile(optimizer, LOSS)
    fit_quietly(model, x, y, epochs=2)
    saved = optimizer.state()
    assert saved["step"] == 2 * SPE
    model.save(tmp_path / "run.keras")

    loaded = keras.saving.load_model(tmp_path / "run.keras")
    restored = loaded.optimizer
    assert isinstance(restored, MorphOptimizer) and restored.bound_model() is None
    for name, value in saved.items():
        np.testing.assert_array_equal(restored.state()[name], value, err_msg=name)
    with pytest.raises(ValueError, match=r"bind\(model\)"):
        fit_quietly(loaded, x, y, epochs=1)
    with pytest.raises(ValueError, match="another network"):
        restored.bind(convnet(widths=(8, 8)))
    restored.bind(loaded)
    assert restored.regularizer.controller.step == 2 * SPE
    history = fit_quietly(loaded, x, y, epochs=1)
    assert restored.state()["step"] == 3 * SPE and "strength" in history.history


def test_backup_and_restore_continues_the_step_count(tmp_path):
    """An interrupted run resumed by BackupAndRestore on a fresh model and optimizer continues the controller's
    steps (restored with the optimizer's variables) instead of starting the plan again."""
    x, y = data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    def run(callbacks):
        keras.utils.set_random_seed(0)
        model = convnet()
        optimizer = ms.morph_optimizer(model, keras.optimizers.Adam(1e-2), budget=0.5, steps=4 * SPE)
        model.compile(optimizer, LOSS)
        fit_quietly(model, x, y, epochs=4, callbacks=callbacks)
        return optimizer

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, Interrupt()])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert resumed.state()["step"] == 4 * SPE        # 2 epochs restored + 2 more; a fresh plan would hold 2 * SPE
    assert int(resumed.iterations) == 4 * SPE


def test_rigl_masks_and_a_flop_budget_in_one_run(tmp_path):
    """MorphOptimizer around a SparseOptimizer: the masked kernels keep their planned sparsity with exact zeros,
    channels die under the budget, and a saved file restores both. The other order is refused."""
    keras.utils.set_random_seed(0)
    x, y = data(128)
    model = convnet(widths=(16, 16, 16))
    steps = 6 * (128 // BATCH)
    sparse = ms.sparse_optimizer(model, keras.optimizers.Adam(0.05), sparsity=0.5, method="rigl",
                                 total_steps=steps, schedule=ms.UpdateSchedule(update_every=4))
    optimizer = ms.morph_optimizer(model, sparse, budget=0.5, steps=steps, threshold=0.02)
    assert optimizer.inner_optimizer is sparse
    model.compile(optimizer, LOSS)
    history = fit_quietly(model, x, y, epochs=6)
    assert {"sparsity", "mask_changes", "alive_flops_ratio", "strength"} <= set(history.history)
    assert sum(history.history["mask_changes"]) > 0
    masked = [unit for unit in sparse.units if not unit.always_dense]
    assert masked
    for unit in masked:
        kernel, mask = keras.ops.convert_to_numpy(unit.kernel), sparse.masks()[unit.key]
        assert np.all(kernel[mask == 0] == 0)
        assert abs(float(np.mean(mask == 0)) - unit.sparsity) < 0.01
    assert min(history.history["alive_flops_ratio"]) < 0.9
    assert optimizer.state()["step"] == steps

    model.save(tmp_path / "both.keras")                 # both wrappers' variables come back
    loaded = keras.saving.load_model(tmp_path / "both.keras")
    loaded.optimizer.bind(loaded)
    for name, value in optimizer.state().items():
        np.testing.assert_array_equal(loaded.optimizer.state()[name], value, err_msg=name)
    restored = find_sparse_optimizer(loaded)
    for key, mask in sparse.masks().items():
        np.testing.assert_array_equal(restored.masks()[key], mask, err_msg=key)

    other = convnet()
    with pytest.raises(ValueError, match="cannot be wrapped"):
        ms.sparse_optimizer(other, ms.morph_optimizer(other, "adam", strength=1e-3), sparsity=0.5)


def test_arguments_are_checked():
    model = convnet()
    with pytest.raises(ValueError, match="steps"):
        ms.morph_optimizer(model, "adam", budget=0.5)
    with pytest.raises(ValueError, match="steps"):
        MorphOptimizer("adam", MorphRegularizer(model, budget=0.5))
    reg = MorphRegularizer(model, budget=0.5, steps=10)
    assert MorphOptimizer("adam", reg).state() is None                 # not built yet
    inner = keras.optimizers.SGD(0.1)
    for wrapper in (lambda **kw: MorphOptimizer(inner, reg, **kw),
                    lambda **kw: ms.SparseOptimizer(inner, **kw)):
        for argument in ({"clipnorm": 0.99}, {"learning_rate": 0.1}, {"use_ema": True}):
            (name, value), = argument.items()
            with pytest.raises(ValueError, match=f"does not take {name}={value}: set it on the inner"):
                wrapper(**argument)
    # Keras's own defaults, as its config round trips pass them, are accepted
    optimizer = MorphOptimizer(inner, reg, ema_momentum=0.99, use_ema=False, clipnorm=None)
    pairs = zip([], [])
    with pytest.raises(ValueError, match=r"no \(gradient, variable\) pairs"):
        optimizer.apply_gradients(pairs)
    with pytest.raises(ValueError, match="cannot wrap a LossScaleOptimizer"):
        MorphOptimizer(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), reg)


def test_attach_is_deprecated():
    model = convnet()
    model.compile("adam", LOSS)
    with pytest.warns(DeprecationWarning, match=r"ms.MorphOptimizer\("):
        MorphRegularizer(model, strength=1e-3).attach(model)
    assert isinstance(model.optimizer, MorphOptimizer)


@pytest.mark.slow
def test_mirrored_two_replicas_match_one_device(tmp_path):
    """The term's gradient is added once per global step (each replica adds its share) and the controller steps
    once per step: two replicas end where one device does on the same global batches."""
    results = {}
    for mode in ("single", "mirrored"):
        output = tmp_path / f"{mode}.npz"
        done = subprocess.run([sys.executable, str(WORKER), mode, str(output)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        results[mode] = dict(np.load(output))
    single, mirrored = results["single"], results["mirrored"]
    assert single.keys() == mirrored.keys() and int(mirrored["state:step"]) == 8
    for key in single:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
