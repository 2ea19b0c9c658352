"""The bad-input battery (issue 10): every bad argument is an error or a warning that names it."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse.sparse as mss
from morphsparse.sparse import SET


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(12, name="b"),
                             keras.layers.Dense(3, name="c")], name="mlp")


def _make(**options):
    options = {"sparsity": 0.8, "method": "rigl", **options}
    return mss.sparse_optimizer(_mlp(), "sgd", **options)


@pytest.mark.parametrize("options,error,match", [
    ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": "high"}, TypeError, r"sparsity must be a number"),
    ({"method": "lottery"}, ValueError, "Unknown sparse training method 'lottery'"),
    ({"distribution": "normal"}, ValueError, "Unknown distribution"),
    (lambda: {"distribution": mss.ErdosRenyiKernel(power=float("nan"))}, ValueError,
     r"power must be in \[0, inf\], got nan"),
    (lambda: {"distribution": mss.ErdosRenyiKernel(power=float("inf"))}, ValueError, r"power must be in"),
    (lambda: {"distribution": mss.ErdosRenyiKernel(power=-1.0)}, ValueError, r"power must be in \[0"),
    ({"power": 0.5, "distribution": "uniform"}, ValueError, r"power=0.5 applies only to distribution='erk'"),
    (lambda: {"schedule": mss.UpdateSchedule(begin_step=50, end_step=10)}, ValueError,
     r"end_step=10 must be greater than begin_step=50"),
    (lambda: {"schedule": mss.UpdateSchedule(end_step=-5)}, ValueError, r"end_step must be >= 0, got -5"),
    ({"total_steps": -100}, ValueError, r"total_steps must be >= 1, got -100"),
    (lambda: {"total_steps": 100, "schedule": mss.UpdateSchedule(end_step=50)}, ValueError,
     r"the schedule ends at end_step=50 and total_steps=100 would set the end again.*give one of them"),
    (lambda: {"total_steps": 4, "schedule": mss.UpdateSchedule(begin_step=3)}, ValueError,
     r"begins at begin_step=3 but its end_fraction=0.75 of total_steps=4 ends it at step 3"),
    (lambda: {"schedule": mss.UpdateSchedule(update_every=2.7)}, ValueError,
     r"update_every must be a whole number of steps, got 2.7"),
    (lambda: {"schedule": mss.UpdateSchedule(update_every="ten")}, TypeError,
     r"update_every must be a whole number of steps, got 'ten'"),
    (lambda: {"schedule": mss.UpdateSchedule(update_every=0)}, ValueError, r"update_every must be >= 1"),
    ({"seed": "abc"}, TypeError, r"seed must be a whole number, got 'abc'"),
    (lambda: {"schedule": mss.UpdateSchedule(end_fraction=-0.5)}, ValueError,
     r"end_fraction must be in \(0, 1\], got -0.5"),
    (lambda: {"schedule": mss.UpdateSchedule(end_fraction=1.5)}, ValueError, r"end_fraction must be in \(0, 1\]"),
    ({"drop_fraction": 1.5}, ValueError, r"drop_fraction must be in \[0, 1\]"),
    ({"method": SET(drop_fraction=0.2), "drop_fraction": 0.1}, ValueError,
     r"drop_fraction=0.1 cannot be applied to the method instance SET"),
    ({"method": "static", "drop_fraction": 0.1}, ValueError, r"drop_fraction=0.1 has no effect with method='static'"),
    (lambda: {"method": "static", "schedule": mss.UpdateSchedule(update_every=10)}, ValueError,
     r"schedule= has no effect with method='static'"),
    ({"method": "magnitude"}, ValueError, r"method='magnitude' needs to know when its schedule ends.*total_steps="),
    (lambda: {"layers": mss.LayerSelection(keep_dense=["a"], layer_sparsity={"a": 0.5})}, ValueError,
     r"layer 'a' is named by both keep_dense and layer_sparsity\['a'\]"),
    (lambda: {"layers": mss.LayerSelection(keep_dense="a")}, TypeError,
     r"keep_dense must be a list.*keep_dense=\['a'\]"),
    (lambda: {"layers": mss.LayerSelection(keep_dense=["missing"])}, ValueError,
     "keep_dense names 'missing', which matches no sparsifiable layer"),
    (lambda: {"layers": mss.LayerSelection(layer_sparsity={"nope*": 0.2})}, ValueError,
     r"layer_sparsity names 'nope\*'"),
    (lambda: {"layers": mss.LayerSelection(layer_sparsity={"a": 1.0})}, ValueError, r"layer_sparsity\['a'\]"),
    ({"layers": {"keep_dense": ["a"]}}, TypeError, r"layers must be an ms.LayerSelection\(keep_dense=..."),
    ({"distribution": lambda shapes, s: {"wrong": s}}, ValueError, r"distribution=.* must return .*keys"),
    ({"distribution": lambda shapes, s: {k: 2.0 for k in shapes}}, ValueError, r"distribution\(\)\['a/kernel'\]"),
    (lambda: {"layers": mss.LayerSelection(include=["nothing_here"])}, ValueError, r"include names 'nothing_here'"),
    (lambda: {"layers": mss.LayerSelection(include={"a": ["weights"]})}, ValueError,
     r"layer 'a' \(Dense\) has no weight 'weights'"),
    ({"method": "snfs", "decay": 0.5, "bogus": 1}, TypeError,
     r"sparse_optimizer\(\) got unexpected keyword argument\(s\) \['bogus'\].*method='snfs', which takes \['decay'"),
    ({"method": "static", "decay": 0.5}, TypeError, r"argument\(s\) \['decay'\].*method='static', which takes"),
    # truthy strings are not True; an SNFS decay outside [0, 1) would never update or diverge
    (lambda: {"schedule": mss.UpdateSchedule(skip_optimizer_step="no")}, TypeError,
     r"skip_optimizer_step must be True or False, got str 'no'"),
    ({"rescale_init": "False"}, TypeError, r"rescale_init must be True or False, got str 'False'"),
    ({"rescale_init": 1}, TypeError, r"rescale_init must be True or False"),
    ({"method": "snfs", "decay": 1.5}, ValueError, r"decay must be a number in \[0, 1\).*got 1.5"),
    ({"method": "snfs", "decay": 1.0}, ValueError, r"decay must be a number in \[0, 1\)"),
    ({"method": "snfs", "decay": "0.9"}, ValueError, r"decay must be a number in \[0, 1\)"),
    # a callable schedule with no final sparsity: the message names schedule= (what was passed) and how to say it,
    # not target_sparsity=, which sparse_optimizer does not take
    ({"schedule": lambda step: (True, 0.8), "total_steps": 100}, ValueError,
     r"schedule=<function .*final_sparsity attribute.*PruningScheduleAdapter\(your_schedule, target_sparsity="),
])
def test_bad_arguments_name_themselves(options, error, match):
    # a row given as a function builds its values inside the check: a bad value object raises when it is made
    with pytest.raises(error, match=match):
        _make(**(options() if callable(options) else options))


def test_a_sparse_optimizer_takes_numpy_booleans_and_numbers():
    optimizer = _make(method="snfs", decay=np.float32(0.5), schedule=mss.UpdateSchedule(
        skip_optimizer_step=np.bool_(True)), rescale_init=np.bool_(False))
    assert optimizer.skip_optimizer_step is True and optimizer.method.decay == 0.5
    with pytest.raises(TypeError, match="skip_optimizer_step must be True or False"):
        mss.SparseOptimizer(keras.optimizers.SGD(), method=optimizer.method, schedule=optimizer.schedule,
                            skip_optimizer_step="no")


def test_model_and_optimizer_arguments():
    with pytest.raises(TypeError, match="sparse_optimizer expects a keras.Model as model="):
        mss.sparse_optimizer("model", "sgd")
    with pytest.raises(ValueError, match="not built"):
        mss.sparse_optimizer(keras.Sequential([keras.layers.Dense(3)]), "sgd")
    with pytest.raises(ValueError, match="optimizer must be a keras optimizer or its name"):
        mss.sparse_optimizer(_mlp(), "no_such_optimizer")
    model = _mlp()
    optimizer = mss.sparse_optimizer(model, "sgd", 0.5)
    with pytest.raises(ValueError, match="already sparse"):
        mss.sparse_optimizer(model, "sgd", 0.5)
    with pytest.raises(ValueError, match="already a SparseOptimizer"):
        mss.sparse_optimizer(_mlp(), optimizer, 0.5)
    nothing = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.ReLU()])
    with pytest.raises(ValueError, match="nothing to sparsify"):
        mss.sparse_optimizer(nothing, "sgd", 0.5)
    with pytest.raises(ValueError, match="SparseOptimizer does not take clipnorm="):
        mss.SparseOptimizer(keras.optimizers.SGD(), clipnorm=1.0)


def test_apply_gradients_with_no_pairs_says_what_to_pass():
    """An empty list (or a zip already iterated by an earlier call) is an error that says what to pass, not
    Python's 'not enough values to unpack'."""
    model = _mlp()
    optimizer = mss.sparse_optimizer(model, "sgd", 0.8, "rigl", total_steps=100)
    with pytest.raises(ValueError, match=r"apply_gradients\(grads_and_vars\) got no \(gradient, variable\) pairs: "
                                         r"pass zip\(gradients, model.trainable_variables\)"):
        optimizer.apply_gradients([])
    pairs = zip([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    optimizer.apply_gradients(pairs)                    # fine once ...
    with pytest.raises(ValueError, match="already iterated"):
        optimizer.apply_gradients(pairs)                # ... the spent zip is refused
    assert int(optimizer.iterations.numpy()) == 1


def test_extreme_sparsity_warns_that_counts_round_up():
    with pytest.warns(UserWarning, match=r"sparsity=0.9999 asks to keep .* each kernel keeps at least one weight"):
        first = _make(sparsity=0.9999, method="static")
    with pytest.warns(UserWarning, match="sparsity=0.99999"):
        second = _make(sparsity=0.99999, method="static")
    for key, mask in first.masks().items():
        np.testing.assert_array_equal(mask, second.masks()[key])


@keras.saving.register_keras_serializable(package="morphsparse_tests")
class BigCustom(keras.layers.Layer):
    def __init__(self, units=40, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, inputs):
        return inputs @ self.kernel

    def get_config(self):
        return dict(super().get_config(), units=self.units)


def _custom_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((50,)), BigCustom(40, name="big"), keras.layers.Dense(3, name="head")])


def test_custom_layer_is_listed_as_not_masked_unless_included():
    with pytest.warns(UserWarning, match=r"not masked .*include=\[name\].*big \(BigCustom: kernel, 2,000 weights\)"):
        optimizer = mss.sparse_optimizer(_custom_model(), "sgd", 0.9, "static", "uniform")
    assert [u.key for u in optimizer.units] == ["head/kernel"]
    report = mss.sparsity_report(optimizer.bound_model())
    assert report.sparsity > 0.85 and report.overall_sparsity < 0.1          # the report tells both
    assert "not masked" in str(report)
    model = _custom_model()
    included = mss.sparse_optimizer(model, "sgd", 0.9, "static", "uniform", layers=mss.LayerSelection(include=["big"]))
    assert [u.key for u in included.units] == ["big/kernel", "head/kernel"]
    assert mss.sparsity_report(model).overall_sparsity == pytest.approx(mss.sparsity_report(model).sparsity)


def test_frozen_layer_is_named():
    model = _mlp()
    model.get_layer("b").trainable = False
    with pytest.warns(UserWarning, match=r"not masked: layer\(s\) \['b'\] are frozen"):
        optimizer = mss.sparse_optimizer(model, "sgd", 0.5)
    assert [u.key for u in optimizer.units] == ["a/kernel", "c/kernel"]
    later = _mlp()
    sparse = mss.sparse_optimizer(later, "sgd", 0.5)
    later.get_layer("a").trainable = False
    fresh = mss.SparseOptimizer.from_config(sparse.get_config())
    with pytest.raises(ValueError, match=r"masked kernel 'a/kernel' is not among .*frozen"):
        fresh.build(later.trainable_variables)


def test_snip_with_an_unbatched_dataset_says_batch_it():
    rng = np.random.default_rng(0)
    dataset = tf.data.Dataset.from_tensor_slices((rng.normal(size=(16, 10)).astype("float32"),
                                                  rng.integers(0, 3, 16)))
    with pytest.raises(ValueError, match=r"data= is a tf.data.Dataset of single examples.*dataset.batch"):
        mss.sparse_optimizer(_mlp(), "sgd", 0.5, "snip", data=dataset, loss="sparse_categorical_crossentropy")


def test_erk_power_solves_fast_for_large_and_zero_powers():
    optimizer = _make(distribution=mss.ErdosRenyiKernel(power=0.0), method="static")
    assert all(math.isclose(u.sparsity, 0.8, abs_tol=0.01) for u in optimizer.units)
