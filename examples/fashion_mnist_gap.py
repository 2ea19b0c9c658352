"""GaP (cyclic and parallel), SNIP and lottery tickets on real Fashion-MNIST, next to RigL at equal epochs.

Extends examples/fashion_mnist_rigl.py: the same MLP 784-300-100-10, the same optimizer (SGD, momentum 0.9,
learning rate 0.05 cosine-decayed), batch, ERK distribution, sparse-aware initial scaling and epochs, at 90% and
98% sparsity. For every method it records test accuracy, the peak number of live parameters during training
(what a sparse training run must store and update; the dense MLP has 266,610) and the training time, all
measured in this one process so that times are comparable. Writes
``examples/results/fashion_mnist_gap.json`` and ``fashion_mnist_gap.png`` (accuracy and peak parameters).

What each method is given, per run of E epochs (E = 12 full, 2 quick):
* rigl: examples/fashion_mnist_rigl.py's own ``train_one`` (update every 100 steps until 75% of training).
* gap (cyclic): partitions fc1 | fc2 | fc3, rounds R, the phases fill the first 75% of the steps, then
  fine-tuning with a fixed mask; one cosine schedule over the run, as RigL.
* parallel_gap: 3 copies, R rounds of E*3/4/R epochs per copy, then E/4 epochs of fine-tuning, so each copy
  (worker) trains E epochs; the copies run one after another here, so compute is about 3x. Each phase and the
  fine-tuning restart the cosine schedule over their own steps.
* snip: one batch of 128 at initialisation, then the fixed mask for E epochs.
* lottery: E dense epochs, magnitude pruning, rewind to initialisation, E epochs of retraining; one dense run
  serves both sparsities (``reuse=``); its dense network is also the dense reference.

Usage:
    python examples/fashion_mnist_gap.py            # full run (about 5 minutes on 2 quiet cores, 18 busy)
    python examples/fashion_mnist_gap.py --quick    # about two minutes: 12k training images, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import keras  # noqa: E402

import fashion_mnist_rigl as rigl_study  # noqa: E402  (model builders and training settings shared)
import morphsparse.sparse as mss  # noqa: E402
from morphsparse.data import load_fashion_mnist, prepare_images  # noqa: E402

RESULTS = ROOT / "examples" / "results"
METHODS = ("rigl", "gap", "parallel_gap", "snip", "lottery")
BATCH = 128
LEARNING_RATE = 0.05
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def sgd(steps):
    """The RigL study's optimizer: SGD momentum 0.9, lr 0.05 cosine-decayed to 2% over ``steps``."""
    return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, max(steps, 1), alpha=0.02),
                                momentum=0.9)


def steps_for(epochs, examples):
    return math.ceil(examples / BATCH) * epochs


def evaluate(model, data):
    _, (x_test, y_test) = data
    return float(model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1])


def check_masks(model):
    """The invariant every method must end with: exact counts, pruned weights exactly zero."""
    for unit in mss.find_sparse_optimizer(model).units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        assert int(mask.sum()) == mss.kept_count(mask.size, unit.sparsity), unit.key
        assert not np.any(keras.ops.convert_to_numpy(unit.kernel)[mask == 0]), unit.key


def record(method, sparsity, accuracy, peak, seconds, epochs, model, **extra):
    numbers = rigl_study.report_numbers(model)
    row = dict(method=method, sparsity=sparsity, test_accuracy=round(accuracy, 4), peak_parameters=int(peak),
               final_parameters=numbers["parameters"], train_seconds=round(seconds, 1), epochs=epochs,
               flops=numbers["flops"], measured_sparsity=numbers["measured_sparsity"], **extra)
    print(f"  {method:13s} S={sparsity:.2f}  acc={accuracy:.4f}  peak params={peak:>7d}  "
          f"final params={numbers['parameters']:>7d}  {seconds:6.1f}s", flush=True)
    return row


def run_rigl(sparsity, data, epochs, seed):
    row, _ = rigl_study.train_one(rigl_study.build_mlp, "rigl", sparsity, data, epochs, BATCH, seed)
    # RigL holds exactly its final parameter count all along (drop and grow the same number per update).
    return dict(method="rigl", sparsity=sparsity, test_accuracy=row["test_accuracy"],
                peak_parameters=row["parameters"], final_parameters=row["parameters"],
                train_seconds=row["train_seconds"], epochs=epochs, flops=row["flops"],
                measured_sparsity=row["measured_sparsity"])


def run_gap(sparsity, data, epochs, seed, rounds):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    sparse = rigl_study.build_mlp()
    steps = steps_for(epochs, len(x_train))
    optimizer = mss.sparse_optimizer(sparse, sgd(steps), sparsity, "gap", "erk", partitions=3, rounds=rounds,
                                     total_steps=steps, seed=seed, rescale_init=True)
    sparse.compile(optimizer, LOSS, metrics=["accuracy"])
    monitor = mss.PeakParameterMonitor()
    started = time.perf_counter()
    sparse.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[monitor])
    seconds = time.perf_counter() - started
    check_masks(sparse)
    phase = mss.gap_phase(sparse)
    assert monitor.peak == mss.planned_peak_parameters(sparse)
    return record("gap", sparsity, evaluate(sparse, data), monitor.peak, seconds, epochs, sparse,
                  partitions=phase.partitions, rounds=rounds, steps_per_phase=phase.phase_length)


def run_parallel_gap(sparsity, data, epochs, seed, rounds):
    (x_train, y_train), _ = data
    fine_tune = max(1, epochs // 4)
    phase_epochs = max(1, (epochs - fine_tune) // rounds)
    keras.utils.set_random_seed(seed)
    result = mss.parallel_gap(
        rigl_study.build_mlp(), fit=dict(x=x_train, y=y_train, epochs=phase_epochs, batch_size=BATCH, verbose=0),
        fine_tune=dict(epochs=fine_tune),
        compile=dict(optimizer=lambda: sgd(steps_for(phase_epochs, len(x_train))), loss=LOSS, metrics=["accuracy"]),
        fine_tune_compile=dict(optimizer=lambda: sgd(steps_for(fine_tune, len(x_train))), loss=LOSS,
                               metrics=["accuracy"]),
        sparsity=sparsity, distribution="erk", partitions=3, rounds=rounds, seed=seed, rescale_init=True)
    check_masks(result.model)
    copies = len(result.partitions)
    one_worker = result.phase_seconds / copies + result.fine_tune_seconds
    return record("parallel_gap", sparsity, evaluate(result.model, data), result.peak_parameters,
                  result.training_seconds, rounds * phase_epochs + fine_tune, result.model, copies=copies,
                  rounds=rounds, phase_epochs=phase_epochs, fine_tune_epochs=fine_tune,
                  compute_epochs=copies * rounds * phase_epochs + fine_tune,
                  seconds_per_worker_if_parallel=round(one_worker, 1))


def run_snip(sparsity, data, epochs, seed):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    sparse = rigl_study.build_mlp()
    optimizer = mss.sparse_optimizer(sparse, sgd(steps_for(epochs, len(x_train))), sparsity, "snip", "erk",
                                     data=(x_train, y_train), loss=LOSS, batches=1, batch_size=BATCH, seed=seed,
                                     rescale_init=True)
    sparse.compile(optimizer, LOSS, metrics=["accuracy"])
    monitor = mss.PeakParameterMonitor()
    sparse.fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[monitor])
    seconds = time.perf_counter() - started
    check_masks(sparse)
    return record("snip", sparsity, evaluate(sparse, data), monitor.peak, seconds, epochs, sparse)


def run_lottery(sparsity, data, epochs, seed, previous):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    result = mss.lottery_ticket(
        rigl_study.build_mlp(), fit=dict(x=x_train, y=y_train, epochs=epochs, batch_size=BATCH, verbose=0),
        compile=dict(optimizer=lambda: sgd(steps_for(epochs, len(x_train))), loss=LOSS, metrics=["accuracy"]),
        sparsity=sparsity, distribution="erk", rewind_step=0, seed=seed, reuse=previous)
    check_masks(result.model)
    dense_seconds = previous.dense_seconds if previous is not None else result.dense_seconds
    row = record("lottery", sparsity, evaluate(result.model, data), result.peak_parameters,
                 dense_seconds + result.sparse_seconds, epochs, result.model, dense_epochs=epochs,
                 retrain_seconds=round(result.sparse_seconds, 1), dense_seconds=round(dense_seconds, 1),
                 dense_run_shared_between_sparsities=True)
    return row, result


def dense_reference(lottery, data, epochs):
    """The lottery ticket's dense run is the dense baseline (same init, optimizer and epochs)."""
    accuracy = evaluate(lottery.dense_model, data)
    parameters = mss.live_parameters(lottery.dense_model).total
    print(f"  {'dense':13s} S=0.00  acc={accuracy:.4f}  params={parameters:>7d}  {lottery.dense_seconds:6.1f}s")
    return dict(method="dense", sparsity=0.0, test_accuracy=round(accuracy, 4), peak_parameters=parameters,
                final_parameters=parameters, train_seconds=round(lottery.dense_seconds, 1), epochs=epochs)


def rigl_study_numbers(quick):
    """RigL and dense rows from examples/results/fashion_mnist_rigl[_quick].json, when that run exists."""
    path = RESULTS / ("fashion_mnist_rigl_quick.json" if quick else "fashion_mnist_rigl.json")
    if not path.exists():
        return None
    runs = json.loads(path.read_text())["models"]["mlp"]["runs"]
    return {"file": str(path.relative_to(ROOT)),
            "runs": [{k: r[k] for k in ("method", "sparsity", "test_accuracy", "train_seconds", "epochs")}
                     for r in runs if r["method"] in ("dense", "rigl", "static", "set")]}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    sparsities = sorted({r["sparsity"] for r in runs if r["sparsity"] > 0})
    dense = next(r for r in runs if r["method"] == "dense")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        rows = {r["sparsity"]: r for r in runs if r["method"] == method}
        xs = np.arange(len(sparsities)) + (i - (len(METHODS) - 1) / 2) * width
        for ax, key, scale in ((axes[0], "test_accuracy", 100), (axes[1], "peak_parameters", 1e-3),
                               (axes[2], "train_seconds", 1)):
            values = [rows[s][key] * scale if s in rows else np.nan for s in sparsities]
            ax.bar(xs, values, width, label=method)
    axes[0].axhline(dense["test_accuracy"] * 100, color="black", linestyle="--", label="dense")
    lows = [r["test_accuracy"] * 100 for r in runs]
    axes[0].set_ylim(min(lows) - 2, max(lows) + 1)
    axes[1].axhline(dense["peak_parameters"] * 1e-3, color="black", linestyle="--", label="dense")
    axes[1].set_yscale("log")
    for ax, label in zip(axes, ("test accuracy (%)", "peak live parameters (thousands, log)",
                                "training time on one machine (s)")):
        ax.set_xticks(range(len(sparsities)), [f"{s:.0%}" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Fashion-MNIST MLP 784-300-100-10, ERK, {results['settings']['epochs']} epochs"
                 f"{' (quick)' if results['settings']['quick'] else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about two minutes: 12k images, 2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None,
                        help="JSON path (default examples/results/fashion_mnist_gap[_quick].json)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = str(RESULTS / ("fashion_mnist_gap_quick.json" if args.quick else "fashion_mnist_gap.json"))

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, x_test = prepare_images(x_train), prepare_images(x_test)
    if args.quick:
        x_train, y_train = x_train[:12000], y_train[:12000]
        epochs, rounds = 2, 1
    else:
        epochs, rounds = 12, 3        # the RigL study's MLP epochs
    data = ((x_train, y_train), (x_test, y_test))
    sparsities = (0.9, 0.98)
    results = {"settings": {
        "quick": args.quick, "seed": args.seed, "model": "MLP 784-300-100-10 (fashion_mnist_rigl.build_mlp)",
        "train_examples": len(x_train), "test_examples": len(x_test), "epochs": epochs, "batch": BATCH,
        "optimizer": "SGD momentum 0.9, lr 0.05 cosine-decayed to 2% (parallel GaP: restarted per phase)",
        "distribution": "erk", "rescale_init": True, "sparsities": list(sparsities),
        "gap": {"partitions": "fc1 | fc2 | fc3", "rounds": rounds, "phases_fill": "first 75% of the steps"},
        "parallel_gap": {"copies": 3, "rounds": rounds},
        "snip": {"batches": 1, "batch_size": BATCH},
        "lottery": {"rewind_step": 0, "dense_epochs": epochs, "retrain_epochs": epochs},
        "peak_parameters": "most live trainable values held during training (masked-kernel non-zeros plus "
                           "biases); parallel GaP: per copy (worker)",
        "keras": keras.__version__}, "runs": []}
    started = time.perf_counter()
    previous_ticket = None
    for sparsity in sparsities:
        print(f"sparsity {sparsity:.0%}, {epochs} epochs on {len(x_train)} images", flush=True)
        results["runs"].append(run_rigl(sparsity, data, epochs, args.seed))
        results["runs"].append(run_gap(sparsity, data, epochs, args.seed, rounds))
        results["runs"].append(run_parallel_gap(sparsity, data, epochs, args.seed, rounds))
        results["runs"].append(run_snip(sparsity, data, epochs, args.seed))
        row, ticket = run_lottery(sparsity, data, epochs, args.seed, previous_ticket)
        results["runs"].append(row)
        if previous_ticket is None:
            results["runs"].insert(0, dense_reference(ticket, data, epochs))
            previous_ticket = ticket
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["rigl_study"] = rigl_study_numbers(args.quick)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    plot(results, str(output.with_suffix(".png")))
    print(f"wrote {output} and {output.with_suffix('.png').name} ({results['total_seconds']:.0f}s)")
    return results


if __name__ == "__main__":
    main()
