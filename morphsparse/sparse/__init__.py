"""Unstructured sparse training (the RigL family) for Keras 3, as an optimizer wrapper.

    import morphsparse as ms
    optimizer = ms.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), sparsity=0.9,
                                    method="rigl", total_steps=epochs * steps_per_epoch)
    model.compile(optimizer=optimizer, loss=...)   # model stays the same keras.Model
    model.fit(...)                                 # logs gain sparsity, mask_changes, alive_params
    ms.sparsity_report(model); plain = ms.strip(model)

See docs/sparse_training.md.
"""

from .api import (KernelReport, SparsityReport, apply_masks, copy_model, sparse_optimizer, sparsity_report,
                  strip)
from .distributions import (Distribution, ErdosRenyi, ErdosRenyiKernel, Uniform, get_distribution,
                            layer_sparsities, register_distribution)
from .kernels import MASKED_KERNELS, maskable_kernels
from .masks import kept_count, stable_hash
from .selection import LayerSelection
from .metrics import SparseTrainingMetrics
from .optimizer import SparseOptimizer, find_sparse_optimizer
from .schedules import (ConstantDropFraction, CosineDropFraction, DropFraction, InversePowerDropFraction,
                        PolynomialSchedule, PruningScheduleAdapter, UpdateSchedule)
from .updaters import (SET, SNFS, DropGrow, KernelView, Magnitude, MaskUpdater, RigL, Static, UpdateContext,
                       get_updater, register_updater, UPDATERS)
from .updaters import Dense as DenseBaseline
# GaP, SNIP and lottery tickets (issue 5): importing them registers method="gap" and method="snip".
from .footprint import LiveCounts, PeakParameterMonitor, live_parameters
from .gap import (GaP, GapPhase, GapSchedule, ParallelGap, gap_phase, parallel_gap, planned_peak_parameters,
                  resolve_partitions)
from .lottery import LotteryTicket, WeightSnapshot, lottery_ticket, prune_by_magnitude
from .snip import SNIP, connection_sensitivity
from .sparsity_types import (SPARSITY_TYPES, Block, FanIn, NByM, Unstructured, get_sparsity_type,
                             register_sparsity_type, serialize_sparsity_type)

__all__ = [
    "sparse_optimizer", "LayerSelection", "SparseOptimizer", "apply_masks", "strip", "sparsity_report", "SparsityReport",
    "KernelReport", "SparseTrainingMetrics", "find_sparse_optimizer", "copy_model", "MASKED_KERNELS",
    "maskable_kernels",
    "Distribution", "Uniform", "ErdosRenyi", "ErdosRenyiKernel", "layer_sparsities", "get_distribution",
    "register_distribution", "Unstructured", "kept_count", "stable_hash",
    "UpdateSchedule", "PolynomialSchedule", "PruningScheduleAdapter", "DropFraction", "ConstantDropFraction",
    "CosineDropFraction", "InversePowerDropFraction",
    "MaskUpdater", "DropGrow", "Static", "DenseBaseline", "SET", "SNFS", "RigL", "Magnitude", "KernelView",
    "UpdateContext", "register_updater", "get_updater", "UPDATERS",
]
__all__ += [
    "GaP", "GapSchedule", "GapPhase", "gap_phase", "planned_peak_parameters", "resolve_partitions",
    "SNIP", "connection_sensitivity", "lottery_ticket", "LotteryTicket", "WeightSnapshot", "prune_by_magnitude",
    "live_parameters", "LiveCounts", "PeakParameterMonitor", "parallel_gap", "ParallelGap",
]
__all__ += ["SPARSITY_TYPES", "Block", "NByM", "FanIn", "get_sparsity_type", "register_sparsity_type",
            "serialize_sparsity_type"]
