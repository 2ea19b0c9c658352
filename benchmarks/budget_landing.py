"""Where does ``MorphRegularizer(budget=0.5)`` land? One run per configuration, no strength scan.

Architectures (scikit-learn digits, 8x8x1, batch 64, 1,347 training images = 22 steps per epoch):

* ``resnet``: ``ms.small_resnet(input_shape=(8, 8, 1))`` (residual adds, a concat module);
* ``mobilenet``: ``ms.models.small_mobilenet()`` (depthwise-separable blocks, a residual add);
* ``mlp``: ``ms.models.small_mlp()`` (Flatten, 128-128-64, Dense head).

``source="gamma"`` uses the networks with BatchNorm; ``source="group_lasso"`` the same networks without
BatchNorm (``batch_norm=False``: group lasso is the source for networks without BatchNorm, and behind a
BatchNorm a kernel's norm does not silence its channel; see docs/structure_learning.md). Optimizers and the
structure-learning steps N given to ``fit`` (about 4 / learning rate with Adam):

* ``adam-1e-2``: Adam(1e-2), 19 epochs (418 steps);
* ``adam-1e-3``: Adam(1e-3), 182 epochs (4,004 steps) -- the slow rows: about 6 minutes of the run;
* ``sgd-momentum``: SGD(1e-2, momentum=0.9), 37 epochs (814 steps).

Recorded per run: the alive cost ratio at the end (``reg.cost() / reg.initial_cost``, the masks ``ms.export``
uses, before export), the ratio fit logged at the last step, the final strength multiplier, whether the
end-of-fit warning fired, the training accuracy and the wall time.

Usage: python benchmarks/budget_landing.py [--quick] [--seeds 0] [--budget 0.5]
``--quick`` leaves out the Adam 1e-3 rows (about 3 minutes instead of 10 on two busy cores).
Writes benchmarks/results/budget_landing.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
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
import tensorflow as tf  # noqa: E402

import morphsparse as ms  # noqa: E402
from morphsparse.models import small_mlp, small_mobilenet, small_resnet  # noqa: E402
from morphsparse.morph.budget import LANDING_TOLERANCE, BudgetWarning, ControllerSettings  # noqa: E402

BATCH = 64
ARCHITECTURES = {
    "resnet": lambda bn: small_resnet(input_shape=(8, 8, 1), batch_norm=bn),
    "mobilenet": lambda bn: small_mobilenet(batch_norm=bn),
    "mlp": lambda bn: small_mlp(batch_norm=bn),
}
OPTIMIZERS = {   # name: (optimizer factory, epochs)
    "adam-1e-2": (lambda: keras.optimizers.Adam(1e-2), 19),
    "adam-1e-3": (lambda: keras.optimizers.Adam(1e-3), 182),
    "sgd-momentum": (lambda: keras.optimizers.SGD(1e-2, momentum=0.9), 37),
}
SOURCES = ("gamma", "group_lasso")


def run(arch, optimizer, source, budget, seed, data):
    x, y = data
    keras.utils.set_random_seed(seed)
    model = ARCHITECTURES[arch](source == "gamma")
    make_optimizer, epochs = OPTIMIZERS[optimizer]
    reg = ms.MorphRegularizer(model, target="flops", source=source, budget=budget,
                              steps=epochs * int(np.ceil(len(x) / BATCH)))
    model.compile(ms.MorphOptimizer(make_optimizer(), reg), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    seconds = time.time() - start
    logs = history.history
    ratio = reg.cost() / reg.initial_cost
    return dict(arch=arch, optimizer=optimizer, source=source, seed=seed, budget=budget,
                steps=reg.controller.step, final_ratio=round(ratio, 4),
                logged_ratio=round(float(logs["alive_flops_ratio"][-1]), 4),
                within_tolerance=bool(abs(ratio - budget) <= LANDING_TOLERANCE),
                final_multiplier=round(reg.strength * reg.initial_cost, 4),
                warned=[str(w.message) for w in caught if issubclass(w.category, BudgetWarning)],
                train_accuracy=round(float(logs["accuracy"][-1]), 4), seconds=round(seconds, 1),
                seed_flops=int(reg.initial_cost), alive_flops=int(reg.alive_flops()))


def table(results, budget):
    rows = ["| architecture | optimizer | gamma | group_lasso |", "|---|---|---|---|"]
    for arch in ARCHITECTURES:
        for optimizer in OPTIMIZERS:
            cells = []
            for source in SOURCES:
                ratios = [r["final_ratio"] for r in results
                          if (r["arch"], r["optimizer"], r["source"]) == (arch, optimizer, source)]
                cells.append(" / ".join(f"{100 * v:.1f}%" for v in ratios) if ratios else "-")
            if any(c != "-" for c in cells):
                rows.append(f"| {arch} | {optimizer} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the Adam 1e-3 rows")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (one run per seed)")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "budget_landing.json")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    (x, y), _ = ms.load_digits()
    data = (x[..., None], y)
    seeds = [int(s) for s in args.seeds.split(",")]
    optimizers = [o for o in OPTIMIZERS if not (args.quick and o == "adam-1e-3")]
    results, start = [], time.time()
    for optimizer in optimizers:
        for arch in ARCHITECTURES:
            for source in SOURCES:
                for seed in seeds:
                    result = run(arch, optimizer, source, args.budget, seed, data)
                    results.append(result)
                    print(f"{optimizer:13s} {arch:10s} {source:12s} seed {seed}: {100 * result['final_ratio']:5.1f}% "
                          f"(multiplier {result['final_multiplier']:.3g}, {result['steps']} steps, "
                          f"{result['seconds']:.0f}s){'  WARNED' if result['warned'] else ''}", flush=True)
    ratios = np.array([r["final_ratio"] for r in results])
    summary = dict(runs=len(results), within_tolerance=int(sum(r["within_tolerance"] for r in results)),
                   tolerance=LANDING_TOLERANCE, mean_abs_error=round(float(np.mean(np.abs(ratios - args.budget))), 4),
                   max_abs_error=round(float(np.max(np.abs(ratios - args.budget))), 4),
                   minutes=round((time.time() - start) / 60, 1))
    out = dict(command="python benchmarks/budget_landing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               settings=dict(budget=args.budget, batch=BATCH, seeds=seeds, target="flops", threshold=1e-2,
                             epochs={o: OPTIMIZERS[o][1] for o in optimizers},
                             controller=dataclasses.asdict(ControllerSettings()),
                             tensorflow=tf.__version__, keras=keras.__version__, cpu_count=os.cpu_count(),
                             machine=platform.machine()),
               summary=summary, table=table(results, args.budget), results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(out["table"])
    print(f"{summary['within_tolerance']}/{summary['runs']} within {LANDING_TOLERANCE:.0%} of the budget; "
          f"mean |error| {summary['mean_abs_error']:.3f}, max {summary['max_abs_error']:.3f}; "
          f"{summary['minutes']} minutes. Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
