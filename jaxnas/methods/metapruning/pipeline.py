"""MetaPruning end to end: check inputs, train the PruningNet, evolve, pick, retrain.

Work dir layout (everything resumes after a kill)::

    latency_grid.json   per-layer latency grid of the widest network (latency targets only)
    pruningnet/         PruningNet training (orbax checkpoints, metrics.jsonl/csv)
    evolution/          state.json (population, top list, tested candidates, RNG, trace), tested.json
    verify.json         end-to-end latencies of the best candidates (latency targets), each timed against
                        the grid's calibration network nearest the target (latency_check.py)
    evolution_corrected/, verify_corrected.json
                        the second search under the corrected budget, when none of them fits
    chosen_arch.json    the picked network (the runner writes it to arch.json too)
    retrain/            the chosen network trained from scratch by the core trainer
    metapruning.json    the method's metrics (merged into summary.json by the runner)

Every input check (space, gene settings, target reachable, latency table covering the space, a held-out
split to measure fitness on) happens in `prepare`, before any training.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from jaxnas import spec as S
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.base import SearchContext, SearchError, SearchResult
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.constraint import Budget, BudgetError, CostFunction, check_reachable
from jaxnas.methods.metapruning.evolution import EvolutionConfig, fitness_label, read_fitness
from jaxnas.methods.metapruning.latency_check import grid_reference, measure_against, row_ms
from jaxnas.methods.metapruning.space import FAMILIES, GeneError, MetaSpace, get_space


class MetaPruningError(SearchError):
    """A MetaPruning run that cannot start (bad space, unreachable budget, table or data problem)."""


@dataclasses.dataclass
class Setup:
    args: MetaPruningArgs
    space: MetaSpace
    budget: Budget
    cost: CostFunction
    reachable: tuple[float, float]
    seed: int
    batch_size: int
    pruningnet_from: Path | None = None   # the checked PruningNet training dir to start from (pruningnet_start)


def space_for(cfg: Any, dataset: Any, args: MetaPruningArgs) -> MetaSpace:
    family = args.space or cfg.model.name
    if family not in FAMILIES:
        raise MetaPruningError(f"MetaPruning has no search space for model '{family}': set model.name or "
                               f"search.args.space to one of {', '.join(FAMILIES)}")
    h, w, c = dataset.image_shape
    if h != w:
        raise MetaPruningError(f"MetaPruning spaces take square inputs; the data is {h}x{w}")
    classes = cfg.model.num_classes or dataset.num_classes
    # model.small_input defaults to true (the zoo's 28-32 px stem); only a resnet50 search that sets it is refused.
    small_input = bool(cfg.model.small_input) and (family != "resnet50" or "small_input" in cfg.model.model_fields_set)
    if family == "resnet50" and small_input:
        raise MetaPruningError("the resnet50 space has no small-input variant but model.small_input is true: set "
                               "model.small_input=false, or search a MobileNet space")
    try:
        space = get_space(family, resolution=h, num_classes=classes, in_channels=c,
                          small_input=small_input,
                          width_mult=args.width_mult, channel_multiple=args.channel_multiple)
        S.validate(space.max_spec())
        S.validate(space.to_spec(space.uniform(0)))
    except (GeneError, S.SpecError) as e:
        raise MetaPruningError(f"{e}") from None
    if args.random_range is not None:
        space = dataclasses.replace(space, random_low=args.random_range[0], random_high=args.random_range[1])
    return space


def make_budget(cfg: Any, args: MetaPruningArgs) -> Budget:
    s = cfg.search
    if s.target_macs is not None and s.target_latency_ms is not None:
        raise MetaPruningError("set one of search.target_macs and search.target_latency_ms, not both")
    # A window's lower bound is of the target's kind (one of the other kind would be ignored) and below it.
    for target, bound, other, other_bound in (("target_macs", "min_macs", "target_latency_ms", "min_latency_ms"),
                                              ("target_latency_ms", "min_latency_ms", "target_macs", "min_macs")):
        cap, low = getattr(s, target), getattr(args, bound)
        if cap is None:
            continue
        if getattr(args, other_bound) is not None:
            raise MetaPruningError(f"search.args.{other_bound} bounds a search.{other} window, but the target is "
                                   f"search.{target}: remove it (search.args.{bound} bounds this one)")
        if low is not None and low > cap:
            raise MetaPruningError(f"the window is empty: search.args.{bound} ({low:g}) is above search.{target} "
                                   f"({cap:g}); lower the bound below the target")
    try:
        if s.target_macs is not None:
            return Budget(args.macs_counter, float(s.target_macs), args.min_macs)
        if s.target_latency_ms is not None:
            return Budget("latency_ms", float(s.target_latency_ms), args.min_latency_ms)
    except BudgetError as e:
        raise MetaPruningError(str(e)) from None
    raise MetaPruningError("MetaPruning needs a budget: set search.target_macs (MACs; search.args.macs_counter "
                           "picks jaxnas MACs or the original's FLOPs counter) or search.target_latency_ms")


def search_seed(cfg: Any, args: MetaPruningArgs) -> int:
    """The seed of the PruningNet's training, the calibration batches and the evolution."""
    return cfg.train.seed if args.seed is None else args.seed


def pruningnet_batch_size(cfg: Any, args: MetaPruningArgs) -> int:
    return args.batch_size or cfg.data.batch_size


def fitness_evaluator(cfg: Any, dataset: Any, args: MetaPruningArgs, model: Any, variables: dict, *,
                      calib_batches: int | None = None, metric: str | None = None):
    """The search's `FitnessEvaluator`: its calibration batches (drawn as the search draws them), held-out
    split and settings; `calib_batches` and `metric` replace the args' (benchmarks compare variants)."""
    from jaxnas.methods.metapruning.fitness import FitnessEvaluator, calibration_images

    calib = calibration_images(dataset, calib_batches or args.calib_batches,
                               args.calib_batch_size or pruningnet_batch_size(cfg, args), search_seed(cfg, args),
                               cfg.data.augment)  # as the PruningNet was trained (training_config)
    return FitnessEvaluator(model, variables, calib, dataset.arrays("holdout"),
                            eval_batch_size=args.eval_batch_size or cfg.data.eval_batch_size,
                            momentum=args.recalib_momentum, candidates_per_call=args.candidates_per_call,
                            metric=metric or args.fitness)


def prepare(cfg: Any, dataset: Any, args: MetaPruningArgs, *, table_fn: Callable[[S.ArchSpec], Any] | None = None,
            log: Callable[[str], None] = print) -> Setup:
    """Every check before training; `table_fn(widest spec)` returns the per-layer latency grid (latency
    budgets only)."""
    space = space_for(cfg, dataset, args)
    budget = make_budget(cfg, args)
    if dataset.num_examples("holdout") == 0:
        raise MetaPruningError("MetaPruning measures fitness on the held-out split, which is empty: set "
                               "data.holdout (e.g. 0.1)")
    batch_size = pruningnet_batch_size(cfg, args)
    n_train = dataset.num_examples("train")
    if n_train < batch_size:
        raise MetaPruningError(f"the train split has {n_train} examples, fewer than the PruningNet batch size "
                               f"{batch_size}; lower search.args.batch_size (or data.batch_size)")
    if n_train < (args.calib_batch_size or batch_size):
        raise MetaPruningError(f"the train split has {n_train} examples, fewer than the BN recalibration batch "
                               f"size {args.calib_batch_size}; lower search.args.calib_batch_size")
    start = pruningnet_start(args)
    table = None
    if budget.kind == "latency_ms":
        if table_fn is None:
            raise MetaPruningError("a latency budget needs the latency oracle's per-layer table")
        table = table_fn(space.max_spec())
    try:
        cost = CostFunction(space, budget.kind, table=table, stat=args.latency_stat, smooth=args.latency_smooth)
        reachable = check_reachable(space, budget, cost)
    except BudgetError as e:
        raise MetaPruningError(str(e)) from None
    setup = Setup(args, space, budget, cost, reachable, search_seed(cfg, args), batch_size, start)
    check_admits(setup)
    log(f"metapruning: {space.family} space ({space.num_genes} genes, {space.resolution} px"
        f"{', small input' if space.small_input else ''}), budget {budget.describe(budget.max)} in reachable "
        f"[{budget.describe(reachable[0])}, {budget.describe(reachable[1])}]")
    return setup


def pruningnet_start(args: MetaPruningArgs) -> Path | None:
    """The PruningNet training dir `search.args.pruningnet_from` names (None: train one), checked to hold a
    checkpoint: a typo must not surface after the latency grid has been measured."""
    from jaxnas.train.checkpoint import CHECKPOINT_DIR, CheckpointStore

    if not args.pruningnet_from:
        return None
    start = Path(args.pruningnet_from) / "pruningnet"
    if not start.is_dir():
        raise MetaPruningError(f"search.args.pruningnet_from: {start} does not exist; point it at the work dir "
                               "of an earlier MetaPruning search")
    empty = not (start / CHECKPOINT_DIR).is_dir()   # opening a missing store would create it in the source
    if not empty:
        store = CheckpointStore(start / CHECKPOINT_DIR)
        try:
            empty = store.latest_step() is None
        finally:
            store.close()
    if empty:
        raise MetaPruningError(f"search.args.pruningnet_from: {start} holds no PruningNet checkpoint (its training "
                               "did not get to one); resume that search first, or remove the key to train one")
    return start


def check_admits(setup: Setup) -> None:
    """Refuse a budget that admits no network in the search's own random draws (a window between the
    narrowest and the widest network can still miss every network): the search would find no first
    population, after the PruningNet's training.  One accepted draw ends the check."""
    import numpy as np

    from jaxnas.methods.metapruning.evolution import Proposer

    space, budget, cfg = setup.space, setup.budget, evolution_config(setup)
    found = Proposer(cfg, space.num_genes, np.random.default_rng(cfg.seed), setup.cost, budget.allows,
                     space.network_key).random(1, {}, {})
    if not found:
        target, low = (("search.target_latency_ms", "search.args.min_latency_ms") if budget.kind == "latency_ms"
                       else ("search.target_macs", "search.args.min_macs"))
        where = (f"the window [{budget.describe(budget.min)}, {budget.describe(budget.max)}] ({low}, {target})"
                 if budget.min is not None else f"the budget {budget.describe(budget.max)} ({target})")
        raise MetaPruningError(
            f"no network of the space falls in {where} in {cfg.random_tries} random draws of ids in "
            f"[{cfg.random_low}, {cfg.random_high}); "
            + (f"widen the window (lower {low})" if budget.min is not None else
               f"raise {target} or widen search.args.random_range"))


def _from_args(cls: type, args: MetaPruningArgs, **overrides: Any) -> Any:
    """The dataclass `cls` with every field `search.args` has too, then `overrides`."""
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in MetaPruningArgs.model_fields}
    return cls(**{**same, **overrides})


def evolution_config(setup: Setup) -> EvolutionConfig:
    return _from_args(EvolutionConfig, setup.args, random_low=setup.space.random_low,
                      random_high=setup.space.random_high, seed=setup.seed)


def training_config(cfg: Any, setup: Setup):
    from jaxnas.methods.metapruning.training import PruningNetTraining
    return _from_args(PruningNetTraining, setup.args, batch_size=setup.batch_size, seed=setup.seed,
                      eval_batch_size=setup.args.eval_batch_size or cfg.data.eval_batch_size,
                      augment=cfg.data.augment, progress=cfg.train.progress)


@dataclasses.dataclass
class Searched:
    """What the search found, before retraining."""

    genes: tuple[int, ...]
    fitness: float                 # of `args.fitness` (lower is better)
    error: float                   # held-out top-1 error (%), whatever the fitness
    record: dict[str, Any]
    trace: list[dict]
    verify: list[dict]
    seconds: dict[str, float]
    evaluated: int


def train_and_evolve(cfg: Any, dataset: Any, setup: Setup, workdir: Path, *,
                     measure_fn: Callable[[S.ArchSpec], Any] | None = None,
                     log: Callable[[str], None] = print, mesh: Any = None,
                     on_evaluated: Callable[[int], None] | None = None) -> Searched:
    """PruningNet training, evolution and the pick (all resumable)."""
    from jaxnas.methods.metapruning.evolution import run_evolution
    from jaxnas.methods.metapruning.pruningnet import build_pruningnet, init_pruningnet
    from jaxnas.methods.metapruning.training import train_pruningnet
    from jaxnas.train.checkpoint import CHECKPOINT_DIR, CheckpointError

    a, space, budget = setup.args, setup.space, setup.budget
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = build_pruningnet(space, cfg.model.depthwise)
    tcfg = training_config(cfg, setup)
    start = setup.pruningnet_from
    # A fresh training restores from `start`: a checkpoint error then is about the source, not this work dir.
    from_start = start is not None and not (workdir / "pruningnet" / CHECKPOINT_DIR).is_dir()
    try:
        variables, _ = train_pruningnet(model, init_pruningnet(model, setup.seed), dataset, tcfg,
                                        workdir / "pruningnet", log=log, mesh=mesh, start_from=start)
    except CheckpointError as e:
        # Only a failed read of the source's own checkpoints is about search.args.pruningnet_from.
        if (not from_start or e.writing or e.problem is None
                or not e.path.is_relative_to((start / CHECKPOINT_DIR).absolute())):
            raise
        raise MetaPruningError(f"search.args.pruningnet_from: the PruningNet in {start} does not restore into this "
                               f"search's PruningNet (checkpoint {e.problem}); point it at a search with the same "
                               "space (search.args space, width_mult, channel_multiple; data image size and classes) "
                               "and optimizer (weight_decay, momentum: zero or not), or remove the key to train one"
                               ) from None
    seconds["pruningnet"] = round(time.perf_counter() - t0, 1)

    t1 = time.perf_counter()
    evaluator = fitness_evaluator(cfg, dataset, a, model, variables)
    state = run_evolution(evolution_config(setup), space.num_genes, evaluator, setup.cost, budget.allows,
                          workdir / "evolution", key=space.network_key, log=log, on_evaluated=on_evaluated)
    seconds["evolution"] = round(time.perf_counter() - t1, 1)

    genes, fitness = state.top[0]
    verify: list[dict] = []
    evaluated = len(state.tested)
    if budget.kind == "latency_ms" and a.verify_latency and measure_fn is not None:
        t2 = time.perf_counter()

        def search_again(corrected: Budget):
            # the fitness cache carries over: every candidate evaluated so far costs nothing again
            cache = workdir / "evolution_corrected" / "tested.json"
            if not cache.is_file() and (workdir / "evolution" / "tested.json").is_file():
                atomic_write_json(cache, json.loads((workdir / "evolution" / "tested.json").read_text()))
            return run_evolution(evolution_config(setup), space.num_genes, evaluator, setup.cost, corrected.allows,
                                 workdir / "evolution_corrected", key=space.network_key, log=log,
                                 on_evaluated=on_evaluated)

        genes, fitness, verify, again = pick_within_latency(setup, state, search_again, measure_fn, workdir, log)
        if again is not None:
            # networks, not gene vectors: the corrected search's cache answers for aliases of earlier ones
            evaluated = len({space.network_key(g) for g in [*state.tested, *again.tested]})
        seconds["verify"] = round(time.perf_counter() - t2, 1)
    record = setup.cost.record(genes)
    trace = [{"iteration": t["iteration"], "best_fitness": t["best_fitness"], "mean_top_k_fitness": t["mean_top_k_fitness"]}
             for t in state.trace]
    error = fitness if a.fitness == "error" else float(evaluator.errors([tuple(genes)])[0])
    return Searched(tuple(genes), float(fitness), float(error), record, trace, verify, seconds, evaluated)


def _verify_latency(setup: Setup, top: list, measure_fn: Callable[[S.ArchSpec], Any], path: Path,
                    log: Callable[[str], None]) -> tuple[list[dict], int | None]:
    """Measure the best candidates end to end (in fitness order) until one is within the target.

    `measure_fn(spec)`: the ms, or a mapping of row fields with ``measured_ms`` (and ``grid_ms``, the
    latency in the grid's conditions, which the check then goes by: `latency_check.measure_against`).
    Returns the measured rows and the index of the first within the target (None: none is).  Rows are
    written as they are measured, so a resumed search measures nothing twice."""
    a, budget = setup.args, setup.budget
    limit = budget.max * (1 + a.latency_tolerance)
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    for r in rows:  # written before the fitness was configurable: the top-1 error
        r.setdefault("fitness", r.pop("holdout_error", None))
    for i, (g, err) in enumerate(top[:a.verify_latency]):
        if i < len(rows):
            row = rows[i]
        else:
            got = measure_fn(setup.space.to_spec(g, residual_rule=a.residual_rule))
            fields = dict(got) if isinstance(got, Mapping) else {"measured_ms": float(got)}
            row = {"genes": list(g), "fitness": err, "predicted_ms": setup.cost(g), **fields}
            rows.append(row)
            atomic_write_json(path, {"target_ms": budget.max, "limit_ms": limit, "rows": rows})
        against = (f" = {row['grid_ms']:.4f} ms in the grid's conditions (against {row['reference']}, drift "
                   f"{row['drift']:.3f})" if "grid_ms" in row else "")
        log(f"metapruning: candidate {i + 1}: {fitness_label(a.fitness, err)}, predicted {row['predicted_ms']:.4f} ms, "
            f"measured {row['measured_ms']:.4f} ms{against} (limit {limit:.4f} ms)")
        if row_ms(row) <= limit:
            return rows, i
    return rows, None


def corrected_budget(setup: Setup, rows: list[dict]) -> tuple[Budget | None, float]:
    """The budget in the grid's units that the measured candidates say meets the target: target and window
    divided by their median measured / predicted ratio (None when the grid does not under-predict, or the
    corrected cap is below the narrowest network)."""
    budget = setup.budget
    ratio = float(statistics.median(row_ms(r) / r["predicted_ms"] for r in rows))
    if ratio <= 1 or budget.max / ratio < setup.reachable[0]:
        return None, ratio
    return Budget(budget.kind, budget.max / ratio, None if budget.min is None else budget.min / ratio), ratio


def pick_within_latency(setup: Setup, state: Any, search_again: Callable[[Budget], Any],
                        measure_fn: Callable[[S.ArchSpec], Any], workdir: Path,
                        log: Callable[[str], None]) -> tuple[tuple[int, ...], float, list[dict], Any]:
    """The pick, confirmed on the runtime: the first of the best candidates measured within the target.

    The per-layer grid predicts each candidate; a network measured end to end can differ (fusions,
    unaligned channel counts).  When none of the `verify_latency` best fits, the grid under-predicts this
    part of the space: the search runs once more (`search_again`, resumable, the fitness cache carried
    over) under the budget corrected by the measured / predicted ratio of those candidates, and its best are
    measured the same way.  Only when none of them fits either is the fastest measured candidate kept (the
    log says so).  Returns genes, fitness, every measured row, and the second search's state (None
    when it did not run)."""
    rows, hit = _verify_latency(setup, state.top, measure_fn, workdir / "verify.json", log)
    if hit is not None:
        return tuple(rows[hit]["genes"]), read_fitness(rows[hit]["fitness"]), rows, None
    corrected, ratio = corrected_budget(setup, rows)
    if corrected is None:
        again, more = None, []
        log(f"metapruning: none of the {len(rows)} best candidates measured within the target (measured / predicted "
            f"{ratio:.3f}); no corrected budget within the space")
    else:
        log(f"metapruning: none of the {len(rows)} best candidates measured within the target: the latency grid "
            f"under-predicts them {ratio:.3f}x; searching again under {setup.budget.describe(corrected.max)} "
            f"predicted" + (f" (window from {setup.budget.describe(corrected.min)})" if corrected.min else ""))
        again = search_again(corrected)
        more, hit = _verify_latency(setup, again.top, measure_fn, workdir / "verify_corrected.json", log)
        for r in more:
            r["corrected_search"] = True
        if hit is not None:
            return tuple(more[hit]["genes"]), read_fitness(more[hit]["fitness"]), rows + more, again
    best = min(rows + more, key=row_ms)
    log(f"metapruning: none of the {len(rows + more)} measured candidates is within the target; keeping the "
        f"fastest ({row_ms(best):.4f} ms): the latency table over-predicts the savings on this runtime")
    return tuple(best["genes"]), read_fitness(best["fitness"]), rows + more, again


def result_metrics(setup: Setup, searched: Searched, spec: S.ArchSpec) -> dict[str, Any]:
    space, budget = setup.space, setup.budget
    achieved: dict[str, Any] = {"macs": int(S.macs(spec)), "flops_original": searched.record["flops_original"]}
    if "predicted_latency_ms" in searched.record:
        achieved["predicted_latency_ms"] = searched.record["predicted_latency_ms"]
    if searched.verify:
        chosen = [r for r in searched.verify if tuple(r["genes"]) == searched.genes]
        if chosen:
            achieved["verified_latency_ms"] = chosen[0]["measured_ms"]
            if "grid_ms" in chosen[0]:  # what the check judged: in the grid's conditions
                achieved["verified_grid_ms"] = chosen[0]["grid_ms"]
    return {
        "method": "metapruning",
        "target": budget.as_dict(),
        "achieved": achieved,
        "genes": list(searched.genes),
        "genes_original": list(space.to_printed(searched.genes)),
        "channels": space.channels(searched.genes),
        "holdout_error": searched.error,
        "fitness": {"metric": setup.args.fitness, "value": searched.fitness},
        "trace": searched.trace,
        "reachable": {"min": setup.reachable[0], "max": setup.reachable[1]},
        "space": space.describe(),
        "evaluated_candidates": searched.evaluated,
        "phase_seconds": searched.seconds,
        **({"latency_verification": searched.verify} if searched.verify else {}),
    }


def latency_check_fn(ctx: SearchContext, setup: Setup) -> Callable[[S.ArchSpec], Any] | None:
    """How the best candidates are measured end to end: against the grid's calibration network nearest
    the target (`latency_check`; `verify_against_grid`), else alone."""
    a, table = setup.args, setup.cost.table
    if setup.budget.kind != "latency_ms" or not a.verify_latency:
        return None
    if a.verify_against_grid and table is not None:
        ref = grid_reference(table, setup.space.max_spec(), setup.budget.max, a.latency_stat)
        return measure_against(ctx.oracle.compare, ref, a.latency_stat)
    return lambda spec: float(ctx.oracle.measure(spec).to_dict()[f"{a.latency_stat}_ms"])


def run_search(ctx: SearchContext, args: MetaPruningArgs) -> SearchResult:
    """MetaPruning on the method contract: the picked, retrained network as a `SearchResult`."""
    cfg, workdir, dataset, log = ctx.cfg, Path(ctx.workdir), ctx.dataset, ctx.log
    t0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    setup = prepare(cfg, dataset, args, log=log,
                    table_fn=lambda widest: ctx.oracle.layer_table(widest, channel_multiple=args.channel_multiple,
                                                                  out=workdir / "latency_grid.json"))
    setup_s = round(time.time() - t0, 1)  # the checks and, for a latency budget, the per-layer grid
    searched = train_and_evolve(cfg, dataset, setup, workdir, log=log, measure_fn=latency_check_fn(ctx, setup))
    searched.seconds["setup"] = setup_s
    space = setup.space
    spec = space.to_spec(searched.genes, residual_rule=args.residual_rule, name=f"metapruning_{space.family}")
    chosen_path = workdir / "chosen_arch.json"
    retrain_dir = workdir / "retrain"
    if chosen_path.is_file() and retrain_dir.exists() and S.ArchSpec.load(chosen_path) != spec:
        raise MetaPruningError(f"{chosen_path} differs from the network this search picks and {retrain_dir} holds "
                               "a retraining of it; use a fresh work dir")
    spec.save(chosen_path)
    log(f"metapruning: picked genes {list(space.to_printed(searched.genes))} (held-out error {searched.error:.2f} %"
        + (f", loss {searched.fitness:.4f}" if args.fitness == "loss" else "") + "), "
        f"{S.macs(spec) / 1e6:.3f} M MACs" + (f", predicted {searched.record['predicted_latency_ms']:.4f} ms"
                                              if "predicted_latency_ms" in searched.record else ""))
    variables, test_acc = None, None
    if args.retrain:
        t1 = time.time()
        trained = ctx.trainer.train(spec, retrain_dir)
        variables, test_acc = trained.variables, float(trained.metrics["test"]["accuracy"])
        searched.seconds["retrain"] = round(time.time() - t1, 1)
        log(f"metapruning: retrained test accuracy {test_acc:.4f}")
    metrics = result_metrics(setup, searched, spec)
    metrics.update(test_accuracy=test_acc, retrained=bool(args.retrain), method_seconds=round(time.time() - t0, 1))
    atomic_write_json(workdir / "metapruning.json", metrics)
    return SearchResult(spec, variables, metrics)


__all__ = ["MetaPruningError", "run_search", "Searched", "Setup", "corrected_budget", "evolution_config",
           "fitness_evaluator", "latency_check_fn", "make_budget", "pick_within_latency", "prepare",
           "pruningnet_batch_size", "result_metrics", "search_seed", "space_for", "train_and_evolve",
           "training_config"]
