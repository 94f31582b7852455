"""Re-basing a network table on the machine's speed now (`search.args.rebase_table`).

A table is measured once and reused for hours; a shared or thermally throttled machine runs the same
network several % slower or faster later (measured here: the table's reference network drifted −4.3 to
+6.9 % between the table build and the end of a run).  A net fitted to the target on the table as built
then measures that much off the target, however exact the table.  Network tables (`table_context:
network`) hold the latency of one reference network (`net:reference`: every block k3e6 at its initial
width, the anchor of every other entry); timing that network again right before the final fit gives the
factor `now / as built`, and the final fit runs on the table scaled by it.  The rounds are spread
over `window_s` seconds: on these shared machines a network's speed wanders by ±4 % over tens of seconds
and jumps by +40 % for 10-20 s at a time (another tenant; measured here over 6 minutes), so a snapshot of
a fraction of a second is no better than the table's own entry (itself a median over the whole probe
phase).  One factor for all entries: a
drift in machine speed moves every op alike to first order (what the re-referenced errors of
`benchmarks/tfnas_e2e.py` check).  Tables without a reference (imported pickles, alone-context tables)
are not re-based, and the run says why.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from jaxnas.io_utils import atomic_write_json
from jaxnas.latency.spaces import REFERENCE_KEY, TfnasSpace

LOADED_DRIFT = 0.10  # beyond this the machine is busy or throttled now, not drifting: say so
# A window whose rounds spread wider than this (p90 / p10 - 1) had another tenant's burst in it: quiet
# 60-s windows of the reference net spread 3-5 % here, windows with a +40 % burst of 10-20 s 38-47 %.
BURST_SPREAD = 0.10


def window_spread(values: list[float]) -> float:
    """p90 / p10 - 1 of a window's rounds: how far a burst (or a speed change) spread them."""
    return float(np.percentile(values, 90) / np.percentile(values, 10) - 1)


def reference_entry(table: Any, stat: str) -> Optional[float]:
    """The table's reference-network latency at `stat`, or None (no such entry: not a network table)."""
    entries = getattr(table, "entries", None)
    if entries is None or REFERENCE_KEY not in entries:
        return None
    return float(table.ms(REFERENCE_KEY, stat))


def wait_for_round(start: float, i: int, rounds: int, window_s: float,
                   sleep: Callable[[float], None] = time.sleep) -> None:
    """Sleep until round i of `rounds` spread evenly over `window_s` seconds from `start` (time.monotonic)
    begins: round i starts at i / (rounds - 1) of the window."""
    if i and window_s > 0:
        sleep(max(0.0, start + window_s * i / max(rounds - 1, 1) - time.monotonic()))


def time_reference(oracle: Any, space: TfnasSpace, stat: str, rounds: int, window_s: float = 0.0,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[float, list[float], bool]:
    """The reference network timed `rounds` times by the oracle's protocol, the rounds spread evenly over
    `window_s` seconds: (median over rounds of each round's `stat`, the rounds' values, every round
    trusted) — the table stores its reference the same way (median over rounds of each round's statistic)."""
    spec = space.build_spec(space.reference_arch(), name=f"{space.name}_netref")
    values, trusted = [], True
    start = time.monotonic()
    for i in range(rounds):
        wait_for_round(start, i, rounds, window_s, sleep)
        m = oracle.measure(spec)
        values.append(float(getattr(m.stats, stat)))
        trusted = trusted and bool(getattr(m, "trusted", True))
    return float(np.median(values)), values, trusted


def table_drift(oracle: Any, space: TfnasSpace, reference_ms: Optional[float], stat: str, *, rounds: int = 15,
                window_s: float = 45.0, tries: int = 3, log: Callable[[str], None] = print,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """{'applied', 'factor', 'reference_table_ms', 'reference_now_ms', 'rounds_ms', 'spread', 'windows',
    'reason'}: the factor to scale the table by (1.0 and applied False, with the reason, where there is
    nothing to re-base on or the timing was flagged).  A window with a burst in it (`window_spread` above
    BURST_SPREAD) is timed again, up to `tries` windows; if every one is bursty, the least spread is used
    and the log says so."""
    if reference_ms is None:
        reason = ("the table has no reference network (an imported pickle or an alone-context table): the fit "
                  "stays on the table's scale")
        log(f"tfnas: rebase_table: {reason}")
        return {"applied": False, "factor": 1.0, "reason": reason}
    windows = []
    for k in range(max(tries, 1)):
        now, values, trusted = time_reference(oracle, space, stat, rounds, window_s, sleep)
        windows.append((window_spread(values), now, values, trusted))
        if windows[-1][0] <= BURST_SPREAD or not trusted:
            break
        log(f"tfnas: rebase_table: the reference's rounds spread {100 * windows[-1][0]:.0f} % (a burst of load): "
            + ("timed again" if k + 1 < tries else "every window was bursty, the least spread is used"))
    spread, now, values, trusted = min(windows, key=lambda w: w[0]) if trusted else windows[-1]
    factor = now / reference_ms
    out = {"applied": trusted, "factor": factor if trusted else 1.0, "reference_table_ms": reference_ms,
           "reference_now_ms": now, "rounds_ms": values, "spread": spread, "windows": len(windows),
           "window_s": window_s, "reason": None}
    if not trusted:
        out["reason"] = "the reference timing was flagged (see latency.timing): the fit stays on the table's scale"
        log(f"tfnas: rebase_table: {out['reason']}")
        return out
    log(f"tfnas: the table's reference network takes {now:.4f} ms now (median of {rounds} timings over "
        f"{window_s:g} s), {reference_ms:.4f} ms in the table "
        f"({100 * (factor - 1):+.1f} %): the final fit uses the table x {factor:.4f}")
    if abs(factor - 1) > LOADED_DRIFT:
        log(f"tfnas: warning: the machine runs {100 * (factor - 1):+.0f} % off the table's speed: if it is busy "
            "now, the net is fitted to this load (set search.args.rebase_table: false to fit the table as built)")
    return out


def cached_table_drift(path: Path, oracle: Any, space: TfnasSpace, reference_ms: Optional[float], stat: str, *,
                       rounds: int = 15, window_s: float = 45.0, log: Callable[[str], None] = print,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """`table_drift`, measured once per run: kept at `path`, so that a resumed run fits the same net (a
    second timing would give another factor, and the retraining would resume another network)."""
    if path.exists():
        out = json.loads(path.read_text())
        if out.get("reference_table_ms") == reference_ms:  # the same table
            log(f"tfnas: rebase_table: factor {out['factor']:.4f} from {path}")
            return out
    out = table_drift(oracle, space, reference_ms, stat, rounds=rounds, window_s=window_s, log=log, sleep=sleep)
    atomic_write_json(path, out)
    return out


__all__ = ["reference_entry", "window_spread", "BURST_SPREAD", "wait_for_round", "time_reference", "table_drift", "cached_table_drift", "REFERENCE_KEY"]
