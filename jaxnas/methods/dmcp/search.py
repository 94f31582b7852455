"""DMCP's search: weight warm-up, then alternating sandwich weight steps and architecture steps (§3.3).

Per iteration (one training batch):

1. Weight step: four passes of the supernet (max width, min width, two random widths) accumulated into
   one SGD step.  The max-width pass uses cross-entropy; the others a KL to the detached max-width
   output (in-place distillation).  Before `start` the random widths are uniform per group; after it
   each is, with probability p (1, multiplied by `random_prob_decay` every `random_prob_every` steps),
   uniform, else a direct sample of the Markov chain.  Running BN statistics follow the max-width pass
   only (masked channels would otherwise pull them towards zero; sub-networks are recalibrated anyway).
2. Architecture step (from `start` on), on the same batch: max width with alpha-scaled soft masks,
   loss CE + cost_weight * log_l1(expected cost), updating only alpha with its own SGD.

All widths are masks passed as arrays, so one compiled weight step serves every sub-network.  The
state (weights, BN stats, alphas, both optimizer states, step, rng) is checkpointed with orbax through
`jaxnas.train.CheckpointStore`; a resumed run reads the same batches and draws the same widths.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas.methods.dmcp.cost import CostModel, MacsModel
from jaxnas.methods.dmcp.gates import DMCPSpace
from jaxnas.train import (CheckpointStore, MetricsWriter, OptimConfig, Progress, ScheduleConfig, TrainState,
                          cross_entropy, data_position, distillation_kl, make_optimizer)
from jaxnas.train.progress import format_seconds


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Resolved search settings (see `DMCPArgs` for their meaning and defaults)."""

    epochs: float
    batch_size: int
    seed: int = 0
    warmup_fraction: float = 0.5
    max_steps: int | None = None
    optim: OptimConfig = OptimConfig(learning_rate=0.5, weight_decay=4e-5)
    schedule: ScheduleConfig = ScheduleConfig()
    label_smoothing: float = 0.0
    arch_lr: float = 0.5
    arch_lr_end: float = 0.1
    arch_momentum: float = 0.9
    arch_nesterov: bool = True
    arch_weight_decay: float = 0.0
    cost_weight: float = 0.1
    random_prob_decay: float = 0.9999
    random_prob_every: int = 10
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    warmup_from: str | None = None  # a search dir whose warm-up checkpoint seeds a fresh search
    alpha_init: float = 0.0


def schedule_steps(cfg: SearchConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total iterations, first architecture-training iteration)."""
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    return total, int(cfg.warmup_fraction * total)


@dataclasses.dataclass
class SearchResult:
    alphas: dict[str, np.ndarray]
    variables: dict[str, Any]  # supernet weights + BN stats
    steps: int
    history: list[dict[str, Any]]


def arch_optimizer(cfg: SearchConfig, arch_steps: int) -> optax.GradientTransformation:
    """SGD on alpha: cosine from arch_lr to arch_lr_end over the architecture-training steps."""
    sched = optax.cosine_decay_schedule(cfg.arch_lr, max(arch_steps, 1), alpha=cfg.arch_lr_end / cfg.arch_lr)
    parts = []
    if cfg.arch_weight_decay:
        parts.append(optax.add_decayed_weights(cfg.arch_weight_decay))
    parts.append(optax.sgd(sched, momentum=cfg.arch_momentum or None, nesterov=cfg.arch_nesterov))
    return optax.chain(*parts)


def make_steps(model: Any, space: DMCPSpace, cost: CostModel, tx_w: optax.GradientTransformation,
               tx_a: optax.GradientTransformation, cfg: SearchConfig, start: int,
               schedule_fn: Callable[[Any], Any]) -> tuple[Callable, Callable]:
    """`weight_step(state, batch)` and `arch_step(state, batch)` (both -> (state, metrics)), jitted inside."""
    min_masks = space.masks_from_k(space.min_k())
    full_masks = space.masks_from_k(space.full_k())
    ls = cfg.label_smoothing
    macs_model = MacsModel(space.spec, space.prunable)

    def apply(params, batch_stats, x, masks, rng):
        choices = None if masks is None else {"masks": masks}
        return model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, choices=choices,
                           mutable=["batch_stats"], rngs={"dropout": rng})

    def sample_widths(state: TrainState):
        """Masks of the four sandwich passes (max, min, two random), stacked on axis 0."""
        k_width = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        alphas = state.params["alpha"]
        after = state.step >= start
        decays = jnp.maximum(state.step - start, 0) // cfg.random_prob_every
        p_random = jnp.where(after, jnp.power(cfg.random_prob_decay, decays.astype(jnp.float32)), 1.0)
        sandwich = [full_masks, min_masks]
        for r in range(2):
            ka, kb, kc = jax.random.split(jax.random.fold_in(k_width, r), 3)
            uniform_k, markov_k = space.random_k(ka), space.markov_k(alphas, kb)
            use_uniform = jnp.logical_or(~after, jax.random.uniform(kc) < p_random)
            ks = {g: jnp.where(use_uniform, uniform_k[g], markov_k[g]) for g in space.prunable}
            sandwich.append(space.masks_from_k(ks))
        return jax.tree.map(lambda *m: jnp.stack(m), *sandwich), p_random

    # One pass = one compiled forward/backward serving all four sandwich widths and the architecture
    # step (the masks and whether the loss is CE or the KL to the teacher are traced arguments).  It
    # returns gradients w.r.t. the weights (accumulated into `grads`) and w.r.t. the masks (the arch
    # step chains those to alpha).  Unrolling the passes in one program compiled 4x longer, a lax.scan
    # over them ran 4x slower on XLA:CPU, and a separate arch-step program doubled compile time.
    def one_pass(state: TrainState, x, y, masks, index, salt, teacher, grads):
        # index 0: CE (max width / arch step), else KL to `teacher`; `salt` separates dropout keys.
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2), salt)

        def loss_fn(w, m):
            logits, mutated = apply(w, state.batch_stats, x, m, rng)
            loss = jnp.where(index == 0, cross_entropy(logits, y, ls), distillation_kl(logits, teacher))
            return loss, (logits, mutated["batch_stats"])

        (loss, (logits, stats)), (gw, gm) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            state.params["net"], masks)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, acc, jax.lax.stop_gradient(logits), stats, jax.tree.map(jnp.add, grads, gw), gm

    def update(state: TrainState, grads, stats, losses, acc, p_random):
        w = state.params["net"]
        updates, opt_w = tx_w.update(grads, state.opt_state["weights"], w)
        new_state = state.replace(
            params={**state.params, "net": optax.apply_updates(w, updates)}, batch_stats=stats,
            opt_state={**state.opt_state, "weights": opt_w}, step=state.step + 1)
        losses = jnp.stack(losses)
        metrics = {"loss": jnp.sum(losses), "ce": losses[0], "kd": jnp.sum(losses[1:]), "accuracy": acc,
                   "lr": jnp.asarray(schedule_fn(state.step), jnp.float32), "p_random": p_random}
        return new_state, metrics

    sample_jit = jax.jit(sample_widths)
    pass_jit = jax.jit(one_pass, donate_argnums=(7,))
    update_jit = jax.jit(update, donate_argnums=(0,))

    def weight_step(state: TrainState, batch):
        """Sandwich step: max (CE), min and two random widths (KL to the max-width output), one update."""
        x, y = batch["image"], batch["label"]
        masks, p_random = sample_jit(state)
        grads = jax.tree.map(jnp.zeros_like, state.params["net"])
        teacher = jnp.zeros((x.shape[0], space.spec.head.num_classes), jnp.float32)
        losses, stats, acc = [], None, None
        for i in range(4):
            m = jax.tree.map(lambda a: a[i], masks)
            loss, a, logits, s, grads, _ = pass_jit(state, x, y, m, jnp.int32(i), jnp.int32(i), teacher, grads)
            losses.append(loss)
            if i == 0:  # the teacher, and the only pass whose BN statistics are kept
                teacher, stats, acc = logits, s, a
        return update_jit(state, grads, stats, losses, acc, p_random)

    def arch_update(state: TrainState, ce, grad_masks):
        a = state.params["alpha"]

        def cost_loss(alphas):
            channels = space.expected_channels(alphas)
            closs = cost.loss(channels)
            return cfg.cost_weight * closs, (closs, cost.value(channels), macs_model.expected(channels))

        _, soft_vjp = jax.vjp(space.soft_masks, a)
        (g_ce,) = soft_vjp(grad_masks)  # d CE / d alpha through the soft masks
        (weighted, (closs, value, macs)), g_cost = jax.value_and_grad(cost_loss, has_aux=True)(a)
        grads = jax.tree.map(jnp.add, g_ce, g_cost)
        updates, opt_a = tx_a.update(grads, state.opt_state["arch"], a)
        new_state = state.replace(params={**state.params, "alpha": optax.apply_updates(a, updates)},
                                  opt_state={**state.opt_state, "arch": opt_a})
        return new_state, {"arch_loss": ce + weighted, "arch_ce": ce, "cost_loss": closs, "expected_cost": value,
                           "expected_macs": macs}

    soft_jit = jax.jit(space.soft_masks)
    arch_update_jit = jax.jit(arch_update, donate_argnums=(0,))

    def arch_step(state: TrainState, batch):
        """Max width with alpha-scaled soft masks: CE + cost_weight * log_l1 cost, stepping only alpha."""
        x, y = batch["image"], batch["label"]
        grads = jax.tree.map(jnp.zeros_like, state.params["net"])  # the weight gradients are discarded
        teacher = jnp.zeros((x.shape[0], space.spec.head.num_classes), jnp.float32)
        ce, _, _, _, _, grad_masks = pass_jit(state, x, y, soft_jit(state.params["alpha"]), jnp.int32(0),
                                              jnp.int32(4), teacher, grads)
        return arch_update_jit(state, ce, grad_masks)

    return weight_step, arch_step


@dataclasses.dataclass
class SearchProgram:
    """The compiled pieces of one search: optimizers, the initial state and the iteration step."""

    weight_step: Callable
    arch_step: Callable
    tx_w: optax.GradientTransformation
    tx_a: optax.GradientTransformation
    schedule_fn: Callable[[Any], Any]
    space: DMCPSpace
    cfg: SearchConfig
    start: int  # first architecture-training iteration
    total: int  # iterations of the whole search

    def init_state(self, variables: dict[str, Any]) -> TrainState:
        """A step-0 state (weights, BN stats, alphas, both optimizer states, rng) from supernet `variables`."""
        # The jitted updates donate the state's buffers: work on copies, never on the caller's arrays.
        variables = jax.tree.map(jnp.array, variables)
        params = {"net": variables["params"], "alpha": self.space.init_alphas(self.cfg.alpha_init)}
        opt_state = {"weights": self.tx_w.init(params["net"]), "arch": self.tx_a.init(params["alpha"])}
        return TrainState(params=params, batch_stats=dict(variables.get("batch_stats", {})), opt_state=opt_state,
                          step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(self.cfg.seed))

    def iteration(self, state: TrainState, batch: dict[str, Any], step: int) -> tuple[TrainState, dict[str, Any]]:
        """One search iteration at host step `step` (= state.step): the weight step, then the
        architecture step from `start` on."""
        state, metrics = self.weight_step(state, batch)
        if step >= self.start:
            state, am = self.arch_step(state, batch)
            metrics = {**metrics, **am}
        return state, metrics


def build_program(model: Any, space: DMCPSpace, cost: CostModel, cfg: SearchConfig, steps_per_epoch: int, *,
                  start: int | None = None) -> SearchProgram:
    """The search's optimizers and steps for `steps_per_epoch` iterations per epoch; `start` overrides
    the first architecture iteration (benchmarks time either phase)."""
    total, first_arch = schedule_steps(cfg, steps_per_epoch)
    start = first_arch if start is None else start
    tx_w, schedule_fn = make_optimizer(cfg.optim, cfg.schedule, steps_per_epoch, total)
    tx_a = arch_optimizer(cfg, total - first_arch)
    weight_step, arch_step = make_steps(model, space, cost, tx_w, tx_a, cfg, start, schedule_fn)
    return SearchProgram(weight_step, arch_step, tx_w, tx_a, schedule_fn, space, cfg, start, total)


def search(model: Any, variables: dict[str, Any], space: DMCPSpace, cost: CostModel, dataset: Any,
           cfg: SearchConfig, workdir: str | Path, *, log: Callable[[str], None] | None = None) -> SearchResult:
    """Runs (or resumes) the DMCP search in `workdir`; returns the final alphas and supernet weights."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = int(dataset.steps_per_epoch("train", cfg.batch_size))
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has fewer examples than the search batch size {cfg.batch_size}")
    program = build_program(model, space, cost, cfg, steps_per_epoch)
    total, start = program.total, program.start
    stop = total if cfg.max_steps is None else min(total, cfg.max_steps)
    state = program.init_state(variables)
    params, opt_state = state.params, state.opt_state

    store = CheckpointStore(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    run_meta = {"batch_size": cfg.batch_size, "steps_per_epoch": steps_per_epoch, "total_steps": total,
                "start_arch": start, "seed": cfg.seed}
    latest = store.latest_step()
    elapsed_before = 0.0
    source = store
    if latest is None and cfg.warmup_from:
        # The weight warm-up (steps < start) does not depend on the target or the alphas: start from
        # another search's warm-up checkpoint (at most `start`) instead of repeating it.
        source = CheckpointStore(Path(cfg.warmup_from) / "checkpoints", keep=cfg.keep_checkpoints)
        usable = [s for s in source.all_steps() if s <= start]
        if not usable:
            source.close()
            store.close()
            raise ValueError(f"{cfg.warmup_from} has no search checkpoint at or before the end of the warm-up "
                             f"(step {start})")
        latest = max(usable)
    if latest is not None:
        origin = source.path(latest)
        state, meta = source.restore(latest, state)
        if source is not store:
            source.close()
            # Alphas are untouched during the warm-up but their initial value may depend on the target.
            state = state.replace(params={**state.params, "alpha": params["alpha"]},
                                  opt_state={**state.opt_state, "arch": opt_state["arch"]})
            (log or print)(f"dmcp: starting from the warm-up checkpoint {origin}")
        for key in ("batch_size", "steps_per_epoch", "total_steps", "seed"):
            if key in meta and meta[key] != run_meta[key]:
                store.close()
                raise ValueError(f"search checkpoint {origin} was written with {key}={meta[key]}, "
                                 f"this run has {run_meta[key]}; use a fresh workdir")
        elapsed_before = float(meta.get("elapsed_s", 0.0))
    step = int(jax.device_get(state.step))
    progress = Progress(stop, step, enabled=cfg.progress, desc="dmcp-search")
    say = log or progress.log
    if step:
        say(f"dmcp: resumed the search at step {step}/{stop}")
    if step < stop:
        say(f"dmcp: search {stop} steps ({steps_per_epoch}/epoch), architecture steps from step {start}")
    writer = MetricsWriter(workdir, resume_step=step)
    t0 = time.perf_counter()
    pending: list[dict[str, Any]] = []
    t_interval = time.perf_counter()
    try:
        while step < stop:
            epoch, skip = data_position(step, steps_per_epoch)
            wanted = min(steps_per_epoch - skip, stop - step)
            for batch in dataset.batches("train", cfg.batch_size, seed=cfg.seed, epoch=epoch, start_step=skip):
                if wanted == 0:
                    break
                wanted -= 1
                batch = {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])}
                state, metrics = program.iteration(state, batch, step)
                step += 1
                pending.append(metrics)
                progress.update(step)
                if step % cfg.log_every == 0 or step == stop:
                    host = jax.device_get(pending)
                    keys = set().union(*(m.keys() for m in host))
                    mean = {k: float(np.mean([m[k] for m in host if k in m])) for k in keys}
                    now = time.perf_counter()
                    row = writer.write({
                        "step": step, "epoch": step / steps_per_epoch, "split": "train", "loss": mean.pop("loss"),
                        "accuracy": mean.pop("accuracy"), "lr": float(host[-1]["lr"]),
                        "images_per_sec": len(host) * cfg.batch_size / max(now - t_interval, 1e-9),
                        "elapsed_s": elapsed_before + now - t0, **{k: v for k, v in mean.items() if k != "lr"}})
                    pending, t_interval = [], now
                    extra = ""
                    if "expected_cost" in row:
                        extra = (f" arch_ce {row['arch_ce']:.3f} E[cost] {row['expected_cost']:.4g} "
                                 f"E[MACs] {row['expected_macs'] / 1e6:.3f}M")
                    say(f"dmcp step {step}/{stop} loss {row['loss']:.4f} acc {row['accuracy']:.3f}{extra} "
                        f"elapsed {format_seconds(row['elapsed_s'])} ETA {format_seconds(progress.eta_seconds(step))}")
                # Also at the end of the weight warm-up: that state does not depend on the target, so
                # searches for several targets can start from it (see benchmarks/dmcp_table.py).
                if step % cfg.checkpoint_every == 0 or step == stop or step == start:
                    store.save(state, {**run_meta, "elapsed_s": elapsed_before + time.perf_counter() - t0})
    finally:
        progress.close()
        writer.close()
        store.close()
    host = jax.device_get(state)
    variables = {"params": host.params["net"], "batch_stats": host.batch_stats}
    alphas = {g: np.asarray(a) for g, a in host.params["alpha"].items()}
    return SearchResult(alphas, variables, step, writer.rows)
