"""Does a slim model run faster in proportion to its FLOPs? ResNet50 and MobileNetV2 at 224x224 on CPU.

Each model (weights=None, random BatchNorm statistics) is shrunk to about half its FLOPs by zeroing gamma and
beta of the same fraction of channels in every channel group a gamma regulariser can silence (the fraction is
found by bisection on the analytic alive FLOPs), then analysed and exported. Inference latency of the
original and the slim model (a traced tf.function, batch 1 and 32) is measured alternately, so load from
other processes hits both alike, and reported next to the FLOP ratio. Writes
benchmarks/results/slim_speedup.json.

    python benchmarks/slim_speedup.py [--models ResNet50 MobileNetV2] [--repeats 3]
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import morphsparse as ms  # noqa: E402
from equivalence import KillPlanner, randomize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_FLOP_RATIO = 0.5


def shrink_masks(graph, killable, fraction):
    """Alive masks with the first ``fraction`` of every killable group's channels dead."""
    masks = {}
    for gid in killable:
        size = graph.groups[gid].size
        mask = np.ones(size, bool)
        mask[: min(size - 1, int(round(size * fraction)))] = False
        masks[gid] = mask
    return masks


def fraction_for_flops(graph, killable, ratio):
    """The uniform dead fraction whose alive FLOPs are closest to ``ratio`` of the original (bisection)."""
    full = ms.count_flops(graph)
    low, high = 0.0, 1.0
    for _ in range(20):
        middle = (low + high) / 2
        if ms.count_flops(graph, alive=shrink_masks(graph, killable, middle)) > ratio * full:
            low = middle
        else:
            high = middle
    return high


def latency(fn, x, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - start)
    return times


def measure(name, repeats, size=224):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    randomize(model, rng)
    graph = ms.analyze(model)
    planner = KillPlanner(graph, "gamma", rng)
    fraction = fraction_for_flops(graph, planner.killable, TARGET_FLOP_RATIO)
    kills = shrink_masks(graph, planner.killable, fraction)
    planner.apply(kills)

    start = time.perf_counter()
    slim, report = ms.export_with_report(model)       # analyse + export, from the weights alone
    export_seconds = time.perf_counter() - start
    x_check = rng.normal(size=(2, size, size, 3)).astype("float32")
    diff = float(np.abs(np.asarray(model(x_check, training=False)) - np.asarray(slim(x_check, training=False))).max())

    row = {"model": name, "input": [size, size, 3], "dead_fraction_per_group": round(fraction, 4),
           "groups_shrunk": len(kills), "flops": report.flops_before, "flops_slim": report.flops_after,
           "flop_ratio": report.flops_after / report.flops_before, "params": report.params_before,
           "params_slim": report.params_after, "analyse_export_seconds": round(export_seconds, 2),
           "max_abs_diff": diff, "batches": {}}
    for batch in (1, 32):
        x = tf.constant(rng.normal(size=(batch, size, size, 3)).astype("float32"))
        runners = {}
        for label, net in (("original", model), ("slim", slim)):
            fn = tf.function(lambda t, net=net: net(t, training=False), jit_compile=False)
            fn(x).numpy()                                           # trace and warm up
            runners[label] = fn
        times = {"original": [], "slim": []}
        reps = repeats if batch > 1 else repeats * 5
        for _ in range(reps):                                       # alternate, so load hits both alike
            for label, fn in runners.items():
                times[label] += latency(fn, x, 1)
        original, slim_t = float(np.median(times["original"])), float(np.median(times["slim"]))
        speedup = original / slim_t
        row["batches"][str(batch)] = {
            "original_ms": round(original * 1e3, 2), "slim_ms": round(slim_t * 1e3, 2), "speedup": round(speedup, 3),
            "flop_reduction": round(1 / row["flop_ratio"], 3),
            "speedup_over_flop_reduction": round(speedup * row["flop_ratio"], 3), "repeats": reps}
    keras.backend.clear_session()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["ResNet50", "MobileNetV2"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs at batch 32 (x5 at batch 1)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "slim_speedup.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for name in args.models:
        row = measure(name, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
                          "keras": keras.__version__, "note": "CPU shared with other processes; medians of "
                          "alternating runs"},
              "seconds": round(time.perf_counter() - start, 1), "models": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        b32 = row["batches"]["32"]
        print(f"{row['model']}: FLOPs x{row['flop_ratio']:.3f}; batch 32 {b32['original_ms']:.0f} -> "
              f"{b32['slim_ms']:.0f} ms (x{b32['speedup']:.2f}, {b32['speedup_over_flop_reduction']:.2f} of the "
              f"FLOP reduction); batch 1 x{row['batches']['1']['speedup']:.2f}; analyse+export "
              f"{row['analyse_export_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
