"""morphsparse in a few minutes (`make demo`): give a FLOP budget, get the slim model, on real Fashion-MNIST.

1. build the seed network (a small ResNet) and print its channel groups and per-layer costs;
2. train it with the MorphNet regulariser and a FLOP budget of 50%: the strength is controlled during training
   so the network's alive FLOPs land at the budget (no strength to scan);
3. export the slim model (dead channels physically removed, weights copied, BatchNorm statistics re-estimated);
4. expand it to exactly 50% of the seed's FLOPs and retrain it from scratch, beside a uniformly narrowed seed at
   the same FLOPs trained with the same recipe: learned structure against uniform width;
5. the other route: train the seed densely, ``ms.prune`` it to the budget with the defaults, fine-tune it.

Runs in about 3 minutes on two CPU cores (10,000 training images, 3 + 3 epochs). One seed: see
examples/fashion_mnist_budget_study.py and docs/structure_learning.md for the study over three seeds. Needs
Fashion-MNIST on disk (Debian's dataset-fashion-mnist, or MORPHSPARSE_FASHION_MNIST=folder); exits with status
1 if it is missing.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import morphsparse as ms  # noqa: E402
from morphsparse.models import conv_widths, small_resnet  # noqa: E402


def compile_for_training(model, learning_rate, regularizer=None):
    optimizer = keras.optimizers.Adam(learning_rate)
    if regularizer is not None:             # structure learning: the optimizer adds the regulariser's gradient
        optimizer = ms.MorphOptimizer(optimizer, regularizer)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_accuracy(model, x_test, y_test):
    logits = model.predict(x_test, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y_test))


def width_table(columns):
    """Per-layer output widths of several models side by side (0 = layer removed)."""
    names = list(next(iter(columns.values())))
    header = f"{'layer':12s}" + "".join(f"{title:>10s}" for title in columns)
    lines = [header, "-" * len(header)]
    for name in names:
        lines.append(f"{name:12s}" + "".join(f"{widths.get(name, 0):>10d}" for widths in columns.values()))
    return "\n".join(lines)


def retrain(model, x, y, epochs, seed=1):
    """The same recipe for every network: fresh weights, Adam with a cosine decay to zero."""
    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(model)
    steps = epochs * int(np.ceil(len(x) / 128))
    compile_for_training(model, keras.optimizers.schedules.CosineDecay(3e-3, steps))
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=2)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of structure learning and of retraining")
    parser.add_argument("--budget", type=float, default=0.5, help="FLOP budget, a fraction of the seed's FLOPs")
    args = parser.parse_args(argv)

    try:
        (x_train, y_train), (x_test, y_test) = ms.load_fashion_mnist()
    except ms.DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    start = time.time()
    keras.utils.set_random_seed(0)
    x_train, y_train = ms.prepare_images(x_train[:args.train_images]), y_train[:args.train_images]
    x_test = ms.prepare_images(x_test)

    seed = small_resnet()
    print("== 1. the seed network's channel groups (channels that must be removed together)")
    print(ms.analyze(seed))
    print()
    print(ms.cost_report(seed).table())
    seed_flops, seed_params = ms.count_flops(seed), ms.count_params(seed)

    print(f"\n== 2. structure learning to a FLOP budget of {args.budget:.0%}: {args.epochs} epochs on "
          f"{len(x_train)} images")
    # batches of 64: the controller needs about 4 / learning_rate steps to land (docs/structure_learning.md)
    steps = args.epochs * int(np.ceil(len(x_train) / 64))
    reg = ms.MorphRegularizer(seed, target="flops", budget=args.budget, steps=steps)
    trainable = compile_for_training(seed, 1e-2, reg)
    trainable.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=2)
    print(reg.summary())
    landed = reg.alive_flops() / seed_flops

    print("\n== 3. export: dead channels removed, surviving weights copied, BatchNorm statistics re-estimated")
    slim, report = ms.export_with_report(trainable, calibration_data=x_train[:2560])
    print(report.summary())
    print(report.table())
    slim_accuracy = test_accuracy(slim, x_test, y_test)

    print(f"\n== 4. learned vs uniform at {args.budget:.0%} of the seed's FLOPs, both retrained from scratch "
          f"({args.epochs} epochs, same recipe)")
    learned = retrain(ms.expand(slim, budget=args.budget, reference=seed), x_train, y_train, args.epochs)
    uniform = retrain(ms.resize(small_resnet(), budget=args.budget), x_train, y_train, args.epochs)
    learned_accuracy, uniform_accuracy = test_accuracy(learned, x_test, y_test), test_accuracy(uniform, x_test, y_test)

    print(f"\n== 5. prune a trained seed to {args.budget:.0%} of its FLOPs (ms.prune's defaults: importance "
          f"normalised per layer, price = marginal cost ** 0.5, a floor of 20% per layer), fine-tune {args.epochs} "
          "epochs")
    keras.utils.set_random_seed(1)
    dense = compile_for_training(keras.models.clone_model(small_resnet()),
                                 keras.optimizers.schedules.CosineDecay(3e-3, args.epochs * int(np.ceil(
                                     len(x_train) / 128))))
    dense.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    pruned = ms.prune(dense, budget=args.budget, calibration_data=x_train[:2560])
    pruned_before = test_accuracy(pruned, x_test, y_test)
    compile_for_training(pruned, keras.optimizers.schedules.CosineDecay(1e-3, args.epochs * int(np.ceil(
        len(x_train) / 128))))
    pruned.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    ms.recalibrate_batchnorm(pruned, x_train[:2560])
    pruned_accuracy = test_accuracy(pruned, x_test, y_test)

    print("\n== per-layer widths")
    print(width_table({"seed": conv_widths(small_resnet()), "slim": conv_widths(slim),
                       "learned": conv_widths(learned), "uniform": conv_widths(uniform),
                       "pruned": conv_widths(pruned)}))
    print()
    rows = [("seed", seed_flops, seed_params, None),
            ("slim (exported)", ms.count_flops(slim), ms.count_params(slim), slim_accuracy),
            ("learned, retrained", ms.count_flops(learned), ms.count_params(learned), learned_accuracy),
            ("uniform, retrained", ms.count_flops(uniform), ms.count_params(uniform), uniform_accuracy),
            ("pruned, fine-tuned", ms.count_flops(pruned), ms.count_params(pruned), pruned_accuracy)]
    print(f"{'model':20s} {'FLOPs':>12s} {'of seed':>8s} {'params':>10s} {'test accuracy':>14s}")
    for name, flops, params, accuracy in rows:
        print(f"{name:20s} {flops:12,d} {flops / seed_flops:8.1%} {params:10,d} "
              f"{'-' if accuracy is None else f'{accuracy:.4f}':>14s}")
    print(f"\nBudget {args.budget:.0%}: the regulariser's alive FLOPs landed at {landed:.1%} of the seed's. The "
          f"learned structure scored {learned_accuracy:.4f}, the uniform one {uniform_accuracy:.4f} "
          f"({100 * (learned_accuracy - uniform_accuracy):+.2f} points), both trained {args.epochs} epochs from "
          f"scratch (the learned one after {args.epochs} epochs of structure learning). The pruned seed scored "
          f"{pruned_before:.4f} right after pruning and {pruned_accuracy:.4f} after {args.epochs} epochs of "
          f"fine-tuning ({100 * (pruned_accuracy - uniform_accuracy):+.2f} points against uniform, after "
          f"{args.epochs} epochs of dense training). One seed, so within noise unless a gap is large; the zoo "
          f"benchmark over three seeds is in docs/structure_learning.md (\"When a learned structure helps\"). "
          f"Done in {time.time() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
