"""The training library's config sections: `optim`, `schedule` and `train` of the experiment config.

They are the only schema of these keys: `jaxnas.config.ExperimentConfig` composes them, and `fit`
takes them as they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from jaxnas.schema import Fraction, Section


class OptimConfig(Section):
    """Optimizer: 'sgd' (PyTorch-style L2 weight decay) or 'adamw' (decoupled)."""

    section = "optim"

    name: Literal["sgd", "adamw"] = "sgd"
    learning_rate: NonNegativeFloat = 0.1
    momentum: Fraction = 0.9
    nesterov: bool = True
    weight_decay: NonNegativeFloat = 4e-5
    decay_bn_and_bias: bool = False  # False: decay only ndim>1 'kernel' params
    b1: Fraction = 0.9
    b2: Fraction = 0.999
    grad_clip: PositiveFloat | None = None  # global-norm clip

    @model_validator(mode="after")
    def _no_ignored_keys(self) -> "OptimConfig":
        return self.checked(self.ignored(("b1", "b2"), "sgd has no Adam moments", "remove it or set name: adamw")
                            if self.name == "sgd" else
                            self.ignored(("momentum", "nesterov"), "adamw has no SGD momentum (its moments are b1, b2)",
                                         "remove it or set name: sgd"))


class ScheduleConfig(Section):
    """Learning-rate schedule: linear warm-up, then 'cosine', 'constant' or 'linear'."""

    section = "schedule"

    name: Literal["cosine", "constant", "linear"] = "cosine"
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_start: NonNegativeFloat = 0.0  # warm-up starts at this fraction of the peak lr
    end_value: NonNegativeFloat = 0.0  # final lr as a fraction of the peak lr

    @model_validator(mode="after")
    def _no_ignored_keys(self) -> "ScheduleConfig":
        errs = []
        if self.warmup_epochs == 0:
            errs += self.ignored(("warmup_start",), "warmup_epochs is 0 (no warm-up)", "remove it or set warmup_epochs")
        if self.name == "constant":
            errs += self.ignored(("end_value",), "a constant schedule does not decay",
                                 "remove it or set name: cosine or linear")
        return self.checked(errs)


class DistillConfig(Section):
    """Knowledge distillation from a frozen teacher: a trained work dir (its arch.json and weights)."""

    section = "train.distill"

    teacher: str | None = None
    weight: NonNegativeFloat = 0.0  # loss = (1 - w) CE + w T^2 KL(teacher || student)
    temperature: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _teacher_for_weight(self) -> "DistillConfig":
        if self.weight > 0 and self.teacher is None:
            raise ValueError(f"weight: is {self.weight} but no teacher is set (set teacher, or weight: 0)")
        errs = []
        if self.teacher is None:
            errs = self.ignored(("temperature",), "no teacher is set", "remove it or set teacher and weight")
        elif self.weight == 0:
            errs = [f"teacher: is set but weight is 0, so the teacher would be ignored; set weight > 0 "
                    "(e.g. 0.5) or remove teacher"]
        return self.checked(errs)


class TrainConfig(Section):
    """The `fit` loop. Steps are optimizer steps over `data.batch_size` examples."""

    section = "train"

    epochs: PositiveFloat = 10.0
    seed: NonNegativeInt = 0  # numpy's generators (data order, sampling) take no negative seed
    label_smoothing: Fraction = 0.0
    log_every: PositiveInt = 50  # steps
    checkpoint_every: PositiveInt = 500  # steps
    keep_checkpoints: PositiveInt = 2
    eval_every_epochs: NonNegativeFloat = 1.0  # 0 disables periodic and final evaluation
    distill: DistillConfig = DistillConfig()
    progress: bool = True
    max_steps: PositiveInt | None = None  # stop early; the schedule still spans `epochs`
