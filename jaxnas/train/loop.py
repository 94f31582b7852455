"""The `fit` / `evaluate` drivers.

Resume: global step `s` consumes batch `s % steps_per_epoch` of epoch
`s // steps_per_epoch` of `dataset.batches('train', ..., seed=seed, epoch=epoch)`,
and uses the PRNG key `fold_in(rng, s)`. A checkpoint stores the state at a step,
so `fit` on a workdir with checkpoints restores the latest one and continues with
exactly the batches and keys an uninterrupted run would have used.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxnas.train.checkpoint import CHECKPOINT_DIR, CheckpointStore, checkpoint_error, save_final
from jaxnas.train.config import (
    DistillConfig, OptimConfig, ScheduleConfig, TrainLoopConfig, coerce)
from jaxnas.train.metrics import MetricsWriter
from jaxnas.train.optim import make_optimizer
from jaxnas.train.parallel import check_batch_size, make_mesh, replicate, replicated, shard_batch
from jaxnas.train.progress import Progress, format_seconds
from jaxnas.train.state import TrainState, data_position
from jaxnas.train.steps import LossFn, Metrics, cached_eval_step, make_train_step


class Dataset(Protocol):
    """What `fit` / `evaluate` need from `jaxnas.data`'s datasets."""

    num_classes: int

    def batches(self, split: str, batch_size: int, *, seed: int, epoch: int = 0, augment: Any = None,
                drop_remainder: bool = True) -> Iterable[Mapping[str, np.ndarray]]: ...

    def steps_per_epoch(self, split: str, batch_size: int) -> int: ...

    def num_examples(self, split: str) -> int: ...


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """Passed to each callback after every train step (and after that step's log/eval/checkpoint).

    `state` is donated to the next step: copy what you keep (e.g. `jax.device_get`).
    """

    step: int
    epoch: float
    state: TrainState
    train_row: dict[str, Any] | None  # the metrics row logged at this step, if any
    eval_row: dict[str, Any] | None  # the evaluation row of this step, if any
    checkpointed: bool  # a checkpoint of this step is on disk
    workdir: Path


Callback = Callable[[StepInfo], None]
Choices = Any  # a pytree of arrays, or a function `step -> pytree` (must be pure in `step` for exact resume)


# ---------------------------------------------------------------------------------------------
# Data helpers.


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _train_batches(dataset: Dataset, batch_size: int, *, seed: int, epoch: int, skip: int,
                   augment: bool | None) -> Iterator[Mapping[str, np.ndarray]]:
    """The train batches of `epoch` from batch `skip` on."""
    kwargs: dict[str, Any] = {"seed": seed, "epoch": epoch, "drop_remainder": True}
    if augment is not None:
        kwargs["augment"] = augment
    if skip and _accepts(dataset.batches, "start_step"):
        return iter(dataset.batches("train", batch_size, start_step=skip, **kwargs))
    return itertools.islice(dataset.batches("train", batch_size, **kwargs), skip, None)


def _prefetch(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2) -> Iterator[Any]:
    """Device-puts `size` batches ahead so host→device copies overlap the running step."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(shard_batch({"image": batch["image"], "label": batch["label"]}, mesh))
        if len(queue) >= size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _padded(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The batch padded to `batch_size` rows, with a 'mask' that is False on the padding."""
    image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
    n = len(label)
    if n > batch_size:
        raise ValueError(f"dataset returned a batch of {n} > batch_size {batch_size}")
    mask = np.arange(batch_size) < n
    if n < batch_size:
        image = np.concatenate([image, np.zeros((batch_size - n, *image.shape[1:]), image.dtype)])
        label = np.concatenate([label, np.zeros((batch_size - n,), label.dtype)])
    return {"image": image, "label": label, "mask": mask}


def _run_eval(eval_step: Callable[..., Metrics], variables: Any, dataset: Dataset, split: str, batch_size: int,
              choices: Any, mesh: Mesh, seed: int) -> dict[str, float]:
    sums = None
    for batch in dataset.batches(split, batch_size, seed=seed, drop_remainder=False):
        out = eval_step(variables, shard_batch(_padded(batch, batch_size), mesh), choices)
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    if sums is None:
        return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
    sums = jax.device_get(sums)
    count = int(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count, "count": count}


# ---------------------------------------------------------------------------------------------
# Public drivers.


def evaluate(
    model: Any,
    variables: Mapping[str, Any] | TrainState,
    dataset: Dataset,
    split: str = "test",
    batch_size: int = 500,
    choices: Any = None,
    *,
    mesh: Mesh | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Loss (plain CE), accuracy and count over every example of `split` (eval-mode BN)."""
    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(batch_size, mesh)
    if isinstance(variables, TrainState):
        variables = variables.variables()
    variables = jax.device_put(dict(variables), replicated(mesh))
    choices = None if choices is None else jax.device_put(choices, replicated(mesh))
    return _run_eval(cached_eval_step(model, mesh), variables, dataset, split, batch_size, choices, mesh, seed)


def fit(
    model: Any,
    variables: Mapping[str, Any],
    dataset: Dataset,
    *,
    workdir: str | Path,
    optim: OptimConfig | Any = None,
    schedule: ScheduleConfig | Any = None,
    loop: TrainLoopConfig | Any = None,
    choices: Choices = None,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callback] = (),
    tx: optax.GradientTransformation | None = None,
    eval_choices: Any = None,
    mesh: Mesh | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains `model` from `variables` (or from the latest checkpoint in `workdir`).

    Configs may be the dataclasses of `jaxnas.train.config`, other dataclasses or
    mappings with the same field names. `tx` replaces the optimizer built from
    `optim` (e.g. a `multi_optimizer`); the lr metric still follows `schedule`.
    `choices` is fixed, or a function of the global step (sampled sub-networks);
    evaluation uses `eval_choices`, else fixed `choices`, else None.
    Returns the final state and every metrics row of the run (resumed sessions included).
    """
    optim = coerce(OptimConfig, optim)
    schedule = coerce(ScheduleConfig, schedule)
    loop = coerce(TrainLoopConfig, loop)
    distill = coerce(DistillConfig, loop.distill)
    workdir = Path(workdir)

    # --- Sizes. -------------------------------------------------------------------------------
    batch_size = loop.batch_size
    eval_batch_size = loop.eval_batch_size or batch_size
    steps_per_epoch = int(dataset.steps_per_epoch("train", batch_size))
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has fewer examples than batch_size={batch_size}")
    total_steps = max(1, int(round(loop.epochs * steps_per_epoch)))
    stop_step = total_steps if loop.max_steps is None else min(total_steps, loop.max_steps)
    eval_every = max(1, int(round(loop.eval_every_epochs * steps_per_epoch))) if loop.eval_every_epochs else 0
    log_every = loop.log_every or stop_step
    checkpoint_every = loop.checkpoint_every or stop_step

    # --- Devices. -----------------------------------------------------------------------------
    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(batch_size, mesh, "batch_size")
    if eval_every:
        check_batch_size(eval_batch_size, mesh, "eval_batch_size")

    # --- Optimizer and initial state. ---------------------------------------------------------
    default_tx, schedule_fn = make_optimizer(optim, schedule, steps_per_epoch, total_steps)
    tx = default_tx if tx is None else tx
    state = replicate(TrainState.create(variables, tx, seed=loop.seed), mesh)

    # --- Resume from the latest checkpoint. ---------------------------------------------------
    store = CheckpointStore(workdir / CHECKPOINT_DIR, keep=loop.keep_checkpoints)
    run_meta = {"batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "seed": loop.seed}
    elapsed_before, resume_note = 0.0, ""
    latest = store.latest_step()
    if latest is not None:
        state, meta = store.restore(latest, state)
        for key in ("batch_size", "steps_per_epoch"):
            if key in meta and meta[key] != run_meta[key]:
                raise checkpoint_error(
                    store.path(latest), f"it was written with {key}={meta[key]}, this run has {run_meta[key]}")
        elapsed_before = float(meta.get("elapsed_s", 0.0))
        if meta.get("total_steps", total_steps) != total_steps:
            resume_note = (f" (the checkpoint's run had {meta['total_steps']} steps, this one {total_steps}: "
                           "the lr schedule is recomputed for the new length)")
    start_step = int(jax.device_get(state.step))

    # --- Compiled steps. ----------------------------------------------------------------------
    if distill.enabled:
        distill = dataclasses.replace(distill, teacher_variables=replicate(distill.teacher_variables, mesh))
    train_step = make_train_step(
        model, tx, schedule_fn=schedule_fn, label_smoothing=loop.label_smoothing, distill=distill,
        loss_fn=loss_fn, mesh=mesh, donate=True)
    eval_step = cached_eval_step(model, mesh)
    if callable(choices):
        choices_at = lambda step: jax.device_put(choices(step), replicated(mesh))  # noqa: E731
        fixed_choices = None
    else:
        fixed_choices = None if choices is None else replicate(choices, mesh)
        choices_at = lambda step: fixed_choices  # noqa: E731
    if eval_choices is not None:
        eval_choices = replicate(eval_choices, mesh)
    else:
        eval_choices = fixed_choices

    # --- Outputs. -----------------------------------------------------------------------------
    writer = MetricsWriter(workdir, resume_step=start_step)
    progress = Progress(stop_step, start_step, enabled=loop.progress, desc=workdir.name or "train")
    t_start = time.perf_counter()
    elapsed = lambda: elapsed_before + time.perf_counter() - t_start  # noqa: E731
    if start_step:
        progress.log(f"resumed from {store.path(start_step)} (epoch {start_step / steps_per_epoch:.2f}){resume_note}")

    def log_train(step: int, pending: list[Metrics], seconds: float) -> dict[str, Any]:
        host = jax.device_get(pending)
        mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        lr = float(host[-1]["lr"]) if "lr" in host[-1] else float(schedule_fn(step - 1))
        row = writer.write({
            "step": step, "epoch": step / steps_per_epoch, "split": "train", "loss": mean.pop("loss"),
            "accuracy": mean.pop("accuracy"), "lr": lr, "images_per_sec": len(host) * batch_size / max(seconds, 1e-9),
            "elapsed_s": elapsed(), **{k: v for k, v in mean.items() if k != "lr"}})
        eta = format_seconds(progress.eta_seconds(step))
        progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
        progress.log(
            f"step {step}/{stop_step} epoch {row['epoch']:.2f} loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            f"lr {lr:.4g} {row['images_per_sec']:.0f} img/s elapsed {format_seconds(row['elapsed_s'])} ETA {eta}")
        return row

    def log_eval(step: int, state: TrainState) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = _run_eval(eval_step, state.variables(), dataset, loop.eval_split, eval_batch_size, eval_choices,
                           mesh, loop.seed)
        row = writer.write({
            "step": step, "epoch": step / steps_per_epoch, "split": loop.eval_split, "loss": result["loss"],
            "accuracy": result["accuracy"], "lr": float(schedule_fn(step - 1)),
            "images_per_sec": result["count"] / max(time.perf_counter() - t0, 1e-9), "elapsed_s": elapsed(),
            "count": result["count"]})
        progress.log(f"eval[{loop.eval_split}] step {step} epoch {row['epoch']:.2f} loss {row['loss']:.4f} "
                     f"acc {row['accuracy']:.4f} ({result['count']} examples)")
        return row

    # --- Training loop. -----------------------------------------------------------------------
    step = start_step
    pending: list[Metrics] = []
    t_interval, paused = time.perf_counter(), 0.0  # `paused`: eval/checkpoint time inside the interval
    try:
        while step < stop_step:
            epoch, skip = data_position(step, steps_per_epoch)
            wanted = min(steps_per_epoch - skip, stop_step - step)
            batches = _train_batches(dataset, batch_size, seed=loop.seed, epoch=epoch, skip=skip, augment=loop.augment)
            consumed = 0
            for batch in _prefetch(itertools.islice(batches, wanted), mesh):
                state, metrics = train_step(state, batch, choices_at(step))
                step += 1
                consumed += 1
                pending.append(metrics)
                progress.update(step)
                train_row = eval_row = None
                checkpointed = False

                if step % log_every == 0 or step == stop_step:
                    now = time.perf_counter()
                    train_row = log_train(step, pending, now - t_interval - paused)
                    pending, t_interval, paused = [], now, 0.0
                t0 = time.perf_counter()
                if eval_every and (step % eval_every == 0 or step == stop_step):
                    eval_row = log_eval(step, state)
                if step % checkpoint_every == 0 or step == stop_step:
                    # The data position of the next step: where a resumed run starts reading.
                    next_epoch, next_in_epoch = data_position(step, steps_per_epoch)
                    store.save(state, {**run_meta, "epoch": next_epoch, "step_in_epoch": next_in_epoch,
                                       "elapsed_s": elapsed()})
                    checkpointed = True
                paused += time.perf_counter() - t0

                for callback in callbacks:
                    callback(StepInfo(step, step / steps_per_epoch, state, train_row, eval_row, checkpointed, workdir))
            if consumed < wanted:
                raise RuntimeError(
                    f"dataset yielded {skip + consumed} train batches in epoch {epoch}, expected "
                    f"{skip + wanted} (steps_per_epoch={steps_per_epoch})")
    finally:
        progress.close()
        writer.close()
        store.close()

    # --- Final weights. -----------------------------------------------------------------------
    save_final(workdir, state)
    return state, writer.rows
