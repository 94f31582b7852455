"""The training loop (`run_loop`, big_vision's shape: a jitted `update_fn` the caller builds, a loop that
owns data order, resume, metrics, evaluation and checkpoints) and the drivers on top of it: `fit` (plain
supervised training) and `evaluate`.

Resume: global step `s` consumes batch `s % steps_per_epoch` of epoch
`s // steps_per_epoch` of `dataset.batches('train', ..., seed=seed, epoch=epoch)`,
and uses the PRNG key `fold_in(rng, s)`. A checkpoint stores the state at a step,
so a loop on a workdir with checkpoints restores the latest one and continues with
exactly the batches and keys an uninterrupted run would have used. Method searches
(DMCP, MetaPruning, TF-NAS, ...) run their own `update_fn` through `run_loop` and get
the same guarantees without copying this skeleton.
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

from jaxnas.data.errors import DataError
from jaxnas.data.sharding import pad_batch
from jaxnas.train.checkpoint import CHECKPOINT_DIR, CheckpointStore, checkpoint_error, save_final
from jaxnas.train.config import OptimConfig, ScheduleConfig, TrainConfig
from jaxnas.train.metrics import MetricsWriter
from jaxnas.train.optim import make_optimizer
from jaxnas.train.parallel import check_batch_size, make_mesh, replicate, replicated, shard_batch
from jaxnas.train.progress import Progress, format_seconds
from jaxnas.train.state import TrainState, data_position
from jaxnas.train.steps import Distillation, LossFn, Metrics, cached_eval_step, make_train_step


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
    yield from queue


def _steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    steps = int(dataset.steps_per_epoch("train", batch_size))
    if steps < 1:
        raise DataError(f"batch size {batch_size} exceeds the {dataset.num_examples('train')} examples of the "
                        "train split; lower data.batch_size (or the method's batch size)")
    return steps


def balanced_batch_size(n: int, batch_size: int, multiple: int = 1) -> int:
    """The batch that covers `n` examples in as many batches as `batch_size` needs, spread evenly over them
    (rounded up to a multiple of `multiple`, the devices): 600 examples at 500 a batch are 2 x 300, not
    2 x 500 with 400 padding rows evaluated for nothing; a split smaller than `batch_size` is one batch."""
    batch_size = max(int(multiple), -(-int(batch_size) // multiple) * multiple)
    batches = max(1, -(-int(n) // batch_size))
    per_batch = -(-int(n) // batches)
    return max(int(multiple), -(-per_batch // multiple) * multiple)


def eval_batch_size_for(dataset: Dataset, split: str, batch_size: int, devices: int = 1) -> int:
    """The evaluation batch of a split: `balanced_batch_size` (same results as any other batch size, less
    padding, bounded memory)."""
    return balanced_batch_size(int(dataset.num_examples(split)), batch_size, devices)


def _run_eval(eval_step: Callable[..., Metrics], variables: Any, dataset: Dataset, split: str, batch_size: int,
              choices: Any, mesh: Mesh, seed: int) -> dict[str, float]:
    batch_size = eval_batch_size_for(dataset, split, batch_size, mesh.devices.size)
    sums = None
    for batch in dataset.batches(split, batch_size, seed=seed, drop_remainder=False):
        padded, n = pad_batch({"image": batch["image"], "label": batch["label"]}, batch_size)
        if n > batch_size:
            raise ValueError(f"dataset returned a batch of {n} > batch_size {batch_size}")
        padded["mask"] = np.arange(batch_size) < n  # False on the padding rows
        out = eval_step(variables, shard_batch(padded, mesh), choices)
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    if sums is None:
        return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
    sums = jax.device_get(sums)
    count = int(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count, "count": count}


# ---------------------------------------------------------------------------------------------
# The loop.

UpdateFn = Callable[[TrainState, Any, int], tuple[TrainState, Metrics]]
EvalFn = Callable[[int, TrainState], Mapping[str, Any]]


def run_loop(
    state: TrainState,
    update_fn: UpdateFn,
    dataset: Dataset,
    *,
    workdir: str | Path,
    batch_size: int,
    total_steps: int,
    seed: int,
    stop_step: int | None = None,
    log_every: int = 50,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 2,
    checkpoint_at: Sequence[int] = (),
    evaluate_fn: EvalFn | None = None,
    eval_every: int = 0,
    augment: bool | None = None,
    run_meta: Mapping[str, Any] | None = None,
    strict_meta: Sequence[str] = ("batch_size", "steps_per_epoch"),
    restore_from: tuple[CheckpointStore, int] | None = None,
    lr_fn: Callable[[int], float] | None = None,
    describe: Callable[[Mapping[str, Any]], str] | None = None,
    progress: bool = True,
    desc: str | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    mesh: Mesh | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Runs `state = update_fn(state, batch, step)` over the train split from the state in `workdir`'s
    latest checkpoint (or `state`) to `stop_step` (default `total_steps`); returns the state and every
    metrics row of the run (resumed sessions included).

    `update_fn(state, batch, step) -> (state, metrics)`: `step` is the host step number before the update
    (e.g. to switch phases); `batch` is {'image', 'label'} sharded over `mesh`; metrics are device
    scalars, averaged over `log_every` steps into a 'train' row ('loss', 'accuracy' and 'lr' when present;
    `lr_fn(step)` fills a missing lr). `evaluate_fn(step, state) -> {'split', 'loss', 'accuracy', 'count',
    ...}` runs every `eval_every` steps and at the end. Checkpoints go to `workdir/checkpoints` every
    `checkpoint_every` steps, at `checkpoint_at` and at the end, with `run_meta`; a checkpoint whose
    `strict_meta` keys differ from `run_meta` is refused. `restore_from=(store, step)` starts a fresh run
    from another run's checkpoint (e.g. a shared warm-up). The final weights are the caller's to save.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = _steps_per_epoch(dataset, batch_size)
    stop = total_steps if stop_step is None else min(total_steps, stop_step)
    mesh = mesh if mesh is not None else make_mesh()
    meta_now = {"batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "seed": seed, **(run_meta or {})}

    # --- Resume. -------------------------------------------------------------------------------
    store = CheckpointStore(workdir / CHECKPOINT_DIR, keep=keep_checkpoints)
    elapsed_before, resume_note, origin = 0.0, "", None
    source, latest = store, store.latest_step()
    if latest is None and restore_from is not None:
        source, latest = restore_from
    if latest is not None:
        origin = source.path(latest)
        state, meta = source.restore(latest, state)
        for key in strict_meta:
            if key in meta and meta[key] != meta_now.get(key):
                store.close()
                raise checkpoint_error(origin, f"it was written with {key}={meta[key]}, this run has "
                                               f"{meta_now.get(key)}")
        if source is store:
            elapsed_before = float(meta.get("elapsed_s", 0.0))
        if meta.get("total_steps", total_steps) != total_steps:
            resume_note = (f" (the checkpoint's run had {meta['total_steps']} steps, this one {total_steps}: "
                           "the lr schedule is recomputed for the new length)")
    start_step = int(jax.device_get(state.step))

    writer = MetricsWriter(workdir, resume_step=start_step)
    bar = Progress(stop, start_step, enabled=progress, desc=desc or workdir.name or "train")
    say = log or bar.log
    t_start = time.perf_counter()
    elapsed = lambda: elapsed_before + time.perf_counter() - t_start  # noqa: E731
    if origin is not None and start_step:
        say(f"resumed from {origin} (epoch {start_step / steps_per_epoch:.2f}){resume_note}")

    def log_train(step: int, pending: list[Metrics], seconds: float) -> dict[str, Any]:
        host = jax.device_get(pending)
        keys = list(dict.fromkeys(k for m in host for k in m))
        mean = {k: float(np.mean([m[k] for m in host if k in m])) for k in keys}
        lr = mean.pop("lr", None)
        lr = float(host[-1]["lr"]) if "lr" in host[-1] else (float(lr_fn(step - 1)) if lr_fn else lr)
        row = writer.write({
            "step": step, "epoch": step / steps_per_epoch, "split": "train", "loss": mean.pop("loss", float("nan")),
            "accuracy": mean.pop("accuracy", float("nan")), "lr": lr,
            "images_per_sec": len(host) * batch_size / max(seconds, 1e-9), "elapsed_s": elapsed(), **mean})
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
        extra = f" {describe(row)}" if describe else ""
        say(f"step {step}/{stop} epoch {row['epoch']:.2f} loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            + (f"lr {lr:.4g} " if lr is not None else "") + f"{row['images_per_sec']:.0f} img/s{extra} "
            f"elapsed {format_seconds(row['elapsed_s'])} ETA {format_seconds(bar.eta_seconds(step))}")
        return row

    def log_eval(step: int, state: TrainState) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = dict(evaluate_fn(step, state))
        row = writer.write({
            "step": step, "epoch": step / steps_per_epoch, **result,
            "lr": float(lr_fn(step - 1)) if lr_fn else None,
            "images_per_sec": result.get("count", 0) / max(time.perf_counter() - t0, 1e-9),
            "elapsed_s": elapsed()})
        say(f"eval[{row['split']}] step {step} epoch {row['epoch']:.2f} loss {row['loss']:.4f} "
            f"acc {row['accuracy']:.4f} ({row.get('count', '?')} examples)")
        return row

    # --- Steps. --------------------------------------------------------------------------------
    step = start_step
    pending: list[Metrics] = []
    t_interval, paused = time.perf_counter(), 0.0  # `paused`: eval/checkpoint time inside the interval
    marks = set(checkpoint_at)
    try:
        while step < stop:
            epoch, skip = data_position(step, steps_per_epoch)
            wanted = min(steps_per_epoch - skip, stop - step)
            batches = _train_batches(dataset, batch_size, seed=seed, epoch=epoch, skip=skip, augment=augment)
            consumed = 0
            for consumed, batch in enumerate(_prefetch(itertools.islice(batches, wanted), mesh), 1):
                state, metrics = update_fn(state, batch, step)
                step += 1
                pending.append(metrics)
                bar.update(step)
                train_row = eval_row = None
                checkpointed = False
                if step % log_every == 0 or step == stop:
                    now = time.perf_counter()
                    train_row = log_train(step, pending, now - t_interval - paused)
                    pending, t_interval, paused = [], now, 0.0
                t0 = time.perf_counter()
                if evaluate_fn is not None and eval_every and (step % eval_every == 0 or step == stop):
                    eval_row = log_eval(step, state)
                if step % checkpoint_every == 0 or step == stop or step in marks:
                    # The data position of the next step: where a resumed run starts reading.
                    next_epoch, next_in_epoch = data_position(step, steps_per_epoch)
                    store.save(state, {**meta_now, "epoch": next_epoch, "step_in_epoch": next_in_epoch,
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
        bar.close()
        writer.close()
        store.close()
    return state, writer.rows


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
    batch_size: int,
    optim: OptimConfig | None = None,
    schedule: ScheduleConfig | None = None,
    train: TrainConfig | None = None,
    eval_batch_size: int | None = None,
    eval_split: str = "test",
    augment: bool | None = None,
    distill: Distillation | None = None,
    choices: Choices = None,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callback] = (),
    tx: optax.GradientTransformation | None = None,
    eval_choices: Any = None,
    mesh: Mesh | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains `model` from `variables` (or from the latest checkpoint in `workdir`) and saves the final
    weights to `workdir/final`.

    `optim`, `schedule`, `train` are the experiment config's sections (defaults when None); batch sizes,
    the evaluation split and augmentation come from the caller (the data section, a method's args).
    `tx` replaces the optimizer built from `optim` (e.g. a `multi_optimizer`); the lr metric still follows
    `schedule`. `choices` is fixed, or a function of the global step (sampled sub-networks); evaluation
    uses `eval_choices`, else fixed `choices`, else None. `distill`: a loaded teacher (train.distill names
    one by path; `jaxnas.trainer` loads it). `log` receives the progress lines (default: printed).
    Returns the final state and every metrics row of the run.
    """
    optim = optim if optim is not None else OptimConfig()
    schedule = schedule if schedule is not None else ScheduleConfig()
    train = train if train is not None else TrainConfig()
    workdir = Path(workdir)
    eval_batch_size = eval_batch_size or batch_size
    steps_per_epoch = _steps_per_epoch(dataset, batch_size)
    total_steps = max(1, int(round(train.epochs * steps_per_epoch)))
    eval_every = max(1, int(round(train.eval_every_epochs * steps_per_epoch))) if train.eval_every_epochs else 0

    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(batch_size, mesh, "batch_size")
    if eval_every:
        check_batch_size(eval_batch_size, mesh, "eval_batch_size")

    default_tx, schedule_fn = make_optimizer(optim, schedule, steps_per_epoch, total_steps)
    tx = default_tx if tx is None else tx
    state = replicate(TrainState.create(variables, tx, seed=train.seed), mesh)

    if distill is not None and distill.enabled:
        distill = dataclasses.replace(distill, teacher_variables=replicate(distill.teacher_variables, mesh))
    train_step = make_train_step(
        model, tx, schedule_fn=schedule_fn, label_smoothing=train.label_smoothing, distill=distill,
        loss_fn=loss_fn, mesh=mesh, donate=True)
    if callable(choices):
        choices_at = lambda step: jax.device_put(choices(step), replicated(mesh))  # noqa: E731
        fixed_choices = None
    else:
        fixed_choices = None if choices is None else replicate(choices, mesh)
        choices_at = lambda step: fixed_choices  # noqa: E731
    eval_choices = replicate(eval_choices, mesh) if eval_choices is not None else fixed_choices
    eval_step = cached_eval_step(model, mesh)

    def evaluate_fn(step: int, state: TrainState) -> dict[str, Any]:
        result = _run_eval(eval_step, state.variables(), dataset, eval_split, eval_batch_size, eval_choices, mesh,
                           train.seed)
        return {"split": eval_split, **result}

    state, rows = run_loop(
        state, lambda state, batch, step: train_step(state, batch, choices_at(step)), dataset,
        workdir=workdir, batch_size=batch_size, total_steps=total_steps, seed=train.seed,
        stop_step=train.max_steps, log_every=train.log_every, checkpoint_every=train.checkpoint_every,
        keep_checkpoints=train.keep_checkpoints, evaluate_fn=evaluate_fn, eval_every=eval_every,
        augment=augment, lr_fn=lambda s: float(schedule_fn(s)), progress=train.progress, mesh=mesh,
        callbacks=callbacks, log=log)
    save_final(workdir, state)
    return state, rows
