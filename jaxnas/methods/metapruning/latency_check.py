"""The end-to-end check of the search's best candidates, in the latency grid's conditions.

The per-layer grid, with its end-to-end calibration networks, is timed before the PruningNet trains; the
check runs 20-60 min later.  A shared machine drifts in between: the table benchmark's widest net measured
1.31 ms in its grid and 1.64 ms 70 min later, and one check measured candidates the grid predicted alike
(0.33 ms) at 0.37, 0.44 and 0.46 ms while other jobs ran.  Timed alone, a candidate then fails (or passes)
the target for the machine's load, not for the grid's error.

So each candidate is timed in alternating rounds with the grid's calibration network nearest the target
(`GridReference`), and the median over rounds of candidate / reference, times the reference's latency in the
grid, is what the check compares with the target (``grid_ms``): load that slows both cancels, and what is
left is the difference between the network and the grid's prediction of it, which is what the check is
for.  On a quiet machine ``grid_ms`` and the candidate's own time agree (``drift`` ~ 1); every row keeps
both.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from jaxnas import spec as S

__all__ = ["GridReference", "grid_reference", "measure_against", "row_ms"]


@dataclasses.dataclass(frozen=True)
class GridReference:
    """A calibration network of the latency grid: its entry, spec, variables and latency in the grid."""

    name: str
    spec: S.ArchSpec
    variables: Any
    grid_ms: float


def grid_reference(table: Any, widest: S.ArchSpec, near_ms: float, stat: str = "median") -> GridReference:
    """The calibration network of layer grid `table` (of supernet `widest`) whose grid latency (`stat`) is
    nearest `near_ms`, rebuilt as the grid built it."""
    from jaxnas.costmodel import CALIBRATION_NETWORKS, calibration_network
    from jaxnas.models import build_model, init_variables

    keys = [k for k in CALIBRATION_NETWORKS if k in table]
    if not keys:
        raise KeyError("the latency grid has none of its end-to-end calibration networks")
    key = min(keys, key=lambda k: abs(table.ms(k, stat) - near_ms))
    m = table.meta
    spec, variables = calibration_network(key, widest, init_variables(build_model(widest), 0),
                                          step=m["grid_fraction_step"], min_fraction=m["min_fraction"],
                                          multiple=m.get("channel_multiple", 1))
    return GridReference(key, spec, variables, float(table.ms(key, stat)))


def measure_against(compare: Callable[[tuple, tuple], Any], reference: GridReference,
                    stat: str = "median") -> Callable[[S.ArchSpec], dict[str, Any]]:
    """`measure(spec) -> row fields`: `spec` timed in alternating rounds with `reference` by
    `compare((ref spec, ref variables), (spec, None))` (a `latency.timing.Comparison`; model 0 the
    reference), each model's `stat` per round.  ``measured_ms``: the candidate's median over rounds;
    ``reference_ms``: the reference's; ``grid_ms``: median over rounds of candidate / reference, times the
    reference's grid latency; ``drift``: reference now / in the grid."""

    def measure(spec: S.ArchSpec) -> dict[str, Any]:
        c = compare((reference.spec, reference.variables), (spec, None))
        ref = np.asarray([getattr(r, stat) for r in c.rounds[0]], float)
        mine = np.asarray([getattr(r, stat) for r in c.rounds[1]], float)
        ref_ms = float(np.median(ref))
        return {"measured_ms": float(np.median(mine)), "reference": reference.name, "reference_ms": ref_ms,
                "reference_grid_ms": reference.grid_ms, "drift": ref_ms / reference.grid_ms,
                "grid_ms": float(np.median(mine / ref)) * reference.grid_ms}

    return measure


def row_ms(row: Mapping[str, Any]) -> float:
    """The latency a check row is judged by: in the grid's conditions when it was timed against a grid
    network, else as measured."""
    return float(row.get("grid_ms", row["measured_ms"]))
