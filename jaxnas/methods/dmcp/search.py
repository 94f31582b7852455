"""DMCP's search: weight warm-up, then alternating sandwich weight steps and architecture steps (§3.3).

Per iteration (one training batch):

1. Weight step: four passes of the supernet (max width, min width, two random widths) accumulated into
   one SGD step.  The max-width pass uses cross-entropy; the others a KL to the detached max-width
   output (in-place distillation).  Before `start` the random widths are uniform per group; after it
   each is, with probability p (1, multiplied by `random_prob_decay` every `random_prob_every` steps),
   uniform, else a direct sample of the Markov chain.  Running BN statistics follow the max-width pass
   only (masked channels would otherwise pull them towards zero; sub-networks are recalibrated anyway).
2. Architecture step (from `start` on), on the same batch: max width with alpha-scaled soft gates,
   loss CE + cost_weight * log_l1(expected cost), updating only alpha with its own SGD.

Programs (XLA:CPU runs static shapes fast and data-dependent control flow slowly, see
benchmarks/dmcp_iteration.py):

* one masked-supernet pass serves the max pass and both random passes: widths are masks passed as
  arrays, so one compiled program serves every random sub-network;
* the min pass has fixed widths: it runs the sliced min-width network (`jaxnas.supernet.materialize`
  of the traced weights), a static program about a tenth of the supernet's cost whose loss, outputs
  and gradients equal the masked supernet's on the kept channels (zero gradient elsewhere);
* the architecture step differentiates only alpha: its soft gates scale BN outputs (`choices['gates']`,
  as the original's AlphaLayer scales activations), so no weight gradient is formed.

The state (weights, BN stats, alphas, both optimizer states, step, rng) is checkpointed by
`jaxnas.train.run_loop`, which owns data order, resume, metrics and checkpoints; a resumed run reads the
same batches and draws the same widths.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas.methods.dmcp.cost import CostModel, MacsModel
from jaxnas.methods.dmcp.gates import DMCPSpace
from jaxnas.supernet import materialize
from jaxnas.train import (CheckpointStore, OptimConfig, ScheduleConfig, TrainState, cross_entropy, distillation_kl,
                          make_optimizer, run_loop)
from jaxnas.train.checkpoint import CHECKPOINT_DIR


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
    decay = [optax.add_decayed_weights(cfg.arch_weight_decay)] if cfg.arch_weight_decay else []
    return optax.chain(*decay, optax.sgd(sched, momentum=cfg.arch_momentum or None, nesterov=cfg.arch_nesterov))


def sandwich_widths(space: DMCPSpace, cfg: SearchConfig, start: int, state: TrainState
                    ) -> tuple[tuple[dict[str, jax.Array], ...], jax.Array]:
    """(masks of the sandwich's two random passes, p(random)) at `state.step`.

    Before `start` each random width is uniform per group; from `start` on it is uniform with probability
    p = random_prob_decay ** ((step - start) // random_prob_every), else a direct sample of the Markov chain."""
    k_width = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
    alphas = state.params["alpha"]
    after = state.step >= start
    decays = jnp.maximum(state.step - start, 0) // cfg.random_prob_every
    p_random = jnp.where(after, jnp.power(cfg.random_prob_decay, decays.astype(jnp.float32)), 1.0)
    randoms = []
    for r in range(2):
        ka, kb, kc = jax.random.split(jax.random.fold_in(k_width, r), 3)
        uniform_k, markov_k = space.random_k(ka), space.markov_k(alphas, kb)
        use_uniform = jnp.logical_or(~after, jax.random.uniform(kc) < p_random)
        ks = {g: jnp.where(use_uniform, uniform_k[g], markov_k[g]) for g in space.prunable}
        randoms.append(space.masks_from_k(ks))
    return tuple(randoms), p_random


def make_steps(model: Any, space: DMCPSpace, cost: CostModel, tx_w: optax.GradientTransformation,
               tx_a: optax.GradientTransformation, cfg: SearchConfig, start: int,
               schedule_fn: Callable[[Any], Any]) -> tuple[Callable, Callable]:
    """`weight_step(state, batch)` and `arch_step(state, batch)` (both -> (state, metrics)), jitted inside."""
    spec = space.spec
    full_masks = space.masks_from_k(space.full_k())
    min_choices = {"masks": space.hard_masks(space.channels_of(space.min_k()))}
    ls = cfg.label_smoothing
    macs_model = MacsModel(spec, space.prunable)

    def pass_rng(state: TrainState, salt):
        # Salt 0: max pass, 1: min pass, 2 and 3: random passes, 4: architecture step.
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2), salt)

    def apply(net, params, batch_stats, x, choices, rng):
        return net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, choices=choices,
                         mutable=["batch_stats"], rngs={"dropout": rng})

    # The masked supernet pass: the max pass (all-ones masks, CE; its logits are the teacher) and the two
    # random passes (KL to the teacher) share this one compiled program.  Unrolling the passes in one
    # program compiled 4x longer and a lax.scan over them ran 4x slower on XLA:CPU.
    def masked_pass(state: TrainState, x, y, masks, index, teacher, grads):
        rng = pass_rng(state, index)

        def loss_fn(w):
            logits, mutated = apply(model, w, state.batch_stats, x, {"masks": masks}, rng)
            loss = jnp.where(index == 0, cross_entropy(logits, y, ls), distillation_kl(logits, teacher))
            return loss, (logits, mutated["batch_stats"])

        (loss, (logits, stats)), gw = jax.value_and_grad(loss_fn, has_aux=True)(state.params["net"])
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, acc, jax.lax.stop_gradient(logits), stats, jax.tree.map(jnp.add, grads, gw)

    # The min pass: the sliced min-width network, a static program (see the module docstring).
    def min_pass(state: TrainState, x, teacher, grads):
        rng = pass_rng(state, 1)

        def loss_fn(w):
            min_spec, sliced = materialize(spec, {"params": w, "batch_stats": state.batch_stats}, min_choices)
            logits, _ = apply(model.clone(spec=min_spec), sliced["params"], sliced["batch_stats"], x, None, rng)
            return distillation_kl(logits, teacher)

        loss, gw = jax.value_and_grad(loss_fn)(state.params["net"])
        return loss, jax.tree.map(jnp.add, grads, gw)

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

    def sample_widths(state: TrainState):
        # Also the zero gradient accumulator, so the host launches one program less per step.
        randoms, p_random = sandwich_widths(space, cfg, start, state)
        return randoms, p_random, jax.tree.map(jnp.zeros_like, state.params["net"])

    sample_jit = jax.jit(sample_widths)
    pass_jit = jax.jit(masked_pass, donate_argnums=(6,))
    min_jit = jax.jit(min_pass, donate_argnums=(3,))
    update_jit = jax.jit(update, donate_argnums=(0,))

    def weight_step(state: TrainState, batch):
        """Sandwich step: max (CE), min and two random widths (KL to the max-width output), one update."""
        x, y = batch["image"], batch["label"]
        random_masks, p_random, grads = sample_jit(state)
        no_teacher = np.zeros((x.shape[0], spec.head.num_classes), np.float32)  # unused by the CE pass
        ce, acc, teacher, stats, grads = pass_jit(state, x, y, full_masks, np.int32(0), no_teacher, grads)
        kd_min, grads = min_jit(state, x, teacher, grads)
        losses = [ce, kd_min]
        for r, masks in enumerate(random_masks):
            kd, _, _, _, grads = pass_jit(state, x, y, masks, np.int32(2 + r), teacher, grads)
            losses.append(kd)
        return update_jit(state, grads, stats, losses, acc, p_random)

    def arch_step(state: TrainState, batch):
        """Max width with alpha-scaled soft gates: CE + cost_weight * log_l1 cost, stepping only alpha."""
        x, y = batch["image"], batch["label"]
        rng = pass_rng(state, 4)
        w, a = state.params["net"], state.params["alpha"]

        def loss_fn(alphas):
            # Gates scale BN outputs: only alpha is differentiated, so no weight gradient is formed.
            logits, _ = apply(model, w, state.batch_stats, x, {"gates": space.soft_masks(alphas)}, rng)
            ce = cross_entropy(logits, y, ls)
            channels = space.expected_channels(alphas)
            closs = cost.loss(channels)
            return ce + cfg.cost_weight * closs, (ce, closs, cost.value(channels), macs_model.expected(channels))

        (arch_loss, (ce, closs, value, macs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(a)
        updates, opt_a = tx_a.update(grads, state.opt_state["arch"], a)
        new_state = state.replace(params={**state.params, "alpha": optax.apply_updates(a, updates)},
                                  opt_state={**state.opt_state, "arch": opt_a})
        return new_state, {"arch_loss": arch_loss, "arch_ce": ce, "cost_loss": closs, "expected_cost": value,
                           "expected_macs": macs}

    return weight_step, jax.jit(arch_step, donate_argnums=(0,))


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


def _has_checkpoint(directory: Path) -> bool:
    store = CheckpointStore(directory)
    try:
        return store.latest_step() is not None
    finally:
        store.close()


def _restore_warmup(program: SearchProgram, state: TrainState, cfg: SearchConfig, run_meta: dict[str, Any],
                    log: Callable[[str], None]) -> TrainState:
    """`state` restored from the latest checkpoint of `cfg.warmup_from` at or before the end of the warm-up,
    with this run's initial alphas and arch optimizer state."""
    source = CheckpointStore(Path(cfg.warmup_from) / CHECKPOINT_DIR, keep=cfg.keep_checkpoints)
    try:
        usable = [s for s in source.all_steps() if s <= program.start]
        if not usable:
            raise ValueError(f"{cfg.warmup_from} has no search checkpoint at or before the end of the warm-up "
                             f"(step {program.start})")
        origin = source.path(max(usable))
        restored, meta = source.restore(max(usable), state)
    finally:
        source.close()
    for key in ("batch_size", "steps_per_epoch", "total_steps", "seed"):
        if key in meta and meta[key] != run_meta[key]:
            raise ValueError(f"search checkpoint {origin} was written with {key}={meta[key]}, this run has "
                             f"{run_meta[key]}; use a fresh workdir")
    log(f"dmcp: starting from the warm-up checkpoint {origin}")
    # Alphas are untouched during the warm-up, but their initial value may depend on the target.
    return restored.replace(params={**restored.params, "alpha": state.params["alpha"]},
                            opt_state={**restored.opt_state, "arch": state.opt_state["arch"]})


def search(model: Any, variables: dict[str, Any], space: DMCPSpace, cost: CostModel, dataset: Any,
           cfg: SearchConfig, workdir: str | Path, *, log: Callable[[str], None] | None = None) -> SearchResult:
    """Runs (or resumes) the DMCP search in `workdir` on `jaxnas.train.run_loop`; returns the final alphas
    and supernet weights."""
    workdir = Path(workdir)
    steps_per_epoch = int(dataset.steps_per_epoch("train", cfg.batch_size))
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has fewer examples than the search batch size {cfg.batch_size}")
    program = build_program(model, space, cost, cfg, steps_per_epoch)
    total, start = program.total, program.start
    stop = total if cfg.max_steps is None else min(total, cfg.max_steps)
    say = log or (lambda msg: print(msg, flush=True))
    state = program.init_state(variables)
    run_meta = {"batch_size": cfg.batch_size, "steps_per_epoch": steps_per_epoch, "total_steps": total,
                "seed": cfg.seed}
    if cfg.warmup_from and not _has_checkpoint(workdir / CHECKPOINT_DIR):
        # The weight warm-up (steps < start) does not depend on the target or the alphas: start from
        # another search's warm-up checkpoint instead of repeating it.
        state = _restore_warmup(program, state, cfg, run_meta, say)
    say(f"dmcp: search {stop} steps ({steps_per_epoch}/epoch), architecture steps from step {start}")

    def describe(row: dict[str, Any]) -> str:
        if "expected_cost" not in row:
            return ""
        return (f"arch_ce {row['arch_ce']:.3f} E[cost] {row['expected_cost']:.4g} "
                f"E[MACs] {row['expected_macs'] / 1e6:.3f}M")

    # Also checkpointed at the end of the weight warm-up: that state does not depend on the target, so
    # searches for several targets can start from it (see benchmarks/dmcp_table.py).
    state, rows = run_loop(
        state, program.iteration, dataset, workdir=workdir, batch_size=cfg.batch_size, total_steps=total,
        seed=cfg.seed, stop_step=cfg.max_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, checkpoint_at=(start,),
        run_meta={**run_meta, "start_arch": start},
        strict_meta=("batch_size", "steps_per_epoch", "total_steps", "seed"),
        describe=describe, progress=cfg.progress, desc="dmcp-search", log=log)
    host = jax.device_get(state)
    variables = {"params": host.params["net"], "batch_stats": host.batch_stats}
    alphas = {g: np.asarray(a) for g, a in host.params["alpha"].items()}
    return SearchResult(alphas, variables, int(host.step), rows)
