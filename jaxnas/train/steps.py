"""Losses and the jitted train/eval steps.

`make_train_step` returns `train_step(state, batch, choices=None) -> (state, metrics)`.
`choices` (supernet masks/gates) is a traced argument: changing its values reuses
the compiled step; only a change of its structure, shapes or dtypes retraces.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxnas.train.parallel import replicated
from jaxnas.train.state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy against integer labels, optionally label-smoothed."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Mean over the batch of KL(softmax(teacher/T) || softmax(student/T)), unscaled."""
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature)
    log_p_s = jax.nn.log_softmax(student_logits / temperature)
    return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1).mean()


def classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    teacher_logits: jax.Array | None = None,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> jax.Array:
    """(1 - w) * CE(labels) + w * T^2 * KL(teacher || student); plain CE without a teacher."""
    ce = cross_entropy(logits, labels, label_smoothing)
    if teacher_logits is None or not distill_weight:
        return ce
    kd = distillation_kl(logits, teacher_logits, temperature)
    return (1.0 - distill_weight) * ce + distill_weight * temperature**2 * kd


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a frozen, loaded teacher (the `train.distill` section names a work dir;
    `jaxnas.trainer` loads it into this).

    `teacher` is a Flax module (applied as `teacher.apply(v, x, train=False)`) or a callable
    `(variables, images) -> logits`; `teacher_variables` are its variables.
    """

    teacher: Any
    teacher_variables: Any
    weight: float
    temperature: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.teacher is not None and self.weight > 0


def teacher_apply_fn(teacher: Any) -> Callable[[Any, Any], Any]:
    if hasattr(teacher, "apply") and hasattr(teacher, "init"):
        return lambda variables, x: teacher.apply(variables, x, train=False)
    if callable(teacher):
        return teacher
    raise TypeError(f"a distillation teacher must be a Flax module or a callable, got {type(teacher).__name__}")


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a `loss_fn` hook sees inside the traced train step."""

    logits: jax.Array
    batch: Batch
    params: Any
    choices: Any
    base_loss: jax.Array  # CE (+ distillation) as configured
    teacher_logits: jax.Array | None
    new_batch_stats: Any
    rng: jax.Array  # this step's key (already folded with the step)


# Returns the total loss, or (total loss, extra scalar metrics).
LossFn = Callable[[LossContext], jax.Array | tuple[jax.Array, Metrics]]


def _choice_kwargs(choices: Any) -> dict[str, Any]:
    # Models without supernet support need not accept a `choices` argument.
    return {} if choices is None else {"choices": choices}


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    schedule_fn: optax.Schedule | None = None,
    label_smoothing: float = 0.0,
    distill: Distillation | None = None,
    loss_fn: LossFn | None = None,
    mesh: Mesh | None = None,
    donate: bool = False,
    grad_norm: bool = True,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted `train_step(state, batch, choices=None) -> (state, metrics)`.

    metrics: loss, accuracy, grad_norm (before clipping), lr (when `schedule_fn` is
    given) and whatever `loss_fn` adds. With `mesh`, outputs are replicated over it
    (pass batches sharded along 'data'). `donate=True` reuses the input state's buffers.
    `grad_norm=False` leaves that metric out: reading every gradient a second time makes XLA write
    gradients out that it would otherwise compute inside the optimizer update (the PruningNet's
    generators: 1.9 of its 15.9 GB of memory traffic per step).
    With distillation, the teacher's variables are a jit argument bound here (not
    constants baked into the program).
    """
    distill = distill if distill is not None and distill.enabled else None
    teacher_apply = teacher_apply_fn(distill.teacher) if distill else None

    def step(state: TrainState, batch: Batch, choices: Any, teacher_variables: Any) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        images, labels = batch["image"], batch["label"]
        teacher_logits = None
        if distill:
            teacher_logits = jax.lax.stop_gradient(teacher_apply(teacher_variables, images))

        def compute_loss(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, mutated = model.apply(
                variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng},
                **_choice_kwargs(choices))
            new_batch_stats = mutated.get("batch_stats", {}) if state.batch_stats else state.batch_stats
            base = classification_loss(
                logits, labels, label_smoothing=label_smoothing, teacher_logits=teacher_logits,
                distill_weight=distill.weight if distill else 0.0,
                temperature=distill.temperature if distill else 1.0)
            loss, extra = base, {}
            if loss_fn is not None:
                out = loss_fn(LossContext(logits, batch, params, choices, base, teacher_logits, new_batch_stats, rng))
                loss, extra = out if isinstance(out, tuple) else (out, {})
            return loss, (logits, new_batch_stats, extra)

        (loss, (logits, new_batch_stats, extra)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            params=optax.apply_updates(state.params, updates),
            batch_stats=new_batch_stats,
            opt_state=opt_state,
            step=state.step + 1,
        )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            **({"grad_norm": optax.tree.norm(grads)} if grad_norm else {}),
            **extra,
        }
        if schedule_fn is not None:
            metrics["lr"] = jnp.asarray(schedule_fn(state.step), jnp.float32)
        return new_state, metrics

    jit_kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if mesh is not None:
        jit_kwargs["out_shardings"] = (replicated(mesh), replicated(mesh))

    if distill is None:
        return jax.jit(lambda state, batch, choices=None: step(state, batch, choices, None), **jit_kwargs)
    jitted, teacher_variables = jax.jit(step, **jit_kwargs), distill.teacher_variables

    def bound_step(state: TrainState, batch: Batch, choices: Any = None) -> tuple[TrainState, Metrics]:
        """`train_step(state, batch, choices=None)` with the teacher variables bound as a jit argument."""
        return jitted(state, batch, choices, teacher_variables)

    bound_step._cache_size = jitted._cache_size  # as on a jitted function: how often it compiled
    return bound_step


def eval_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> Metrics:
    """Sums over the unmasked rows: loss_sum (plain CE), correct, count."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    keep = jnp.ones(labels.shape, bool) if mask is None else mask.astype(bool)
    return {
        "loss_sum": jnp.sum(jnp.where(keep, ce, 0.0)),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) & keep).astype(jnp.int32),
        "count": jnp.sum(keep).astype(jnp.int32),
    }


def make_eval_step(model: Any, *, mesh: Mesh | None = None) -> Callable[..., Metrics]:
    """The jitted `eval_step(state_or_variables, batch, choices=None) -> sums`.

    The batch may carry a boolean 'mask' (padding rows are False); see `eval_metrics`.
    """

    def step(state: TrainState | Mapping[str, Any], batch: Batch, choices: Any = None) -> Metrics:
        variables = state.variables() if isinstance(state, TrainState) else state
        logits = model.apply(variables, batch["image"], train=False, **_choice_kwargs(choices))
        return eval_metrics(logits, batch["label"], batch.get("mask"))

    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, out_shardings=replicated(mesh))


@functools.lru_cache(maxsize=32)
def _cached_eval_step(model: Any, mesh: Mesh | None) -> Callable[..., Metrics]:
    return make_eval_step(model, mesh=mesh)


def cached_eval_step(model: Any, mesh: Mesh | None = None) -> Callable[..., Metrics]:
    """`make_eval_step`, memoised per (model, mesh) so repeated `evaluate` calls compile once."""
    try:
        return _cached_eval_step(model, mesh)
    except TypeError:  # unhashable module attributes
        return make_eval_step(model, mesh=mesh)


__all__ = [
    "Distillation", "LossContext", "LossFn", "classification_loss", "cross_entropy", "distillation_kl",
    "eval_metrics", "make_eval_step", "make_train_step",
]
