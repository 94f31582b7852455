"""End-to-end depth compression: baseline -> T, T_opt -> importance, I_opt -> stage 2 -> finetune -> merge.

    from jaxnas.methods.depth import run
    summary = run(load_config("configs/depth/quick.yaml"), Path("runs/depth-quick"),
                  time_table_fn=latency.segment_table.build_time_table)

Latency enters only as a CSV (``search.args.time_table``) or a callable ``time_table_fn(chain, out_csv)
-> path`` supplied by the application layer (this package never imports `latency` or `export`).
Every phase resumes: the baseline and the finetune through `fit`'s checkpoints, the importance table
through its per-segment files, the tables through the CSVs written in the workdir.

Workdir layout::

    baseline/            trained base model (unless search.args.baseline points elsewhere)
    time_table.csv       T (when built here), opt_time_table.csv (T_opt)
    importance/          one JSON per extended segment, importance.csv (raw deltas)
    ext_importance.csv   I_opt (normalised, extended)
    solution.json        stage 2: act_pos, merge_pos, imp_sum, time sums
    unmerged_arch.json   the fix_act spec that is finetuned;  finetune/<pattern hash>/ its training run
    arch.json            the merged spec;  merged/final/ its variables
    depth_summary.json   the summary `run` returns
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.depth.dp import optimal_time_table, solve
from jaxnas.methods.depth.importance import (ImportanceConfig, ext_segments_of, measure_importance,
                                             optimal_importance)
from jaxnas.methods.depth.merge import forward, merge_network
from jaxnas.methods.depth.mergeable import body_of, fix_act, freeze_tx, mergeable_spec, transfer_variables
from jaxnas.methods.depth.segments import ConvChain, valid_segments
from jaxnas.methods.depth.tables import (TableError, read_ext_importance, read_importance_table,
                                         read_opt_table, read_time_table, write_ext_importance,
                                         write_opt_table)
from jaxnas.spec import ArchSpec

AUTO_BUDGET_UNITS = 4000  # `prec: null` discretises the budget T0 into this many units
TimeTableFn = Callable[[ConvChain, Path], "str | Path"]


@dataclass(frozen=True)
class DepthArgs:
    """`search.args` of ``search.method: depth``."""

    baseline: str | None = None             # workdir with the trained base model's weights; None: train it
    baseline_epochs: float | None = None    # epochs of the baseline trained here (None: train.epochs)
    time_table: str | None = None           # T(st, end) CSV in ms; None: built by the caller's time_table_fn
    # how `jaxnas search` measures T: "network" = the change of the whole network's latency when the
    # segment alone is merged (faithful on CPU runtimes); "alone" = each merged conv timed by itself (the
    # original's TensorRT tables; on onnxruntime it over-predicts speed-ups, see benchmarks/depth_table_fidelity.py)
    time_table_context: Literal["network", "alone"] = "network"
    importance_table: str | None = None     # raw importance CSV to use instead of measuring
    ext_importance_table: str | None = None  # I_opt CSV (skips measuring and normalising)
    time_fraction: float = 0.75             # T0 = fraction x Σ T(i, i+1) unless search.target_latency_ms
    prec: float | None = 20.0               # time discretisation, units per ms (None: T0 = 4000 units)
    alpha: float = 1.6                      # importance normalisation (1.6 MBV2-1.0, 1.2 MBV2-1.4, 1.4 VGG)
    norm: Literal["single", "all", "default"] = "single"
    score: Literal["val_acc", "train_acc"] = "val_acc"
    exclude_zeros: bool = True
    zero_acts: bool = True                  # False: (1, 1) segments only (the original's VGG tables)
    importance_steps: int = 50              # SGD steps per segment (the original: 1 epoch)
    importance_lr: float = 0.01
    importance_weight_decay: float = 1e-5
    importance_batch_size: int | None = None  # None: data.batch_size
    importance_eval_examples: int | None = None  # None: the whole held-out split
    importance_padding: Literal["rearrange", "same"] = "rearrange"
    importance_bn_momentum: float = 0.9
    finetune_epochs: float = 1.0
    finetune_lr: float | None = None        # None: optim.learning_rate
    distill: float = 0.0                    # KD weight with the baseline as teacher (the original's 0.3)
    check_tolerance: float = 1e-4           # merged vs unmerged max |logit difference|

    def __post_init__(self):
        errs = []
        if not self.time_fraction > 0:
            errs.append(f"time_fraction: must be > 0, got {self.time_fraction}")
        if self.prec is not None and not self.prec > 0:
            errs.append(f"prec: must be > 0, got {self.prec}")
        if self.importance_steps < 0:
            errs.append(f"importance_steps: must be >= 0, got {self.importance_steps}")
        if self.finetune_epochs < 0:
            errs.append(f"finetune_epochs: must be >= 0, got {self.finetune_epochs}")
        if not 0 <= self.distill < 1:
            errs.append(f"distill: must be in [0, 1), got {self.distill}")
        for k in ("importance_batch_size", "importance_eval_examples"):
            v = getattr(self, k)
            if v is not None and v < 1:
                errs.append(f"{k}: must be >= 1 or null, got {v}")
        if errs:
            raise ValueError("\n".join(errs))


# ------------------------------------------------------------------------------------ CLI helpers

def t_opt_cli(time_csv: str | Path, out_csv: str | Path) -> dict[str, Any]:
    """`jaxnas depth t-opt`: T_opt of a T table (``id,st,end,time,stdev``) written to `out_csv`."""
    T = read_time_table(time_csv)
    opt = optimal_time_table(T)
    from jaxnas.io_utils import atomic_write_text

    atomic_write_text(out_csv, write_opt_table(opt))
    merged = sum(1 for e in opt.entries.values() if len(e.breaks) > 2)
    return {"rows": len(opt), "split_rows": merged, "out": str(out_csv)}


def solve_cli(opt_csv: str | Path, imp_csv: str | Path, time_limit: float, prec: float,
              L: int | None = None, time_csv: str | Path | None = None) -> dict[str, Any]:
    """`jaxnas depth solve`: stage 2 on a T_opt CSV and an extended importance CSV
    (``id,st,end,st_act,end_act,imp,breaks``).  With `time_csv` (T) the merge set is re-derived from the
    activations as a check.  Returns act_pos, merge_pos, imp_sum, time_sum, int_time_sum, solve_seconds."""
    opt = read_opt_table(opt_csv)
    ext = read_ext_importance(imp_csv)
    if L is None:
        L = max(e for _, e in opt.entries)
    T = read_time_table(time_csv) if time_csv is not None else None
    res = solve(opt, ext, float(time_limit), float(prec), int(L), check_time_table=T, strict_check=False)
    return {"act_pos": res.act_pos, "merge_pos": res.merge_pos, "imp_sum": res.imp_sum,
            "time_sum": res.flt_time_sum, "int_time_sum": res.int_time_sum, "time_limit": res.time_limit,
            "prec": res.prec, "solve_seconds": res.solve_seconds, "merge_check": res.merge_check}


# --------------------------------------------------------------------------------------- helpers

def data_config(cfg) -> Any:
    """The `jaxnas.data.DataConfig` of an experiment config's data section."""
    from jaxnas.data import DataConfig

    d = cfg.data
    return DataConfig(source=d.source, name=d.name, data_dir=d.data_dir, path=d.path, download=d.download,
                      image_size=d.image_size, channels=d.channels, holdout=d.holdout, augment=d.augment,
                      flip=d.flip, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                      limit_train=d.limit_train, limit_test=d.limit_test, seed=cfg.train.seed)


def base_spec(cfg, dataset) -> ArchSpec:
    """The zoo (or JSON) spec of the experiment, sized to the data."""
    from jaxnas import zoo

    m = cfg.model
    h = dataset.image_shape[0]
    kw = dict(resolution=h, num_classes=m.num_classes or dataset.num_classes,
              in_channels=dataset.image_shape[2])
    if m.spec:
        return zoo.resolve_spec(m.spec, **kw)
    spec = zoo.get_spec(m.name, width=m.width, small_input=m.small_input, **kw)
    if spec.head.num_classes:
        spec = spec.replace(head=dataclasses.replace(spec.head, dropout=m.dropout))
    return spec


def _loop(cfg, epochs: float, eval_split: str, **kw) -> Any:
    from jaxnas.train import TrainLoopConfig

    t = cfg.train
    return TrainLoopConfig(epochs=epochs, seed=t.seed, label_smoothing=t.label_smoothing, log_every=t.log_every,
                           checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                           eval_every_epochs=t.eval_every_epochs, progress=t.progress, max_steps=t.max_steps,
                           batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                           eval_split=eval_split, **kw)


def _optim(cfg, lr: float | None = None):
    from jaxnas.train import OptimConfig, ScheduleConfig, coerce

    optim = coerce(OptimConfig, cfg.optim)
    if lr is not None:
        optim = dataclasses.replace(optim, learning_rate=lr)
    return optim, coerce(ScheduleConfig, cfg.schedule)


def _has_weights(d: Path) -> bool:
    return (d / "final").exists() or (d / "checkpoints").exists()


def train_baseline(cfg, spec: ArchSpec, dataset, workdir: Path, epochs: float, log=print) -> dict[str, Any]:
    """Train (or resume, or load) the base model in `workdir`; returns its variables."""
    from jaxnas.models import build_model, init_variables
    from jaxnas.train import fit, load_variables

    if (workdir / "final").exists():
        log(f"depth: baseline weights found in {workdir}")
        return load_variables(workdir)
    model = build_model(spec, cfg.model.depthwise)
    optim, schedule = _optim(cfg)
    split = "holdout" if dataset.num_examples("holdout") else "test"
    log(f"depth: training the baseline {spec.name} for {epochs:g} epochs in {workdir}")
    state, _ = fit(model, init_variables(model, cfg.train.seed), dataset, workdir=workdir, optim=optim,
                   schedule=schedule, loop=_loop(cfg, epochs, split))
    return load_variables(workdir)


def _test_accuracy(spec: ArchSpec, variables, dataset, batch_size: int, depthwise: str = "auto") -> float:
    from jaxnas.models import build_model
    from jaxnas.train import evaluate

    return float(evaluate(build_model(spec, depthwise), variables, dataset, "test", batch_size)["accuracy"])


def _sum_single(T, L: int) -> float:
    missing = [i for i in range(L) if (i, i + 1) not in T.entries]
    if missing:
        raise TableError(f"time table lacks the single-conv segments {[(i, i + 1) for i in missing[:5]]}")
    return float(sum(T.entries[(i, i + 1)].time for i in range(L)))


def _read_json(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.exists() else None


# ------------------------------------------------------------------------------------------- run

def run(cfg, workdir: str | Path, *, time_table_fn: TimeTableFn | None = None,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Depth compression of the configured model; returns (and writes ``depth_summary.json``) a summary.

    Summary keys: baseline_test_accuracy, test_accuracy, act_pos, merge_pos, imp_sum, time_sum
    (T_opt sum of the solution, ms), int_time_sum, time_limit, baseline_time_sum (Σ T(i, i+1)),
    merge_check, max_merge_diff, and the paths baseline_spec / baseline_variables / arch (merged spec) /
    variables (merged variables dir, for `load_variables`) / unmerged_arch / unmerged_variables.
    """
    from jaxnas.config import config_from_dict
    from jaxnas.data import load_dataset
    from jaxnas.models import build_model
    from jaxnas.train import DistillConfig, fit, load_variables, make_optimizer, save_final

    say = log or (lambda _m: None)
    t_run = time.perf_counter()
    args: DepthArgs = config_from_dict(dict(cfg.search.args), DepthArgs, prefix="search.args")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data_config(cfg))
    spec0 = base_spec(cfg, dataset)
    base = mergeable_spec(spec0)
    body = body_of(base)
    chain, L = body.chain, body.L
    segs = valid_segments(chain)
    ebs = cfg.data.eval_batch_size
    phases: dict[str, float] = {}

    # 1. Baseline.
    t0 = time.perf_counter()
    if args.baseline:
        bdir = Path(args.baseline)
        if not _has_weights(bdir):
            raise FileNotFoundError(f"search.args.baseline: no trained weights in {bdir} (final/ or checkpoints/)")
        variables = load_variables(bdir)
    else:
        bdir = workdir / "baseline"
        variables = train_baseline(cfg, spec0, dataset, bdir, args.baseline_epochs or cfg.train.epochs, say)
    variables = transfer_variables(variables, base)  # checks the weights fit the configured model
    spec0.save(workdir / "baseline_arch.json")
    base_acc = _test_accuracy(base, variables, dataset, ebs, cfg.model.depthwise)
    say(f"depth: baseline {spec0.name}: {L} body convs, {len(segs)} mergeable segments, "
        f"test accuracy {base_acc:.4f}")
    phases["baseline_s"] = time.perf_counter() - t0

    # 2. Latency tables.
    t0 = time.perf_counter()
    if args.time_table:
        t_path = Path(args.time_table)
    elif time_table_fn is not None:
        t_path = Path(time_table_fn(chain, workdir / "time_table.csv"))
    else:
        raise TableError("no latency table: set search.args.time_table to a T(st, end) CSV, or run through "
                         "`jaxnas search` which measures one")
    T = read_time_table(t_path, segments=segs)
    T_opt = optimal_time_table(T, segs)
    from jaxnas.io_utils import atomic_write_text

    atomic_write_text(workdir / "opt_time_table.csv", write_opt_table(T_opt))
    base_time = _sum_single(T, L)
    phases["latency_table_s"] = time.perf_counter() - t0

    # 3. Importance -> I_opt.
    t0 = time.perf_counter()
    ext_segs = ext_segments_of(body, args.exclude_zeros, args.zero_acts)
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
    T0 = float(cfg.search.target_latency_ms) if cfg.search.target_latency_ms else args.time_fraction * base_time
    prec = args.prec if args.prec is not None else AUTO_BUDGET_UNITS / T0
    res = solve(T_opt, ext, T0, prec, L, check_time_table=T, strict_check=False)
    solution = res.to_dict()
    atomic_write_json(workdir / "solution.json", solution)
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
            model = build_model(fspec, cfg.model.depthwise)
            optim, schedule = _optim(cfg, args.finetune_lr)
            spe = dataset.steps_per_epoch("train", cfg.data.batch_size)
            total = max(1, int(round(args.finetune_epochs * spe)))
            tx, _ = make_optimizer(optim, schedule, spe, total)
            distill = None
            if args.distill > 0:
                distill = DistillConfig(teacher=build_model(spec0, cfg.model.depthwise),
                                        teacher_variables=variables, weight=args.distill, temperature=1.0)
            split = "holdout" if dataset.num_examples("holdout") else "test"
            loop = _loop(cfg, args.finetune_epochs, split, **({"distill": distill} if distill else {}))
            say(f"depth: finetuning the fix_act net for {args.finetune_epochs:g} epochs in {fdir}")
            fit(model, fvars, dataset, workdir=fdir, optim=optim, schedule=schedule, loop=loop,
                tx=freeze_tx(fspec, tx))
        fvars = transfer_variables(load_variables(fdir), fspec)
    else:
        save_final(fdir, fvars)
    phases["finetune_s"] = time.perf_counter() - t0

    # 6. Merge, check, save.
    t0 = time.perf_counter()
    mspec, mvars = merge_network(fspec, fvars)
    x = next(iter(dataset.batches("test", min(16, dataset.num_examples("test")), seed=0,
                                  drop_remainder=False)))["image"]
    ya, yb = forward(fspec, fvars, x), forward(mspec, mvars, x)
    diff = float(np.max(np.abs(ya - yb)))
    if not diff <= args.check_tolerance * max(1.0, float(np.max(np.abs(ya)))):
        raise RuntimeError(f"merged network differs from the finetuned one by {diff:.3g} (tolerance "
                           f"{args.check_tolerance:g}); this is a bug")
    mspec.save(workdir / "arch.json")
    mdir = save_final(workdir / "merged", mvars).parent
    unmerged_acc = _test_accuracy(fspec, fvars, dataset, ebs, cfg.model.depthwise)
    merged_acc = _test_accuracy(mspec, mvars, dataset, ebs, cfg.model.depthwise)
    phases["merge_s"] = time.perf_counter() - t0
    phases["total_s"] = time.perf_counter() - t_run
    summary = {
        "method": "depth", "model": spec0.name, "L": L,
        "baseline_test_accuracy": base_acc, "test_accuracy": merged_acc,
        "unmerged_test_accuracy": unmerged_acc,
        "act_pos": res.act_pos, "merge_pos": res.merge_pos, "imp_sum": res.imp_sum,
        "time_sum": res.flt_time_sum, "int_time_sum": res.int_time_sum, "time_limit": T0, "prec": prec,
        "baseline_time_sum": base_time, "predicted_speedup": base_time / res.flt_time_sum if res.flt_time_sum else None,
        "merge_check": res.merge_check, "max_merge_diff": diff,
        "num_merged_blocks": sum(1 for b in mspec.blocks if b.kind == "merged"),
        "baseline_spec": str(workdir / "baseline_arch.json"), "baseline_variables": str(bdir),
        "arch": str(workdir / "arch.json"), "variables": str(mdir),
        "unmerged_arch": str(workdir / "unmerged_arch.json"), "unmerged_variables": str(fdir),
        "time_table": str(t_path), "phases": phases,
    }
    atomic_write_json(workdir / "depth_summary.json", summary)
    say(f"depth: test accuracy {base_acc:.4f} -> {merged_acc:.4f}; body time {base_time:.4f} -> "
        f"{res.flt_time_sum:.4f} ms (predicted); merged spec {workdir / 'arch.json'}")
    return summary
