"""ms.land_latency (morphsparse/morph/landing.py): shrinking until the *measured* latency is the budget. The
measurements are replaced by a fake clock with a known bias against the table, so that no test depends on this
machine's speed."""

import pytest

import morphsparse as ms
from morphsparse import latency as L
from morphsparse.morph import landing

from latency_helpers import hand_table, small_cnn


def biased_clock(monkeypatch, table, constant):
    """Measured time = the table's prediction + ``constant`` seconds the table does not know of: every slim
    model measures slower, relative to its seed, than the table predicts."""
    def measure(models, backend, batch_size, threads, repeats):
        assert (backend, batch_size) == (table.backend, table.batch_size)    # the table's settings
        times = [L.predict_latency(m, table) + constant for m in models]
        return [{"median": t, "minimum": t, "ratio": t / times[0]} for t in times]
    monkeypatch.setattr(L, "compare_latency", measure)


@pytest.mark.parametrize("how", ["prune", "resize"])
def test_the_budget_is_corrected_by_the_measured_ratio(monkeypatch, how):
    model = small_cnn(width=32)
    table = hand_table(model)
    biased_clock(monkeypatch, table, constant=0.3 * L.predict_latency(model, table))
    options = {"min_width": 0.05, "round_to": 1} if how == "prune" else {"round_to": 1}
    slim, report = ms.land_latency(model, 0.6, table, how, tolerance=0.05, rounds=5, **options)
    first = report.rounds[0]
    # by the table alone the slim model measures over the budget (the constant does not shrink) ...
    assert first["asked"] == 0.6 and first["measured"] > 0.6 * 1.05
    # ... and the next rounds ask for less, until the measured ratio is within the tolerance
    assert report.rounds[1]["asked"] < 0.6
    assert abs(report.landed) <= 0.05 and len(report.rounds) > 1
    assert report.measured == pytest.approx(
        (L.predict_latency(slim, table) + 0.3 * L.predict_latency(model, table)) / (1.3 * L.predict_latency(model, table)))
    assert "returned" in report.summary()


def test_a_ratio_that_does_not_scale_with_the_request_is_followed_along_a_line(monkeypatch):
    """A machine on which the slim model's measured ratio is the square root of the table's: correcting the
    request by budget / measured alone creeps towards the budget (0.71, 0.59, 0.55, 0.52 of the time in four
    rounds, still 4% over); a line through the rounds measured so far lands within 3% in four."""
    model = small_cnn(width=32)
    table = hand_table(model)
    full = L.predict_latency(model, table)

    def measure(models, backend, batch_size, threads, repeats):
        times = [full * (L.predict_latency(m, table) / full) ** 0.5 for m in models]
        return [{"median": t, "minimum": t, "ratio": t / times[0]} for t in times]
    monkeypatch.setattr(L, "compare_latency", measure)
    slim, report = ms.land_latency(model, 0.5, table, "resize", rounds=4, tolerance=0.03, round_to=1)
    assert abs(report.landed) <= 0.03, report.summary()
    asked = [r["asked"] for r in report.rounds]
    assert asked[1] < asked[0] and len(set(asked)) == len(asked)


def test_a_round_the_shrinker_cannot_reach_keeps_the_closest_measured(monkeypatch):
    model = small_cnn(width=32)
    table = hand_table(model)
    # a constant so large that the corrected budget soon falls under the smallest network
    biased_clock(monkeypatch, table, constant=3 * L.predict_latency(model, table))
    with pytest.warns(UserWarning, match="no round measured within 3%"):
        slim, report = ms.land_latency(model, 0.5, table, "resize", rounds=6, round_to=1)
    assert report.chosen == min(range(len(report.rounds)), key=lambda i: abs(report.rounds[i]["measured"] - 0.5))
    assert slim is not None


def partly_padded_table(model, step=16):
    """A device on which every width between two multiples of ``step`` costs 60% of the way from its own width
    to the next multiple: the table suggests ``round_to=step`` (the widths just past a multiple cost more than
    the line between the multiples, by most of the step), and widths between the multiples still run faster
    than the next one."""
    effective = lambda w: 0.4 * w + 0.6 * step * -(-w // step)    # noqa: E731
    return hand_table(model, grid=[1, 4, 8, 9, 12, 16, 17, 24, 32],
                      kernel=lambda a, b: 1e-6 * effective(a) * effective(b),
                      elementwise=lambda b: 1e-7 * effective(b))


def test_a_budget_between_the_tables_steps_is_landed_with_every_width(monkeypatch):
    """A width multiplier over widths of 16 or 32 can make 35% or 100% of the time, nothing between: the
    round is made again with round_to=1, says so, and lands; a round_to the caller gives is kept."""
    model = small_cnn(width=32)
    table = partly_padded_table(model)
    assert table.suggested_round_to() == 16
    biased_clock(monkeypatch, table, constant=0.0)
    with pytest.warns(UserWarning, match="multiple of 16"):
        stepped = ms.resize(model, budget=0.85, target="latency", device=table)
    assert L.predict_latency(stepped, table) / L.predict_latency(model, table) < 0.5
    slim, report = ms.land_latency(model, 0.85, table, "resize", rounds=2)
    assert abs(report.landed) <= 0.03 and report.rounds[0]["round_to"] == 1
    assert "every width" in report.summary()
    with pytest.warns(UserWarning, match="no round measured within 3%"):
        _, kept = ms.land_latency(model, 0.85, table, "resize", rounds=2, round_to=16)
    assert all("round_to" not in r for r in kept.rounds)


def test_bad_arguments_and_a_table_from_another_machine_are_refused():
    model = small_cnn()
    table = hand_table(model)
    with pytest.raises(ValueError, match="how must be one of"):
        ms.land_latency(model, 0.5, table, "shrink")
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        ms.land_latency(model, 1.5, table)
    with pytest.raises(ValueError, match="rounds must be"):
        ms.land_latency(model, 0.5, table, rounds=0)
    with pytest.raises(TypeError, match="sets target= itself"):
        ms.land_latency(model, 0.5, table, target="flops")
    elsewhere = L.LatencyTable.from_dict({**table.to_dict(), "machine": {**table.machine, "cpu": "another CPU"}})
    with pytest.raises(L.LatencyTableError, match="another machine"):
        ms.land_latency(model, 0.5, elsewhere)
    assert landing.SHRINKERS == {"prune": ms.prune, "resize": ms.resize}


def test_the_cli_lands_a_pruned_model_on_measured_time(monkeypatch, tmp_path, capsys):
    from morphsparse import cli

    model = small_cnn(width=32)
    model.save(tmp_path / "m.keras")
    table = hand_table(model)
    table.save(tmp_path / "table.json")
    biased_clock(monkeypatch, table, constant=0.3 * L.predict_latency(model, table))
    command = ["prune", str(tmp_path / "m.keras"), "-o", str(tmp_path / "slim.keras"), "--budget", "0.6",
               "--target", "latency", "--latency-table", str(tmp_path / "table.json"), "--min-width", "0.05"]
    assert cli.main(command + ["--land", "5"]) == 0
    out = capsys.readouterr().out
    assert "land_latency (prune)" in out and "round 2" in out and "<- returned" in out
    assert (tmp_path / "slim.keras").exists()
    # the measured loop needs the table and a fractional latency budget: said, not ignored
    for wrong in (["--target", "flops"], ["--budget", "5000"]):
        with pytest.raises(SystemExit, match="--land times the pruned model"):
            cli.main(command + wrong + ["--land"])


def test_a_budget_only_widths_between_the_tables_steps_reach_is_still_reached(monkeypatch):
    """One step of 16 per group is more time than the budget, and the widths between the multiples cost less
    (the device pads only in part): resize says it leaves the table's step and reaches the budget, and
    land_latency lands there; with round_to=16 given, the budget stays out of reach."""
    model = small_cnn(width=32)
    table = partly_padded_table(model)
    full = L.predict_latency(model, table)
    with pytest.warns(UserWarning, match="not multiples of 16"):
        slim = ms.resize(model, budget=0.25, target="latency", device=table)
    assert L.predict_latency(slim, table) / full <= 0.25
    with pytest.raises(ms.ExpandError, match="smallest possible network"):
        ms.resize(model, budget=0.25, target="latency", device=table, round_to=16)
    biased_clock(monkeypatch, table, constant=0.0)
    _, report = ms.land_latency(model, 0.25, table, "resize", rounds=2)
    assert abs(report.landed) <= 0.03
