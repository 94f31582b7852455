"""End-to-end latency of a spec (+ weights) on a runtime: export to the runtime's format, then time it.

    m = measure_spec(spec, variables, "onnxruntime")          # a Measurement: m.median_ms, m.ci_ms, m.trusted
    c = compare_specs({"base": (spec_a, vars_a), "pruned": (spec_b, vars_b)})   # paired: c.speedup(), c.ratio

``measure_spec`` / ``measure_file`` time one network by the adaptive protocol (:mod:`latency.timing`:
the median to ±1 % at 95 %, or flagged) unless fixed ``runs`` are asked for.  ``compare_specs`` /
``compare_files`` time two or more networks in alternating rounds of one process and report each one's
speed-up over the first with its interval (a :class:`latency.timing.Comparison`): the way to state a
speed-up (two separate measurements can differ by more than the speed-up when the machine's speed moves
between them).
"""
from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .backends import get_backend
from .backends.base import compare, measure_paired
from .stats import Measurement, TimingStats
from .timing import DEFAULT_PROTOCOL, Comparison, TimingProtocol, TimingWarning

__all__ = ["Measurement", "Comparison", "input_shape", "measure_file", "measure_spec", "compare_files",
           "compare_specs"]


def input_shape(spec, batch_size: int = 1, layout: str = "NHWC") -> tuple[int, int, int, int]:
    """The input a file exported from `spec` takes (`layout`: the file's own, `ExportResult.layout`)."""
    if layout == "NCHW":
        return (batch_size, spec.in_channels, *spec.input_size)
    return (batch_size, *spec.input_size, spec.in_channels)


def _time(be, model, shape, *, warmup: Optional[int], runs: Optional[int],
          protocol: Optional[TimingProtocol]) -> TimingStats:
    # The Measurement carries the flags and `trusted`; callers print them, so no warning on top.
    if runs is not None and warmup is None:
        warmup = 20  # the fixed loop's warm-up before the protocol existed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        return be.measure(model, shape, warmup=warmup, runs=runs, protocol=protocol)


def _measurement(stats: TimingStats, be, batch_size: int) -> Measurement:
    return Measurement(stats, be.fingerprint(batch_size).to_dict(), batch_size)


def measure_file(path: str | Path, spec, *, backend: str = "onnxruntime", threads: int = 1, batch_size: int = 1,
                 warmup: Optional[int] = None, runs: Optional[int] = None,
                 protocol: Optional[TimingProtocol] = None, layout: str = "NHWC") -> Measurement:
    """Time an exported model file (`layout`: its input's, `ExportResult.layout`); ``runs`` given: the fixed
    loop (``warmup`` + ``runs``), else the protocol."""
    be = get_backend(backend, threads=threads)
    return _measurement(_time(be, str(path), input_shape(spec, batch_size, layout), warmup=warmup, runs=runs,
                              protocol=protocol), be, batch_size)


def measure_spec(spec, variables, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                 warmup: Optional[int] = None, runs: Optional[int] = None, workdir: str | Path | None = None,
                 protocol: Optional[TimingProtocol] = None) -> Measurement:
    """`spec` on `backend` (XLA times the jitted model; other runtimes an exported file, no parity check:
    timing does not depend on the weights' values): median/mean/std/p10/p90 ms per batch with the
    runtime's fingerprint; by the adaptive protocol also the interval, rounds, ``capped`` and flags."""
    from .builder import export_for

    be = get_backend(backend, threads=threads)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model = export_for(spec, be, tmp, variables=variables, batch_size=batch_size)
        return _measurement(_time(be, model, input_shape(spec, batch_size), warmup=warmup, runs=runs,
                                  protocol=protocol), be, batch_size)


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


def _compare(be, models: list[Any], shapes: Any, names: list[str], *, protocol: Optional[TimingProtocol],
             warmup: Optional[int], runs: Optional[int], rounds: Optional[int], batch_size: int) -> Comparison:
    """Adaptive alternating rounds, or with ``runs`` / ``rounds`` fixed ones (two models only)."""
    if runs is None and rounds is None:
        if warmup is not None:
            protocol = (protocol or DEFAULT_PROTOCOL).replace(warmup=warmup)
        return compare(be, models, shapes, protocol=protocol, names=names, batch_size=batch_size)
    if len(models) != 2:
        raise ValueError("fixed runs/rounds compare two models; the adaptive protocol compares any number")
    shape = shapes[0] if isinstance(shapes, list) else shapes
    c = measure_paired(be, models[0], models[1], shape, warmup=warmup, runs=runs, rounds=rounds,
                       batch_size=batch_size)
    return dataclasses.replace(c, names=tuple(names))


def compare_files(files: Contenders, spec_or_shape: Any, *, backend: str = "onnxruntime", threads: int = 1,
                  batch_size: int = 1, protocol: Optional[TimingProtocol] = None, warmup: Optional[int] = None,
                  runs: Optional[int] = None, rounds: Optional[int] = None, layout: str = "NHWC") -> Comparison:
    """Already-exported models (paths; a mapping names them, the first is the reference) in alternating
    rounds.  ``spec_or_shape``: the spec whose input they take (in `layout`), or the input shape (one for
    all, or a list with one per model)."""
    names, items = _named(files, "model")
    shape = input_shape(spec_or_shape, batch_size, layout) if hasattr(spec_or_shape, "input_size") else spec_or_shape
    return _compare(get_backend(backend, threads=threads), [str(f) if isinstance(f, Path) else f for f in items],
                    shape, names, protocol=protocol, warmup=warmup, runs=runs, rounds=rounds, batch_size=batch_size)


def compare_specs(contenders: Contenders, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                  protocol: Optional[TimingProtocol] = None, warmup: Optional[int] = None,
                  runs: Optional[int] = None, rounds: Optional[int] = None,
                  workdir: str | Path | None = None) -> Comparison:
    """``(spec, variables)`` pairs exported to the backend's format, then timed in alternating rounds.

    The first contender is the reference: ``result.speedup(j)`` is its time over contender j's, with
    ``result.speedup_ci(j)``; ``result.describe()`` says it in one line per contender."""
    from .builder import export_for

    names, items = _named(contenders, "net")
    be = get_backend(backend, threads=threads)
    with tempfile.TemporaryDirectory(prefix="jaxnas_compare_", dir=workdir) as tmp:
        models, shapes = [], []
        for i, (spec, variables) in enumerate(items):
            models.append(export_for(spec, be, tmp, variables=variables, stem=f"c{i}", batch_size=batch_size))
            shapes.append(input_shape(spec, batch_size))
        return _compare(be, models, shapes, names, protocol=protocol, warmup=warmup, runs=runs, rounds=rounds,
                        batch_size=batch_size)
