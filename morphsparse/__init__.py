"""morphsparse: sparse training and resource-targeted structure learning for Keras 3.

Public names are loaded on first use so that ``import morphsparse`` costs no more than importing the
submodule a user actually touches (TensorFlow and Keras are imported by those submodules, not here).
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
    "lottery_ticket": "sparse", "LotteryTicket": "sparse", "parallel_gap": "sparse", "ParallelGap": "sparse",
    "GaP": "sparse", "SNIP": "sparse", "gap_phase": "sparse", "planned_peak_parameters": "sparse",
    "live_parameters": "sparse", "PeakParameterMonitor": "sparse",
    "register_sparsity_type": "sparse", "get_sparsity_type": "sparse", "Unstructured": "sparse", "Block": "sparse",
    "NByM": "sparse", "FanIn": "sparse",
    # structure learning
    "alive_masks": "morph", "group_vectors": "morph", "find_sources": "morph", "AliveError": "morph",
    "export": "morph", "ExportReport": "morph", "ExportError": "morph",
    "expand": "morph", "ExpandReport": "morph", "ExpandError": "morph",
    "export_with_report": "morph", "expand_with_report": "morph", "resize": "morph",
    "recalibrate_batchnorm": "morph",
    "save_structure": "morph", "load_structure": "morph", "structure_of": "morph",
    "masks_from_structure": "morph",
    "MorphRegularizer": "morph.regularizers", "DeviceProfile": "morph.regularizers",
    "DEVICE_PROFILES": "morph.regularizers", "UnsupportedLayerError": "morph.regularizers",
    "MorphOptimizer": "morph.optimizer", "morph_optimizer": "morph.optimizer",
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


def _register_saved_classes():
    """Make ``keras.saving.load_model`` find the classes morphsparse writes into ``.keras`` files (the
    ``SparseOptimizer``, its methods and schedules, the ``MorphOptimizer``) right after ``import morphsparse``.

    Registering them means importing ``morphsparse.sparse``, hence Keras and TensorFlow. To keep
    ``import morphsparse`` cheap, that happens now only if Keras is already imported, else as soon as it is.
    """
    import sys

    if "keras" in sys.modules:
        import_module("morphsparse.sparse")
        import_module("morphsparse.morph.optimizer")
        return
    import importlib.abc
    import importlib.util

    class _AfterKeras(importlib.abc.MetaPathFinder):
        searching = False

        def find_spec(self, name, path=None, target=None):
            # TensorFlow also calls importlib.util.find_spec("keras") without importing it: patch every spec,
            # and leave sys.meta_path only once Keras has really been executed.
            if name != "keras" or self.searching:
                return None
            self.searching = True
            try:
                spec = importlib.util.find_spec("keras")
            finally:
                self.searching = False
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            execute = spec.loader.exec_module
            finder = self

            def exec_module(module):
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)
                execute(module)
                import_module("morphsparse.sparse")
                import_module("morphsparse.morph.optimizer")

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _AfterKeras())


_register_saved_classes()
