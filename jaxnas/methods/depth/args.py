"""`search.args` of ``search.method: depth`` (light: the registry imports it without jax)."""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from jaxnas.schema import Section

__all__ = ["DepthArgs"]


class DepthArgs(Section):
    """`search.args` of ``search.method: depth``."""

    section = "search.args"

    baseline: str | None = None             # workdir with the trained base model's weights; None: train it
    baseline_epochs: float | None = None    # epochs of the baseline trained here (None: train.epochs)
    time_table: str | None = None           # T(st, end) CSV in ms; None: measured through the latency oracle
    # how `jaxnas search` measures T: "network" = the change of the whole network's latency when the
    # segment alone is merged (faithful on CPU runtimes); "alone" = each merged conv timed by itself (the
    # original's TensorRT tables; on onnxruntime it over-predicts speed-ups, see benchmarks/depth_table_fidelity.py)
    time_table_context: Literal["network", "alone"] = "network"
    importance_table: str | None = None     # raw importance CSV to use instead of measuring
    ext_importance_table: str | None = None  # I_opt CSV (skips measuring and normalising)
    time_fraction: float = 0.75             # T0 = fraction x Σ T(i, i+1) unless search.target_latency_ms
    prec: float | None = 20.0               # time discretisation, units per ms (None: T0 = 4000 units)
    alpha: float = 1.6                      # importance normalisation (1.6 MBV2-1.0, 1.2 MBV2-1.4, 1.4 VGG)
    norm: Literal["single", "all", "default"] = "single"
    score: Literal["val_acc", "train_acc"] = "val_acc"
    exclude_zeros: bool = True
    zero_acts: bool = True                  # False: (1, 1) segments only (the original's VGG tables)
    importance_steps: int = 50              # SGD steps per segment (the original: 1 epoch)
    importance_lr: float = 0.01
    importance_weight_decay: float = 1e-5
    importance_batch_size: int | None = None  # None: data.batch_size
    importance_eval_examples: int | None = None  # None: the whole held-out split
    importance_padding: Literal["rearrange", "same"] = "rearrange"
    importance_bn_momentum: float = 0.9
    finetune_epochs: float = 1.0
    finetune_lr: float | None = None        # None: optim.learning_rate
    distill: float = 0.0                    # KD weight with the baseline as teacher (the original's 0.3)
    check_tolerance: float = 1e-4           # merged vs unmerged max |logit difference|

    @model_validator(mode="after")
    def _check(self) -> "DepthArgs":
        return self.checked(self.out_of_range({
            "time_fraction prec": "> 0", "importance_steps finetune_epochs": ">= 0", "distill": "in [0, 1)",
            "importance_batch_size importance_eval_examples": ">= 1 or null"}))
