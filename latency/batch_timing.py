"""Time many models, cached and resumable: each alone (`time_each`), or each against one reference in
alternating rounds (`time_against`), by the adaptive protocol (:mod:`latency.timing`) unless fixed
``runs`` are asked for.

Methods build the specs (a merged segment, a one-layer probe, ...) and get the timings back through
the latency oracle; this module knows nothing of any method. Results are kept in a `LatencyTable` JSON
cache that is saved after every entry, so an interrupted build resumes where it stopped; a cache from
another device/runtime or other settings is refused. Every entry stores its interval, rounds, run count
and flags; a flagged measurement is timed once more, and one that stays flagged is stored with its flags
and named in one log line (`untrusted_line`), never used silently.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .backends import LatencyBackend, measure_paired
from .backends.base import supports_protocol
from .stats import TimingStats, progress_line
from .table import LatencyTable
from .timing import Comparison, TimingProtocol, TimingWarning

__all__ = ["time_each", "time_against", "time_pair", "pair_into_table", "untrusted_line", "REFERENCE_KEY"]

REFERENCE_KEY = "reference"
ModelFactory = Callable[[], tuple[Any, Any]]  # () -> (spec, variables)
ROUND_STATS = ("min", "p10", "median", "mean", "p90")


def _shape(spec: Any, batch_size: int) -> tuple[int, ...]:
    return (batch_size, *spec.input_size, spec.in_channels)


def _timing_meta(protocol: Optional[TimingProtocol], warmup: Optional[int], runs: Optional[int],
                 rounds: Optional[int] = None) -> dict[str, Any]:
    if protocol is not None:
        return {"protocol": protocol.to_dict(), **({"warmup": warmup} if warmup is not None else {})}
    return {"warmup": warmup, "runs": runs, **({"rounds": rounds} if rounds is not None else {})}


def untrusted_line(table: LatencyTable, where: str = "the table") -> Optional[str]:
    """One line naming how many entries of ``table`` are flagged and why (by flag code), or None."""
    bad = table.untrusted()
    if not bad:
        return None
    # entries per reason (flag code), in order of first appearance
    codes = Counter(code for flags in bad.values() for code in dict.fromkeys(f.split(":", 1)[0] for f in flags))
    first = next(iter(bad))
    return (f"{len(bad)} of {len(table)} entries of {where} are untrusted timings "
            f"({', '.join(f'{k}: {v}' for k, v in codes.items())}; e.g. {first}: {bad[first][0]}); "
            f"rebuild them on a quieter machine")


def time_each(specs: Mapping[str, Any], cache: str | Path, backend: LatencyBackend, *, batch_size: int = 1,
              protocol: Optional[TimingProtocol] = None, warmup: Optional[int] = None, runs: Optional[int] = None,
              meta: Mapping[str, Any] | None = None, entry_meta: Mapping[str, Mapping[str, Any]] | None = None,
              log: Callable[[str], None] | None = print) -> dict[str, TimingStats]:
    """{key: stats} of every spec timed alone (random weights; the weights' values do not change latency),
    measuring only what `cache` lacks: by the protocol all of them with their rounds interleaved
    (:func:`latency.builder.measure_models`), with fixed ``runs`` one after the other."""
    from .builder import export_for, measure_models

    cache = Path(cache)
    table = LatencyTable.open_or_create(cache, backend.fingerprint(batch_size=batch_size),
                                        meta={"kind": "each", **_timing_meta(protocol, warmup, runs), **(meta or {})})
    todo = [k for k in specs if k not in table]
    say = log or (lambda _m: None)
    if todo:
        say(f"latency: timing {len(todo)} models alone ({len(specs) - len(todo)} cached) with {backend!r}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_each_") as tmp:
        items = [(export_for(specs[k], backend, tmp, stem=f"m{n}", batch_size=batch_size), _shape(specs[k], batch_size))
                 for n, k in enumerate(todo)]
        done = 0

        def store(j: int, stats: TimingStats) -> None:
            nonlocal done
            table.put(todo[j], stats, meta=dict((entry_meta or {}).get(todo[j], {})))
            table.save(cache)
            done += 1
            if done % 20 == 0 or done == len(todo):
                say("latency: " + progress_line(done, len(todo), time.perf_counter() - t0, "measured"))

        measure_models(backend, items, protocol=protocol, warmup=warmup, runs=runs, on_done=store, names=todo)
    bad = untrusted_line(table, str(cache))
    if bad and todo:
        say(f"latency: warning: {bad}")
    return {k: table.stats(k) for k in specs}


def time_pair(backend: LatencyBackend, reference: Any, candidate: Any, shape: Sequence[int], *,
              protocol: Optional[TimingProtocol], warmup: Optional[int] = None, runs: Optional[int] = None,
              rounds: int = 3) -> Comparison:
    """A candidate against the reference: adaptive alternating rounds (a flagged pair is timed once more;
    if that is flagged too, both measurements' rounds are kept together), or ``rounds`` fixed rounds."""
    if protocol is None or not supports_protocol(backend):
        return measure_paired(backend, reference, candidate, shape, warmup=warmup, runs=runs or 100, rounds=rounds)
    p = protocol if warmup is None else protocol.replace(warmup=warmup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        pt = measure_paired(backend, reference, candidate, shape, protocol=p)
        if pt.flags:
            again = measure_paired(backend, reference, candidate, shape, protocol=p)
            pt = again if not again.flags else pt.extend(again)
    return pt


def pair_into_table(table: LatencyTable, save: Callable[[], None], backend: LatencyBackend, ref_key: str,
                    reference: tuple[Any, Any], candidates: Mapping[str, ModelFactory], *,
                    protocol: Optional[TimingProtocol], warmup: Optional[int] = None, runs: Optional[int] = None,
                    rounds: int = 3, batch_size: int = 1, entry_meta: Mapping[str, Mapping[str, Any]] | None = None,
                    log: Callable[[str], None] = lambda _m: None, what: str = "networks") -> None:
    """Time every candidate missing from `table` against the reference (:func:`time_pair`), save after each.

    A candidate's entry holds its best-round timing with the pair's flags, ``meta.delta_ms`` (median over
    rounds of candidate - reference), ``meta.delta_std_ms``, by the protocol ``meta.delta_ci_ms`` and the
    rounds; the reference's entry (``ref_key``) holds the median of its per-round statistics over every
    pair (``meta.round_stats``)."""
    from .builder import export_for, measure_models

    pending = [k for k in candidates if k not in table]
    if not pending and ref_key in table:
        return
    spec, variables = reference
    shape = _shape(spec, batch_size)
    ref_meta = dict((table.get(ref_key) or {}).get("meta") or {})
    round_stats: list[dict[str, float]] = list(ref_meta.get("round_stats", []))

    def put_ref(stats: Sequence[TimingStats]) -> None:
        round_stats.extend({s: float(getattr(r, s)) for s in ROUND_STATS} for r in stats)
        med = {s: float(np.median([r[s] for r in round_stats])) for s in ROUND_STATS}
        table.put(ref_key, {**med, "std": float(np.std([r["median"] for r in round_stats])), "count": len(round_stats)},
                  meta={**ref_meta, **(entry_meta or {}).get(ref_key, {}), "round_stats": round_stats[-400:]})

    if pending:
        log(f"latency: timing {len(pending)} {what} against the reference ({len(candidates) - len(pending)} "
            f"cached) with {backend!r}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_against_") as tmp:
        ref_model = export_for(spec, backend, tmp, variables=variables, stem="reference", batch_size=batch_size)
        if not round_stats:  # a reference entry even with nothing (left) to pair
            put_ref(measure_models(backend, [(ref_model, shape)], protocol=protocol, warmup=warmup, runs=runs))
            save()
        for n, key in enumerate(pending):
            cspec, cvars = candidates[key]()
            model = export_for(cspec, backend, tmp, variables=cvars, stem=f"candidate{n}", batch_size=batch_size)
            pt = time_pair(backend, ref_model, model, shape, protocol=protocol, warmup=warmup, runs=runs, rounds=rounds)
            put_ref(pt.rounds[0])
            meta = {**(entry_meta or {}).get(key, {}), "delta_ms": pt.delta_ms(), "delta_std_ms": pt.delta_std_ms(),
                    "reference_ms": float(np.median([r.median for r in pt.rounds[0]])), "rounds": len(pt.rounds[0])}
            ci = pt.delta_ci_ms()
            if ci is not None:
                meta["delta_ci_ms"] = list(ci)
            table.put(key, dataclasses.replace(pt.best(), flags=pt.flags, notes=pt.notes), meta=meta)
            save()
            if (n + 1) % 10 == 0 or n + 1 == len(pending):
                log("latency: " + progress_line(n + 1, len(pending), time.perf_counter() - t0, what))


def time_against(reference: tuple[Any, Any], candidates: Mapping[str, ModelFactory], cache: str | Path,
                 backend: LatencyBackend, *, batch_size: int = 1, protocol: Optional[TimingProtocol] = None,
                 warmup: Optional[int] = None, runs: Optional[int] = None, rounds: int = 3,
                 meta: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] | None = print) -> tuple[float, dict[str, tuple[float, float]]]:
    """(reference median ms, {key: (Δ ms, spread ms)}): each candidate (built lazily by its factory) is
    timed against the reference in alternating rounds (:func:`pair_into_table`); Δ is the median of the
    per-round differences (a slow spell moves it less than either model's own time), the spread their std.
    """
    cache = Path(cache)
    table = LatencyTable.open_or_create(
        cache, backend.fingerprint(batch_size=batch_size),
        meta={"kind": "against_reference", "reference": reference[0].name,
              **_timing_meta(protocol, warmup, runs, None if protocol is not None else rounds), **(meta or {})})
    say = log or (lambda _m: None)
    pair_into_table(table, lambda: table.save(cache), backend, REFERENCE_KEY, reference, candidates,
                    protocol=protocol, warmup=warmup, runs=runs, rounds=rounds, batch_size=batch_size, log=say)
    bad = untrusted_line(table, str(cache))
    if bad:
        say(f"latency: warning: {bad}")
    metas = {key: table.get(key)["meta"] for key in candidates}
    deltas = {key: (float(m["delta_ms"]), float(m["delta_std_ms"])) for key, m in metas.items()}
    return table.ms(REFERENCE_KEY, "median"), deltas
