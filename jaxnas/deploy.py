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


_RUNTIME_FORMATS = {"tflite": "tflite", "litert": "tflite", "tfl": "tflite", "tensorrt": "tensorrt", "trt": "tensorrt",
                    "xla": "xla", "jax": "xla"}


def runtime_format(backend: str) -> str:
    """The file format a latency backend times (onnx for any other backend)."""
    return _RUNTIME_FORMATS.get(backend.lower(), "onnx")


@dataclasses.dataclass
class DeployResult:
    """What `deploy` made: the exported files (`ExportResult` per format), the measurement of the shipped
    model (`Measurement`), and the paired comparison with a baseline (`Comparison`: the baseline first,
    `.ratio` = baseline / model, with `.speedup_ci()`)."""

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
            ci = c.speedup_ci()
            out.update(speedup=c.ratio, speedup_ci=list(ci) if ci else None, baseline_latency_ms=c.a.median_ms,
                       paired_latency_ms=c.b.median_ms, speedup_rounds=list(c.ratios), speedup_flags=list(c.flags))
        return out

    def describe(self) -> str:
        parts = [f"{fmt} {r.path} (max |diff| {r.max_abs_diff:.1e})" for fmt, r in self.exports.items()]
        if self.latency is not None:
            fp = self.latency.fingerprint
            parts.append(f"{self.latency.median_ms:.3f} ms on {fp.get('backend', '?')} "
                         f"({fp.get('threads', '?')} thread(s), batch {self.latency.batch_size})"
                         + ("" if self.latency.trusted else f", UNTRUSTED: {'; '.join(self.latency.stats.flags)}"))
        if self.comparison is not None:
            c = self.comparison
            ci = c.speedup_ci()
            parts.append(f"{c.ratio:.2f}x faster than the baseline (paired, {len(c.ratios)} rounds"
                         + (f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if ci else "") + ")"
                         + (f", UNTRUSTED: {'; '.join(c.flags)}" if c.flags else ""))
        return "; ".join(parts)


def deploy(spec: Any, variables: Any, export: ExportConfig | None, latency: LatencyConfig | None, *,
           out_dir: str | Path | None, baseline: tuple[Any, Any] | None = None, compare_rounds: int | None = None,
           dynamic_batch: bool = False, precision: str = "fp32",
           log: Callable[[str], None] | None = None) -> DeployResult:
    """Export `spec` + `variables` to `export.formats` in `out_dir` (parity-checked, atomic), then with a
    `latency` section time the file the runtime runs (exported here if not among the formats); with a
    `baseline` (spec, variables), time both in alternating rounds: by the latency section's adaptive
    protocol until the speed-up's interval is within its `rel_ci`, or with fixed `runs` in `compare_rounds`
    (default 5) rounds.

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
                                            input_layout=export.input_layout, tolerance=export.tolerance)
        export = export if export is not None else ExportConfig()
        result = DeployResult(dict(results))
        if latency is None:
            return result
        fmt = runtime_format(latency.backend)
        kw = dict(backend=latency.backend, threads=latency.threads, batch_size=latency.batch_size,
                  warmup=latency.warmup, runs=latency.runs, protocol=latency.protocol())
        if fmt == "xla":
            result.latency = measure_spec(spec, variables, **kw)
            return result
        shipped = results.get(fmt)
        needs_batch = fmt == "onnx" and latency.batch_size != 1 and not dynamic_batch

        def timing_export(net: tuple[Any, Any], name: str) -> Any:
            return exporter.export_model(net[0], net[1], Path(tmp) / name, (fmt,), route=export.route,
                                         precision=precision, tolerance=export.tolerance,
                                         input_layout=export.input_layout,
                                         dynamic_batch=dynamic_batch or needs_batch)[fmt]

        timed = timing_export((spec, variables), "timed") if shipped is None or needs_batch else shipped
        if log:
            log(f"deploy: timing {timed.path} on {latency.backend}")
        kw["layout"] = timed.layout  # the timed file's own input (NCHW files take NCHW arrays)
        result.latency = measure_file(timed.path, spec, **kw)
        if baseline is not None:
            base = timing_export(baseline, "baseline")
            rounds = None if latency.runs is None else (compare_rounds or 5)
            if log:
                log(f"deploy: timing it against the baseline in {rounds or 'adaptive'} alternating rounds")
            result.comparison = compare_files({"baseline": base.path, "model": timed.path}, spec, rounds=rounds, **kw)
        return result
