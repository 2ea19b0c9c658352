"""Does sparsity run faster? Dense vs sparse LiteRT models, one thread, XNNPACK, alternating rounds.

Two networks whose zeros LiteRT can use (docs/sparse_inference.md):

(a) ``mobilenet``: a MobileNet-shaped CNN for XNNPACK's sparse inference (3x3 stride-2 stem on 3 channels,
    depthwise 3x3 + 1x1 pointwise blocks, global mean, a Dense head), 129x129 inputs, with 70/80/90% of every
    1x1 convolution's weights zero (scattered, as unstructured sparse training leaves them);
(b) ``mlp``: an MLP 784-1024-1024-10 whose hidden kernels are 70/80/90% zero in 1x4 blocks along the input
    axis (LiteRT's sparse fully-connected kernel), and the same zeros scattered (which LiteRT densifies).

Every model is converted with ``ms.to_litert`` (outputs checked against Keras), then the dense and sparse
interpreters run in turns, ``--rounds`` rounds of ``--calls`` invocations each, pinned to one core with one
thread, batch 1. Reported per variant: median and minimum time per call and the spread (interquartile range
over rounds), as ratios to the dense model measured in the same rounds.

(c) ``resnet``: a small ResNet-style CNN trained on real Fashion-MNIST with RigL, constant fan-in and neuron
    ablation (minimum-salient fraction ABLATION_FRACTION) at 70/80/90%, then exported by
    ``ms.export(source="zeros")`` (its fully masked channels removed through the channel graph), as it is and with
    ``round_to=8``: Keras on CPU, batch 1 and 32, the exported model against the dense one in turns;
    its speed-up is set against its FLOP reduction (dense FLOPs / exported FLOPs).

Writes ``benchmarks/results/sparse_inference.json``.

    python benchmarks/sparse_inference.py [--rounds 15] [--calls 20] [--quick] [--skip-resnet]
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import morphsparse as ms  # noqa: E402
from morphsparse.litert import interpreter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.7, 0.8, 0.9)
# SRigL's minimum-salient fraction for (c): its paper's 0.3 removed no neuron in our Fashion-MNIST runs, 0.9 does
ABLATION_FRACTION = 0.9
L = keras.layers


def mobilenet(size=129, widths=(32, 64, 128, 128, 256, 256), name="mobilenet"):
    # XNNPACK's sparse subgraph must open with a 3x3 stride-2 conv padded by 1 on each side, and strided
    # depthwise convs likewise: 'same' padding does that only on odd sizes (129 -> 65 -> 33 -> 17 -> 9)
    # He initialisation keeps activations near unit scale through the stack (random weights; tiny values
    # would turn into denormals, whose arithmetic is slow and would distort the timings)
    he = dict(use_bias=False, kernel_initializer="he_normal")
    inp = keras.Input((size, size, 3))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same", **he)(inp)))
    for i, width in enumerate(widths):
        stride = 2 if i in (1, 3, 5) else 1
        x = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=stride, padding="same",
                                                                  depthwise_initializer="he_normal",
                                                                  use_bias=False)(x)))
        x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(width, 1, name=f"pw{i}", **he)(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="head")(x), name=name)


def mlp(name="mlp"):
    inp = keras.Input((784,))
    x = L.Dense(1024, activation="relu", name="fc1")(inp)
    x = L.Dense(1024, activation="relu", name="fc2")(x)
    return keras.Model(inp, L.Dense(10, name="fc3")(x), name=name)


def zero_out(model, layers, sparsity, block, rng):
    """Zero ``sparsity`` of each named layer's kernel: scattered (block 1), or in blocks of ``block`` entries
    along the input (second-to-last) axis."""
    for name in layers:
        layer = model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        matrix = kernel.reshape(-1, kernel.shape[-1])
        rows = matrix.shape[0] // block
        keep = np.zeros(rows * matrix.shape[1], bool)
        keep[rng.permutation(keep.size)[:int(round((1 - sparsity) * keep.size))]] = True
        mask = np.repeat(keep.reshape(rows, matrix.shape[1]), block, axis=0)
        # rescale the survivors so each layer's output keeps its scale (see mobilenet())
        layer.kernel.assign((matrix * mask / np.sqrt(1 - sparsity)).reshape(kernel.shape).astype(kernel.dtype))


def variants(quick):
    """(network, label, model, sparsity) for every variant; the dense model of each network first."""
    rng = np.random.default_rng(0)
    sparsities = SPARSITIES[-1:] if quick else SPARSITIES
    out = []
    base = mobilenet(size=65 if quick else 129)
    pointwise = [layer.name for layer in base.layers if layer.name.startswith("pw")]
    out.append(("mobilenet", "dense", base, 0.0))
    for s in sparsities:
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        zero_out(model, pointwise, s, 1, rng)
        out.append(("mobilenet", f"{s:.0%} scattered 1x1", model, s))
    base = mlp()
    out.append(("mlp", "dense", base, 0.0))
    for s in sparsities:
        for block, label in ((4, "1x4 blocks"), (1, "scattered")):
            model = keras.models.clone_model(base)
            model.set_weights(base.get_weights())
            zero_out(model, ["fc1", "fc2"], s, block, rng)
            out.append(("mlp", f"{s:.0%} {label}", model, s))
    return out


def resnet(width=16, name="resnet"):
    """Stem, two stages of two residual blocks (the second strided, with a 1x1 projection), a Dense head."""
    def conv_bn(x, filters, kernel, strides=1, relu=True):
        x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU()(x) if relu else x

    inp = keras.Input((28, 28, 1))
    x = conv_bn(inp, width, 3)
    for stage, filters in enumerate((width, 2 * width)):
        for block in range(2):
            strides = 2 if stage and not block else 1
            shortcut = conv_bn(x, filters, 1, strides, relu=False) if strides > 1 else x
            y = conv_bn(conv_bn(x, filters, 3, strides), filters, 3, relu=False)
            x = L.ReLU()(L.Add()([shortcut, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="head")(x), name=name)


def train_with_ablation(sparsity, data, epochs, seed=0, batch=128):
    """The ResNet trained with RigL, constant fan-in and neuron ablation, stripped and exported."""
    (x_train, y_train), (x_test, _) = data
    keras.utils.set_random_seed(seed)
    model = resnet()
    steps = -(-len(x_train) // batch) * epochs
    optimizer = ms.sparse_optimizer(model, keras.optimizers.Adam(2e-3), sparsity, "rigl", "erk",
                                    sparsity_type=ms.FanIn(ablation=True, min_salient_fraction=ABLATION_FRACTION),
                                        layers=ms.LayerSelection(keep_dense=["head"]),
                                            schedule=ms.UpdateSchedule(update_every=50), total_steps=steps, seed=seed)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    dense = ms.strip(model)
    x = x_test[:64]
    exported = []
    for round_to in (None, 8):      # as ablated, and with every width rounded up to a multiple of 8
        slim = ms.export(dense, source="zeros", round_to=round_to)
        difference = float(np.max(np.abs(dense.predict(x, verbose=0) - slim.predict(x, verbose=0))))
        exported.append((slim, difference))
    return exported


def keras_timings(quick, rounds, calls):
    """(c): exported fan-in + ablation ResNets against the dense one, Keras on CPU, batch 1 and 32."""
    import tensorflow as tf

    from morphsparse.data import load_fashion_mnist, prepare_images

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    subset = 3000 if quick else 10000
    data = ((prepare_images(x_train[:subset]), y_train[:subset]),
            (prepare_images(x_test), y_test))
    base = resnet()
    models = [("dense", base, 0.0, None)]
    for s in SPARSITIES[-1:] if quick else SPARSITIES:
        for (slim, difference), label in zip(train_with_ablation(s, data, epochs=1 if quick else 2),
                                             ("exported", "exported, widths rounded to 8")):
            models.append((f"{s:.0%} fan-in + ablation, {label}", slim, s, difference))
            print(f"resnet     {s:.0%} {label}: FLOPs {ms.count_flops(slim):,} of {ms.count_flops(base):,}, "
                  f"output difference {difference:.1e}", flush=True)
    rows = []
    for batch in (1, 32):
        x = tf.constant(data[1][0][:batch])
        functions = [tf.function(lambda v, m=model: m(v, training=False)) for _, model, _, _ in models]
        times = [[] for _ in models]
        for f in functions:
            f(x)                                          # trace and warm up outside the timed rounds
        for _ in range(rounds):
            for f, own in zip(functions, times):
                start = time.perf_counter()
                for _ in range(calls):
                    f(x)
                own.append((time.perf_counter() - start) / calls)
        dense_times = np.asarray(times[0])
        dense_flops = ms.count_flops(base)
        for (label, model, s, difference), own in zip(models, times):
            own = np.asarray(own)
            ratios = dense_times / own
            flop_reduction = dense_flops / ms.count_flops(model)
            speedup = float(np.median(dense_times) / np.median(own))
            rows.append(dict(network="resnet", runtime="keras", batch=batch, variant=label, sparsity=s,
                             flops=int(ms.count_flops(model)), params=int(model.count_params()),
                             flop_reduction=round(flop_reduction, 3), median_ms=round(1e3 * float(np.median(own)), 4),
                             speedup_median=round(speedup, 3),
                             speedup_min=round(float(dense_times.min() / own.min()), 3),
                             speedup_iqr=[round(float(q), 3) for q in np.percentile(ratios, [25, 75])],
                             speedup_over_flop_reduction=round(speedup / flop_reduction, 3),
                             export_max_difference=difference))
            print(f"resnet b{batch:<3d} {label:34s} FLOPs /{flop_reduction:.2f}  x{speedup:.2f} "
                  f"({speedup / flop_reduction:.2f} of the FLOP reduction)", flush=True)
    return rows


def time_calls(runner, x, calls):
    detail = runner.get_input_details()[0]
    runner.set_tensor(detail["index"], x)
    runner.invoke()                                   # warm: first calls allocate and pack weights
    start = time.perf_counter()
    for _ in range(calls):
        runner.invoke()
    return (time.perf_counter() - start) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one sparsity, small images, 3 rounds")
    parser.add_argument("--skip-resnet", action="store_true", help="leave out (c), which trains three models")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sparse_inference.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 3, 5
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    runs = []
    for network, label, model, sparsity in variants(args.quick):
        report = ms.to_litert(model, threads=1)
        flatbuffer = ms.litert.convert(model)
        x = np.random.default_rng(1).normal(size=(1,) + tuple(model.inputs[0].shape[1:])).astype("float32")
        runs.append(dict(network=network, variant=label, sparsity=sparsity, bytes=report.bytes,
                         sparse_kernels=report.sparse_kernels, runtime=report.runtime,
                         kernels={row.layer: row.kernel for row in report.layers if row.stored == "sparse"},
                         runner=interpreter(flatbuffer, threads=1), x=x, times=[]))
        print(f"{network:10s} {label:22s} {report.bytes:>10,d} bytes  {report.summary()}", flush=True)
    for _ in range(args.rounds):                     # every variant once per round, in turn
        for run in runs:
            run["times"].append(time_calls(run["runner"], run["x"], args.calls))
    rows = []
    for network in dict.fromkeys(r["network"] for r in runs):
        group = [r for r in runs if r["network"] == network]
        dense = np.asarray(group[0]["times"])
        for run in group:
            times = np.asarray(run["times"])
            ratios = dense / times                    # per round: speed-up over dense in the same round
            q1, q3 = np.percentile(ratios, [25, 75])
            rows.append(dict(network=network, variant=run["variant"], sparsity=run["sparsity"], bytes=run["bytes"],
                             median_ms=round(1e3 * float(np.median(times)), 4),
                             min_ms=round(1e3 * float(times.min()), 4),
                             speedup_median=round(float(np.median(dense) / np.median(times)), 3),
                             speedup_min=round(float(dense.min() / times.min()), 3),
                             speedup_iqr=[round(float(q1), 3), round(float(q3), 3)],
                             sparse_kernels=run["sparse_kernels"], kernels=run["kernels"]))
            print(f"{network:10s} {run['variant']:22s} median {rows[-1]['median_ms']:8.3f} ms  "
                  f"x{rows[-1]['speedup_median']:.2f} (min-based x{rows[-1]['speedup_min']:.2f}, "
                  f"IQR {rows[-1]['speedup_iqr']})", flush=True)
    if not args.skip_resnet:
        rows += keras_timings(args.quick, args.rounds, args.calls)
    result = dict(description=__doc__.splitlines()[0], rounds=args.rounds, calls=args.calls, quick=args.quick,
                  machine=dict(cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                               load_average=os.getloadavg(), python=platform.python_version(),
                               keras=keras.__version__),
                  pinned_to_one_core=hasattr(os, "sched_setaffinity"), rows=rows)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
