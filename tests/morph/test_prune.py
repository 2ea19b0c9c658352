"""Pruning a trained model to a budget in one call (morphsparse.morph.prune)."""

import warnings

import keras
import numpy as np
import pytest

import morphsparse as ms

L = keras.layers


def resnet(width=0.5, seed=0):
    """ms.small_resnet on 8x8 digits, with distinct random gammas (so ranking is not a tie)."""
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=width)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.1, 1.0, layer.gamma.shape).astype("float32"))
    return model


def widths(model):
    return {layer.name: int(layer.kernel.shape[-1]) for layer in model.layers if isinstance(layer, L.Conv2D)}


def count(target):
    return ms.count_flops if target == "flops" else ms.count_params


def no_over_pruning_warning(record):
    return not [w for w in record if "over-pruned" in str(w.message)]


@pytest.mark.parametrize("target", ["flops", "size"])
def test_prune_lands_at_or_just_under_the_budget(target):
    model = resnet()
    full = count(target)(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        slim, report = ms.prune_with_report(model, budget=0.5, target=target)
    cost = count(target)(slim)
    assert 0.85 * full / 2 <= cost <= full / 2
    assert no_over_pruning_warning(record)
    # an absolute budget (> 1) in the target's unit
    absolute = int(0.3 * full)
    cost = count(target)(ms.prune(model, budget=absolute, target=target))
    assert 0.85 * absolute <= cost <= absolute
    # the report
    assert report.budget == pytest.approx(full / 2) and report.budget_fraction == pytest.approx(0.5)
    assert (report.flops_before, report.params_before) == (ms.count_flops(model), ms.count_params(model))
    assert (report.flops_after, report.params_after) == (ms.count_flops(slim), ms.count_params(slim))
    assert report.cost_after == count(target)(slim) and report.target == target
    assert report.importance == "gamma" and len(report.steps) == 1 and report.histories == [None]
    assert report.groups["b2_conv2, b2_proj"][0] == 16
    assert sum(a for _, a in report.groups.values()) < sum(b for b, _ in report.groups.values())
    assert "prune of 'small_resnet'" in report.summary() and "b3_conv1" in report.table()
    assert model.count_params() == report.params_before          # the model itself is untouched


def test_coupled_residual_channels_stay_consistent_and_the_slim_model_saves(tmp_path):
    model = resnet()
    slim = ms.prune(model, budget=0.4)
    w = widths(slim)
    # the convs tied by residual Adds keep equal widths, and every group keeps a channel
    assert w["stem"] == w["b1_conv2"] and w["b2_proj"] == w["b2_conv2"] and w["b3_proj"] == w["b3_conv2"]
    assert min(w.values()) >= 1 and widths(model) != w
    graph = ms.analyze(slim)
    assert len(graph.removable_groups) == len(ms.analyze(model).removable_groups)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype("float32")
    path = tmp_path / "slim.keras"
    slim.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), slim.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def pointwise_resnet():
    """1x1 convs only (a folded constant is exact everywhere), a residual Add and a concat, with random BN
    statistics and betas."""
    inp = keras.Input((4, 4, 3), name="image")

    def conv_bn(x, name, width, relu=True):
        x = L.BatchNormalization(name=f"{name}_bn")(L.Conv2D(width, 1, use_bias=False, name=name)(x))
        return L.ReLU()(x) if relu else x

    x = conv_bn(inp, "stem", 12)
    x = L.ReLU()(L.Add()([x, conv_bn(conv_bn(x, "a", 8), "b", 12, relu=False)]))
    x = L.Concatenate()([conv_bn(x, "t1", 6), conv_bn(x, "t2", 10)])
    model = keras.Model(inp, L.Dense(5, name="logits")(L.GlobalAveragePooling2D()(x)), name="pointwise")
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.1, 1, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    return model


def test_removed_channels_are_exported_as_if_their_gamma_were_zero():
    """The slim model computes what the original computes with the pruned channels' gammas set to zero
    (export folds the constant act(beta) they leave behind into the next layer)."""
    model = pointwise_resnet()
    slim, report = ms.prune_with_report(model, budget=0.5)
    assert report.steps[0].removal == "gamma"
    masks = report.steps[0].export_report.masks
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for src in ms.find_sources(ms.analyze(reference), "gamma"):
        gamma = keras.ops.convert_to_numpy(src.weight).copy()
        gamma[~masks[src.group][src.channels]] = 0.0
        src.weight.assign(gamma)
    x = np.random.default_rng(2).normal(size=(4, 4, 4, 3)).astype("float32")
    got, want = slim.predict(x, verbose=0), reference.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert not np.allclose(want, model.predict(x, verbose=0), rtol=1e-3)   # something was removed


def test_channels_weak_within_their_own_layer_go_first():
    """Importance is normalised within each group (a BatchNorm undoes its layer's scale, so gammas of two layers
    are not comparable): three channels far below the rest of their own layer go first, wherever they are."""
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.5)
    gamma = np.ones(8, "float32")
    gamma[:3] = 1e-3
    model.get_layer("mix_b1_bn").gamma.assign(gamma)
    full = ms.count_flops(model)
    graph = ms.analyze(model)
    group = graph.group_of("mix_b1")
    one_less = np.ones(group.size, bool)
    one_less[0] = False
    saving = full - ms.count_flops(graph, alive={group.id: one_less})
    slim = ms.prune(model, budget=full - 3 * saving)
    before, after = widths(model), widths(slim)
    assert after["mix_b1"] == before["mix_b1"] - 3
    assert {k: v for k, v in after.items() if k != "mix_b1"} == {k: v for k, v in before.items() if k != "mix_b1"}


def test_a_whole_layer_of_small_gammas_is_not_singled_out():
    """Scaled down as a whole, a layer keeps its share: after normalisation only the shape of its gammas counts."""
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.5)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.0, layer.gamma.shape).astype("float32"))
    reference = widths(ms.prune(model, budget=0.6))
    bn = model.get_layer("mix_b1_bn")
    bn.gamma.assign(bn.gamma.numpy() * 1e-3)
    assert widths(ms.prune(model, budget=0.6)) == reference


def test_with_equal_importance_the_largest_saving_goes_first():
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.5)
    graph = ms.analyze(model)
    full = ms.count_flops(graph)
    savings = {}
    for group in graph.removable_groups:
        mask = np.ones(group.size, bool)
        mask[0] = False
        savings[group.id] = full - ms.count_flops(graph, alive={group.id: mask})
    largest = max(savings, key=savings.get)
    assert sorted(savings.values())[-2] < savings[largest]

    def equal(graph):
        return {g.id: np.ones(g.size) for g in graph.removable_groups}

    with pytest.warns(UserWarning, match="over-pruned"):   # one channel saves far more than 1 FLOP
        slim, report = ms.prune_with_report(model, budget=full - 1, importance=equal)
    changed = {p: (b, a) for p, (b, a) in report.groups.items() if a != b}
    producers = ", ".join(graph.groups[largest].producers)
    assert changed == {producers: (graph.groups[largest].size, graph.groups[largest].size - 1)}
    assert report.importance == "equal"


@pytest.mark.filterwarnings("ignore:prune of .* over-pruned")
def test_taylor_importance_on_digits_lands_within_budget(digits):
    x, y, _, _ = digits
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.5)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scores = ms.channel_importance(model, "taylor", data=(x[:256], y[:256]), batches=2)
    assert all(np.all(np.isfinite(v) & (v >= 0)) for v in scores.values())
    assert any(np.ptp(v) > 0 for v in scores.values())
    full = ms.count_flops(model)
    slim, report = ms.prune_with_report(model, budget=0.5, importance="taylor", data=(x[:256], y[:256]), batches=2)
    assert 0.85 * full / 2 <= ms.count_flops(slim) <= full / 2
    assert report.importance == "taylor" and slim.compiled      # compiled like the seed
    # a tf.data.Dataset and an explicit loss work too, on an uncompiled model
    import tensorflow as tf
    plain = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.5)
    data = tf.data.Dataset.from_tensor_slices((x[:128], y[:128])).batch(64)
    slim = ms.prune(plain, budget=0.5, importance="taylor", data=data,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert ms.count_flops(slim) <= full / 2 and not slim.compiled


def test_steps_prune_and_fine_tune_iteratively(digits):
    x, y, _, _ = digits
    model = ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.25)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], run_eagerly=True)   # two tiny batches: tracing would cost more
    full = ms.count_flops(model)
    fit = dict(x=x[:256], y=y[:256], epochs=1, batch_size=128, verbose=0)
    slim, report = ms.prune_with_report(model, budget=0.4, steps=2, fit=fit)
    assert len(report.steps) == 2
    first, second = report.steps
    assert first.budget == pytest.approx(full * 0.4 ** 0.5) and second.budget == pytest.approx(full * 0.4)
    assert first.flops <= first.budget and second.flops <= second.budget and second.flops < first.flops
    for step in report.steps:
        assert set(step.history) >= {"loss", "accuracy"} and len(step.history["loss"]) == 1
    assert ms.count_flops(slim) <= 0.4 * full and slim.compiled and slim.run_eagerly   # compiled like the seed
    assert "fine-tuned" in first.summary()


def test_ignore_keeps_a_layer_whole():
    model = resnet()
    slim = ms.prune(model, budget=0.4, ignore=["b3_conv1"])
    assert widths(slim)["b3_conv1"] == widths(model)["b3_conv1"]
    assert ms.count_flops(slim) <= 0.4 * ms.count_flops(model)


def mlp(hidden=32, batch_norm=False):
    inp = keras.Input((10,), name="x")
    h = L.Dense(hidden, activation="relu", name="h1")(inp)
    if batch_norm:
        h = L.BatchNormalization(name="h1_bn")(h)
    h = L.Dense(16, activation="relu", use_bias=False, name="h2")(h)
    return keras.Model(inp, L.Dense(3, name="out")(h), name="mlp")


def test_l1_prunes_a_network_without_batch_norm_and_gamma_cannot():
    model = mlp()
    slim, report = ms.prune_with_report(model, budget=0.5, importance="l1")
    assert ms.count_flops(slim) <= ms.count_flops(model) / 2
    assert report.steps[0].removal == "group_lasso"     # removed as if the kernel column were zero
    with pytest.raises(ms.PruneError, match=r"budget=0.5 .*smallest network .* costs 1,760 FLOPs.*never pruned"):
        ms.prune(model, budget=0.5, importance="gamma")


def test_channels_without_an_importance_source_are_never_pruned():
    model = mlp(batch_norm=True)      # h1 has a BatchNorm, h2 has none
    slim, report = ms.prune_with_report(model, budget=0.7, target="size")
    assert slim.get_layer("h2").kernel.shape[-1] == 16 and slim.get_layer("h1").kernel.shape[-1] < 32
    assert report.never_pruned == 16 and "16 never pruned" in report.summary()


def test_unreachable_budget_names_budget_and_the_smallest_cost():
    model = resnet()
    with pytest.raises(ms.PruneError, match=r"budget=100 \(100 FLOPs\) cannot be reached: .* costs [\d,]+ FLOPs"):
        ms.prune(model, budget=100)


def test_over_pruning_warns_only_when_it_happens():
    inp = keras.Input((100,))
    model = keras.Model(inp, L.Dense(1, name="out")(L.Dense(4, name="h")(inp)))
    # 4 hidden channels of 102 parameters each, plus 1: a budget of 245.4 needs 2 of them gone -> 205
    with pytest.warns(UserWarning, match="over-pruned"):
        slim = ms.prune(model, budget=0.6, target="size", importance="l1")
    assert ms.count_params(slim) == 205


def test_a_budget_at_the_models_own_cost_prunes_nothing():
    model = resnet()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        slim = ms.prune(model, budget=1.0)
    assert widths(slim) == widths(model) and not [w for w in record if issubclass(w.category, UserWarning)]
    with pytest.warns(UserWarning, match="at or above the cost"):
        ms.prune(model, budget=10 * ms.count_flops(model))


@pytest.fixture(scope="module")
def tiny_resnet():
    return ms.small_resnet(input_shape=(8, 8, 1), width_multiplier=0.25)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(budget=0), ValueError, "budget"),
    (dict(budget=-0.5), ValueError, "budget"),
    (dict(budget=float("nan")), ValueError, "budget"),
    (dict(budget="0.5"), TypeError, "budget"),
    (dict(budget=True), TypeError, "budget"),
    (dict(target="energy"), ValueError, "target"),
    (dict(target="latency", budget=2.0), ValueError, "latency budget is a fraction"),
    (dict(importance="hessian"), ValueError, "importance"),
    (dict(importance="taylor"), ValueError, "data="),
    (dict(importance="taylor", data=[1, 2, 3, 4]), TypeError, "data"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=1.5), ValueError, "steps"),
    (dict(steps=2), ValueError, "fit="),
    (dict(fit=[("epochs", 1)]), TypeError, "fit"),
    (dict(compile="adam"), TypeError, "compile"),
    (dict(chunk=0), ValueError, "chunk"),
    (dict(batches=0), ValueError, "batches"),
    (dict(ignore="stem"), TypeError, "ignore"),
    (dict(importance=lambda g: {0: [1.0]}), ValueError, "importance"),
    (dict(cost_power=-0.5), ValueError, "cost_power"),
    (dict(cost_power=3), ValueError, "cost_power"),
    (dict(cost_power=float("nan")), ValueError, "cost_power"),
    (dict(cost_power="1"), TypeError, "cost_power"),
    (dict(min_width=1.0), ValueError, "min_width"),
    (dict(min_width=-0.1), ValueError, "min_width"),
    (dict(min_width=True), TypeError, "min_width"),
])
def test_argument_errors_name_the_argument(kwargs, error, name, tiny_resnet):
    with pytest.raises(error, match=name):
        ms.prune(tiny_resnet, **kwargs)


def test_fit_needs_a_compiled_seed_or_compile(tiny_resnet):
    model = tiny_resnet
    with pytest.raises(ValueError, match="compile"):
        ms.prune(model, budget=0.5, fit=dict(x=np.zeros((2, 8, 8, 1)), y=np.zeros(2), verbose=0))
    with pytest.warns(UserWarning, match="data= is only used by importance in"):
        ms.prune(model, budget=0.5, data=(np.zeros((2, 8, 8, 1)), np.zeros(2)))


def vgg_chain(seed=0):
    """The plain chain of the structure-quality study (no residual adds: every width is free), with random
    gammas so that the ranking is not a tie."""
    x = inputs = keras.Input((12, 12, 1))
    for i, (width, stride) in enumerate(zip((16, 16, 32, 32), (1, 1, 2, 1))):
        x = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = L.ReLU()(L.BatchNormalization(name=f"bn{i}")(x))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, name="logits")(x), name="vgg_chain")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.1, 1.0, layer.gamma.shape).astype("float32"))
    return model


@pytest.mark.parametrize("min_width", [0.2, 0.4])
def test_every_layer_keeps_its_floor(min_width):
    model = vgg_chain()
    before = widths(model)
    slim = ms.prune(model, budget=0.25, min_width=min_width)
    for name, width in widths(slim).items():
        assert width >= np.ceil(min_width * before[name]), (name, width)
    assert ms.count_flops(slim) <= 0.25 * ms.count_flops(model)


def test_without_a_floor_a_chain_collapses_and_the_warning_names_the_layer_and_min_width():
    """Ranked by importance per unit of FLOPs with no floor, the expensive high-resolution layer of a chain goes
    down to a single channel (what the issue saw); the warning names it and the argument to raise."""
    model = vgg_chain()
    with pytest.warns(UserWarning, match=r"conv1 \(16 -> 1\).*min_width="):
        slim = ms.prune(model, budget=0.25, cost_power=1.0, min_width=0.0)
    assert widths(slim)["conv1"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # the defaults neither collapse a layer nor warn
        assert min(widths(ms.prune(model, budget=0.25)).values()) >= 4


def test_cost_power_shifts_the_cut_from_expensive_to_cheap_layers():
    """At power 1 the cheap low-resolution layers keep more of their channels than at power 0 (importance
    alone); both land under the budget."""
    model = vgg_chain()
    full = ms.count_flops(model)

    def kept(power):
        slim = ms.prune(model, budget=0.4, cost_power=power, min_width=0.1)
        assert ms.count_flops(slim) <= 0.4 * full
        w = widths(slim)
        return (w["conv2"] + w["conv3"]) / 64, (w["conv0"] + w["conv1"]) / 32

    cheap_1, expensive_1 = kept(1.0)
    cheap_0, expensive_0 = kept(0.0)
    assert cheap_1 - expensive_1 > cheap_0 - expensive_0


def test_a_floor_that_makes_the_budget_unreachable_names_min_width():
    with pytest.raises(ms.PruneError, match="min_width"):
        ms.prune(vgg_chain(), budget=0.05, min_width=0.5)


def test_a_percentage_given_as_an_absolute_budget_says_which_fraction_to_write():
    with pytest.raises(ms.PruneError, match=r"budget=0\.6\)"):
        ms.prune(vgg_chain(), budget=60, target="size")


def test_calibration_data_re_estimates_the_slim_models_batchnorm_statistics():
    model = vgg_chain()
    x = np.random.default_rng(2).normal(1.0, 2.0, size=(64, 12, 12, 1)).astype("float32")
    stale = ms.prune(model, budget=0.5)
    fresh = ms.prune(model, budget=0.5, calibration_data=x)
    reference = keras.models.clone_model(stale)
    reference.set_weights(stale.get_weights())
    ms.recalibrate_batchnorm(reference, x)
    for name in ("bn0", "bn3"):
        np.testing.assert_allclose(fresh.get_layer(name).moving_mean.numpy(),
                                   reference.get_layer(name).moving_mean.numpy(), rtol=1e-4, atol=1e-6)
        assert not np.allclose(fresh.get_layer(name).moving_mean.numpy(), stale.get_layer(name).moving_mean.numpy())


def test_a_residual_stream_export_keeps_whole_is_fixed_and_the_heads_and_ffn_pay_instead():
    """A ViT's residual stream looks removable in the graph, but a LayerNormalization normalises it whole, so
    export keeps it: prune then fixes those channels and reaches the budget on the heads and FFN neurons."""
    from morphsparse.models import small_vit

    model = small_vit(input_shape=(8, 8, 1), patch=4, dim=16, depth=2, heads=4, key_dim=4, ffn=32)
    full = ms.count_flops(model)
    slim = ms.prune(model, budget=0.6, importance="l1")
    assert ms.count_flops(slim) <= 0.6 * full
    assert slim.get_layer("patchify").kernel.shape[-1] == 16     # the stream is whole
    assert slim.get_layer("b0_ffn1").kernel.shape[-1] < 32
