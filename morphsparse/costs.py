"""Exact, analytic cost counting from layer configs and static shapes.

FLOPs are 2 x multiply-accumulates (MACs) of the layers that multiply by weights: Conv1D/2D/3D, transposed and
separable convs, DepthwiseConv and Dense (per example, batch size 1). Their counts equal what TensorFlow's profiler
reports for the Conv2D, DepthwiseConv2dNative, MatMul and Conv2DBackpropInput ops of the same model; the profiler's
total also includes BatchNorm, bias-add, element-wise and pooling arithmetic, which MorphNet's cost model (and
this one) leaves out, since it is small and mostly folds away at inference time. Parameter counts include every
weight (trainable or not) and equal ``model.count_params()``.

Every function takes a model or a :class:`~morphsparse.graph.ChannelGraph` and an optional ``alive`` mapping
(group id or producer layer name -> boolean mask or integer count), so the cost of a shrunk or widened network
is known without building it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from morphsparse.checks import check_budget
from morphsparse.graph import ChannelGraph, analyze


def _graph(model_or_graph) -> ChannelGraph:
    return model_or_graph if isinstance(model_or_graph, ChannelGraph) else analyze(model_or_graph)


@dataclass
class LayerCost:
    path: str
    class_name: str
    macs: int
    params: int
    in_channels: list
    out_channels: list

    @property
    def flops(self):
        return 2 * self.macs


@dataclass
class CostReport:
    """Per-layer costs of one model (or of one shrunk/widened variant of it, when ``alive`` was given)."""

    model_name: str
    layers: list = field(default_factory=list)

    @property
    def macs(self):
        return sum(row.macs for row in self.layers)

    @property
    def flops(self):
        return 2 * self.macs

    @property
    def params(self):
        return sum(row.params for row in self.layers)

    def by_layer(self):
        return {row.path: row for row in self.layers}

    def to_dict(self):
        return {"model": self.model_name, "flops": self.flops, "macs": self.macs, "params": self.params,
                "layers": [{"layer": r.path, "class": r.class_name, "flops": r.flops, "macs": r.macs,
                            "params": r.params, "in_channels": r.in_channels, "out_channels": r.out_channels}
                           for r in self.layers]}

    def table(self, only_costly=True):
        header = f"{'layer':40s} {'class':22s} {'in ch':>8s} {'out ch':>8s} {'MFLOPs':>10s} {'params':>11s}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            if only_costly and not r.macs and not r.params:
                continue
            ins = "+".join(str(c) for c in r.in_channels) or "-"
            outs = "+".join(str(c) for c in r.out_channels) or "-"
            lines.append(f"{r.path[:40]:40s} {r.class_name[:22]:22s} {ins[:8]:>8s} {outs[:8]:>8s} "
                         f"{r.flops / 1e6:10.3f} {r.params:11,d}")
        lines.append("-" * len(header))
        lines.append(f"{'total':40s} {'':22s} {'':8s} {'':8s} {self.flops / 1e6:10.3f} {self.params:11,d}")
        return "\n".join(lines)

    def __str__(self):
        return f"CostReport '{self.model_name}': {self.flops:,d} FLOPs ({self.macs:,d} MACs), {self.params:,d} params"


def cost_report(model_or_graph, alive=None) -> CostReport:
    """Per-layer MACs, FLOPs and parameters (see the module docstring for what is counted).

    ``alive``: group id (or producer layer name) -> boolean mask of the group's channels, or an integer
    count of alive channels (counts may exceed the group's current size, to price a widened network).
    """
    graph = _graph(model_or_graph)
    report = CostReport(graph.model.name)
    for call, macs, params, alive_in, alive_out in graph.call_costs(alive):
        report.layers.append(LayerCost(call.path, type(call.layer).__name__, macs, params, alive_in, alive_out))
    return report


def count_macs(model_or_graph, alive=None) -> int:
    """Multiply-accumulates of one forward pass of one example."""
    return cost_report(model_or_graph, alive).macs


def count_flops(model_or_graph, alive=None) -> int:
    """FLOPs (2 x MACs) of one forward pass of one example."""
    return cost_report(model_or_graph, alive).flops


def count_params(model_or_graph, alive=None) -> int:
    """Parameters (trainable and not); with ``alive=None`` this equals ``model.count_params()``."""
    return cost_report(model_or_graph, alive).params


# --- budgets ------------------------------------------------------------------------------------------------
# Every structural tool (MorphRegularizer, prune, expand/resize) takes its budget the same way: a fraction
# (0 < b <= 1) of a model's cost, or an absolute count (> 1) in the target's unit.

#: the targets a structural tool prices by counting the network (MorphRegularizer adds those it prices
#: itself: ``morphsparse.morph.regularizers.TARGETS``)
BUDGET_TARGETS = {"flops": count_flops, "size": count_params}


def check_target(target, allowed=tuple(BUDGET_TARGETS), error=ValueError):
    """``target`` when it is one of ``allowed``, else ``error`` naming it and the choices."""
    if not isinstance(target, str) or target not in allowed:
        raise error(f"unknown target {target!r}; use one of {tuple(allowed)}")
    return target


def resolve_budget(budget, target, model_or_graph, reference=None, value_error=ValueError, type_error=TypeError):
    """The absolute budget in ``target`` units ("flops" or "size"): ``budget`` itself when > 1, else that
    fraction of the cost of ``reference`` (a model or channel graph; default ``model_or_graph``)."""
    value = check_budget(budget, value_error, type_error)
    check_target(target, error=value_error)
    if value > 1:
        if reference is not None:
            raise value_error(f"reference= prices a fractional budget (0 < budget <= 1); budget={budget!r} is "
                              f"already an absolute number of {'FLOPs' if target == 'flops' else 'parameters'}")
        return value
    base = model_or_graph if reference is None else reference
    if not isinstance(base, (ChannelGraph, keras.Model)):
        raise type_error(f"reference must be a keras.Model (the model whose cost the fraction is of), got "
                         f"{type(base).__name__}")
    return value * BUDGET_TARGETS[target](base)


#: how ``ms.prune`` and ``MorphRegularizer`` charge a channel when choosing which to remove: its marginal cost
#: to this power. 1 is importance per unit of cost (MorphNet's exact marginal cost: the expensive
#: high-resolution layers are thinned first), 0 is importance alone (Torch-Pruning's global ranking); the
#: budget is met either way. The default is what benchmarks/structure_quality.py found best on its zoo.
DEFAULT_COST_POWER = 0.5
