"""Landing on measured time: shrink a model until its *measured* latency, not only the table's prediction, is
the budget.

A latency table predicts a model's time from its layers timed alone (``morphsparse.latency``); the prediction
misses by a few percent to tens of percent (docs/latency.md). NetAdapt closes that gap by measuring every
proposal on the device. :func:`land_latency` does the same around ``ms.prune`` or ``ms.resize``: it shrinks to
the budget by the table, times the result against the model (alternating, so drift hits both alike), and
shrinks again with the budget corrected by what it measured, a few rounds at most. It measures with the
table's backend, batch size and threads, so it runs on the machine that profiled the table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from morphsparse import latency as _latency
from morphsparse.checks import fraction
from morphsparse.morph.expand import ExpandError, resize
from morphsparse.morph.prune import PruneError, prune

SHRINKERS = {"prune": prune, "resize": resize}


@dataclass
class LandingReport:
    """What :func:`land_latency` asked and measured in each round: ``rounds`` is a list of ``{"asked": budget
    passed to the shrinker, "predicted": the table's ratio, "measured": the measured ratio}``; ``chosen`` the
    index of the round returned (the one measured closest to ``budget``)."""

    budget: float
    how: str
    rounds: list = field(default_factory=list)
    chosen: int = 0

    @property
    def measured(self):
        return self.rounds[self.chosen]["measured"]

    @property
    def landed(self):
        """The measured ratio's distance from the budget, relative to it (+0.05: 5% over)."""
        return self.measured / self.budget - 1

    def summary(self):
        lines = [f"land_latency ({self.how}) to {self.budget:.0%} of the measured latency:"]
        for i, r in enumerate(self.rounds):
            mark = " <- returned" if i == self.chosen else ""
            finer = " (every width: the table's step could not come near it)" if r.get("round_to") == 1 else ""
            lines.append(f"  round {i + 1}: asked {r['asked']:.3f}, predicted {r['predicted']:.3f}, measured "
                         f"{r['measured']:.3f}{finer}{mark}")
        return "\n".join(lines)


def land_latency(model, budget, table, how="prune", *, rounds=4, tolerance=0.03, repeats=None, **options):
    """Shrink ``model`` to ``budget`` (a fraction in (0, 1]) of its measured latency on this machine, by
    ``how`` (``"prune"``: ``ms.prune``, ranking channels by importance; ``"resize"``: ``ms.resize``, a uniform
    width multiplier) with ``target="latency", device=table``. After each shrink, the slim model and ``model``
    are timed together (``ms.compare_latency`` with the table's backend, batch size and threads) and the budget
    asked of the next round is corrected by the measured ratio; it stops within ``tolerance`` (relative) of
    ``budget`` or after ``rounds``. ``options`` go to the shrinker (``importance=``, ``min_width=``, ...).

    Returns ``(slim model, LandingReport)``: the round measured closest to ``budget``. Warns when none is within
    ``tolerance``. Raises :class:`~morphsparse.latency.LatencyTableError` for a table profiled on another
    machine, and the shrinker's error when the first round's budget cannot be reached."""
    if how not in SHRINKERS:
        raise ValueError(f"how must be one of {sorted(SHRINKERS)}, got {how!r}")
    budget = fraction(budget, "budget", low_open=True)
    tolerance = fraction(tolerance, "tolerance", low_open=True)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    for reserved in ("budget", "target", "device"):
        if reserved in options:
            raise TypeError(f"land_latency sets {reserved}= itself; pass the budget and the table as arguments")
    table = _latency.as_table(table)
    table.check(machine=True)
    repeats = _latency.DEFAULT_REPEATS if repeats is None else repeats
    report, models = LandingReport(budget, how), []
    asked, model_predicted = budget, _latency.predict_latency(model, table)
    for _ in range(rounds):
        try:
            slim, predicted, finer = _shrink(model, asked, table, how, tolerance, model_predicted, options)
        except (PruneError, ExpandError):
            if not models:
                raise
            # past what the shrinker can reach: go halfway back towards the smallest request it did make
            reached = min(r["asked"] for r in report.rounds)
            if reached - asked < 1e-3:
                break
            asked = (asked + reached) / 2
            continue
        _, slim_time = _latency.compare_latency([model, slim], table.backend, table.batch_size,
                                                table.threads or None, repeats)
        measured = slim_time["ratio"]      # per round, then the median: steadier than a ratio of medians
        report.rounds.append({"asked": asked, "predicted": predicted, "measured": measured,
                              **({"round_to": 1} if finer else {})})
        models.append(slim)
        if abs(measured / budget - 1) <= tolerance:
            break
        asked = _next_request(report.rounds, budget)
        if any(abs(r["asked"] - asked) < 1e-3 for r in report.rounds):
            break       # the same request again would measure the same model
    report.chosen = min(range(len(models)), key=lambda i: abs(report.rounds[i]["measured"] / budget - 1))
    if abs(report.landed) > tolerance:
        warnings.warn(f"land_latency of '{model.name}': no round measured within {tolerance:.0%} of the budget "
                      f"{budget:.0%}; the closest measured {report.measured:.1%} of the model's latency "
                      f"({len(report.rounds)} round(s)). Raise rounds=, or re-profile the table on a quiet "
                      "machine.", UserWarning, stacklevel=2)
    return models[report.chosen], report


def _shrink(model, asked, table, how, tolerance, model_predicted, options):
    """The shrinker's model for ``asked``, its predicted ratio, and whether it took every width: where the
    widths the table prefers (multiples of its step, ``round_to`` left to the table) cannot come within
    ``tolerance`` of the request, as a multiplier over a few wide steps cannot, the request is made again with
    ``round_to=1`` and the closer of the two kept. A ``round_to`` the caller gave is kept."""
    shrink = SHRINKERS[how]
    slim = shrink(model, budget=asked, target="latency", device=table, **options)
    predicted = _latency.predict_latency(slim, table) / model_predicted
    if "round_to" in options or abs(predicted / asked - 1) <= tolerance or not table.suggested_round_to():
        return slim, predicted, False
    finer = shrink(model, budget=asked, target="latency", device=table, round_to=1, **options)
    closer = _latency.predict_latency(finer, table) / model_predicted
    if abs(closer / asked - 1) >= abs(predicted / asked - 1):
        return slim, predicted, False
    return finer, closer, True


def _next_request(rounds, budget):
    """The budget to ask the shrinker for next, from the (asked, measured) pairs so far. Once the rounds have
    bracketed ``budget``, along the line through the closest pair measured on each side of it, kept inside
    the bracket. Before that, the closest round's request scaled by ``budget / measured``, or, where the line
    through the two closest rounds asks for more (a time that does not shrink with the widths moves the
    measured ratio less than the request), that line's request, but never a step more than twice as long:
    two rounds within the timing noise of each other draw a line that points anywhere."""
    by_distance = sorted(rounds, key=lambda r: abs(r["measured"] - budget))
    over = [r for r in by_distance if r["measured"] > budget]
    under = [r for r in by_distance if r["measured"] <= budget]
    closest = by_distance[0]
    scaled = closest["asked"] * budget / closest["measured"]
    pair = [over[0], under[0]] if over and under else by_distance[:2]
    if len(pair) < 2:
        return min(1.0, scaled)
    (a0, m0), (a1, m1) = ((r["asked"], r["measured"]) for r in pair)
    if (a1 - a0) * (m1 - m0) <= 0:      # not rising: timing noise
        return min(1.0, scaled)
    line = a0 + (budget - m0) * (a1 - a0) / (m1 - m0)
    if over and under:
        return min(max(line, min(a0, a1)), max(a0, a1))
    farthest = closest["asked"] + 2 * (scaled - closest["asked"])
    if scaled < closest["asked"]:      # shrinking further: by the line, down to the farthest step (above zero)
        return max(min(line, scaled), farthest, scaled / 2)
    return min(1.0, max(line, scaled), farthest)


__all__ = ["land_latency", "LandingReport"]
