"""PruningNet training ("stochastic structure sampling", seed spec §2.2): a fresh random encoding per batch.

Runs on the core trainer's loop (`jaxnas.train.fit`): data parallel over the devices' mesh, orbax
checkpoints, exact resume.  The encoding of global step ``s`` is a pure function of (seed, s) — one uniform
scale id per gene, i.e. per stage for stage-shared genes and per block for mid genes, as the original — so
a resumed run samples exactly the sub-networks an uninterrupted one samples.

Loss: label-smoothed cross-entropy.  Optimizer: SGD with momentum (PyTorch semantics: decay added to the
gradient, no dampening, no Nesterov), weight decay on the generator MLPs and the classifier only (the
original selects parameters by name: 'fc' matches every generator layer fc11..fc32 and the classifier,
never the per-width BNs).  LR schedules with the original's semantics: the scheduler is stepped at the
*start* of each epoch, so epoch ``e`` (from 0) uses

* ``linear_epoch`` (MobileNets, ``LambdaLR(1 - e/E)``): ``lr * (1 - (e + 1) / E)`` — the last epoch has lr 0;
* ``multistep_epoch`` (ResNet, ``MultiStepLR([E//4, E//2, E//4*3], 0.1)``): ``lr * gamma ** #{m <= e + 1}``;

``linear`` (per-step linear decay to 0) is a jaxnas alternative for very short runs.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas.methods.metapruning.args import SCHEDULES
from jaxnas.methods.metapruning.space import NUM_SCALES, MetaSpace

# How the PruningNet's train step is compiled (also what benchmarks/metapruning_step.py times).  Its
# generators hold ~240 M parameters; the gradient of each is an outer product that XLA computes inside the
# momentum update when nothing else reads it, so no grad_norm metric.  Not donated: with the state donated,
# XLA copies every generator kernel before the step, because the update that overwrites it in place could
# otherwise run while the backward pass still reads it.  Quick config (64 x 28 px), XLA's count of memory
# traffic per step: 15.9 GB as the plain trainer's step, 12.1 GB so (the state's old buffers stay alive
# until the step returns: +2 x 0.97 GB at peak).
PRUNINGNET_STEP = {"grad_norm": False, "donate": False}


@dataclasses.dataclass(frozen=True)
class PruningNetTraining:
    epochs: float = 64.0
    batch_size: int = 512
    lr: float = 0.25
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    schedule: str = "linear_epoch"
    gamma: float = 0.1
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every_epochs: float = 1.0
    eval_batch_size: int = 500
    calib_batches: int = 100             # BN recalibration before each evaluation, as the search's fitness
    calib_batch_size: int | None = None  # None: batch_size
    recalib_momentum: float | None = 0.1
    augment: bool | None = None
    progress: bool = True


def sample_encoding(space: MetaSpace, seed: int, step: int, *, stream: int = 0x4D50) -> np.ndarray:
    """The random encoding of training step `step`: one uniform id in [0, 31) per gene."""
    rng = np.random.default_rng([int(seed) % (1 << 63), int(step), stream])
    return rng.integers(0, NUM_SCALES, space.num_genes).astype(np.int32)


def validation_encoding(space: MetaSpace, seed: int) -> np.ndarray:
    """The one random encoding the PruningNet is validated with during training."""
    return sample_encoding(space, seed, 0, stream=0x56414C)


def epoch_schedule(kind: str, lr: float, epochs: float, steps_per_epoch: int, gamma: float = 0.1) -> optax.Schedule:
    """The learning rate at each global step, with the original's epoch semantics (module docstring)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    total = max(1, int(round(epochs * steps_per_epoch)))
    if kind == "linear":
        return optax.linear_schedule(lr, 0.0, total)
    if kind == "linear_epoch":
        def fn(step):
            e = jnp.floor_divide(step, steps_per_epoch)
            return lr * jnp.maximum(0.0, 1.0 - (e + 1) / epochs)
        return fn
    e_int = int(math.ceil(epochs))
    milestones = jnp.asarray([e_int // 4, e_int // 2, e_int // 4 * 3], jnp.int32)

    def multistep(step):
        e = jnp.floor_divide(step, steps_per_epoch)
        return lr * gamma ** jnp.sum(milestones <= e + 1)
    return multistep


def decay_mask(params: Any) -> Any:
    """True for generator MLPs and the classifier (the original's 'fc' names), False for BN banks."""
    def decays(path, _):
        names = [str(getattr(k, "key", k)) for k in path]
        return "bn" not in names
    return jax.tree_util.tree_map_with_path(decays, params)


def make_tx(cfg: PruningNetTraining, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = epoch_schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch, cfg.gamma)
    parts = []
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    return optax.chain(*parts), schedule


def train_pruningnet(model: Any, variables: dict, dataset: Any, cfg: PruningNetTraining, workdir: str | Path,
                     *, eval_split: str = "holdout", log: Callable[[str], None] | None = None,
                     mesh: Any = None, start_from: str | Path | None = None) -> tuple[dict, list[dict]]:
    """Train (or resume training) the PruningNet in `workdir` with the core loop (`jaxnas.train.run_loop`);
    returns (variables, metrics rows).

    `start_from`: another PruningNet training dir whose latest checkpoint a fresh `workdir` starts from
    (the PruningNet does not depend on the budget: one training serves searches at several targets).

    Evaluation (every `eval_every_epochs` on `eval_split`) uses one random encoding drawn from the seed,
    as the original validates with one random encoding, after BN recalibration as the search's fitness
    (`calib_batches` of `calib_batch_size` training images, the same the search draws): each of a layer's
    31 BatchNorms is updated only when its width is sampled, so its running statistics lag far behind and
    with them the accuracy was chance (0.1000 at every epoch of the quick config's trainings)."""
    from jaxnas.train import (CheckpointStore, TrainState, check_batch_size, evaluate, make_mesh, make_train_step,
                              replicate, run_loop)
    from jaxnas.train.checkpoint import CHECKPOINT_DIR
    from jaxnas.train.parallel import replicated

    space = model.space
    spe = int(dataset.steps_per_epoch("train", cfg.batch_size))
    if spe < 1:
        raise ValueError(f"the train split has fewer examples than the PruningNet batch size {cfg.batch_size}")
    mesh = mesh if mesh is not None else make_mesh()
    check_batch_size(cfg.batch_size, mesh, "PruningNet batch_size")
    tx, schedule = make_tx(cfg, spe)
    total = max(1, int(round(cfg.epochs * spe)))
    state = replicate(TrainState.create(variables, tx, seed=cfg.seed), mesh)
    step_fn = make_train_step(model, tx, schedule_fn=schedule, label_smoothing=cfg.label_smoothing, mesh=mesh,
                              **PRUNINGNET_STEP)
    sharding = replicated(mesh)

    def update(state, batch, step):
        return step_fn(state, batch, jax.device_put({"ids": sample_encoding(space, cfg.seed, step)}, sharding))

    has_eval = cfg.eval_every_epochs > 0 and dataset.num_examples(eval_split) > 0
    val_choices = {"ids": validation_encoding(space, cfg.seed)}
    if has_eval:
        from jaxnas.methods.metapruning.fitness import calibration_images
        from jaxnas.train.bn import batch_stats_fn, recalibrate_bn
        calib = calibration_images(dataset, cfg.calib_batches, cfg.calib_batch_size or cfg.batch_size, cfg.seed,
                                   cfg.augment)
        stats_fn = batch_stats_fn(model)

    def evaluate_fn(step, state):
        # No host copy: recalibrate_bn takes device arrays (the quick space's generators are ~1 GB).
        v = recalibrate_bn(model, state.variables(), ({"image": x} for x in calib), val_choices,
                           momentum=cfg.recalib_momentum, stats_fn=stats_fn)
        out = evaluate(model, v, dataset, eval_split, cfg.eval_batch_size, val_choices, mesh=mesh, seed=cfg.seed)
        return {"split": eval_split, **out}

    restore = None
    if start_from is not None:
        store = CheckpointStore(Path(start_from) / CHECKPOINT_DIR)
        latest = store.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{start_from} holds no PruningNet checkpoint to start from")
        restore = (store, latest)
    state, rows = run_loop(
        state, update, dataset, workdir=workdir, batch_size=cfg.batch_size, total_steps=total, seed=cfg.seed,
        stop_step=cfg.max_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, evaluate_fn=evaluate_fn if has_eval else None,
        eval_every=max(1, int(round(cfg.eval_every_epochs * spe))) if has_eval else 0, augment=cfg.augment,
        lr_fn=lambda s: float(schedule(s)), progress=cfg.progress, desc="pruningnet", log=log, mesh=mesh,
        run_meta={"space": space.family, "num_genes": space.num_genes}, restore_from=restore)
    return jax.device_get(state.variables()), rows


__all__ = ["PruningNetTraining", "SCHEDULES", "decay_mask", "epoch_schedule", "make_tx", "sample_encoding",
           "train_pruningnet", "validation_encoding"]
