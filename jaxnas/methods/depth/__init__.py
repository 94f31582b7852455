"""Latency-aware CNN depth compression via two-stage DP (Kim et al., ICML 2023): numpy core."""
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

__all__ = [
    "BudgetError", "ConvChain", "ExtImportanceTable", "ImportanceTable", "MergeCheckError", "MergePattern",
    "MergedConv", "SolveResult", "TableError", "TimeEntry", "TimeTable", "check_segments",
    "extended_importance", "extended_segments", "feature_shapes", "importance_offset", "is_valid_segment",
    "mbv2_chain", "merged_conv_shape", "min_achievable_time", "normalize_importance",
    "optimal_merge_pattern", "optimal_time_table", "read_ext_importance", "read_importance_table",
    "read_opt_table", "read_time_table", "segment_input_shape", "solve", "stride_breaks",
    "time_table_from_mapping", "valid_segments", "vgg19_chain", "write_ext_importance",
    "write_importance_table", "write_opt_table", "write_time_table",
]
