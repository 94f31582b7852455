"""Latency-aware CNN depth compression via two-stage DP (Kim et al., ICML 2023).

    jaxnas search configs/depth/quick.yaml                  # search.method: depth
    jaxnas depth t-opt / jaxnas depth solve                  # the DP stages on CSV tables

Every piece loads on first access (the numpy core: segments, tables, dp; the Flax side: mergeable
networks, merging, importance, time tables, the search `run_search`), so `import jaxnas.methods.depth`
(the registry, `jaxnas --help`) stays light.
"""
from jaxnas.methods.base import Method, lazy_exports
from jaxnas.methods.depth.commands import add_commands  # light: the numerics load when a command runs


METHOD = Method(
    name="depth",
    summary="Depth compression by two-stage DP (ICML'23): remove activations, merge convs under a latency budget",
    targets=("latency_ms",),
    args="jaxnas.methods.depth.args:DepthArgs",
    search="jaxnas.methods.depth.pipeline:run_search",
    add_commands=add_commands,
    table_targets=(),  # its T(st, end) table is search.args.time_table, or measured
)

_LAZY = {  # module -> names loaded from it on first access
    "args": ("DepthArgs",),
    "dp": ("BudgetError", "MergeCheckError", "MergePattern", "SolveResult", "extended_importance",
           "extended_segments", "importance_offset", "min_achievable_time", "normalize_importance",
           "optimal_merge_pattern", "optimal_time_table", "solve"),
    "segments": ("ConvChain", "MergedConv", "feature_shapes", "is_valid_segment", "mbv2_chain", "merged_conv_shape",
                 "segment_input_shape", "stride_breaks", "valid_segments", "vgg19_chain"),
    "tables": ("ExtImportanceTable", "ImportanceTable", "TableError", "TimeEntry", "TimeTable", "check_segments",
               "read_ext_importance", "read_importance_table", "read_opt_table", "read_time_table",
               "time_table_from_mapping", "write_ext_importance", "write_importance_table", "write_opt_table",
               "write_time_table"),
    "mergeable": ("Body", "PatternError", "body_of", "fix_act", "freeze_tx", "merge_boundaries",
                  "merge_segments", "mergeable_spec", "pattern_of", "reinit_conv", "skip_bumps",
                  "transfer_variables"),
    "merge": ("forward", "merge_network"),
    "importance": ("GatedNet", "ImportanceConfig", "collect_importance", "ext_segments_of", "measure_importance",
                   "optimal_importance", "segment_acts"),
    "pipeline": ("measure_time_table", "run_search"),
    "time_table": ("build_network_time_table", "build_time_table", "conv_split", "network_time_table",
                   "segment_conv_spec", "segment_network", "segment_times"),
}
__getattr__, _LAZY_NAMES = lazy_exports(__name__, _LAZY)

__all__ = ["METHOD", "add_commands", *_LAZY_NAMES]
