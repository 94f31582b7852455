"""TF-NAS on the method contract: space, table, checks, search (resumable), parse, final fit, retrain.

Work dir layout (the runner adds arch.json, final/, export/ and summary.json)::

    latency_table.json  the TF-NAS table for the space (built by the latency oracle, unless
                        search.args.lookup_table or latency.table names one)
    search/             checkpoints (orbax), metrics.jsonl/csv, result.json (arch: the final network;
                        parsed_arch: the search's own parse before the final fit; per-epoch log)
    retrain/            the trainer's run of the final network from scratch

Everything that can be wrong with the inputs (a table of another device or batch size, a table that lacks
a key the space needs, a target outside the table's range) is reported before any training.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.base import SearchContext, SearchError, SearchResult
from jaxnas.latency.spaces import NUM_OPS, TfnasArch, TfnasLut, TfnasSpace, get_tfnas_space
from jaxnas.latency.table import LatencyTable
from jaxnas.methods.tfnas import elastic as E
from jaxnas.methods.tfnas import rebase as R
from jaxnas.methods.tfnas.args import TfnasArgs

# Fingerprint fields a table built by jaxnas must share with the configured runtime.
_DEVICE_KEYS = ("backend", "runtime", "device", "threads", "batch_size", "precision")


def make_space(args: TfnasArgs, dataset: Any) -> TfnasSpace:
    h, w, c = dataset.image_shape
    if h != w:
        raise SearchError(f"TF-NAS spaces are square; the data is {h}x{w} (set data.image_size)")
    return get_tfnas_space(args.space, resolution=h, in_channels=c, num_classes=dataset.num_classes, width=args.width,
                     small_input=args.small_input, last_channels=args.last_channels,
                     max_depths=list(args.max_depths) if args.max_depths is not None else None)


def load_lut(ctx: SearchContext, args: TfnasArgs, space: TfnasSpace) -> tuple[TfnasLut, dict[str, Any]]:
    """The table the search uses, checked against the runtime's batch size (and device, for tables built
    by jaxnas); {'path', 'source', 'fingerprint'} describes it."""
    want = ctx.oracle.fingerprint()
    if args.lookup_table:
        path = str(args.lookup_table)
        if Path(path).suffix.lower() in (".pkl", ".pickle"):
            if args.lookup_batch_size is None:
                raise SearchError(f"search.args.lookup_batch_size: say which batch size {path} was measured at "
                                  "(the original's latency_gpu.pkl: 32, latency_cpu.pkl: 1)")
            lut = TfnasLut.load(path, args.table_stat, device=args.lookup_device, batch_size=args.lookup_batch_size)
            reference_ms = None
        else:
            table = LatencyTable.load(path)
            lut, reference_ms = TfnasLut.from_table(table, args.table_stat), R.reference_entry(table, args.table_stat)
    else:
        out = Path(ctx.workdir) / "latency_table.json"
        ctx.log(f"tfnas: latency table for {space.name} on {want.get('backend')} ({args.table_context} context)")
        table = ctx.oracle.block_table(space.to_dict(), out=out, context=args.table_context)
        lut = TfnasLut.from_table(table, args.table_stat)
        path = str(ctx.cfg.latency.table or out)
        reference_ms = R.reference_entry(table, args.table_stat)
    have = lut.fingerprint
    imported = have.get("backend") == "tfnas"  # the original's pickle: measured elsewhere by definition
    if have.get("batch_size") not in (None, want.get("batch_size")):
        raise SearchError(f"latency table {path} is per batch of {have.get('batch_size')} "
                          f"({have.get('device', '?')}) but latency.batch_size is {want.get('batch_size')}: set "
                          f"latency.batch_size: {have.get('batch_size')} or use a table measured at batch "
                          f"{want.get('batch_size')}")
    if not imported:
        bad = [(k, have.get(k), want.get(k)) for k in _DEVICE_KEYS if have.get(k) != want.get(k)]
        if bad:
            diffs = ", ".join(f"{k} {a!r} (table) vs {b!r} (latency section)" for k, a, b in bad)
            raise SearchError(f"latency table {path} was measured on another setup: {diffs}; rebuild it "
                              "(drop search.args.lookup_table / latency.table) or change the latency section")
    else:
        ctx.log(f"tfnas: using the original's table {path} as is (measured on {have.get('device', '?')}, batch "
                f"{have.get('batch_size', '?')}): targets and table latencies are on its scale")
    lut.require(space.table_keys(), space.key_mid_ranges())
    return lut, {"path": path, "source": lut.meta.get("source", "?"), "context": lut.meta.get("context"),
                 "fingerprint": have, "reference_ms": None if imported else reference_ms}


def reachable_range(lut: TfnasLut, space: TfnasSpace) -> tuple[float, float]:
    """(narrowest, widest) table latency of the space: every stage at depth 1 with each block's fastest op
    at its narrowest width; every block at its slowest op at full width."""
    lo = hi = lut.base
    for blocks in space.stage_blocks():
        b = blocks[0]
        lo += min(lut.ms(b.key(op), b.min_mid(op)) for op in range(NUM_OPS))
        hi += sum(max(lut.ms(c.key(op), c.max_mid(op)) for op in range(NUM_OPS)) for c in blocks)
    return float(lo), float(hi)


def search_config(ctx: SearchContext, args: TfnasArgs, target: float):
    """The loop's SearchConfig: the args of the same name, the batch size and seed defaulting to the config's."""
    import dataclasses

    from jaxnas.methods.tfnas.search import SearchConfig

    cfg = ctx.cfg
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig) if f.name in TfnasArgs.model_fields}
    return SearchConfig(**{**same, "batch_size": args.batch_size or cfg.data.batch_size, "target": target,
                           "seed": cfg.train.seed if args.seed is None else args.seed,
                           "progress": getattr(cfg.train, "progress", True)})


def run_search(ctx: SearchContext, args: TfnasArgs) -> SearchResult:
    """TF-NAS end to end (see the module docstring): the parsed, retrained network as a `SearchResult`."""
    from jaxnas.methods.tfnas.search import search

    t0 = time.time()
    cfg, workdir, log = ctx.cfg, Path(ctx.workdir), ctx.log
    given = ctx.target()
    if (given is None) == (args.target_fraction is None):
        raise SearchError("TF-NAS needs one target: search.target_latency_ms (ms per batch on the table's scale) "
                          "or search.args.target_fraction (between the table's narrowest and widest network)")
    space = make_space(args, ctx.dataset)
    lut, table_info = load_lut(ctx, args, space)
    lo, hi = reachable_range(lut, space)
    target = given[1] if given is not None else lo + args.target_fraction * (hi - lo)
    if not lo <= target <= hi:
        raise SearchError(f"search.target_latency_ms {target:g} is outside what the table reaches for {space.name}: "
                          f"[{lo:.4g}, {hi:.4g}] ms (narrowest to widest network); choose a target inside it")
    scfg = search_config(ctx, args, target)
    log(f"tfnas: space {space.name} ({len(space.blocks())} searchable blocks, {NUM_OPS} ops each), target {target:g} "
        f"ms in [{lo:.4g}, {hi:.4g}]")
    outcome = search(space, lut, ctx.dataset, scfg, workdir / "search", depthwise_impl=cfg.model.depthwise, log=log)
    arch: TfnasArch = outcome.arch
    table_ms = outcome.table_ms
    log(f"tfnas: parsed {arch.to_dict()['ops']} depths {list(arch.depths)}; table latency {table_ms:.4f} ms "
        f"({100 * (table_ms / target - 1):+.2f} % of the target)")
    fit, rebase, lut_as_built = None, None, lut
    if args.rebase_table:
        rebase = R.cached_table_drift(workdir / "search" / "rebase.json", ctx.oracle, space, table_info["reference_ms"],
                                      args.table_stat, rounds=args.rebase_rounds, window_s=args.rebase_window_s,
                                      log=log)
        if rebase["applied"]:
            lut = lut.scaled(rebase["factor"])
            table_ms = lut.arch_latency(space, arch)
    depth_probs = [np.exp(b - b.max()) / np.exp(b - b.max()).sum() for b in outcome.betas]
    if args.final_fit:
        arch, fit = E.final_fit(lut, space, arch.ops, E.mids_from_masks(outcome.masks), target, outcome.log_alphas,
                                depth_probs, args.channel_multiple)
        table_ms = lut.arch_latency(space, arch)
        log(f"tfnas: final fit: {', '.join(fit['depth_changes']) or 'depths kept'}, {fit['width_moves']} width "
            f"step(s): {arch.to_dict()['ops']} depths {list(arch.depths)}; table latency {table_ms:.4f} ms "
            f"({100 * (table_ms / target - 1):+.2f} % of the target)")
    spec = space.build_spec(arch, dropout=args.dropout, drop_connect=args.drop_connect, name=f"{space.name}_tfnas")
    as_built_ms = lut_as_built.arch_latency(space, arch)
    miss = E.target_miss(lut, space, arch, target, args.channel_multiple)
    if miss:
        log(f"tfnas: warning: {miss}")
    atomic_write_json(workdir / "search" / "result.json", {
        "arch": arch.to_dict(), "table_latency_ms": table_ms, "target_ms": target, "steps": outcome.steps,
        "parsed_arch": outcome.arch.to_dict(), "parsed_table_latency_ms": outcome.table_ms, "final_fit": fit,
        "rebase": rebase, "table_latency_ms_as_built": as_built_ms,
        "epochs": outcome.epochs, "op_probs": np.exp(outcome.log_alphas).tolist(),
        "depth_probs": [p.tolist() for p in depth_probs]})

    variables, test_acc = None, None
    if args.retrain:
        trained = ctx.trainer.train(spec, workdir / "retrain")
        variables, test_acc = trained.variables, float(trained.metrics["test"]["accuracy"])
        log(f"tfnas: retrained test accuracy {test_acc:.4f}")
    metrics = {
        "target": {"kind": "latency_ms", "value": target, "statistic": args.table_stat,
                   **({"fraction": args.target_fraction} if args.target_fraction is not None else {})},
        "achieved": {"table_latency_ms": table_ms},
        "table_latency_ms": table_ms,
        "table_error_pct": 100.0 * (table_ms / target - 1.0),
        # with rebase_table the table latency is on the re-based table (the machine's speed before the fit)
        "table_latency_ms_as_built": as_built_ms,
        "rebase": rebase,
        "target_miss": miss,
        "final_fit": fit,
        "test_accuracy": test_acc,
        "retrained": bool(args.retrain),
        "choices": arch.to_dict(),
        "reachable": {"min_ms": lo, "max_ms": hi},
        "table": table_info,
        "space": space.to_dict(),
        "search_steps": outcome.steps,
        "elasticity": [{k: e[k] for k in ("epoch", "tau", "lat_before", "lat_after")} for e in outcome.epochs],
        "method_seconds": round(time.time() - t0, 1),
    }
    return SearchResult(spec, variables, metrics)


__all__ = ["run_search", "make_space", "load_lut", "reachable_range", "search_config"]
