"""`jaxnas search CONFIG`: run the configured method, then export and measure what it found.

This is the application layer: it may import `export` and `latency` (methods may not); it builds the
latency tables a method asks for, hands them over as plain objects, and measures the results on the
configured runtime.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jaxnas.config import ConfigError, ExperimentConfig, save_resolved_config
from jaxnas.experiment import write_summary

METHODS = ("dmcp", "depth")


def _measure(spec, variables, cfg: ExperimentConfig, workdir: Path, tag: str) -> dict[str, Any]:
    import export
    from latency.measure import measure_onnx
    out = workdir / "export" / tag
    res = export.export_model(spec, variables, out, ("onnx",), route=cfg.export.route,
                              tolerance=cfg.export.tolerance)["onnx"]
    timing = measure_onnx(res.path, spec, backend=cfg.latency.backend, threads=cfg.latency.threads,
                          batch_size=cfg.latency.batch_size, warmup=cfg.latency.warmup, runs=cfg.latency.runs)
    return {"onnx_path": str(res.path), "max_abs_diff": res.max_abs_diff, "latency": timing,
            "latency_ms": timing["median_ms"]}


def run_search(cfg: ExperimentConfig, workdir: str | Path) -> dict[str, Any]:
    method = cfg.search.method
    if method not in METHODS:
        raise ConfigError(f"search.method: '{method}' has no pipeline here (available: {', '.join(METHODS)})")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, workdir)
    t0 = time.time()
    if method == "dmcp":
        summary = _run_dmcp(cfg, workdir)
    else:
        summary = _run_depth(cfg, workdir)
    summary["search_seconds"] = round(time.time() - t0, 1)
    return write_summary(workdir, summary)


def _run_dmcp(cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    from jaxnas import dmcp_bridge
    return dmcp_bridge.run(cfg, workdir, _measure)


def _run_depth(cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    from jaxnas import depth_bridge
    return depth_bridge.run(cfg, workdir, _measure)
