"""Knowledge distillation (morphsparse.morph.distill): the loss, the frozen teacher, argument checks."""

import math

import keras
import numpy as np
import pytest

import morphsparse as ms

L = keras.layers
CLASSES = 5


def mlp(seed, units=16, classes=CLASSES, name=None):
    """A small logits model on 8 features (BatchNorm and Dropout so training=False for the teacher matters)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), L.Dense(units, activation="relu"), L.BatchNormalization(),
                             L.Dropout(0.2), L.Dense(classes)], name=name)


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, CLASSES, n)


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled(distiller, lr=1e-2):
    distiller.compile(keras.optimizers.Adam(lr), loss(), metrics=["accuracy"])
    return distiller


def kl_numpy(teacher_logits, student_logits, t):
    def log_softmax(z):
        z = z / t - np.max(z / t, axis=-1, keepdims=True)
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    lt, ls = log_softmax(np.asarray(teacher_logits, np.float64)), log_softmax(np.asarray(student_logits, np.float64))
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))


def test_exported_names():
    from morphsparse.morph.distill import Distiller, distill

    assert ms.distill is distill and ms.morph.distill is distill and callable(ms.distill)
    assert ms.Distiller is Distiller and ms.morph.Distiller is Distiller


def test_weight_zero_is_the_compiled_loss_and_the_formula_holds():
    teacher, student = mlp(0, 32, name="teacher"), mlp(1, name="student")
    x, y = data()
    student.compile(loss=loss())
    y_pred = student(x, training=False)
    plain = float(student.compute_loss(x=x, y=y, y_pred=y_pred, training=False))
    d0 = compiled(ms.distill(student, teacher, weight=0.0))
    assert float(d0.compute_loss(x=x, y=y, y_pred=y_pred, training=False)) == pytest.approx(plain, abs=1e-5)
    # any weight: (1 - w) * task + w * T^2 * KL(teacher || student), checked against numpy
    d = compiled(ms.distill(student, teacher, temperature=3.0, weight=0.3))
    kl = kl_numpy(teacher(x, training=False), y_pred, 3.0)
    assert kl > 0.01
    expected = 0.7 * plain + 0.3 * 9.0 * kl
    assert float(d.compute_loss(x=x, y=y, y_pred=y_pred, training=False)) == pytest.approx(expected, rel=1e-4)


def test_weight_one_with_a_copy_of_the_teacher_is_zero():
    teacher = mlp(0)
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    x, y = data()
    d = compiled(ms.distill(student, teacher, weight=1.0))
    y_pred = d(x, training=False)
    assert abs(float(d.compute_loss(x=x, y=y, y_pred=y_pred, training=False))) < 1e-5
    assert abs(float(d.distillation_loss(teacher(x, training=False), y_pred))) < 1e-5


def test_fit_trains_only_the_student_in_place():
    teacher, student = mlp(0, 32), mlp(1)
    x, y = data()
    before_t, before_s = teacher.get_weights(), student.get_weights()   # BatchNorm moving statistics included
    d = compiled(ms.distill(student, teacher))
    assert [id(v) for v in d.trainable_weights] == [id(v) for v in student.trainable_weights]
    history = d.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert math.isfinite(history.history["loss"][-1]) and "accuracy" in history.history
    assert all(np.array_equal(a, b) for a, b in zip(before_t, teacher.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(before_s, student.get_weights()))
    assert d.student is student and teacher.trainable                 # the user's teacher flag is left as it was
    with pytest.raises(NotImplementedError, match="student"):
        d.get_config()


def test_the_student_learns_to_match_the_teacher():
    teacher, student = mlp(0, 32), mlp(1)
    x, y = data(128)
    d = compiled(ms.distill(student, teacher, temperature=2.0, weight=1.0))

    def kl():
        return float(d.distillation_loss(teacher(x, training=False), student(x, training=False)))

    before = kl()
    d.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert kl() < 0.7 * before


@pytest.mark.parametrize("value", [0, -1, 0.0, "4", True, None, float("nan"), float("inf")])
def test_bad_temperature(value):
    with pytest.raises((TypeError, ValueError), match="temperature"):
        ms.distill(mlp(1), mlp(0), temperature=value)


@pytest.mark.parametrize("value", [1.5, -0.1, "0.5", True, float("nan")])
def test_bad_weight(value):
    with pytest.raises((TypeError, ValueError), match="weight"):
        ms.distill(mlp(1), mlp(0), weight=value)


def test_bad_models():
    teacher = mlp(0, name="big")
    with pytest.raises(ValueError, match=r"student 'small' \(None, 3\).*teacher 'big' \(None, 5\)"):
        ms.distill(mlp(1, classes=3, name="small"), teacher)
    inputs = keras.Input((8,))
    two = keras.Model(inputs, [L.Dense(CLASSES)(inputs), L.Dense(CLASSES)(inputs)], name="two_heads")
    with pytest.raises(ValueError, match="'two_heads' has 2 outputs"):
        ms.distill(two, teacher)
    with pytest.raises(ValueError, match="same model"):
        ms.distill(teacher, teacher)
    with pytest.raises(TypeError, match="student must be a keras.Model"):
        ms.distill("student", teacher)


def test_predict_is_the_student():
    teacher, student = mlp(0, 32), mlp(1)
    x, y = data()
    d = compiled(ms.distill(student, teacher))
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    d.fit(x, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
