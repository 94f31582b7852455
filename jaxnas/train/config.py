"""Frozen configs of the training library.

Field names match the experiment config's `optim`, `schedule` and `train`
sections, so a section maps over with `OptimConfig(**asdict(section))`.
`coerce` does the same for a dataclass or a mapping and rejects unknown names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer: 'sgd' (PyTorch-style L2 weight decay) or 'adamw' (decoupled)."""

    name: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    decay_bn_and_bias: bool = False  # False: decay only ndim>1 'kernel' params
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float | None = None  # global-norm clip


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then 'cosine', 'constant' or 'linear'."""

    name: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0  # warm-up starts at this fraction of the peak lr
    end_value: float = 0.0  # final lr as a fraction of the peak lr


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a frozen teacher (off unless teacher is set and weight > 0).

    `teacher` is a Flax module (applied as `teacher.apply(v, x, train=False)`)
    or a callable `(variables, images) -> logits`; `teacher_variables` are its
    variables. A string teacher (a workdir path from the YAML config) must be
    loaded by the caller first, e.g. with `load_variables`.
    """

    teacher: Any = None
    teacher_variables: Any = None
    weight: float = 0.0
    temperature: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.teacher is not None and self.weight > 0


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """The `fit` loop. Steps are optimizer steps over `batch_size` examples."""

    epochs: float = 10.0
    seed: int = 0
    label_smoothing: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every_epochs: float = 1.0  # 0 disables periodic and final evaluation
    distill: DistillConfig | None = dataclasses.field(default_factory=DistillConfig)
    progress: bool = True
    max_steps: int | None = None  # stop early; the schedule still spans `epochs`
    # Not in the experiment config's train section (taken from its data section).
    batch_size: int = 128
    eval_batch_size: int | None = None  # None: batch_size
    eval_split: str = "test"
    augment: bool | None = None  # None: the dataset's default for 'train'


def coerce(cls: type[T], obj: Any) -> T:
    """`obj` (an instance of `cls`, another dataclass, a mapping or None) as a `cls`."""
    if obj is None:
        return cls()
    if isinstance(obj, cls):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, Mapping):
        fields = dict(obj)
    else:
        raise TypeError(f"expected {cls.__name__}, a dataclass or a mapping, got {type(obj).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    if cls is TrainLoopConfig and "distill" in fields:
        fields["distill"] = coerce(DistillConfig, fields["distill"])
    return cls(**fields)


def teacher_apply_fn(teacher: Any) -> Callable[[Any, Any], Any]:
    if isinstance(teacher, str):
        raise TypeError(
            f"distill.teacher is the path {teacher!r}; load it first and pass "
            "DistillConfig(teacher=<module or apply fn>, teacher_variables=load_variables(path))")
    if hasattr(teacher, "apply") and hasattr(teacher, "init"):
        return lambda variables, x: teacher.apply(variables, x, train=False)
    if callable(teacher):
        return teacher
    raise TypeError(f"distill.teacher must be a Flax module or a callable, got {type(teacher).__name__}")
