"""Structure files: which channels of a model are alive, as JSON keyed by layer name.

``save_structure(model, path)`` can be called at any step of training (or on an exported model): it reads
the alive masks from the weights (or takes them) and writes, for every layer that creates channels, its alive
count and the indices of its kept output channels, plus the same per channel group::

    {"format": "morphsparse.structure/1", "model": "resnet_like", "source": "gamma", "threshold": 0.01,
     "layers": {"stem": {"channels": 16, "alive": 14, "kept": [0, 2, 4, ...], "group": 1}, ...},
     "groups": [{"id": 1, "size": 16, "alive": 14, "kept": [...], "producers": ["stem", "b"]}, ...],
     "flops": ..., "alive_flops": ..., "params": ..., "alive_params": ...}

``load_structure(path)`` returns the dict; :func:`masks_from_structure` turns it back into alive masks for a
model with the same layer names (for ``ms.export(model, alive=...)`` or ``ms.cost_report``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morphsparse.costs import count_flops, count_params
from morphsparse.graph import ChannelGraph, analyze
from morphsparse.morph import alive as _alive

FORMAT = "morphsparse.structure/1"


def structure_of(model_or_graph, source="gamma", threshold=_alive.DEFAULT_THRESHOLD, l1_fraction=0.0,
                 alive=None):
    """The structure dict of a model: alive masks from its weights (``source``/``threshold``) or ``alive``
    (group id or producer layer name -> boolean mask)."""
    graph = model_or_graph if isinstance(model_or_graph, ChannelGraph) else analyze(model_or_graph)
    if alive is None:
        masks = _alive.alive_masks(graph, source, threshold, l1_fraction)
    else:
        masks = {g.id: np.ones(g.size, bool) for g in graph.groups}
        for key, value in alive.items():
            masks[graph._resolve_group(key).id] = np.asarray(value, bool)
    layers, groups = {}, []
    for group in graph.groups:
        mask = masks[group.id]
        groups.append({"id": group.id, "size": group.size, "alive": int(mask.sum()),
                       "kept": np.flatnonzero(mask).tolist(), "removable": group.removable,
                       "producers": list(group.producers)})
        for producer in group.producers:
            kept = mask[group.producer_channels[producer]]
            layers[producer] = {"channels": int(kept.size), "alive": int(kept.sum()),
                                "kept": np.flatnonzero(kept).tolist(), "group": group.id}
    return {"format": FORMAT, "model": graph.model.name, "source": None if alive is not None else source,
            "threshold": None if alive is not None else threshold, "layers": layers, "groups": groups,
            "flops": count_flops(graph), "alive_flops": count_flops(graph, alive=masks),
            "params": count_params(graph), "alive_params": count_params(graph, alive=masks)}


def save_structure(model_or_graph, path, source="gamma", threshold=_alive.DEFAULT_THRESHOLD, l1_fraction=0.0,
                   alive=None):
    """Write :func:`structure_of` as JSON to ``path``; returns the dict."""
    structure = structure_of(model_or_graph, source, threshold, l1_fraction, alive)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(structure, indent=1) + "\n")
    return structure


def load_structure(path):
    """Read a structure file written by :func:`save_structure`."""
    structure = json.loads(Path(path).read_text())
    if not isinstance(structure, dict) or structure.get("format") != FORMAT or "layers" not in structure:
        raise ValueError(f"{path} is not a morphsparse structure file (expected format {FORMAT!r})")
    return structure


def masks_from_structure(model_or_graph, structure):
    """Alive masks (group id -> boolean mask) for a model, from a structure dict's per-layer kept indices.

    A group with several producers is alive where any of them keeps the channel. Raises ValueError when a
    layer of the structure is missing from the model or has another width."""
    graph = model_or_graph if isinstance(model_or_graph, ChannelGraph) else analyze(model_or_graph)
    masks = {g.id: np.zeros(g.size, bool) for g in graph.groups}
    covered = set()
    for name, entry in structure["layers"].items():
        try:
            group = graph.group_of(name)
        except KeyError:
            raise ValueError(f"structure names layer '{name}', which model '{graph.model.name}' does not "
                             "have") from None
        channels = group.producer_channels.get(name)
        if channels is None:
            channels = next(c for p, c in group.producer_channels.items() if p.split("/")[-1] == name)
        if len(channels) != entry["channels"]:
            raise ValueError(f"layer '{name}' has {len(channels)} channels in the model but {entry['channels']} "
                             "in the structure")
        masks[group.id][channels[np.asarray(entry["kept"], dtype=np.int64)]] = True
        covered.add(group.id)
    for group in graph.groups:
        if group.id not in covered or not group.removable:
            masks[group.id][:] = True
    return masks


__all__ = ["structure_of", "save_structure", "load_structure", "masks_from_structure", "FORMAT"]
