"""Does the structure morphsparse chooses beat a uniform width multiplier, on models we did not design?

A zoo of five architectures users bring, all trained on real Fashion-MNIST (images padded to 32x32 where the
model needs it):

* ``vgg``: a plain chain, six conv-BN-ReLU layers 16-16-32-32-64-64 (strides 1-1-2-1-2-1), global average
  pooling, Dense 64 + BN + ReLU, Dense 10 (no residual adds: every layer's width is free);
* ``mobilenetv2``: ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at 32x32 (inverted residuals,
  depthwise convs, adds);
* ``resnet``: keras_hub's ``ResNetBackbone`` from a small config (bottleneck blocks 64-32-32 after a 16-channel stem, projection shortcuts);
* ``densenet``: keras_hub's ``DenseNetBackbone`` from a small config (concatenations, growth rate 12);
* ``vit``: keras_hub's ``ViTBackbone`` from a small config (7x7 patches, 2 layers, 4 heads, width 64; no
  BatchNorm, so group lasso on heads and FFN neurons and l1 importance for pruning).

Every (model, budget, seed) runs these arms, each with the **same total training epochs** ``E`` (default 4, on 4,000 training images), Adam
with a cosine decay to zero, batches of 64, and BatchNorm statistics re-estimated
(``ms.recalibrate_batchnorm`` on 2,048 training images) before every evaluation on the 10,000 test images:

* ``uniform``: the seed narrowed by one width multiplier to the budget (``ms.resize``), trained ``E`` epochs;
* ``morphnet``: ``E/2`` epochs of structure learning with ``MorphRegularizer(budget=...)`` (Adam 2e-2 without
  decay, batches of 32 so the controller gets about 5 / learning rate steps; it steers the strength), export, ``ms.expand`` to exactly the budget, retrained from
  scratch for ``E/2`` epochs (the issue's flow: learned widths, fresh weights);
* ``morphnet_ft``: the same structure learning, then the exported slim model (weights kept) fine-tuned ``E/2``
  epochs: the flow when the trained weights are kept;
* ``prune``: the seed trained ``E/2`` epochs, ``ms.prune(...)`` with the defaults, fine-tuned ``E/2`` epochs;
* ``prune_kd``: the same, fine-tuned with ``ms.distill`` from the unpruned network (temperature 4, weight 0.5).

``--variants`` adds diagnostic arms (the method's knobs away from their defaults), see ``VARIANTS``.
Rows are appended to ``benchmarks/results/structure_quality_runs.jsonl`` as they finish (the study can be run
in parts and resumed); ``--summarise`` writes ``benchmarks/results/structure_quality.json`` and the table that
docs/structure_learning.md quotes.

    python benchmarks/structure_quality.py [--models vgg resnet] [--seeds 0 1 2] [--epochs 6]
    python benchmarks/structure_quality.py --summarise
"""

from __future__ import annotations

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

import morphsparse as ms  # noqa: E402
from morphsparse.morph.batchnorm import batch_norm_layers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "structure_quality_runs.jsonl"
SUMMARY = RESULTS / "structure_quality.json"
BUDGETS = (("flops", 0.25), ("flops", 0.5), ("size", 0.5))
ARMS = ("uniform", "morphnet", "morphnet_ft", "prune", "prune_kd")
#: diagnostic arms: name -> (base arm, keyword arguments changed from the defaults)
VARIANTS = {
    "prune_cost1_nofloor": ("prune", dict(cost_power=1.0, min_width=0.0)),   # prune before this study
    "morphnet_ft_cost05": ("morphnet_ft", dict(cost_power=0.5)),
}
#: diagnostic arms that train the chosen widths from scratch for all ``E`` epochs (the structure alone)
WIDTH_ARMS = {
    "morphnet_widths": ("morphnet_widths", {}),
    "morphnet_widths_cost05": ("morphnet_widths", dict(cost_power=0.5)),
    "morphnet_widths_long": ("morphnet_widths", dict(shrink_epochs=4)),
    "prune_widths": ("prune_widths", {}),
    "prune_widths_cost1": ("prune_widths", dict(cost_power=1.0)),
}
VARIANTS.update(WIDTH_ARMS)
VARIANTS["morphnet_onepass"] = ("morphnet_onepass", {})
VARIANTS["morphnet_onepass_cost05"] = ("morphnet_onepass", dict(cost_power=0.5))
VARIANTS["prune_cost0"] = ("prune", dict(cost_power=0.0))
BATCH = 64
LEARNING_RATE = 3e-3          # training from scratch (uniform, retraining, the dense seed)
FINE_TUNE_RATE = 1e-3         # fine-tuning kept weights (pruned, exported)
SHRINK_RATE = 2e-2            # structure learning (constant: the controller needs about 4 / rate steps)
SHRINK_BATCH = 32             # ... so the structure-learning phase takes smaller batches: 5 / rate steps
CALIBRATION = 2048


# --- the zoo -------------------------------------------------------------------------------------------------

def vgg(input_shape=(28, 28, 1)):
    L = keras.layers
    x = inputs = keras.Input(input_shape)
    for i, (width, stride) in enumerate(zip((16, 16, 32, 32, 64, 64), (1, 1, 2, 1, 2, 1))):
        x = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = L.ReLU()(L.BatchNormalization(name=f"bn{i}")(x))
    x = L.GlobalAveragePooling2D()(x)
    x = L.ReLU()(L.BatchNormalization(name="fc_bn")(L.Dense(64, use_bias=False, name="fc")(x)))
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="vgg")


def mobilenetv2():
    return keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=10,
                                          classifier_activation=None)


def _with_head(backbone, name):
    out = backbone.output
    x = keras.layers.GlobalAveragePooling2D()(out) if len(out.shape) == 4 else out[:, 0, :]
    return keras.Model(backbone.input, keras.layers.Dense(10, name="logits")(x), name=name)


def resnet():
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[16], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32, 32],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(32, 32, 1))
    return _with_head(backbone, "resnet")


def densenet():
    import keras_hub

    backbone = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[3, 3, 3], growth_rate=12,
                                                 image_shape=(32, 32, 1))
    return _with_head(backbone, "densenet")


def vit():
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(28, 28, 1), patch_size=(7, 7), num_layers=2, num_heads=4,
                                            hidden_dim=64, mlp_dim=128, use_class_token=True)
    return _with_head(backbone, "vit")


#: name -> (constructor, input side, regulariser source, export threshold, prune importance)
ZOO = {
    "vgg": (vgg, 28, "gamma", 1e-2, "gamma"),
    "mobilenetv2": (mobilenetv2, 32, "gamma", 1e-2, "gamma"),
    "resnet": (resnet, 32, "gamma", 1e-2, "gamma"),
    "densenet": (densenet, 32, "gamma", 1e-2, "gamma"),
    "vit": (vit, 28, "group_lasso", 1e-2, "l1"),   # keras_hub initialises Glorot: norms start near 0.1
}


# --- the recipe ----------------------------------------------------------------------------------------------

class Study:
    def __init__(self, train_images, epochs):
        (x, self.y), (xt, self.y_test) = ms.fashion_mnist_subset(train_images, None)
        self.epochs = epochs
        self.images = {28: (x, xt), 32: tuple(np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))) for a in (x, xt))}
        self.done, self.shrunk = {}, {}
        if RUNS.exists():
            for line in RUNS.read_text().splitlines():
                row = json.loads(line)
                self.done[row["key"]] = row

    def data(self, name):
        return self.images[ZOO[name][1]]

    def compile(self, model, rate, epochs, schedule=True, batch=BATCH):
        steps = epochs * int(np.ceil(len(self.y) / batch))
        lr = keras.optimizers.schedules.CosineDecay(rate, steps) if schedule else rate
        model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    def fit(self, name, model, epochs, seed, rate=LEARNING_RATE, schedule=True, teacher=None, batch=BATCH,
            regularizer=None):
        keras.utils.set_random_seed(seed + 1)     # one batch order per seed, for every arm
        x = self.data(name)[0]
        trained = model if teacher is None else ms.distill(model, teacher, temperature=4.0, weight=0.5)
        self.compile(trained, rate, epochs, schedule, batch)
        if regularizer is not None:               # structure learning: the optimizer adds the term's gradient
            trained.optimizer = ms.MorphOptimizer(trained.optimizer, regularizer)
        trained.fit(x, self.y, batch_size=batch, epochs=epochs, verbose=0)
        return model

    def accuracy(self, name, model):
        x, x_test = self.data(name)
        if batch_norm_layers(model):
            ms.recalibrate_batchnorm(model, x[:CALIBRATION])
        logits = model.predict(x_test, batch_size=1000, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == self.y_test))

    def fresh(self, name, seed):
        keras.utils.set_random_seed(seed + 1)
        return ZOO[name][0]()

    # --- arms ---------------------------------------------------------------------------------------------
    def uniform(self, name, target, budget, seed, **_):
        keras.utils.set_random_seed(seed + 1)
        model = ms.resize(ZOO[name][0](), budget=budget, target=target)
        return self.fit(name, model, self.epochs, seed), {}

    def dense(self, name, seed):
        key = f"{name}/dense/{seed}"
        path = RESULTS / "structure_quality_cache" / f"{name}_dense_{seed}.weights.h5"
        model = self.fresh(name, seed)
        if key in self.done and path.exists():
            model.load_weights(path)
            return model
        self.fit(name, model, self.epochs // 2, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(path)
        self.record(name, "dense", "-", 1.0, seed, model, 0.0, {})
        return model

    def prune(self, name, target, budget, seed, teacher=False, **options):
        trained = self.dense(name, seed)
        if teacher and batch_norm_layers(trained):
            # the teacher runs in inference mode: its moving statistics must be current (MobileNetV2's BatchNorm
            # momentum of 0.999 leaves them far from the data after a few hundred steps)
            ms.recalibrate_batchnorm(trained, self.data(name)[0][:CALIBRATION])
        try:
            slim, report = ms.prune_with_report(trained, budget=budget, target=target, importance=ZOO[name][4],
                                                **options)
        except ms.PruneError as err:      # recorded as a failure of the method on this model (no accuracy)
            return None, {"error": str(err)}
        self.fit(name, slim, self.epochs - self.epochs // 2, seed, rate=FINE_TUNE_RATE,
                 teacher=trained if teacher else None)
        return slim, {"min_group_fraction": min(after / before for before, after in report.groups.values())}

    def prune_kd(self, name, target, budget, seed, **options):
        return self.prune(name, target, budget, seed, teacher=True, **options)

    def shrink(self, name, target, budget, seed, epochs=None, **options):
        """The structure-learning phase, shared by morphnet and morphnet_ft: (slim export, alive ratio)."""
        epochs = epochs or self.epochs // 2
        key = (name, target, budget, seed, epochs, tuple(sorted(options.items())))
        if key not in self.shrunk:
            _, side, source, threshold, _ = ZOO[name]
            model = self.fresh(name, seed)
            reg = ms.MorphRegularizer(model, target=target, budget=budget, source=source, threshold=threshold,
                                      steps=epochs * int(np.ceil(len(self.y) / SHRINK_BATCH)), **options)
            self.fit(name, model, epochs, seed, rate=SHRINK_RATE, schedule=False, batch=SHRINK_BATCH,
                     regularizer=reg)
            ratio = reg.cost() / reg.initial_cost
            x = self.data(name)[0]
            slim = ms.export(model, source=source, threshold=threshold, calibration_data=x[:CALIBRATION])
            self.shrunk = {key: (slim, ratio)}   # one at a time: morphnet expands it, then morphnet_ft trains it
        return self.shrunk[key]

    def morphnet(self, name, target, budget, seed, **options):
        slim, ratio = self.shrink(name, target, budget, seed, **options)
        keras.utils.set_random_seed(seed + 1)
        wide = ms.expand(slim, budget=budget, target=target, reference=ZOO[name][0]())
        self.fit(name, wide, self.epochs - self.epochs // 2, seed)
        return wide, {"alive_ratio": ratio}

    def morphnet_onepass(self, name, target, budget, seed, **options):
        """One schedule for all ``E`` epochs: the controller's planned steps are the first half, where it lands
        the budget; it then holds it while the learning rate decays to zero; the export is the result."""
        _, side, source, threshold, _ = ZOO[name]
        model = self.fresh(name, seed)
        plan = (self.epochs // 2) * int(np.ceil(len(self.y) / SHRINK_BATCH))
        reg = ms.MorphRegularizer(model, target=target, budget=budget, source=source, threshold=threshold,
                                  steps=plan, **options)
        self.fit(name, model, self.epochs, seed, rate=SHRINK_RATE, batch=SHRINK_BATCH, regularizer=reg)
        ratio = reg.cost() / reg.initial_cost
        slim = ms.export(model, source=source, threshold=threshold, calibration_data=self.data(name)[0][:CALIBRATION])
        return slim, {"alive_ratio": ratio}

    def morphnet_widths(self, name, target, budget, seed, shrink_epochs=None, **options):
        """Diagnostic: the learned widths expanded to the budget and trained ``E`` epochs from scratch, as long
        as uniform (structure learning not counted): does the structure itself beat uniform?"""
        slim, ratio = self.shrink(name, target, budget, seed, shrink_epochs, **options)
        keras.utils.set_random_seed(seed + 1)
        wide = ms.expand(slim, budget=budget, target=target, reference=ZOO[name][0]())
        self.fit(name, wide, self.epochs, seed)
        return wide, {"alive_ratio": ratio}

    def prune_widths(self, name, target, budget, seed, **options):
        """Diagnostic: the widths prune chose, trained ``E`` epochs from scratch."""
        try:
            slim = ms.prune(self.dense(name, seed), budget=budget, target=target, importance=ZOO[name][4],
                            **options)
        except ms.PruneError as err:
            return None, {"error": str(err)}
        keras.utils.set_random_seed(seed + 1)
        fresh = keras.models.clone_model(slim)
        self.fit(name, fresh, self.epochs, seed)
        return fresh, {}

    def morphnet_ft(self, name, target, budget, seed, **options):
        slim, ratio = self.shrink(name, target, budget, seed, **options)
        self.shrunk = {}
        self.fit(name, slim, self.epochs - self.epochs // 2, seed, rate=FINE_TUNE_RATE)
        return slim, {"alive_ratio": ratio}

    # --- bookkeeping --------------------------------------------------------------------------------------
    def record(self, name, arm, target, budget, seed, model, seconds, extra):
        reference = ZOO[name][0]()
        row = dict(key=f"{name}/{arm}/{target}/{budget}/{seed}" if arm != "dense" else f"{name}/dense/{seed}",
                   model=name, arm=arm, target=target, budget=budget, seed=seed, epochs=self.epochs,
                   train_images=len(self.y), accuracy=self.accuracy(name, model),
                   flops_ratio=ms.count_flops(model) / ms.count_flops(reference),
                   params_ratio=ms.count_params(model) / ms.count_params(reference),
                   widths=widths(model), seconds=round(seconds, 1), **extra)
        self.done[row["key"]] = row
        with RUNS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['key']:42s} accuracy {row['accuracy']:.4f}  FLOPs {row['flops_ratio']:.3f}  params "
              f"{row['params_ratio']:.3f}  {seconds:5.0f} s  {extra if extra else ''}", flush=True)
        return row

    def run(self, name, arm, target, budget, seed):
        key = f"{name}/{arm}/{target}/{budget}/{seed}"
        if key in self.done:
            return self.done[key]
        base, options = VARIANTS.get(arm, (arm, {}))
        start = time.time()
        model, extra = getattr(self, base)(name, target, budget, seed, **options)
        if model is None:
            row = dict(key=key, model=name, arm=arm, target=target, budget=budget, seed=seed, epochs=self.epochs,
                       train_images=len(self.y), accuracy=None, **extra)
            self.done[key] = row
            with RUNS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{key:42s} failed: {extra['error'][:200]}", flush=True)
            return row
        return self.record(name, arm, target, budget, seed, model, time.time() - start, extra)


def widths(model):
    """Output widths of the conv/dense layers, in model order (what a reader compares between arms)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(widths(layer))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and not isinstance(
                layer, keras.layers.DepthwiseConv2D):
            out.append(int(layer.kernel.shape[-1]))
    return out


# --- summary -------------------------------------------------------------------------------------------------

def summarise():
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()]
    cells, costs = {}, {}
    failures = [dict(model=r["model"], arm=r["arm"], target=r["target"], budget=r["budget"], seed=r["seed"],
                     error=r["error"]) for r in rows if r.get("accuracy") is None]
    for row in rows:
        if row["arm"] == "dense" or row.get("accuracy") is None:
            continue
        key = (row["model"], row["target"], row["budget"])
        cells.setdefault(key, {}).setdefault(row["arm"], {})[row["seed"]] = row["accuracy"]
        ratio = row["flops_ratio"] if row["target"] == "flops" else row["params_ratio"]
        costs.setdefault(key, {}).setdefault(row["arm"], []).append(ratio)
    table = []
    for (model, target, budget), arms in sorted(cells.items(), key=lambda kv: (list(ZOO).index(kv[0][0]),
                                                                               kv[0][1], kv[0][2])):
        uniform = arms.get("uniform", {})
        for arm, by_seed in sorted(arms.items(), key=lambda kv: arm_order(kv[0])):
            accs = np.array(list(by_seed.values()))
            cost = float(np.mean(costs[(model, target, budget)][arm]))
            entry = dict(model=model, target=target, budget=budget, arm=arm, seeds=sorted(by_seed),
                         mean=float(accs.mean()), std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
                         cost_ratio=cost, over_budget=bool(cost > budget + 0.02))
            paired = [by_seed[s] - uniform[s] for s in by_seed if s in uniform]
            if arm != "uniform" and paired:
                d = np.array(paired)
                entry.update(minus_uniform=float(d.mean()),
                             minus_uniform_std=float(d.std(ddof=1)) if len(d) > 1 else None,
                             wins=int((d > 0).sum()), paired_seeds=len(d))
            table.append(entry)
    SUMMARY.write_text(json.dumps(dict(protocol=protocol(rows), table=table, failures=failures), indent=1))
    print(markdown(table))
    for f in failures:
        print(f"failed: {f['model']} {f['arm']} {f['target']} {f['budget']} seed {f['seed']}: {f['error'][:160]}")
    plot(table, SUMMARY.with_suffix(".png"))


def plot(table, path, arms=ARMS[1:]):
    """One panel per budget: each model's accuracy minus uniform for the main arms, mean and sd over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install morphsparse[plots]): no plot")
        return
    budgets = [(t, b) for t, b in BUDGETS]
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), sharey=True)
    width = 0.8 / len(arms)
    for ax, (target, budget) in zip(axes, budgets):
        for i, arm in enumerate(arms):
            xs, ys, errs = [], [], []
            for j, model in enumerate(ZOO):
                e = next((e for e in table if (e["model"], e["target"], e["budget"], e["arm"]) ==
                          (model, target, budget, arm) and "minus_uniform" in e), None)
                if e is not None:
                    xs.append(j + (i - len(arms) / 2 + 0.5) * width)
                    ys.append(100 * e["minus_uniform"])
                    errs.append(100 * (e["minus_uniform_std"] or 0.0))
            ax.bar(xs, ys, width, yerr=errs, label=arm, capsize=2, color=f"C{i}")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(ZOO)), list(ZOO), rotation=30)
        ax.set_title(f"{budget:.0%} {'FLOPs' if target == 'flops' else 'params'}")
    axes[0].set_ylabel("accuracy minus uniform (points)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def arm_order(arm):
    order = list(ARMS) + list(VARIANTS)
    return order.index(arm) if arm in order else len(order)


def protocol(rows):
    sample = next((r for r in rows if r["arm"] != "dense" and r.get("accuracy") is not None), {})
    return dict(epochs=sample.get("epochs"), train_images=sample.get("train_images"), test_images=10000,
                batch=BATCH, learning_rate=LEARNING_RATE, fine_tune_rate=FINE_TUNE_RATE, shrink_rate=SHRINK_RATE,
                calibration_images=CALIBRATION, machine=platform.machine(), keras=keras.__version__)


def markdown(table):
    lines = ["| model | budget | arm | cost / seed's | accuracy % (mean ± sd) | minus uniform, points (mean ± sd, wins) |",
             "|---|---|---|---|---|---|"]
    for e in table:
        budget = f"{e['budget']:.0%} {'FLOPs' if e['target'] == 'flops' else 'params'}"
        sd = f" ± {100 * e['std']:.2f}" if e["std"] is not None else ""
        diff = ""
        if "minus_uniform" in e:
            dsd = f" ± {100 * e['minus_uniform_std']:.2f}" if e["minus_uniform_std"] is not None else ""
            diff = f"{100 * e['minus_uniform']:+.2f}{dsd} ({e['wins']}/{e['paired_seeds']})"
        cost = f"{e['cost_ratio']:.3f}" + (" (over)" if e["over_budget"] else "")
        lines.append(f"| {e['model']} | {budget} | {e['arm']} | {cost} | {100 * e['mean']:.2f}{sd} | {diff} |")
    return "\n".join(lines)


def main(argv=None):
    global RUNS, SUMMARY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS) + list(VARIANTS))
    parser.add_argument("--budgets", nargs="+", default=[f"{t}:{b}" for t, b in BUDGETS],
                        help="target:fraction, e.g. flops:0.25 size:0.5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4, help="total training epochs of every arm")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--variants-on", nargs="*", default=["vgg"], choices=list(ZOO),
                        help="models that also run the diagnostic arms of VARIANTS")
    parser.add_argument("--runs", type=Path, default=RUNS, help="the JSON-lines file of finished rows")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow threads (0: its default); run two processes with 1 on two cores")
    parser.add_argument("--summarise", action="store_true", help="only write the summary JSON and table")
    args = parser.parse_args(argv)
    if args.runs != RUNS:
        RUNS, SUMMARY = args.runs, args.runs.with_suffix(".summary.json")
    if args.summarise:
        summarise()
        return 0
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    study = Study(args.train_images, args.epochs)
    budgets = [(b.split(":")[0], float(b.split(":")[1])) for b in args.budgets]
    for seed in args.seeds:
        for name in args.models:
            for target, budget in budgets:
                arms = list(args.arms) + (list(VARIANTS) if name in args.variants_on else [])
                for arm in arms:
                    study.run(name, arm, target, budget, seed)
    summarise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
