"""End-to-end latency of a spec (+ weights) on a runtime: export to the runtime's format, then time it.

``measure_spec`` / ``measure_onnx`` time one network by the adaptive protocol (:mod:`latency.timing`:
the median to ±1 % at 95 %, or flagged) unless fixed ``runs`` are asked for.  ``compare_specs`` /
``compare_files`` time two or more networks in alternating rounds of one process and report each one's
time ratio to the first with its interval: the way to state a speed-up (two separate measurements can
differ by more than the speed-up when the machine's speed moves between them).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from latency.backends import get_backend
from latency.backends.base import compare
from latency.stats import TimingStats
from latency.timing import Comparison, TimingProtocol, TimingWarning


def _backend(backend: str, threads: int):
    return get_backend(backend, threads=threads) if backend not in ("tensorrt", "trt", "xla", "jax") \
        else get_backend(backend)


def _result(stats: TimingStats, backend, batch_size: int) -> dict[str, Any]:
    out = {"median_ms": stats.median, "mean_ms": stats.mean, "std_ms": stats.std, "p10_ms": stats.p10,
           "p90_ms": stats.p90, "min_ms": stats.min, "count": stats.count, "batch_size": batch_size,
           "fingerprint": backend.fingerprint(batch_size).to_dict()}
    if stats.confidence is not None:  # the adaptive protocol's report
        out.update(ci_ms=[stats.ci_low, stats.ci_high], confidence=stats.confidence, rel_ci=stats.rel_ci,
                   rounds=stats.rounds, capped=stats.capped, trusted=stats.trusted, flags=list(stats.flags),
                   notes=list(stats.notes))
    return out


def input_shape(spec, batch_size: int = 1) -> tuple[int, int, int, int]:
    return (batch_size, *spec.input_size, spec.in_channels)


def _time(be, model, shape, *, warmup: Optional[int], runs: Optional[int],
          protocol: Optional[TimingProtocol]) -> TimingStats:
    # The result dict carries the flags and `trusted`; callers print them, so no warning on top.
    if runs is not None and warmup is None:
        warmup = 20  # the fixed loop's warm-up before the protocol existed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        return be.measure(model, shape, warmup=warmup, runs=runs, protocol=protocol)


def measure_onnx(path: str | Path, spec, *, backend: str = "onnxruntime", threads: int = 1, batch_size: int = 1,
                 warmup: Optional[int] = None, runs: Optional[int] = None,
                 protocol: Optional[TimingProtocol] = None) -> dict[str, Any]:
    """Time an exported model file; ``runs`` given: the fixed loop (``warmup`` + ``runs``), else the protocol."""
    be = _backend(backend, threads)
    stats = _time(be, str(path), input_shape(spec, batch_size), warmup=warmup, runs=runs, protocol=protocol)
    return _result(stats, be, batch_size)


def measure_spec(spec, variables, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                 warmup: Optional[int] = None, runs: Optional[int] = None, workdir: str | Path | None = None,
                 protocol: Optional[TimingProtocol] = None) -> dict[str, Any]:
    """Median/mean/std/p10/p90 ms per batch of `spec` on `backend`, with the runtime's fingerprint; by the
    adaptive protocol also the interval (``ci_ms``), ``rounds``, ``capped``, ``trusted``, ``flags``."""
    shape = input_shape(spec, batch_size)
    if backend in ("xla", "jax"):
        import jax
        from jaxnas import models
        model = models.build_model(spec)
        be = get_backend("xla")
        fn = jax.jit(lambda x: model.apply(variables, x))
        return _result(_time(be, fn, shape, warmup=warmup, runs=runs, protocol=protocol), be, batch_size)
    import export
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if backend in ("tflite", "litert"):
            res = export.export_tflite(spec, variables, Path(tmp) / "model.tflite")
            be = get_backend("tflite", threads=threads)
        else:
            res = export.export_onnx(spec, variables, Path(tmp) / "model.onnx", batch_size=batch_size)
            be = _backend(backend, threads)
        stats = _time(be, str(res.path), shape, warmup=warmup, runs=runs, protocol=protocol)
        return _result(stats, be, batch_size)


Contenders = Union[Mapping[str, Any], Sequence[Any]]


def _named(contenders: Contenders, what: str) -> tuple[list[str], list[Any]]:
    if isinstance(contenders, Mapping):
        names, items = [str(k) for k in contenders], list(contenders.values())
    else:
        items = list(contenders)
        names = [f"{what}{i}" for i in range(len(items))]
    if len(items) < 2:
        raise ValueError(f"a comparison needs at least two {what}s, got {len(items)}")
    return names, items


def compare_files(files: Contenders, spec_or_shape: Any, *, backend: str = "onnxruntime", threads: int = 1,
                  batch_size: int = 1, protocol: Optional[TimingProtocol] = None) -> Comparison:
    """Already-exported models (paths; a mapping names them, the first is the reference) in alternating
    rounds.  ``spec_or_shape``: the spec whose input they take, or the input shape (one for all, or a
    list with one per model)."""
    names, items = _named(files, "model")
    shape = input_shape(spec_or_shape, batch_size) if hasattr(spec_or_shape, "input_size") else spec_or_shape
    be = _backend(backend, threads)
    return compare(be, [str(f) if isinstance(f, Path) else f for f in items], shape, protocol=protocol, names=names)


def compare_specs(contenders: Contenders, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                  protocol: Optional[TimingProtocol] = None, workdir: str | Path | None = None) -> Comparison:
    """``(spec, variables)`` pairs exported to the backend's format, then timed in alternating rounds.

    The first contender is the reference: ``result.speedup(j)`` is its time over contender j's, with
    ``result.speedup_ci(j)``; ``result.describe()`` says it in one line per contender."""
    from latency.builder import export_for

    names, items = _named(contenders, "net")
    be = _backend(backend, threads)
    with tempfile.TemporaryDirectory(prefix="jaxnas_compare_", dir=workdir) as tmp:
        models, shapes = [], []
        for i, (spec, variables) in enumerate(items):
            models.append(export_for(spec, be, tmp, variables=variables, stem=f"c{i}", batch_size=batch_size))
            shapes.append(input_shape(spec, batch_size))
        return compare(be, models, shapes, protocol=protocol, names=names)
