"""DMCP on the method contract: validate, check the target, search (resumable), sample, recalibrate,
retrain, return the chosen network.

Work dir layout (the runner adds arch.json, final/, export/ and summary.json)::

    latency_grid.json  the per-layer latency grid (latency targets; built by the oracle)
    search/            search checkpoints (orbax), metrics.jsonl/csv, alphas.json
    samples.json       expected architecture, direct samples, the adjusted choice and their costs
    retrain/           the trainer's run of the chosen spec from scratch (checkpoints, final/, metrics)
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnas import spec as S
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.base import SearchContext, SearchError, SearchResult
from jaxnas.methods.dmcp.args import DMCPArgs
from jaxnas.methods.dmcp.cost import CostModel, CostTarget, LatencyModel, MacsModel, uniform_alpha_for
from jaxnas.methods.dmcp.gates import DMCPSpace
from jaxnas.methods.dmcp.sample import (adjust_to_target, cost_of, direct_samples, expected_architecture,
                                        marginals_np, materialize_k, recalibrate_bn)
from jaxnas.methods.dmcp.search import SearchConfig, search
from jaxnas.train import OptimConfig, ScheduleConfig


def make_target(cfg: Any) -> CostTarget:
    s = cfg.search
    if s.target_macs is not None and s.target_latency_ms is not None:
        raise SearchError("set one of search.target_macs and search.target_latency_ms, not both")
    if s.target_macs is not None:
        return CostTarget("macs", float(s.target_macs))  # float: the original parsed --flops as a string
    if s.target_latency_ms is not None:
        return CostTarget("latency_ms", float(s.target_latency_ms))
    raise SearchError("DMCP needs a target: set search.target_macs (MACs) or search.target_latency_ms")


def build_cost(space: DMCPSpace, target: CostTarget, latency_table: Any = None,
               count_bias: bool = False, latency_stat: str = "median", latency_smooth: bool = False) -> CostModel:
    macs = MacsModel(space.spec, space.prunable, count_bias=count_bias)
    latency = None
    if latency_table is not None:
        try:
            latency = LatencyModel(space.spec, space.prunable, latency_table, stat=latency_stat,
                                   smooth=latency_smooth)
        except (S.SpecError, KeyError) as e:
            raise SearchError(f"latency table does not fit {space.spec.name}: {e}") from None
    if target.kind == "latency_ms" and latency is None:
        raise SearchError("search.target_latency_ms needs a per-layer latency table (the latency oracle's "
                          "layer_table; `jaxnas search` builds it)")
    return CostModel(target, macs, latency)


def reachable_range(space: DMCPSpace, cost: CostModel) -> tuple[float, float]:
    return cost_of(space, cost, space.min_k()), cost_of(space, cost, space.full_k())


def check_reachable(space: DMCPSpace, cost: CostModel) -> tuple[float, float]:
    lo, hi = reachable_range(space, cost)
    t = cost.target
    if not lo <= t.value <= hi:
        raise SearchError(f"target {t.describe(t.value)} is outside the reachable range "
                          f"[{t.describe(lo)}, {t.describe(hi)}] of {space.spec.name} (min_width "
                          f"{space.min_width}, max_width {space.max_width})")
    return lo, hi


def search_config(cfg: Any, args: DMCPArgs) -> SearchConfig:
    wd = cfg.optim.weight_decay if args.weight_decay is None else args.weight_decay
    return SearchConfig(
        epochs=args.epochs, batch_size=args.batch_size or cfg.data.batch_size,
        seed=cfg.train.seed if args.seed is None else args.seed, warmup_fraction=args.warmup_fraction,
        max_steps=args.max_steps,
        optim=OptimConfig(name="sgd", learning_rate=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                          weight_decay=wd, decay_bn_and_bias=False),
        schedule=ScheduleConfig(name="cosine", warmup_epochs=args.lr_warmup_epochs,
                                warmup_start=args.lr_start / args.lr, end_value=args.lr_end / args.lr),
        label_smoothing=cfg.train.label_smoothing if args.label_smoothing is None else args.label_smoothing,
        arch_lr=args.arch_lr, arch_lr_end=args.arch_lr_end, arch_momentum=args.arch_momentum,
        arch_nesterov=args.arch_nesterov, arch_weight_decay=args.arch_weight_decay, cost_weight=args.cost_weight,
        random_prob_decay=args.random_prob_decay, random_prob_every=args.random_prob_every,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        progress=cfg.train.progress, warmup_from=args.warmup_from, alpha_init=args.alpha_init)


def _record(space: DMCPSpace, cost: CostModel, ks: dict[str, int]) -> dict[str, Any]:
    ch = space.channels_of(ks)
    out = {"channels": {g: int(ch[g]) for g in space.prunable}, "macs": int(cost.macs.exact(ch))}
    if cost.latency is not None:
        out["predicted_latency_ms"] = float(cost.latency.exact(ch))
    return out


def choose_architecture(space: DMCPSpace, cost: CostModel, alphas: dict[str, np.ndarray], args: DMCPArgs,
                        seed: int) -> tuple[dict[str, int], dict[str, Any]]:
    """The expected/direct samples, the pick per `args.sample`, adjusted to ±`args.tolerance`."""
    target = cost.target.value
    expected = expected_architecture(space, alphas)
    samples, within = direct_samples(space, cost, alphas, target, num=args.num_samples,
                                     tolerance=args.sample_tolerance, max_tries=args.max_sample_tries, seed=seed)
    start = expected if args.sample == "expected" else samples[0]
    chosen, value = adjust_to_target(space, cost, alphas, start, target, tolerance=args.tolerance)
    err = abs(value - target) / target
    info = {
        "target": cost.target.as_dict(),
        "expected": _record(space, cost, expected),
        "direct_samples": [_record(space, cost, k) for k in samples],
        "direct_samples_within_tolerance": within,
        "sample": args.sample,
        "chosen": {**_record(space, cost, chosen), "relative_error": err, "within_tolerance": err <= args.tolerance},
        "expected_channels": {g: float(v) for g, v in space.expected_channels(alphas).items() if g in space.prunable},
    }
    return chosen, info


@dataclasses.dataclass
class Setup:
    """Everything a DMCP run derives from the config before training."""

    args: DMCPArgs
    target: CostTarget
    dataset: Any
    supernet: S.ArchSpec
    space: DMCPSpace
    cost: CostModel
    reachable: tuple[float, float]
    search: SearchConfig


def prepare(cfg: Any, args: DMCPArgs, dataset: Any, supernet: S.ArchSpec, latency_table: Any = None) -> Setup:
    """The search space and cost of `supernet` (the config's model sized to the data); raises
    `SearchError` when the target is unreachable (all before any training)."""
    target = make_target(cfg)
    space = DMCPSpace(supernet, min_width=args.min_width, max_width=cfg.model.width,
                      width_offset=args.width_offset, exclude=args.exclude_groups,
                      channel_multiple=args.channel_multiple)
    cost = build_cost(space, target, latency_table, args.count_bias, args.latency_stat, args.latency_smooth)
    reachable = check_reachable(space, cost)
    scfg = search_config(cfg, args)
    if args.alpha_init_to_target:
        scfg = dataclasses.replace(scfg, alpha_init=uniform_alpha_for(space, cost, 0.975 * target.value))
    return Setup(args, target, dataset, supernet, space, cost, reachable, scfg)


def run_search(ctx: SearchContext, args: DMCPArgs) -> SearchResult:
    """DMCP end to end (see the module docstring): the chosen, retrained network as a `SearchResult`."""
    from jaxnas import models
    from jaxnas.train import evaluate

    cfg, workdir, dataset, log = ctx.cfg, Path(ctx.workdir), ctx.dataset, ctx.log
    t0 = time.time()
    table = None
    if make_target(cfg).kind == "latency_ms":
        # The method sees latency only through this table: per-layer timings on a channel grid.
        table = ctx.oracle.layer_table(ctx.spec, channel_multiple=args.channel_multiple,
                                       out=workdir / "latency_grid.json")
    setup = prepare(cfg, args, dataset, ctx.spec, table)
    target, supernet, space, cost = setup.target, setup.supernet, setup.space, setup.cost
    lo, hi = setup.reachable
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"dmcp: supernet {supernet.name} ({S.macs(supernet) / 1e6:.2f} M MACs), {len(space.prunable)} prunable "
        f"width groups; target {target.describe(target.value)} in reachable [{target.describe(lo)}, "
        f"{target.describe(hi)}]")

    # --- Search. ---------------------------------------------------------------------------------
    scfg = setup.search
    model = models.build_model(supernet, cfg.model.depthwise)
    variables = models.init_variables(model, scfg.seed)
    result = search(model, variables, space, cost, dataset, scfg, workdir / "search", log=log)
    alphas = result.alphas
    atomic_write_json(workdir / "search" / "alphas.json", {
        "alphas": {g: a.tolist() for g, a in alphas.items()},
        "marginals": {g: m.tolist() for g, m in marginals_np(space, alphas).items()},
        "layouts": space.describe(), "steps": result.steps})

    # --- Sample, adjust, recalibrate. ------------------------------------------------------------
    chosen, info = choose_architecture(space, cost, alphas, args, scfg.seed)
    spec, sliced = materialize_k(space, result.variables, chosen, name=f"{supernet.name}_dmcp")
    # Meta values stay hashable (specs are dict keys / lru_cache keys elsewhere): channels as pairs.
    spec = spec.replace(meta={**spec.metadata, "dmcp_supernet": supernet.name,
                              "dmcp_channels": tuple(sorted(info["chosen"]["channels"].items()))})
    retrain_dir = workdir / "retrain"
    chosen_path = workdir / "search" / "chosen_arch.json"
    if (chosen_path.is_file() and retrain_dir.exists()
            and S.ArchSpec.load(chosen_path).replace(meta=()) != spec.replace(meta=())):
        raise SearchError(f"{chosen_path} differs from the architecture this search samples and {retrain_dir} "
                          "holds a retraining of it; use a fresh workdir")
    spec.save(chosen_path)
    achieved_macs = S.macs(spec)
    if not args.count_bias and achieved_macs != info["chosen"]["macs"]:
        raise AssertionError(f"cost model {info['chosen']['macs']} != spec MACs {achieved_macs}")  # a bug
    log(f"dmcp: chosen {spec.name}: {achieved_macs / 1e6:.3f} M MACs"
        + (f", predicted {info['chosen']['predicted_latency_ms']:.4f} ms" if cost.latency is not None else "")
        + f" ({info['chosen']['relative_error'] * 100:.2f} % from the target)")

    slim = models.build_model(spec, cfg.model.depthwise)
    calib = [dict(image=b["image"], label=b["label"]) for _, b in zip(
        range(args.calib_batches), dataset.batches("train", scfg.batch_size, seed=scfg.seed, epoch=0, augment=False))]
    inherited = recalibrate_bn(slim, sliced, calib)
    inherited_acc = evaluate(slim, inherited, dataset, "test", cfg.data.eval_batch_size)["accuracy"]
    info["inherited_test_accuracy"] = float(inherited_acc)
    atomic_write_json(workdir / "samples.json", info)
    log(f"dmcp: inherited weights + recalibrated BN: test accuracy {inherited_acc:.4f}")

    # --- Retrain from scratch. -------------------------------------------------------------------
    test_acc, final = None, inherited
    if args.retrain:
        trained = ctx.trainer.train(spec, retrain_dir)
        final, test_acc = trained.variables, float(trained.metrics["test"]["accuracy"])
        log(f"dmcp: retrained test accuracy {test_acc:.4f}")

    metrics = {
        "target": target.as_dict(),
        "achieved": {"macs": int(achieved_macs)},
        "test_accuracy": test_acc if test_acc is not None else float(inherited_acc),
        "retrained": bool(args.retrain),
        "inherited_test_accuracy": float(inherited_acc),
        "relative_error": info["chosen"]["relative_error"],
        "reachable": {"min": lo, "max": hi},
        "supernet": {"name": supernet.name, "macs": int(S.macs(supernet))},
        "search_steps": result.steps,
        "samples_path": str(workdir / "samples.json"),
        "method_seconds": round(time.time() - t0, 1),
    }
    if cost.latency is not None:
        metrics["predicted_latency_ms"] = info["chosen"]["predicted_latency_ms"]
        metrics["achieved"]["predicted_latency_ms"] = info["chosen"]["predicted_latency_ms"]
    return SearchResult(spec, final, metrics)


__all__ = ["DMCPArgs", "SearchError", "Setup", "prepare", "run_search", "make_target", "build_cost",
           "check_reachable", "reachable_range", "choose_architecture", "search_config"]
