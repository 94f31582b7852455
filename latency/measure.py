"""End-to-end latency of a spec (+ weights) on a runtime: export to the runtime's format, then time it.

    m = measure_spec(spec, variables, "onnxruntime", threads=1)      # a Measurement
    c = compare_specs((spec_a, vars_a), (spec_b, vars_b), "onnxruntime", rounds=5)   # paired, c.ratio
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxnas.latency.backends import get_backend, measure_paired
from jaxnas.latency.stats import TimingStats

__all__ = ["Measurement", "Comparison", "input_shape", "measure_file", "measure_spec", "compare_files",
           "compare_specs", "export_for_backend"]


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Milliseconds per batch of one model on one runtime, with the runtime's fingerprint."""

    stats: TimingStats
    fingerprint: dict[str, Any]
    batch_size: int

    @property
    def median_ms(self) -> float:
        return self.stats.median

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {"median_ms": s.median, "mean_ms": s.mean, "std_ms": s.std, "p10_ms": s.p10, "p90_ms": s.p90,
                "min_ms": s.min, "count": s.count, "batch_size": self.batch_size, "fingerprint": self.fingerprint}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two models timed in alternating rounds in one session; `ratio` = a / b (median of the per-round
    ratios: a slow spell that hits one round moves it less than it moves either model's own time)."""

    a: Measurement
    b: Measurement
    ratios: tuple[float, ...]

    @property
    def ratio(self) -> float:
        return float(np.median(self.ratios))

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "round_ratios": list(self.ratios), "rounds": len(self.ratios),
                "a": self.a.to_dict(), "b": self.b.to_dict()}


def input_shape(spec, batch_size: int = 1) -> tuple[int, int, int, int]:
    return (batch_size, *spec.input_size, spec.in_channels)


def _backend(name: str, threads: int):
    return get_backend(name, threads=threads)  # xla / tensorrt refuse a count they cannot honour


def _is_tflite(backend: str) -> bool:
    return backend in ("tflite", "litert", "tfl")


def export_for_backend(spec, variables, backend: str, directory: str | Path, *, batch_size: int = 1,
                       name: str = "model") -> Path:
    """The file `backend` times: a .tflite for LiteRT, an ONNX file otherwise (no parity check: the
    deploy step checks parity of what it ships; timing does not depend on the weights' values)."""
    from jaxnas import export

    directory = Path(directory)
    if _is_tflite(backend):
        return export.export_tflite(spec, variables, directory / f"{name}.tflite", check=False).path
    return export.export_onnx(spec, variables, directory / f"{name}.onnx", batch_size=batch_size, check=False).path


def measure_file(path: str | Path, spec, *, backend: str = "onnxruntime", threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, runs: int = 100) -> Measurement:
    be = _backend(backend, threads)
    stats = be.measure(str(path), input_shape(spec, batch_size), warmup=warmup, runs=runs)
    return Measurement(stats, be.fingerprint(batch_size).to_dict(), batch_size)


def measure_spec(spec, variables, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, runs: int = 100, workdir: str | Path | None = None) -> Measurement:
    """`spec` on `backend`: XLA times the jitted model; other runtimes time an exported file."""
    if backend in ("xla", "jax"):
        import jax

        from jaxnas import models
        model = models.build_model(spec)
        be = get_backend("xla", threads=threads)
        fn = jax.jit(lambda x: model.apply(variables, x))
        stats = be.measure(fn, input_shape(spec, batch_size), warmup=warmup, runs=runs)
        return Measurement(stats, be.fingerprint(batch_size).to_dict(), batch_size)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = export_for_backend(spec, variables, backend, tmp, batch_size=batch_size)
        return measure_file(path, spec, backend=backend, threads=threads, batch_size=batch_size, warmup=warmup,
                            runs=runs)


def compare_files(a: str | Path, b: str | Path, spec, *, backend: str = "onnxruntime", threads: int = 1,
                  batch_size: int = 1, warmup: int = 20, runs: int = 100, rounds: int = 5) -> Comparison:
    """Two model files with the same input timed in `rounds` alternating rounds (a, then b)."""
    be = _backend(backend, threads)
    pt = measure_paired(be, str(b), str(a), input_shape(spec, batch_size), warmup=warmup, runs=runs, rounds=rounds)
    fp = be.fingerprint(batch_size).to_dict()
    ratios = tuple(c.median / r.median for r, c in zip(pt.reference, pt.candidate))
    return Comparison(Measurement(_median_round(pt.candidate), fp, batch_size),
                      Measurement(_median_round(pt.reference), fp, batch_size), ratios)


def compare_specs(a: tuple[Any, Any], b: tuple[Any, Any], backend: str = "onnxruntime", *, threads: int = 1,
                  batch_size: int = 1, warmup: int = 20, runs: int = 100, rounds: int = 5) -> Comparison:
    """(spec, variables) a against b, exported and timed in alternating rounds in one session."""
    if a[0].input_size != b[0].input_size or a[0].in_channels != b[0].in_channels:
        raise ValueError("compared networks need the same input shape")
    with tempfile.TemporaryDirectory() as tmp:
        pa = export_for_backend(a[0], a[1], backend, tmp, batch_size=batch_size, name="a")
        pb = export_for_backend(b[0], b[1], backend, tmp, batch_size=batch_size, name="b")
        return compare_files(pa, pb, a[0], backend=backend, threads=threads, batch_size=batch_size,
                             warmup=warmup, runs=runs, rounds=rounds)


def _median_round(rounds: Sequence[TimingStats]) -> TimingStats:
    return sorted(rounds, key=lambda s: s.median)[len(rounds) // 2]
