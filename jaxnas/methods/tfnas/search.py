"""The TF-NAS search loop (seed-specs §4.2-4.3, `train_search.py`), resumable.

Per epoch e (weights SGD with the per-epoch cosine LR lr_e; both optimisers re-created at the start of
every epoch unless `reset_optimizers` is off):

* e < warmup: every step is a weight step on one Gumbel-sampled path (train_wo_arch).
* e >= warmup: every step is a bi-sampling weight step: per block a = argmax(log_alpha + Gumbel noise),
  then b drawn uniformly from the 7 other ops; CE(path a) + CE(path b), one SGD step, no arch gradient.
  Every second step (step_in_epoch % 2 == 0) also an arch step on the next held-out batch: all 8 ops of
  every block weighted by gumbel_softmax(log_alpha, tau) (soft), depth by softmax(beta), loss
  CE + lambda * |LAT / T - 1| with LAT = base + Σ stage latencies from the table interpolated at the
  current mids; Adam step on (log_alphas, betas), then both renormalised by log_softmax (the original
  applies it to every architecture parameter).  After the epoch tau *= tau_decay and elasticity scaling
  sets new mids (`elastic.py`), realised as L1-ranked channel masks on the full-size weights.

Every choice is a traced array: the weight pass is one compiled program for every sampled path (one op per
block through `lax.switch`), the arch step one program for every tau, width and table.

The loop is the core `jaxnas.train.run_loop` with this module's `update_fn`.  Resume: the state (weights,
log_alphas, betas, masks, SGD momentum, Adam moments, step, base key) is checkpointed every
`checkpoint_every` steps and at the end; an epoch's elasticity scaling runs inside its last step, before
that step's checkpoint; batches, Gumbel noise and held-out batches are functions of the step, so a resumed
search ends where an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas.io_utils import atomic_write_json
from jaxnas.latency.spaces import NUM_OPS, TfnasArch, TfnasLut, TfnasSpace
from jaxnas.methods.tfnas import elastic as E
from jaxnas.methods.tfnas.supernet import Supernet, interp_jnp
from jaxnas.train import TrainState, cross_entropy, run_loop


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The original's `train_search.py` arguments (defaults = example.sh), in epochs of the given data."""

    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 32
    target: float = 15.0                  # ms, on the table's scale
    lambda_lat: float = 0.1
    w_lr: float = 0.025                   # cosine over the epochs, one value per epoch
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-5
    a_lr: float = 0.01
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_weight_decay: float = 5e-4
    grad_clip: float = 5.0
    tau: float = 5.0
    tau_decay: float = 0.96
    arch_every: int = 2                   # an arch step when step_in_epoch % arch_every == 0
    reset_optimizers: bool = True         # re-create SGD and Adam every epoch (the original)
    channel_multiple: int = 1             # elasticity scaling keeps widths multiples of this (1: the original)
    seed: int = 2
    log_every: int = 50
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    max_steps: int | None = None          # stop early (tests, benchmarks)
    progress: bool = True


def lr_per_epoch(base: float, epochs: int) -> list[float]:
    """CosineAnnealingLR(T_max=epochs) values for epochs 0..epochs-1 (eta_min 0)."""
    return [base * (1.0 + math.cos(math.pi * e / epochs)) / 2.0 for e in range(epochs)]


def tau_at(cfg: SearchConfig, epoch: int) -> float:
    """The Gumbel temperature during `epoch`: tau, multiplied by tau_decay after every arch epoch."""
    return cfg.tau * cfg.tau_decay ** max(0, epoch - cfg.warmup_epochs)


def gumbel_ops(log_alphas: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a, b): a = argmax(log_alphas + Gumbel) per block (gumbel_softmax's argmax, at any tau); b uniform
    over the other NUM_OPS - 1 ops, so b != a always."""
    ka, kb = jax.random.split(key)
    a = jnp.argmax(log_alphas + jax.random.gumbel(ka, log_alphas.shape), axis=-1).astype(jnp.int32)
    r = jax.random.randint(kb, a.shape, 0, NUM_OPS - 1)
    return a, ((a + 1 + r) % NUM_OPS).astype(jnp.int32)


def arch_update(adam: optax.GradientTransformation, arch: dict, grads: dict, adam_state: Any, lr: float,
                clip: float) -> tuple[dict, Any]:
    """PyTorch's clip_grad_norm_(clip) + Adam(lr, L2 decay) step on the arch parameters, then log_softmax
    renormalisation (the original's `log_alphas.data = F.log_softmax(...)` over every arch parameter)."""
    grads, _ = _global_clip(grads, clip)
    updates, adam_state = adam.update(grads, adam_state, arch)
    return jax.tree.map(lambda p, u: jax.nn.log_softmax(p - lr * u, axis=-1), arch, updates), adam_state


def init_arch(space: TfnasSpace) -> dict:
    n = len(space.blocks())
    return {"log_alphas": jax.nn.log_softmax(jnp.zeros((n, NUM_OPS)), axis=-1),
            "betas": tuple(jnp.zeros((len(b),)) for b in space.stage_blocks())}


def _global_clip(tree, max_norm: float):
    norm = optax.tree.norm(tree)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, tree), norm


class Steps:
    """The jitted pieces of the search (see the module docstring); the arch step closes over nothing that
    changes during a search, so each piece compiles once."""

    def __init__(self, net: Supernet, cfg: SearchConfig):
        self.net, self.cfg = net, cfg  # cfg: only the constants in `step_constants` are read
        self.adam = optax.chain(optax.add_decayed_weights(cfg.a_weight_decay),
                                optax.scale_by_adam(b1=cfg.a_beta1, b2=cfg.a_beta2, eps=1e-8))

        def sample(log_alphas, rng, step):
            return gumbel_ops(log_alphas, jax.random.fold_in(jax.random.fold_in(rng, step), 1))

        def grad_pass(params, masks, betas, x, y, ops, acc):
            depth_w = [jax.nn.softmax(b) for b in betas]

            def loss_fn(p):
                logits = net.path_logits(p, masks, x, ops, depth_w)
                return cross_entropy(logits, y), logits

            (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            correct = jnp.mean(jnp.argmax(logits, -1) == y)
            return loss, correct, jax.tree.map(jnp.add, acc, g)

        def weight_update(params, buf, grads, masks, lr):
            # PyTorch: clip_grad_norm_(5) on the gradients, SGD adds wd * p, then momentum (dampening 0).
            g, norm = _global_clip(grads, cfg.grad_clip)
            keep = net.trainable(params, masks)
            g = jax.tree.map(lambda gi, p, k: (gi + cfg.w_weight_decay * p) * k, g, params, keep)
            buf = jax.tree.map(lambda b, gi: cfg.w_momentum * b + gi, buf, g)
            params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
            return params, buf, norm

        def arch_step(params, masks, arch, adam_state, x, y, tau, key, xs, ys, base, target):
            mids = jnp.sum(masks, axis=-1)

            def loss_fn(a):
                g = jax.random.gumbel(key, a["log_alphas"].shape)
                op_w = jax.nn.softmax((a["log_alphas"] + g) / tau, axis=-1)
                depth_w = [jax.nn.softmax(b) for b in a["betas"]]
                logits = net.mixed_logits(params, masks, x, op_w, depth_w)
                lat = base + net.stage_latency(op_w, interp_jnp(mids, xs, ys), depth_w)
                ce = cross_entropy(logits, y)
                lat_loss = cfg.lambda_lat * jnp.abs(lat / target - 1.0)
                return ce + lat_loss, (ce, lat_loss, lat, jnp.mean(jnp.argmax(logits, -1) == y))

            (_, (ce, lat_loss, lat, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(arch)
            arch, adam_state = arch_update(self.adam, arch, grads, adam_state, cfg.a_lr, cfg.grad_clip)
            return arch, adam_state, {"arch_ce": ce, "lat_loss": lat_loss, "lat": lat, "arch_accuracy": acc}

        self.sample = jax.jit(sample)
        self.grad_pass = jax.jit(grad_pass, donate_argnums=(6,))
        self.weight_update = jax.jit(weight_update, donate_argnums=(0, 1))
        self.arch_step = jax.jit(arch_step, donate_argnums=(2, 3))

    def weight_step(self, params, buf, masks, arch, x, y, lr, rng, step, bisample: bool):
        """One weight update from one (warm-up) or two (bi-sampling) single-path passes."""
        a, b = self.sample(arch["log_alphas"], rng, step)
        acc = jax.tree.map(jnp.zeros_like, params)
        loss, correct, acc = self.grad_pass(params, masks, arch["betas"], x, y, a, acc)
        if bisample:
            loss_b, _, acc = self.grad_pass(params, masks, arch["betas"], x, y, b, acc)
            loss = loss + loss_b
        params, buf, norm = self.weight_update(params, buf, acc, masks, lr)
        return params, buf, {"loss": loss, "accuracy": correct, "grad_norm": norm}


def step_constants(cfg: SearchConfig) -> tuple:
    """The SearchConfig fields compiled into `Steps` (everything else is a traced argument)."""
    return (cfg.lambda_lat, cfg.w_momentum, cfg.w_weight_decay, cfg.a_lr, cfg.a_beta1, cfg.a_beta2,
            cfg.a_weight_decay, cfg.grad_clip)


_STEPS: dict[tuple, Steps] = {}


def get_steps(space: TfnasSpace, depthwise_impl: str, cfg: SearchConfig) -> Steps:
    """The compiled steps of a supernet, shared by every search of one process with the same space and
    optimiser constants (targets, epochs, tau, widths and tables are arguments): repeated searches (several
    targets, a resumed search, tests) compile once."""
    key = (space, depthwise_impl, step_constants(cfg))
    if key not in _STEPS:
        _STEPS[key] = Steps(Supernet(space, depthwise_impl), cfg)
    return _STEPS[key]


@dataclasses.dataclass
class SearchOutcome:
    arch: TfnasArch                 # parsed (argmax ops, argmax depth) with the final widths
    log_alphas: np.ndarray
    betas: list[np.ndarray]
    masks: np.ndarray
    params: Any                     # supernet weights (full size)
    steps: int
    table_ms: float                 # table latency of `arch`
    epochs: list[dict[str, Any]]    # per arch epoch: tau, latency before/after elasticity, arch, ...
    history: list[dict[str, Any]]


def _state(params, arch, masks, buf, adam_state, step, rng) -> TrainState:
    # TrainState's slots: 'batch_stats' carries the channel masks (state, not trained).
    return TrainState(params={"net": params, "arch": arch}, batch_stats={"masks": masks},
                      opt_state={"w": buf, "a": adam_state}, step=jnp.asarray(step, jnp.int32), rng=rng)


def search(space: TfnasSpace, lut: TfnasLut, dataset: Any, cfg: SearchConfig, workdir: str | Path, *,
           depthwise_impl: str = "auto", log: Callable[[str], None] | None = None) -> SearchOutcome:
    """Runs (or resumes) the search in `workdir` (checkpoints/, metrics.jsonl, elastic.json) with the core
    training loop (`jaxnas.train.run_loop`); returns the parsed result."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = log or print
    spe = int(dataset.steps_per_epoch("train", cfg.batch_size))
    hold_spe = int(dataset.steps_per_epoch("holdout", cfg.batch_size))
    if spe < 1 or hold_spe < 1:
        raise ValueError(f"the train ({dataset.num_examples('train')}) and holdout "
                         f"({dataset.num_examples('holdout')}) splits need at least one batch of "
                         f"{cfg.batch_size}; lower the search batch size or raise data.holdout")
    total = cfg.epochs * spe
    lrs = lr_per_epoch(cfg.w_lr, cfg.epochs)
    steps = get_steps(space, depthwise_impl, cfg)
    net = steps.net
    xs, ys = (jnp.asarray(a) for a in lut.arrays(space))
    base, target = jnp.float32(lut.base), jnp.float32(cfg.target)
    # Per arch epoch: the elasticity scaling's log, saved as it happens (a resumed run rewrites later epochs).
    elastic_path = workdir / "elastic.json"

    params = net.init(cfg.seed)
    arch = init_arch(space)
    state = _state(params, arch, jnp.asarray(E.initial_masks(space)), jax.tree.map(jnp.zeros_like, params),
                   steps.adam.init(arch), 0, jax.random.PRNGKey(cfg.seed))

    def holdout_batch(epoch: int, step_in_epoch: int):
        # The original re-creates its arch-val iterator every epoch: a stream reshuffled per epoch.
        a = step_in_epoch // cfg.arch_every
        b = next(iter(dataset.batches("holdout", cfg.batch_size, seed=cfg.seed + 7919 * (epoch + 1),
                                      epoch=a // hold_spe, start_step=a % hold_spe, shuffle=True, augment=False)))
        return jnp.asarray(b["image"]), jnp.asarray(b["label"])

    def update(state: TrainState, batch, step: int):
        epoch, i = divmod(step, spe)
        params, arch, masks = state.params["net"], state.params["arch"], state.batch_stats["masks"]
        buf, adam_state = state.opt_state["w"], state.opt_state["a"]
        if i == 0 and cfg.reset_optimizers:  # the original re-creates both optimisers every epoch
            buf, adam_state = jax.tree.map(jnp.zeros_like, params), steps.adam.init(arch)
        searching = epoch >= cfg.warmup_epochs
        lr, tau = lrs[epoch], tau_at(cfg, epoch)
        params, buf, metrics = steps.weight_step(params, buf, masks, arch, batch["image"], batch["label"],
                                                 jnp.float32(lr), state.rng, step, searching)
        metrics = {**metrics, "lr": jnp.float32(lr), "tau": jnp.float32(tau)}
        if searching and i % cfg.arch_every == 0:
            key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 2)
            arch, adam_state, am = steps.arch_step(params, masks, arch, adam_state, *holdout_batch(epoch, i),
                                                   jnp.float32(tau), key, xs, ys, base, target)
            metrics.update(am)
        if searching and i == spe - 1:  # end of an arch epoch: elasticity scaling (before its checkpoint)
            masks, row = _elastic(space, lut, net, params, arch, masks, cfg.target, epoch, tau,
                                      cfg.channel_multiple)
            atomic_write_json(elastic_path, {**{k: v for k, v in load_elastic().items() if int(k) < epoch},
                                             str(epoch): row})
            say(f"tfnas epoch {epoch}: table latency {row['lat_before']:.4f} -> {row['lat_after']:.4f} ms (target "
                f"{cfg.target:g}), {len(row['changed'])} widths changed, ops {row['arch']['ops']}")
        return _state(params, arch, masks, buf, adam_state, step + 1, state.rng), metrics

    def load_elastic() -> dict[str, dict]:
        return json.loads(elastic_path.read_text()) if elastic_path.is_file() else {}

    say(f"tfnas: search {cfg.epochs} epochs x {spe} steps ({cfg.warmup_epochs} warm-up), batch {cfg.batch_size}, "
        f"target {cfg.target:g} ms")
    state, rows = run_loop(
        state, update, dataset, workdir=workdir, batch_size=cfg.batch_size, total_steps=total, seed=cfg.seed,
        stop_step=cfg.max_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, run_meta={"epochs": cfg.epochs, "target": cfg.target,
                                                         "space": space.to_dict()},
        strict_meta=("batch_size", "steps_per_epoch", "seed", "epochs", "target", "space"),
        describe=lambda r: f"arch_ce {r['arch_ce']:.3f} LAT {r['lat']:.4g} ms" if "lat" in r else "",
        progress=cfg.progress, desc="tfnas-search", log=say)
    step = int(jax.device_get(state.step))
    arch = state.params["arch"]
    log_alphas = np.asarray(jax.device_get(arch["log_alphas"]))
    betas = [np.asarray(b) for b in jax.device_get(arch["betas"])]
    masks_np = np.asarray(jax.device_get(state.batch_stats["masks"]))
    parsed = E.parse_ops(space, log_alphas, betas)
    final = E.to_arch(space, parsed, E.mids_from_masks(masks_np))
    epochs = [v for k, v in sorted(load_elastic().items(), key=lambda kv: int(kv[0])) if (int(k) + 1) * spe <= step]
    return SearchOutcome(final, log_alphas, betas, masks_np, jax.device_get(state.params["net"]), step,
                         lut.arch_latency(space, final), epochs, rows)


def _elastic(space: TfnasSpace, lut: TfnasLut, net: Supernet, params, arch, masks, target: float, epoch: int,
             tau: float, multiple: int = 1) -> tuple[jax.Array, dict[str, Any]]:
    """End-of-epoch elasticity scaling on the argmax architecture; returns new masks and a log row."""
    log_alphas = np.asarray(jax.device_get(arch["log_alphas"]))
    betas = [np.asarray(b) for b in jax.device_get(arch["betas"])]
    masks_np = np.asarray(jax.device_get(masks))
    parsed = E.parse_ops(space, log_alphas, betas)
    mids = E.mids_from_masks(masks_np)
    new_mids, before, after = E.elastic_scaling(lut, space, parsed, mids, target, multiple)
    new_masks, changed = E.rescale_masks(space, parsed, masks_np, new_mids, lambda b, op: net.dw_kernel(params, b, op))
    row = {"epoch": epoch, "tau": float(tau), "lat_before": float(before), "lat_after": float(after),
           "arch": E.to_arch(space, parsed, new_mids).to_dict(), "changed": changed,
           "op_probs": np.exp(log_alphas).round(4).tolist(),
           "depth_probs": [np.round(np.exp(b - b.max()) / np.exp(b - b.max()).sum(), 4).tolist() for b in betas]}
    return jnp.asarray(new_masks), row
