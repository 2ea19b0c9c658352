"""Per-step training time of sparse training relative to dense, measured side by side in one run.

Models: the MLP 784-300-100-10 and a 3-conv CNN on 28x28x1 inputs, batch 128, plain SGD, as in the issue. Each
method trains the same model through ``fit`` for a fixed number of steps with mask updates every 100 steps
(update steps included: every 100-step window holds one). Rounds interleave the methods, alternating their
order, so that load from other processes hits them alike; the reported ratio is the median over rounds of
(method time / dense time in the same round), with the ratio of medians and of minimums alongside.

tensorflow-model-optimization's ``prune_low_magnitude`` is timed as the peer when ``tensorflow_model_optimization``
and ``tf_keras`` are importable (on the equivalent tf_keras model); otherwise it is skipped and noted.

Usage: python benchmarks/step_overhead.py [--steps 100] [--rounds 10] [--quick]
Writes benchmarks/results/step_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import morphsparse.sparse as mss  # noqa: E402

BATCH = 128
METHODS = ("static", "set", "snfs", "rigl", "magnitude")


def build_mlp():
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(300, activation="relu"),
                             keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)], name="mlp")


def build_cnn():
    # The example's CNN (conv 16-32-32): three convs, as in the peer measurement.
    return keras.Sequential([keras.Input((28, 28, 1)),
                             keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
                             keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
                             keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(10)], name="cnn")


def make(builder, method, steps):
    keras.utils.set_random_seed(0)
    model = builder()
    if method != "dense":
        # end_step far away so that every measured window contains update steps.
        model = mss.sparsify(model, 0.9, method, "erk", update_every=100, end_step=100 * steps)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_fit(model, dataset, steps):
    """Wall-clock and process CPU seconds per step of ``steps`` training steps."""
    start, start_cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


def tfmot_peer(builder_name):
    """A tf_keras model wrapped by prune_low_magnitude, or None when the peer is not installed."""
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except Exception as err:  # noqa: BLE001 - any import failure means "peer not available"
        return None, f"not measured: {type(err).__name__}: {err}"
    layers = tf_keras.layers
    if builder_name == "mlp":
        model = tf_keras.Sequential([layers.Flatten(input_shape=(28, 28, 1)),
                                     layers.Dense(300, activation="relu"), layers.Dense(100, activation="relu"),
                                     layers.Dense(10)])
    else:
        model = tf_keras.Sequential([layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
                                     layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"),
                                     layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"),
                                     layers.Flatten(), layers.Dense(10)])
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0, frequency=100)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(tf_keras.optimizers.SGD(0.01),
                   tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return pruned, tfmot.sparsity.keras.UpdatePruningStep()


def run(steps, rounds, methods, models):
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * 16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH * 16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True).repeat().prefetch(4)
    results = {}
    for name, builder in models.items():
        contenders = {m: make(builder, m, steps) for m in ("dense",) + tuple(methods)}
        peer, peer_callback = tfmot_peer(name)
        for model in contenders.values():       # trace and warm up outside the timed window
            model.fit(dataset, epochs=1, steps_per_epoch=20, verbose=0)
        times = {m: [] for m in contenders}
        cpu_times = {m: [] for m in contenders}
        peer_times = []
        order = list(contenders)
        for round_index in range(rounds):
            # Alternate the order (ABC, CBA, ...) so that no method always runs right after another's load.
            for method in (order if round_index % 2 == 0 else order[::-1]):
                wall, cpu = time_fit(contenders[method], dataset, steps)
                times[method].append(wall)
                cpu_times[method].append(cpu)
            if peer is not None:
                start = time.perf_counter()
                peer.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[peer_callback])
                peer_times.append((time.perf_counter() - start) / steps)
        medians = {m: statistics.median(t) for m, t in times.items()}
        # The ratio is the median over rounds of (method / dense) within the same round: on a shared machine
        # the load drifts between rounds far more than within one.
        ratios = {m: statistics.median(a / d for a, d in zip(t, times["dense"])) for m, t in times.items()}
        entry = {"step_ms": {m: round(v * 1e3, 4) for m, v in medians.items()},
                 "ratio_to_dense": {m: round(v, 4) for m, v in ratios.items()},
                 "ratio_of_medians": {m: round(v / medians["dense"], 4) for m, v in medians.items()},
                 "ratio_of_minimums": {m: round(min(t) / min(times["dense"]), 4) for m, t in times.items()},
                 # CPU seconds of this process per step: insensitive to other processes' load, which on a
                 # shared machine inflates wall-clock times unevenly.
                 "cpu_ratio_to_dense": {m: round(statistics.median(a / d for a, d in zip(t, cpu_times["dense"])), 4)
                                        for m, t in cpu_times.items()},
                 "cpu_step_ms": {m: round(statistics.median(t) * 1e3, 4) for m, t in cpu_times.items()},
                 "all_rounds_ms": {m: [round(v * 1e3, 4) for v in t] for m, t in times.items()}}
        if peer is not None:
            entry["tfmot_prune_low_magnitude_ratio"] = round(statistics.median(peer_times) / medians["dense"], 4)
        else:
            entry["tfmot_prune_low_magnitude"] = peer_callback
        results[name] = entry
        print(f"\n{name}: per-step time (median of {rounds} rounds of {steps} steps, batch {BATCH}, SGD)")
        for method in contenders:
            print(f"  {method:10s} {medians[method] * 1e3:8.3f} ms   x{ratios[method]:.3f}  "
                  f"(min-based x{min(times[method]) / min(times['dense']):.3f}, "
                  f"CPU time x{entry['cpu_ratio_to_dense'][method]:.3f})")
        if peer is not None:
            print(f"  {'tfmot':10s} x{entry['tfmot_prune_low_magnitude_ratio']:.3f}")
        else:
            print(f"  tfmot      {peer_callback}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round (one is an update)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--quick", action="store_true", help="50 steps x 2 rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default). With 1, process CPU "
                             "time measures the work per step exactly, even on a machine shared with others")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "step_overhead.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 50, 2
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    builders = {"mlp": build_mlp, "cnn": build_cnn}
    results = run(args.steps, args.rounds, args.methods, {m: builders[m] for m in args.models})
    record = {"settings": {"steps_per_round": args.steps, "rounds": args.rounds, "batch": BATCH,
                           "sparsity": 0.9, "distribution": "erk", "update_every": 100, "optimizer": "SGD(0.01)",
                           "threads": args.threads or "tensorflow default",
                           "tensorflow": tf.__version__, "keras": keras.__version__,
                           "cpu_count": os.cpu_count(), "machine": platform.machine()},
              "results": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.output}")
    return record


if __name__ == "__main__":
    main()
