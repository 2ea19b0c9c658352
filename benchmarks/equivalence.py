"""Export equivalence on all 40 keras.applications models.

For each model (weights=None, the conformance input size, 10 classes): give every BatchNorm random
statistics and every bias a random value (so constants are not trivially zero), then kill channels the way a
trained MorphNet model has them dead -- gamma and beta zero behind every source of the group (models with no
BatchNorm: the kernel slices and biases of the group's producers, group-lasso style):

* whole residual branches (every channel group produced only inside the branch of an Add),
* whole concat towers (every group produced only inside one input of a Concatenate),
* a random part of other groups;

export, and compare the slim model with the original on random inputs in inference mode: equal when the
max abs difference is <= 1e-4 x the output scale. The analytic FLOPs of the slim model must equal
``count_flops(original, alive=alive_masks(original))``, what a regulariser reports as alive FLOPs.
Writes benchmarks/results/equivalence.json and docs/equivalence.md.

    python benchmarks/equivalence.py [--models ResNet50 MobileNetV2 ...] [--update]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import morphsparse as ms  # noqa: E402
import morphsparse.handlers  # noqa: E402,F401
from conformance import application_names, build_application  # noqa: E402
from morphsparse.morph import alive as alive_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
#: killed channels are exactly zero; untrained kernels have group-lasso norms near 1e-2, so the default
#: threshold would also call some untouched channels dead (and export would rightly change the output)
THRESHOLD = 1e-6
#: layers that normalise across channels: removing a constant channel changes their statistics, so export
#: keeps such channels and this benchmark does not kill them (docs/export_and_expand.md)
CHANNEL_MIXERS = (keras.layers.LayerNormalization, keras.layers.GroupNormalization,
                  keras.layers.UnitNormalization, keras.layers.Softmax)


def randomize(model, rng):
    """Random BatchNorm statistics and biases, as after training."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
        elif isinstance(layer, keras.layers.LayerNormalization) or type(layer).__name__ == "LayerScale":
            # ConvNeXt's LayerScale starts at 1e-6, which would hide every branch below float32 precision
            for variable in (getattr(layer, "gamma", None), getattr(layer, "beta", None)):
                if variable is not None:
                    variable.assign(rng.uniform(0.5, 1.5, tuple(variable.shape)).astype("float32"))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, tuple(layer.bias.shape)).astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


class KillPlanner:
    """Chooses channel groups to kill: whole branches of Adds, whole towers of Concatenates, random others."""

    def __init__(self, graph, source, rng):
        self.graph, self.rng = graph, rng
        self.sources = alive_mod.find_sources(graph, source)
        mixers = {c.path for c in graph.calls if isinstance(c.layer, CHANNEL_MIXERS)}
        voting = {s.producer.path for s in self.sources}
        # a group dies only when every producer's output is silenced; a producer the source cannot silence
        # (no BatchNorm of its own) is fine only as a multiplicative gate (squeeze-excite: 0 * gate = 0),
        # otherwise export would rightly keep the channel
        gates = {c.path for k, c in enumerate(graph.calls) if c.path not in voting and self._only_gates(k)}
        self.killable = {s.group for s in self.sources
                         if graph.groups[s.group].removable and not mixers & set(graph.groups[s.group].layers)
                         and set(graph.groups[s.group].producers) <= voting | gates}
        self._ancestors = {}

    def _only_gates(self, k):
        """True when call k's output reaches a two-tensor Multiply through single element-wise layers."""
        for call in self.graph.chain(k):
            if len(call.input_keys) >= 2:
                return type(call.layer).__name__ == "Multiply"
        return False

    def ancestors(self, key):
        """Indices of the calls a tensor depends on."""
        stack, seen = [key], set()
        while stack:
            call = self.graph.producer(stack.pop())
            if call.index in seen:
                continue
            seen.add(call.index)
            stack.extend(call.input_keys)
        return seen

    def exclusive_groups(self, k, position):
        """Killable groups produced and used only inside input ``position`` of call k."""
        keys = self.graph.inputs_of(k)
        mine = self.ancestors(keys[position])
        others = set().union(*[self.ancestors(key) for i, key in enumerate(keys) if i != position])
        inside = {self.graph.calls[c].path for c in mine - others}
        return [gid for gid in self.killable if set(self.graph.groups[gid].layers) <= inside]

    def plan(self, branches=2, towers=2, random_fraction=0.3):
        graph, rng = self.graph, self.rng
        kills, notes = {}, {"branches": 0, "towers": 0}
        # residual adds: keras.layers.Add or an ``x + branch`` keras.ops add (ConvNeXt)
        merges = [k for k, c in enumerate(graph.calls) if type(c.layer).__name__ == "Add"
                  and len(c.input_keys) >= 2]
        concats = [k for k, c in enumerate(graph.calls) if isinstance(c.layer, keras.layers.Concatenate)]
        for pool, count, label in ((merges, branches, "branches"), (concats, towers, "towers")):
            for k in rng.permutation(pool).tolist():
                if notes[label] >= count:
                    break
                for position in rng.permutation(len(graph.inputs_of(k))).tolist():
                    groups = [g for g in self.exclusive_groups(k, position) if g not in kills]
                    if groups:
                        for gid in groups:
                            kills[gid] = np.zeros(graph.groups[gid].size, bool)
                        notes[label] += 1
                        break
        for gid in sorted(self.killable - set(kills)):
            size = graph.groups[gid].size
            if size > 1 and rng.random() < random_fraction:
                mask = np.ones(size, bool)
                mask[rng.choice(size, size=max(1, int(size * rng.uniform(0.25, 0.5))), replace=False)] = False
                kills[gid] = mask
        return kills, notes

    def apply(self, kills):
        """Zero what the regulariser would have zeroed for the dead channels."""
        for src in self.sources:
            mask = kills.get(src.group)
            if mask is None:
                continue
            dead = ~mask[src.channels]
            layer = src.layer.layer
            if src.kind == "gamma":
                for variable in (layer.gamma, layer.beta if layer.center else None):
                    if variable is not None:
                        value = keras.ops.convert_to_numpy(variable)
                        value[dead] = 0.0
                        variable.assign(value)
                continue
            follower = alive_mod.following_batch_norm(self.graph, src.producer, with_scale=False)
            if follower is not None:   # its beta and mean would be the constant left behind
                bn = follower.layer
                for variable in (bn.beta if bn.center else None, bn.moving_mean):
                    if variable is not None:
                        value = keras.ops.convert_to_numpy(variable)
                        value[dead] = 0.0
                        variable.assign(value)
            kernel = src.producer.handler.kernel_matrix(src.producer).copy()
            kernel[:, dead] = 0.0
            _assign_kernel_matrix(src.producer, kernel)
            if getattr(layer, "use_bias", False) and layer.bias is not None:
                bias = keras.ops.convert_to_numpy(layer.bias)
                bias[dead] = 0.0
                layer.bias.assign(bias)


def _assign_kernel_matrix(call, matrix):
    layer = call.layer
    variable = {"SeparableConv": "pointwise_kernel", "Embedding": "embeddings"}.get(
        type(call.handler).__name__, "kernel")
    variable = getattr(layer, variable)
    shape = tuple(variable.shape)
    if type(call.handler).__name__ == "ConvTranspose":
        moved = shape[:-2] + (shape[-1], shape[-2])
        variable.assign(np.moveaxis(matrix.reshape(moved), -1, -2))
    else:
        variable.assign(matrix.reshape(shape))


def check_model(name, seed=0):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = build_application(name)
    randomize(model, rng)
    graph = ms.analyze(model)
    # gamma where BatchNorms have a scale; else group lasso (VGG, ConvNeXt, and InceptionV3's scale-free BNs)
    source = "gamma" if ms.find_sources(graph, "gamma") else "group_lasso"
    planner = KillPlanner(graph, source, rng)
    kills, notes = planner.plan()
    planner.apply(kills)
    masks = ms.alive_masks(graph, source=source, threshold=THRESHOLD)
    start = time.perf_counter()
    slim, report = ms.export_with_report(model, source=source, threshold=THRESHOLD)
    export_seconds = time.perf_counter() - start
    x = rng.normal(size=(4,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    want = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(slim(x, training=False))
    scale = float(np.abs(want).max()) or 1.0
    diff = float(np.abs(want - got).max())
    # how much the original itself moves when its input moves by one part in a million: a deep network with
    # random statistics can amplify float32 rounding until no tolerance is meaningful
    nudged = keras.ops.convert_to_numpy(model(x * (1 + 1e-6), training=False))
    sensitivity = float(np.abs(want - nudged).max()) / scale
    # what a regulariser reports as alive FLOPs, less the layers export drops because nothing surviving
    # reads them (they are counted by channel-group masks alone)
    regularised = regulariser_prices_exactly(model, source, graph)
    expanded = expands_within_budget(slim, report.flops_before)
    by_layer = ms.cost_report(graph, alive=masks).by_layer()
    dead_end_flops = sum(by_layer[path].flops for path in set(report.dead_ends))
    flops_alive = ms.count_flops(graph, alive=masks) - dead_end_flops
    row = {"model": name, "source": source, "input": list(model.inputs[0].shape[1:]),
           "killed_groups": len(kills), "dead_groups": sum(not m.any() for m in masks.values()),
           "whole_branches": notes["branches"], "whole_towers": notes["towers"],
           "removed_layers": len(report.removed_layers), "kept_for_exactness": len(report.kept),
           "inexact_folds": len(report.inexact), "flops": report.flops_before, "flops_slim": report.flops_after,
           "flops_alive": flops_alive, "dead_end_flops": dead_end_flops,
           "flops_match": report.flops_after == flops_alive,
           "params": report.params_before, "params_slim": report.params_after,
           "max_abs_diff": diff, "output_scale": scale, "relative_diff": diff / scale,
           "sensitivity_1e-6": sensitivity,
           "equal": diff <= TOLERANCE * scale, "export_seconds": round(export_seconds, 3),
           "regulariser_exact": regularised, "expand_multiplier": expanded[0], "expand_within_budget": expanded[1]}
    keras.backend.clear_session()
    return row


def regulariser_prices_exactly(model, source, graph):
    """True when a FLOP MorphRegularizer builds on the model and its in-graph alive FLOPs and parameters (what
    fit logs) equal count_flops / count_params of the same threshold masks (before the propagation that also
    drops layers starved of input, which the in-graph count does not see)."""
    reg = ms.MorphRegularizer(model, target="flops", source=source, threshold=THRESHOLD)
    masks = ms.alive_masks(graph, source=source, threshold=THRESHOLD, propagate=False)
    loss, flops, params = reg._loss_and_costs()
    return bool(np.isfinite(float(loss)) and int(round(float(flops))) == ms.count_flops(reg.graph, alive=masks)
                and int(round(float(params))) == ms.count_params(reg.graph, alive=masks))


def expands_within_budget(slim, budget):
    """(width multiplier, cost <= budget) of expanding the slim model back to the original's FLOPs."""
    wide, report = ms.expand_with_report(slim, budget=budget)
    cost = ms.count_flops(wide)
    return round(report.multiplier, 4), bool(cost == report.cost_after <= budget)


def write_markdown(rows, path):
    lines = ["# Export equivalence: keras.applications", "",
             "Generated by `python benchmarks/equivalence.py` (do not edit by hand). Each model is built with "
             "`weights=None`, random BatchNorm statistics and biases; whole residual branches, whole concat "
             "towers and random parts of other channel groups are killed (gamma and beta zero, or kernel "
             "slices and biases zero for models without BatchNorm), the model is exported, and outputs are "
             "compared on random inputs in inference mode. *equal*: max abs difference <= 1e-4 x output scale. "
             "*FLOPs match*: the slim model's analytic FLOPs equal `count_flops(model, alive=alive_masks(model))` "
             "less the FLOPs of *dead-end* layers (alive channels whose only readers died, e.g. the depthwise "
             "conv opening a ConvNeXt branch whose MLP died; export drops them, group masks cannot say so). "
             "*Original's sensitivity*: the relative change of the original model's output when its input is "
             "scaled by 1 + 1e-6; where it is large, float32 rounding alone moves the output that much. "
             "*Regulariser exact*: a FLOP-targeted `MorphRegularizer` builds on the model and the alive FLOPs "
             "and parameters it logs in `fit` equal `count_flops` / `count_params` of the same masks. "
             "*Expand*: the width multiplier that grows the slim model back to the original's FLOPs, and "
             "whether the expanded model's exact FLOPs stay within that budget.",
             "", "| model | source | killed groups | branches | towers | removed layers | MFLOPs | slim MFLOPs | "
             "FLOPs match | rel. diff | equal | original's sensitivity | regulariser exact | expand | "
             "export (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | | | | | error: {r['error'][:90]} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['source']} | {r['killed_groups']} | {r['whole_branches']} | "
                     f"{r['whole_towers']} | {r['removed_layers']} | {r['flops'] / 1e6:.2f} | "
                     f"{r['flops_slim'] / 1e6:.2f} | {'yes' if r['flops_match'] else 'NO'} | "
                     f"{r['relative_diff']:.1e} | {'yes' if r['equal'] else 'NO'} | {r.get('sensitivity_1e-6', 0):.1e} | "
                     f"{'yes' if r['regulariser_exact'] else 'NO'} | x{r['expand_multiplier']:.3f} "
                     f"{'within' if r['expand_within_budget'] else 'OVER'} | {r['export_seconds']:.2f} |")
    ok = [r for r in rows if "error" not in r]
    lines += ["", f"{sum(r['equal'] for r in ok)}/{len(rows)} equal, FLOPs match for "
              f"{sum(r['flops_match'] for r in ok)}/{len(rows)}, regulariser exact for "
              f"{sum(r['regulariser_exact'] for r in ok)}/{len(rows)}, expanded within budget for "
              f"{sum(r['expand_within_budget'] for r in ok)}/{len(rows)}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "equivalence.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "equivalence.md"))
    parser.add_argument("--update", action="store_true",
                        help="re-run only --models and replace their rows in the existing JSON and table")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models or application_names():
        try:
            row = check_model(name)
        except Exception as err:  # a table of failures is more useful than the first traceback
            row = {"model": name, "error": f"{type(err).__name__}: {err}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.update:
        fresh = {row["model"]: row for row in rows}
        rows = [fresh.pop(row["model"], row) for row in json.loads(Path(args.out).read_text())]
        rows += list(fresh.values())
    if args.models is None or args.update:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
        write_markdown(rows, Path(args.markdown))
    failed = [r["model"] for r in rows if "error" in r or not all(
        r[key] for key in ("equal", "flops_match", "regulariser_exact", "expand_within_budget"))]
    print(f"{len(rows) - len(failed)}/{len(rows)} equivalent" + (f"; not: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
