"""End-to-end latency of a spec (+ weights) on a runtime: export to the runtime's format, then time it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from jaxnas.latency.backends import get_backend
from jaxnas.latency.stats import TimingStats


def _result(stats: TimingStats, backend, batch_size: int) -> dict[str, Any]:
    return {"median_ms": stats.median, "mean_ms": stats.mean, "std_ms": stats.std, "p10_ms": stats.p10,
            "p90_ms": stats.p90, "min_ms": stats.min, "count": stats.count, "batch_size": batch_size,
            "fingerprint": backend.fingerprint(batch_size).to_dict()}


def input_shape(spec, batch_size: int = 1) -> tuple[int, int, int, int]:
    return (batch_size, *spec.input_size, spec.in_channels)


def measure_onnx(path: str | Path, spec, *, backend: str = "onnxruntime", threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, runs: int = 100) -> dict[str, Any]:
    be = get_backend(backend, threads=threads) if backend != "tensorrt" else get_backend(backend)
    stats = be.measure(str(path), input_shape(spec, batch_size), warmup=warmup, runs=runs)
    return _result(stats, be, batch_size)


def measure_spec(spec, variables, backend: str = "onnxruntime", *, threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, runs: int = 100, workdir: str | Path | None = None) -> dict[str, Any]:
    """Median/mean/std/p10/p90 ms per batch of `spec` on `backend`, with the runtime's fingerprint."""
    shape = input_shape(spec, batch_size)
    if backend in ("xla", "jax"):
        import jax
        from jaxnas import models
        model = models.build_model(spec)
        be = get_backend("xla")
        fn = jax.jit(lambda x: model.apply(variables, x))
        return _result(be.measure(fn, shape, warmup=warmup, runs=runs), be, batch_size)
    from jaxnas import export
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if backend in ("tflite", "litert"):
            res = export.export_tflite(spec, variables, Path(tmp) / "model.tflite")
            be = get_backend("tflite", threads=threads)
        else:
            res = export.export_onnx(spec, variables, Path(tmp) / "model.onnx", batch_size=batch_size)
            be = get_backend(backend, threads=threads) if backend != "tensorrt" else get_backend(backend)
        stats = be.measure(str(res.path), shape, warmup=warmup, runs=runs)
        return _result(stats, be, batch_size)
