"""Which layers and models can be sparsified; every model kind keeps its class and round-trips."""

import keras
import numpy as np
import pytest

import morphsparse.sparse as mss
from morphsparse.sparse.masks import kept_count
from morphsparse.sparse.kernels import maskable_kernels


def _np(variable):
    return keras.ops.convert_to_numpy(variable)


@keras.saving.register_keras_serializable(package="morphsparse_tests")
class ScaledDense(keras.layers.Dense):
    """A user subclass of Dense: must be found and masked like Dense."""

    def call(self, inputs):
        return super().call(inputs) * 0.5


LAYER_CASES = {
    "dense": ((6,), lambda: keras.layers.Dense(5)),
    "dense_subclass": ((6,), lambda: ScaledDense(5)),
    "conv1d": ((8, 3), lambda: keras.layers.Conv1D(4, 3)),
    "conv2d": ((6, 6, 3), lambda: keras.layers.Conv2D(4, 3)),
    "conv3d": ((4, 4, 4, 2), lambda: keras.layers.Conv3D(3, 2)),
    "conv1d_transpose": ((5, 3), lambda: keras.layers.Conv1DTranspose(4, 3)),
    "conv2d_transpose": ((4, 4, 3), lambda: keras.layers.Conv2DTranspose(4, 3)),
    "conv3d_transpose": ((3, 3, 3, 2), lambda: keras.layers.Conv3DTranspose(3, 2)),
    "separable_conv1d": ((8, 4), lambda: keras.layers.SeparableConv1D(6, 3)),
    "separable_conv2d": ((6, 6, 4), lambda: keras.layers.SeparableConv2D(6, 3)),
    "depthwise_conv1d": ((8, 4), lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2)),
    "depthwise_conv2d": ((6, 6, 4), lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_types_are_masked_and_trained(case):
    shape, make_layer = LAYER_CASES[case]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(make_layer()(inputs)))
    model = keras.Model(inputs, outputs)
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.1, momentum=0.9), 0.6, "rigl", "uniform",
                                  schedule=mss.UpdateSchedule(update_every=1, end_step=3))
    assert len(sparse.units) == 2, [u.key for u in sparse.units]
    model.compile(sparse, "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((8,) + shape, dtype=np.float32), rng.random((8, 2), dtype=np.float32),
              batch_size=4, verbose=0)
    assert int(_np(sparse.mask_updates)) == 2
    for unit in sparse.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, 0.6), unit.key
        assert not np.any(_np(unit.kernel)[mask == 0]), unit.key


def test_embedding_and_attention_projections():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(20, 8, name="embed")(tokens)
    attended = keras.layers.MultiHeadAttention(2, 4, name="mha")(embedded, embedded)
    model = keras.Model(tokens, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(attended)))
    sparse = mss.sparse_optimizer(model, keras.optimizers.Adam(0.01), 0.5, "rigl", "erk",
                                  schedule=mss.UpdateSchedule(update_every=1, end_step=3))
    keys = [u.key for u in sparse.units]
    assert "embed/embeddings" in keys and sum(k.startswith("mha/") for k in keys) == 4
    model.compile(sparse, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 20, (8, 5)), rng.integers(0, 3, 8), batch_size=4, verbose=0)
    for unit in sparse.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, unit.sparsity), unit.key
        assert not np.any(_np(unit.kernel)[mask == 0]), unit.key


def test_separable_depthwise_kernel_is_optional():
    layer = keras.layers.SeparableConv2D(4, 3)
    assert maskable_kernels(layer) == ("pointwise_kernel",)
    assert maskable_kernels(layer, mask_separable_depthwise=True) == ("depthwise_kernel", "pointwise_kernel")
    assert maskable_kernels(keras.layers.BatchNormalization()) == ()


@keras.saving.register_keras_serializable(package="morphsparse_tests")
class TwoTower(keras.Model):
    """A subclassed model with a nested block held in a list."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.blocks = [keras.layers.Dense(units, activation="relu", name="inner1"),
                       keras.layers.Dense(units, activation="relu", name="inner2")]
        self.head = keras.layers.Dense(2, name="out")

    def call(self, inputs):
        x = inputs
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def get_config(self):
        return dict(super().get_config(), units=self.units)


def _nested_functional():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(7, name="n1"),
                              keras.layers.Dense(7, name="n2")], name="block")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="stem")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="top")(inner(x)), name="outer")


MODEL_CASES = {
    "sequential": lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="s1"),
                                            keras.layers.Dense(2, name="s2")]),
    "functional": lambda: (lambda i: keras.Model(i, keras.layers.Dense(2, name="f2")(
        keras.layers.Dense(6, name="f1")(i))))(keras.Input((4,))),
    "nested": _nested_functional,
    "subclassed": lambda: TwoTower(name="two_tower"),
}
EXPECTED_KEYS = {
    "sequential": ["s1/kernel", "s2/kernel"], "functional": ["f1/kernel", "f2/kernel"],
    "nested": ["stem/kernel", "block/n1/kernel", "block/n2/kernel", "top/kernel"],
    "subclassed": ["inner1/kernel", "inner2/kernel", "out/kernel"],
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_kinds_found_recursively_and_round_trip(case, tmp_path):
    keras.utils.set_random_seed(0)
    model = MODEL_CASES[case]()
    if not model.built:
        model(np.zeros((1, 4), "float32"))     # a subclassed model builds its layers when called
    kind = type(model)
    sparse = mss.sparse_optimizer(model, keras.optimizers.SGD(0.1, momentum=0.9), 0.5, "rigl", "uniform",
                                  schedule=mss.UpdateSchedule(update_every=1, end_step=4))
    assert type(model) is kind                 # no new model class, no wrapper layers
    assert sorted(u.key for u in sparse.units) == sorted(EXPECTED_KEYS[case])
    model.compile(sparse, "mse")
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    history = model.fit(x, np.zeros((8, 2), "float32"), batch_size=4, verbose=0)
    assert int(_np(sparse.mask_updates)) == 2 and "sparsity" in history.history
    for unit in sparse.units:
        mask = _np(unit.mask)
        assert int(mask.sum()) == kept_count(mask.size, 0.5), unit.key
        assert not np.any(_np(unit.kernel)[mask == 0]), unit.key
    path = tmp_path / f"{case}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is kind
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for key, mask in sparse.masks().items():
        np.testing.assert_array_equal(mss.find_sparse_optimizer(loaded).masks()[key], mask)
    plain = mss.strip(loaded)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


class _SharedEmbeddingBlock(keras.layers.Layer):
    """Holds an Embedding that its parent model also keeps as an attribute (as keras_hub backbones do)."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = embedding

    def call(self, ids):
        return self.token_embedding(ids)


class _IdleLayer(keras.layers.Layer):
    """A weightless layer a model creates but its forward pass never calls."""

    def call(self, x):
        return x


def test_a_layer_reachable_along_two_paths_gets_one_mask_and_trains():
    embedding = keras.layers.Embedding(50, 8, name="token_embedding")
    ids = keras.Input((6,), dtype="int32")
    block = _SharedEmbeddingBlock(embedding, name="embeddings")
    x = keras.layers.GlobalAveragePooling1D()(block(ids))
    model = keras.Model(ids, keras.layers.Dense(3, name="head")(x))
    model.token_embedding = embedding               # the second path to the same layer
    optimizer = mss.sparse_optimizer(model, keras.optimizers.Adam(1e-2), 0.5, "rigl",
                                     schedule=mss.UpdateSchedule(update_every=1),
                                     total_steps=4)
    keys = [unit.key for unit in optimizer.units]
    assert sum(key.endswith("token_embedding/embeddings") for key in keys) == 1, keys
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(0, 50, (8, 6)).astype("int32")
    model.fit(x, np.zeros(8, "int32"), batch_size=4, epochs=1, verbose=0)
    unit = next(u for u in optimizer.units if u.key.endswith("token_embedding/embeddings"))
    table, mask = _np(model.get_layer("embeddings").token_embedding.embeddings), _np(unit.mask)
    assert int(mask.sum()) == kept_count(table.size, unit.sparsity)
    assert not np.any(table[mask == 0])           # the one mask holds: pruned entries are exact zeros


def test_a_functional_model_with_a_layer_it_never_calls_is_built_from_its_inputs():
    ids = keras.Input((6,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(ids))
    model = keras.Model(ids, keras.layers.Dense(3)(x))
    model.idle = _IdleLayer(name="idle")            # tracked, never built (keras_hub's AlibiBias in Bloom)
    optimizer = mss.sparse_optimizer(model, "adam", 0.5, "static")
    assert len(optimizer.units) == 2


def test_a_layer_the_call_never_uses_is_left_out_with_a_warning():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.head = keras.layers.Dense(3)
            self.spare = keras.layers.Dense(5)          # held, never called: never built, no weights

        def call(self, x):
            return self.head(self.hidden(x))

    model = Net()
    model(np.zeros((1, 5), "float32"))
    with pytest.warns(UserWarning, match=r"not masked: layer\(s\) \['dense_2'\] hold no weights"):
        optimizer = mss.sparse_optimizer(model, keras.optimizers.SGD(0.1), sparsity=0.5, method="static")
    assert sorted(unit.layer for unit in optimizer.units) == ["dense", "dense_1"]
