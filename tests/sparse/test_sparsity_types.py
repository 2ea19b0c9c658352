"""Sparsity types (issue 12): every mask method keeps every structure exactly (blocks all-or-nothing, N of
every M, constant fan-in) with exact counts and exact zeros; SRigL's neuron ablation masks whole neurons with
an exact layer count, and ``ms.export(source="zeros")`` removes them physically with unchanged outputs."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

import morphsparse as ms
from morphsparse.sparse import (FanIn, RigL, find_sparse_optimizer, get_sparsity_type, kept_count,
                               serialize_sparsity_type)

TYPES = ["1x4", "1x16", "4x1", "2:4", "fan_in"]
METHODS = ["static", "set", "rigl", "snfs", "magnitude", "gap", "snip"]


def _np(value):
    return keras.ops.convert_to_numpy(value)


def assert_structure(name, mask, sparsity):
    """Check ``mask`` against the definition of the type, independently of the implementation."""
    rows, cols = int(np.prod(mask.shape[:-1])), mask.shape[-1]
    matrix = mask.reshape(rows, cols)
    assert set(np.unique(matrix).tolist()) <= {0.0, 1.0}
    if "x" in name:
        outputs, inputs = map(int, name.split("x"))
        blocks = matrix.reshape(rows // inputs, inputs, cols // outputs, outputs).sum(axis=(1, 3))
        assert set(np.unique(blocks).tolist()) <= {0, outputs * inputs}, "a block is partly kept"
        assert np.count_nonzero(blocks) == kept_count(blocks.size, sparsity)
    elif ":" in name:
        n, m = map(int, name.split(":"))
        groups = matrix.reshape(rows // m, m, cols).sum(axis=1)
        assert (groups == n).all(), "a group of M inputs does not keep exactly N"
    else:
        assert (matrix.sum(axis=0) == kept_count(rows, sparsity)).all(), "fan-in differs between neurons"


def mlp(width=16):
    inputs = keras.Input((16,))
    hidden = L.Dense(width, activation="relu", name="h1")(inputs)
    hidden = L.Dense(width, activation="relu", name="h2")(hidden)
    return keras.Model(inputs, L.Dense(8, name="out")(hidden), name="mlp")


def data(n=48, features=16, outputs=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype("float32"), rng.normal(size=(n, outputs)).astype("float32")


def _options(method, x, y):
    if method == "gap":
        return {"partitions": 2, "steps_per_phase": 2}
    if method == "snip":
        return {"data": (x, y), "loss": "mse"}
    if method == "static":
        return {}
    return {"schedule": ms.UpdateSchedule(update_every=2)}


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_every_structure_exactly(method, name):
    keras.utils.set_random_seed(0)
    model = mlp()
    x, y = data()
    sparsity = 0.5 if ":" in name else 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # rounding to whole blocks, magnitude + N:M jump
        optimizer = ms.sparse_optimizer(model, keras.optimizers.Adam(0.01), sparsity=sparsity, method=method,
                                        sparsity_type=name, total_steps=12, **_options(method, x, y))
    model.compile(optimizer, "mse")
    before = optimizer.masks()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    structure = get_sparsity_type(name)
    for unit in optimizer.units:
        mask, kernel = _np(unit.mask), _np(unit.kernel)
        assert_structure(name, mask, unit.sparsity)
        assert int(mask.sum()) == structure.kept_count(mask.shape, unit.sparsity), unit.key
        assert (kernel[mask == 0] == 0).all(), f"{unit.key}: a pruned weight is not zero"
    # (1x16 blocks of these 16-row kernels are a handful of whole columns: a short run may regrow the very
    # blocks it dropped, so only the structure is checked there)
    if method in ("set", "rigl", "snfs", "gap") and name != "1x16":
        assert int(_np(optimizer.mask_changes)) > 0, "the masks never changed: no update ran"
    if method == "magnitude":
        assert all(before[key].all() for key in before) and optimizer.global_sparsity() > 0.4


@pytest.mark.parametrize("name", ["1x4", "2:4", "fan_in"])
def test_lottery_ticket_prunes_within_the_structure(name):
    keras.utils.set_random_seed(0)
    x, y = data(32)
    sparsity = 0.5 if ":" in name else 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = ms.lottery_ticket(mlp(), dict(x=x, y=y, batch_size=16, verbose=0), compile=dict(loss="mse"),
                                   sparsity=sparsity, sparsity_type=name)
    sparse = find_sparse_optimizer(result.model)
    for unit in sparse.units:
        mask = _np(unit.mask)
        assert_structure(name, mask, unit.sparsity)
        kernel = _np(unit.kernel)
        assert (kernel[mask == 0] == 0).all()


@pytest.mark.parametrize("name", ["1x4", "fan_in"])
def test_the_distribution_budget_is_kept_rounded_to_whole_blocks(name):
    unstructured = ms.sparse_optimizer(mlp(32), "sgd", sparsity=0.8, method="static")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        structured = ms.sparse_optimizer(mlp(32), "sgd", sparsity=0.8, method="static", sparsity_type=name)
    # the type changes positions, never the distribution's per-layer sparsities
    assert [u.sparsity for u in structured.units] == [u.sparsity for u in unstructured.units]
    for unit in structured.units:
        rows, cols = int(np.prod(unit.kernel.shape[:-1])), int(unit.kernel.shape[-1])
        expected = (kept_count(rows * cols // 4, unit.sparsity) * 4 if name == "1x4"
                    else cols * kept_count(rows, unit.sparsity))
        assert int(_np(unit.mask).sum()) == expected


def test_conv_kernels_are_seen_as_rows_times_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    hidden = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, L.Dense(4, name="out")(L.GlobalAveragePooling2D()(hidden)))
    optimizer = ms.sparse_optimizer(model, "sgd", sparsity=0.5, method="static", sparsity_type="2:4")
    mask = optimizer.masks()["conv/kernel"]
    assert mask.shape == (3, 3, 4, 8)
    # rows are (kh, kw, in) in memory order: 4 consecutive inputs at one tap form one group
    assert (mask.sum(axis=2) == 2).all()


@pytest.mark.parametrize("name", ["2:4", "fan_in"])
def test_structures_hold_inside_an_xla_compiled_step(name):
    keras.utils.set_random_seed(0)
    model = mlp()
    x, y = data(32)
    sparsity = 0.5 if ":" in name else 0.75
    structure = FanIn(ablation=True) if name == "fan_in" else name
    optimizer = ms.sparse_optimizer(model, keras.optimizers.Adam(0.01), sparsity=sparsity, method="rigl",
                                    sparsity_type=structure, layers=ms.LayerSelection(keep_dense=["out"]),
                                        schedule=ms.UpdateSchedule(update_every=2), total_steps=8)
    model.compile(optimizer, "mse", jit_compile=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(_np(optimizer.mask_changes)) > 0
    for unit in optimizer.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == get_sparsity_type(name).kept_count(mask.shape, unit.sparsity)
        if name == "2:4":
            assert_structure(name, mask, unit.sparsity)
        else:          # ablation may have emptied neurons; the others keep k or k + 1
            fan_in = mask.sum(axis=0)
            assert fan_in[fan_in > 0].max() - fan_in[fan_in > 0].min() <= 1


# --- save and resume ------------------------------------------------------------------------------------

def test_a_structured_run_saves_and_resumes_exactly(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = data(32)
    model = mlp()
    optimizer = ms.sparse_optimizer(model, keras.optimizers.Adam(0.01), sparsity=0.75, method="rigl",
                                    sparsity_type=FanIn(ablation=True, min_salient_fraction=0.25),
                                        layers=ms.LayerSelection(keep_dense=["out"]),
                                            schedule=ms.UpdateSchedule(update_every=2), total_steps=16)
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "run.keras")
    loaded = keras.saving.load_model(tmp_path / "run.keras")
    restored = find_sparse_optimizer(loaded)
    assert isinstance(restored.method.sparsity_type, FanIn)
    assert restored.method.sparsity_type.get_config() == {"ablation": True, "min_salient_fraction": 0.25}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    masks, again = optimizer.masks(), restored.masks()
    assert int(_np(restored.mask_updates)) == int(_np(optimizer.mask_updates)) >= 3
    for key in masks:
        np.testing.assert_array_equal(masks[key], again[key])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sparsity_types_serialise_by_name_or_config():
    for name in ["unstructured", "1x4", "4x1", "2:4", "3:8", "fan_in"]:
        structure = get_sparsity_type(name)
        assert serialize_sparsity_type(structure) == name
    config = serialize_sparsity_type(FanIn(ablation=True))
    assert isinstance(config, dict)
    assert get_sparsity_type(config).get_config() == FanIn(ablation=True).get_config()


@pytest.fixture
def pairs_type(sparsity_type_registry):
    """A registered subclass of a built-in type: blocks of 1 output x 2 inputs under its own name."""
    @ms.register_sparsity_type("test_pairs")
    class Pairs(ms.Block):
        def __init__(self):       # no parameters (and Block's get_config): it must be saved by its name
            super().__init__(1, 2)

    return Pairs


def test_a_registered_subclass_of_block_keeps_its_name_and_saves_and_loads(tmp_path, pairs_type):
    keras.utils.set_random_seed(0)
    structure = get_sparsity_type("test_pairs")
    assert structure.name == "test_pairs" and serialize_sparsity_type(structure) == "test_pairs"
    with pytest.raises(ValueError, match=r"sparsity_type='test_pairs' tiles kernels with blocks of 1 output"):
        structure.check((3, 4), "k")
    assert get_sparsity_type("1x2").name == "1x2"          # the built-in keeps its pattern name
    x, y = data(32)
    model = mlp()
    optimizer = ms.sparse_optimizer(model, keras.optimizers.Adam(0.01), sparsity=0.5, method="rigl",
                                    sparsity_type="test_pairs", schedule=ms.UpdateSchedule(update_every=2),
                                        total_steps=8)
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "run.keras")
    restored = find_sparse_optimizer(keras.saving.load_model(tmp_path / "run.keras"))
    assert type(restored.method.sparsity_type) is pairs_type
    masks, again = optimizer.masks(), restored.masks()
    for key in masks:
        pairs = again[key].reshape(-1, 2, again[key].shape[-1]).sum(axis=1)
        assert set(np.unique(pairs).tolist()) <= {0.0, 2.0} and 0 < again[key].mean() < 1
        np.testing.assert_array_equal(masks[key], again[key])


@pytest.mark.parametrize("name", ["unstructured", "Fan_In", "block", "n:m", "1x4", "2:4"])
def test_registering_a_built_in_name_is_refused(sparsity_type_registry, name):
    from morphsparse.sparse import SPARSITY_TYPES

    before = dict(SPARSITY_TYPES)
    with pytest.raises(ValueError, match=rf"register_sparsity_type: name '{name}' is a built-in sparsity type"):
        @ms.register_sparsity_type(name)
        class Mine(ms.Unstructured):
            pass
    assert SPARSITY_TYPES == before
    assert type(get_sparsity_type("unstructured")) is ms.Unstructured


def test_min_salient_fraction_needs_ablation_and_takes_numpy_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"min_salient_fraction=0.9 has no effect without ablation=True"):
        FanIn(min_salient_fraction=0.9)
    structure = FanIn(ablation=True, min_salient_fraction=np.float32(0.5))
    assert structure.min_salient_fraction == 0.5
    assert FanIn().min_salient_fraction == 0.3 and FanIn().get_config() == {"ablation": False}
    # a config written before (min_salient_fraction saved without ablation) still loads
    old = {"module": None, "class_name": "FanIn", "config": {"ablation": False, "min_salient_fraction": 0.3},
           "registered_name": "morphsparse.sparsity_types>FanIn"}
    assert get_sparsity_type(old).get_config() == {"ablation": False}
    for bad in (np.float64(1.5), "0.5", True):
        with pytest.raises(ValueError, match="min_salient_fraction must be a number in"):
            FanIn(ablation=True, min_salient_fraction=bad)


# --- bad input ------------------------------------------------------------------------------------------

def test_bad_sparsity_types_name_the_argument():
    with pytest.raises(ValueError, match=r"Unknown sparsity_type 'blocky'; known: .*'unstructured'.*'fan_in'.*'1x4'"):
        ms.sparse_optimizer(mlp(), "sgd", sparsity_type="blocky")
    for bad in ["2:", "a:4", "2:4:8"]:
        with pytest.raises(ValueError, match=rf"sparsity_type='{bad}' is not a valid 'N:M' pattern"):
            ms.sparse_optimizer(mlp(), "sgd", sparsity_type=bad)
    with pytest.raises(ValueError, match="N must be smaller than M"):
        get_sparsity_type("4:2")
    with pytest.raises(ValueError, match=r"sparsity_type='2:4' keeps exactly 2 of every 4 weights, i.e. "
                                         r"sparsity=0.5; got sparsity=0.9"):
        ms.sparse_optimizer(mlp(), "sgd", sparsity=0.9, sparsity_type="2:4")
    with pytest.warns(UserWarning, match=r"distribution='erk' is ignored: sparsity_type='2:4'"):
        ms.sparse_optimizer(mlp(), "sgd", distribution="erk", sparsity_type="2:4")
    with pytest.raises(ValueError, match="layer_sparsity= cannot apply with sparsity_type='2:4'"):
        ms.sparse_optimizer(mlp(), "sgd", layers=ms.LayerSelection(layer_sparsity={"h1": 0.3}), sparsity_type="2:4")
    with pytest.raises(ValueError, match="method='dense' keeps every weight"):
        ms.sparse_optimizer(mlp(), "sgd", method="dense", sparsity_type="1x4")
    with pytest.raises(ValueError, match="cannot be applied to the method instance RigL"):
        ms.sparse_optimizer(mlp(), "sgd", method=RigL(), sparsity_type="1x4")
    with pytest.raises(ValueError, match="min_salient_fraction must be a number in"):
        FanIn(ablation=True, min_salient_fraction=2)


def test_a_kernel_the_blocks_cannot_tile_is_refused_naming_the_layer():
    inputs = keras.Input((6, 6, 3))
    hidden = L.Conv2D(8, 3, name="stem")(inputs)
    model = keras.Model(inputs, L.Dense(6, name="out")(L.GlobalAveragePooling2D()(hidden)))
    with pytest.raises(ValueError, match=r"sparsity_type='1x4'.*kernel 'stem/kernel'.*27 x 8 matrix.*"
                                         r"keep_dense=\[\.\.\.\]"):
        ms.sparse_optimizer(model, "sgd", sparsity_type="1x4")
    with pytest.raises(ValueError, match=r"sparsity_type='4x1'.*kernel 'out/kernel'"):
        ms.sparse_optimizer(model, "sgd", sparsity_type="4x1", layers=ms.LayerSelection(keep_dense=["stem"]))
    # the way out the message gives works
    assert [u.key for u in ms.sparse_optimizer(model, "sgd", sparsity_type="1x4",
                                               layers=ms.LayerSelection(keep_dense=["stem"])).units] \
        == ["out/kernel"]


# --- SRigL neuron ablation ------------------------------------------------------------------------------

def test_ablation_masks_weak_neurons_whole_and_keeps_the_layer_count():
    rng = np.random.default_rng(0)
    rows, cols, sparsity = 20, 10, 0.6
    structure = FanIn(ablation=True, min_salient_fraction=0.3)
    mask = structure.random_mask((rows, cols), sparsity, key_hash=1, seed=0)
    weights = rng.normal(size=(rows, cols)).astype("float32")
    weights[:, [2, 7]] *= 1e-6                      # two neurons whose weights all became tiny
    gradients = rng.normal(size=(rows, cols)).astype("float32")
    gradients[:, [2, 7]] *= 1e-6
    n_target = structure.kept_count((rows, cols), sparsity)
    n_grow = int(0.3 * n_target)                    # RigL's drop fraction: 30% of the active weights are not salient
    new = _np(structure.update(tf.constant(mask), tf.constant(np.abs(weights)), tf.constant(np.abs(gradients)),
                               n_target, n_grow))
    fan_in = new.sum(axis=0)
    assert fan_in[2] == fan_in[7] == 0
    assert int(new.sum()) == n_target
    alive = np.delete(fan_in, [2, 7])
    assert alive.min() >= kept_count(rows, sparsity) and alive.max() - alive.min() <= 1
    # without ablation the same update keeps every neuron at k
    plain = _np(FanIn().update(tf.constant(mask), tf.constant(np.abs(weights)), tf.constant(np.abs(gradients)),
                               n_target, n_grow))
    assert (plain.sum(axis=0) == kept_count(rows, sparsity)).all()


def test_ablation_never_empties_more_neurons_than_the_layer_count_allows():
    # Salient weights per neuron: 8, 8, 2, 2, 2, 2 (k = 4). With min_salient_fraction=1 four neurons are weak,
    # but 24 weights need at least 3 neurons of 8 inputs: only the 3 least salient are ablated.
    rows, cols = 8, 6
    structure = FanIn(ablation=True, min_salient_fraction=1.0)
    mask = np.zeros((rows, cols), "float32")
    mask[:4] = 1
    drop = np.zeros((rows, cols), "float32")
    drop[:4, :2], drop[:2, 2:], drop[2:4, 2:] = 5.0, 1.0, 0.1
    grow = np.zeros((rows, cols), "float32")
    grow[4:, :2] = 5.0
    n_target = structure.kept_count((rows, cols), 0.5)
    new = _np(structure.update(tf.constant(mask), tf.constant(drop), tf.constant(grow), n_target, 8))
    fan_in = new.sum(axis=0)
    assert int(new.sum()) == n_target == 24
    assert fan_in[0] == fan_in[1] == 8 and np.count_nonzero(fan_in) == 3


def test_ablated_neurons_are_exported_away_with_unchanged_outputs():
    keras.utils.set_random_seed(0)
    model = mlp(32)
    x, y = data()
    optimizer = ms.sparse_optimizer(model, keras.optimizers.SGD(0.01), sparsity=0.8, method="rigl",
                                    sparsity_type=FanIn(ablation=True), layers=ms.LayerSelection(keep_dense=["out"]),
                                        schedule=ms.UpdateSchedule(update_every=2), total_steps=8)
    # Six neurons of h1 become negligible (tiny inputs and outputs): ablation must mask them whole.
    h1, h2 = model.get_layer("h1"), model.get_layer("h2")
    h1.kernel.assign(_np(h1.kernel) * np.where(np.arange(32) < 6, 1e-6, 1.0).astype("float32"))
    h2.kernel.assign(_np(h2.kernel) * np.where(np.arange(32) < 6, 1e-6, 1.0).astype("float32")[:, None])
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    masks = optimizer.masks()
    fan_in = masks["h1/kernel"].sum(axis=0)
    assert (fan_in[:6] == 0).all()
    assert int(fan_in.sum()) == FanIn().kept_count((16, 32), find_sparse_optimizer(model).units[0].sparsity)

    for source_model in (model, ms.strip(model)):
        slim, report = ms.export_with_report(source_model, source="zeros")
        assert slim.get_layer("h1").units <= 26
        np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
        assert ms.count_flops(slim) == ms.structure_of(model, source="zeros")["alive_flops"] < ms.count_flops(model)


def residual_cnn():
    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    a = L.ReLU()(L.BatchNormalization(name="bn0")(stem))
    b = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(8, 1, name="c1")(a)))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(8, 1, use_bias=False, name="c2")(b))
    joined = L.ReLU()(L.Add()([a, b]))
    return keras.Model(inputs, L.Dense(4, name="out")(L.GlobalAveragePooling2D()(joined)), name="rescnn")


def test_a_residual_cnn_exports_masked_channels_across_the_add():
    keras.utils.set_random_seed(0)
    model = residual_cnn()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        optimizer = ms.sparse_optimizer(model, "adam", sparsity=0.5, method="rigl", sparsity_type="fan_in",
                                        layers=ms.LayerSelection(keep_dense=["out"]),
                                            schedule=ms.UpdateSchedule(update_every=2), total_steps=8)
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)        # BatchNorm statistics and biases move
    masks = optimizer.masks()
    masks["c1/kernel"][..., [1, 5]] = 0                        # two neurons of the inner conv
    masks["stem/kernel"][..., 2] = 0                           # channel 2 of the residual group dies only
    masks["c2/kernel"][..., 2] = 0                             # when every producer of the Add loses it
    masks["c2/kernel"][..., 6] = 0                             # ... so channel 6 (c2 only) must stay
    optimizer.set_masks(masks)
    slim, report = ms.export_with_report(model, source="zeros")
    assert slim.get_layer("c1").filters == 6
    assert slim.get_layer("stem").filters == slim.get_layer("c2").filters == 7
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert ms.count_flops(slim) == ms.count_flops(model, alive=report.effective_masks)
    assert ms.count_flops(slim) == ms.structure_of(model, source="zeros")["alive_flops"]


def test_source_zeros_takes_no_threshold():
    model = residual_cnn()
    with pytest.raises(ValueError, match="source='zeros' removes exactly the channels whose weights are all zero "
                                         "and takes no threshold; got threshold=0.01"):
        ms.export(model, source="zeros", threshold=0.01)
    with pytest.warns(UserWarning, match="removed nothing.*no removable channel has all its incoming weights zero"):
        ms.export(model, source="zeros")


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_ablation_on_an_output_layer_warns_naming_it(kind):
    if kind == "sequential":
        model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, name="hidden"),
                                  keras.layers.Dense(4, name="logits")])
    else:
        inputs = keras.Input((12,))
        model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(keras.layers.Dense(16, name="hidden")(inputs)))
    with pytest.warns(UserWarning, match=r"\['logits'\].*keep_dense"):
        ms.sparse_optimizer(model, "sgd", 0.5, "rigl", sparsity_type=FanIn(ablation=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ms.sparse_optimizer(keras.models.clone_model(model), "sgd", 0.5, "rigl", sparsity_type=FanIn(ablation=True),
                            layers=ms.LayerSelection(keep_dense=["logits"]), total_steps=10)
    assert not [w for w in caught if "ablation" in str(w.message)]    # kept dense: nothing to say
