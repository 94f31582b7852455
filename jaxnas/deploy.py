"""Deploy: export a spec + weights to the configured formats (each parity-checked), then measure the
shipped file on the configured runtime — and, given a baseline, both timed in alternating rounds.

The one "export, then measure" path: the pipeline's last step, `jaxnas export` and `jaxnas latency
measure` all call `deploy`.

    result = deploy(spec, variables, cfg.export, cfg.latency, out_dir=workdir / "export")
    result.latency.median_ms, result.exports["onnx"].max_abs_diff, result.summary()
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable

from jaxnas.export.config import ExportConfig
from jaxnas.latency.config import LatencyConfig

__all__ = ["deploy", "DeployResult", "runtime_format"]


def runtime_format(backend: str) -> str:
    """The file format a latency backend times."""
    key = backend.lower()
    if key in ("tflite", "litert", "tfl"):
        return "tflite"
    if key in ("tensorrt", "trt"):
        return "tensorrt"
    if key in ("xla", "jax"):
        return "xla"
    return "onnx"


@dataclasses.dataclass
class DeployResult:
    """What `deploy` made: the exported files (`ExportResult` per format), the measurement of the shipped
    model, and the paired comparison with a baseline (`Comparison`, ratio = baseline / model)."""

    exports: dict[str, Any]
    latency: Any | None = None
    comparison: Any | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fmt, r in self.exports.items():
            out[f"{fmt}_path"] = str(r.path)
            out[f"{fmt}_max_abs_diff"] = r.max_abs_diff
        if self.latency is not None:
            out["latency_ms"] = self.latency.median_ms
            out["latency"] = self.latency.to_dict()
        if self.comparison is not None:
            c = self.comparison
            out.update(speedup=c.ratio, baseline_latency_ms=c.a.median_ms, paired_latency_ms=c.b.median_ms,
                       speedup_rounds=list(c.ratios))
        return out

    def describe(self) -> str:
        parts = [f"{fmt} {r.path} (max |diff| {r.max_abs_diff:.1e})" for fmt, r in self.exports.items()]
        if self.latency is not None:
            fp = self.latency.fingerprint
            parts.append(f"{self.latency.median_ms:.3f} ms on {fp.get('backend', '?')} "
                         f"({fp.get('threads', '?')} thread(s), batch {self.latency.batch_size})")
        if self.comparison is not None:
            parts.append(f"{self.comparison.ratio:.2f}x faster than the baseline (paired, "
                         f"{len(self.comparison.ratios)} rounds)")
        return "; ".join(parts)


def deploy(spec: Any, variables: Any, export: ExportConfig | None, latency: LatencyConfig | None, *,
           out_dir: str | Path | None, baseline: tuple[Any, Any] | None = None, compare_rounds: int = 5,
           dynamic_batch: bool = False, precision: str = "fp32",
           log: Callable[[str], None] | None = None) -> DeployResult:
    """Export `spec` + `variables` to `export.formats` in `out_dir` (parity-checked, atomic), then with a
    `latency` section time the file the runtime runs (exported here if not among the formats); with a
    `baseline` (spec, variables), time both in `compare_rounds` alternating rounds.

    `export=None` ships no files (a measurement alone: the timed file is exported, parity-checked, into a
    temporary directory).
    """
    from jaxnas import export as exporter
    from jaxnas.latency.measure import compare_files, measure_file, measure_spec
    from jaxnas.runtime.quiet import native_stderr_quiet

    with tempfile.TemporaryDirectory(prefix="jaxnas_deploy_") as tmp, native_stderr_quiet():
        results = {}
        if export is not None:
            results = exporter.export_model(spec, variables, Path(out_dir), tuple(export.formats), route=export.route,
                                            precision=precision, dynamic_batch=dynamic_batch,
                                            tolerance=export.tolerance)
        export = export if export is not None else ExportConfig()
        result = DeployResult(dict(results))
        if latency is None:
            return result
        fmt = runtime_format(latency.backend)
        kw = dict(backend=latency.backend, threads=latency.threads, batch_size=latency.batch_size,
                  warmup=latency.warmup, runs=latency.runs)
        if fmt == "xla":
            result.latency = measure_spec(spec, variables, **kw)
            return result
        shipped = results.get(fmt)
        needs_batch = fmt == "onnx" and latency.batch_size != 1 and not dynamic_batch
        if shipped is None or needs_batch:
            timed = exporter.export_model(spec, variables, Path(tmp) / "timed", (fmt,), route=export.route,
                                          precision=precision, tolerance=export.tolerance,
                                          dynamic_batch=dynamic_batch or needs_batch)[fmt]
        else:
            timed = shipped
        if log:
            log(f"deploy: timing {timed.path} on {latency.backend}")
        result.latency = measure_file(timed.path, spec, **kw)
        if baseline is not None:
            base = exporter.export_model(baseline[0], baseline[1], Path(tmp) / "baseline", (fmt,),
                                         route=export.route, precision=precision, tolerance=export.tolerance,
                                         dynamic_batch=dynamic_batch or needs_batch)[fmt]
            if log:
                log(f"deploy: timing it against the baseline in {compare_rounds} alternating rounds")
            result.comparison = compare_files(base.path, timed.path, spec, rounds=compare_rounds, **kw)
        return result
