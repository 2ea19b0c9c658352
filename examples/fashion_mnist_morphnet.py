"""MorphNet on real Fashion-MNIST with a small ResNet: do learned structures beat a uniform width multiplier?

Four experiments on the seed network of ``morphsparse.models.small_resnet`` (residual blocks with identity and
projection shortcuts, a concat module; 5.7 MFLOPs, 88k parameters):

1. uniform width multiplier: the seed scaled to 25%, 50%, 75% and 100% of its FLOPs, trained from scratch;
2. MorphNet, FLOP-targeted: the seed trained with ``MorphRegularizer(target="flops")``, exported, widened or
   narrowed by ``ms.expand`` to the same FLOP budgets, and retrained from scratch;
3. one and two shrink/expand cycles (``ms.cycle``) at the seed's FLOPs;
4. a size-targeted structure (``target="size"``) expanded to the 50% FLOP budget, against the FLOP-targeted one.

Every network is retrained from scratch with the same recipe (Adam with a cosine decay, same epochs and data) and
scored on the full 10,000-image test set. Writes ``examples/results/fashion_mnist_morphnet.json`` and two
plots (accuracy vs FLOPs per method; per-layer widths). ``--quick`` runs a tiny version (a minute or two) to
check that everything works; the full run takes about 20 minutes on two busy CPU cores.
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

import morphsparse as ms  # noqa: E402
from morphsparse.models import SMALL_RESNET_WIDTHS, conv_widths, scaled_widths, small_resnet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = (0.25, 0.5, 0.75)          # fractions of the seed's FLOPs (1.0 is the cycle experiment)

SETTINGS = {
    "full": dict(train_images=20000, test_images=10000, shrink_epochs=3, retrain_epochs=3, batch_size=128,
                 shrink_learning_rate=1e-2, retrain_learning_rate=3e-3, strength_multiplier=3.0, threshold=1e-2,
                 round_to=1, seed=0),
    # a smoke test: enough steps for channels to die, too few for meaningful accuracies
    "quick": dict(train_images=2000, test_images=1000, shrink_epochs=3, retrain_epochs=1, batch_size=128,
                  shrink_learning_rate=3e-2, retrain_learning_rate=3e-3, strength_multiplier=10.0, threshold=1e-2,
                  round_to=1, seed=0),
}


class Experiment:
    """Data, training recipe and bookkeeping shared by every run of the example."""

    def __init__(self, settings):
        self.s = settings
        (x, y), (xt, yt) = ms.load_fashion_mnist()
        rng = np.random.default_rng(settings["seed"])
        train = rng.permutation(len(x))[:settings["train_images"]]
        self.x, self.y = ms.prepare_images(x[train]), y[train]
        self.x_test, self.y_test = ms.prepare_images(xt[:settings["test_images"]]), yt[:settings["test_images"]]
        self.runs = []

    def compile(self, model, learning_rate, regularizer=None):
        optimizer = keras.optimizers.Adam(learning_rate)
        if regularizer is not None:         # structure learning: the optimizer adds the regulariser's gradient
            optimizer = ms.MorphOptimizer(optimizer, regularizer)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def compile_for_retraining(self, model):
        """Adam with a cosine decay to zero over the retraining: the final accuracy then depends much less on
        where the last epoch happens to stop, which matters when methods differ by a fraction of a point."""
        steps = self.s["retrain_epochs"] * int(np.ceil(len(self.x) / self.s["batch_size"]))
        schedule = keras.optimizers.schedules.CosineDecay(self.s["retrain_learning_rate"], steps)
        model.compile(keras.optimizers.Adam(schedule),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    def shrink_fit(self):
        """Model.fit arguments of the structure-learning phase (constant learning rate, as MorphNet advises)."""
        return dict(x=self.x, y=self.y, batch_size=self.s["batch_size"], epochs=self.s["shrink_epochs"], verbose=0)

    def retrain(self, model):
        """Train a freshly initialised network with the common recipe; returns its test accuracy."""
        keras.utils.set_random_seed(self.s["seed"] + 1)
        model = keras.models.clone_model(model)        # fresh weights, same structure
        self.compile_for_retraining(model)
        model.fit(self.x, self.y, batch_size=self.s["batch_size"], epochs=self.s["retrain_epochs"], verbose=0)
        return self.accuracy(model), model

    def recalibrate_batchnorm(self, model, batches=20):
        """Re-estimate BatchNorm statistics at the final weights (ms.recalibrate_batchnorm). Structure learning
        uses a high constant learning rate, so the moving averages lag the weights; without this the
        regularised and slim models score far below their training accuracy."""
        ms.recalibrate_batchnorm(model, self.x[:batches * self.s["batch_size"]])
        return model

    def accuracy(self, model):
        logits = model.predict(self.x_test, batch_size=1000, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == self.y_test))

    def record(self, method, model, accuracy, **extra):
        run = dict(method=method, flops=ms.count_flops(model), params=ms.count_params(model),
                   accuracy=accuracy, widths=conv_widths(model), **extra)
        self.runs.append(run)
        print(f"  {method:28s} {run['flops']:>10,d} FLOPs {run['params']:>8,d} params  accuracy {accuracy:.4f}"
              + (f"  ({extra})" if extra else ""), flush=True)
        return run


def uniform_model(budget):
    """The seed with the largest uniform width multiplier whose FLOPs fit the budget (bisection)."""
    low, high = 0.0, 4.0
    for _ in range(16):
        mid = (low + high) / 2
        if ms.count_flops(small_resnet(scaled_widths(mid))) <= budget:
            low = mid
        else:
            high = mid
    return small_resnet(scaled_widths(low), name="uniform"), low


def expand_to(slim, budget, round_to):
    return ms.expand(slim, budget=budget, target="flops", round_to=round_to)


def learn_structure(exp, seed_model, target):
    """Train ``seed_model`` with the regulariser, export; returns the slim model and the regulariser summary."""
    keras.utils.set_random_seed(exp.s["seed"])
    reg = ms.MorphRegularizer(seed_model, target=target, threshold=exp.s["threshold"],
                              strength_multiplier=exp.s["strength_multiplier"])
    exp.compile(seed_model, exp.s["shrink_learning_rate"], reg)
    seed_model.fit(**exp.shrink_fit())
    summary = reg.summary()
    return ms.export(seed_model, source="gamma", threshold=exp.s["threshold"]), summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")      # every new model retraces predict(): expected here, not a problem
    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    try:
        exp = Experiment(settings)
    except ms.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    start = time.time()
    seed_flops = ms.count_flops(small_resnet())
    budgets = {f: int(f * seed_flops) for f in BUDGETS}
    print(f"mode {mode}: {settings}")

    print("1. uniform width multiplier", flush=True)
    for fraction in BUDGETS + (1.0,):
        model, multiplier = uniform_model(int(fraction * seed_flops))
        accuracy, _ = exp.retrain(model)
        exp.record("uniform", model, accuracy, budget=fraction, multiplier=round(multiplier, 4))

    print("2-3. MorphNet FLOP-targeted structure, and two shrink/expand cycles at the seed's FLOPs", flush=True)
    keras.utils.set_random_seed(settings["seed"])
    seed_model = small_resnet()
    exp.compile(seed_model, settings["shrink_learning_rate"])
    result = ms.cycle(
        seed_model, fit=exp.shrink_fit(), cycles=2,
        regularizer=dict(target="flops", threshold=settings["threshold"],
                         strength_multiplier=settings["strength_multiplier"]),
        expand=dict(round_to=settings["round_to"]), retrain=dict(epochs=settings["retrain_epochs"]),
        compile=lambda m: exp.compile(m, settings["shrink_learning_rate"]),
        retrain_compile=exp.compile_for_retraining, evaluate=lambda m: {"accuracy": exp.accuracy(m)},
        verbose=True)
    flop_slim = result.steps[0].slim
    # the exported weights as they are (BatchNorm statistics re-estimated), before any retraining
    exp.record("morphnet-flops slim (no retrain)", flop_slim, exp.accuracy(exp.recalibrate_batchnorm(flop_slim)))
    for step in result.steps:
        # ms.cycle retrained the widened structure from scratch with the common recipe
        exp.record(f"cycle {step.index}", step.model, step.evaluation["accuracy"], budget=1.0,
                   slim_flops=step.slim_flops, slim_params=step.slim_params)
    for fraction in BUDGETS:
        model = expand_to(flop_slim, budgets[fraction], settings["round_to"])
        accuracy, _ = exp.retrain(model)
        exp.record("morphnet-flops", model, accuracy, budget=fraction)

    print("4. size-targeted structure", flush=True)
    keras.utils.set_random_seed(settings["seed"])
    size_slim, size_summary = learn_structure(exp, small_resnet(), "size")
    print("  " + size_summary)
    size_model = expand_to(size_slim, budgets[0.5], settings["round_to"])
    accuracy, _ = exp.retrain(size_model)
    exp.record("morphnet-size", size_model, accuracy, budget=0.5, slim_flops=ms.count_flops(size_slim),
               slim_params=ms.count_params(size_slim))

    report = dict(
        description=__doc__.splitlines()[0], mode=mode, settings=settings, seed_flops=seed_flops,
        seed_params=ms.count_params(small_resnet()), seed_widths=dict(SMALL_RESNET_WIDTHS),
        flop_slim=dict(flops=ms.count_flops(flop_slim), params=ms.count_params(flop_slim),
                       widths=conv_widths(flop_slim)),
        size_slim=dict(flops=ms.count_flops(size_slim), params=ms.count_params(size_slim),
                       widths=conv_widths(size_slim)),
        runs=exp.runs, seconds=round(time.time() - start, 1),
        machine=dict(python=platform.python_version(), keras=keras.__version__, cpus=os.cpu_count()),
    )
    report["claims"] = check_claims(exp.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode == "full" else "_quick"
    path = args.out / f"fashion_mnist_morphnet{suffix}.json"
    path.write_text(json.dumps(report, indent=1))
    plot(report, args.out, suffix)
    print(json.dumps(report["claims"], indent=1))
    print(f"wrote {path} in {report['seconds']:.0f} s")
    return 0


def check_claims(runs):
    """The two MorphNet claims, checked on these runs (differences in accuracy points, learned - uniform)."""
    def acc(method, budget):
        found = [r["accuracy"] for r in runs if r["method"] == method and r.get("budget") == budget]
        return found[0] if found else None

    gains = {}
    for budget in BUDGETS:
        learned, uniform = acc("morphnet-flops", budget), acc("uniform", budget)
        gains[str(budget)] = round(100 * (learned - uniform), 2)
    seed, one, two = acc("uniform", 1.0), acc("cycle 1", 1.0), acc("cycle 2", 1.0)
    size, flops = acc("morphnet-size", 0.5), acc("morphnet-flops", 0.5)
    return {
        "learned_minus_uniform_points_by_budget": gains,
        "learned_beats_uniform_at_every_budget": all(g > 0 for g in gains.values()),
        "cycle_points_over_seed": {"one": round(100 * (one - seed), 2), "two": round(100 * (two - seed), 2)},
        "cycles_raise_accuracy": one > seed and two > one,
        "flop_minus_size_targeted_points_at_half_flops": round(100 * (flops - size), 2),
    }


def plot(report, out, suffix):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'morphsparse[plots]')")
        return
    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"uniform": ("o-", "uniform width multiplier"), "morphnet-flops": ("s-", "MorphNet FLOP-targeted"),
              "morphnet-size": ("^", "MorphNet size-targeted")}
    for method, (style, label) in styles.items():
        points = sorted((r["flops"], r["accuracy"]) for r in runs if r["method"] == method)
        if points:
            ax.plot([p[0] / 1e6 for p in points], [100 * p[1] for p in points], style, label=label)
    for name, marker in (("cycle 1", "D"), ("cycle 2", "*")):
        points = [(r["flops"], r["accuracy"]) for r in runs if r["method"] == name]
        if points:
            ax.plot(points[0][0] / 1e6, 100 * points[0][1], marker, markersize=9, label=f"MorphNet, {name}")
    ax.set_xlabel("MFLOPs per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, small ResNet ({report['settings']['train_images']} training images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"fashion_mnist_morphnet_accuracy{suffix}.png", dpi=120)
    plt.close(fig)

    layers = list(report["seed_widths"])
    half = {r["method"]: r["widths"] for r in runs if r.get("budget") == 0.5 and r["method"] in (
        "uniform", "morphnet-flops", "morphnet-size")}
    columns = [("seed (100% FLOPs)", report["seed_widths"])] + [
        (f"{m} (50% FLOPs)", half[m]) for m in ("uniform", "morphnet-flops", "morphnet-size") if m in half]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(columns)
    for i, (label, widths) in enumerate(columns):
        ax.bar(np.arange(len(layers)) + i * width, [widths.get(name, 0) for name in layers], width, label=label)
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("output channels")
    ax.set_title("per-layer widths (stem/b1: 14x14, b2/mix: 7x7, b3: 4x4)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"fashion_mnist_morphnet_widths{suffix}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
