"""Latency-aware CNN depth compression via two-stage DP (Kim et al., ICML 2023).

    jaxnas search configs/depth/quick.yaml                  # search.method: depth
    jaxnas depth t-opt / jaxnas depth solve                  # the DP stages on CSV tables

The numpy core (segments, tables, dp) imports eagerly; the Flax side (mergeable networks, merging,
importance, time tables, the search `run_search`) loads on first access, so `import
jaxnas.methods.depth` stays light.
"""
from jaxnas.methods.depth.dp import (BudgetError, MergeCheckError, MergePattern, SolveResult,
                                     extended_importance, extended_segments, importance_offset,
                                     min_achievable_time, normalize_importance, optimal_merge_pattern,
                                     optimal_time_table, solve)
from jaxnas.methods.depth.segments import (ConvChain, MergedConv, feature_shapes, is_valid_segment,
                                           mbv2_chain, merged_conv_shape, segment_input_shape,
                                           stride_breaks, valid_segments, vgg19_chain)
from jaxnas.methods.depth.tables import (ExtImportanceTable, ImportanceTable, TableError, TimeEntry,
                                         TimeTable, check_segments, read_ext_importance,
                                         read_importance_table, read_opt_table, read_time_table,
                                         time_table_from_mapping, write_ext_importance,
                                         write_importance_table, write_opt_table, write_time_table)

from jaxnas.methods.base import Method
from jaxnas.methods.depth.args import DepthArgs
from jaxnas.methods.depth.commands import add_commands


def _search(ctx, args):
    from jaxnas.methods.depth.pipeline import run_search

    return run_search(ctx, args)


METHOD = Method(
    name="depth",
    summary="Depth compression by two-stage DP (ICML'23): remove activations, merge convs under a latency budget",
    targets=("latency_ms",),
    args=DepthArgs,
    search=_search,
    add_commands=add_commands,
)

_LAZY = {
    "mergeable": ("Body", "PatternError", "body_of", "fix_act", "freeze_tx", "merge_boundaries",
                  "merge_segments", "mergeable_spec", "pattern_of", "reinit_conv", "skip_bumps",
                  "transfer_variables"),
    "merge": ("forward", "merge_network", "max_abs_diff"),
    "importance": ("GatedNet", "ImportanceConfig", "collect_importance", "ext_segments_of", "measure_importance",
                   "optimal_importance", "segment_acts"),
    "pipeline": ("measure_time_table", "run_search"),
    "time_table": ("build_network_time_table", "build_time_table", "conv_split", "network_time_table",
                   "segment_conv_spec", "segment_network", "segment_times"),
}
_LAZY_NAMES = {name: mod for mod, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    mod = _LAZY_NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = sorted(_LAZY_NAMES) + [
    "DepthArgs", "METHOD", "BudgetError", "ConvChain", "ExtImportanceTable", "ImportanceTable", "MergeCheckError", "MergePattern",
    "MergedConv", "SolveResult", "TableError", "TimeEntry", "TimeTable", "check_segments",
    "extended_importance", "extended_segments", "feature_shapes", "importance_offset", "is_valid_segment",
    "mbv2_chain", "merged_conv_shape", "min_achievable_time", "normalize_importance",
    "optimal_merge_pattern", "optimal_time_table", "read_ext_importance", "read_importance_table",
    "read_opt_table", "read_time_table", "segment_input_shape", "solve", "stride_breaks",
    "time_table_from_mapping", "valid_segments", "vgg19_chain", "write_ext_importance",
    "write_importance_table", "write_opt_table", "write_time_table",
]
