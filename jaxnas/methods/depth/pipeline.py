"""End-to-end depth compression on the method contract: baseline -> T, T_opt -> importance, I_opt ->
stage 2 -> finetune -> merge.

    jaxnas search configs/depth/quick.yaml          # search.method: depth

Latency enters as a CSV (``search.args.time_table``) or is measured through the latency oracle the
runner injects (`time_table.py`; this package never imports a runtime). Every phase resumes: the
baseline and the finetune through the trainer's checkpoints, the importance table through its
per-segment files, the tables through the CSVs and caches written in the workdir.

Workdir layout::

    baseline/            trained base model (unless search.args.baseline points elsewhere)
    time_table.csv       T (when built here), opt_time_table.csv (T_opt)
    importance/          one JSON per extended segment, importance.csv (raw deltas)
    ext_importance.csv   I_opt (normalised, extended)
    solution.json        stage 2: act_pos, merge_pos, imp_sum, time sums
    unmerged_arch.json   the fix_act spec that is finetuned;  finetune/<pattern hash>/ its training run
    merged/final/        the merged network's variables (the runner also writes arch.json and final/)
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnas.io_utils import atomic_write_json, atomic_write_text
from jaxnas.methods.base import SearchContext, SearchResult
from jaxnas.methods.depth.args import DepthArgs
from jaxnas.methods.depth.dp import check_dp_memory, optimal_time_table, solve
from jaxnas.methods.depth.importance import (ImportanceConfig, ext_segments_of, measure_importance,
                                             optimal_importance)
from jaxnas.methods.depth.merge import forward, merge_network
from jaxnas.methods.depth.mergeable import body_of, fix_act, freeze_tx, mergeable_spec, transfer_variables
from jaxnas.methods.depth.segments import valid_segments
from jaxnas.methods.depth.tables import (TableError, read_ext_importance, read_importance_table,
                                         read_time_table, write_ext_importance,
                                         write_opt_table)
from jaxnas.spec import ArchSpec

AUTO_BUDGET_UNITS = 4000  # `prec: null` discretises the budget T0 into this many units


# --------------------------------------------------------------------------------------- helpers

def measure_time_table(ctx: SearchContext, args: DepthArgs, base: ArchSpec, out_csv: Path) -> Path:
    """T(st, end) on the configured runtime through the oracle (``time_table_context``: network / alone)."""
    from jaxnas.methods.depth.time_table import build_network_time_table, build_time_table

    if args.time_table_context == "network":
        return build_network_time_table(base, out_csv, ctx.oracle)
    return build_time_table(body_of(base).chain, out_csv, ctx.oracle, act=body_of(base).act,
                            batch_size=ctx.cfg.latency.batch_size)


# ------------------------------------------------------------------------------------------- run

def run_search(ctx: SearchContext, args: DepthArgs) -> SearchResult:
    """Depth compression of the configured model (see the module docstring): the merged network, with the
    uncompressed base network as the baseline the runner times it against."""
    from jaxnas.train import load_variables, save_final

    cfg, dataset, trainer, say = ctx.cfg, ctx.dataset, ctx.trainer, ctx.log
    t_run = time.perf_counter()
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec0 = ctx.spec
    base = mergeable_spec(spec0)
    body = body_of(base)
    chain, L = body.chain, body.L
    segs = valid_segments(chain)
    phases: dict[str, float] = {}
    target = ctx.target()
    if target is not None and args.prec is not None:  # the budget is known: refuse it before any training
        check_dp_memory(target[1], args.prec, L)

    def accuracy(spec: ArchSpec, variables: Any) -> float:
        return float(trainer.evaluate(spec, variables, "test")["accuracy"])

    # 1. Baseline.
    t0 = time.perf_counter()
    if args.baseline:
        bdir = Path(args.baseline)
        if not ((bdir / "final").exists() or (bdir / "checkpoints").exists()):
            raise TableError(f"search.args.baseline: no trained weights in {bdir} (final/ or checkpoints/)")
        variables = load_variables(bdir)
    else:
        bdir = workdir / "baseline"
        if (bdir / "final").exists():
            say(f"depth: baseline weights found in {bdir}")
            variables = load_variables(bdir)
        else:
            epochs = args.baseline_epochs or cfg.train.epochs
            say(f"depth: training the baseline {spec0.name} for {epochs:g} epochs in {bdir}")
            variables = trainer.train(spec0, bdir, epochs=epochs, eval_split="holdout", test=False).variables
    variables = transfer_variables(variables, base)  # checks the weights fit the configured model
    spec0.save(workdir / "baseline_arch.json")
    base_acc = accuracy(base, variables)
    say(f"depth: baseline {spec0.name}: {L} body convs, {len(segs)} mergeable segments, "
        f"test accuracy {base_acc:.4f}")
    phases["baseline_s"] = time.perf_counter() - t0

    # 2. Latency tables.
    t0 = time.perf_counter()
    t_path = Path(args.time_table) if args.time_table else measure_time_table(ctx, args, base,
                                                                                 workdir / "time_table.csv")
    T = read_time_table(t_path, segments=segs)
    T_opt = optimal_time_table(T, segs)
    atomic_write_text(workdir / "opt_time_table.csv", write_opt_table(T_opt))
    base_time = float(sum(T.entries[(i, i + 1)].time for i in range(L)))  # every (i, i + 1) is a valid segment
    T0 = target[1] if target is not None else args.time_fraction * base_time
    prec = args.prec if args.prec is not None else AUTO_BUDGET_UNITS / T0
    check_dp_memory(T0, prec, L)  # before the importance phase, the long one
    phases["latency_table_s"] = time.perf_counter() - t0

    # 3. Importance -> I_opt.
    t0 = time.perf_counter()
    ext_segs = ext_segments_of(body, args.exclude_zeros, args.zero_acts)
    ebs = cfg.data.eval_batch_size
    if args.ext_importance_table:
        ext = read_ext_importance(args.ext_importance_table, ext_segs)
    else:
        if args.importance_table:
            raw = read_importance_table(args.importance_table, ext_segments=ext_segs)
        else:
            icfg = ImportanceConfig(
                steps=args.importance_steps, lr=args.importance_lr, momentum=cfg.optim.momentum,
                nesterov=True, weight_decay=args.importance_weight_decay,
                batch_size=args.importance_batch_size or cfg.data.batch_size, eval_batch_size=ebs,
                eval_examples=args.importance_eval_examples, padding=args.importance_padding,
                bn_momentum=args.importance_bn_momentum, label_smoothing=cfg.train.label_smoothing,
                seed=cfg.train.seed, exclude_zeros=args.exclude_zeros, zero_acts=args.zero_acts)
            raw = measure_importance(base, variables, dataset, workdir / "importance", icfg, segments=ext_segs,
                                     log=say)
        ext = optimal_importance(raw, body, alpha=args.alpha, norm=args.norm, score=args.score,
                                 exclude_zeros=args.exclude_zeros, zero_acts=args.zero_acts)
        atomic_write_text(workdir / "ext_importance.csv", write_ext_importance(ext))
    phases["importance_s"] = time.perf_counter() - t0

    # 4. Stage 2.
    res = solve(T_opt, ext, T0, prec, L, check_time_table=T, strict_check=False)
    atomic_write_json(workdir / "solution.json", res.to_dict())
    say(f"depth: T0 {T0:.4f} ms (body {base_time:.4f} ms): {len(res.act_pos)} activations, "
        f"{len(res.merge_pos)} merged convs, T_opt sum {res.flt_time_sum:.4f} ms, imp {res.imp_sum:.4f}, "
        f"solved in {res.solve_seconds:.2f}s")

    # 5. fix_act + finetune.
    t0 = time.perf_counter()
    fspec = fix_act(base, res.act_pos, res.merge_pos)
    fspec.save(workdir / "unmerged_arch.json")
    fvars = transfer_variables(variables, fspec)
    # One finetune run per pattern: re-solving in the same workdir (another T0) never reuses weights.
    tag = hashlib.sha1(json.dumps([res.act_pos, res.merge_pos]).encode()).hexdigest()[:10]
    fdir = workdir / "finetune" / tag
    if args.finetune_epochs > 0:
        if (fdir / "final").exists():
            say(f"depth: finetuned weights found in {fdir}")
        else:
            say(f"depth: finetuning the fix_act net for {args.finetune_epochs:g} epochs in {fdir}")
            trainer.train(fspec, fdir, variables=fvars, epochs=args.finetune_epochs, learning_rate=args.finetune_lr,
                          teacher=(spec0, variables) if args.distill > 0 else None, distill_weight=args.distill,
                          eval_split="holdout", tx_fn=lambda tx: freeze_tx(fspec, tx), test=False)
        fvars = transfer_variables(load_variables(fdir), fspec)
    else:
        save_final(fdir, fvars)
    phases["finetune_s"] = time.perf_counter() - t0

    # 6. Merge, check.
    t0 = time.perf_counter()
    mspec, mvars = merge_network(fspec, fvars)
    x = next(iter(dataset.batches("test", min(16, dataset.num_examples("test")), seed=0,
                                  drop_remainder=False)))["image"]
    ya, yb = forward(fspec, fvars, x), forward(mspec, mvars, x)
    diff = float(np.max(np.abs(ya - yb)))
    if not diff <= args.check_tolerance * max(1.0, float(np.max(np.abs(ya)))):
        raise RuntimeError(f"merged network differs from the finetuned one by {diff:.3g} (tolerance "
                           f"{args.check_tolerance:g}); this is a bug")
    save_final(workdir / "merged", mvars)
    unmerged_acc = accuracy(fspec, fvars)
    merged_acc = accuracy(mspec, mvars)
    phases["merge_s"] = time.perf_counter() - t0
    phases["total_s"] = time.perf_counter() - t_run
    metrics = {
        "L": L, "baseline_test_accuracy": base_acc, "test_accuracy": merged_acc,
        "unmerged_test_accuracy": unmerged_acc,
        "act_pos": res.act_pos, "merge_pos": res.merge_pos, "imp_sum": res.imp_sum,
        "time_sum": res.flt_time_sum, "int_time_sum": res.int_time_sum, "time_limit": T0, "prec": prec,
        "baseline_time_sum": base_time,
        "predicted_speedup": base_time / res.flt_time_sum if res.flt_time_sum else None,
        "merge_check": res.merge_check, "max_merge_diff": diff,
        "num_merged_blocks": sum(1 for b in mspec.blocks if b.kind == "merged"),
        "baseline_spec": str(workdir / "baseline_arch.json"), "baseline_variables": str(bdir),
        "unmerged_arch": str(workdir / "unmerged_arch.json"), "unmerged_variables": str(fdir),
        "time_table": str(t_path), "phases": phases,
    }
    say(f"depth: test accuracy {base_acc:.4f} -> {merged_acc:.4f}; body time {base_time:.4f} -> "
        f"{res.flt_time_sum:.4f} ms (predicted)")
    return SearchResult(mspec, mvars, metrics, baseline=(spec0, variables))
