"""Pruning a trained decoder without retraining: perplexity after removing 10%, 20% and 30% of the parameters
with calibration importances (Wanda-sp, FLAP) against weight magnitude (issue 21, item 6).

The corpus is real English text installed from a package: Debian's ``fortunes`` (``apt-get install
fortunes``; /usr/share/games/fortunes, about 1.2 MB of quotations, jokes and verse). The fortunes are shuffled
with a fixed seed and split 90/10 into training and validation text; the model reads characters (every
printable ASCII character and the newline: a 96-token vocabulary), so perplexity is per character.

The model is keras_hub's ``GPT2Backbone`` from a small config (4 layers, 4 heads, hidden 128, FFN 512, 128
positions, no dropout; random initialisation, no preset) behind a Dense language-model head, trained per seed
with Adam on windows of 128 characters. Then, with no fine-tuning, ``ms.prune(model, budget=1 - f,
target="size", importance=...)`` for f in 10%, 20%, 30% of the parameters and three importances:

* ``l1``: the mean |w| of the weights feeding each FFN channel or head (magnitude; there is no BatchNorm, so no
  gamma importance), with prune's defaults (scores normalised within each group, ranked per unit of cost to the
  power 0.5) and with ``cost_power=0`` (importance alone);
* ``wanda``: Wanda-sp's activation-weighted magnitude, from 512 calibration windows of the training text;
* ``flap``: FLAP's fluctuation metric from the same windows, with the removed channels' mean folded into the
  next bias (bias compensation).

The residual stream is not pruned (every LayerNormalization normalises it whole), so what goes is FFN channels
and attention heads. Recorded per seed: validation perplexity of the dense and every pruned model, the
parameter ratio reached, and the CPU time of one compiled forward pass (``predict_on_batch``; batch 1 and 16;
the dense model and the 30%-pruned FLAP model alternated over rounds; minimum and median).

Usage: python benchmarks/calibration_pruning.py [--seeds 0 1 2] [--steps 1500] [--corpus DIR]
       python benchmarks/calibration_pruning.py --speed      # the timings again, from the results file
Writes benchmarks/results/calibration_pruning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import morphsparse as ms  # noqa: E402

CORPUS = Path("/usr/share/games/fortunes")
LENGTH, BATCH = 128, 32
CONFIG = dict(num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512, dropout=0.0,
              max_sequence_length=LENGTH)
FRACTIONS = (0.1, 0.2, 0.3)
#: (label, importance, other prune arguments)
VARIANTS = (("l1", "l1", {}), ("l1, cost_power=0", "l1", dict(cost_power=0.0)), ("wanda", "wanda", {}),
            ("flap", "flap", {}))
CALIBRATION_WINDOWS, VALIDATION_WINDOWS = 512, 256
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))


def load_fortunes(directory=CORPUS):
    """The fortunes of every database in ``directory`` (not the .dat indexes nor the .u8 copies), as a list."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    if not files:
        raise SystemExit(f"no fortune databases in {directory}: apt-get install fortunes, or pass --corpus DIR")
    fortunes = []
    for path in files:
        text = path.read_text(encoding="latin-1")
        fortunes += [f.strip("\n") for f in text.split("\n%\n") if f.strip()]
    return fortunes


def encode(fortunes):
    """Characters outside the alphabet become spaces; fortunes are separated by a blank line."""
    index = {c: i for i, c in enumerate(ALPHABET)}
    text = "\n\n".join(fortunes)
    return np.array([index.get(c, 1) for c in text], np.int32)


def split(fortunes, seed=1234):
    order = np.random.default_rng(seed).permutation(len(fortunes))
    cut = int(0.9 * len(order))
    return encode([fortunes[i] for i in order[:cut]]), encode([fortunes[i] for i in order[cut:]])


def windows(ids, count, rng):
    starts = rng.integers(0, len(ids) - LENGTH - 1, size=count)
    block = np.stack([ids[s:s + LENGTH + 1] for s in starts])
    return block[:, :-1], block[:, 1:]


def inputs(tokens):
    return {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}


def build(seed):
    import keras_hub
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=len(ALPHABET), **CONFIG)
    x = {key: keras.Input((LENGTH,), dtype="int32", name=key) for key in ("token_ids", "padding_mask")}
    logits = keras.layers.Dense(len(ALPHABET), name="lm_head")(backbone(x))
    return keras.Model(x, logits, name=f"gpt_fortunes_{seed}")


def perplexity(model, data):
    tokens, targets = data
    logits = model.predict(inputs(tokens), batch_size=64, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    return float(np.exp(np.mean(keras.ops.convert_to_numpy(loss))))


def train(model, train_ids, steps, seed):
    rng = np.random.default_rng(seed)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(0.0, steps, alpha=0.05,
                                                                                warmup_target=2e-3,
                                                                                warmup_steps=steps // 20),
                                        clipnorm=1.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens, targets = windows(train_ids, steps * BATCH, rng)
    started = time.perf_counter()
    model.fit(inputs(tokens), targets, batch_size=BATCH, epochs=1, verbose=0)
    return time.perf_counter() - started


def forward_times(models, batch, rounds=60):
    """Seconds of one compiled forward pass (``predict_on_batch``, what ``predict`` runs) of each model,
    alternated over ``rounds``: (minimum, median) per model."""
    x = inputs(np.random.default_rng(0).integers(0, len(ALPHABET), (batch, LENGTH)).astype(np.int32))
    for m in models:       # warm up: trace and compile once
        m.predict_on_batch(x)
        m.predict_on_batch(x)
    seconds = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            started = time.perf_counter()
            m.predict_on_batch(x)
            seconds[i].append(time.perf_counter() - started)
    return [(float(np.min(s)), float(np.median(s))) for s in seconds]


def same_widths(model, widths):
    """``model`` exported with every group cut to the width ``widths`` records for it (``report.groups`` of a
    pruned model): the speed of a slim model depends on its widths only, not on which channels it kept."""
    graph = ms.analyze(model)
    alive = {}
    for group in graph.groups:
        kept = widths.get(", ".join(group.producers), (group.size, group.size))[1]
        if kept < group.size:
            alive[group.id] = np.arange(group.size) < kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ms.export(model, source="group_lasso", alive=alive)


def speed(path, rounds):
    """Time the dense model against one with the widths of each seed's 30% FLAP prune (from the results file),
    compiled, alternated; adds ``forward_seconds`` to every row."""
    result = json.loads(Path(path).read_text())
    for row in result["rows"]:
        model = build(row["seed"])
        entry = next(e for e in row["pruned"] if e["fraction"] == FRACTIONS[-1] and e["importance"] == "flap")
        slim = same_widths(model, entry["widths"])
        row["forward_seconds"] = speed_row(model, slim, rounds)
        print(f"seed {row['seed']}: {json.dumps(row['forward_seconds'])}", flush=True)
    result["speed_note"] = ("forward_seconds: predict_on_batch of the dense model and of one with the widths of "
                            "the 30% FLAP prune, alternated over rounds, minimum and median")
    Path(path).write_text(json.dumps(result, indent=1))


def speed_row(model, slim, rounds=60):
    times = {}
    for batch in (1, 16):
        (dense_min, dense_median), (slim_min, slim_median) = forward_times([model, slim], batch, rounds)
        times[str(batch)] = dict(
            dense_min=dense_min, dense_median=dense_median, pruned_min=slim_min, pruned_median=slim_median,
            speedup_min=round(dense_min / slim_min, 3), speedup_median=round(dense_median / slim_median, 3))
    return times


def run(seed, steps, train_ids, valid_ids):
    model = build(seed)
    seconds = train(model, train_ids, steps, seed)
    validation = windows(valid_ids, VALIDATION_WINDOWS, np.random.default_rng(100 + seed))
    calibration = inputs(windows(train_ids, CALIBRATION_WINDOWS, np.random.default_rng(200 + seed))[0])
    params = ms.count_params(model)
    row = dict(seed=seed, steps=steps, train_seconds=round(seconds, 1), params=params,
               dense_perplexity=round(perplexity(model, validation), 4), pruned=[])
    print(f"seed {seed}: trained in {seconds:.0f} s, dense perplexity {row['dense_perplexity']:.3f}", flush=True)
    kept = {}
    for fraction in FRACTIONS:
        for label, importance, options in VARIANTS:
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slim, report = ms.prune_with_report(
                    model, budget=1.0 - fraction, target="size", importance=importance,
                    data=calibration if importance != "l1" else None, **options)
            entry = dict(fraction=fraction, importance=label,
                         params_ratio=round(ms.count_params(slim) / params, 4),
                         perplexity=round(perplexity(slim, validation), 4),
                         widths={k: v for k, v in report.groups.items()},
                         seconds=round(time.perf_counter() - started, 1))
            row["pruned"].append(entry)
            print(f"  -{fraction:.0%} {label:16s} perplexity {entry['perplexity']:9.3f} "
                  f"(params x{entry['params_ratio']:.3f}, {entry['seconds']:.0f} s)", flush=True)
            kept[(fraction, label)] = slim
    row["forward_seconds"] = speed_row(model, kept[(FRACTIONS[-1], "flap")])
    return row


def summarise(rows):
    table = {}
    for fraction in FRACTIONS:
        for label, _, _ in VARIANTS:
            values = [e["perplexity"] for r in rows for e in r["pruned"]
                      if e["fraction"] == fraction and e["importance"] == label]
            ratios = [e["perplexity"] / r["dense_perplexity"] for r in rows for e in r["pruned"]
                      if e["fraction"] == fraction and e["importance"] == label]
            table[f"{fraction:.0%} {label}"] = dict(
                perplexity_mean=round(float(np.mean(values)), 3), perplexity_std=round(float(np.std(values)), 3),
                ratio_to_dense_mean=round(float(np.mean(ratios)), 3))
    dense = [r["dense_perplexity"] for r in rows]
    table["dense"] = dict(perplexity_mean=round(float(np.mean(dense)), 3),
                          perplexity_std=round(float(np.std(dense)), 3))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "calibration_pruning.json"))
    parser.add_argument("--speed", action="store_true",
                        help="only time the dense and 30%%-pruned widths again (from --output), on a quiet machine")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args(argv)
    if args.speed:
        return speed(args.output, args.rounds)
    train_ids, valid_ids = split(load_fortunes(args.corpus))
    print(f"fortunes: {len(train_ids):,d} training and {len(valid_ids):,d} validation characters", flush=True)
    rows = [run(seed, args.steps, train_ids, valid_ids) for seed in args.seeds]
    result = dict(benchmark="calibration_pruning", corpus="Debian package fortunes (/usr/share/games/fortunes)",
                  machine=dict(platform=platform.platform(), processor=platform.processor(),
                               cpus=os.cpu_count()),
                  model=dict(CONFIG, backbone="keras_hub GPT2Backbone", vocabulary=len(ALPHABET)),
                  training_characters=int(len(train_ids)), validation_characters=int(len(valid_ids)),
                  rows=rows, summary=summarise(rows))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    for key, value in result["summary"].items():
        print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
