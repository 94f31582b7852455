"""Time many models, cached and resumable: each alone (`time_each`), or each against one reference in
alternating rounds (`time_against`).

Methods build the specs (a merged segment, a one-layer probe, ...) and get the timings back through
the latency oracle; this module knows nothing of any method. Results are kept in a `LatencyTable` JSON
cache that is saved after every entry, so an interrupted build resumes where it stopped; a cache from
another device/runtime or other settings is refused.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .backends import LatencyBackend, measure_paired
from .stats import TimingStats, progress_line
from .table import LatencyTable

__all__ = ["time_each", "time_against", "REFERENCE_KEY"]

REFERENCE_KEY = "reference"
ModelFactory = Callable[[], tuple[Any, Any]]  # () -> (spec, variables)


def _export(spec: Any, variables: Any, path: Path, batch_size: int) -> Path:
    from jaxnas.export import export_onnx

    return export_onnx(spec, variables, path, batch_size=batch_size, check=False).path


def _random_variables(spec: Any, seed: int) -> Any:
    from jaxnas.models import build_model, init_variables

    return init_variables(build_model(spec), seed)


def time_each(specs: Mapping[str, Any], cache: str | Path, backend: LatencyBackend, *, batch_size: int = 1,
              warmup: int = 20, runs: int = 100, meta: Mapping[str, Any] | None = None,
              entry_meta: Mapping[str, Mapping[str, Any]] | None = None,
              log: Callable[[str], None] | None = print) -> dict[str, TimingStats]:
    """{key: stats} of every spec timed alone (random weights; the weights' values do not change latency),
    measuring only what `cache` lacks."""
    cache = Path(cache)
    table = LatencyTable.open_or_create(cache, backend.fingerprint(batch_size=batch_size),
                                        meta={"kind": "each", "warmup": warmup, "runs": runs, **(meta or {})})
    todo = [k for k in specs if k not in table]
    say = log or (lambda _m: None)
    if todo:
        say(f"latency: timing {len(todo)} models alone ({len(specs) - len(todo)} cached) with {backend!r}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_each_") as tmp:
        for n, key in enumerate(todo):
            spec = specs[key]
            path = _export(spec, _random_variables(spec, n), Path(tmp) / "model.onnx", batch_size)
            stats = backend.measure(str(path), (batch_size, *spec.input_size, spec.in_channels), warmup=warmup,
                                    runs=runs)
            table.put(key, stats, meta=dict((entry_meta or {}).get(key, {})))
            table.save(cache)
            if (n + 1) % 20 == 0 or n + 1 == len(todo):
                say("latency: " + progress_line(n + 1, len(todo), time.perf_counter() - t0, "measured"))
    return {k: TimingStats.from_dict(table.get(k)) for k in specs}


def time_against(reference: tuple[Any, Any], candidates: Mapping[str, ModelFactory], cache: str | Path,
                 backend: LatencyBackend, *, batch_size: int = 1, warmup: int = 20, runs: int = 100,
                 rounds: int = 3, meta: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] | None = print) -> tuple[float, dict[str, tuple[float, float]]]:
    """(reference median ms, {key: (Δ ms, spread ms)}): each candidate (built lazily by its factory) is
    timed against the reference in `rounds` alternating rounds of `runs` runs; Δ is the median of the
    per-round differences (a slow spell moves it less than either model's own time), the spread their std.
    """
    spec, variables = reference
    cache = Path(cache)
    table = LatencyTable.open_or_create(
        cache, backend.fingerprint(batch_size=batch_size),
        meta={"kind": "against_reference", "reference": spec.name, "warmup": warmup, "runs": runs,
              "rounds": rounds, **(meta or {})})
    shape = (batch_size, *spec.input_size, spec.in_channels)
    todo = [k for k in candidates if k not in table]
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_against_") as tmp:
        ref_file = _export(spec, variables, Path(tmp) / "reference.onnx", batch_size)
        if REFERENCE_KEY not in table:
            table.put(REFERENCE_KEY, backend.measure(str(ref_file), shape, warmup=warmup, runs=runs * rounds))
            table.save(cache)
        if todo:
            say(f"latency: timing {len(todo)} networks against the reference ({len(candidates) - len(todo)} "
                f"cached) with {backend!r}")
        for n, key in enumerate(todo):
            cspec, cvars = candidates[key]()
            path = _export(cspec, cvars, Path(tmp) / "candidate.onnx", batch_size)
            pt = measure_paired(backend, str(ref_file), str(path), shape, warmup=warmup, runs=runs, rounds=rounds)
            table.put(key, pt.best, meta={"delta_ms": pt.delta_ms, "delta_std_ms": pt.delta_std_ms,
                                          "reference_ms": float(np.median([r.median for r in pt.reference]))})
            table.save(cache)
            if (n + 1) % 20 == 0 or n + 1 == len(todo):
                say("latency: " + progress_line(n + 1, len(todo), time.perf_counter() - t0, "networks"))
    out = {}
    for key in candidates:
        m = table.get(key)["meta"]
        out[key] = (float(m["delta_ms"]), float(m["delta_std_ms"]))
    return table.ms(REFERENCE_KEY, "median"), out
