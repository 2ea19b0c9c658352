"""Unstructured sparse training (the RigL family) for Keras 3.

    import morphsparse as ms
    sparse = ms.sparsify(model, sparsity=0.9, method="rigl", distribution="erk")
    sparse.compile(...); sparse.fit(...)        # the model's own step updates the masks
    ms.sparsity_report(sparse); plain = ms.strip(sparse)

See docs/sparse_training.md.
"""

from .api import KernelReport, SparsityReport, apply_sparse_gradients, sparsify, sparsity_report, strip
from .callbacks import SparsityMonitor
from .distributions import (Distribution, ErdosRenyi, ErdosRenyiKernel, Uniform, get_distribution,
                            layer_sparsities, register_distribution)
from .masks import Unstructured, kept_count, stable_hash
from .model import SparseModel, UnsupportedOptimizerError
from .schedules import (ConstantDropFraction, CosineDropFraction, DropFraction, InversePowerDropFraction,
                        PolynomialSchedule, PruningScheduleAdapter, UpdateSchedule)
from .updaters import (SET, SNFS, DropGrow, KernelView, Magnitude, MaskUpdater, RigL, Static, UpdateContext,
                       get_updater, register_updater, UPDATERS)
from .updaters import Dense as DenseBaseline
from .wrappers import SparseWrapper
# GaP, SNIP and lottery tickets (issue 5): importing them registers method="gap" and method="snip".
from .footprint import LiveCounts, PeakParameterMonitor, live_parameters
from .gap import (GaP, GapPhase, GapSchedule, ParallelGap, gap_phase, parallel_gap, planned_peak_parameters,
                  resolve_partitions)
from .lottery import LotteryTicket, WeightSnapshot, lottery_ticket, prune_by_magnitude
from .snip import SNIP, connection_sensitivity

__all__ = [
    "sparsify", "apply_sparse_gradients", "strip", "sparsity_report", "SparsityReport", "KernelReport",
    "SparsityMonitor", "SparseModel", "SparseWrapper", "UnsupportedOptimizerError",
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
