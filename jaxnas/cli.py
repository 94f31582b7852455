"""`jaxnas` command line.  Thin: every command calls a library function and prints its result.

Known user errors (bad config key, missing data, impossible budget, corrupt checkpoint, ...) print one
line `error: ...` and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence


def _user_errors() -> tuple[type[BaseException], ...]:
    from jaxnas.config import ConfigError
    from jaxnas.experiment import WorkdirError
    from jaxnas.spec import SpecError
    errors: list[type[BaseException]] = [ConfigError, SpecError, WorkdirError, FileNotFoundError]
    for mod, names in (("jaxnas.data", ("DataError",)), ("jaxnas.train", ("CheckpointError",)),
                       ("jaxnas.methods.depth", ("TableError", "BudgetError", "MergeCheckError")),
                       ("jaxnas.methods.dmcp", ("SearchError",)), ("jaxnas.methods.depth.pipeline", ("DepthError",)),
                       ("jaxnas.latency", ("BackendError", "TableError")), ("jaxnas.export", ("ExportError",))):
        try:
            m = __import__(mod, fromlist=list(names))
        except Exception:
            continue
        errors += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(errors)


def _print(obj: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, indent=1, sort_keys=True, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=1, default=str))


# ----------------------------------------------------------------------------------------------------
# info
# ----------------------------------------------------------------------------------------------------

def _resolve(args) -> "Any":
    from jaxnas import zoo
    return zoo.resolve_spec(args.model, resolution=args.resolution, num_classes=args.num_classes,
                            width=getattr(args, "width", None),
                            small_input=True if getattr(args, "small_input", False) else None)


def cmd_info(args) -> int:
    from jaxnas import spec as S
    spec = _resolve(args)
    cost = S.analyze(spec)
    rows = cost.table()
    out = {"name": spec.name, "macs": cost.macs, "params": cost.params, "input": [*spec.input_size, spec.in_channels],
           "num_classes": spec.head.num_classes, "blocks": rows}
    lines = [f"{spec.name}: {cost.macs / 1e6:.2f} M MACs, {cost.params / 1e6:.3f} M params, input "
             f"{spec.input_size[0]}x{spec.input_size[1]}x{spec.in_channels}",
             f"{'#':>3} {'kind':<10} {'in':>14} {'out':>14} {'MMACs':>9} {'params':>10}"]
    for r in rows:
        lines.append(f"{r['index']:>3} {r['kind']:<10} {'x'.join(map(str, r['in_shape'])):>14} "
                     f"{'x'.join(map(str, r['out_shape'])):>14} {r['macs'] / 1e6:>9.2f} {r['params']:>10}")
    _print(out, args.json, "\n".join(lines))
    return 0


# ----------------------------------------------------------------------------------------------------
# train / eval / quickstart
# ----------------------------------------------------------------------------------------------------

def _workdir_for(cfg, workdir: str | None) -> Path:
    return Path(workdir or os.path.join("runs", cfg.name))


def cmd_train(args) -> int:
    from jaxnas.config import load_config
    from jaxnas.experiment import run_training
    cfg = load_config(args.config, args.set or ())
    summary = run_training(cfg, _workdir_for(cfg, args.workdir))
    _print(summary, True)
    return 0


def cmd_eval(args) -> int:
    from jaxnas import models
    from jaxnas.experiment import load_data, load_workdir
    from jaxnas.train import evaluate
    cfg, spec, variables = load_workdir(args.workdir)
    dataset = load_data(cfg)
    model = models.build_model(spec, cfg.model.depthwise, bn_eps=float(spec.metadata.get("bn_eps", 1e-5)))
    result = {split: {k: float(v) for k, v in evaluate(model, variables, dataset, split,
                                                       cfg.data.eval_batch_size).items()}
              for split in ("test",)}
    out = {"workdir": str(args.workdir), "test_accuracy": result["test"]["accuracy"],
           "test_loss": result["test"]["loss"], "test_examples": int(result["test"]["count"])}
    _print(out, args.json, f"test accuracy {out['test_accuracy']:.4f} (loss {out['test_loss']:.4f}, "
                           f"{out['test_examples']} examples)")
    return 0


def cmd_quickstart(args) -> int:
    from jaxnas.quickstart import run_quickstart
    summary = run_quickstart(args.workdir, epochs=args.epochs, export=not args.no_export)
    _print(summary, True)
    return 0


# ----------------------------------------------------------------------------------------------------
# export / latency
# ----------------------------------------------------------------------------------------------------

def _spec_and_variables(args):
    """A trained work dir, or a zoo model / spec JSON with --random-init."""
    from jaxnas import models
    from jaxnas.experiment import load_workdir
    target = args.target
    if os.path.isdir(target):
        _, spec, variables = load_workdir(target)
        return spec, variables
    if not getattr(args, "random_init", True):
        from jaxnas.experiment import WorkdirError
        raise WorkdirError(f"{target} is not a work dir; to export an untrained model pass --random-init")
    args.model = target
    spec = _resolve(args)
    return spec, models.init_variables(models.build_model(spec), 0)


def cmd_export(args) -> int:
    from jaxnas import export
    spec, variables = _spec_and_variables(args)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    results = export.export_model(spec, variables, args.out, formats, route=args.route,
                                  precision=args.precision, dynamic_batch=args.dynamic_batch)
    out = {fmt: {"path": str(r.path), "max_abs_diff": r.max_abs_diff, "seconds": r.seconds}
           for fmt, r in results.items()}
    _print(out, args.json, "\n".join(f"{k}: {v['path']} (max |diff| {v['max_abs_diff']:.2e}, "
                                     f"{v['seconds']:.1f} s)" for k, v in out.items()))
    return 0


def cmd_latency_measure(args) -> int:
    from jaxnas.latency.measure import measure_spec
    spec, variables = _spec_and_variables(args)
    result = measure_spec(spec, variables, args.backend, threads=args.threads, batch_size=args.batch_size,
                          warmup=args.warmup, runs=args.runs)
    _print(result, args.json, f"{spec.name} on {result['fingerprint']['backend']}: median "
                              f"{result['median_ms']:.3f} ms (p10 {result['p10_ms']:.3f}, p90 "
                              f"{result['p90_ms']:.3f}, n={result['count']})")
    return 0


def cmd_latency_build(args) -> int:
    from jaxnas.latency.builder import build_table
    table = build_table(args.space, args.backend, args.out, threads=args.threads, warmup=args.warmup,
                        runs=args.runs, context=args.context)
    _print({"path": str(args.out), "entries": len(table)}, args.json,
           f"{args.out}: {len(table)} entries")
    return 0


def cmd_latency_validate(args) -> int:
    from jaxnas.latency.predictor import validate_space
    report = validate_space(args.space, args.backend, args.samples, table_path=args.table, threads=args.threads,
                            seed=args.seed, warmup=args.warmup, runs=args.runs, context=args.context)
    _print(report, args.json)
    return 0


# ----------------------------------------------------------------------------------------------------
# search / depth
# ----------------------------------------------------------------------------------------------------

def cmd_search(args) -> int:
    from jaxnas.config import load_config
    from jaxnas.search import run_search
    cfg = load_config(args.config, args.set or ())
    summary = run_search(cfg, _workdir_for(cfg, args.workdir))
    _print(summary, True)
    return 0


def cmd_depth_topt(args) -> int:
    from jaxnas.methods.depth.pipeline import t_opt_cli
    out = t_opt_cli(args.time_table, args.out)
    _print(out if isinstance(out, dict) else {"out": str(args.out)}, True)
    return 0


def cmd_depth_solve(args) -> int:
    from jaxnas.methods.depth.pipeline import solve_cli
    out = solve_cli(args.opt_time_table, args.importance_table, args.time_limit, args.prec)
    _print(out, args.json)
    return 0


# ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxnas", description="Hardware-aware CNN search and pruning in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q, random_init: bool = False):
        q.add_argument("--resolution", type=int)
        q.add_argument("--num-classes", type=int)
        q.add_argument("--width", type=float)
        q.add_argument("--small-input", action="store_true", help="stride-1 stem for 28-32 px inputs")
        if random_init:
            q.add_argument("--random-init", action="store_true",
                           help="export/measure an untrained model (MODEL_OR_SPEC_JSON instead of a work dir)")

    q = sub.add_parser("info", help="MACs, params and a per-block table of a zoo model or spec JSON")
    q.add_argument("model", metavar="MODEL_OR_SPEC_JSON")
    model_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_info)

    q = sub.add_parser("train", help="train a model from a YAML config")
    q.add_argument("config")
    q.add_argument("--workdir")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("eval", help="evaluate a trained work dir on its test split")
    q.add_argument("workdir")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_eval)

    q = sub.add_parser("quickstart", help="the main job on the embedded Fashion-MNIST: train, eval, export, measure")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--epochs", type=float, help="override the number of epochs")
    q.add_argument("--no-export", action="store_true", help="skip export and latency measurement")
    q.set_defaults(fn=cmd_quickstart)

    q = sub.add_parser("export", help="export a work dir or a model to ONNX / TFLite / TensorRT with parity checks")
    q.add_argument("target", metavar="WORKDIR_OR_MODEL")
    model_args(q, random_init=True)
    q.add_argument("--format", default="onnx,tflite", help="comma list of onnx, tflite, tensorrt")
    q.add_argument("--out", required=True)
    q.add_argument("--route", default="jax2onnx", choices=("jax2onnx", "tflite"))
    q.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    q.add_argument("--dynamic-batch", action="store_true")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_export)

    lat = sub.add_parser("latency", help="measure latency, build lookup tables, validate the predictor")
    lsub = lat.add_subparsers(dest="latency_command", required=True)

    def timing_args(q):
        q.add_argument("--backend", default="onnxruntime")
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--warmup", type=int, default=20)
        q.add_argument("--runs", type=int, default=100)
        q.add_argument("--json", action="store_true")

    q = lsub.add_parser("measure", help="time a work dir or model end to end on a runtime")
    q.add_argument("target", metavar="WORKDIR_OR_MODEL")
    model_args(q, random_init=True)
    q.add_argument("--batch-size", type=int, default=1)
    timing_args(q)
    q.set_defaults(fn=cmd_latency_measure)

    q = lsub.add_parser("build-table", help="measure every block of a search space into a lookup table")
    q.add_argument("space", help="built-in space name (mbv2-small, mbv2-224) or a space YAML")
    q.add_argument("--out", required=True)
    q.add_argument("--context", choices=["alone", "network"], default="alone",
                   help="time each block alone, or as the change it makes to a reference network "
                        "(better ranks on onnxruntime/CPU)")
    timing_args(q)
    q.set_defaults(fn=cmd_latency_build)

    q = lsub.add_parser("validate", help="predictor vs end-to-end measurement on random architectures")
    q.add_argument("space")
    q.add_argument("--samples", type=int, default=20)
    q.add_argument("--table")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--context", choices=["alone", "network"], default=None,
                   help="time each block alone, or as the change it makes to a reference network "
                        "(default: the table's own; alone for a new one)")
    timing_args(q)
    q.set_defaults(fn=cmd_latency_validate)

    q = sub.add_parser("search", help="run a search/pruning method (search.method in the config)")
    q.add_argument("config")
    q.add_argument("--workdir")
    q.add_argument("--set", action="append", metavar="KEY=VALUE")
    q.set_defaults(fn=cmd_search)

    dep = sub.add_parser("depth", help="depth compression tools (two-stage DP)")
    dsub = dep.add_subparsers(dest="depth_command", required=True)
    q = dsub.add_parser("t-opt", help="stage 1: optimal merged-time table from a time table")
    q.add_argument("--time-table", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cmd_depth_topt)
    q = dsub.add_parser("solve", help="stage 2: optimal activation and merge sets under a time budget")
    q.add_argument("--opt-time-table", required=True)
    q.add_argument("--importance-table", required=True)
    q.add_argument("--time-limit", type=float, required=True)
    q.add_argument("--prec", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_depth_solve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    errors = _user_errors()
    try:
        return args.fn(args)
    except errors as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        if isinstance(e, FileNotFoundError) and e.filename:
            lines = [f"{e.filename}: no such file or directory"]
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def entry() -> None:
    """The `jaxnas` console command: `main` on tcmalloc where the system has it (see jaxnas.allocator)."""
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    sys.exit(main())


if __name__ == "__main__":
    entry()
