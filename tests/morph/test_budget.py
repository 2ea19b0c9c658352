"""MorphRegularizer(budget=...): the strength controller lands the alive cost on the budget, saves/resumes its
state with the model, logs, warns, validates its arguments, and leaves budget=None unchanged."""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse as ms
from morphsparse.models import small_mlp
from morphsparse.morph.budget import LANDING_TOLERANCE, BudgetWarning
from morphsparse.morph.optimizer import MorphOptimizer
from morphsparse.morph.regularizers import MorphRegularizer

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 64


def mlp(batch_norm=True):
    return small_mlp(widths=(64, 64), batch_norm=batch_norm)


def steps_per_epoch(x):
    return int(np.ceil(len(x) / BATCH))


def fit_with_budget(digits, optimizer, source="gamma", epochs=6, budget=0.5, target="flops", **fit_kw):
    x, y, _, _ = digits
    model = mlp(batch_norm=source == "gamma")
    reg = MorphRegularizer(model, target=target, source=source, budget=budget, steps=epochs * steps_per_epoch(x))
    model.compile(MorphOptimizer(optimizer, reg), LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, **fit_kw)
    budget_warnings = [w for w in caught if issubclass(w.category, BudgetWarning)]
    return model, reg, history, budget_warnings


# --- landing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,optimizer,epochs", [
    ("gamma", lambda: keras.optimizers.Adam(3e-2), 8),                      # 176 steps ~ 5 / learning rate
    ("group_lasso", lambda: keras.optimizers.SGD(3e-2, momentum=0.9), 16),  # an MLP without BatchNorm
])
def test_fit_lands_the_alive_cost_on_the_budget(digits, source, optimizer, epochs):
    """A few epochs at a high learning rate: the alive cost at the end is within a band around the budget, with
    no tuning (the multiplier the controller found is whatever it needed)."""
    model, reg, history, caught = fit_with_budget(digits, optimizer(), source=source, epochs=epochs)
    ratio = reg.cost() / reg.initial_cost
    assert abs(ratio - 0.5) <= 0.05, (ratio, history.history["strength"])
    assert reg.controller.step == reg.controller.total_steps == epochs * steps_per_epoch(digits[0])
    if abs(ratio - 0.5) <= LANDING_TOLERANCE:
        assert not caught, [str(w.message) for w in caught]


def test_absolute_budget_and_size_target(digits):
    model = mlp()
    seed_params = ms.count_params(model)
    reg = MorphRegularizer(model, target="size", budget=seed_params // 2)     # a count of parameters
    assert reg.controller.ratio == pytest.approx((seed_params // 2) / seed_params)
    _, reg, history, _ = fit_with_budget(digits, keras.optimizers.Adam(3e-2), target="size", epochs=8,
                                         budget=0.6)
    assert "alive_params_ratio" in history.history and "alive_flops_ratio" not in history.history
    assert abs(reg.alive_params() / ms.count_params(reg.model) - 0.6) <= 0.05


# --- logs and warnings ------------------------------------------------------------------------------------------

def test_history_logs_strength_and_cost_ratio_every_epoch(digits):
    _, reg, history, _ = fit_with_budget(digits, keras.optimizers.Adam(3e-2), epochs=3)
    logs = history.history
    for key in ("strength", "strength_multiplier", "alive_flops_ratio", "alive_flops", "alive_params",
                "regularization_loss"):
        assert len(logs[key]) == 3, key
    assert logs["strength"][-1] == pytest.approx(reg.strength, rel=1e-5)
    # the multiplier the docs reason with: strength x initial cost (1 at the start, whatever the network's size)
    for strength, multiplier in zip(logs["strength"], logs["strength_multiplier"]):
        assert multiplier == pytest.approx(strength * reg.initial_cost, rel=1e-5)
    assert all(0.0 < r <= 1.0 for r in logs["alive_flops_ratio"])
    # the logged ratio is alive FLOPs over the seed's
    assert logs["alive_flops_ratio"][-1] == pytest.approx(logs["alive_flops"][-1] / reg.initial_cost, rel=1e-6)


def test_unreachable_budget_warns_with_the_cost_reached_and_what_to_change(digits):
    """Two epochs at Adam 1e-3: no channel can reach the threshold, and fit says so at the end, with a closing
    step that works: the prune call it spells lands the model on the budget."""
    model, reg, _, caught = fit_with_budget(digits, keras.optimizers.Adam(1e-3), epochs=2)
    assert len(caught) == 2 and "plans" in str(caught[0].message)     # said at the start, then at the end
    message = str(caught[1].message)
    assert "budget not reached" in message and "100.0%" in message and "budget 50.0%" in message
    assert "more steps" in message and "learning rate" not in message    # a higher rate overshoots transformers
    assert reg.controller.report(warn=False) == pytest.approx(1.0)
    advice = re.search(r"ms\.export\(model, source='gamma', budget=0\.50, target='flops', min_width=0\)", message)
    assert advice, message
    slim = ms.export(model, source="gamma", budget=0.5, target="flops", min_width=0)
    assert 0.5 - LANDING_TOLERANCE <= ms.count_flops(slim) / ms.count_flops(model) <= 0.5


def test_no_warning_before_the_planned_steps_are_done(digits):
    x, y, _, _ = digits
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=10 * steps_per_epoch(x))
    model.compile(MorphOptimizer(keras.optimizers.Adam(1e-2), reg), LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)      # 1 of 10 planned epochs: no verdict yet
    assert reg.controller.total_steps == 10 * steps_per_epoch(x)


# --- saving and resuming ----------------------------------------------------------------------------------------

def controller_values(reg):
    return {name: np.array(value) for name, value in reg.controller.state.numpy_state().items()}


@pytest.mark.filterwarnings("ignore::morphsparse.morph.budget.BudgetWarning")
def test_checkpoint_mid_run_loads_binds_and_resumes_the_controller(tmp_path, digits):
    x, y, _, _ = digits
    spe = steps_per_epoch(x)
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=6 * spe)          # a 6-epoch plan, stopped after 3
    model.compile(MorphOptimizer(keras.optimizers.Adam(3e-2), reg), LOSS)
    path = str(tmp_path / "epoch{epoch}.keras")
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    saved = controller_values(reg)                      # the state after epoch 3, as the last checkpoint saw it
    assert saved["step"] == 3 * spe and saved["total_steps"] == 6 * spe

    loaded = keras.saving.load_model(path.format(epoch=3))      # the MorphOptimizer and its variables come back
    resumed = loaded.optimizer.bind(loaded).regularizer
    for name, value in controller_values(resumed).items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    assert resumed.strength == reg.strength
    # fit(initial_epoch=3, epochs=6) continues the same 6-epoch plan
    history = loaded.fit(x, y, batch_size=BATCH, epochs=6, initial_epoch=3, verbose=0)
    assert resumed.controller.total_steps == resumed.controller.step == 6 * spe
    assert len(history.history["strength"]) == 3

def test_a_step_past_the_end_of_a_dataset_of_unknown_length_is_not_counted(digits):
    """Keras runs one more step at the end of every epoch over a dataset of unknown length, where get_next
    fails and no data is trained (no on_train_batch_end): the controller counts only the steps with data."""
    x, y = digits[0][:256], digits[1][:256]

    def batches():
        for i in range(0, len(x), BATCH):
            yield x[i:i + BATCH], y[i:i + BATCH]

    dataset = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, 8, 8, 1), tf.float32), tf.TensorSpec((None,), tf.int64)))
    assert dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=100)
    model.compile(MorphOptimizer(keras.optimizers.Adam(1e-2), reg), LOSS)
    trained = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trained.append(batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # "ran out of data", and 100 planned steps cannot land
        model.fit(dataset, epochs=3, verbose=0, callbacks=[Count()])
    assert len(trained) == 3 * 4
    assert reg.controller.step == 3 * 4


def test_deprecated_attach_wraps_the_compiled_optimizer_and_refuses_resume_from(tmp_path, digits):
    x, y = digits[0][:256], digits[1][:256]
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=8)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="not compiled: compile it first"):
        reg.attach(model)
    model.compile(keras.optimizers.Adam(3e-2), LOSS)
    with pytest.warns(DeprecationWarning):
        assert reg.attach(model) is model
    assert isinstance(model.optimizer, MorphOptimizer) and model.optimizer.regularizer is reg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)           # 8 steps cannot land
        history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    assert "strength" in history.history and reg.controller.step == 8
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="resume_from=.*no longer supported"):
        reg.attach(model, resume_from=tmp_path / "any.keras")

@pytest.mark.filterwarnings("ignore::morphsparse.morph.budget.BudgetWarning")
def test_tensorboard_shows_the_controller(tmp_path, digits):
    """The docs say TensorBoard shows the controller: its strength (and multiplier) are written as scalars."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'morphsparse[plots]')")
    x, y = digits[0][:256], digits[1][:256]
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=8)
    model.compile(MorphOptimizer(keras.optimizers.Adam(3e-2), reg), LOSS)
    logs = tmp_path / "logs"
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                        callbacks=[keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False)])
    scalars = {}
    for event_file in (logs / "train").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
                if value.tag.startswith("epoch_"):
                    scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    assert scalars["epoch_strength"] == pytest.approx(history.history["strength"], rel=1e-6)
    assert scalars["epoch_strength_multiplier"] == pytest.approx(history.history["strength_multiplier"], rel=1e-6)
    assert "epoch_alive_flops_ratio" in scalars


def test_the_plots_extra_installs_tensorboard():
    """pip install 'morphsparse[plots]' brings what the docs use to watch the controller."""
    import configparser
    from pathlib import Path

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    plots = [line.strip() for line in config["options.extras_require"]["plots"].splitlines() if line.strip()]
    assert any(line.startswith("tensorboard") for line in plots), plots


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::morphsparse.morph.budget.BudgetWarning")     # 4 steps cannot land
def test_model_saved_with_a_budget_loads_without_morphsparse_when_not_compiled(tmp_path, digits):
    x, y, _, _ = digits
    model = mlp()
    model.compile(ms.morph_optimizer(model, keras.optimizers.Adam(3e-2), budget=0.5, steps=4), LOSS)
    model.fit(x[:256], y[:256], batch_size=BATCH, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert config["class_name"] == "Functional" and "morphsparse" not in json.dumps(config["config"])
    code = textwrap.dedent(f"""
        import sys
        import keras
        m = keras.saving.load_model({str(path)!r}, compile=False)
        assert not any(name.startswith("morphsparse") for name in sys.modules)
        print(type(m).__name__, m.count_params())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["Functional", str(model.count_params())]

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::morphsparse.morph.budget.BudgetWarning")
def test_controller_compiles_with_xla(digits):
    """fit() compiles with XLA on GPU machines (jit_compile='auto'): the controller's ops must compile too."""
    x, y, _, _ = digits
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5, steps=8)
    model.compile(MorphOptimizer(keras.optimizers.Adam(3e-2), reg), LOSS, jit_compile=True)
    logs = model.fit(x[:256], y[:256], batch_size=BATCH, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"][-1]) and logs["strength"][-1] > 0
    assert reg.controller.step == 8


# --- custom training loops --------------------------------------------------------------------------------------

def test_custom_loop_with_loss_and_update_lands_on_the_budget(digits):
    x, y, _, _ = digits
    model = mlp()
    steps = 8 * steps_per_epoch(x)
    reg = MorphRegularizer(model, budget=0.5, steps=steps)
    optimizer = keras.optimizers.Adam(3e-2)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = LOSS(yb, model(xb, training=True)) + reg.loss()
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return reg.update()                 # the one extra call per step

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(BATCH).repeat()
    for step, (xb, yb) in enumerate(dataset.take(steps)):
        train_step(xb, yb)
    assert reg.controller.step == steps
    ratio = reg.cost() / reg.initial_cost
    assert abs(ratio - 0.5) <= 0.05
    with warnings.catch_warnings(record=True) as caught:       # the end-of-run verdict a custom loop can ask for
        warnings.simplefilter("always")
        assert reg.controller.report() == pytest.approx(ratio)
    assert bool(caught) == (abs(ratio - 0.5) > LANDING_TOLERANCE)


def test_custom_loop_needs_steps():
    model = mlp()
    reg = MorphRegularizer(model, budget=0.5)
    with pytest.raises(ValueError, match="steps="):
        reg.update()


# --- arguments ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,pattern", [
    (dict(budget=0.0), "budget must be a positive finite number"),
    (dict(budget=-3), "budget must be a positive finite number"),
    (dict(budget=float("nan")), "budget must be a positive finite number"),
    (dict(budget=10 ** 12), r"budget=.* is not below the seed's cost"),
    (dict(budget=0.5, strength=1e-3), "budget=.*or strength=.*not both"),
    (dict(budget=0.5, strength_multiplier=2.0), "budget=.*or strength_multiplier=.*not both"),
    (dict(budget=0.5, steps=0), "steps must be a positive integer"),
    (dict(budget=0.5, steps=2.5), "steps must be a positive integer"),
    (dict(steps=100), "steps= .*pass budget="),
    (dict(budget=2.0, target="latency"), "latency budget is a fraction"),
    (dict(budget=0.1, ignore=["fc1"]), r"budget=0.1 is 10.00% .*\(pinned inputs/outputs.* already costs 4\d\.\d\d%"),
])
def test_bad_arguments_are_refused_with_a_message_naming_them(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MorphRegularizer(mlp(), **kwargs)


def test_budget_type_and_attach_arguments_are_checked(tmp_path):
    with pytest.raises(TypeError, match="budget must be a number"):
        MorphRegularizer(mlp(), budget="half")
    with pytest.raises(TypeError, match="budget must be a number"):
        MorphRegularizer(mlp(), budget=True)
    model = mlp()
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"attach\(steps=...\) is the number"):
        MorphRegularizer(model).attach(model, steps=10)
    reg = MorphRegularizer(model, budget=0.5)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="steps must be a positive integer"):
        reg.attach(model, steps=-1)
    with pytest.raises(AttributeError, match="budget controller"):
        reg.strength = 1.0


# --- budget=None is unchanged -----------------------------------------------------------------------------------

def test_without_budget_nothing_changes(digits):
    x, y, _, _ = digits
    model = mlp()
    reg = MorphRegularizer(model, strength_multiplier=2.0)
    assert reg.controller is None and reg.strength == pytest.approx(2.0 / reg.initial_cost)
    assert len(reg._loss_and_costs(training=True, budget_logs=True)) == 3
    model.compile(MorphOptimizer(keras.optimizers.Adam(3e-2), reg), LOSS)
    history = model.fit(x[:256], y[:256], batch_size=BATCH, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "regularization_loss", "alive_flops", "alive_params"}
    assert reg.strength == pytest.approx(2.0 / reg.initial_cost)
    reg.strength = 1e-6                     # still a plain, settable number
    assert float(reg.loss()) == pytest.approx(1e-6 * float(reg.term()), rel=1e-6)
    with pytest.raises(ValueError, match="budget="):
        reg.update()


# --- distribution -------------------------------------------------------------------------------------------------

MIRRORED_SCRIPT = textwrap.dedent("""
    import os, json, warnings
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import morphsparse as ms
    from morphsparse.models import small_mlp

    (x, y), _ = ms.load_digits()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = small_mlp(widths=(64, 64))
        reg = ms.MorphRegularizer(model, budget=0.5, steps=8 * int(np.ceil(len(x) / 64)))      # 8 epochs
        model.compile(ms.MorphOptimizer(keras.optimizers.Adam(3e-2), reg),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    warnings.simplefilter("ignore")
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    state = reg.controller.state
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "logs": sorted(history.history),
                      "mirrored": type(state.log_multiplier.value).__name__,
                      "step": reg.controller.step, "total": reg.controller.total_steps,
                      "ratio": reg.cost() / reg.initial_cost}))
""")


@pytest.mark.slow
def test_budget_under_mirrored_strategy():
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert {"strength", "alive_flops_ratio"} <= set(result["logs"])
    assert result["step"] == result["total"] > 0          # counted once per step, not once per replica
    # BatchNorm statistics are per replica (32 images each), so the run is not the single-device one
    assert abs(result["ratio"] - 0.5) <= 0.1


@pytest.mark.parametrize("budget", [50, 1e-6, 0.0005])
def test_a_budget_below_one_channel_per_group_is_refused_at_the_start(budget):
    """budget=50 (a user meaning 50%) is 50 FLOPs: below the network with one channel per group, which only
    killing whole layers could reach; refused at construction, with the fraction to write instead."""
    with pytest.raises(ValueError, match="smallest network") as info:
        ms.MorphRegularizer(ms.small_resnet(), budget=budget)
    if budget == 50:
        assert "budget=0.5" in str(info.value)


def test_too_few_planned_steps_warn_at_the_start_of_fit():
    """The rule (about 4 / learning_rate Adam steps) is checked when fit starts, not only after training."""
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.25)
    reg = ms.MorphRegularizer(model, budget=0.5, steps=2)
    model.compile(ms.MorphOptimizer(keras.optimizers.Adam(1e-2), reg),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((64, 8, 8, 1), "float32"), np.zeros(64, "int32")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(len(record))

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[Spy()])
    early = [str(w.message) for w in record[:seen[1]]]      # the optimizer is built in the first step
    assert any("plans 2 structure-learning steps" in m and "400 steps" in m for m in early), early


def test_enough_planned_steps_do_not_warn_at_the_start():
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.25)
    reg = ms.MorphRegularizer(model, budget=0.5, steps=1000)
    model.compile(ms.MorphOptimizer(keras.optimizers.Adam(1e-2), reg),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(np.zeros((64, 8, 8, 1), "float32"), np.zeros(64, "int32"), batch_size=32, epochs=1, verbose=0)
    assert not [w for w in record if "plans" in str(w.message)]


def test_a_budget_between_two_reachable_costs_is_said_to_be_so():
    """Each hidden channel is 25% of this network's FLOPs: from 75%, one more death lands at 50%, so a 60% budget
    cannot be landed on, and the verdict says so (not "train longer": more steps would not help)."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(4, name="hidden")(inputs)))
    reg = MorphRegularizer(model, source="group_lasso", budget=0.6, steps=1)
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel).copy()
    kernel[:, 0] = 0.0                                   # one hidden channel dead: 75% of the FLOPs alive
    model.get_layer("hidden").kernel.assign(kernel)
    reg.controller.state.step.assign(1)                  # the plan is done: the verdict is due
    assert reg.controller.cheapest_alive_ratio() == pytest.approx(0.25)
    ratio, message = reg.controller.verdict()
    assert ratio == pytest.approx(0.75)
    assert "cheapest channel still alive costs 25.0%" in message and "Ask for 75% or 50%" in message
    kernel[:, 1] = 0.0                                   # 50%: an overshoot, told as before
    model.get_layer("hidden").kernel.assign(kernel)
    assert "overshot" in reg.controller.verdict()[1]
