"""Time of ``ms.analyze`` and ``ms.cost_report`` on every keras.applications model and, when keras-hub is
installed, on the keras_hub backbones of benchmarks/hub_conformance.py plus a BERT-base-sized one (12 layers,
768 wide, 128 tokens); best of a few runs.

    python benchmarks/analyze_speed.py [--models ResNet50 BertBackbone ...] [--repeats 3]

Prints one line per model and writes benchmarks/results/analyze_speed.json.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402
from conformance import application_names, build_application  # noqa: E402

import morphsparse as ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hub_names():
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        return []
    from hub_conformance import CONFIGS, SPEED_CONFIGS
    return sorted(CONFIGS) + sorted(SPEED_CONFIGS)


def build_model(name):
    if name in application_names():
        return build_application(name)
    from hub_conformance import SPEED_CONFIGS, build
    return build(name, sequence_length=128 if name in SPEED_CONFIGS else 8)[1]


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analyze_speed.json"))
    args = parser.parse_args(argv)
    rows = []
    print(f"{'model':42s} {'layers':>7s} {'analyze (s)':>12s} {'cost_report (s)':>16s}")
    names = args.models or application_names() + hub_names()
    for name in names:
        model = build_model(name)
        try:
            analyze_s = best_time(lambda: ms.analyze(model), args.repeats)
            graph = ms.analyze(model)
            report_s = best_time(lambda: ms.cost_report(graph), args.repeats)
        except ms.GraphError as err:   # a keras_hub backbone the hub conformance table lists as not analysed
            rows.append({"model": name, "error": str(err)[:200]})
            print(f"{name:42s} not analysed (see docs/hub_conformance.md)", flush=True)
            keras.backend.clear_session()
            continue
        rows.append({"model": name, "layers": len(model.layers), "layer_calls": len(graph.calls),
                     "analyze_seconds": round(analyze_s, 4),
                     "cost_report_seconds": round(report_s, 4)})
        print(f"{name:42s} {len(model.layers):7d} {analyze_s:12.4f} {report_s:16.4f}", flush=True)
        keras.backend.clear_session()
    if args.models is None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"repeats": args.repeats, "cpu_count": os.cpu_count(),
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
