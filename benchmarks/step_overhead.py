"""Per-step training cost of sparse training relative to dense, morphsparse and tfmot side by side in one run.

Models: the MLP 784-300-100-10 and a 3-conv CNN (16-32-32) on 28x28x1 inputs, batch 128, plain SGD(0.01), 90%
sparsity with mask updates every 100 steps; every timed window of 100 steps holds one update step (update steps
are included in the cost).

Two worker processes, each pinned to one CPU core with one TensorFlow thread (intra- and inter-op):

- ``keras3``: this repository on Keras 3 (dense, and ``ms.sparse_optimizer`` with static, SET, SNFS, RigL and
  gradual magnitude pruning, ERK; and RigL with its three log values switched off, ``rigl_without_logs``, to
  show what Keras's per-step handling of log values costs);
- ``tfmot``: tensorflow-model-optimization 0.8.1 on tf_keras (dense, and ``prune_low_magnitude`` with
  ``ConstantSparsity(0.9, frequency=100)`` and its mandatory ``UpdatePruningStep`` callback), run with the Python
  of its own virtual environment (``benchmarks/.venv-tfmot``; ``make tfmot-venv`` creates it). Without it the run
  skips the peer and says so.

The driver alternates: each round times every variant of both workers once, one at a time (so the two pinned
workers never compete), in an order that reverses every round. A variant's figure in a round is its time over
its own framework's dense time in the same round; the report gives the median over rounds, the minimum and
maximum (the spread) and the ratio of the minimum times. Times are the worker's process CPU time per step (one
thread: the work of the step, little disturbed by other processes on the machine); wall-clock ratios are kept
in the JSON too.

Usage: python benchmarks/step_overhead.py [--steps 100] [--rounds 10] [--core 0] [--quick]
Writes benchmarks/results/step_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TFMOT_PYTHON = ROOT / "benchmarks" / ".venv-tfmot" / "bin" / "python"
BATCH = 128
SPARSITY = 0.9
METHODS = ("static", "set", "snfs", "rigl", "magnitude")


# ---------------------------------------------------------------------------------------------- workers
def _pin(core):
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def _dataset(tf):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * 16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH * 16)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True).repeat().prefetch(2)


def _build(layers, name):
    if name == "mlp":
        return [layers.Flatten(), layers.Dense(300, activation="relu"), layers.Dense(100, activation="relu"),
                layers.Dense(10)]
    return [layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(), layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(), layers.Conv2D(32, 3, activation="relu"), layers.Flatten(), layers.Dense(10)]


def keras3_variants(models, steps, rounds, methods):
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(ROOT))
    import morphsparse as ms
    from morphsparse.sparse import metrics as sparse_metrics

    total = steps * (rounds + 2) * 2
    variants = {}
    for name in models:
        for method in ("dense",) + tuple(methods):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((28, 28, 1))] + _build(keras.layers, name), name=name)
            optimizer = keras.optimizers.SGD(0.01)
            if method != "dense":
                # end_step beyond the run, so that every 100-step window holds one update step.
                schedule = None if method == "static" else ms.UpdateSchedule(update_every=100, end_step=total)
                optimizer = ms.sparse_optimizer(model, optimizer, SPARSITY, method, "erk", schedule=schedule)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            variants[(name, method)] = (model, None)
        # The same RigL run without its three log values, to show what they cost: Keras converts every log
        # value of every step to a Python float (any metric, accuracy included, costs as much).
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((28, 28, 1))] + _build(keras.layers, name), name=name)
        optimizer = ms.sparse_optimizer(model, keras.optimizers.SGD(0.01), SPARSITY, "rigl", "erk",
                                        schedule=ms.UpdateSchedule(update_every=100, end_step=total))
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        getattr(model, sparse_metrics.ATTRIBUTE).result = lambda: {}     # benchmark only: no log values
        variants[(name, "rigl_without_logs")] = (model, None)
    return tf, variants


def tfmot_variants(models, steps, rounds, methods):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    variants = {}
    for name in models:
        for method in ("dense", "prune_low_magnitude"):
            tf_keras.utils.set_random_seed(0)
            model = tf_keras.Sequential([tf_keras.Input((28, 28, 1))] + _build(tf_keras.layers, name))
            callbacks = None
            if method != "dense":
                schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0, frequency=100)
                model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
                callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
            model.compile(tf_keras.optimizers.SGD(0.01),
                          tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            variants[(name, method)] = (model, callbacks)
    return tf, variants


def worker(kind, core, models, steps, rounds, methods):
    """Build every variant, warm it up, then time ``fit`` for the variants the driver names on stdin."""
    _pin(core)
    build = keras3_variants if kind == "keras3" else tfmot_variants
    tf, variants = build(models, steps, rounds, methods)
    dataset = _dataset(tf)
    for model, callbacks in variants.values():      # trace and warm up outside the timed windows
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
    print(json.dumps({"ready": sorted("/".join(k) for k in variants)}), flush=True)
    for line in sys.stdin:
        name, method = line.split()
        model, callbacks = variants[(name, method)]
        start, start_cpu = time.perf_counter(), time.process_time()
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(json.dumps({"wall": wall / steps, "cpu": cpu / steps}), flush=True)


# ---------------------------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, kind, python, args):
        command = [str(python), str(Path(__file__).resolve()), "--worker", kind, "--core", str(args.core),
                   "--steps", str(args.steps), "--rounds", str(args.rounds), "--models", *args.models,
                   "--methods", *args.methods]
        env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("PYTHONPATH", None)
        self.kind = kind
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=ROOT)
        self.variants = self._read()["ready"]

    def _read(self):
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.kind} worker stopped")
            if line.startswith("{"):
                return json.loads(line)

    def time(self, name, method):
        self.process.stdin.write(f"{name} {method}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _summary(values):
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 4), "min": round(ordered[0], 4),
            "max": round(ordered[-1], 4),
            "iqr": [round(ordered[len(ordered) // 4], 4), round(ordered[(3 * len(ordered)) // 4], 4)]}


def drive(args):
    started = time.perf_counter()
    load_before = os.getloadavg()
    workers = [Worker("keras3", sys.executable, args)]
    note = None
    if TFMOT_PYTHON.exists():
        try:
            workers.append(Worker("tfmot", TFMOT_PYTHON, args))
        except RuntimeError as err:
            note = f"tfmot not measured: {err}"
    else:
        note = f"tfmot not measured: {TFMOT_PYTHON} does not exist (make tfmot-venv creates it)"
    if note:
        print(note)
    order = [(w, *v.split("/")) for w in workers for v in w.variants]
    times = {(w.kind, name, method): {"wall": [], "cpu": []} for w, name, method in order}
    for round_index in range(args.rounds):
        for w, name, method in (order if round_index % 2 == 0 else order[::-1]):
            result = w.time(name, method)
            times[(w.kind, name, method)]["wall"].append(result["wall"])
            times[(w.kind, name, method)]["cpu"].append(result["cpu"])
        print(f"round {round_index + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    for w in workers:
        w.close()
    results = {}
    for kind, name, method in times:
        dense = times[(kind, name, "dense")]
        entry = {}
        for measure in ("cpu", "wall"):
            own, base = times[(kind, name, method)][measure], dense[measure]
            entry[f"{measure}_ms_median"] = round(statistics.median(own) * 1e3, 3)
            entry[f"{measure}_ratio"] = _summary([a / b for a, b in zip(own, base)])
            entry[f"{measure}_ratio_of_minimums"] = round(min(own) / min(base), 4)
            entry[f"{measure}_ms_rounds"] = [round(v * 1e3, 3) for v in own]
        results.setdefault(name, {}).setdefault(kind, {})[method] = entry
    record = {"settings": {"steps_per_round": args.steps, "rounds": args.rounds, "batch": BATCH,
                           "sparsity": SPARSITY, "distribution": "erk (keras3); uniform per layer (tfmot)",
                           "update_every": 100, "optimizer": "SGD(0.01)", "core": args.core,
                           "tensorflow_threads": "1 intra-op, 1 inter-op", "cpu_count": os.cpu_count(),
                           "machine": platform.machine(), "load_average_before": [round(v, 2) for v in load_before],
                           "load_average_after": [round(v, 2) for v in os.getloadavg()],
                           "seconds": round(time.perf_counter() - started, 1)},
              "versions": _versions(workers), "results": results}
    if note:
        record["note"] = note
    return record


def _versions(workers):
    import importlib.metadata as metadata
    versions = {"keras3": {p: metadata.version(p) for p in ("keras", "tensorflow-cpu") if _has(p)}}
    if any(w.kind == "tfmot" for w in workers):
        code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
                "('tensorflow-model-optimization', 'tf-keras', 'tensorflow-cpu')}))")
        versions["tfmot"] = json.loads(subprocess.run([str(TFMOT_PYTHON), "-c", code], capture_output=True,
                                                      text=True).stdout or "{}")
    return versions


def _has(package):
    import importlib.metadata as metadata
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def print_table(record):
    print(f"\nper-step CPU time relative to the same framework's dense model (median [min, max] over "
          f"{record['settings']['rounds']} rounds of {record['settings']['steps_per_round']} steps, one core, one "
          f"thread; load average {record['settings']['load_average_before']})")
    for name, kinds in record["results"].items():
        for kind, methods in kinds.items():
            dense = methods["dense"]["cpu_ms_median"]
            for method, entry in methods.items():
                ratio = entry["cpu_ratio"]
                print(f"  {name:4s} {kind:7s} {method:20s} {entry['cpu_ms_median']:8.2f} ms  x{ratio['median']:.3f} "
                      f"[{ratio['min']:.3f}, {ratio['max']:.3f}]" + ("" if method != "dense" else f"  (dense)"))
            del dense


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--core", type=int, default=0, help="the CPU core both workers are pinned to")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--quick", action="store_true", help="20 steps x 2 rounds (a smoke run)")
    parser.add_argument("--worker", choices=("keras3", "tfmot"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "step_overhead.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 20, 2
    if args.worker:
        return worker(args.worker, args.core, args.models, args.steps, args.rounds, args.methods)
    record = drive(args)
    print_table(record)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return record


if __name__ == "__main__":
    main()
