"""Slim export (ms.export): channel removal, constant folding, branch and tower removal, saving."""

import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.models import small_mlp
from morph_helpers import assert_same_outputs, block_net, inputs_for, kill, randomize

L = keras.layers
ROOT = Path(__file__).resolve().parents[2]


def test_dead_branch_and_tower_disappear_and_outputs_match():
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), slice(None))            # the whole residual branch a -> b
    kill(model.get_layer("t1_bn"), slice(None))           # a whole concat tower
    kill(model.get_layer("stem_bn"), [1, 3])
    kill(model.get_layer("b_bn"), [1, 3, 5])              # channel 5 stays: stem_bn keeps it (OR)
    slim, report = ms.export_with_report(model)
    assert_same_outputs(model, slim)
    names = {layer.name for layer in slim.layers}
    assert not names & {"a", "a_bn", "b", "b_bn", "t1", "t1_bn", "add", "cat"}
    assert slim.get_layer("stem").filters == 14
    assert {"a", "b", "t1"} <= set(report.removed_layers)
    # the slim model costs exactly what the alive masks say
    assert ms.count_flops(slim) == ms.count_flops(model, alive=ms.alive_masks(model)) == report.flops_after
    assert ms.count_params(slim) == report.params_after < report.params_before


def test_dead_branch_with_nonzero_constant_is_added_back():
    # branch a dies but b's BN still emits a non-zero constant: the Add keeps it as a constant offset
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), slice(None))
    slim = ms.export(model)
    assert_same_outputs(model, slim)
    assert "add" not in {layer.name for layer in slim.layers}


def starved_tower_net():
    """A concat tower (ta -> tb) read by a 3x3 'same' conv: when ta dies, tb reads nothing live and starves."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.ReLU()(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", name="stem")(inp)))
    t = L.ReLU()(L.BatchNormalization(name="ta_bn")(L.Conv2D(4, 1, name="ta")(x)))
    t = L.BatchNormalization(name="tb_bn")(L.Conv2D(5, 3, padding="same", name="tb")(t))
    u = L.BatchNormalization(name="u_bn")(L.Conv2D(6, 1, name="u")(x))
    x = L.Concatenate(name="cat")([t, u])
    x = L.ReLU()(L.BatchNormalization(name="mix_bn")(L.Conv2D(7, 3, padding="same", name="mix")(x)))
    return keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x)), name="starved")


def test_a_starved_tower_is_folded_inexactly_unless_exact_keeps_what_feeds_it():
    model = randomize(starved_tower_net())
    kill(model.get_layer("ta_bn"), slice(None))
    x = inputs_for(model)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    slim, report = ms.export_with_report(model)
    assert {"ta", "tb"}.isdisjoint(layer.name for layer in slim.layers)
    assert [path for path, _, _ in report.inexact] == ["mix"]          # the default says what it did
    exact, exact_report = ms.export_with_report(model, exact=True)
    got = keras.ops.convert_to_numpy(exact(x, training=False))
    assert np.abs(want - got).max() <= 1e-5 * np.abs(want).max()
    assert not exact_report.inexact
    assert exact.get_layer("ta").filters == 4 and exact.get_layer("tb").filters == 5
    assert any("starved layer 'tb'" in reason for _, _, reason in exact_report.kept)


def test_constant_of_dead_channels_folds_exactly_into_1x1_and_dense():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(5, 1, name="pointwise")(x)                 # 1x1: exact
    z = L.Dense(4, name="dense")(L.GlobalAveragePooling2D()(x))
    out = L.Concatenate()([L.GlobalAveragePooling2D()(y), z])
    model = randomize(keras.Model(inp, out))
    model.get_layer("bn1").beta.assign(np.linspace(0.2, 1.0, 8).astype("float32"))   # relu(beta) > 0
    kill(model.get_layer("bn1"), [0, 2, 5], beta=False)
    slim, report = ms.export_with_report(model)
    assert slim.get_layer("c1").filters == 5
    assert report.folded == 2 and not report.inexact
    assert_same_outputs(model, slim)


def test_fold_through_padded_spatial_conv_is_reported_and_exact_keeps_it():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(6, 3, padding="same", name="spatial")(x)
    out = L.Dense(3)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    model.get_layer("bn1").beta.assign(np.full(8, 0.5, "float32"))
    kill(model.get_layer("bn1"), [1, 4], beta=False)
    slim, report = ms.export_with_report(model)
    assert report.inexact and report.inexact[0][0] == "spatial"
    assert slim.get_layer("c1").filters == 6                   # removed, folded at the interior value
    exact, exact_report = ms.export_with_report(model, exact=True)
    assert exact.get_layer("c1").filters == 8 and len(exact_report.kept) == 2
    assert_same_outputs(model, exact)
    # a zero constant (beta killed too) crosses a padded kernel exactly
    kill(model.get_layer("bn1"), [1, 4], beta=True)
    slim, report = ms.export_with_report(model, exact=True)
    assert slim.get_layer("c1").filters == 6 and not report.inexact
    assert_same_outputs(model, slim)


def test_flatten_dense_rows_are_sliced_and_folded():
    inp = keras.Input((4, 4, 2))
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("sigmoid")(x)                          # sigmoid(0) = 0.5: dead channels are not zero
    x = L.Flatten()(x)
    out = L.Dense(3, name="head")(x)
    model = randomize(keras.Model(inp, out))
    kill(model.get_layer("bn1"), [0, 3])
    slim = ms.export(model)
    assert slim.get_layer("head").kernel.shape == (4 * 4 * 4, 3)
    assert_same_outputs(model, slim)


def test_depthwise_multiplier_and_bias_free_conv_fold_into_batchnorm_mean():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="expand")(inp)
    x = L.BatchNormalization(name="expand_bn")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(5, 1, use_bias=False, name="project")(x)
    x = L.BatchNormalization(name="project_bn")(x)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    model.get_layer("dw_bn").beta.assign(np.full(8, 0.7, "float32"))
    kill(model.get_layer("expand_bn"), [1])           # channel 1 of the group: dw outputs 2 and 3
    kill(model.get_layer("dw_bn"), [2, 3], beta=False)  # dw_bn leaves relu(0.7) behind: folded
    slim, report = ms.export_with_report(model)
    assert slim.get_layer("expand").filters == 3
    assert slim.get_layer("dw").kernel.shape == (3, 3, 3, 2)
    assert slim.get_layer("project").kernel.shape == (1, 1, 6, 5)
    assert not slim.get_layer("project").use_bias      # the constant went into project_bn's moving mean
    assert report.folded == 1
    assert_same_outputs(model, slim)


def test_nested_model_is_flattened():
    inner_in = keras.Input((8, 8, 6))
    y = L.Conv2D(4, 1, name="inner_a")(inner_in)
    y = L.BatchNormalization(name="inner_bn")(y)
    y = L.ReLU()(y)
    y = L.Conv2D(6, 1, name="inner_b")(y)
    inner = keras.Model(inner_in, L.Add()([inner_in, y]), name="block")
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    x = inner(x)
    out = L.Dense(3)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    kill(model.get_layer("block").get_layer("inner_bn"), [0, 2])
    slim = ms.export(model)
    assert slim.get_layer("block__inner_a").filters == 2
    assert_same_outputs(model, slim)


def test_group_lasso_on_a_network_without_batchnorm():
    inp = keras.Input((12,))
    x = L.Dense(10, activation="relu", name="h1")(inp)
    x = L.Dense(8, activation="tanh", name="h2")(x)
    out = L.Dense(3, name="out")(x)
    model = randomize(keras.Model(inp, out))
    kernel = keras.ops.convert_to_numpy(model.get_layer("h1").kernel)
    kernel[:, [0, 4, 7]] = 0.0                      # their output is relu(bias): a constant, folded into h2
    model.get_layer("h1").kernel.assign(kernel)
    slim = ms.export(model, source="group_lasso")
    assert slim.get_layer("h1").units == 7
    assert_same_outputs(model, slim)


def test_channels_normalised_by_layernorm_or_not_constant_are_kept():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 1, name="c1")(inp)
    x = L.LayerNormalization(name="ln")(x)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    kernel = keras.ops.convert_to_numpy(model.get_layer("c1").kernel)
    kernel[..., [1, 2]] = 0.0
    model.get_layer("c1").kernel.assign(kernel)
    slim, report = ms.export_with_report(model, source="group_lasso")
    assert slim.get_layer("c1").filters == 8 and len(report.kept) == 2
    assert "LayerNormalization" in report.kept[0][2]
    assert_same_outputs(model, slim)

    # squeeze-excite: the gamma-dead channel is multiplied by an unregularised gate, so it is not constant
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="c")(inp)
    x = L.BatchNormalization(name="bn")(x)
    gate = L.Conv2D(4, 1, activation="sigmoid", name="gate")(L.GlobalAveragePooling2D(keepdims=True)(inp))
    x = L.Multiply()([x, gate])
    out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    kill(model.get_layer("bn"), [0], beta=False)
    slim, report = ms.export_with_report(model)
    assert slim.get_layer("c").filters == 4 and "not constant" in report.kept[0][2]
    assert_same_outputs(model, slim)


def test_user_masks_and_bad_input():
    model = randomize(block_net())
    graph = ms.analyze(model)
    masks = {"a": np.array([True, False] * 4)}
    slim = ms.export(model, alive=masks)
    assert slim.get_layer("a").filters == 4
    assert_same_outputs(ms.export(model, alive={"a": np.ones(8, bool)}), model)
    with pytest.raises(ms.AliveError, match="cannot be"):
        ms.export(model, alive={"logits": np.zeros(5, bool)})
    with pytest.raises(ms.AliveError, match="no input reaches"):
        ms.export(model, alive={graph.group_of("t1").id: np.zeros(4, bool),
                                graph.group_of("t2").id: np.zeros(6, bool)})
    with pytest.raises(ValueError, match="boolean mask"):
        ms.export(model, alive={"a": np.ones(3, bool)})
    with pytest.raises(ValueError, match="unknown source"):
        ms.export(model, source="magnitude")
    with pytest.raises(TypeError):
        ms.export("model.keras")


def test_unsupported_layer_is_a_clear_error():
    class Twice(L.Layer):     # a weight of its own: it cannot be read through its call
        def build(self, shape):
            self.gain = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            return x * 2.0 * self.gain

    inp = keras.Input((4,))
    out = L.Dense(2)(Twice()(L.Dense(3)(inp)))
    with pytest.raises(ms.GraphError, match="no channel handler"):
        ms.export(keras.Model(inp, out))


APPLICATIONS = ["ResNet50", "MobileNetV2", "MobileNetV3Small", "DenseNet121", "InceptionV3", "EfficientNetB0",
                "NASNetMobile", "Xception"]


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_keras_applications_export_equivalently(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from equivalence import check_model

    row = check_model(name)
    assert row["equal"], row
    assert row["flops_match"], row
    assert row["killed_groups"] > 0 and row["flops_slim"] < row["flops"]
    assert row["regulariser_exact"] and row["expand_within_budget"] and row["expand_multiplier"] > 1, row


def test_a_registered_handler_extends_export_and_expand_to_a_custom_layer(handler_registry):
    from morphsparse import handlers

    class ChannelScale(L.Layer):
        def __init__(self, channels, **kwargs):
            super().__init__(**kwargs)
            self.channels = channels

        def build(self, shape):
            self.w = self.add_weight(shape=(self.channels,), initializer="ones")

        def call(self, x):
            return x * self.w

        def get_config(self):
            return {**super().get_config(), "channels": self.channels}

    ms.register_handler(ChannelScale, handlers.ChannelSizedPassThrough("channels"))
    inp = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(5, 1, name="c")(inp))
    x = ChannelScale(5, name="scale")(x)
    model = randomize(keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(x))))
    model.get_layer("scale").w.assign(np.arange(1, 6).astype("float32"))
    kill(model.get_layer("bn"), [1, 3])
    slim = ms.export(model)
    assert slim.get_layer("scale").channels == 3
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(slim.get_layer("scale").w), [1, 3, 5])
    assert_same_outputs(model, slim)
    assert ms.expand(slim, budget=3 * ms.count_flops(slim)).get_layer("scale").channels > 3


def test_a_structure_only_handler_is_exported_and_expanded_as_channel_keeping(handler_registry):
    from morphsparse import handlers

    class Halve(L.Layer):
        def call(self, x):
            return x * 0.5

    class HalveChannels(handlers.ChannelHandler):    # structure and cost only, no export part
        def propagate(self, call, graph):
            return [call.in_maps[0]]

    ms.register_handler(Halve, HalveChannels)
    assert handlers.rebuild_part(handlers.get_handler(Halve)) is handlers.DEFAULT_REBUILD
    inp = keras.Input((6, 6, 3))
    x = Halve(name="halve")(L.BatchNormalization(name="bn")(L.Conv2D(5, 1, name="c")(inp)))
    model = randomize(keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(x))))
    kill(model.get_layer("bn"), [1, 3])
    slim = ms.export(model)
    assert slim.get_layer("halve").output.shape[-1] == 3
    assert_same_outputs(model, slim)
    assert ms.expand(slim, budget=3 * ms.count_flops(slim)).get_layer("halve").output.shape[-1] > 3


def test_export_says_when_it_removes_nothing_and_why():
    model = randomize(block_net())                        # gammas in [0.5, 1.5]: nothing below the threshold
    with pytest.warns(UserWarning, match="removed nothing.*threshold=0.01.*1.5 / learning_rate"):
        slim = ms.export(model)
    assert ms.count_flops(slim) == ms.count_flops(model)
    with pytest.warns(DeprecationWarning, match="export_with_report"):
        pair = ms.export(model, alive={"a": np.ones(8, bool)}, return_report=True)
    assert isinstance(pair, tuple) and not pair[1].removed_anything


class _TaggedGain(keras.layers.Layer):
    """A channel-keeping layer made with an argument Keras cannot serialise and no get_config of its own
    (as keras_hub 0.32's Gemma RMSNormalization): its config must be read back from its attributes."""

    def __init__(self, gain, tag=None, **kwargs):
        super().__init__(**kwargs)
        self.gain, self.tag = gain, tag

    def call(self, x):
        return x * self.gain


def test_a_layer_without_a_usable_get_config_is_rebuilt_from_its_attributes(handler_registry):
    from morphsparse import handlers

    inp = keras.Input((6,))
    x = _TaggedGain(2.5, tag=object(), name="gain")(keras.layers.Dense(8, name="d1")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(x))
    with pytest.raises(Exception):
        model.get_layer("gain").get_config()
    ms.register_handler(_TaggedGain, handlers.PassThrough)
    d1 = model.get_layer("d1")
    d1.kernel.assign(d1.kernel.numpy() * np.array([1.0, 0.0] * 4, "float32"))   # half its neurons empty
    with pytest.warns(UserWarning, match=r"'gain'.*_TaggedGain.*no usable get_config.*\['gain', 'tag'\]"):
        slim = ms.export(model, source="zeros")
    rebuilt = next(layer for layer in slim.layers if isinstance(layer, _TaggedGain))
    assert rebuilt.gain == 2.5 and rebuilt is not model.get_layer("gain")
    assert ms.count_flops(slim) < ms.count_flops(model)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dead, kept", [(5, 16), (10, 8), (15, 8)])
def test_round_to_keeps_a_multiple_of_channels_and_the_outputs(dead, kept):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(
        keras.layers.Dense(16, activation="relu", name="d1")(inp)))
    d1 = model.get_layer("d1")
    columns = np.ones(16, "float32")
    columns[np.random.default_rng(1).permutation(16)[:dead]] = 0.0
    d1.kernel.assign(d1.kernel.numpy() * columns)
    plain = ms.export(model, source="zeros")
    rounded = ms.export(model, source="zeros", round_to=8)
    width = {m: sum(layer.units for layer in m.layers if isinstance(layer, keras.layers.Dense)) - 3
             for m in (plain, rounded)}
    assert width[plain] == 16 - dead and width[rounded] == kept
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    for slim in (plain, rounded):
        np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 2.5, True, "8"])
def test_round_to_must_be_a_positive_whole_number(bad):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8)(inp)))
    with pytest.raises(ValueError, match="round_to"):
        ms.export(model, source="zeros", round_to=bad)


def position_slice_net():
    """Dense -> BatchNorm over (positions, channels), then x[:, 0, :] (the first position) into a head."""
    inp = keras.Input((8, 16))
    h = L.BatchNormalization(name="bn")(L.Dense(16, name="d1")(inp))
    return keras.Model(inp, L.Dense(3, name="head")(h[:, 0, :]))


def test_a_model_reloaded_from_disk_that_indexes_a_position_exports_with_the_same_outputs(tmp_path):
    # a reloaded GetItem holds its key x[:, 0, :] as a list, which indexing an array refuses
    model = randomize(position_slice_net())
    kill(model.get_layer("bn"), [2, 5, 11])
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = np.random.default_rng(1).normal(size=(4, 8, 16)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x, training=False))
    for source in (model, reloaded):
        slim = ms.export(source)
        assert [layer.units for layer in slim.layers if isinstance(layer, L.Dense)] == [13, 3]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(slim(x, training=False)), want, rtol=1e-5,
                                   atol=1e-5)


def chain_with_dead_channels(alive_in_b, alive_in_c=8):
    """conv a (16) -> conv b (16) -> conv c (8) -> head, with all but ``alive_in_b`` gammas of b at zero."""
    inp = keras.Input((6, 6, 1))
    x = inp
    for name, width in (("a", 16), ("b", 16), ("c", 8)):
        x = keras.layers.Conv2D(width, 3, padding="same", name=name)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"{name}_bn")(x))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for name, alive in (("b", alive_in_b), ("c", alive_in_c)):
        bn = model.get_layer(f"{name}_bn")
        gamma = rng.uniform(0.5, 1.0, bn.gamma.shape).astype("float32")
        gamma[alive:] = 0.0
        if alive < len(gamma):
            gamma[alive:alive + 3] = [5e-3, 4e-3, 3e-3]   # the three strongest dead channels, the rest zero
        bn.gamma.assign(gamma)
    return model


def test_export_keeps_a_floor_in_every_thinned_layer_with_unchanged_outputs():
    model = chain_with_dead_channels(alive_in_b=1)
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 1)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # the default floor leaves nothing collapsed to warn about
        slim = ms.export(model)
    assert slim.get_layer("b").kernel.shape[-1] == 4            # ceil(0.2 * 16): the three strongest dead revived
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    b_bn = slim.get_layer("b_bn").gamma.numpy()
    assert sorted(b_bn)[:3] == pytest.approx([3e-3, 4e-3, 5e-3])


def test_export_without_a_floor_collapses_and_warns_naming_the_layer_and_min_width():
    model = chain_with_dead_channels(alive_in_b=1)
    with pytest.warns(UserWarning, match=r"b \(16 -> 1\).*min_width="):
        slim = ms.export(model, min_width=0.0)
    assert slim.get_layer("b").kernel.shape[-1] == 1


def test_export_floor_leaves_user_masks_and_wide_layers_alone():
    model = chain_with_dead_channels(alive_in_b=6)
    assert ms.export(model).get_layer("b").kernel.shape[-1] == 6          # above the floor: as the regulariser left it
    graph = ms.analyze(model)
    mask = np.zeros(16, bool)
    mask[0] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = ms.export(model, alive={graph.group_of("b").id: mask})
    assert chosen.get_layer("b").kernel.shape[-1] == 1                     # alive= is taken as given


@pytest.mark.parametrize("value,error", [(1.0, ValueError), (-0.1, ValueError), ("0.2", TypeError)])
def test_export_min_width_errors_name_it(value, error):
    with pytest.raises(error, match="min_width"):
        ms.export(chain_with_dead_channels(alive_in_b=1), min_width=value)


@pytest.mark.parametrize("bad", ["no", "False", 1, None])
def test_exact_must_be_a_boolean(bad):
    # a truthy string would silently turn exact on
    with pytest.raises(TypeError, match=r"exact must be True or False"):
        ms.export(position_slice_net(), exact=bad)


# --- export(budget=): the step that lands a run on its budget -------------------------------------------------
def _mlp_with_gammas(seed=0):
    """small_mlp with BatchNorm gammas spread over [0, 1): some channels near zero, as structure learning leaves."""
    model = small_mlp(widths=(32, 32, 16))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.0, 1.0, layer.gamma.shape).astype("float32"))
    return model


@pytest.mark.parametrize("budget,target", [(0.5, "flops"), (0.3, "flops"), (0.6, "size")])
def test_export_with_a_budget_lands_at_or_just_under_it_keeping_the_strongest_channels(budget, target):
    model = _mlp_with_gammas()
    count = ms.count_flops if target == "flops" else ms.count_params
    slim, report = ms.export_with_report(model, budget=budget, target=target)
    ratio = count(slim) / count(model)
    # one 32-wide layer's channel costs about 2% of this MLP: the fill lands within two of them
    assert budget - 0.04 <= ratio <= budget, ratio
    graph = ms.analyze(model)
    vectors = ms.group_vectors(graph, "gamma")
    for gid, mask in report.masks.items():
        if gid in vectors and graph.groups[gid].removable:
            # every channel above the chosen threshold is kept: the budget keeps the largest values first
            assert mask[vectors[gid] > report.threshold].all()


def test_export_budget_fills_what_a_coarse_unit_leaves_with_finer_channels():
    """A head-like coarse group (a 64-wide layer with all gammas equal) next to fine ones: the threshold alone
    would stop far under the budget; the fill gives the share to the fine channels."""
    inputs = keras.Input((16,))
    coarse = keras.layers.Dense(64, use_bias=False, name="coarse")(inputs)
    coarse = keras.layers.BatchNormalization(name="coarse_bn")(coarse)
    fine = keras.layers.Dense(64, use_bias=False, name="fine")(inputs)
    fine = keras.layers.BatchNormalization(name="fine_bn")(fine)
    x = keras.layers.Concatenate()([keras.layers.ReLU()(coarse), keras.layers.ReLU()(fine)])
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    model.get_layer("coarse_bn").gamma.assign(np.full(64, 0.5, "float32"))          # one value: one step
    model.get_layer("fine_bn").gamma.assign(np.linspace(0.02, 0.9, 64).astype("float32"))
    slim, report = ms.export_with_report(model, budget=0.6, min_width=0.0)
    ratio = ms.count_flops(slim) / ms.count_flops(model)
    assert 0.57 <= ratio <= 0.6, ratio


def test_export_budget_errors_name_what_to_change():
    model = _mlp_with_gammas()
    with pytest.raises(ValueError, match=r"give budget= or threshold="):
        ms.export(model, budget=0.5, threshold=0.1)
    with pytest.raises(ValueError, match=r"below the narrowest network export can make.*min_width="):
        ms.export(model, budget=0.01)
    with pytest.raises(ValueError, match="target"):
        ms.export(model, budget=0.5, target="latency_ms")


def test_export_budget_pays_first_for_the_channels_export_must_keep():
    """Channels a LayerNorm normalises with live ones stay whatever their values; the budget is met elsewhere."""
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(16, 1, name="normed")(inp)
    x = L.LayerNormalization(name="ln")(x)
    y = L.Conv2D(16, 1, name="free")(inp)
    y = L.BatchNormalization(name="free_bn")(y)
    x = L.Concatenate()([x, L.ReLU()(y)])
    out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = randomize(keras.Model(inp, out))
    kernel = keras.ops.convert_to_numpy(model.get_layer("normed").kernel)
    kernel[..., :8] *= 1e-4                 # weak, but normalised with the others: export keeps them
    model.get_layer("normed").kernel.assign(kernel)
    model.get_layer("free_bn").gamma.assign(np.linspace(0.05, 1.0, 16).astype("float32"))
    for source, budget in (("group_lasso", 0.85), ("gamma", 0.7)):
        slim, report = ms.export_with_report(model, source=source, budget=budget, min_width=0.0)
        assert slim.get_layer("normed").filters == 16
        assert budget - 0.05 <= ms.count_flops(slim) / ms.count_flops(model) <= budget
