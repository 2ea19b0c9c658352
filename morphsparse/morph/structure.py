"""Structure files: which channels of a model are alive, as JSON keyed by layer name.

``save_structure(model, path)`` can be called at any step of training (or on an exported model): it reads
the alive masks from the weights (or takes them) and writes, for every layer that creates channels, its alive
count and the indices of its kept output channels, plus the same per channel group::

    {"format": "morphsparse.structure/1", "model": "resnet_like", "source": "gamma", "threshold": 0.01,
     "layers": {"stem": {"channels": 16, "alive": 14, "kept": [0, 2, 4, ...], "group": 1}, ...},
     "groups": [{"id": 1, "size": 16, "alive": 14, "kept": [...], "producers": ["stem", "b"]}, ...],
     "flops": ..., "alive_flops": ..., "params": ..., "alive_params": ...}

``load_structure(path)`` returns the dict (checked, remembering its file so later errors can name it);
:func:`masks_from_structure` turns it back into alive masks for a model with the same layer names (for
``ms.export(model, alive=...)`` or ``ms.cost_report``).
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np

from morphsparse.costs import count_flops, count_params
from morphsparse.graph import ChannelGraph, analyze
from morphsparse.morph import alive as _alive

FORMAT = "morphsparse.structure/1"


def structure_of(model_or_graph, source="gamma", threshold=None, l1_fraction=0.0, alive=None):
    """The structure dict of a model: alive masks from its weights (``source``/``threshold``) or ``alive``
    (group id or producer layer name -> boolean mask)."""
    graph = model_or_graph if isinstance(model_or_graph, ChannelGraph) else analyze(model_or_graph)
    masks = (_alive.alive_masks(graph, source, threshold, l1_fraction) if alive is None
             else _alive.user_masks(graph, alive, check=False))
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
            "threshold": None if alive is not None else _alive.resolve_threshold(source, threshold), "layers": layers, "groups": groups,
            "flops": count_flops(graph), "alive_flops": count_flops(graph, alive=masks),
            "params": count_params(graph), "alive_params": count_params(graph, alive=masks)}


def save_structure(model_or_graph, path, source="gamma", threshold=None, l1_fraction=0.0, alive=None):
    """Write :func:`structure_of` as JSON to ``path``; returns the dict."""
    structure = structure_of(model_or_graph, source, threshold, l1_fraction, alive)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(structure, indent=1) + "\n")
    return structure


class StructureFile(dict):
    """A structure dict read by :func:`load_structure`: a plain dict (equal to the JSON it holds) that also
    remembers ``path``, so errors found later against a model (:func:`masks_from_structure`) can name the
    file the bad entry came from."""

    path = None


def load_structure(path):
    """Read a structure file written by :func:`save_structure` (a :class:`StructureFile`). Raises ValueError
    naming the file for invalid JSON, another format or malformed layer entries."""
    try:
        structure = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"structure file '{path}' is not valid JSON: {err.msg} at line {err.lineno} column "
                         f"{err.colno} (char {err.pos}); write it with ms.save_structure") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"structure file '{path}' is not text ({err.reason} at byte {err.start}); write it "
                         "with ms.save_structure") from None
    if not isinstance(structure, dict) or structure.get("format") != FORMAT or "layers" not in structure:
        raise ValueError(f"{path} is not a morphsparse structure file (expected format {FORMAT!r})")
    structure = StructureFile(structure)
    structure.path = str(path)
    check_structure(structure)
    return structure


def _origin(structure):
    path = getattr(structure, "path", None)
    return f"structure file '{path}'" if path else "structure"


def _is_index(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_structure(structure):
    """Check what :func:`masks_from_structure` reads without a model: ``layers`` maps each layer name to a
    dict with ``channels`` (a count) and ``kept`` (unique integer indices in [0, channels)). A negative index
    would silently count from the end and a too-large one fail as a bare IndexError, so both are refused
    here; every error names the layer (and the file, for a :class:`StructureFile`)."""
    if not isinstance(structure, dict):
        raise TypeError(f"structure must be a dict from ms.load_structure or ms.structure_of (or a file path), "
                        f"got {type(structure).__name__}")
    origin = _origin(structure)
    if "layers" not in structure:
        raise ValueError(f"{origin} has no 'layers' entry (layer name -> {{'channels': n, 'kept': [...]}})")
    layers = structure["layers"]
    if not isinstance(layers, dict):
        raise ValueError(f"{origin}: 'layers' must map layer names to {{'channels': n, 'kept': [...]}}, got a "
                         f"{type(layers).__name__}")
    for name, entry in layers.items():
        where = f"{origin}, layer '{name}'"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a dict with 'channels' and 'kept', got {type(entry).__name__}")
        missing = [key for key in ("channels", "kept") if key not in entry]
        if missing:
            raise ValueError(f"{where}: missing {' and '.join(repr(key) for key in missing)}")
        channels, kept = entry["channels"], entry["kept"]
        if not _is_index(channels) or channels < 0:
            raise ValueError(f"{where}: 'channels' must be a non-negative integer, got {channels!r}")
        if not isinstance(kept, (list, tuple, np.ndarray)) or not all(_is_index(i) for i in kept):
            raise ValueError(f"{where}: 'kept' must be a list of integer channel indices, got {kept!r}")
        outside = [int(i) for i in kept if not 0 <= i < channels]
        if outside:
            raise ValueError(f"{where}: kept indices {outside[:5]} are outside [0, {channels}) (the layer has "
                             f"{channels} channels)")
        if len(set(int(i) for i in kept)) != len(kept):
            repeated = sorted({int(i) for i in kept if list(kept).count(i) > 1})
            raise ValueError(f"{where}: kept indices {repeated[:5]} appear more than once")


def masks_from_structure(model_or_graph, structure):
    """Alive masks (group id -> boolean mask) for a model, from a structure dict's per-layer kept indices
    (or from the structure file at ``structure``, a path).

    A group with several producers is alive where any of them keeps the channel. Raises ValueError naming the
    layer (and the file) when the structure is malformed (:func:`check_structure`), or a layer of it is
    missing from the model, creates no channels there or has another width."""
    if isinstance(structure, (str, os.PathLike)):
        structure = load_structure(structure)
    check_structure(structure)
    origin = _origin(structure)
    graph = model_or_graph if isinstance(model_or_graph, ChannelGraph) else analyze(model_or_graph)
    masks = {g.id: np.zeros(g.size, bool) for g in graph.groups}
    covered = set()
    for name, entry in structure["layers"].items():
        try:
            group = graph.group_of(name)
        except KeyError:
            raise ValueError(f"{origin} names layer '{name}', which model '{graph.model.name}' does not "
                             "have") from None
        except ValueError as err:
            raise ValueError(f"{origin}, layer '{name}': {err}") from None
        channels = group.producer_channels.get(name)
        if channels is None:
            channels = next((c for p, c in group.producer_channels.items() if p.split("/")[-1] == name), None)
        if channels is None:
            raise ValueError(f"{origin} names layer '{name}', which creates no channels in model "
                             f"'{graph.model.name}' (its channel group is created by {group.producers}); "
                             "structures list the layers that create channels")
        if len(channels) != entry["channels"]:
            raise ValueError(f"{origin}, layer '{name}': {len(channels)} channels in the model but "
                             f"{entry['channels']} in the structure")
        masks[group.id][channels[np.asarray(entry["kept"], dtype=np.int64)]] = True
        covered.add(group.id)
    for group in graph.groups:
        if group.id not in covered or not group.removable:
            masks[group.id][:] = True
    return masks


__all__ = ["structure_of", "save_structure", "load_structure", "masks_from_structure", "check_structure",
           "StructureFile", "FORMAT"]
