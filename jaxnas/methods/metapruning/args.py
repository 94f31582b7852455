"""`search.args` of MetaPruning (a `jaxnas.schema.Section`: unknown keys and bad values are refused with
one line each before anything runs).  Defaults are the original's MobileNetV2 settings (§2.3, §2.4).

The space comes from `space` (default: the config's `model.name`); resolution, classes and input channels
from the data, `small_input` from `model.small_input`.  The target is the config's `search.target_macs`
(counted by `macs_counter`) or `search.target_latency_ms` (predicted from a per-layer latency grid of
the widest network on the configured runtime); `min_macs` / `min_latency_ms` make it a window (ResNet-50:
[1950, 2050] M).  Retraining uses the config's `optim`, `schedule` and `train` sections.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from jaxnas.methods.metapruning.space import NUM_SCALES
from jaxnas.schema import Section

SCHEDULES = ("linear_epoch", "multistep_epoch", "linear")


class MetaPruningArgs(Section):
    section = "search.args"

    # Space.
    space: Literal["mobilenet_v2", "mobilenet_v1", "resnet50"] | None = None   # None: model.name
    width_mult: float = 1.0             # scales every base width (1.0: the original's space)
    channel_multiple: int = 1           # every width rounded to a multiple of this (1: the original); 8 keeps
                                        # onnxruntime/CPU on its fast blocked kernels (see space.get_space)
    residual_rule: Literal["base", "pruned"] = "base"   # of the retrained network (module `space`)
    # PruningNet training (§2.4: MobileNets 64 epochs, batch 512, lr 0.25; ResNet 32 / 256 / 0.1, multistep).
    epochs: float = 64.0
    batch_size: int | None = None       # None: data.batch_size
    lr: float = 0.25
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0           # MBV2 0 (the default), MBV1 4e-5, ResNet 1e-4: generators + classifier
    label_smoothing: float = 0.1
    schedule: Literal["linear_epoch", "multistep_epoch", "linear"] = "linear_epoch"
    gamma: float = 0.1                  # multistep factor
    seed: int | None = None             # None: train.seed
    max_steps: int | None = None        # stop PruningNet training early (smoke tests)
    eval_every_epochs: float = 1.0      # PruningNet validation on the held-out split (0: never)
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # Evolution (§2.3).
    population: int = 50
    select_num: int = 50
    top_k: int = 10
    mutation_num: int = 25
    mutation_prob: float = 0.1
    crossover_num: int = 25
    max_iters: int = 20
    mutation_rounds: int = 10
    crossover_tries: int = 10
    random_range: tuple[int, int] | None = None   # None: the space's ([12, 24) for ResNet-50, else [0, 31))
    random_tries: int = 100_000
    # Fitness: BN recalibration over training batches with training augmentation, then held-out top-1 error
    # (the original) or mean cross-entropy ("loss": a finer statistic on a small held-out split; fitness.py).
    fitness: Literal["error", "loss"] = "error"
    calib_batches: int = 100
    calib_batch_size: int | None = None          # None: data.batch_size (the original: 1000)
    recalib_momentum: float | None = 0.1         # PyTorch EMA from (0, 1) as the original; null: exact average
    eval_batch_size: int | None = None           # None: data.eval_batch_size
    candidates_per_call: int = 1                 # > 1: vectorise the evaluation over this many candidates
    eval_batch: int = 10                         # candidates per evaluation round (the cache is saved after each)
    # Constraint.
    macs_counter: Literal["macs", "flops_original"] = "macs"
    min_macs: float | None = None
    min_latency_ms: float | None = None
    latency_stat: Literal["median", "mean", "p10", "min"] = "median"   # of the table and the end-to-end check
    latency_smooth: bool = False
    verify_latency: int = 10            # latency targets: measure up to this many best candidates end to end
                                        # and keep the first within the target; if none is, search once more
                                        # under the budget corrected by their measured / predicted ratio
                                        # (0: trust the table)
    latency_tolerance: float = 0.05     # ... measured <= target * (1 + tolerance)
    verify_against_grid: bool = True    # time each in alternating rounds with the grid's calibration network
                                        # nearest the target and judge it in the grid's conditions (load
                                        # drift since the grid cancels: latency_check.py); false: alone
    # Pipeline.
    pruningnet_from: str | None = None  # a MetaPruning work dir whose trained PruningNet this search starts
                                        # from (it does not depend on the budget: train once, search many)
    retrain: bool = True

    @model_validator(mode="after")
    def _check(self) -> "MetaPruningArgs":
        # (space, residual_rule, schedule: their Literal types already refuse other values)
        e = self.out_of_range({
            "width_mult": "in (0, 4]", "epochs lr": "> 0",
            "weight_decay label_smoothing momentum eval_every_epochs": ">= 0", "channel_multiple": "in [1, 64]",
            "population select_num top_k max_iters mutation_rounds crossover_tries random_tries calib_batches "
            "candidates_per_call eval_batch log_every checkpoint_every keep_checkpoints": ">= 1",
            "mutation_num crossover_num verify_latency": ">= 0",
            "batch_size max_steps calib_batch_size eval_batch_size": ">= 1 or null", "seed": ">= 0 or null"})
        if self.mutation_num + self.crossover_num > self.population:
            e.append(f"mutation_num + crossover_num ({self.mutation_num + self.crossover_num}) must not exceed "
                     f"population ({self.population})")
        if self.top_k > self.select_num:
            e.append(f"top_k ({self.top_k}) must not exceed select_num ({self.select_num}): the parents are drawn "
                     "from the running top select_num")
        e += self.out_of_range({"mutation_prob": "in [0, 1]"})
        if self.random_range is not None:
            lo, hi = self.random_range
            if not 0 <= lo < hi <= NUM_SCALES:
                e.append(f"random_range: must be [low, high) within [0, {NUM_SCALES}], got {list(self.random_range)}")
        return self.checked(e + self.out_of_range({"recalib_momentum": "in (0, 1] or null",
                                                   "latency_tolerance": "in [0, 1)",
                                                   "min_macs min_latency_ms": ">= 0 or null"}))


__all__ = ["MetaPruningArgs", "SCHEDULES"]
