"""A table's drift correction: its reference networks timed again, now.

A lookup table is a snapshot of the device on the day it was built.  Shared machines drift: the LiteRT
`mbv2-224` network table built here one day predicted the next day's nets 14-20 % too slow on average,
because the nets, the table's own reference networks included, ran faster than the day before (the
references at x0.79-0.89 their table times, p10-p90 over two runs of
benchmarks/predictor_validation.py --recalibrate).  Rebuilding the table costs 20+ minutes; its reference
architectures (``ref:*`` entries, measured when it was built, the ones the predictor's overhead term is fit
to) take one or two.

`recalibrate` times them again and stores the median of their ratios now / then as the table's
``calibration.scale``; `LatencyPredictor` multiplies every entry (and the references' times the overhead is
fit to) by it, so every prediction is scaled.  One scale and not a ratio per entry: a dozen references
cannot pin down hundreds of entries, and the median of the ratios shrugs off one reference that landed in
a slow mode.  The spread of the ratios is stored with it: a wide one says the drift is not uniform and the
table should be rebuilt.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from .table import REF_PREFIX, LatencyTable, TableError

__all__ = ["CALIBRATION_KEY", "reference_specs", "drift_scale", "table_scale", "drift_warning", "store_calibration", "recalibrate"]

CALIBRATION_KEY = "calibration"  # in the table's meta
# Ratios of the references (now / then) wider than this (p90 / p10) are reported as non-uniform drift.
UNIFORM_SPREAD = 1.10
# A drift of the references beyond ±5 % from the table's stored scale is worth a line.
DRIFT_WARN = 0.05


def reference_specs(space, table: LatencyTable) -> dict[str, Any]:
    """{``ref:*`` key: ArchSpec} of the table's reference architectures, rebuilt from their stored arch."""
    out = {}
    for key, entry in table.entries.items():
        meta = entry.get("meta") or {}
        if key.startswith(REF_PREFIX) and meta.get("kind") == "reference" and meta.get("arch"):
            out[key] = space.build(meta["arch"], name=f"{space.name}_{key.replace(':', '_')}")
    return out


def drift_scale(then: Mapping[str, float], now: Mapping[str, float]) -> dict[str, Any]:
    """The calibration from the references' times when the table was built (``then``) and now (ms):
    ``scale`` = median of now / then over the references both hold, with the ratios' p10 / p90."""
    keys = sorted(k for k in then if k in now and then[k] > 0 and now[k] > 0)
    if not keys:
        raise TableError("no reference network timed both when the table was built and now: nothing to "
                         "calibrate against; rebuild the table with references (the default)")
    ratios = np.asarray([now[k] / then[k] for k in keys])
    p10, p90 = (float(v) for v in np.percentile(ratios, [10, 90]))
    return {"scale": float(np.median(ratios)), "n": len(keys), "ratio_p10": p10, "ratio_p90": p90,
            "uniform": bool(p90 / p10 <= UNIFORM_SPREAD),
            "references": {k: {"then_ms": float(then[k]), "now_ms": float(now[k])} for k in keys}}


def drift_warning(calibration: Mapping[str, Any]) -> Optional[str]:
    """One line when the references drifted unevenly (one scale then corrects the mean only: rebuild), or by
    more than :data:`DRIFT_WARN` from the scale the table held before (``previous_scale``); None otherwise."""
    scale, p10, p90 = calibration["scale"], calibration["ratio_p10"], calibration["ratio_p90"]
    stored_scale = calibration.get("previous_scale", 1.0)
    if not calibration["uniform"]:
        return (f"the table's references drifted unevenly since it was built (now/then p10 {p10:.3f}, p90 "
                f"{p90:.3f}): one scale corrects the mean, not each block; rebuild the table for per-block accuracy")
    if abs(scale / stored_scale - 1.0) > DRIFT_WARN:
        return (f"the machine runs at x{scale:.3f} the table's times (stored scale x{stored_scale:.3f}): the table "
                f"predicted {100 * (stored_scale / scale - 1):+.0f} % as it stood; the new scale is stored in it")
    return None


def table_scale(table: LatencyTable) -> float:
    """The calibration scale stored in ``table`` (1.0: none)."""
    cal = table.meta.get(CALIBRATION_KEY) or {}
    return float(cal.get("scale", 1.0))


def store_calibration(table: LatencyTable, path: Union[str, Path], calibration: Mapping[str, Any]) -> dict[str, Any]:
    """Stamp ``calibration`` (a :func:`drift_scale` result) with the time and the scale it replaces
    (``previous_scale``), put it in ``table``'s meta and save the table at ``path`` atomically.  Returns what
    was stored."""
    cal = {**calibration, "previous_scale": table_scale(table),
           "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    table.meta[CALIBRATION_KEY] = cal
    table.save(path)
    return cal


def recalibrate(space, backend, table_path: Union[str, "Path"], *, threads: int = 1, protocol: Optional[Any] = None,
                warmup: Optional[int] = None, runs: Optional[int] = None, passes: int = 2, stat: str = "median",
                progress: Union[bool, Callable[[str], None]] = True) -> dict[str, Any]:
    """Time the references of the table at ``table_path`` again on ``backend`` (``passes`` measurements of
    each, their rounds interleaved) and store their drift (:func:`drift_scale`) in its meta, atomically.
    The table must match the backend's fingerprint and the space.  Returns the calibration."""
    from .builder import (TABLE_PROTOCOL, _progress, combine, median_of, open_existing_table, resolve_backend,
                          time_networks)
    from .spaces import load_space

    space = load_space(space)
    be = resolve_backend(backend, threads)
    path = Path(table_path)
    table = open_existing_table(path, space, be.fingerprint(1).to_dict())
    specs = reference_specs(space, table)
    if not specs:
        raise TableError(f"{path} holds no reference networks (ref:*): nothing to calibrate against; rebuild it "
                         "with references (the default)")
    log = _progress(progress)
    fixed = runs is not None
    protocol = None if fixed else (protocol or TABLE_PROTOCOL)
    log(f"[calibrate] timing the {len(specs)} reference networks of {path} again ({passes} passes)")
    measured = time_networks(be, list(specs.values()), protocol=protocol, warmup=warmup, runs=runs, passes=passes)
    merge = median_of if fixed else combine
    now = {k: getattr(merge(v), stat) for k, v in zip(specs, measured)}
    then = {k: table.ms(k, stat) for k in specs}
    cal = store_calibration(table, path, {**drift_scale(then, now), "stat": stat, "by": "calibrate"})
    log(f"[calibrate] {path}: the references run at {cal['scale']:.3f}x their table times "
        f"(p10 {cal['ratio_p10']:.3f}, p90 {cal['ratio_p90']:.3f}, {cal['n']} references)")
    return cal
