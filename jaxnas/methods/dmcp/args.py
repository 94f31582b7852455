"""`search.args` of DMCP: validated with `jaxnas.config.config_from_dict(d, DMCPArgs, prefix='search.args')`.

Defaults are the original's MobileNetV2 settings (§3.4) where the size of the data does not matter;
epochs and LR warm-up are in epochs of whatever data the config loads (scale them for small data).
The supernet is the config's model at `model.width` (= the original's max_width).  Retraining uses
the config's `optim`, `schedule` and `train` sections.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from jaxnas.schema import Section


class DMCPArgs(Section):
    section = "search.args"

    # Search space (§3.1): channel groups of width_offset between min_width and model.width.
    min_width: float = 0.1
    width_offset: float = 0.1
    exclude_groups: tuple[str, ...] = ()      # width groups kept at full width
    channel_multiple: int = 1                 # 8: every candidate width a multiple of 8 (1: the original)
    # Search schedule (§3.3).
    epochs: float = 40.0                      # search epochs
    warmup_fraction: float = 0.5              # weights-only share of the search (start_train = max_iter // 2)
    batch_size: int | None = None             # None: data.batch_size
    max_steps: int | None = None              # stop the search early (smoke tests)
    seed: int | None = None                   # None: train.seed
    # Weight optimizer of the search (SGD nesterov; no decay on BN and biases).
    lr: float = 0.5                           # peak LR
    lr_start: float = 0.2                     # LR at the start of the linear warm-up
    lr_end: float = 0.08                      # cosine end LR
    lr_warmup_epochs: float = 0.8             # 1000 iterations of 1251 per ImageNet epoch at batch 1024
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None         # None: optim.weight_decay
    label_smoothing: float | None = None      # None: train.label_smoothing
    # Architecture optimizer (SGD on alpha, only after the warm-up).
    arch_lr: float = 0.5
    arch_lr_end: float = 0.1
    arch_momentum: float = 0.9
    arch_nesterov: bool = True
    arch_weight_decay: float = 0.0
    cost_weight: float = 0.1                  # lambda of the log_l1 cost loss
    alpha_init: float = 0.0                   # initial alpha of every gate (original: 0)
    alpha_init_to_target: bool = False        # instead: the common alpha whose expected cost is 0.975 x
                                              # the target (short searches cannot walk alpha there)
    random_prob_decay: float = 0.9999         # p(random width) *= this every random_prob_every steps
    random_prob_every: int = 10
    count_bias: bool = False                  # count bias MACs in the cost (jaxnas MACs do not)
    latency_stat: Literal["median", "mean", "p10", "min"] = "median"   # statistic of the latency table
    latency_smooth: bool = True               # bilinear least-squares fit of each layer's grid
    # Sampling (§3.3 step 3) and the final tolerance.
    sample: Literal["expected", "direct"] = "expected"   # which architecture to retrain
    num_samples: int = 5
    sample_tolerance: float = 0.01            # direct samples kept within ±1 % of the target
    max_sample_tries: int = 2000
    tolerance: float = 0.03                   # the chosen architecture is adjusted to within ±3 %
    calib_batches: int = 10                   # BN recalibration batches (all averaged)
    # Pipeline.
    warmup_from: str | None = None            # a search dir whose end-of-warm-up checkpoint seeds this
                                              # search (the warm-up does not depend on the target)
    retrain: bool = True
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    @model_validator(mode="after")
    def _check(self) -> "DMCPArgs":
        return self.checked(self.out_of_range({
            "min_width": "> 0", "channel_multiple": ">= 1", "width_offset epochs": "> 0",
            "warmup_fraction": "in [0, 1)",
            "lr arch_lr": "> 0", "lr_start lr_end arch_lr_end cost_weight lr_warmup_epochs arch_weight_decay": ">= 0",
            "sample_tolerance tolerance": "in (0, 1)",
            "num_samples max_sample_tries calib_batches log_every checkpoint_every keep_checkpoints random_prob_every":
                ">= 1",
            "batch_size max_steps": ">= 1 or null", "random_prob_decay": "in (0, 1]"}))
