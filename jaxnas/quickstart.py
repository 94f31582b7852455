"""The main job: train a small-input MobileNetV2 on the embedded Fashion-MNIST subset, evaluate it,
export it to ONNX and TFLite with parity checks, and measure it on onnxruntime (1 thread).

Same settings as `configs/quickstart.yaml` (a test keeps the two equal); kept in code so an installed
package runs it without the repository.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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
                   export: bool = True, log: Callable[[str], None] | None = print,
                   allow_config_change: bool = False) -> dict[str, Any]:
    """The main job through the one pipeline: train, evaluate, export (ONNX + TFLite), measure."""
    from jaxnas.pipeline import run

    return run(quickstart_config(epochs), workdir, deploy=export, log=log, allow_config_change=allow_config_change)
