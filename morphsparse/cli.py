"""The ``morphsparse`` command line.

    morphsparse report MODEL            # MODEL: a .keras file or a keras.applications name, e.g. ResNet50
    morphsparse report ResNet50 --input-size 64 --groups
    morphsparse export MODEL.keras -o slim.keras --structure s.json [--source gamma --threshold 0.01]
    morphsparse expand SLIM.keras --like ORIGINAL.keras -o wide.keras [--round-to 8]   # or --budget-flops N
                                                                   # or --budget-params N (implies --target size)
    morphsparse prune TRAINED.keras -o slim.keras --budget 0.5 [--target size --importance l1]
    morphsparse profile-latency MODEL -o table.json [--backend litert --batch-size 32 --threads 1]
    morphsparse prune TRAINED.keras -o slim.keras --budget 0.5 --target latency --latency-table table.json
    morphsparse expand SLIM.keras -o wide.keras --budget-latency 0.8 --latency-table table.json
    morphsparse sparsity SPARSE.keras                # per-kernel sparsity and FLOPs dense vs sparse
    morphsparse to-litert MODEL.keras -o model.tflite [--dense] [--quantize float16]

Each subcommand is a function ``cmd_NAME(args)`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from morphsparse.costs import BUDGET_TARGETS
from morphsparse.morph.calibration import CALIBRATION_IMPORTANCES


def positive_int(text):
    """argparse type of a count or size (``--input-size``, ``--classes``): a whole number >= 1. A 0 would be
    taken as "not given" and a negative size fail deep inside Keras."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def load_model_arg(spec, input_size=None, classes=None, compile=False):
    """A model from a ``.keras``/``.h5`` path or a keras.applications constructor name (built with weights=None).
    ``compile``: also restore a saved file's optimizer (``sparsity`` reads a SparseOptimizer's masks)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if os.path.exists(spec):
        # compile=False by default: the architecture and weights are what most commands read; a training
        # checkpoint's optimizer (e.g. morphsparse's SparseOptimizer) is not needed for that.
        try:
            return keras.saving.load_model(spec, compile=compile)
        except Exception as err:  # noqa: BLE001 - any failure to read the file is reported in one line
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if len(message) > 300:
                message = message[:300] + "..."
            raise SystemExit(f"morphsparse: cannot load {spec}: {type(err).__name__}: {message}") from None
    constructor = getattr(keras.applications, spec, None)
    if constructor is None or not callable(constructor) or not spec[:1].isupper():
        raise SystemExit(f"morphsparse: '{spec}' is neither a model file nor a keras.applications constructor "
                         "(e.g. ResNet50, MobileNetV2)")
    kwargs = {"weights": None}
    if input_size:
        kwargs["input_shape"] = (input_size, input_size, 3)
    if classes:
        kwargs["classes"] = classes
    return constructor(**kwargs)


def cmd_report(args):
    import morphsparse as ms

    model = load_model_arg(args.model, args.input_size, args.classes)
    graph = ms.analyze(model, ignore=args.ignore or ())
    report = ms.cost_report(graph)
    print(graph if args.groups else graph.summary(), report.table(only_costly=not args.all_layers), sep="\n\n")
    print(f"\n{report.flops:,d} FLOPs ({report.macs:,d} MACs) per example, {report.params:,d} parameters")
    zeros, size = _kernel_zeros(model)
    if size and zeros / size >= SPARSE_NOTE:
        print(f"{zeros / size:.1%} of the kernel weights are exact zeros: the counts above are dense; "
              f"`morphsparse sparsity {args.model}` gives the sparse ones")
    return 0


#: ``report`` points to ``sparsity`` when at least this fraction of the kernel weights are exact zeros
SPARSE_NOTE = 0.2


def _kernel_zeros(model):
    """(exact zeros, size) over the model's trainable weights of rank >= 2 (its kernels)."""
    import numpy as np

    zeros = size = 0
    for weight in model.trainable_weights:
        if len(weight.shape) >= 2:
            values = np.asarray(weight)
            zeros, size = zeros + int(values.size - np.count_nonzero(values)), size + int(values.size)
    return zeros, size


def cmd_sparsity(args):
    import numpy as np

    import morphsparse as ms
    from morphsparse.sparse.optimizer import find_sparse_optimizer

    model = load_model_arg(args.model, compile=True)
    if find_sparse_optimizer(model, required=False) is not None:
        print(ms.sparsity_report(model))
        return 0
    # a stripped model (ms.strip) or one trained elsewhere: no masks, only the zeros in its kernels
    print(f"{args.model} has no SparseOptimizer (masks); zeros of its kernels:")
    for weight in model.trainable_weights:
        if len(weight.shape) >= 2:
            values = np.asarray(weight)
            print(f"  {weight.path:48s} {'x'.join(map(str, weight.shape)):>14s} "
                  f"{1 - values.astype(bool).mean():8.2%} zeros")
    zeros, size = _kernel_zeros(model)
    print(f"total: {zeros:,d} of {size:,d} kernel weights are zeros ({zeros / max(size, 1):.2%})")
    return 0


def cmd_prune(args):
    import morphsparse as ms

    model = load_model_arg(args.model, args.input_size, args.classes)
    floor = {} if args.min_width is None else {"min_width": args.min_width}
    if args.land and not (args.target == "latency" and args.latency_table and 0 < args.budget <= 1):
        raise SystemExit("--land times the pruned model on this machine against a latency budget: give --target "
                         "latency, a --latency-table profiled here and --budget as a fraction in (0, 1]")
    device = _latency_device(args)
    data = _calibration_inputs(args.calibration, args.importance)
    options = dict(importance=args.importance, data=data, ignore=args.ignore or (), **floor)
    if args.land:
        slim, landing = ms.land_latency(model, args.budget, device, "prune", rounds=args.land, **options)
        print(landing.summary())
    else:
        slim, report = ms.prune_with_report(model, budget=args.budget, target=args.target, device=device, **options)
        print(report.table(), report.summary(), sep="\n\n")
    slim.save(args.output)
    print(f"pruned model written to {args.output} (fine-tune it: its BatchNorm statistics are the seed's)")
    return 0


def _calibration_inputs(path, importance):
    """The model's inputs from a .npy file (one input) or .npz file (one array per input, by input name), for
    the calibration importances; None without a path."""
    if path is None:
        if importance in CALIBRATION_IMPORTANCES:
            raise SystemExit(f"--importance {importance} measures activations: give --calibration INPUTS.npy "
                             "(or .npz with one array per input name)")
        return None
    if importance not in CALIBRATION_IMPORTANCES:
        raise SystemExit(f"--calibration is used by --importance wanda or flap only, not {importance}")
    import numpy as np

    try:
        loaded = np.load(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--calibration {path}: cannot read it as .npy or .npz ({err})") from None
    return loaded if isinstance(loaded, np.ndarray) else {name: loaded[name] for name in loaded.files}


def _latency_device(args):
    """What prices target latency: the --latency-table (loaded and checked), else the roofline, said aloud."""
    if args.target != "latency":
        if getattr(args, "latency_table", None):
            print(f"note: --latency-table is ignored: the target is {args.target}", file=sys.stderr)
        return None
    if not args.latency_table:
        print("note: no --latency-table: latency is priced by the roofline of a V100's data sheet, not measured; "
              "make a table with `morphsparse profile-latency MODEL -o table.json`", file=sys.stderr)
        return None
    from morphsparse.latency import LatencyTable

    table = LatencyTable.load(args.latency_table)
    print(f"latency priced by the {table.describe()} from {args.latency_table}")
    return table


def cmd_profile_latency(args):
    import morphsparse as ms

    model = load_model_arg(args.model, args.input_size, args.classes)
    table = ms.profile_latency(model, backend=args.backend, batch_size=args.batch_size, threads=args.threads,
                               points=args.points, repeats=args.repeats, refresh=args.refresh)
    table.save(args.output)
    print(f"{table.describe()}: {ms.predict_latency(model, table) * 1e3:.3f} ms predicted for {model.name} "
          f"(overhead {table.overhead * 1e3:.3f} ms); written to {args.output}")
    return 0


def cmd_to_litert(args):
    import morphsparse as ms

    model = load_model_arg(args.model, args.input_size, args.classes)
    report = ms.to_litert(model, args.output, sparse=not args.dense, quantize=args.quantize)
    print(report.table(), report.summary(), sep="\n\n")
    return 0


def _print_costs(label, model):
    import morphsparse as ms

    report = ms.cost_report(model)
    print(f"{label}: {report.flops:,d} FLOPs, {report.params:,d} parameters")


def cmd_export(args):
    import morphsparse as ms

    model = load_model_arg(args.model, args.input_size, args.classes)
    slim, report = ms.export_with_report(model, source=args.source, threshold=args.threshold,
                                         l1_fraction=args.l1_fraction, exact=args.exact, ignore=args.ignore or ())
    print(report.table(), report.summary(), sep="\n\n")
    for path, count, reason in report.inexact:
        print(f"  inexact at the border: {path}: {count} channel(s), {reason}")
    if report.kept:
        print(f"  {len(report.kept)} dead channel(s) kept, e.g. {report.kept[0][2]}")
    if args.structure:
        ms.save_structure(model, args.structure, source=args.source, threshold=args.threshold,
                          l1_fraction=args.l1_fraction, alive=report.effective_masks)
        print(f"structure written to {args.structure}")
    slim.save(args.output)
    print(f"slim model written to {args.output}")
    return 0


def cmd_expand(args):
    import morphsparse as ms

    slim = load_model_arg(args.model)
    budget, reference = args.budget, None
    if budget is None:   # _check_expand_args made sure --like is there
        if args.target == "latency":     # a latency budget is a fraction of the reference's prediction
            reference, budget = load_model_arg(args.like), 1.0
        else:
            budget = BUDGET_TARGETS[args.target](load_model_arg(args.like))
    wide, report = ms.expand_with_report(slim, budget=budget, target=args.target, round_to=args.round_to,
                                         ignore=args.ignore or (), reference=reference,
                                         device=_latency_device(args))
    print(report.table(), end="\n\n")
    _print_costs("before", slim)
    _print_costs("after ", wide)
    print(report.summary())
    wide.save(args.output)
    print(f"expanded (freshly initialised) model written to {args.output}")
    return 0


APPLICATION = "a .keras file, or a keras.applications name"


def _subcommand(sub, name, func, help, model=APPLICATION, output=None, application=True):
    """A subcommand that runs ``func``: its MODEL argument, ``-o/--output`` (with ``output``'s help) when it
    writes a file, and the options that build a keras.applications model by name when it can take one."""
    parser = sub.add_parser(name, help=help)
    parser.set_defaults(func=func)
    parser.add_argument("model", help=model)
    if output:
        parser.add_argument("-o", "--output", required=True, help=output)
    if application:
        parser.add_argument("--input-size", type=positive_int, default=None,
                            help="square input size for an application")
        parser.add_argument("--classes", type=positive_int, default=None, help="classes for an application's top")
    return parser


def build_parser():
    parser = argparse.ArgumentParser(prog="morphsparse", description="Sparse and structure-learning tools for "
                                                                     "Keras 3 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    report = _subcommand(sub, "report", cmd_report, "print the channel groups and per-layer costs of a model",
                         f"{APPLICATION} such as ResNet50")
    report.add_argument("--ignore", nargs="*", help="layers whose output channels must not be removed")
    report.add_argument("--groups", action="store_true", help="print every channel group, not just a summary")
    report.add_argument("--all-layers", action="store_true", help="list layers that cost nothing too")

    export = _subcommand(sub, "export", cmd_export, "remove dead channels (and dead branches/towers) into a slim "
                         "model", f"{APPLICATION} such as ResNet50", "where to save the slim .keras model")
    export.add_argument("--structure", default=None, help="also write the structure JSON here")
    export.add_argument("--source", choices=("gamma", "group_lasso", "zeros"), default="gamma",
                        help="what decides a channel is dead: BatchNorm gamma, the kernel's group-lasso norm, or "
                             "all-zero incoming weights (after sparse training)")
    export.add_argument("--threshold", type=float, default=None,
                        help="dead below this value (default 0.01; source zeros takes none)")
    export.add_argument("--l1-fraction", type=float, default=0.0, help="group lasso: share of the L1 term")
    export.add_argument("--exact", action="store_true",
                        help="keep dead channels whose constant would be folded through a padded spatial conv")
    export.add_argument("--ignore", nargs="*", help="layers whose output channels must not be removed")

    expand = _subcommand(sub, "expand", cmd_expand, "widen a (slim) model by one width multiplier up to a budget",
                         "the .keras model to widen, usually a slim one", "where to save the widened .keras model",
                         application=False)
    expand.add_argument("--like", default=None, help="take the budget from this model's cost (e.g. the original)")
    budget = expand.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, default=None, help="FLOP budget (implies --target flops)")
    budget.add_argument("--budget-params", type=float, default=None, help="parameter budget (implies --target size)")
    budget.add_argument("--budget-latency", type=float, default=None,
                        help="latency budget, a fraction of the model's (or --like's) predicted latency (implies "
                             "--target latency)")
    expand.add_argument("--latency-table", default=None,
                        help="a latency table JSON (profile-latency) pricing --target latency; else the roofline")
    expand.add_argument("--target", choices=tuple(BUDGET_TARGETS) + ("latency",), default=None,
                        help="what the budget counts (default: what the --budget-* flag says, else flops)")
    expand.add_argument("--round-to", type=int, default=None, help="round every width to a multiple (e.g. 8)")
    expand.add_argument("--ignore", nargs="*", help="layers whose output width must not change")
    expand.set_defaults(check=functools.partial(_check_expand_args, error=expand.error))

    _subcommand(sub, "sparsity", cmd_sparsity, "per-kernel sparsity and FLOPs (dense vs sparse) of a sparse model",
                "a .keras file saved from a model trained with ms.sparse_optimizer (or any model: its kernels' "
                "zeros)", application=False)

    prune = _subcommand(sub, "prune", cmd_prune, "prune a trained model's channels to a budget (no data needed)",
                        "a trained .keras file, or a keras.applications name", "where to save the pruned .keras model")
    prune.add_argument("--budget", type=float, required=True,
                       help="a fraction of the model's cost in (0, 1], or an absolute count > 1")
    prune.add_argument("--target", choices=tuple(BUDGET_TARGETS) + ("latency",), default="flops",
                       help="what the budget counts (latency: priced by --latency-table)")
    prune.add_argument("--latency-table", default=None,
                       help="a latency table JSON (profile-latency) pricing --target latency; else the roofline")
    prune.add_argument("--importance", choices=("gamma", "l1") + CALIBRATION_IMPORTANCES, default="gamma",
                       help="channel importance: BatchNorm |gamma|, the kernel's L1 norm, or from calibration "
                            "inputs (--calibration): Wanda-sp, FLAP with bias compensation (taylor needs labels: "
                            "use ms.prune from Python)")
    prune.add_argument("--calibration", default=None,
                       help="calibration inputs for --importance wanda/flap: a .npy array, or a .npz with one "
                            "array per model input name")
    prune.add_argument("--min-width", type=float, default=None,
                       help="every group keeps at least this fraction of its channels (default 0.2)")
    prune.add_argument("--ignore", nargs="*", help="layers whose output channels must not shrink")
    prune.add_argument("--land", type=positive_int, nargs="?", const=4, default=None, metavar="ROUNDS",
                       help="with --target latency: time the pruned model against the model on this machine and "
                            "prune again until the measured latency is within 3%% of the budget, at most ROUNDS "
                            "times (default 4; ms.land_latency)")

    profile = _subcommand(sub, "profile-latency", cmd_profile_latency, "measure a latency table of a model's layers "
                          "on this machine", output="where to write the table JSON")
    profile.add_argument("--backend", choices=("keras", "litert"), default="keras")
    profile.add_argument("--batch-size", type=positive_int, default=1)
    profile.add_argument("--threads", type=positive_int, default=1)
    profile.add_argument("--points", type=positive_int, default=5, help="grid points per width axis")
    profile.add_argument("--repeats", type=positive_int, default=15, help="timing rounds")
    profile.add_argument("--refresh", action="store_true", help="measure again even if a cached table exists")

    litert = _subcommand(sub, "to-litert", cmd_to_litert, "convert to a LiteRT .tflite file (sparse kernels stored "
                         "sparse) and check it against Keras", output="where to write the .tflite file")
    litert.add_argument("--dense", action="store_true", help="store every kernel dense")
    litert.add_argument("--quantize", choices=("float16", "dynamic"), default=None,
                        help="weight quantisation (int8 needs representative data: use ms.to_litert from Python)")
    return parser


#: the budget flag of each target
BUDGET_FLAGS = {"flops": "--budget-flops", "size": "--budget-params", "latency": "--budget-latency"}


def _check_expand_args(args, error):
    """Resolve the budget: ``--budget-flops`` implies ``--target flops`` and ``--budget-params`` implies
    ``--target size``. A ``--target`` that contradicts the flag, or ``--like`` next to a budget, is refused
    with ``error`` (argparse's: usage and exit code 2): read as the other unit, a FLOP budget would build a
    model far too large without a word."""
    args.budget = None
    for target, flag in BUDGET_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if args.target not in (None, target):
            error(f"{flag} is a {target} budget but --target is {args.target}: drop --target, or give the "
                  f"budget with {BUDGET_FLAGS[args.target]}")
        if args.like:
            error(f"--like and {flag} both set the budget; give one of them")
        args.budget, args.target = value, target
    if args.budget is None and not args.like:
        error("give --like ORIGINAL.keras or a budget (--budget-flops N, --budget-params N or --budget-latency F)")
    args.target = args.target or "flops"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "check", None) is not None:
        args.check(args)      # argument combinations argparse cannot express; exits with code 2
    try:
        return args.func(args)
    except Exception as err:  # the command line prints the message, not a traceback, for expected errors
        from morphsparse.litert import LiteRTError

        # every morphsparse error is a ValueError (GraphError, PruneError, ...) or LiteRTError
        if isinstance(err, (ValueError, FileNotFoundError, LiteRTError)):
            print(f"morphsparse {args.command}: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
