"""`search.args` of TF-NAS (validated by the runner with `TfnasArgs`).

Defaults are the original's `train_search.py` / example.sh (ImageNet-100, 90 epochs, batch 32, 15 ms on the
GPU table) where the data's size does not matter; epochs are epochs of whatever data the config loads.
The space is a built-in TF-NAS space sized to the data (resolution, channels, classes); `width`,
`small_input`, `last_channels` and `max_depths` override the built-in's.  The search's target is
`search.target_latency_ms`, on the scale of the table (ms per batch of `latency.batch_size`).  The parsed
network is retrained with the config's `optim`, `schedule` and `train` sections (the original's final
training recipe is a config: configs/tfnas/imagenet_train.yaml), with `dropout` before the classifier and
per-block `drop_connect` from here.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from jaxnas.schema import Section


class TfnasArgs(Section):
    section = "search.args"

    # Space (§4.1).
    space: str = "tfnas-small"                # built-in: tfnas-224 (the original) | tfnas-small (28-32 px)
    width: float | None = None                # channel multiplier (make_divisible(c * width, 8))
    small_input: bool | None = None           # stride-1 first stem
    last_channels: int | None = None          # feature-mix width
    max_depths: tuple[int, ...] | None = None  # keep the first n blocks of each stage (6 numbers)
    # Target: search.target_latency_ms (ms per batch, on the table's scale), or instead this fraction of the
    # way from the table's narrowest to its widest network (a machine-independent target for quick runs).
    target_fraction: float | None = None
    # Latency table (§4.4).
    lookup_table: str | None = None           # a TF-NAS table to use as is: the original's pickle
                                              # (latency_pkl/*.pkl) or a table JSON; else the latency oracle
                                              # builds one for the space (or uses latency.table)
    lookup_device: str = "unknown"            # for a pickle: where it was measured (e.g. "Titan RTX")
    lookup_batch_size: int | None = None      # for a pickle: its batch size (GPU table 32, CPU table 1)
    table_context: Literal["alone", "network"] = "network"  # how a built table times blocks
    table_stat: Literal["median", "mean", "p10", "min"] = "median"
    # Search (§4.2-4.3).
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int | None = 32               # None: data.batch_size
    lambda_lat: float = 0.1
    w_lr: float = 0.025
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-5
    a_lr: float = 0.01
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_weight_decay: float = 5e-4
    grad_clip: float = 5.0
    tau: float = 5.0
    tau_decay: float = 0.96
    arch_every: int = 2
    reset_optimizers: bool = True             # re-create both optimisers every epoch (the original)
    channel_multiple: int = 1                 # 8 keeps every searched width a multiple of 8 (CPU runtimes'
                                              # blocked kernels; 1: the original's any width)
    seed: int | None = 2                      # None: train.seed
    max_steps: int | None = None              # stop the search early (smoke tests)
    final_fit: bool = True                    # after parsing: greedy width steps to the table latency
                                              # closest to the target, and depths repaired where no width
                                              # fits (not in the original, whose last uniform step can leave
                                              # the net a few % off; false: the original's parse)
    rebase_table: bool = False                # before the final fit: time the network table's reference
                                              # network now and fit on the table scaled by now / as built
                                              # (a machine drifts several % in an hour; rebase.py)
    rebase_rounds: int = 15                   # timings of the reference (median of their table_stat),
    rebase_window_s: float = 45.0             # spread over this many seconds (speed wanders over tens of s)
    # Retraining of the parsed network (the original's train_eval.py: 0.2 / 0.2).
    dropout: float = 0.0
    drop_connect: float = 0.0
    retrain: bool = True
    # Bookkeeping.
    log_every: int = 50
    checkpoint_every: int = 200
    keep_checkpoints: int = 2

    @model_validator(mode="after")
    def _check(self) -> "TfnasArgs":
        errors = self.out_of_range({"epochs rebase_rounds arch_every log_every checkpoint_every keep_checkpoints":
                                    ">= 1"})
        if not 0 <= self.warmup_epochs < self.epochs:
            errors.append(f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs} "
                          "(the architecture is trained after the warm-up)")
        return self.checked(errors + self.out_of_range({
            "w_lr a_lr tau grad_clip": "> 0", "lambda_lat w_weight_decay a_weight_decay w_momentum": ">= 0",
            "a_beta1 a_beta2 dropout drop_connect": "in [0, 1)", "channel_multiple": "in [1, 64]",
            "rebase_window_s": ">= 0", "tau_decay": "in (0, 1]",
            "batch_size max_steps last_channels lookup_batch_size": ">= 1 or null", "target_fraction": "in (0, 1)",
            "width": "> 0"}))
