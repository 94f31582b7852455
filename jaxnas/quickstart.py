"""The main job: train a small-input MobileNetV2 on the embedded Fashion-MNIST subset, evaluate it,
export it to ONNX and TFLite with parity checks, and measure it on onnxruntime (1 thread).

Same settings as `configs/quickstart.yaml` (a test keeps the two equal); kept in code so an installed
package runs it without the repository.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jaxnas.config import ExperimentConfig, config_from_dict

QUICKSTART = {
    "name": "quickstart",
    "data": {"source": "embedded", "name": "fashion_mnist", "image_size": 28, "holdout": 0.1, "augment": False,
             "flip": True, "batch_size": 128, "eval_batch_size": 500},
    "model": {"name": "mobilenet_v2", "width": 0.5, "small_input": True},
    "optim": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 4e-5},
    "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_start": 0.0, "end_value": 0.0},
    "train": {"epochs": 5, "seed": 0, "label_smoothing": 0.1, "log_every": 50, "eval_every_epochs": 1},
}


def quickstart_config(epochs: float | None = None) -> ExperimentConfig:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in QUICKSTART.items()}
    if epochs is not None:
        d["train"]["epochs"] = epochs
    return config_from_dict(d)


def run_quickstart(workdir: str | Path = "runs/quickstart", *, epochs: float | None = None,
                   export: bool = True) -> dict[str, Any]:
    from jaxnas.experiment import load_workdir, run_training, write_summary
    workdir = Path(workdir)
    t0 = time.time()
    run_training(quickstart_config(epochs), workdir)
    if export:
        from jaxnas import export as exporter
        from jaxnas.latency.measure import measure_onnx
        _, spec, variables = load_workdir(workdir)
        results = exporter.export_model(spec, variables, workdir / "export", ("onnx", "tflite"))
        onnx = results["onnx"]
        timing = measure_onnx(onnx.path, spec, threads=1)
        write_summary(workdir, {
            "onnx_path": str(onnx.path), "tflite_path": str(results["tflite"].path),
            "onnx_max_abs_diff": onnx.max_abs_diff, "tflite_max_abs_diff": results["tflite"].max_abs_diff,
            "latency_ms": timing["median_ms"], "latency": timing})
    return write_summary(workdir, {"total_seconds": round(time.time() - t0, 1)})
