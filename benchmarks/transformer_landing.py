"""Where does a FLOP budget land on transformers, and does the closing step close the gap? (issue 21, item 4)

Three keras_hub backbones from small configs (random initialisation, no preset download), each behind a
mean-pooled Dense classifier, read scikit-learn's 8x8 digits as sequences of 64 pixel tokens (intensity 0-16:
a 17-token vocabulary; 1,348 training and 449 test images):

* ``bert``: ``BertBackbone`` (2 layers, 4 heads, hidden 64, FFN 128);
* ``gpt2``: ``GPT2Backbone`` (same sizes);
* ``llama``: ``LlamaBackbone`` (2 layers, 4 query heads sharing 2 key/value heads, hidden 64, gated FFN 128).

Each trains once per seed with ``ms.MorphOptimizer(Adam(lr), MorphRegularizer(target="flops",
source="group_lasso", budget=B, steps=N))``. Recorded: the alive FLOP ratio the controller reached, the exported
model's FLOP ratio and test accuracy, the cheapest alive channel's share of the FLOPs (the granularity: an
attention head can be several percent), and the same for the closing step the BudgetWarning spells,
``ms.export(model, source="group_lasso", budget=B)`` (with export's default ``min_width=0.2`` floor and with
``min_width=0``), and for ``ms.prune(model, budget=B, importance="l1")`` on the trained model (no fine-tuning
in any of them).

Usage: python benchmarks/transformer_landing.py [--seeds 0 1 2] [--budget 0.5] [--epochs 20] [--models ...]
Writes benchmarks/results/transformer_landing.json.
"""

from __future__ import annotations

import argparse
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

import morphsparse as ms  # noqa: E402
from morphsparse.data import load_digits  # noqa: E402
from morphsparse.morph.budget import BudgetWarning  # noqa: E402

LENGTH, VOCABULARY, BATCH = 64, 17, 64
SIZES = dict(num_layers=2, hidden_dim=64, intermediate_dim=128, max_sequence_length=LENGTH)
BACKBONES = {
    "bert": ("BertBackbone", dict(vocabulary_size=VOCABULARY, num_heads=4, **SIZES)),
    "gpt2": ("GPT2Backbone", dict(vocabulary_size=VOCABULARY, num_heads=4, **SIZES)),
    "llama": ("LlamaBackbone", dict(vocabulary_size=VOCABULARY, num_query_heads=4, num_key_value_heads=2, **SIZES)),
}


def build(name, seed):
    import keras_hub
    keras.utils.set_random_seed(seed)
    cls_name, config = BACKBONES[name]
    backbone = getattr(keras_hub.models, cls_name)(**config)
    inputs = {key: keras.Input((LENGTH,), dtype="int32", name=key) for key in backbone.input}
    out = backbone(inputs)
    sequence = out["sequence_output"] if isinstance(out, dict) else out
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(sequence)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(pooled), name=name)


def tokens(model, images):
    """The digits as the model's inputs: pixel intensities 0-16 as token ids, no padding, one segment."""
    ids = np.rint(images.reshape(len(images), -1) * 16).astype("int32")
    arrays = {"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)}
    return {key: arrays[key] for key in model.input}


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def run(name, seed, budget, epochs, learning_rate, data):
    (x_train, y_train), (x_test, y_test) = data
    model = build(name, seed)
    train, test = tokens(model, x_train), tokens(model, x_test)
    steps = epochs * int(np.ceil(len(y_train) / BATCH))
    seed_flops = ms.count_flops(model)
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso", budget=budget, steps=steps)
    model.compile(ms.MorphOptimizer(keras.optimizers.Adam(learning_rate), reg),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train, y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    verdicts = [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    granularity = reg.controller.cheapest_alive_ratio()
    row = dict(model=name, seed=seed, budget=budget, epochs=epochs, steps=steps, learning_rate=learning_rate,
               seed_flops=seed_flops, trained_accuracy=round(accuracy(model, test, y_test), 4),
               alive_ratio=round(reg.cost() / reg.initial_cost, 4),
               cheapest_alive_share=None if granularity is None else round(granularity, 4),
               budget_warning=verdicts[-1] if verdicts else None, train_seconds=round(seconds, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = ms.export(model, source="group_lasso")
        row.update(export_ratio=round(ms.count_flops(slim) / seed_flops, 4),
                   export_accuracy=round(accuracy(slim, tokens(slim, x_test), y_test), 4))
        fitted = ms.export(model, source="group_lasso", budget=budget)
        row.update(export_budget_ratio=round(ms.count_flops(fitted) / seed_flops, 4),
                   export_budget_accuracy=round(accuracy(fitted, tokens(fitted, x_test), y_test), 4))
        free = ms.export(model, source="group_lasso", budget=budget, min_width=0.0)
        row.update(export_budget_free_ratio=round(ms.count_flops(free) / seed_flops, 4),
                   export_budget_free_accuracy=round(accuracy(free, tokens(free, x_test), y_test), 4))
        pruned = ms.prune(model, budget=budget, target="flops", importance="l1")
        row.update(prune_ratio=round(ms.count_flops(pruned) / seed_flops, 4),
                   prune_accuracy=round(accuracy(pruned, tokens(pruned, x_test), y_test), 4))
    return row


def summarise(rows, budget):
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        for key in ("alive_ratio", "export_ratio", "export_budget_ratio", "export_budget_free_ratio", "prune_ratio",
                    "trained_accuracy", "export_accuracy", "export_budget_accuracy", "export_budget_free_accuracy",
                    "prune_accuracy"):
            values = np.array([r[key] for r in mine])
            lines.append(f"{name:6s} {key:17s} mean {values.mean():.4f} sd {values.std(ddof=1) if len(values) > 1 else 0:.4f} "
                         f"min {values.min():.4f} max {values.max():.4f}")
        for key in ("export_ratio", "export_budget_ratio", "export_budget_free_ratio", "prune_ratio"):
            within = sum(abs(r[key] - budget) <= 0.03 for r in mine)
            lines.append(f"{name:6s} {key} within 3 points of the budget: {within}/{len(mine)}")
    return lines


def markdown(rows):
    """The table docs/structure_learning.md quotes: mean and range over seeds, FLOPs and test accuracy."""
    def cell(mine, key):
        values = np.array([r[key] for r in mine]) * 100
        return f"{values.mean():.1f}% ({values.min():.1f}-{values.max():.1f})"

    lines = ["| model | trained acc. | alive FLOPs | export: FLOPs, acc. | export(budget=): FLOPs, acc. | "
             "export(budget=, min_width=0): FLOPs, acc. | prune: FLOPs, acc. |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        lines.append(f"| {name} | {cell(mine, 'trained_accuracy')} | {cell(mine, 'alive_ratio')} | "
                     f"{cell(mine, 'export_ratio')}, {cell(mine, 'export_accuracy')} | "
                     f"{cell(mine, 'export_budget_ratio')}, {cell(mine, 'export_budget_accuracy')} | "
                     f"{cell(mine, 'export_budget_free_ratio')}, {cell(mine, 'export_budget_free_accuracy')} | "
                     f"{cell(mine, 'prune_ratio')}, {cell(mine, 'prune_accuracy')} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/transformer_landing.json"))
    args = parser.parse_args(argv)
    data = load_digits(seed=0)
    rows = []
    for name in args.models:
        for seed in args.seeds:
            row = run(name, seed, args.budget, args.epochs, args.learning_rate, data)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "budget_warning"}, flush=True)
    summary = summarise(rows, args.budget)
    print("\n".join(summary + [""] + markdown(rows)))
    import keras_hub
    Path(args.out).write_text(json.dumps(dict(
        description=__doc__.split("\n")[0], command="python benchmarks/transformer_landing.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()), keras=keras.__version__,
        keras_hub=keras_hub.__version__, rows=rows, summary=summary), indent=2) + "\n")


if __name__ == "__main__":
    main()
