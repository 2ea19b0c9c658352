"""Does a measured latency table predict, and land, the time a model takes on the machine that profiled it?

Issue 20's checks, for four architectures (a plain CNN on 64x64x3, keras.applications MobileNetV2 at alpha 0.35
and 96x96x3, the small ViT of ``ms.models.small_vit`` on 28x28x1, keras_hub's GPT-2 backbone with 2 layers of
width 128 on 64 tokens), each backend ("keras": a traced
tf.function; "litert": the LiteRT interpreter) and batch size (1 and 32), all at one thread:

1. **prediction** (``--assignments N``): the table of the full-width model (``ms.profile_latency``), then N
   random width assignments (every removable group at a uniform random 20-100% of its width, rounded to its
   granularity), each built with ``build_with_widths`` and timed end to end together with the full model
   (``ms.compare_latency``, the same discipline as the table's layers), against ``ms.predict_latency``.
   Reports the median absolute relative error and the share within 15%, of the time and of its ratio to the
   full model's (timed alongside: free of the machine's drift since the table was measured).
2. **landing** (``--landing``): ``ms.prune(target="latency", device=table)`` and
   ``ms.resize(target="latency", device=table)`` to budgets of 50% and 30% of the predicted latency, and the
   same through ``ms.land_latency`` (corrected by measured time); each slim model's measured latency as a
   fraction of the full model's, timed together (the issue asks for within 7% of the budget).
3. **accuracy** (``--accuracy``): item 5 on the structure-quality protocol, for models of its zoo
   (``--accuracy-models``, default the VGG-style chain, keras_hub's ResNet and MobileNetV2) and each backend
   at ``--accuracy-batch``, ``--seeds``: the dense seed pruned to 50% of its FLOPs (FLOP-targeted), to the same
   predicted latency (latency-targeted), and to the latency-targeted model's FLOPs (FLOP-targeted), each
   fine-tuned alike. Reports each slim model's test accuracy and its measured latency as a share of the
   seed's (all timed together, alternating).

The machine must be quiet: every figure is a timing. Writes ``benchmarks/results/latency_tables.json``.

Full run (hours on two cores; the lead runs it when the machine is idle):

    python benchmarks/latency_tables.py --assignments 50 --landing --accuracy --seeds 0 1 2 --refresh

Small check that it works (a few minutes):

    python benchmarks/latency_tables.py --archs cnn --backends keras --batches 1 --assignments 4 \\
        --points 3 --repeats 5 --out /tmp/latency_small.json
"""

from __future__ import annotations

import argparse
import json
import os
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
from morphsparse import latency as latency_module  # noqa: E402
from morphsparse import models as reference_models  # noqa: E402
from morphsparse.morph.expand import build_with_widths, group_granularity, rounded_width  # noqa: E402

ARCHS = ("cnn", "mobilenetv2", "transformer", "gpt2")


def plain_cnn(input_shape=(64, 64, 3), classes=10, widths=(32, 64, 128, 256)):
    L = keras.layers
    x = inputs = keras.Input(input_shape)
    for i, w in enumerate(widths):
        x = L.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
        if i < len(widths) - 1:
            x = L.MaxPooling2D(name=f"pool{i}")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(classes, name="logits")(x), name="plain_cnn")


def make(arch, input_shape=None):
    keras.utils.set_random_seed(0)
    if arch == "cnn":
        return plain_cnn(input_shape or (64, 64, 3))
    if arch == "mobilenetv2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=10)
    if arch == "transformer":
        return reference_models.small_vit()
    if arch == "gpt2":
        return gpt2()
    raise ValueError(arch)


def gpt2(length=64):
    """keras_hub's GPT-2 backbone at a small configuration (random weights), called on a fixed length: a
    transformer we did not design, taking a dict of inputs."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=1000, num_layers=2, num_heads=4, hidden_dim=128,
                                             intermediate_dim=512, max_sequence_length=length)
    inputs = {"token_ids": keras.Input((length,), dtype="int32", name="token_ids"),
              "padding_mask": keras.Input((length,), dtype="int32", name="padding_mask")}
    return keras.Model(inputs, backbone(inputs), name="gpt2")


def random_counts(graph, rng, low=0.2):
    steps = group_granularity(graph)
    return {g.id: min(g.size, rounded_width(g.size, rng.uniform(low, 1.0), steps[g.id]))
            for g in graph.removable_groups if g.size > 1}


def prediction(arch, backend, batch, args, rng):
    model = make(arch)
    start = time.perf_counter()
    table = ms.profile_latency(model, backend=backend, batch_size=batch, threads=1, points=args.points,
                               repeats=args.repeats, progress=True, refresh=args.refresh)
    profile_seconds = time.perf_counter() - start
    graph = ms.analyze(model)
    full_predicted = ms.predict_latency(model, table)
    rows = []
    for i in range(args.assignments):
        counts = random_counts(graph, rng)
        built = build_with_widths(model, graph, counts, name=f"{arch}_{i}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predicted = ms.predict_latency(built, table)
        # timed together with the full model, alternating: the ratio is free of the machine's drift since the
        # table was measured, the absolute time is not
        full, narrow = ms.compare_latency([model, built], backend, batch, threads=1,
                                          repeats=args.timing_repeats or args.repeats)
        measured = narrow["median"]
        ratio_error = (predicted / full_predicted) / narrow["ratio"] - 1     # the share, round by round
        rows.append({"predicted_ms": predicted * 1e3, "measured_ms": measured * 1e3,
                     "measured_full_ms": full["median"] * 1e3, "error": predicted / measured - 1,
                     "ratio_error": ratio_error, "measured_share": narrow["ratio"],
                     "ratio_of_medians_error": (predicted / full_predicted) / (measured / full["median"]) - 1,
                     "extrapolated": any("extrapolates" in str(w.message) for w in caught)})
        print(f"  {arch} {backend} b{batch} #{i}: predicted {predicted * 1e3:.3f} ms, measured "
              f"{measured * 1e3:.3f} ms ({rows[-1]['error']:+.1%}; as a share of the full model "
              f"{ratio_error:+.1%})", flush=True)
    errors = np.abs([r["error"] for r in rows])
    ratio_errors = np.abs([r["ratio_error"] for r in rows])
    # the noise floor of the time itself: the unchanged full model, timed beside every assignment, against
    # its own median over the run (a predictor that knew each model's time at one moment would miss by this)
    full_times = np.array([r["measured_full_ms"] for r in rows])
    full_drift = np.abs(full_times / np.median(full_times) - 1) if len(rows) else np.array([])
    return table, {"arch": arch, "backend": backend, "batch": batch, "signatures": len(table.entries),
                   "profile_seconds": round(profile_seconds, 1), "overhead_ms": table.overhead * 1e3,
                   "full_predicted_ms": ms.predict_latency(model, table) * 1e3,
                   "median_abs_error": float(np.median(errors)) if len(errors) else None,
                   "within_15pct": float(np.mean(errors <= 0.15)) if len(errors) else None,
                   "median_abs_ratio_error": float(np.median(ratio_errors)) if len(errors) else None,
                   "ratio_within_15pct": float(np.mean(ratio_errors <= 0.15)) if len(errors) else None,
                   "full_model_drift_median": float(np.median(full_drift)) if len(rows) else None,
                   "full_model_within_15pct": float(np.mean(full_drift <= 0.15)) if len(rows) else None,
                   "assignments": rows}


def landing(arch, backend, batch, table, args):
    """Prune and resize to 50% and 30% of the predicted latency (by the table alone), and with ms.land_latency
    (corrected by measured time, a few rounds); each slim model is then timed together with the seed,
    alternating, so that the ratio is not the machine's drift between two timings."""
    model = make(arch)
    rows = []
    timing = args.landing_repeats or args.repeats
    for budget in (0.5, 0.3):
        for how in ("prune", "resize"):
            for measured_loop in (False, True):
                row = {"arch": arch, "backend": backend, "batch": batch, "budget": budget,
                       "how": ("land-" if measured_loop else "") + how}
                options = dict(importance="l1", min_width=0.05) if how == "prune" else {}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        if measured_loop:
                            slim, report = ms.land_latency(model, budget, table, how, repeats=timing,
                                                           **options)
                            row["rounds"] = report.rounds
                        else:
                            slim = getattr(ms, how)(model, budget=budget, target="latency", device=table,
                                                    **options)
                    seed_time, slim_time = ms.compare_latency([model, slim], backend, batch, threads=1,
                                                              repeats=timing)
                    row.update(seed_measured_ms=seed_time["median"] * 1e3, measured_ms=slim_time["median"] * 1e3,
                               measured_ratio=slim_time["ratio"],      # as land_latency measures it
                               predicted_ratio=ms.predict_latency(slim, table) / ms.predict_latency(model, table),
                               flop_ratio=ms.count_flops(slim) / ms.count_flops(model))
                    row["off_budget"] = row["measured_ratio"] / budget - 1
                except Exception as err:  # noqa: BLE001 - an unreachable budget is a result too
                    row["error"] = f"{type(err).__name__}: {err}"[:300]
                print(f"  landing {row}", flush=True)
                rows.append(row)
    return rows


def accuracy(args):
    """Item 5 on the structure-quality protocol (benchmarks/structure_quality.py: the same zoo, the same dense
    seeds trained E/2 epochs on 4,000 Fashion-MNIST images, E/2 epochs of fine-tuning at its rate, BatchNorm
    re-estimated before every evaluation on the 10,000 test images). Per model, backend and seed: prune the
    seed to 50% of its FLOPs (FLOP-targeted); to the same predicted latency (latency-targeted, by the table of
    that backend); and to the latency-targeted model's FLOPs (FLOP-targeted). The seed and the three slim
    models are then timed together, alternating: their measured ratios are free of the machine's drift."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import structure_quality as sq

    study = sq.Study(args.train_images, args.epochs)
    rows = []
    for name in args.accuracy_models:
        importance = sq.ZOO[name][4]
        for backend in args.backends:
            batch = args.accuracy_batch
            for i, seed in enumerate(args.seeds):
                dense = study.dense(name, seed)
                start = time.perf_counter()
                # one table per model and backend: the seeds share the architecture
                table = ms.profile_latency(dense, backend=backend, batch_size=batch, threads=1,
                                           points=args.points, repeats=args.repeats, progress=False,
                                           refresh=args.refresh and i == 0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    by_flops = ms.prune(dense, budget=0.5, target="flops", importance=importance)
                    matched = ms.predict_latency(by_flops, table) / ms.predict_latency(dense, table)
                    by_latency = ms.prune(dense, budget=matched, target="latency", device=table,
                                          importance=importance, **args.latency_options)
                    same_flops = ms.prune(dense, budget=float(ms.count_flops(by_latency)), target="flops",
                                          importance=importance)
                slims = {"flops_50": by_flops, "latency_matched": by_latency, "flops_matched": same_flops}
                times = ms.compare_latency([dense, *slims.values()], backend, batch, threads=1,
                                           repeats=args.repeats)
                row = {"model": name, "backend": backend, "batch": batch, "seed": seed,
                       "train_images": args.train_images, "epochs": args.epochs,
                       "dense_accuracy": study.accuracy(name, dense), "dense_measured_ms": times[0]["median"] * 1e3,
                       "dense_flops": ms.count_flops(dense), "predicted_latency_budget": matched,
                       "suggested_round_to": table.suggested_round_to(), "latency_options": args.latency_options}
                for (arm, slim), measured in zip(slims.items(), times[1:]):
                    study.fit(name, slim, args.epochs - args.epochs // 2, seed, rate=sq.FINE_TUNE_RATE)
                    row[arm] = {"accuracy": study.accuracy(name, slim),
                                "measured_ratio": measured["ratio"],   # round by round, as land_latency
                                "measured_ratio_of_medians": measured["median"] / times[0]["median"],
                                "predicted_ratio": ms.predict_latency(slim, table) / ms.predict_latency(dense, table),
                                "flops_ratio": ms.count_flops(slim) / row["dense_flops"],
                                "widths": sq.widths(slim)}
                row["seconds"] = round(time.perf_counter() - start, 1)
                print(f"  accuracy {json.dumps(row)}", flush=True)
                rows.append(row)
    return rows


def repeatability(arch, backend, batch, args):
    """How far one timing of a ratio repeats: a model and its copy at half the FLOPs (``ms.resize``) timed
    ``--timings`` times over, ``--landing-repeats`` rounds each (alternating), with fresh runners for every
    timing (as ``ms.compare_latency`` builds them) and with the same runners reused. Two statistics per timing:
    the ratio of the medians (what ``compare_latency`` gives) and the median of the per-round ratios."""
    model = make(arch)
    slim = ms.resize(model, budget=0.5, target="flops")
    rounds = args.landing_repeats or args.repeats

    def runners():
        return [latency_module._runner(m, latency_module._random_inputs(m.inputs, [(batch,) + tuple(t.shape)[1:]
                                                                                   for t in m.inputs]),
                                       backend, 1) for m in (model, slim)]

    def timing(pair):
        # the library's own alternation (order reversed every other round); the slim model's "ratio" is the
        # median over the rounds of its time over the seed's in the same round
        (_, seed, _), (_, narrow, ratio) = latency_module._time_runners(pair, rounds)
        return {"ratio_of_medians": float(narrow / seed), "median_of_ratios": float(ratio)}

    kept = runners()
    row = {"arch": arch, "backend": backend, "batch": batch, "rounds": rounds,
           "fresh": [timing(runners()) for _ in range(args.timings)],
           "same": [timing(kept) for _ in range(args.timings)]}
    for way in ("fresh", "same"):
        for stat in ("ratio_of_medians", "median_of_ratios"):
            values = np.array([t[stat] for t in row[way]])
            row[f"{way}_{stat}_spread"] = float(np.ptp(values) / np.median(values))
    print(f"  repeatability {json.dumps(row)}", flush=True)
    return row


def _option(text):
    """NAME=VALUE, the value read as JSON where it is (numbers, true/false), else as text."""
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--backends", nargs="*", default=["keras", "litert"], choices=("keras", "litert"))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--assignments", type=int, default=50)
    parser.add_argument("--points", type=int, default=5, help="grid points per width axis of the tables")
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds (tables and end-to-end)")
    parser.add_argument("--landing", action="store_true", help="prune and resize to 50%% and 30%% budgets")
    parser.add_argument("--timing-repeats", type=int, default=None,
                        help="timing rounds of each assignment and the full model (default: --repeats)")
    parser.add_argument("--landing-repeats", type=int, default=None,
                        help="timing rounds of land_latency and of the landed models (default: --repeats)")
    parser.add_argument("--repeatability", action="store_true", help="how far one timing of a ratio repeats "
                        "(a model and its FLOP-halved copy, --timings timings)")
    parser.add_argument("--timings", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="latency vs FLOP targeting on Fashion-MNIST")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--accuracy-models", nargs="*", default=["vgg", "resnet", "mobilenetv2"],
                        help="models of benchmarks/structure_quality.py's zoo for --accuracy")
    parser.add_argument("--latency-options", nargs="*", default={}, type=_option, metavar="NAME=VALUE",
                        help="--accuracy: keyword arguments of the latency-targeted prune (e.g. min_width=0.5)")
    parser.add_argument("--epochs", type=int, default=4, help="--accuracy: total training epochs (as the "
                        "structure-quality study: its cached dense seeds are trained half of them)")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--accuracy-batch", type=int, default=1)
    parser.add_argument("--refresh", action="store_true", help="profile again instead of using cached tables "
                        "(tables measured while the machine was busier predict its quiet times badly)")
    parser.add_argument("--note", default="", help="a line saying how the machine was (quiet, shared, ...)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_tables.json"))
    args = parser.parse_args(argv)
    args.latency_options = dict(args.latency_options)
    apply = latency_module.apply_threads("keras", 1)    # before TensorFlow runs anything
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    result = {"machine": {**latency_module.machine_key(), "keras": keras.__version__, "threads": apply,
                          "note": args.note},
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "prediction": [], "landing": [],
              "accuracy": [], "repeatability": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        result["seconds"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=1) + "\n")

    for arch in args.archs:
        for backend in args.backends:
            for batch in args.batches:
                if args.repeatability:
                    result["repeatability"].append(repeatability(arch, backend, batch, args))
                    save()
                    continue
                try:
                    table, row = prediction(arch, backend, batch, args, rng)
                except Exception as err:  # noqa: BLE001 - one failing configuration does not stop the others
                    result["prediction"].append({"arch": arch, "backend": backend, "batch": batch,
                                                 "error": f"{type(err).__name__}: {err}"[:300]})
                    save()
                    continue
                result["prediction"].append(row)
                if args.assignments:
                    print(f"{arch} {backend} batch {batch}: median |error| {row['median_abs_error']:.1%}, "
                          f"{row['within_15pct']:.0%} within 15%; of the ratio to the full model "
                          f"{row['median_abs_ratio_error']:.1%}, {row['ratio_within_15pct']:.0%}; the full "
                          f"model's own drift {row['full_model_drift_median']:.1%} "
                          f"({args.assignments} assignments; profile "
                          f"{row['profile_seconds']:.0f} s)", flush=True)
                if args.landing:
                    result["landing"].extend(landing(arch, backend, batch, table, args))
                save()
    if args.accuracy:
        result["accuracy"] = accuracy(args)
    save()
    print(f"written to {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
