"""`jaxnas depth t-opt` and `jaxnas depth solve`: the two DP stages on the original's CSV tables
(registered through the method contract's `add_commands`; the numerics load when a command runs, so
building the parser for `jaxnas --help` stays light)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from jaxnas.schema import argument_type

__all__ = ["add_commands", "t_opt_cli", "solve_cli"]


def t_opt_cli(time_csv: str | Path, out_csv: str | Path) -> dict[str, Any]:
    """`jaxnas depth t-opt`: T_opt of a T table (``id,st,end,time,stdev``) written to `out_csv`."""
    from jaxnas.io_utils import atomic_write_text
    from jaxnas.methods.depth.dp import optimal_time_table
    from jaxnas.methods.depth.tables import check_coverage, read_time_table, write_opt_table

    T = read_time_table(time_csv)
    check_coverage(T, str(time_csv))
    opt = optimal_time_table(T)
    atomic_write_text(out_csv, write_opt_table(opt))
    merged = sum(1 for e in opt.entries.values() if len(e.breaks) > 2)
    return {"rows": len(opt), "split_rows": merged, "out": str(out_csv)}


def solve_cli(opt_csv: str | Path, imp_csv: str | Path, time_limit: float, prec: float,
              L: int | None = None, time_csv: str | Path | None = None) -> dict[str, Any]:
    """`jaxnas depth solve`: stage 2 on a T_opt CSV and an extended importance CSV
    (``id,st,end,st_act,end_act,imp,breaks``).  With `time_csv` (T) the merge set is re-derived from the
    activations as a check.  Returns act_pos, merge_pos, imp_sum, time_sum, int_time_sum, solve_seconds."""
    from jaxnas.methods.depth.dp import check_dp_memory, solve
    from jaxnas.methods.depth.tables import check_tables_agree, read_ext_importance, read_opt_table, read_time_table

    opt = read_opt_table(opt_csv)
    ext = read_ext_importance(imp_csv)
    L_tables = check_tables_agree(opt, ext, str(opt_csv), str(imp_csv))
    if L is None:
        L = L_tables
    check_dp_memory(float(time_limit), float(prec), int(L))
    T = read_time_table(time_csv) if time_csv is not None else None
    res = solve(opt, ext, float(time_limit), float(prec), int(L), check_time_table=T, strict_check=False)
    return {"act_pos": res.act_pos, "merge_pos": res.merge_pos, "imp_sum": res.imp_sum,
            "time_sum": res.flt_time_sum, "int_time_sum": res.int_time_sum, "time_limit": res.time_limit,
            "prec": res.prec, "solve_seconds": res.solve_seconds, "merge_check": res.merge_check}


_positive_float = argument_type(float, (lambda v: math.isfinite(v) and v > 0,
                                        "must be a finite number > 0, got {text}"))


def _cmd_topt(args: argparse.Namespace) -> tuple[dict, str]:
    out = t_opt_cli(args.time_table, args.out)
    return out, f"{out['out']}: {out['rows']} T_opt rows ({out['split_rows']} split into merged parts)"


def _cmd_solve(args: argparse.Namespace) -> tuple[dict, str]:
    out = solve_cli(args.opt_time_table, args.importance_table, args.time_limit, args.prec)
    return out, (f"{len(out['act_pos'])} activations, {len(out['merge_pos'])} merge boundaries, time "
                 f"{out['time_sum']:.4f} ms of {out['time_limit']:g}, importance {out['imp_sum']:.4f} "
                 f"(solved in {out['solve_seconds']:.3f} s)")


def add_commands(sub: Any) -> None:
    """`jaxnas depth t-opt|solve`."""
    q = sub.add_parser("t-opt", help="stage 1: optimal merged-time table from a time table")
    q.add_argument("--time-table", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(handler=_cmd_topt)
    q = sub.add_parser("solve", help="stage 2: optimal activation and merge sets under a time budget")
    q.add_argument("--opt-time-table", required=True)
    q.add_argument("--importance-table", required=True)
    q.add_argument("--time-limit", type=_positive_float, required=True)
    q.add_argument("--prec", type=_positive_float, default=20.0)
    q.set_defaults(handler=_cmd_solve)
