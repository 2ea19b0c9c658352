"""morphsparse: sparse training and resource-targeted structure learning for Keras 3.

Public names are loaded on first use; ``import morphsparse`` imports Keras and TensorFlow and the modules of the
classes it saves into ``.keras`` files (see the end of this file), nothing else.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> submodule that defines it. Each concept adds its names here.
_EXPORTS = {
    # data
    "load_fashion_mnist": "data", "fashion_mnist_subset": "data", "load_digits": "data", "prepare_images": "data",
    "DataNotFoundError": "data",
    # channel graph and costs
    "analyze": "graph", "ChannelGraph": "graph", "ChannelGroup": "graph", "GraphError": "graph",
    "register_handler": "handlers", "LayerHandler": "handlers", "ChannelHandler": "handlers",
    "RebuildHandler": "handlers", "get_handler": "handlers",
    "count_flops": "costs", "count_macs": "costs", "count_params": "costs", "cost_report": "costs",
    "CostReport": "costs",
    # unstructured sparse training
    "sparse_optimizer": "sparse", "SparseOptimizer": "sparse", "apply_masks": "sparse", "strip": "sparse",
    "sparsity_report": "sparse", "SparsityReport": "sparse", "register_updater": "sparse", "MaskUpdater": "sparse", "DropGrow": "sparse",
    "UpdateSchedule": "sparse", "PolynomialSchedule": "sparse", "layer_sparsities": "sparse",
    "LayerSelection": "sparse", "ErdosRenyiKernel": "sparse", "ErdosRenyi": "sparse", "Uniform": "sparse",
    "lottery_ticket": "sparse", "LotteryTicket": "sparse", "parallel_gap": "sparse", "ParallelGap": "sparse",
    "GaP": "sparse", "SNIP": "sparse", "gap_phase": "sparse", "planned_peak_parameters": "sparse",
    "live_parameters": "sparse", "PeakParameterMonitor": "sparse",
    "register_sparsity_type": "sparse", "get_sparsity_type": "sparse", "Unstructured": "sparse", "Block": "sparse",
    "NByM": "sparse", "FanIn": "sparse",
    # structure learning
    "alive_masks": "morph", "group_vectors": "morph", "find_sources": "morph", "AliveError": "morph",
    "export": "morph", "ExportReport": "morph", "ExportError": "morph", "loading_packages": "morph",
    "expand": "morph", "ExpandReport": "morph", "ExpandError": "morph",
    "export_with_report": "morph", "expand_with_report": "morph", "resize": "morph",
    "recalibrate_batchnorm": "morph",
    "save_structure": "morph", "load_structure": "morph", "structure_of": "morph",
    "masks_from_structure": "morph",
    "MorphRegularizer": "morph.regularizers", "DeviceProfile": "morph.regularizers",
    "DEVICE_PROFILES": "morph.regularizers", "UnsupportedLayerError": "morph.regularizers",
    "MorphOptimizer": "morph.optimizer", "morph_optimizer": "morph.optimizer",
    # measured latency
    "profile_latency": "latency", "predict_latency": "latency", "measure_latency": "latency",
    "LatencyTable": "latency", "LatencyTableError": "latency", "compare_latency": "latency",
    "land_latency": "morph.landing", "LandingReport": "morph.landing",
    # LiteRT export
    "to_litert": "litert", "LiteRTReport": "litert", "LiteRTError": "litert",
    "cycle": "morph.cycle", "CycleResult": "morph.cycle", "small_resnet": "models",
    "prune": "morph.prune", "prune_with_report": "morph.prune", "PruneReport": "morph.prune",
    "PruneError": "morph.prune", "channel_importance": "morph.prune",
    "distill": "morph.distill", "Distiller": "morph.distill",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'morphsparse' has no attribute {name!r}")
    value = getattr(import_module(f"morphsparse.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


# The classes morphsparse writes into .keras files (its optimizers, their methods and schedules) are registered
# with Keras when their modules are imported: import them now, so that keras.saving.load_model finds them after
# a plain `import morphsparse`. (This imports Keras and TensorFlow; the other submodules still load on first use.)
import_module("morphsparse.sparse")
import_module("morphsparse.morph.optimizer")
