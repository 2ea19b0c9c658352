"""morphsparse in a few minutes (`make demo`): learn a structure for a small ResNet on real Fashion-MNIST.

1. build the seed network and print its channel groups and per-layer costs;
2. train it briefly with the FLOP-targeted MorphNet regulariser (BatchNorm gammas of costly channels shrink);
3. export the slim model (dead channels physically removed, weights copied);
4. expand it with a width multiplier back to the seed's FLOPs, retrain briefly, and compare.

Runs in about 3 minutes on two CPU cores (10,000 training images, 3 + 3 epochs). Needs Fashion-MNIST on disk
(Debian's dataset-fashion-mnist, or MORPHSPARSE_FASHION_MNIST=folder); exits with status 1 if it is missing.
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


def compile_for_training(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of structure learning and of retraining")
    parser.add_argument("--strength-multiplier", type=float, default=1.0)
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

    print(f"\n== 2. structure learning: {args.epochs} epochs on {len(x_train)} images with the FLOP regulariser")
    reg = ms.MorphRegularizer(seed, target="flops", source="gamma", threshold=1e-2,
                              strength_multiplier=args.strength_multiplier)
    trainable = compile_for_training(reg.attach(seed), 1e-2)
    trainable.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    print(reg.summary())
    reg.detach(trainable)
    # structure learning runs at a high constant learning rate, so the moving averages lag the weights:
    # re-estimate them at the final weights before measuring inference-mode accuracy
    ms.recalibrate_batchnorm(trainable, x_train[:2560])
    learned_accuracy = test_accuracy(trainable, x_test, y_test)

    print("\n== 3. export: dead channels removed, surviving weights copied")
    slim, report = ms.export_with_report(trainable, source="gamma", threshold=1e-2)
    print(report.summary())
    print(report.table())
    slim_accuracy = test_accuracy(slim, x_test, y_test)

    print(f"\n== 4. expand back to the seed's {seed_flops:,d} FLOPs and retrain from scratch ({args.epochs} epochs)")
    wide = ms.expand(slim, budget=1.0, reference=seed, target="flops")
    keras.utils.set_random_seed(1)
    # a cosine decay to zero: the best accuracy a short retraining can give
    steps = args.epochs * int(np.ceil(len(x_train) / 128))
    compile_for_training(wide, keras.optimizers.schedules.CosineDecay(3e-3, steps))
    wide.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    wide_accuracy = test_accuracy(wide, x_test, y_test)

    print("\n== before / after")
    print(width_table({"seed": conv_widths(small_resnet()), "slim": conv_widths(slim),
                       "expanded": conv_widths(wide)}))
    print()
    rows = [("seed + regulariser", seed_flops, seed_params, learned_accuracy),
            ("slim (exported)", ms.count_flops(slim), ms.count_params(slim), slim_accuracy),
            ("expanded, retrained", ms.count_flops(wide), ms.count_params(wide), wide_accuracy)]
    print(f"{'model':22s} {'FLOPs':>12s} {'params':>10s} {'test accuracy':>14s}")
    for name, flops, params, accuracy in rows:
        print(f"{name:22s} {flops:12,d} {params:10,d} {accuracy:14.4f}")
    print(f"\nThe slim model computes what the regularised model computes (test accuracy {slim_accuracy:.4f} vs "
          f"{learned_accuracy:.4f}; constants folded through zero-padded convs differ only at image borders) at "
          f"{ms.count_flops(slim) / seed_flops:.0%} of its FLOPs; the expanded model spends the seed's FLOPs "
          f"on the learned shape. Done in {time.time() - start:.0f} s. See docs/structure_learning.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
