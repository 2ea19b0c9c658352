"""Accuracy at equal sparsity, against measured latency: RigL with each sparsity type on real Fashion-MNIST.

An MLP 784-320-160-10 trained with RigL (ERK, 90%) under every sparsity type: unstructured, 1x4 and 4x1
blocks, N:M, constant fan-in, and constant fan-in with neuron ablation at two minimum-salient fractions (whose
fully masked neurons ``ms.export`` then removes), beside the dense model, over several seeds. The widths are
multiples of 16 so that every structure tiles every kernel, and the 10-way head stays dense in every variant;
N:M runs at 1:8 (87.5%, uniform over layers: N:M fixes each layer's sparsity), the nearest pattern to 90% that
tiles 784 inputs. Each trained model is converted with ``ms.to_litert(sparse=True)`` (outputs checked against
Keras) and timed with one thread, batch 1, all models in turns over several rounds: the latency of a variant is
its time over the dense model's in the same round (median over rounds, then over seeds), the runtime using
what it can of the zeros (LiteRT's sparse fully-connected kernel for 1x4 blocks; the exported, narrower model
for ablation).

Writes ``examples/results/fashion_mnist_sparsity_types.json`` and ``..._sparsity_types.png`` (accuracy against
latency, one point per variant, error bars over seeds).

Usage:
    python examples/fashion_mnist_sparsity_types.py                    # 3 seeds, 5 epochs, all of the data
    python examples/fashion_mnist_sparsity_types.py --quick            # a minute: 1 seed, 1 epoch, a subset
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import keras  # noqa: E402

import morphsparse as ms  # noqa: E402
from morphsparse.data import load_fashion_mnist, prepare_images  # noqa: E402
from morphsparse.litert import interpreter  # noqa: E402
from sparse_inference import time_calls  # noqa: E402

RESULTS = ROOT / "examples" / "results"
SPARSITY = 0.9
# (label, sparse_optimizer options, export the fully masked neurons afterwards)
VARIANTS = (
    ("dense", None, False),
    ("unstructured", {"sparsity_type": "unstructured"}, False),
    ("1x4 blocks", {"sparsity_type": "1x4"}, False),
    ("4x1 blocks", {"sparsity_type": "4x1"}, False),
    ("N:M 1:8", {"sparsity_type": "1:8", "distribution": "uniform", "sparsity": 0.875}, False),
    ("fan-in", {"sparsity_type": "fan_in"}, False),
    # SRigL's own setting (a neuron goes when under 30% of its weights are salient), then a stricter one: on
    # this MLP the paper's 0.3 ablates nothing, 0.9 removes whole neurons (measured, docs/sparse_inference.md)
    ("fan-in + ablation 0.3", {"sparsity_type": ms.FanIn(ablation=True)}, True),
    ("fan-in + ablation 0.9", {"sparsity_type": ms.FanIn(ablation=True, min_salient_fraction=0.9)}, True),
)


def build_mlp():
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(320, activation="relu", name="fc1"),
        keras.layers.Dense(160, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="fc3")], name="mlp")


def train(options, data, epochs, batch, seed):
    """A trained model (stripped and, for ablation, exported), its test accuracy and its structure facts."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build_mlp()
    steps = math.ceil(len(x_train) / batch) * epochs
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.05, steps, alpha=0.02),
                                      momentum=0.9)
    facts = {}
    if options is not None:
        options = dict(options)
        distribution = options.pop("distribution", "erk")
        sparsity = options.pop("sparsity", SPARSITY)
        # The 10-way head stays dense in every variant: ablation must not mask whole logits, and 10 outputs
        # are no multiple of 4 for 4x1 blocks.
        optimizer = ms.sparse_optimizer(model, optimizer, sparsity, "rigl", distribution, total_steps=steps,
                                        layers=ms.LayerSelection(keep_dense=["fc3"]),
                                            schedule=ms.UpdateSchedule(update_every=100), seed=seed, rescale_init=True,
                                        **options)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    facts["train_seconds"] = round(time.perf_counter() - started, 1)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    if options is not None:
        report = ms.sparsity_report(model)
        facts.update(sparsity=round(report.sparsity, 4), kernel_nonzeros=report.nonzeros)
        model = ms.strip(model)
    return model, float(accuracy), facts


def export_masked_neurons(model, x_test, y_test):
    """The model with its fully masked neurons removed through the channel graph, checked equal."""
    slim = ms.export(model, source="zeros")
    x = x_test[:256]
    difference = np.max(np.abs(model.predict(x, verbose=0) - slim.predict(x, verbose=0)))
    if difference > 1e-4:
        raise AssertionError(f"the export of the ablated model differs from it by {difference:.2e}")
    widths = [layer.units for layer in slim.layers if isinstance(layer, keras.layers.Dense)]
    return slim, widths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=None, help="a subset of the 60,000 (default all)")
    parser.add_argument("--rounds", type=int, default=15, help="latency rounds (all models in turn each round)")
    parser.add_argument("--calls", type=int, default=50, help="interpreter calls per model per round")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 6,000 images, 3 rounds")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_images, args.rounds, args.calls = [0], 1, 6000, 3, 10
    output = Path(args.output or RESULTS / f"fashion_mnist_sparsity_types{'_quick' if args.quick else ''}.json")

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = prepare_images(x_train), prepare_images(x_test)
    if args.train_images:
        x_train, y_train = x_train[:args.train_images], y_train[:args.train_images]
    data = ((x_train, y_train), (x_test, y_test))
    batch, started = 128, time.perf_counter()
    runs = []
    for seed in args.seeds:
        for label, options, export in VARIANTS:
            model, accuracy, facts = train(options, data, args.epochs, batch, seed)
            if export:
                model, facts["exported_widths"] = export_masked_neurons(model, x_test, y_test)
            report = ms.to_litert(model, threads=1)
            runs.append(dict(variant=label, seed=seed, test_accuracy=round(accuracy, 4),
                             flops=int(ms.count_flops(model)), params=int(model.count_params()),
                             sparse_kernels=report.sparse_kernels, litert_bytes=report.bytes, **facts,
                             runner=interpreter(ms.litert.convert(model), threads=1), times=[]))
            print(f"seed {seed} {label:18s} acc {accuracy:.4f}  {report.summary()}  {facts}", flush=True)
            keras.backend.clear_session()

    if hasattr(os, "sched_setaffinity"):              # time on one core, one thread, everything in turns
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    x = x_test[:1]
    for _ in range(args.rounds):
        for run in runs:
            run["times"].append(time_calls(run["runner"], x, args.calls))
    for run in runs:
        dense = next(r for r in runs if r["seed"] == run["seed"] and r["variant"] == "dense")
        run["latency_ratio"] = round(statistics.median(t / d for t, d in zip(run["times"], dense["times"])), 4)
        run["latency_ms_median"] = round(1e3 * statistics.median(run["times"]), 4)
    for run in runs:
        del run["runner"], run["times"]

    summary = []
    for label, _, _ in VARIANTS:
        mine = [r for r in runs if r["variant"] == label]
        accuracies = [r["test_accuracy"] for r in mine]
        ratios = [r["latency_ratio"] for r in mine]
        summary.append(dict(variant=label, seeds=len(mine),
                            accuracy_mean=round(statistics.mean(accuracies), 4),
                            accuracy_std=round(statistics.pstdev(accuracies), 4),
                            accuracy_min=min(accuracies), accuracy_max=max(accuracies),
                            latency_ratio_median=round(statistics.median(ratios), 3),
                            latency_ratio_range=[min(ratios), max(ratios)],
                            flops_mean=round(statistics.mean(r["flops"] for r in mine)),
                            params_mean=round(statistics.mean(r["params"] for r in mine))))
        row = summary[-1]
        print(f"{label:18s} acc {100 * row['accuracy_mean']:.2f} +- {100 * row['accuracy_std']:.2f}  "
              f"latency x{row['latency_ratio_median']:.3f} of dense  FLOPs {row['flops_mean']:,}", flush=True)
    results = dict(settings=dict(model="MLP 784-320-160-10", method="rigl", sparsity=SPARSITY, epochs=args.epochs,
                                 train_images=len(x_train), seeds=args.seeds, batch=batch,
                                 optimizer="SGD momentum 0.9, lr 0.05 cosine-decayed", update_every=100,
                                 latency="LiteRT, 1 thread, batch 1, XNNPACK; ratio to dense in the same round",
                                 rounds=args.rounds, calls=args.calls, cpu_count=os.cpu_count(),
                                 load_average=os.getloadavg(), keras=keras.__version__),
                   summary=summary, runs=runs, total_seconds=round(time.perf_counter() - started, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    plot(summary, output.with_suffix(".png"))
    print(f"wrote {output} ({results['total_seconds']:.0f} s)")
    return results


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in summary:
        low, high = row["latency_ratio_range"]
        median = row["latency_ratio_median"]
        ax.errorbar(median, 100 * row["accuracy_mean"], yerr=100 * row["accuracy_std"],
                    xerr=[[max(median - low, 0.0)], [max(high - median, 0.0)]], marker="o", capsize=3, label=row["variant"])
    ax.set_xlabel("LiteRT latency, batch 1, one thread (ratio to dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST MLP, RigL at {SPARSITY:.0%}: accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
