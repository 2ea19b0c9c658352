"""The ``morphsparse`` command line.

    morphsparse report MODEL            # MODEL: a .keras file or a keras.applications name, e.g. ResNet50
    morphsparse report ResNet50 --input-size 64 --groups

Each subcommand is a function ``cmd_NAME(args)`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys


def load_model_arg(spec, input_size=None, classes=None):
    """A model from a ``.keras``/``.h5`` path or a keras.applications constructor name (built with weights=None)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if os.path.exists(spec):
        return keras.saving.load_model(spec, compile=False)
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
    print(graph if args.groups else graph.summary())
    print()
    print(report.table(only_costly=not args.all_layers))
    print(f"\n{report.flops:,d} FLOPs ({report.macs:,d} MACs) per example, {report.params:,d} parameters")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="morphsparse", description="Sparse and structure-learning tools for "
                                                                     "Keras 3 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    report = sub.add_parser("report", help="print the channel groups and per-layer costs of a model")
    report.add_argument("model", help="a .keras file, or a keras.applications name such as ResNet50")
    report.add_argument("--input-size", type=int, default=None, help="square input size for an application")
    report.add_argument("--classes", type=int, default=None, help="classes for an application's top")
    report.add_argument("--ignore", nargs="*", help="layers whose output channels must not be removed")
    report.add_argument("--groups", action="store_true", help="print every channel group, not just a summary")
    report.add_argument("--all-layers", action="store_true", help="list layers that cost nothing too")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # the command line prints the message, not a traceback, for expected errors
        from morphsparse.graph import GraphError

        if isinstance(err, (GraphError, ValueError, FileNotFoundError)):
            print(f"morphsparse {args.command}: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
