"""Optimizers, learning-rate schedules and the weight-decay mask."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from jaxnas.train.config import OptimConfig, ScheduleConfig


def make_schedule(cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Linear warm-up from `warmup_start * base_lr` to `base_lr`, then decay to `end_value * base_lr`."""
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps)
    start, end = base_lr * cfg.warmup_start, base_lr * cfg.end_value
    decay_steps = max(total_steps - warmup, 1)
    if cfg.name == "cosine":
        main = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=cfg.end_value)
    elif cfg.name == "linear":
        main = optax.linear_schedule(base_lr, end, decay_steps)
    elif cfg.name == "constant":
        main = optax.constant_schedule(base_lr)
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}; expected 'cosine', 'constant' or 'linear'")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(start, base_lr, warmup), main], [warmup])


def weight_decay_mask(params: Any, decay_bn_and_bias: bool = False) -> Any:
    """True where weight decay applies: everything, or only conv/dense kernels (ndim > 1)."""

    def decays(path, leaf) -> bool:
        if decay_bn_and_bias:
            return True
        name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
        return name == "kernel" and getattr(leaf, "ndim", 0) > 1

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    optim: OptimConfig,
    schedule: ScheduleConfig,
    steps_per_epoch: int,
    total_steps: int,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(tx, schedule_fn)`: [global-norm clip] -> SGD with L2 decay, or AdamW."""
    schedule_fn = make_schedule(schedule, optim.learning_rate, steps_per_epoch, total_steps)
    mask = lambda params: weight_decay_mask(params, optim.decay_bn_and_bias)  # noqa: E731
    parts: list[optax.GradientTransformation] = []
    if optim.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.name == "sgd":
        # Decay added to the gradient before momentum, as PyTorch's SGD(weight_decay=...).
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay, mask=mask))
        parts.append(optax.sgd(schedule_fn, momentum=optim.momentum or None, nesterov=optim.nesterov))
    elif optim.name == "adamw":
        parts.append(optax.adamw(schedule_fn, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=mask))
    else:
        raise ValueError(f"unknown optimizer {optim.name!r}; expected 'sgd' or 'adamw'")
    return optax.chain(*parts), schedule_fn


def multi_optimizer(
    transforms: Mapping[str, optax.GradientTransformation],
    labels: Any | Callable[[Any], Any],
) -> optax.GradientTransformation:
    """One transform per parameter group, e.g. weights vs. architecture parameters (DMCP).

    `labels` is a pytree of group names matching the params, or a function of the params
    returning one; see `path_labels`.
    """
    return optax.multi_transform(dict(transforms), labels)


def path_labels(predicate: Callable[[str], bool], yes: str, no: str) -> Callable[[Any], Any]:
    """A `multi_optimizer` label function: `yes` where `predicate('a/b/kernel')` holds, else `no`."""

    def label(params: Any) -> Any:
        def one(path, _):
            name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            return yes if predicate(name) else no

        return jax.tree_util.tree_map_with_path(one, params)

    return label
