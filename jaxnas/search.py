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
    from jaxnas import export
    from jaxnas.latency.measure import measure_onnx
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
    from jaxnas import experiment
    from jaxnas import spec as S
    from jaxnas.methods import dmcp
    from jaxnas.train import load_variables
    dataset = experiment.load_data(cfg)
    table = None
    if cfg.search.target_latency_ms is not None:
        # The method sees latency only through this table: per-layer timings on a channel grid.
        from jaxnas.config import config_from_dict
        from jaxnas.methods.dmcp.args import DMCPArgs
        from jaxnas.latency.layer_grid import build_layer_grid
        args = config_from_dict(cfg.search.args, DMCPArgs, prefix="search.args")
        supernet = experiment.build_spec(cfg, dataset.num_classes, dataset.image_shape)
        table = build_layer_grid(supernet, cfg.latency.backend, out_path=workdir / "latency_grid.json",
                                 channel_multiple=args.channel_multiple,
                                 threads=cfg.latency.threads)
    result = dmcp.run(cfg, workdir, latency_table=table, dataset=dataset)
    spec = S.ArchSpec.load(result["arch_path"])
    variables = load_variables(str(result["retrain_dir"])) if result.get("retrain_dir") else None
    summary = {**result, "achieved": {"macs": result["achieved_macs"]}}
    if variables is not None:
        measured = _measure(spec, variables, cfg, workdir, "dmcp")
        summary.update(latency_ms=measured["latency_ms"], latency=measured["latency"],
                       onnx_path=measured["onnx_path"])
        summary["achieved"]["latency_ms"] = measured["latency_ms"]
    return summary


def depth_time_table_fn(cfg: ExperimentConfig, workdir: Path, log=print):
    """T(st, end) measured on `cfg.latency`'s runtime, as the depth pipeline's `time_table_fn`.

    ``search.args.time_table_context: network`` (default) times the baseline with each segment merged
    against the baseline (`latency.segment_network`); ``alone`` times each merged conv by itself,
    followed by the body's own activation (ReLU6 for MobileNetV2), as the original did.
    """
    from jaxnas import spec as S
    from jaxnas.config import config_from_dict
    from jaxnas.methods.depth.mergeable import body_of
    from jaxnas.methods.depth.pipeline import DepthArgs
    from jaxnas.latency.segment_network import build_network_time_table
    from jaxnas.latency.segment_table import build_time_table
    lat = cfg.latency
    context = config_from_dict(cfg.search.args, DepthArgs, prefix="search.args").time_table_context

    def time_table_fn(chain, out_csv):
        base = S.ArchSpec.load(workdir / "baseline_arch.json")
        if context == "network":
            return build_network_time_table(base, out_csv, backend=lat.backend, threads=lat.threads,
                                            batch_size=lat.batch_size, warmup=lat.warmup, runs=lat.runs, log=log)
        return build_time_table(chain, out_csv, act=body_of(base).act, backend=lat.backend, threads=lat.threads,
                                batch_size=lat.batch_size, warmup=lat.warmup, runs=lat.runs, log=log)

    return time_table_fn


def _run_depth(cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    from jaxnas import spec as S
    from jaxnas.methods.depth import pipeline
    from jaxnas.train import load_variables

    result = pipeline.run(cfg, workdir, time_table_fn=depth_time_table_fn(cfg, workdir))
    base = _measure(S.ArchSpec.load(result["baseline_spec"]), load_variables(str(result["baseline_variables"])),
                    cfg, workdir, "baseline")
    merged = _measure(S.ArchSpec.load(result["arch"]), load_variables(str(result["variables"])), cfg, workdir,
                      "merged")
    return {**result, "baseline_latency_ms": base["latency_ms"], "latency_ms": merged["latency_ms"],
            "speedup": base["latency_ms"] / merged["latency_ms"], "onnx_path": merged["onnx_path"],
            "baseline_onnx_path": base["onnx_path"], "latency": merged["latency"],
            "baseline_latency": base["latency"]}
