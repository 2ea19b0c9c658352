"""Width-multiplier expansion (ms.expand)."""

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.models import small_vit
from morphsparse.morph.expand import WidthSearch
from morph_helpers import assert_same_outputs, block_net, inputs_for, kill, randomize

L = keras.layers


def slim_block_net():
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), [0, 1, 2])
    kill(model.get_layer("stem_bn"), [0, 1, 2, 3])
    kill(model.get_layer("b_bn"), [0, 1, 2, 3])
    kill(model.get_layer("t1_bn"), slice(None))          # a whole tower: it must stay removed
    return model, ms.export(model)


@pytest.mark.parametrize("round_to", [None, 4])
def test_expand_of_export_lands_within_one_step_under_the_original_budget(round_to):
    model, slim = slim_block_net()
    budget = ms.count_flops(model)
    wide, report = ms.expand_with_report(slim, budget=budget, target="flops", round_to=round_to)
    cost = ms.count_flops(wide)
    assert cost == report.cost_after <= budget < report.cost_next_step
    assert report.multiplier > 1
    # every member of a group has the same width; the dead tower stays dead; input and output are fixed
    assert wide.get_layer("stem").filters == wide.get_layer("b").filters
    assert "t1" not in {layer.name for layer in wide.layers}
    assert wide.get_layer("logits").units == 5 and wide.inputs[0].shape[1:] == (8, 8, 3)
    if round_to:
        assert all(after % round_to == 0 for path, (_, after) in report.widths.items()
                   if path not in ("image", "logits"))
    assert report.widths["stem"] == (12, wide.get_layer("stem").filters)


@pytest.mark.slow
def test_expanded_model_is_freshly_initialised_and_trains():
    _, slim = slim_block_net()
    wide = ms.expand(slim, budget=2 * ms.count_flops(slim))
    # fresh weights: BatchNorm statistics at their initial values, not the slim model's
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(wide.get_layer("stem_bn").moving_variance), 1.0)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    y = np.arange(8) % 5
    wide.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = wide.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_size_target_and_shrinking_budget():
    model, slim = slim_block_net()
    budget = ms.count_params(slim) // 2
    wide, report = ms.expand_with_report(slim, budget=budget, target="size")
    assert ms.count_params(wide) <= budget < report.cost_next_step
    assert report.multiplier < 1


def test_widths_follow_flatten_depthwise_and_nested_models():
    inner_in = keras.Input((6, 6, 4))
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(inner_in)
    inner = keras.Model(inner_in, L.Conv2D(4, 1, name="pw")(y), name="inner")
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="stem")(inp)
    x = inner(x)
    x = L.Flatten()(x)
    out = L.Dense(2, name="head")(L.Dense(10, name="hidden")(x))
    model = keras.Model(inp, out)
    wide = ms.expand(model, budget=3 * ms.count_flops(model))
    assert ms.count_flops(wide) <= 3 * ms.count_flops(model)
    stem = wide.get_layer("stem").filters
    assert stem > 4 and wide.get_layer("inner__dw").kernel.shape == (3, 3, stem, 2)
    assert wide.get_layer("hidden").kernel.shape[0] == 36 * wide.get_layer("inner__pw").filters


def test_search_is_monotone_and_bisection_finds_the_boundary():
    _, slim = slim_block_net()
    search = WidthSearch(ms.analyze(slim), "flops", round_to=2)
    costs = [search.cost(w) for w in np.linspace(0.1, 3, 30)]
    assert costs == sorted(costs)
    w, cost = search.largest_multiplier(costs[12])
    assert cost <= costs[12] < search.next_step(w)


def test_bad_input(handler_registry):
    _, slim = slim_block_net()
    with pytest.raises(ms.ExpandError, match="smallest possible network"):
        ms.expand(slim, budget=10)
    with pytest.raises(ms.ExpandError, match="unknown target"):
        ms.expand(slim, budget=1e6, target="energy")
    with pytest.raises(ms.ExpandError, match="a latency budget is a fraction"):
        ms.expand(slim, budget=1e6, target="latency")
    with pytest.raises(ms.ExpandError, match="round_to"):
        ms.expand(slim, budget=1e6, round_to=0)
    with pytest.raises(ms.ExpandError, match="budget"):
        ms.expand(slim, budget="lots")
    with pytest.raises(ms.ExpandError, match="no removable"):
        inp = keras.Input((4,))
        ms.expand(keras.Model(inp, L.Dense(2)(inp)), budget=100)

    class FixedScale(L.Layer):      # per-channel weights sized by its config, registered as a plain PassThrough
        def __init__(self, channels, **kwargs):
            super().__init__(**kwargs)
            self.channels = channels

        def build(self, shape):
            self.w = self.add_weight(shape=(self.channels,), initializer="ones")

        def call(self, x):
            return x * self.w

        def get_config(self):
            return {**super().get_config(), "channels": self.channels}

    from morphsparse import handlers
    handlers.register_handler(FixedScale, handlers.PassThrough())
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2)(FixedScale(3)(L.Dense(3, name="hidden")(inp))))
    with pytest.raises(ms.ExpandError, match="FixedScale"):
        ms.expand(model, budget=1000)


def test_command_line_export_then_expand(tmp_path, capsys):
    from morphsparse.cli import main

    model, _ = slim_block_net()
    original = tmp_path / "model.keras"
    model.save(original)
    slim_path, wide_path, structure = tmp_path / "slim.keras", tmp_path / "wide.keras", tmp_path / "s.json"
    assert main(["export", str(original), "-o", str(slim_path), "--structure", str(structure)]) == 0
    out = capsys.readouterr().out
    assert "stem" in out and "FLOPs" in out and ms.load_structure(structure)["layers"]["stem"]["alive"] == 12
    slim = keras.saving.load_model(slim_path)
    assert slim.get_layer("stem").filters == 12
    assert main(["expand", str(slim_path), "--like", str(original), "-o", str(wide_path), "--round-to", "2"]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out
    wide = keras.saving.load_model(wide_path)
    assert ms.count_flops(wide) <= ms.count_flops(model)
    assert main(["expand", str(slim_path), "-o", str(wide_path), "--budget-flops", "10"]) == 2
    assert "smallest possible network" in capsys.readouterr().err


@pytest.mark.parametrize("factor", [1.5, 0.5])
def test_a_dead_residual_branch_survives_expand_and_a_second_export(tmp_path, factor):
    # Branch a -> b dies whole while b's BatchNorm still emits a non-zero constant: export must hold that
    # constant in a layer whose width follows the residual group, so the slim model can change width again.
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), slice(None))
    kill(model.get_layer("stem_bn"), [0, 5])
    b_bn = model.get_layer("b_bn")
    kill(b_bn, [0, 5], beta=False)                     # the residual group loses channels 0 and 5
    assert np.abs(keras.ops.convert_to_numpy(b_bn.beta)).min() > 0          # the constant is not trivial
    slim, report = ms.export_with_report(model)
    assert_same_outputs(model, slim)
    constant = slim.get_layer("add_constant")
    assert isinstance(constant, L.Rescaling) and np.asarray(constant.offset).shape == (14,)
    assert ms.count_flops(slim) == report.flops_after == ms.count_flops(model, alive=ms.alive_masks(model))

    budget = factor * ms.count_flops(slim)
    wide, grown = ms.expand_with_report(slim, budget=budget)
    width = wide.get_layer("stem").filters
    assert (width > 14) == (factor > 1) and ms.count_flops(wide) == grown.cost_after <= budget
    assert np.asarray(wide.get_layer("add_constant").offset).shape == (width,)

    # a second shrink of the expanded model: kill part of the residual group again and export
    wide = randomize(wide, seed=3)
    kill(wide.get_layer("stem_bn"), [1, 2])
    kill(wide.get_layer("t1_bn"), [0])
    again, second = ms.export_with_report(wide)
    assert_same_outputs(wide, again)
    assert ms.count_flops(again) == second.flops_after == ms.count_flops(wide, alive=ms.alive_masks(wide))
    assert again.get_layer("stem").filters == width - 2
    assert np.asarray(again.get_layer("add_constant").offset).shape == (width - 2,)
    ms.analyze(again)
    path = tmp_path / f"again_{factor}.keras"
    again.save(path)
    loaded = keras.saving.load_model(path)
    x = inputs_for(again)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(again(x)),
                               rtol=1e-6, atol=1e-6)


def test_a_group_split_across_a_concatenation_grows_in_whole_halves():
    # cat([a, b]) + c ties a to the first half of c and b to the second: one group of 8 that two tensors
    # each hold half of, so its width can only change in steps of two (NASNet has this pattern)
    inp = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    c = L.Conv2D(8, 3, padding="same", name="c")(inp)
    x = L.Add(name="add")([L.Concatenate(name="cat")([a, b]), c])
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    graph = ms.analyze(model)
    group = graph.group_of("c").id
    search = WidthSearch(graph, "flops")
    assert search.steps[group] == 2
    assert all(n % 2 == 0 for n in (search.counts(m)[group] for m in np.linspace(0.1, 3.0, 30)))
    for budget in (1.3, 1.75, 2.6):
        wide, report = ms.expand_with_report(model, budget=budget * ms.count_flops(model))
        assert wide.get_layer("a").filters == wide.get_layer("b").filters == wide.get_layer("c").filters // 2
        assert ms.count_flops(wide) == report.cost_after


def test_a_fractional_budget_is_of_the_reference_and_resize_narrows_too():
    model, slim = slim_block_net()
    seed_flops, slim_flops = ms.count_flops(model), ms.count_flops(slim)
    back, report = ms.expand_with_report(slim, budget=1.0, reference=model)      # the seed's FLOPs
    assert report.budget == seed_flops and ms.count_flops(back) <= seed_flops < report.cost_next_step
    half, report = ms.expand_with_report(slim, budget=0.5)                       # half of its own FLOPs
    assert ms.count_flops(half) <= 0.5 * slim_flops and report.multiplier < 1
    assert (report.flops_before, report.flops_after) == (slim_flops, ms.count_flops(half))
    assert (report.params_before, report.params_after) == (ms.count_params(slim), ms.count_params(half))
    assert "FLOPs" in report.summary() and "params" in report.summary()
    assert ms.resize is ms.expand
    assert ms.count_params(ms.resize(slim, budget=0.5, target="size")) <= 0.5 * ms.count_params(slim)
    with pytest.raises(ms.ExpandError, match="reference"):
        ms.expand(slim, budget=2 * slim_flops, reference=model)


def test_widening_to_a_flop_budget_warns_when_parameters_grow_past_1_5x():
    _, slim = slim_block_net()
    with pytest.warns(UserWarning, match="multiplies its parameters"):
        wide = ms.expand(slim, budget=4 * ms.count_flops(slim))
    assert ms.count_params(wide) > 1.5 * ms.count_params(slim)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms.expand(slim, budget=1.2 * ms.count_flops(slim))                        # modest growth: silent


def test_return_report_is_deprecated_but_still_works():
    _, slim = slim_block_net()
    with pytest.warns(DeprecationWarning, match="expand_with_report"):
        wide, report = ms.expand(slim, budget=1.0, return_report=True)
    assert isinstance(report, ms.ExpandReport) and isinstance(wide, keras.Model)


def _largest_gap(search, full):
    """(below, above): the costs either side of the widest jump of the uniform multiplier's cost."""
    costs = sorted({search.cost(m) for m in np.linspace(0.05, 1.0, 400)})
    return max(zip(costs, costs[1:]), key=lambda pair: pair[1] / pair[0])


def test_a_step_of_whole_heads_is_filled_by_the_other_channels():
    model = small_vit(dim=32, depth=2, heads=4, key_dim=16, ffn=64)
    graph = ms.analyze(model)
    search = WidthSearch(graph, "flops")
    full = ms.count_flops(model)
    below, above = _largest_gap(search, full)
    assert above / below > 1.15, "the uniform multiplier must leave a gap for this test to mean anything"
    budget = (below + above) / 2
    _, uniform = search.largest_multiplier(budget)
    assert uniform < 0.95 * budget

    narrow, report = ms.expand_with_report(model, budget=budget)
    assert 0.95 * budget <= ms.count_flops(narrow) == report.cost_after <= budget < report.cost_next_step
    assert report.lanes_multiplier is not None and "whole heads" in report.summary()
    heads = {layer.num_heads for layer in narrow.layers if isinstance(layer, L.MultiHeadAttention)}
    counts = search.counts(report.multiplier, report.lanes_multiplier)
    assert heads == {counts[gid] for gid in search.units}
    # where the uniform widths spend the budget, they stay uniform
    _, exact = ms.expand_with_report(model, budget=below)
    assert exact.lanes_multiplier is None and exact.cost_after == below


def test_a_devices_lane_step_rounds_channel_groups_not_heads_or_narrower_groups():
    """A step read off a latency table (lanes_only) counts channels: a group of 4 heads keeps whole-head steps,
    and a group narrower than the step keeps its own; a round_to the caller gives rounds every group."""
    graph = ms.analyze(small_vit(dim=32, depth=1, heads=4, key_dim=16, ffn=64))
    device_step = WidthSearch(graph, "flops", round_to=8, lanes_only=True)
    heads = device_step.units
    assert heads and all(device_step.steps[g] == 1 for g in heads)
    assert all(device_step.counts(0.3)[g] < 4 for g in heads)
    lanes = [g.id for g in device_step.groups if g.id not in heads]
    assert lanes and all(device_step.steps[g] % 8 == 0 for g in lanes if graph.groups[g].size >= 8)
    asked = WidthSearch(graph, "flops", round_to=8)
    assert all(asked.steps[g] % 8 == 0 for g in heads)


def test_a_model_without_heads_keeps_one_multiplier_whatever_its_gaps():
    model, slim = slim_block_net()
    search = WidthSearch(ms.analyze(slim), "flops", round_to=4)
    assert not search.units
    below, above = _largest_gap(search, ms.count_flops(slim))
    _, report = ms.expand_with_report(slim, budget=(below + above) / 2, round_to=4)
    assert report.lanes_multiplier is None and report.cost_after == below
