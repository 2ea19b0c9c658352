"""Update schedules, drop-fraction decays, gradual pruning and the tensorflow-model-optimization adapter."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import morphsparse.sparse as mss
from morphsparse.sparse.schedules import (ConstantDropFraction, CosineDropFraction, InversePowerDropFraction,
                                          PolynomialSchedule, PruningScheduleAdapter, UpdateSchedule,
                                          get_drop_fraction, get_schedule)


def test_cosine_drop_fraction_matches_formula():
    fraction = CosineDropFraction(0.3)
    for step in (0, 250, 500, 750, 1000):
        expected = 0.15 * (1 + math.cos(math.pi * step / 750)) if step <= 750 else 0.0
        assert float(fraction(step, 750)) == pytest.approx(expected, abs=1e-6)


def test_constant_and_inverse_power():
    assert float(ConstantDropFraction(0.2)(999, 10)) == pytest.approx(0.2)
    inverse = InversePowerDropFraction(0.3, power=1.0, period=100)
    assert float(inverse(0, 1)) == pytest.approx(0.3)
    assert float(inverse(100, 1)) == pytest.approx(0.15)
    assert isinstance(get_drop_fraction("cosine", 0.3), CosineDropFraction)
    assert isinstance(get_drop_fraction(0.1), ConstantDropFraction)
    with pytest.raises(ValueError, match="Unknown drop fraction"):
        get_drop_fraction("linear")


def test_update_steps_every_delta_t_until_end():
    schedule = UpdateSchedule(update_every=100, begin_step=0, end_step=None)
    steps = [s for s in range(0, 1000) if bool(schedule.is_update_step(s, tf.constant(750, tf.int64)))]
    assert steps == [0, 100, 200, 300, 400, 500, 600, 700]
    assert schedule.last_update_step(750) == 700 and schedule.last_update_step(-1) is None
    # No end known (-1): updates go on, and the cosine decay stays at its initial fraction.
    assert [s for s in range(0, 500) if bool(schedule.is_update_step(s, -1))] == [0, 100, 200, 300, 400]
    assert float(CosineDropFraction(0.3)(400, -1)) == pytest.approx(0.3)
    own_end = UpdateSchedule(update_every=50, begin_step=10, end_step=120)
    assert [s for s in range(200) if bool(own_end.is_update_step(s, tf.constant(-1, tf.int64)))] == [10, 60, 110]


def test_polynomial_schedule_zhu_gupta():
    schedule = PolynomialSchedule(initial_sparsity=0.0, update_every=100, begin_step=100, end_step=1100)
    end = tf.constant(-1, tf.int64)
    for step in (0, 100, 600, 1100, 5000):
        p = min(max((step - 100) / 1000, 0.0), 1.0)
        assert float(schedule.layer_sparsity(0.9, step, end)) == pytest.approx(0.9 - 0.9 * (1 - p) ** 3)
    updates = [s for s in range(0, 1300) if bool(schedule.is_update_step(s, end))]
    assert updates[0] == 100 and updates[-1] == 1100 and len(updates) == 11


class FakeTfmotSchedule:
    """Same contract as tfmot's PolynomialDecay: step -> (should_prune, sparsity), with get_config."""

    def __init__(self, final_sparsity=0.8, begin_step=0, end_step=40, frequency=10):
        self.final_sparsity, self.begin_step, self.end_step, self.frequency = (final_sparsity, begin_step,
                                                                               end_step, frequency)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = tf.clip_by_value((step - self.begin_step) / (self.end_step - self.begin_step), 0.0, 1.0)
        sparsity = self.final_sparsity * (1.0 - (1.0 - progress) ** 3)
        should = tf.logical_and(tf.equal(tf.math.floormod(step, self.frequency), 0.0), step <= self.end_step)
        return should, sparsity

    def get_config(self):
        return {"class_name": "FakeTfmotSchedule",
                "config": {"final_sparsity": self.final_sparsity, "begin_step": self.begin_step,
                           "end_step": self.end_step, "frequency": self.frequency}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_tfmot_style_schedule_drives_magnitude_pruning(tmp_path):
    adapter = get_schedule(FakeTfmotSchedule(), None)
    assert isinstance(adapter, PruningScheduleAdapter) and adapter.target_sparsity == 0.8
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(20), keras.layers.Dense(4)])
    sparse = mss.sparse_optimizer(model, "sgd", 0.8, "magnitude", "uniform", schedule=FakeTfmotSchedule())
    model.compile(sparse, "mse")
    x, y = np.random.rand(64, 8).astype("float32"), np.random.rand(64, 4).astype("float32")
    seen = []
    for _ in range(6):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)       # 8 steps per call; the last prune is at 40
        seen.append({u.key: int(keras.ops.convert_to_numpy(u.mask).sum()) for u in sparse.units})
    assert seen[-1] == {"dense/kernel": 160 - math.floor(0.8 * 160), "dense_1/kernel": 80 - math.floor(0.8 * 80)}
    assert seen[0]["dense/kernel"] > seen[-1]["dense/kernel"]
    # The adapter round-trips through the config (the object's class is imported again by module path).
    restored = PruningScheduleAdapter.from_config(adapter.get_config())
    assert isinstance(restored.schedule, FakeTfmotSchedule) and restored.schedule.end_step == 40


def test_schedule_type_error():
    with pytest.raises(TypeError, match="schedule must be an UpdateSchedule"):
        get_schedule(42, UpdateSchedule())
    with pytest.raises(ValueError, match=r"end_step=5 must be greater than begin_step=10"):
        UpdateSchedule(10, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match=r"update_every must be a whole number of steps, got 2.5"):
        UpdateSchedule(2.5)
    with pytest.raises(ValueError, match=r"period must be >= 1"):
        InversePowerDropFraction(0.3, period=0)
