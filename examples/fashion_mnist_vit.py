"""A ViT on Fashion-MNIST: heads and FFN widths learned to a FLOP budget, against a uniformly narrowed ViT.

The seed is ``morphsparse.models.small_vit``: 7x7 patches of a 28x28 image -> 16 tokens of width 64, a learned
position embedding, three pre-norm transformer blocks (8 attention heads of key size 16, an FFN of 128 GELU
neurons), average pooling and a Dense head. For every seed (three by default):

* ``learned``: the seed trained with ``MorphRegularizer(target="flops", source="group_lasso", budget=b)``
  (the strength is controlled, no scan; heads and FFN neurons are priced, the residual stream is pinned with
  ``ignore=`` because export keeps it whole anyway: every LayerNormalization reads it), exported with
  ``ms.export`` (fewer heads, narrower FFNs, surviving weights copied) and fine-tuned;
* ``uniform``: the seed narrowed by one width multiplier on the heads and FFN widths of every block
  (``ms.resize(seed, budget=<the learned model's FLOPs>, ignore=...)``) so both have the same FLOPs (the uniform
  one at most the learned one's), trained from scratch for the same total steps (shrink + fine-tune).

Both are scored on the 10,000 test images; per seed the JSON records test accuracy, FLOPs (``ms.count_flops``),
parameters, and which heads (indices, per block) and how many FFN neurons survived. Writes
examples/results/fashion_mnist_vit.json (``--smoke``: fashion_mnist_vit_smoke.json, a tiny run that checks the
pipeline end to end in seconds, with accuracies that mean nothing).

    python examples/fashion_mnist_vit.py [--smoke] [--seeds 0 1 2] [--train-images 10000] [--epochs 4]
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
from morphsparse.models import small_vit  # noqa: E402

# the other examples' helpers (this folder is on sys.path when the script runs)
from demo import test_accuracy  # noqa: E402
from fashion_mnist_budget_study import overridden, print_summary, summarise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: The seed ViT. 8 heads of 16 (attention width 128, twice the stream) cost 2.3x what the FFN costs per block,
#: so the FLOP target has heads and neurons of very different prices to choose between.
ARCHITECTURE = dict(patch=7, dim=64, depth=3, heads=8, key_dim=16, ffn=128)
#: The smoke run's ViT: one small block, so that its three compiled trainings fit a fast test.
SMOKE_ARCHITECTURE = dict(patch=7, dim=16, depth=1, heads=4, key_dim=4, ffn=32)
#: Layers whose outputs must keep their width: the patch embedding is one producer of the residual stream,
#: so naming it pins the whole stream group (export would keep it anyway, see the module doc).
PINNED = ("patchify",)

SETTINGS = {
    # 10k images, batch 64: 157 steps per epoch. The controller needs a few times the steps a group-lasso
    # value takes to reach the threshold (~R / learning rate with Adam, R ~ 0.04-0.1 at initialisation here).
    "full": dict(train_images=10000, test_images=10000, seeds=(0, 1, 2), budget=0.5, shrink_epochs=4, epochs=4,
                 batch_size=64, shrink_learning_rate=2e-3, learning_rate=2e-3, threshold=1e-2,
                 architecture=ARCHITECTURE),
    # a few steps of everything on a few hundred images: the pipeline, not the figures (a high learning rate
    # so that some heads and neurons die within the 48 structure-learning steps)
    "smoke": dict(train_images=256, test_images=256, seeds=(0,), budget=0.5, shrink_epochs=3, epochs=1,
                  batch_size=16, shrink_learning_rate=3e-2, learning_rate=2e-3, threshold=1e-2,
                  architecture=SMOKE_ARCHITECTURE),
}


def compile_model(model, learning_rate, regularizer=None):
    optimizer = keras.optimizers.Adam(learning_rate)
    if regularizer is not None:                    # structure learning: the optimizer adds the term's gradient
        optimizer = ms.MorphOptimizer(optimizer, regularizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def cosine(settings, steps_per_epoch, epochs):
    return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], epochs * steps_per_epoch)


def structure(model, depth, head_masks=None):
    """Per block: heads kept (count, of how many, and which when the masks are known) and FFN width."""
    blocks = []
    for i in range(depth):
        mha = model.get_layer(f"b{i}_mha")
        row = dict(block=i, heads=int(mha.num_heads), ffn=int(model.get_layer(f"b{i}_ffn1").units))
        if head_masks is not None:
            row["head_indices"] = np.flatnonzero(head_masks[i]).tolist()
        blocks.append(row)
    return blocks


def describe(blocks, seed_arch):
    return " | ".join(f"b{b['block']}: {b['heads']}/{seed_arch['heads']} heads"
                      + (f" {b['head_indices']}" if "head_indices" in b else "")
                      + f", ffn {b['ffn']}/{seed_arch['ffn']}" for b in blocks)


def learned(settings, data, seed, steps_per_epoch):
    """Shrink to the budget with the regulariser, export, fine-tune the slim model (its own weights)."""
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = small_vit(**settings["architecture"])
    seed_flops = ms.count_flops(model)
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso", threshold=settings["threshold"],
                              budget=settings["budget"], ignore=PINNED,
                              steps=settings["shrink_epochs"] * steps_per_epoch)
    compile_model(model, settings["shrink_learning_rate"], reg)     # constant: the controller needs it (docs)
    history = model.fit(x, y, batch_size=settings["batch_size"], epochs=settings["shrink_epochs"], verbose=2).history
    alive_ratio = float(reg.cost() / reg.initial_cost)
    print(reg.summary(), flush=True)
    regularised_accuracy = test_accuracy(model, x_test, y_test)
    slim, report = ms.export_with_report(model, source="group_lasso", threshold=settings["threshold"])
    print(report.summary())
    print(report.table(), flush=True)
    graph = ms.analyze(model)
    head_masks = [report.effective_masks[graph.internal_group(f"b{i}_mha", "heads").id]
                  for i in range(settings["architecture"]["depth"])]
    exported_accuracy = test_accuracy(slim, x_test, y_test)
    keras.utils.set_random_seed(seed + 1)                      # the same batch order as the uniform network
    compile_model(slim, cosine(settings, steps_per_epoch, settings["epochs"]))
    slim.fit(x, y, batch_size=settings["batch_size"], epochs=settings["epochs"], verbose=2)
    return dict(method="learned", budget=settings["budget"], seed=seed, flops=ms.count_flops(slim),
                params=ms.count_params(slim), accuracy=test_accuracy(slim, x_test, y_test),
                flops_ratio=ms.count_flops(slim) / seed_flops, alive_ratio_end_of_shrink=alive_ratio,
                accuracy_regularised=regularised_accuracy, accuracy_exported=exported_accuracy,
                strength=[float(s) for s in history.get("strength", [])],
                blocks=structure(slim, settings["architecture"]["depth"], head_masks))


def uniform(settings, data, seed, steps_per_epoch, flops):
    """The seed narrowed uniformly (heads and FFN widths) to at most ``flops``, trained from scratch for the
    shrink + fine-tune steps of the learned network."""
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed + 1)
    model, report = ms.expand_with_report(small_vit(**settings["architecture"]), budget=flops, ignore=PINNED)
    print(report.summary(), flush=True)
    epochs = settings["shrink_epochs"] + settings["epochs"]
    keras.utils.set_random_seed(seed + 1)
    compile_model(model, cosine(settings, steps_per_epoch, epochs))
    model.fit(x, y, batch_size=settings["batch_size"], epochs=epochs, verbose=2)
    seed_flops = ms.count_flops(small_vit(**settings["architecture"]))
    return dict(method="uniform", budget=settings["budget"], seed=seed, flops=ms.count_flops(model),
                params=ms.count_params(model), accuracy=test_accuracy(model, x_test, y_test),
                flops_ratio=ms.count_flops(model) / seed_flops, width_multiplier=report.multiplier,
                blocks=structure(model, settings["architecture"]["depth"]))


def claims(runs):
    """Learned minus uniform accuracy (points) per seed and on the means, against the seed-to-seed spread."""
    by_seed = {}
    for run in runs:
        by_seed.setdefault(run["seed"], {})[run["method"]] = run
    gains = [100 * (r["learned"]["accuracy"] - r["uniform"]["accuracy"]) for r in by_seed.values()
             if {"learned", "uniform"} <= set(r)]
    if not gains:
        return {}
    std = {m: float(np.std([r["accuracy"] for r in runs if r["method"] == m], ddof=1)) * 100
           if sum(r["method"] == m for r in runs) > 1 else 0.0 for m in ("learned", "uniform")}
    mean_gain = float(np.mean(gains))
    return dict(learned_minus_uniform_points_per_seed=[round(g, 2) for g in gains],
                learned_minus_uniform_points_mean=round(mean_gain, 2),
                spread_points=round(max(std.values()), 2),
                learned_above_uniform_every_seed=all(g > 0 for g in gains),
                learned_above_uniform_beyond_spread=mean_gain > max(std.values()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny end-to-end run (seconds; figures mean nothing)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of structure learning and of fine-tuning each (the uniform ViT trains twice that)")
    parser.add_argument("--budget", type=float, default=None, help="FLOP budget, a fraction of the seed's FLOPs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")      # every new model retraces predict(): expected here
    mode = "smoke" if args.smoke else "full"
    settings = overridden(SETTINGS[mode], args)
    if args.epochs:
        settings["shrink_epochs"] = settings["epochs"] = args.epochs
    if args.budget:
        settings["budget"] = args.budget
    try:
        data = ms.fashion_mnist_subset(settings["train_images"], settings["test_images"])
    except ms.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    start = time.time()
    seed_model = small_vit(**settings["architecture"])
    seed_flops, seed_params = ms.count_flops(seed_model), ms.count_params(seed_model)
    steps_per_epoch = int(np.ceil(len(data[0][0]) / settings["batch_size"]))
    print(f"mode {mode}: {settings}\nseed ViT: {seed_flops:,d} FLOPs, {seed_params:,d} params",
          flush=True)
    runs = []
    for seed in settings["seeds"]:
        print(f"== seed {seed}: structure learning to {settings['budget']:.0%} of the FLOPs", flush=True)
        runs.append(learned(settings, data, seed, steps_per_epoch))
        print(f"== seed {seed}: uniform ViT at {runs[-1]['flops']:,d} FLOPs", flush=True)
        runs.append(uniform(settings, data, seed, steps_per_epoch, runs[-1]["flops"]))
        for run in runs[-2:]:
            print(f"  {run['method']:8s} {run['flops']:>10,d} FLOPs ({run['flops_ratio']:.1%}) {run['params']:>7,d} "
                  f"params  accuracy {run['accuracy']:.4f}  {describe(run['blocks'], settings['architecture'])}",
                  flush=True)
    summary = summarise(runs)
    report = dict(description=__doc__.splitlines()[0], mode=mode, settings=settings,
                  pinned=list(PINNED), seed_flops=seed_flops, seed_params=seed_params, summary=summary,
                  claims=claims(runs), runs=runs, seconds=round(time.time() - start, 1),
                  machine=dict(python=platform.python_version(), keras=keras.__version__,
                               tensorflow=tf.__version__, cpus=os.cpu_count(), load_average=os.getloadavg()))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fashion_mnist_vit{'' if mode == 'full' else '_smoke'}.json"
    path.write_text(json.dumps(report, indent=1))
    print()
    print_summary(summary)
    print(json.dumps(report["claims"], indent=1))
    print(f"wrote {path} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
