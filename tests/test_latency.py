"""Measured latency tables (morphsparse/latency.py): the mechanics on small hand-written tables, whose values
are chosen here, so that no test depends on how fast this machine is. One smoke test profiles a two-layer
model for real (a tiny grid, one round) and checks only the shape of what it measured."""

import json
import warnings

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse import latency as L
from morphsparse.morph.regularizers import MorphRegularizer

from latency_helpers import GRID, elementwise_seconds, hand_table, kernel_seconds, small_cnn


def expected_seconds(c1=16, c2=16, overhead=5e-6):
    """What the hand table predicts for small_cnn with conv1 and conv2 at widths c1 and c2."""
    return (kernel_seconds(3, c1)                                       # conv1 (with bn1 and relu1)
            + kernel_seconds(c1, c2) + elementwise_seconds(c2)           # conv2 (with bn2, relu2), pool
            + kernel_seconds(c2, 4) + overhead)                          # head


def test_the_calls_have_the_kinds_their_layers_say():
    graph = ms.analyze(small_cnn())
    kinds = {c.layer.name: L.call_spec(c).kind for c in graph.calls if L.call_spec(c)}
    assert kinds == {"conv1": "kernel", "bn1": "elementwise", "relu1": "elementwise", "conv2": "kernel",
                     "bn2": "elementwise", "relu2": "elementwise", "pool": "elementwise", "head": "kernel"}
    # the BatchNorm and activation after a kernel are timed with it, as the runtimes fuse them
    timed = {s.call.layer.name: [f.layer.name for f in s.followers] for s in L.timed_calls(graph)}
    assert timed == {"conv1": ["bn1", "relu1"], "conv2": ["bn2", "relu2"], "pool": [], "head": []}


def test_prediction_is_the_sum_of_the_entries_plus_the_overhead():
    model = small_cnn()
    table = hand_table(model)
    assert ms.predict_latency(model, table) == pytest.approx(expected_seconds(), rel=1e-12)
    graph = ms.analyze(model)
    conv1, conv2 = graph.group_of("conv1").id, graph.group_of("conv2").id
    # at other widths, without building the model, and for a model built at those widths
    assert ms.predict_latency(graph, table, alive={conv1: 5, conv2: 11}) == pytest.approx(
        expected_seconds(5, 11), rel=1e-12)
    assert ms.predict_latency(small_cnn(width=12), table) == pytest.approx(expected_seconds(12, 12), rel=1e-12)


def test_interpolation_is_bilinear_between_grid_points():
    model = small_cnn()
    # a convex entry: interpolation between grid points lies on the chord, not on the curve
    table = hand_table(model, kernel=lambda a, b: 1e-6 * (a * a + b), elementwise=lambda b: 0.0, overhead=0.0)
    graph = ms.analyze(model)
    g = graph.group_of("conv1").id
    at = {w: ms.predict_latency(graph, table, alive={g: w}) for w in (8, 10, 12)}
    assert at[10] == pytest.approx((at[8] + at[12]) / 2, rel=1e-12)
    assert at[10] > ms.predict_latency(graph, hand_table(model, kernel=lambda a, b: 1e-6 * (a * a + b),
                                                         elementwise=lambda b: 0.0, overhead=0.0,
                                                         grid=list(range(1, 33))), alive={g: 10})


def test_the_marginal_latency_is_what_one_channel_saves():
    model = small_cnn()
    table = hand_table(model)
    graph = ms.analyze(model)
    latency = L.LatencyModel(graph, table)
    alive = np.ones(latency.n_channels)
    marginal = latency.marginal(alive)
    base = latency.value(alive)
    offsets = graph.offsets
    for name in ("conv1", "conv2"):
        g = graph.group_of(name).id
        one_less = alive.copy()
        one_less[offsets[g]] = 0.0
        # the table is bilinear inside its grid, so the slope is exactly the saving of one channel
        assert marginal[offsets[g]] == pytest.approx(base - latency.value(one_less), rel=1e-9)
        assert marginal[offsets[g]] > 0
    # the regularisation term's gradient is the marginal latency (what MorphRegularizer trains with)
    import tensorflow as tf
    r = tf.Variable(np.ones(latency.n_channels, np.float32))
    with tf.GradientTape() as tape:
        a_in, a_out = latency.sums(tf.constant(alive, tf.float32), xp=keras.ops)
        r_in, r_out = latency.sums(r, xp=keras.ops)
        term = latency.term(a_in, a_out, r_in, r_out, xp=keras.ops)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(term, r)).numpy(), marginal, rtol=1e-5,
                               atol=1e-12)


def test_a_width_outside_the_grid_is_extrapolated_with_a_warning():
    model = small_cnn()
    table = hand_table(model, grid=[4, 8, 16])
    graph = ms.analyze(model)
    g = graph.group_of("conv2").id
    with pytest.warns(UserWarning, match=r"extrapolates the latency table .*conv2"):
        wide = ms.predict_latency(graph, table, alive={g: 24})
    assert wide > ms.predict_latency(graph, table, alive={g: 16}) > 0   # widening is not free


def test_json_roundtrip_and_files(tmp_path):
    table = hand_table(small_cnn())
    again = ms.LatencyTable.from_json(table.to_json())
    assert again.to_dict() == table.to_dict()
    path = table.save(tmp_path / "t.json")
    assert ms.LatencyTable.load(path).to_dict() == table.to_dict()
    with pytest.raises(FileNotFoundError, match="profile_latency"):
        ms.LatencyTable.load(tmp_path / "missing.json")


def _broken(change):
    data = json.loads(hand_table(small_cnn()).to_json())
    change(data)
    return data


def _first_entry(data):
    return next(iter(data["entries"].values()))


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(format="other"), "not a latency table"),
    (lambda d: d.update(version=99), "version 99 is not supported"),
    (lambda d: d.update(backend="onnx"), "backend must be one of"),
    (lambda d: d.update(batch_size=0), "batch_size must be an integer >= 1"),
    (lambda d: d.pop("machine"), "lacks"),
    (lambda d: d["machine"].pop("cpu"), "machine must be an object with keys"),
    (lambda d: d.update(overhead=float("nan")), "overhead must be a finite"),
    (lambda d: _first_entry(d).update(kind="magic"), "kind must be one of"),
    (lambda d: _first_entry(d).update(out_widths=[8, 4] + GRID[2:]), "strictly increasing"),
    (lambda d: _first_entry(d).update(median=[[1.0]]), "has shape"),
    (lambda d: _first_entry(d)["minimum"][0].__setitem__(0, -1.0), "finite seconds >= 0"),
])
def test_bad_tables_are_refused_with_a_clear_error(change, message):
    with pytest.raises(ms.LatencyTableError, match=message):
        ms.LatencyTable.from_dict(_broken(change))
    with pytest.raises(ms.LatencyTableError, match="not valid JSON"):
        ms.LatencyTable.from_json("{")


def test_a_table_for_another_backend_batch_or_machine_is_refused():
    model = small_cnn()
    table = hand_table(model)
    with pytest.raises(ms.LatencyTableError, match=r"backend='keras', not 'litert'.*backend='litert'"):
        ms.predict_latency(model, table, backend="litert")
    with pytest.raises(ms.LatencyTableError, match="batch_size=1, not 32"):
        ms.predict_latency(model, table, batch_size=32)
    elsewhere = hand_table(model)
    elsewhere.machine = dict(elsewhere.machine, cpu="an abacus")
    with pytest.raises(ms.LatencyTableError, match="another machine.*an abacus"):
        ms.predict_latency(model, elsewhere, machine=True)
    assert ms.predict_latency(model, table, backend="keras", batch_size=1, machine=True) > 0


def test_a_layer_the_table_lacks_is_named():
    table = hand_table(small_cnn())
    x = keras.Input((8, 8, 3))
    other = keras.Model(x, keras.layers.Conv2D(4, 5, name="big_kernel")(x))
    with pytest.raises(ms.LatencyTableError, match=r"layer 'big_kernel' .*Profile this model"):
        ms.predict_latency(other, table)


@pytest.mark.filterwarnings("ignore:profile_latency of .* keeps scale 1")   # the fake times fix no scale
def test_profile_is_cached_and_a_second_call_is_instant(tmp_path, monkeypatch):
    model = small_cnn()
    timed = []

    def fake_timer(runners, repeats, clock=None):
        timed.append(len(runners))
        return [(1e-5 * (i + 1), 2e-5 * (i + 1), i + 1.0) for i in range(len(runners))]

    monkeypatch.setattr(L, "_time_runners", fake_timer)
    monkeypatch.setattr(L, "_runner", lambda model, arrays, backend, threads: (lambda: None))
    first = ms.profile_latency(model, threads=None, points=2, repeats=1, cache_dir=tmp_path, progress=False)
    calls = len(timed)
    assert calls == len(first.entries) + 3     # every signature, and the whole model (full and narrow) thrice
    second = ms.profile_latency(model, threads=None, points=2, repeats=1, cache_dir=tmp_path, progress=False)
    assert len(timed) == calls          # nothing measured again: the table came from the cache
    assert second.to_dict() == first.to_dict()
    # other settings are another table; refresh=True measures again
    ms.profile_latency(model, threads=None, points=3, repeats=1, cache_dir=tmp_path, progress=False)
    assert len(timed) > calls
    calls = len(timed)
    ms.profile_latency(model, threads=None, points=2, repeats=1, cache_dir=tmp_path, progress=False, refresh=True)
    assert len(timed) > calls
    # the fake times: each entry is its point's median less the empty call's, never negative
    assert all(np.min(e.median) >= 0 for e in first.entries.values())


@pytest.mark.parametrize("per_call", [0.0, 1e-4])
def test_a_model_whose_time_does_not_follow_its_entries_is_named(tmp_path, monkeypatch, per_call):
    """Each one-layer model alone costs ``per_call`` more than its share of the whole model (a dispatch cost
    the whole model pays once): with 1e-4 s per call the calibration fits an overhead far below zero, and the
    table's predictions of narrow widths cannot be trusted; profile_latency says so, and again from the cache."""
    model = small_cnn()

    def fake_timer(runners, repeats, clock=None):
        seconds = []
        for name, params in runners:
            whole = name.startswith(model.name)              # the whole model and its calibration copy
            seconds.append(1e-8 * params + (0.0 if whole or params == 0 else per_call))
        return [(t, t, t / max(seconds[0], 1e-12)) for t in seconds]

    monkeypatch.setattr(L, "_time_runners", fake_timer)
    monkeypatch.setattr(L, "_runner", lambda one, arrays, backend, threads: (one.name, one.count_params()))
    for cached in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = ms.profile_latency(model, threads=None, points=2, repeats=1, cache_dir=tmp_path, progress=False)
        messages = [str(w.message) for w in caught]
        assert not any("keeps scale 1" in m for m in messages)         # the two timings fix a scale
        named = [m for m in messages if "does not shrink with its widths" in m]
        if per_call:
            assert table.overhead < -L.NEGATIVE_OVERHEAD_SHARE * table.settings["whole_model_seconds"]["median"]
            assert len(named) == 1 and "'small_cnn'" in named[0] and "ms.land_latency" in named[0]
        else:
            assert not named


@pytest.mark.parametrize("odd", [0, 1, 2])
@pytest.mark.parametrize("factor", [1.5, 0.7])
def test_the_whole_model_is_timed_three_times_and_the_median_timing_fits(tmp_path, monkeypatch, odd, factor):
    """A slow minute (every call 1.5x as long) or a fast one (0.7x) falls on one of the three calibration
    timings (before the layers, halfway, after): the table is fitted on an ordinary one, wherever the odd one
    came, and keeps all three times."""
    model = small_cnn()
    calibrations = []

    def fake_timer(runners, repeats, clock=None):
        whole = runners[0][0].startswith(model.name)
        if whole:
            calibrations.append(len(runners))
        scale = factor if whole and len(calibrations) - 1 == odd else 1.0
        seconds = [scale * (1e-8 * params + (0.0 if whole or params == 0 else 1e-6)) for _, params in runners]
        return [(t, t, t / max(seconds[0], 1e-12)) for t in seconds]

    monkeypatch.setattr(L, "_time_runners", fake_timer)
    monkeypatch.setattr(L, "_runner", lambda one, arrays, backend, threads: (one.name, one.count_params()))
    table = ms.profile_latency(model, threads=None, points=2, repeats=1, cache_dir=tmp_path, progress=False)
    assert calibrations == [2, 2, 2]                    # the full model and its narrow copy, three times
    ordinary = 1e-8 * model.count_params()
    assert table.settings["whole_model_seconds"]["median"] == pytest.approx(ordinary)
    assert sorted(table.settings["calibration_seconds"]) == pytest.approx(sorted([ordinary, ordinary,
                                                                                   factor * ordinary]))
    assert table.settings["calibration_seconds"][odd] == pytest.approx(factor * ordinary)
    assert ms.predict_latency(model, table) == pytest.approx(ordinary)   # the fit goes through an ordinary point


@pytest.mark.filterwarnings("ignore:profile_latency of .* keeps scale 1")   # a busy machine: not asserted
@pytest.mark.filterwarnings("ignore:profile_latency of .* does not shrink with its widths")
def test_profile_latency_smoke():
    x = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    table = ms.profile_latency(model, threads=None, points=2, repeats=1, refresh=True, progress=False,
                               cache_dir=_tmp_cache())
    kinds = sorted(e.kind for e in table.entries.values())
    assert kinds == ["kernel", "kernel"]
    hidden = next(e for e in table.entries.values() if e.layer == "hidden")
    assert hidden.in_widths == [6] and len(hidden.out_widths) == 2     # the input is pinned; 8 is removable
    assert all(np.all(np.asarray(e.median) >= 0) for e in table.entries.values())
    assert np.isfinite(ms.predict_latency(model, table, backend="keras", batch_size=1, machine=True))
    assert ms.LatencyTable.from_json(table.to_json()).to_dict() == table.to_dict()


def _tmp_cache():
    import tempfile
    return tempfile.mkdtemp(prefix="morphsparse-latency-")


def test_bad_profile_arguments():
    model = small_cnn()
    with pytest.raises(ValueError, match="backend must be one of"):
        ms.profile_latency(model, backend="onnx")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        ms.profile_latency(model, batch_size=0)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        ms.profile_latency(model, threads=0)
    with pytest.raises(TypeError, match="takes a keras.Model"):
        ms.profile_latency("ResNet50")


PADDED_GRID = [1, 4, 8, 9, 12, 16, 17, 24, 32]


def padded_table(model, step=8):
    """A hand table of a device that pads every width to a multiple of ``step`` (so it shows steps)."""
    padded = lambda w: step * -(-w // step)                             # noqa: E731
    return hand_table(model, grid=PADDED_GRID, kernel=lambda a, b: 1e-6 * padded(a) * padded(b),
                      elementwise=lambda b: 1e-7 * padded(b))


def test_the_table_suggests_the_step_the_device_likes():
    model = small_cnn()
    # the device pads every width to a multiple of 8: 9 and 17 cost what 16 and 24 cost
    assert padded_table(model).suggested_round_to() == 8
    assert hand_table(model, grid=PADDED_GRID).suggested_round_to() is None   # smooth: no step
    assert hand_table(model).suggested_round_to() is None              # no width between multiples: cannot say


def test_a_step_on_the_output_widths_alone_is_named_and_a_cheap_calls_noise_does_not_decide():
    """As LiteRT's convolutions on this project's CPU: the output channels are computed in tiles of 16 (17 costs
    what 32 costs) while the input channels cost each their own; the elementwise calls, cheap, wobble. The
    input axis's smooth lines and the cheap calls must not outvote the tiles (they did: every table of the
    benchmark named no step)."""
    model = small_cnn()
    tiles = lambda b: 16 * -(-b // 16)                                  # noqa: E731
    wobble = lambda b: 1e-8 * (b + 5 * (b % 2))                          # noqa: E731 - odd widths dearer, not padded
    padded_outputs = hand_table(model, grid=PADDED_GRID, kernel=lambda a, b: 1e-6 * a * tiles(b), elementwise=wobble)
    assert padded_outputs.suggested_round_to() == 16
    # the same device, its outputs smooth: the inputs' lines and the wobble name nothing
    smooth = hand_table(model, grid=PADDED_GRID, kernel=lambda a, b: 1e-6 * a * b, elementwise=wobble)
    assert smooth.suggested_round_to() is None
    # a device that pays half the step (no clear majority of the time padded) names none either
    half = lambda b: (b + tiles(b)) / 2                                 # noqa: E731
    assert hand_table(model, grid=PADDED_GRID, kernel=lambda a, b: 1e-6 * a * half(b),
                      elementwise=wobble).suggested_round_to() is None


# --- targeting ---------------------------------------------------------------------------------------------

def test_morph_regularizer_prices_latency_with_the_table():
    model = small_cnn()
    table = hand_table(model)
    reg = MorphRegularizer(model, target="latency", device=table)
    assert reg.initial_cost == pytest.approx(ms.predict_latency(model, table), rel=1e-12)
    assert "measured latency table" in reg.latency_source and "measured" in reg.summary()
    assert reg.arguments["device"]["format"] == L.FORMAT       # the optimizer's config can rebuild it
    json.dumps(reg.arguments["device"])
    # the term's gradient on R is each channel's marginal latency (R = |gamma| = 1 at initialisation)
    import tensorflow as tf
    r = tf.Variable(reg.vector())
    with tf.GradientTape() as tape:
        term = reg.term(r)
    gradient = tf.convert_to_tensor(tape.gradient(term, r)).numpy()
    marginal = reg.target.marginal(np.ones(reg.kernel_calls.n_channels))
    np.testing.assert_allclose(gradient[reg.regularized], marginal[reg.regularized], rtol=1e-5)
    # the budget controller measures the cost with the table
    budgeted = MorphRegularizer(model, target="latency", device=table, budget=0.5, steps=100)
    assert float(budgeted.controller.cost_ratio(np.ones(reg.kernel_calls.n_channels, np.float32))) == \
        pytest.approx(1.0)
    assert budgeted.controller.cheapest_alive_ratio() > 0
    # without a table, the roofline, and the regulariser says so
    assert "roofline" in MorphRegularizer(model, target="latency").latency_source


def test_prune_lands_the_predicted_latency_under_the_budget():
    model = small_cnn(width=32)
    table = hand_table(model)
    slim, report = ms.prune_with_report(model, budget=0.6, target="latency", device=table, min_width=0.1)
    before = ms.predict_latency(model, table)
    after = ms.predict_latency(slim, table)
    assert report.latency_before == pytest.approx(before) and report.latency_after == pytest.approx(after)
    assert 0.5 * before < after <= 0.6 * before
    assert "measured latency table" in report.summary()
    with pytest.raises(ValueError, match="a latency budget is a fraction"):
        ms.prune(model, budget=3.0, target="latency", device=table)


def test_resize_to_a_latency_budget():
    model = small_cnn(width=16)
    table = hand_table(model)
    narrow, report = ms.expand_with_report(model, budget=0.7, target="latency", device=table)
    predicted = ms.predict_latency(narrow, table)
    assert predicted == pytest.approx(report.cost_after, rel=1e-9)
    assert predicted <= 0.7 * ms.predict_latency(model, table) < report.cost_next_step
    assert report.round_to is None                                     # the table shows no step


def test_resize_takes_round_to_from_a_table_with_steps():
    model = small_cnn(width=32)
    table = padded_table(model)
    with pytest.warns(UserWarning, match="multiple of 8"):
        narrow, report = ms.expand_with_report(model, budget=0.5, target="latency", device=table)
    assert report.round_to == 8 and report.round_to_source == "latency table"
    widths = [w for name, (_, w) in report.widths.items() if name in ("conv1", "conv2")]
    assert widths and all(w % 8 == 0 for w in widths)


def test_a_group_narrower_than_the_tables_step_is_not_widened_to_it():
    """A step read off a table is the device's tile: a 4-channel layer already runs at one tile's cost, and a
    resize must not make it 8 wide (it did, on MobileNetV2's 8-channel layers with a step of 16). A round_to
    the caller gives still rounds every group, as MorphNet's width multiplier does."""
    x = keras.Input((8, 8, 3))
    h = keras.layers.ReLU(name="relu1")(keras.layers.Conv2D(4, 3, padding="same", name="narrow")(x))
    h = keras.layers.ReLU(name="relu2")(keras.layers.Conv2D(32, 1, name="wide")(h))
    model = keras.Model(x, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(h)))
    table = padded_table(model)
    assert table.suggested_round_to() == 8
    with pytest.warns(UserWarning, match="multiple of 8"):
        _, report = ms.expand_with_report(model, budget=0.5, target="latency", device=table)
    assert report.widths["narrow"][1] <= 4 and report.widths["wide"][1] % 8 == 0
    _, asked = ms.expand_with_report(model, budget=0.5, target="latency", device=table, round_to=8)
    assert asked.widths["narrow"][1] == 8


def test_cli_prunes_to_a_latency_table(tmp_path, capsys):
    from morphsparse import cli

    model = small_cnn(width=32)
    model.save(tmp_path / "m.keras")
    hand_table(model).save(tmp_path / "table.json")
    code = cli.main(["prune", str(tmp_path / "m.keras"), "-o", str(tmp_path / "slim.keras"), "--budget", "0.6",
                     "--target", "latency", "--latency-table", str(tmp_path / "table.json"), "--min-width", "0.1"])
    assert code == 0
    out = capsys.readouterr()
    assert "latency priced by the measured latency table" in out.out
    slim = keras.saving.load_model(tmp_path / "slim.keras")
    assert ms.predict_latency(slim, tmp_path / "table.json") <= 0.6 * ms.predict_latency(model,
                                                                                         tmp_path / "table.json")
    cli.main(["prune", str(tmp_path / "m.keras"), "-o", str(tmp_path / "slim2.keras"), "--budget", "0.6",
              "--target", "latency", "--min-width", "0.1"])
    assert "roofline" in capsys.readouterr().err


def test_prune_rounds_widths_down_to_the_step_the_table_shows():
    model = small_cnn(width=32)
    table = padded_table(model)
    with pytest.warns(UserWarning, match="multiple of 8"):
        slim, report = ms.prune_with_report(model, budget=0.6, target="latency", device=table, min_width=0.1)
    assert report.round_to == 8 and report.round_to_source == "latency table"
    widths = [after for before, after in report.groups.values()]
    assert any(after < 32 for after in widths) and all(after % 8 == 0 for after in widths)
    assert ms.predict_latency(slim, table) <= 0.6 * ms.predict_latency(model, table)
    _, plain = ms.prune_with_report(model, budget=0.6, target="latency", device=table, min_width=0.1, round_to=1)
    assert plain.round_to == 1


def test_the_scale_multiplies_the_entries_and_their_marginal_latency():
    model = small_cnn()
    table = hand_table(model)
    scaled = hand_table(model)
    scaled.scale = 0.5
    graph = ms.analyze(model)
    assert ms.predict_latency(model, scaled) == pytest.approx(0.5 * (expected_seconds() - 5e-6) + 5e-6, rel=1e-12)
    ones = np.ones(int(graph.offsets[-1]))
    np.testing.assert_allclose(L.LatencyModel(graph, scaled).marginal(ones),
                               0.5 * L.LatencyModel(graph, table).marginal(ones))
    with pytest.raises(ms.LatencyTableError, match="scale must be a finite number > 0"):
        ms.LatencyTable.from_dict(_broken(lambda d: d.update(scale=0.0)))


def test_measured_values_are_made_monotone_in_both_widths():
    noisy = np.array([[1.0, 3.0, 2.0, 4.0], [2.0, 1.0, 5.0, 6.0]])
    smooth = L._monotone(noisy)
    assert np.all(np.diff(smooth, axis=0) >= 0) and np.all(np.diff(smooth, axis=1) >= 0)
    already = np.array([[1.0, 2.0, 4.0], [2.0, 3.0, 5.0]])
    np.testing.assert_array_equal(L._monotone(already), already)     # a monotone table (and its steps) stays


def test_fit_with_a_latency_budget_on_the_table():
    model = small_cnn()
    table = hand_table(model)
    reg = MorphRegularizer(model, target="latency", device=table, budget=0.6, steps=8)
    model.compile(ms.MorphOptimizer(keras.optimizers.Adam(1e-2), reg),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # 8 steps cannot land a budget: the verdict says so
        logs = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"][-1]) and reg.controller.step == 8
    assert 0 < reg.cost() / reg.initial_cost <= 1.0
    # the optimizer's config carries the table, and rebuilds the regulariser from it
    assert L.FORMAT in json.dumps(model.optimizer.get_config(), default=str)


def test_a_narrowed_or_exported_layer_finds_the_same_entry():
    # widths (even ones that happen to equal the handler's probes), and a bias that export adds to hold a
    # folded constant, do not change a call's signature
    signatures = lambda m: {s.signature for s in L.timed_calls(ms.analyze(m))}   # noqa: E731
    assert signatures(small_cnn(width=3)) == signatures(small_cnn(width=16)) == signatures(small_cnn(width=7))
    x = keras.Input((8, 8, 3))
    biased = keras.Model(x, keras.layers.Conv2D(4, 3, use_bias=True)(x))
    plain = keras.Model(x, keras.layers.Conv2D(4, 3, use_bias=False)(x))
    assert signatures(biased) == signatures(plain)


def test_cli_expands_to_a_latency_budget_and_profiles(tmp_path, capsys, monkeypatch):
    from morphsparse import cli

    model = small_cnn(width=16)
    model.save(tmp_path / "m.keras")
    hand_table(model).save(tmp_path / "table.json")
    assert cli.main(["expand", str(tmp_path / "m.keras"), "-o", str(tmp_path / "narrow.keras"),
                     "--budget-latency", "0.7", "--latency-table", str(tmp_path / "table.json")]) == 0
    narrow = keras.saving.load_model(tmp_path / "narrow.keras")
    assert ms.predict_latency(narrow, tmp_path / "table.json") <= 0.7 * ms.predict_latency(
        model, tmp_path / "table.json")
    # profile-latency writes the table it measured (the measurement itself is faked: no timing in tests)
    monkeypatch.setattr(L, "_time_runners", lambda runners, repeats, clock=None: [(1e-5, 2e-5, 1.0)] * len(runners))
    monkeypatch.setattr(L, "_runner", lambda model, arrays, backend, threads: (lambda: None))
    monkeypatch.setenv(L.CACHE_ENV, str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["profile-latency", str(tmp_path / "m.keras"), "-o", str(tmp_path / "t2.json"),
                         "--points", "2", "--repeats", "1"]) == 0
    assert "written to" in capsys.readouterr().out
    assert ms.LatencyTable.load(tmp_path / "t2.json").backend == "keras"


def test_a_table_with_steps_prices_multiples_along_the_multiples():
    model = small_cnn(width=32)
    table = padded_table(model)
    graph = ms.analyze(model)
    g = graph.group_of("conv2").id
    at = {w: ms.predict_latency(graph, table, alive={g: w}) for w in (17, 20, 24, 25)}
    assert at[17] == at[20] == at[24] < at[25]
    # widths at a multiple of the step are read off the line through the multiples (24 is not pulled up by
    # the probe at 17), the others off every measured point; a smooth table is interpolated as before
    smooth = hand_table(model, grid=[1, 4, 8, 9, 12, 16, 17, 24, 32])
    assert ms.predict_latency(graph, smooth, alive={g: 20}) == pytest.approx(expected_seconds(32, 20), rel=1e-12)


def test_a_step_the_grid_is_too_coarse_to_name_still_leaves_every_channel_its_price():
    # a device whose kernel computes 32 output channels at a time, profiled on a coarse grid: the probe at 33
    # costs what 64 costs, but no multiple of 8 or 16 lies within a step of it, so the table names no step
    model = small_cnn(width=64)
    tiles = lambda b: -(-b // 32)                                       # noqa: E731
    table = hand_table(model, grid=[1, 8, 32, 33, 64], kernel=lambda a, b: 1e-6 * (1 + a * tiles(b)),
                       elementwise=lambda b: 1e-7 * b)
    assert table.suggested_round_to() is None
    graph = ms.analyze(model)
    latency = L.LatencyModel(graph, table)
    g = graph.group_of("conv2").id
    first = graph.offsets[g]
    alive = np.ones(latency.n_channels)
    # the prediction holds the step: the 33rd channel costs a tile, more than the 31 after it together
    at = {w: ms.predict_latency(graph, table, alive={g: w}) for w in (32, 33, 64)}
    assert at[33] - at[32] > at[64] - at[33] > 0
    # a channel's marginal latency is its share of the line through the multiples, not the slope of the flat
    # cell between the probe and 64 (nothing: the channels there would look free) nor of the jump
    marginal = latency.marginal(alive)
    assert marginal[first] == pytest.approx((at[64] - at[32]) / 32, rel=1e-9)
    alive[first:first + 40] = 0.0                                     # at 24 of 64: between 8 and 32
    assert latency.marginal(alive)[first + 50] == pytest.approx(
        (at[32] - ms.predict_latency(graph, table, alive={g: 8})) / 24, rel=1e-9)
    # so the latency target thins the group whose tiles cost most, as the FLOP target does
    slim, report = ms.prune_with_report(model, budget=0.8, target="latency", device=table, min_width=0.1)
    assert report.groups["conv2"][1] <= 32 < report.groups["conv1"][1]


def small_attention(heads=4, width=16):
    x = keras.Input((6, width))
    h = keras.layers.MultiHeadAttention(heads, 4, name="mha")(x, x)
    h = keras.layers.Add(name="add")([x, h])
    h = keras.layers.Dense(8, name="ffn")(h)
    return keras.Model(x, h, name="small_attention")


def test_attention_is_timed_along_its_query_width_and_heads():
    graph = ms.analyze(small_attention())
    spec = next(s for s in L.timed_calls(graph) if s.call.layer.name == "mha")
    assert spec.kind == "attention" and spec.widths() == (16, 4)
    # fewer heads find the same entry (num_heads is a width of the entry), and are priced by it
    narrow = small_attention(heads=2)
    assert {s.signature for s in L.timed_calls(ms.analyze(narrow))} == {s.signature for s in
                                                                        L.timed_calls(graph)}
    table = hand_table(small_attention())
    heads = graph.internal_group("mha").id
    saving = ms.predict_latency(graph, table) - ms.predict_latency(graph, table, alive={heads: 2})
    assert saving == pytest.approx(kernel_seconds(16, 4) - kernel_seconds(16, 2), rel=1e-9)
    assert ms.predict_latency(narrow, table) == pytest.approx(ms.predict_latency(graph, table, alive={heads: 2}),
                                                              rel=1e-12)
    # each head is charged its marginal latency: the latency target can remove heads
    latency = L.LatencyModel(graph, table)
    marginal = latency.marginal(np.ones(latency.n_channels))
    assert marginal[graph.offsets[heads]] == pytest.approx(kernel_seconds(16, 4) - kernel_seconds(16, 3), rel=1e-9)
    # the heads are all prune may remove here (the stream is the input, the FFN the output): it reaches the budget
    slim = ms.prune(small_attention(), budget=0.97, target="latency", device=table, importance="l1", min_width=0.1)
    assert slim.get_layer("mha").num_heads < 4
    assert ms.predict_latency(slim, table) <= 0.97 * ms.predict_latency(graph, table)


def test_the_attention_timed_alone_has_the_grid_widths():
    graph = ms.analyze(small_attention())
    spec = next(s for s in L.timed_calls(graph) if s.call.layer.name == "mha")
    one, shapes = L._one_layer_model(spec, graph, 2, 8, 3)
    layer = next(l for l in one.layers if isinstance(l, keras.layers.MultiHeadAttention))
    assert layer.num_heads == 3 and shapes == [(2, 6, 8)]
    assert tuple(one.outputs[0].shape) == (2, 6, 8)      # the output keeps the query's width, as in the model


def test_timing_gives_each_runner_its_ratio_to_the_first_round_by_round():
    """A fake clock: the second runner costs three times the first, and the machine slows down tenfold after
    a few rounds; the ratio, taken in each round (both samples in the same regime), stays 3."""
    now, calls = [0.0], [0]

    def runner(cost):
        def run():
            calls[0] += 1
            now[0] += cost * (10.0 if calls[0] > 40 else 1.0)
        return run
    timed = L._time_runners([runner(1e-3), runner(3e-3)], repeats=9, clock=lambda: now[0])
    assert timed[0][2] == 1.0
    assert timed[1][2] == pytest.approx(3.0, rel=1e-9)


def test_a_model_with_dict_inputs_is_timed():
    # keras_hub backbones take a dict of inputs: the whole-model timing must pass them as one
    inputs = {"a": keras.Input((4,), name="a"), "b": keras.Input((3,), name="b")}
    joined = keras.layers.Concatenate(name="join")([inputs["a"], inputs["b"]])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(joined))
    timed = ms.measure_latency(model, threads=None, repeats=1)
    assert 0 < timed["minimum"] <= timed["median"]
