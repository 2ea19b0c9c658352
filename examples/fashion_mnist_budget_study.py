"""Say a budget, get the slim model: does a learned structure beat a uniform width multiplier at equal FLOPs?

The seed is ``morphsparse.models.small_resnet`` (residual stages, a concat module; 5.3 MFLOPs, 88k parameters)
on real Fashion-MNIST. For every budget (25%, 50%, 75% of the seed's FLOPs) and every seed (three):

* ``uniform``: the seed narrowed by one width multiplier to the budget (``ms.resize(seed, budget)``);
* ``morphnet``: the seed trained with ``MorphRegularizer(target="flops", budget=b)`` (the strength is
  controlled, no scan), exported (dead channels removed), expanded back to exactly the budget with
  ``ms.expand(slim, budget=b, reference=seed)``;
* ``prune``: the seed trained densely, then ``ms.prune(trained, budget=b, importance="gamma")``.

``uniform`` and ``morphnet`` are retrained from scratch and ``prune`` fine-tuned from its surviving weights, all
with the same recipe (Adam, cosine decay, same epochs and data), and scored on the 10,000 test images. Two more
rows: one shrink/expand *cycle* at 100% (the 50% MorphNet structure expanded back to the seed's FLOPs, against
the seed itself), and a *size-targeted* row (``target="size"``, 50% of the seed's parameters, against a
uniform multiplier at the same parameter count).

Results are cached per configuration under examples/results/budget_study_cache/ (the study can be run in
parts; delete the folder to start over). Writes examples/results/fashion_mnist_budget_study{,_quick}.json and
two plots. ``--quick`` runs a tiny version (a few minutes) that checks the pipeline.

    python examples/fashion_mnist_budget_study.py [--quick] [--seeds 0 1 2] [--train-images 20000]
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
from morphsparse.models import SMALL_RESNET_WIDTHS, conv_widths, small_resnet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {
    # 10k images and 3 + 3 epochs keep the 51 trainings of three seeds within about an hour on two cores
    "full": dict(train_images=10000, test_images=10000, seeds=(0, 1, 2), budgets=(0.25, 0.5, 0.75), epochs=3,
                 shrink_epochs=3, batch_size=128, learning_rate=3e-3, shrink_learning_rate=1e-2, threshold=1e-2),
    # enough steps for the controller to act (about 1.5 / learning rate), too few for meaningful accuracies
    "quick": dict(train_images=1200, test_images=1000, seeds=(0,), budgets=(0.5,), epochs=1, shrink_epochs=3,
                  batch_size=32, learning_rate=3e-3, shrink_learning_rate=3e-2, threshold=1e-2),
}


class Study:
    """Data, the common training recipe and the result cache."""

    def __init__(self, settings, mode, out):
        self.s, self.mode = settings, mode
        (self.x, self.y), (self.x_test, self.y_test) = ms.fashion_mnist_subset(settings["train_images"],
                                                                               settings["test_images"])
        self.cache_dir = out / "budget_study_cache" / mode
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_file = self.cache_dir / "runs.json"
        self.cache = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}
        self.seed_flops = ms.count_flops(small_resnet())
        self.seed_params = ms.count_params(small_resnet())

    # --- the recipe ---------------------------------------------------------------------------------------
    def steps(self, epochs):
        return epochs * int(np.ceil(len(self.x) / self.s["batch_size"]))

    def compile_retraining(self, model):
        schedule = keras.optimizers.schedules.CosineDecay(self.s["learning_rate"], self.steps(self.s["epochs"]))
        model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    def train(self, model, seed):
        """The common recipe, from the model's current weights; returns its test accuracy."""
        keras.utils.set_random_seed(seed + 1)      # the same batch order for every method of a seed
        self.compile_retraining(model)
        model.fit(self.x, self.y, batch_size=self.s["batch_size"], epochs=self.s["epochs"], verbose=0)
        return self.accuracy(model)

    def fresh(self, model, seed):
        """A freshly initialised copy of ``model`` (the same initialisation stream for every method)."""
        keras.utils.set_random_seed(seed + 1)
        return keras.models.clone_model(model)

    def accuracy(self, model):
        logits = model.predict(self.x_test, batch_size=1000, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == self.y_test))

    # --- the cache ----------------------------------------------------------------------------------------
    def cached(self, key, compute):
        if key in self.cache:
            return self.cache[key]
        start = time.time()
        row = compute()
        row.update(key=key, seconds=round(time.time() - start, 1))
        self.cache[key] = row
        self.cache_file.write_text(json.dumps(self.cache, indent=1))
        print(f"  {key:28s} {row['flops']:>10,d} FLOPs {row['params']:>7,d} params  accuracy {row['accuracy']:.4f}"
              + (f"  (alive at end of shrink {row['alive_ratio']:.3f})" if "alive_ratio" in row else ""),
              flush=True)
        return row

    def row(self, method, budget, seed, model, accuracy, **extra):
        return dict(method=method, budget=budget, seed=seed, flops=ms.count_flops(model),
                    params=ms.count_params(model), accuracy=accuracy, widths=conv_widths(model), **extra)

    # --- methods ------------------------------------------------------------------------------------------
    def dense_seed(self, seed):
        """The seed trained with the common recipe: the 100% reference, and what ``prune`` starts from."""
        path = self.cache_dir / f"seed{seed}.weights.h5"

        def compute():
            model = self.fresh(small_resnet(), seed)
            accuracy = self.train(model, seed)
            model.save_weights(path)
            return self.row("uniform", 1.0, seed, model, accuracy)

        row = self.cached(f"uniform/1.0/{seed}", compute)
        model = small_resnet()
        model.load_weights(path)
        return row, model

    def uniform(self, budget, seed, target="flops"):
        def compute():
            keras.utils.set_random_seed(seed + 1)
            model = ms.resize(small_resnet(), budget=budget, target=target)
            return self.row("uniform" if target == "flops" else "uniform-size", budget, seed, model,
                            self.train(self.fresh(model, seed), seed))
        return self.cached(f"uniform{'' if target == 'flops' else '-size'}/{budget}/{seed}", compute)

    def shrink(self, budget, seed, target="flops"):
        """Structure learning to the budget, then export: (slim model, alive cost ratio at the end)."""
        path = self.cache_dir / f"slim-{target}-{budget}-{seed}.keras"
        key = f"shrink-{target}/{budget}/{seed}"
        if key not in self.cache or not path.exists():
            keras.utils.set_random_seed(seed)
            model = small_resnet()
            steps = self.s["shrink_epochs"] * int(np.ceil(len(self.x) / self.s["batch_size"]))
            reg = ms.MorphRegularizer(model, target=target, budget=budget, threshold=self.s["threshold"], steps=steps)
            model.compile(ms.MorphOptimizer(keras.optimizers.Adam(self.s["shrink_learning_rate"]), reg),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(self.x, self.y, batch_size=self.s["batch_size"], epochs=self.s["shrink_epochs"],
                                verbose=0).history
            ratio = float(reg.cost() / reg.initial_cost)
            slim = ms.export(model, threshold=self.s["threshold"])
            slim.save(path)
            self.cache[key] = dict(alive_ratio=ratio, strength=[float(s) for s in history.get("strength", [])],
                                   slim_flops=ms.count_flops(slim), slim_params=ms.count_params(slim))
            self.cache_file.write_text(json.dumps(self.cache, indent=1))
        return keras.saving.load_model(path), self.cache[key]

    def morphnet(self, budget, seed, target="flops", expand_to=None):
        """Shrink to ``budget`` (of ``target``), expand to ``expand_to`` (default: the same budget) of the seed
        and retrain from scratch."""
        expand_to = budget if expand_to is None else expand_to
        method = {("flops", False): "morphnet", ("size", False): "morphnet-size"}.get(
            (target, expand_to != budget), "cycle")

        def compute():
            slim, shrunk = self.shrink(budget, seed, target)
            keras.utils.set_random_seed(seed + 1)
            wide = ms.expand(slim, budget=expand_to, reference=small_resnet(), target=target)
            return self.row(method, expand_to, seed, wide, self.train(self.fresh(wide, seed), seed),
                            alive_ratio=shrunk["alive_ratio"], slim_flops=shrunk["slim_flops"],
                            slim_params=shrunk["slim_params"], shrink_budget=budget)
        return self.cached(f"{method}/{expand_to}/{seed}", compute)

    def prune(self, budget, seed, trained):
        def compute():
            slim = ms.prune(trained, budget=budget, target="flops", importance="gamma")
            pruned_accuracy = self.accuracy(slim)
            return self.row("prune", budget, seed, slim, self.train(slim, seed), accuracy_before_finetune=pruned_accuracy)
        return self.cached(f"prune/{budget}/{seed}", compute)


def summarise(runs):
    """Mean, standard deviation and count of accuracy (and FLOPs) per (method, budget)."""
    table = {}
    for run in runs:
        table.setdefault((run["method"], run["budget"]), []).append(run)
    out = []
    for (method, budget), rows in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        accuracy = np.array([r["accuracy"] for r in rows])
        out.append(dict(method=method, budget=budget, n=len(rows), accuracy_mean=round(float(accuracy.mean()), 4),
                        accuracy_std=round(float(accuracy.std(ddof=1)) if len(rows) > 1 else 0.0, 4),
                        flops_mean=int(np.mean([r["flops"] for r in rows])),
                        params_mean=int(np.mean([r["params"] for r in rows]))))
    return out


def print_summary(summary):
    """The :func:`summarise` rows as a table: accuracy in %, mean +- standard deviation over the seeds."""
    print(f"{'method':16s} {'budget':>6s} {'n':>2s} {'MFLOPs':>7s} {'params':>7s} {'accuracy':>16s}")
    for r in summary:
        print(f"{r['method']:16s} {r['budget']:6.2f} {r['n']:2d} {r['flops_mean'] / 1e6:7.2f} {r['params_mean']:7d} "
              f"{100 * r['accuracy_mean']:7.2f} +- {100 * r['accuracy_std']:.2f}")


def claims(summary, budgets):
    """What the study set out to show, checked on the means (differences in accuracy points)."""
    by = {(r["method"], r["budget"]): r for r in summary}
    result = {}
    for method in ("morphnet", "prune"):
        gains = {}
        for b in budgets:
            if (method, b) in by and ("uniform", b) in by:
                mine, uniform = by[(method, b)], by[("uniform", b)]
                spread = max(mine["accuracy_std"], uniform["accuracy_std"])
                gains[str(b)] = dict(points=round(100 * (mine["accuracy_mean"] - uniform["accuracy_mean"]), 2),
                                     spread_points=round(100 * spread, 2))
        result[f"{method}_minus_uniform"] = gains
        result[f"{method}_at_or_above_uniform_everywhere"] = all(g["points"] >= 0 for g in gains.values())
        result[f"{method}_above_uniform_beyond_spread_somewhere"] = any(
            g["points"] > g["spread_points"] for g in gains.values())
    if ("cycle", 1.0) in by and ("uniform", 1.0) in by:
        result["cycle_minus_seed_points"] = round(100 * (by[("cycle", 1.0)]["accuracy_mean"]
                                                         - by[("uniform", 1.0)]["accuracy_mean"]), 2)
    if ("morphnet-size", 0.5) in by and ("uniform-size", 0.5) in by:
        result["size_targeted_minus_uniform_points"] = round(100 * (by[("morphnet-size", 0.5)]["accuracy_mean"]
                                                                    - by[("uniform-size", 0.5)]["accuracy_mean"]), 2)
    return result


def overridden(settings, args):
    """A copy of ``settings`` with the command line's ``--seeds`` and ``--train-images`` where given."""
    settings = dict(settings)
    if args.seeds:
        settings["seeds"] = tuple(args.seeds)
    if args.train_images:
        settings["train_images"] = args.train_images
    return settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--methods", nargs="*", default=("uniform", "morphnet", "prune"),
                        choices=("uniform", "morphnet", "prune"),
                        help="run only these (the cache keeps the others); morphnet includes the cycle and the "
                             "size-targeted row")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")      # every new model retraces predict(): expected here
    mode = "quick" if args.quick else "full"
    settings = overridden(SETTINGS[mode], args)
    try:
        study = Study(settings, mode, args.out)
    except ms.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    start = time.time()
    print(f"mode {mode}: {settings}", flush=True)
    for seed in settings["seeds"]:
        print(f"seed {seed}", flush=True)
        _, trained = study.dense_seed(seed)
        for budget in settings["budgets"]:
            if "uniform" in args.methods:
                study.uniform(budget, seed)
            if "morphnet" in args.methods:
                study.morphnet(budget, seed)
            if "prune" in args.methods:
                study.prune(budget, seed, trained)
        if "morphnet" in args.methods:
            middle = 0.5 if 0.5 in settings["budgets"] else settings["budgets"][0]
            study.morphnet(middle, seed, expand_to=1.0)                     # one cycle at 100%
            study.morphnet(0.5, seed, target="size")                        # the size-targeted row
        if "uniform" in args.methods:
            study.uniform(0.5, seed, target="size")
    runs = [row for key, row in study.cache.items() if "/" in key and "accuracy" in row
            and row["seed"] in settings["seeds"]]
    summary = summarise(runs)
    report = dict(description=__doc__.splitlines()[0], mode=mode, settings=settings,
                  seed_flops=study.seed_flops, seed_params=study.seed_params,
                  seed_widths=dict(SMALL_RESNET_WIDTHS), summary=summary,
                  claims=claims(summary, settings["budgets"]),
                  controller=[dict(key=k, budget=float(k.split("/")[1]), **{n: v for n, v in r.items()
                                                                            if n != "strength"})
                              for k, r in study.cache.items() if k.startswith("shrink-")],
                  runs=runs, seconds=round(time.time() - start, 1),
                  machine=dict(python=platform.python_version(), keras=keras.__version__, cpus=os.cpu_count(),
                               load_average=os.getloadavg()))
    suffix = "" if mode == "full" else "_quick"
    path = args.out / f"fashion_mnist_budget_study{suffix}.json"
    path.write_text(json.dumps(report, indent=1))
    plot(report, args.out, suffix)
    print_summary(summary)
    print(json.dumps(report["claims"], indent=1))
    print(f"wrote {path} in {report['seconds']:.0f} s")
    return 0


def plot(report, out, suffix):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'morphsparse[plots]')")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"uniform": ("o-", "uniform width multiplier"), "morphnet": ("s-", "MorphNet, FLOP budget"),
              "prune": ("^-", "ms.prune (gamma) + fine-tune"), "cycle": ("D", "MorphNet cycle at 100%")}
    for method, (style, label) in styles.items():
        rows = sorted((r for r in report["summary"] if r["method"] == method), key=lambda r: r["flops_mean"])
        if rows:
            ax.errorbar([r["flops_mean"] / 1e6 for r in rows], [100 * r["accuracy_mean"] for r in rows],
                        yerr=[100 * r["accuracy_std"] for r in rows], fmt=style, capsize=3, label=label)
    ax.set_xlabel("MFLOPs per image")
    ax.set_ylabel("test accuracy (%), mean +- sd over seeds")
    ax.set_title(f"Fashion-MNIST, small ResNet ({report['settings']['train_images']} training images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"fashion_mnist_budget_study_accuracy{suffix}.png", dpi=120)
    plt.close(fig)

    layers = list(report["seed_widths"])
    columns = [("seed (100%)", report["seed_widths"])]
    for method in ("uniform", "morphnet", "prune"):
        rows = [r for r in report["runs"] if r["method"] == method and r["budget"] == 0.5]
        if rows:
            columns.append((f"{method} (50% FLOPs)", {name: np.mean([r["widths"].get(name, 0) for r in rows])
                                                     for name in layers}))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(columns)
    for i, (label, widths) in enumerate(columns):
        ax.bar(np.arange(len(layers)) + i * width, [widths.get(name, 0) for name in layers], width, label=label)
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("output channels (mean over seeds)")
    ax.set_title("per-layer widths at 50% of the FLOPs (stem/b1: 14x14, b2/mix: 7x7, b3: 4x4)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"fashion_mnist_budget_study_widths{suffix}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
