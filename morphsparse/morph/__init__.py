"""Structure learning (MorphNet for Keras 3): alive channels, regularisers, slim export, width expansion.

The export/expand/prune/distill/structure functions are bound eagerly (see below); the rest resolve lazily.
"""

from importlib import import_module

# ``export``, ``expand``, ``prune`` and ``distill`` are both a submodule and a function; binding the functions here,
# after their modules load, keeps ``morphsparse.morph.export`` the function whichever import runs first.
from morphsparse.morph.alive import AliveError, alive_masks, group_vectors  # noqa: E402,F401
from morphsparse.morph.export import ExportError, ExportReport, export, export_with_report  # noqa: E402,F401
from morphsparse.morph.expand import ExpandError, ExpandReport, expand, expand_with_report, resize  # noqa: E402,F401,E501
from morphsparse.morph.structure import load_structure, masks_from_structure, save_structure, structure_of  # noqa: E402,F401,E501
from morphsparse.morph.prune import PruneError, PruneReport, prune, prune_with_report  # noqa: E402,F401
from morphsparse.morph.distill import Distiller, distill  # noqa: E402,F401

_EXPORTS = {
    # alive channels (alive.py)
    "alive_masks": "alive", "group_vectors": "alive", "find_sources": "alive", "channel_norms": "alive",
    "RegularizationSource": "alive", "AliveError": "alive", "alive_counts": "alive",
    # slim export, structure files, expansion
    "export": "export", "ExportReport": "export", "ExportError": "export", "loading_packages": "export",
    "save_structure": "structure", "load_structure": "structure", "structure_of": "structure",
    "masks_from_structure": "structure", "propagated_masks": "alive",
    "expand": "expand", "ExpandReport": "expand", "ExpandError": "expand",
    "export_with_report": "export", "expand_with_report": "expand", "resize": "expand",
    "recalibrate_batchnorm": "batchnorm", "batch_norm_layers": "batchnorm",
    # pruning a trained model to a budget
    "prune": "prune", "prune_with_report": "prune", "PruneReport": "prune", "PruneStep": "prune",
    "PruneError": "prune", "channel_importance": "prune",
    # knowledge distillation
    "distill": "distill", "Distiller": "distill",
    # structure learning as an optimizer wrapper
    "MorphOptimizer": "optimizer", "morph_optimizer": "optimizer", "MorphTrainingMetrics": "optimizer",
}
#: modules searched for names not listed above (the regulariser and the cycle define their own).
_OTHER_MODULES = ("regularizers", "cycle")


def __getattr__(name):
    # `from morphsparse.morph import budget` asks the package for the attribute first: a submodule is imported,
    # not looked for in the modules below (whose imports could run back into the one being imported)
    try:
        return import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    for module in (_EXPORTS[name],) if name in _EXPORTS else _OTHER_MODULES:
        found = import_module(f"{__name__}.{module}")
        if hasattr(found, name):
            globals()[name] = getattr(found, name)    # looked up once
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
