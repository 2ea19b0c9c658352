"""MorphRegularizer (morphsparse.morph.regularizers): costs, gradients, fit/custom-loop/distributed use, errors."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse as ms
from morphsparse.morph import alive
from morphsparse.morph.optimizer import MorphOptimizer
from morphsparse.morph.regularizers import (DEFAULT_STRENGTH_MULTIPLIER, DeviceProfile, MorphRegularizer,
                                            UnsupportedLayerError)
from morphsparse.models import small_resnet

L = keras.layers


def hand_net():
    """4x4x3 image -> conv3x3 (4) -> BN -> ReLU -> conv1x1 (6) -> BN -> ReLU -> GAP -> Dense(2)."""
    inp = keras.Input((4, 4, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.ReLU(name="r1")(L.BatchNormalization(name="c1_bn")(x))
    x = L.Conv2D(6, 1, use_bias=False, name="c2")(x)
    x = L.ReLU(name="r2")(L.BatchNormalization(name="c2_bn")(x))
    out = L.Dense(2, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, out, name="hand_net")


def set_gamma(model, name, values):
    model.get_layer(name).gamma.assign(np.asarray(values, dtype="float32"))


GAMMA1 = [0.5, -0.2, 0.001, 1.0]                 # 3 alive at threshold 1e-2
GAMMA2 = [1.0, 0.0, 0.3, -0.7, 0.005, 2.0]       # 4 alive


def test_flop_term_and_gradient_match_the_hand_computed_marginal_costs():
    model = hand_net()
    set_gamma(model, "c1_bn", GAMMA1)
    set_gamma(model, "c2_bn", GAMMA2)
    reg = MorphRegularizer(model, target="flops", threshold=1e-2)
    # c1: coeff 2*4*4*9 = 288, A_in = 3 input channels with R_in = 0 (the input is not regularised).
    # c2: coeff 2*4*4*1 = 32, A_in = 3, A_out = 4.  logits: coeff 2, A_out = 2 (pinned, R_out = 0).
    r1, r2 = np.abs(GAMMA1).sum(), np.abs(GAMMA2).sum()
    expected = 288 * 3 * r1 + 32 * (3 * r2 + 4 * r1) + 2 * 2 * r2
    with tf.GradientTape() as tape:
        term = reg.term()
    g1, g2 = tape.gradient(term, [model.get_layer("c1_bn").gamma, model.get_layer("c2_bn").gamma])
    np.testing.assert_allclose(float(term), expected, rtol=1e-5)
    # d/d|gamma1_c| = 288*3 + 32*A2 = 992 ; d/d|gamma2_c| = 32*A1 + 2*2 = 100 (dead channels included).
    np.testing.assert_allclose(g1.numpy(), np.sign(GAMMA1) * 992.0, rtol=1e-6)
    np.testing.assert_allclose(g2.numpy(), np.sign(GAMMA2) * 100.0, rtol=1e-6)
    # ... which is exactly what count_flops says one more live channel costs.
    masks = reg.alive_masks()
    g1_id = reg.graph.group_of("c1").id
    more = dict(masks)
    more[g1_id] = np.ones(4, bool)
    assert ms.count_flops(model, alive=more) - ms.count_flops(model, alive=masks) == 992
    assert reg.loss().numpy() == pytest.approx(reg.strength * expected, rel=1e-5)


@pytest.mark.parametrize("target,count", [("flops", ms.count_flops), ("size", ms.count_params)])
def test_gradient_on_every_channel_is_its_marginal_cost(target, count):
    """On the residual/concat seed network: d term / d R_c = cost(all alive) - cost(all alive but c)."""
    model = small_resnet()
    reg = MorphRegularizer(model, target=target)
    r = tf.Variable(tf.ones(reg.kernel_calls.n_channels))
    with tf.GradientTape() as tape:
        term = reg.term(r * tf.constant(reg.regularized, tf.float32))
    grad = tape.gradient(term, r).numpy()
    full = count(model)
    for group in reg.graph.removable_groups:
        for channel in (0, group.size - 1):
            mask = np.ones(group.size, bool)
            mask[channel] = False
            marginal = full - count(model, alive={group.id: mask})
            assert grad[reg.graph._offsets[group.id] + channel] == pytest.approx(marginal, rel=1e-6), (
                group.producers, channel)
    assert reg.initial_cost == full


def flatten_two_head_net():
    """Conv -> BN -> Dropout -> Flatten -> Dense -> BN -> two output heads (MorphNet's TF1 parser broke on these)."""
    inp = keras.Input((6, 6, 2), name="image")
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="c")(inp)
    x = L.Dropout(0.1)(L.ReLU()(L.BatchNormalization(name="c_bn")(x)))
    h = L.Dense(8, name="h")(L.Flatten()(x))
    h = L.ReLU()(L.BatchNormalization(name="h_bn")(h))
    return keras.Model(inp, [L.Dense(3, name="a")(h), L.Dense(2, name="b")(h)], name="two_heads")


def test_flatten_dense_and_two_outputs_are_priced_per_kernel_row():
    model = flatten_two_head_net()
    reg = MorphRegularizer(model)
    r = tf.Variable(tf.ones(reg.kernel_calls.n_channels))
    with tf.GradientTape() as tape:
        term = reg.term(r * tf.constant(reg.regularized, tf.float32))
    grad = tape.gradient(term, r).numpy()
    full = ms.count_flops(model)
    for name in ("c", "h"):
        group = reg.graph.group_of(name)
        mask = np.ones(group.size, bool)
        mask[0] = False
        # c: 2*36*9*2 (its kernel) + 2*36*8 (36 Dense rows read each channel); h: 2*(4*36) + 2*(3 + 2)
        assert grad[reg.graph._offsets[group.id]] == full - ms.count_flops(model, alive={group.id: mask})


def test_depthwise_follows_morphnet_and_counts_its_channel_on_both_sides():
    inp = keras.Input((5, 5, 3))
    x = L.ReLU()(L.BatchNormalization(name="c1_bn")(L.Conv2D(4, 1, use_bias=False, name="c1")(inp)))
    x = L.ReLU()(L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.BatchNormalization(name="c2_bn")(L.Conv2D(6, 1, use_bias=False, name="c2")(x))
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    reg = MorphRegularizer(model)
    assert reg.graph.group_of("c1").id == reg.graph.output_groups("dw")[0]     # one group through the depthwise
    # R = max(|gamma| of c1_bn, |gamma| of dw_bn): make c1_bn the max so its gamma receives the whole gradient.
    model.get_layer("dw_bn").gamma.assign(np.full(4, 0.5, "float32"))
    # c1: 2*25*1 * A_in 3 = 150; depthwise: 2*25*9 * (R_in + R_out) -> 900; c2: 2*25*1 * A_out 6 = 300.
    with tf.GradientTape() as tape:
        term = reg.term()
    grad = tape.gradient(term, model.get_layer("c1_bn").gamma).numpy()
    np.testing.assert_allclose(grad, np.full(4, 150 + 900 + 300.0), rtol=1e-6)
    marginal = ms.count_flops(model) - ms.count_flops(model, alive={reg.graph.group_of("c1").id: np.r_[
        False, np.ones(3, bool)]})
    assert marginal == 150 + 450 + 300     # the exact cost; MorphNet's depthwise rule adds 450 once more


def test_default_strength_is_the_multiplier_over_the_initial_cost():
    model = small_resnet()
    reg = MorphRegularizer(model, target="flops")
    assert reg.strength == pytest.approx(DEFAULT_STRENGTH_MULTIPLIER / ms.count_flops(model))
    assert MorphRegularizer(model, strength_multiplier=5.0).strength == pytest.approx(5.0 / ms.count_flops(model))
    assert MorphRegularizer(model, strength=1e-3).strength == 1e-3


def test_reported_alive_flops_and_params_equal_count_flops_of_the_alive_masks():
    model = small_resnet()
    set_gamma(model, "b1_conv1_bn", np.r_[np.zeros(16)])                 # a whole residual branch
    set_gamma(model, "mix_a_bn", np.zeros(16))                           # a whole concat tower
    set_gamma(model, "b3_conv1_bn", np.r_[np.zeros(40), np.ones(24)])
    set_gamma(model, "b2_conv2_bn", np.r_[np.zeros(8), np.ones(24)])     # tied with b2_proj: OR
    set_gamma(model, "b2_proj_bn", np.r_[np.zeros(12), np.ones(20)])
    reg = MorphRegularizer(model, target="flops")
    masks = alive.alive_masks(model, "gamma", 1e-2)
    _, flops, params = reg._loss_and_costs()
    assert int(flops) == ms.count_flops(model, alive=masks) == reg.alive_flops()
    assert int(params) == ms.count_params(model, alive=masks) == reg.alive_params()
    assert ms.count_flops(model, alive=masks) < ms.count_flops(model)
    assert reg.alive_counts()[reg.graph.group_of("b2_proj").id] == 24


def test_group_lasso_source_regularises_kernels_without_batchnorm():
    inp = keras.Input((8,), name="x")
    h = L.Dense(16, activation="relu", name="h1")(inp)
    h = L.Dense(12, activation="relu", name="h2")(h)
    model = keras.Model(inp, L.Dense(3, name="out")(h))
    with pytest.raises(ValueError, match="group_lasso"):
        MorphRegularizer(model, source="gamma")
    reg = MorphRegularizer(model, source="group_lasso", l1_fraction=0.25)
    with tf.GradientTape() as tape:
        loss = reg.loss()
    grads = tape.gradient(loss, [model.get_layer("h1").kernel, model.get_layer("out").kernel])
    assert np.abs(grads[0].numpy()).sum() > 0
    assert grads[1] is None or np.abs(grads[1].numpy()).sum() == 0     # the output layer is not regularised
    kernel = model.get_layer("h1").kernel.numpy()
    expected = 0.75 * np.sqrt((kernel ** 2).mean(0)) + 0.25 * np.abs(kernel).mean(0)
    flat = reg.vector().numpy()
    g = reg.graph.group_of("h1").id
    np.testing.assert_allclose(flat[reg.graph._offsets[g]:reg.graph._offsets[g + 1]], expected, rtol=1e-5)


def test_latency_regularises_the_binding_side_of_the_roofline():
    model = hand_net()
    compute_bound = MorphRegularizer(model, target="latency", device=DeviceProfile("fast-memory", 1e9, 1e18))
    flops = MorphRegularizer(model, target="flops")
    assert float(compute_bound.term()) == pytest.approx(float(flops.term()) / 1e9, rel=1e-5)
    memory_bound = MorphRegularizer(model, target="latency", device=DeviceProfile("slow-memory", 1e18, 1.0))
    # bytes: weights + input + output activations, 4 bytes each (c1: 9*3*4 weights, 16*3 in, 16*4 out, ...)
    expected_bytes = 4 * ((27 * 4 + 16 * 3 + 16 * 4) + (4 * 6 + 16 * 4 + 16 * 6) + (6 * 2 + 2 + 6 + 2))
    assert memory_bound.initial_cost == pytest.approx(expected_bytes, rel=1e-9)
    assert MorphRegularizer(model, target="latency", device="t4").initial_cost > 0
    with pytest.raises(ValueError, match="unknown device"):
        MorphRegularizer(model, target="latency", device="abacus")


def test_activation_target_counts_output_channels_of_kernel_layers():
    model = hand_net()
    reg = MorphRegularizer(model, target="activations")
    assert reg.initial_cost == 4 + 6 + 2
    assert float(reg.term()) == pytest.approx(4 + 6, rel=1e-6)     # gammas are 1; the logits are not regularised


def digits_net():
    inp = keras.Input((8, 8, 1), name="digit")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.ReLU()(L.BatchNormalization(name="c1_bn")(x))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="c2")(x)
    x = L.ReLU()(L.BatchNormalization(name="c2_bn")(x))
    out = L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="digits_net")


def compile_model(model, lr=3e-2):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def test_fit_adds_the_term_logs_costs_and_drives_channels_dead(digits):
    x, y, xt, yt = digits
    model = digits_net()
    reg = MorphRegularizer(model, target="flops", strength_multiplier=3.0)
    model.compile(MorphOptimizer(keras.optimizers.Adam(3e-2), reg),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    assert type(model).__name__ == "Functional"
    history = model.fit(x, y, batch_size=64, epochs=12, verbose=0)
    logs = history.history
    assert {"regularization_loss", "alive_flops", "alive_params"} <= set(logs)
    assert logs["alive_flops"][-1] < logs["alive_flops"][0] <= ms.count_flops(model)
    assert sum(reg.alive_counts().values()) < sum(g.size for g in reg.graph.groups)
    # the loss is the task loss: the term's gradient is added by the optimizer, its value logged apart
    task = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:256], model(x[:256], training=False))
    evaluated = model.evaluate(x[:256], y[:256], batch_size=256, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(task), rel=1e-3)

@pytest.mark.slow
def test_fit_compiles_with_xla(digits):
    """fit() compiles with XLA on GPU machines (jit_compile='auto'): every op of the term must compile."""
    x, y, _, _ = digits
    model = digits_net()
    model.compile(ms.morph_optimizer(model, keras.optimizers.SGD(0.0), strength_multiplier=3.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    logs = model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and logs["regularization_loss"][0] > 0


def test_custom_training_loop_uses_reg_loss(digits):
    x, y, _, _ = digits
    model = digits_net()
    reg = MorphRegularizer(model, strength_multiplier=3.0)
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gamma = model.get_layer("c1_bn").gamma
    before = np.abs(gamma.numpy()).sum()

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True)) + reg.loss()
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for i in range(0, 640, 64):
        step(x[i:i + 64], y[i:i + 64])
    assert np.abs(gamma.numpy()).sum() < before


MIRRORED_SCRIPT = textwrap.dedent("""
    import os, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from morphsparse.morph.optimizer import MorphOptimizer
    from morphsparse.morph.regularizers import MorphRegularizer

    def build():
        keras.utils.set_random_seed(1)
        inp = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu", name="h")(inp)
        model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
        reg = MorphRegularizer(model, source="group_lasso", strength_multiplier=50.0)
        model.compile(MorphOptimizer(keras.optimizers.SGD(0.5), reg),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model, reg

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32"); y = rng.integers(0, 3, 64)
    single, _ = build()
    single.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored, reg = build()
    history = mirrored.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights()))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "diff": diff,
                      "logs": sorted(history.history), "reg": float(reg.loss())}))
""")


@pytest.mark.slow
def test_fit_under_mirrored_strategy_matches_one_device():
    """Two logical CPU devices (configured before TensorFlow starts, hence the subprocess): the weights after
    two SGD steps equal those of a single-device run, so the term is applied exactly once."""
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert "regularization_loss" in result["logs"] and "alive_flops" in result["logs"]
    assert result["diff"] < 1e-5


# --- bad input -------------------------------------------------------------------------------------------------

def test_unknown_target_source_threshold_and_strength_are_refused():
    model = hand_net()
    with pytest.raises(ValueError, match="unknown target 'energy'"):
        MorphRegularizer(model, target="energy")
    with pytest.raises(ValueError, match="unknown source 'l0'"):
        MorphRegularizer(model, source="l0")
    with pytest.raises(ValueError, match="threshold"):
        MorphRegularizer(model, threshold=-1.0)
    with pytest.raises(ValueError, match="l1_fraction"):
        MorphRegularizer(model, l1_fraction=0.5)          # gamma source has no L1 mix
    with pytest.raises(ValueError, match="strength"):
        MorphRegularizer(model, strength=float("nan"))


def test_threshold_that_kills_a_non_removable_group_is_refused():
    model = hand_net()
    with pytest.raises(alive.AliveError, match="cannot be removed"):
        MorphRegularizer(model, threshold=5.0, ignore=["c1"])     # gammas are 1: c1 (pinned) would die
    with pytest.raises(alive.AliveError, match="no input reaches"):
        MorphRegularizer(model, threshold=5.0)                    # every path would be cut


class Doubler(L.Layer):
    """Uses a weight of its own in its call, so it cannot be read through (a composite layer made of Keras
    layers and keras.ops would be)."""

    def build(self, shape):
        self.gain = self.add_weight(shape=(), initializer="ones")

    def call(self, x):
        return keras.ops.concatenate([x, x * self.gain], axis=-1)


class SquareCostHandler(ms.handlers.Conv):
    """A (wrong) handler whose cost is quadratic in the alive outputs."""

    def macs(self, call, alive_in, alive_out):
        return alive_in[0] * alive_out[0] ** 2


def test_unsupported_layers_are_refused_with_a_clear_error(handler_registry):
    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(Doubler()(inp))))
    with pytest.raises(ms.GraphError, match="no channel handler"):
        MorphRegularizer(model)

    class OddConv(L.Conv2D):
        pass

    ms.register_handler(OddConv, SquareCostHandler())
    inp = keras.Input((4, 4, 3))
    x = L.BatchNormalization()(OddConv(4, 3, name="odd")(inp))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    with pytest.raises(UnsupportedLayerError, match="'odd'.*not bilinear"):
        MorphRegularizer(model)


def separable_net():
    inp = keras.Input((6, 6, 3))
    x = L.ReLU()(L.BatchNormalization(name="c1_bn")(L.Conv2D(5, 1, use_bias=False, name="c1")(inp)))
    x = L.SeparableConv2D(7, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = L.ReLU()(L.BatchNormalization(name="sep_bn")(x))
    x = L.SeparableConv1D(4, 3, padding="same", name="sep1d")(L.Reshape((36, 7))(x))
    x = L.BatchNormalization(name="sep1d_bn")(x)
    return keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(x)), name="separable_net")


@pytest.mark.parametrize("target,count", [("flops", ms.count_flops), ("size", ms.count_params)])
def test_separable_convs_are_priced_exactly_and_their_gradient_is_the_marginal_cost(target, count):
    model = separable_net()
    reg = MorphRegularizer(model, target=target)
    graph = reg.graph
    rng = np.random.default_rng(0)
    sep = graph.group_of("sep").id
    for trial in range(4):
        masks = {g.id: rng.random(g.size) < 0.6 for g in graph.removable_groups}
        if trial == 0:
            masks[sep] = np.zeros(graph.groups[sep].size, bool)     # the whole separable layer goes
        assert reg.cost(masks) == pytest.approx(count(model, alive=masks), rel=1e-9)
    r = tf.Variable(tf.ones(reg.kernel_calls.n_channels))
    with tf.GradientTape() as tape:
        term = reg.term(r * tf.constant(reg.regularized, tf.float32))
    grad = tape.gradient(term, r).numpy()
    full = count(model)
    for group in graph.removable_groups:
        for channel in (0, group.size - 1):
            mask = np.ones(group.size, bool)
            mask[channel] = False
            assert grad[graph._offsets[group.id] + channel] == pytest.approx(
                full - count(model, alive={group.id: mask}), rel=1e-6), (group.producers, channel)


def test_ignore_makes_an_unpriceable_layer_a_constant_cost(handler_registry):
    class OddConv(L.Conv2D):
        pass

    ms.register_handler(OddConv, SquareCostHandler())
    inp = keras.Input((4, 4, 3))
    x = L.BatchNormalization(name="c_bn")(L.Conv2D(6, 1, name="c")(inp))
    x = L.BatchNormalization(name="d_bn")(L.Conv2D(5, 1, name="d")(x))
    x = L.BatchNormalization(name="odd_bn")(OddConv(4, 3, name="odd")(x))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    with pytest.raises(UnsupportedLayerError, match="'odd'.*not bilinear"):
        MorphRegularizer(model)
    reg = MorphRegularizer(model, ignore=["d", "odd"])          # both of its channel axes pinned
    assert reg.cost() == ms.count_flops(model)
    masks = {reg.graph.group_of("c").id: np.r_[np.zeros(2, bool), np.ones(4, bool)]}
    assert reg.cost(masks) == ms.count_flops(model, alive=masks) < ms.count_flops(model)


@pytest.mark.parametrize("power", [0.0, 0.5])
def test_cost_power_charges_each_channel_its_marginal_cost_to_that_power(power):
    """d term / d R_c is proportional to marginal_c ** power, and the term starts where power 1 starts (so one
    strength means the same); the alive cost the budget controller steers is unchanged."""
    model = small_resnet()
    exact, shaped = MorphRegularizer(model), MorphRegularizer(model, cost_power=power)

    def gradient(reg):
        r = tf.Variable(tf.ones(reg.kernel_calls.n_channels))
        with tf.GradientTape() as tape:
            term = reg.term(r * tf.constant(reg.regularized, tf.float32))
        return float(term), tape.gradient(term, r).numpy()

    term_exact, marginal = gradient(exact)
    term_shaped, grad = gradient(shaped)
    priced = exact.regularized & (marginal > 0)
    ratio = grad[priced] / marginal[priced] ** power
    assert np.ptp(ratio) / ratio.mean() < 1e-4
    assert term_shaped == pytest.approx(term_exact, rel=1e-5)
    assert shaped.cost() == exact.cost()


@pytest.mark.parametrize("value,error", [(-1, ValueError), (2.5, ValueError), (float("nan"), ValueError),
                                         ("0.5", TypeError), (True, TypeError)])
def test_cost_power_errors_name_it(value, error):
    with pytest.raises(error, match="cost_power"):
        MorphRegularizer(small_resnet(), cost_power=value)
