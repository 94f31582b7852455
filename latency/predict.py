"""Table latency of a concrete spec: `jaxnas latency predict SPEC_JSON --table TABLE`.

* A TF-NAS table (the original's pickle, or a table JSON with 'base' and '{key}:mid{m}' entries, imported
  or built for a TF-NAS space): base + Σ table[key(block)][mid(block)] over the blocks between the second
  stem and the feature mix (`tfnas_table.predict_tfnas`).
* Any other table built by `jaxnas latency build-table` (an MBConv space): `LatencyPredictor(table)` (sum of
  parts + the fitted overhead).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from jaxnas.spec import ArchSpec

from .imports import import_tfnas_pkl
from .table import LatencyTable, TableError

__all__ = ["load_any_table", "predict_latency"]

PathLike = Union[str, "os.PathLike[str]"]


def load_any_table(path: PathLike, *, device: str = "unknown", batch_size: Optional[int] = None) -> LatencyTable:
    """A table file: the original TF-NAS pickle (imported, tagged with `device` / `batch_size`) or JSON."""
    p = Path(path)
    if p.suffix.lower() in (".pkl", ".pickle"):
        return import_tfnas_pkl(p, device=device, batch_size=batch_size)
    return LatencyTable.load(p)


def predict_latency(spec: ArchSpec, table: Union[LatencyTable, PathLike], *, stat: str = "median",
                    device: str = "unknown", batch_size: Optional[int] = None) -> dict[str, Any]:
    """{'latency_ms', 'kind', 'parts', ...}: the table latency of `spec` (see the module docstring)."""
    from .tfnas_table import is_tfnas_table, predict_tfnas

    path = None
    if not isinstance(table, LatencyTable):
        path = str(table)
        table = load_any_table(table, device=device, batch_size=batch_size)
    fp = table.fingerprint
    out: dict[str, Any] = {"spec": spec.name, "table": path, "stat": stat,
                           "table_fingerprint": {k: fp.get(k) for k in ("backend", "runtime", "device", "threads",
                                                                        "batch_size")}}
    if is_tfnas_table(table):
        r = predict_tfnas(spec, table, stat)
        out.update(kind="tfnas", latency_ms=r["latency_ms"], base_ms=r["base_ms"],
                   parts=[{"name": b["block"], "key": b["key"], "mid": b["mid"], "ms": b["ms"]} for b in r["blocks"]])
        return out
    from .predictor import LatencyPredictor

    try:
        b = LatencyPredictor(table, stat=stat).breakdown(spec)
    except TableError:
        raise
    except ValueError as e:
        raise TableError(f"{spec.name} does not fit the table {path or ''}: {e}") from None
    out.update(kind="blocks", latency_ms=b["predicted_ms"], sum_ms=b["sum_ms"], overhead_ms=b["overhead_ms"],
               parts=[{"name": k, "ms": v} for k, v in b["parts"]])
    return out
