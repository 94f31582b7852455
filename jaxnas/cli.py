"""`jaxnas` command line. Thin: every command calls a library function and prints what it made.

Each command ends with a short human summary (what was made, where, the key figures); `--json` prints
the machine-readable result instead. A user error (`jaxnas.errors.UserError`: a bad config key,
missing data, an unreachable target, a corrupt checkpoint, ...) prints one line `error: ...` per
problem and exits with status 2; anything else is a bug and keeps its traceback. Third-party logging
(TensorFlow, absl, XLA, orbax) is silenced unless `--verbose`.

Nothing heavy is imported before a command runs: `jaxnas --help` and `jaxnas info` load neither jax,
flax nor a runtime. Methods add their own sub-commands (`jaxnas <method> <tool>`) through the method
contract; this file lists no method.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxnas.errors import UserError
from jaxnas.schema import argument_type

# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def _emit(result: Any, text: str, as_json: bool, warnings: Any = ()) -> int:
    """The result (text, or JSON with --json) on stdout, then one `warning: ...` line each on stderr."""
    if as_json:
        from jaxnas.io_utils import dumps_json

        sys.stdout.write(dumps_json(result))
    else:
        print(text)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _fmt_ms(v: Any) -> str:
    return f"{v:.3f} ms" if isinstance(v, (int, float)) else "?"


def run_summary_text(summary: dict[str, Any], workdir: Path) -> str:
    """What a train / search / quickstart run made, in a few lines."""
    head = summary.get("method") or "train"
    figures = []
    if summary.get("test_accuracy") is not None:
        figures.append(f"test accuracy {summary['test_accuracy']:.4f}")
    if "macs" in summary:
        figures.append(f"{summary['macs'] / 1e6:.2f} M MACs")
    if "params" in summary:
        figures.append(f"{summary['params'] / 1e6:.3f} M params")
    if "latency_ms" in summary:
        lat = summary.get("latency", {})
        fp = lat.get("fingerprint", {})
        figures.append(f"{_fmt_ms(summary['latency_ms'])} on {fp.get('backend', '?')} "
                       f"({fp.get('threads', '?')} thread(s))" + (" UNTRUSTED timing" if lat.get("flags") else ""))
    if "speedup" in summary:
        ci = summary.get("speedup_ci")
        figures.append(f"{summary['speedup']:.2f}x faster than the baseline (paired"
                       + (f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if ci else "") + ")"
                       + (" UNTRUSTED timing" if summary.get("speedup_flags") else ""))
    lines = [f"{head} {summary.get('name', '')}: " + ", ".join(figures)]
    lines.append(f"  work dir   {workdir}  (summary.json, arch.json, config.yaml)")
    files = [f"{summary[k]}" for k in ("onnx_path", "tflite_path", "tensorrt_path") if k in summary]
    if files:
        lines.append("  exported   " + ", ".join(files))
    if "target" in summary:
        lines.append(f"  target     {json.dumps(summary['target'])}; achieved {json.dumps(summary.get('achieved'))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Argument types: numbers are checked where they are parsed.
# ----------------------------------------------------------------------------------------------------


positive_int = argument_type(int, (lambda v: v >= 1, "must be >= 1, got {text}"))
non_negative_int = argument_type(int, (lambda v: v >= 0, "must be >= 0, got {text}"))
positive_float = argument_type(float, (math.isfinite, "must be finite, got {text}"),
                               (lambda v: v >= 1e-300, "must be > 0, got {text}"))


# ----------------------------------------------------------------------------------------------------
# info / methods
# ----------------------------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> Any:
    from jaxnas import zoo

    return zoo.resolve_spec(args.model, resolution=args.resolution, num_classes=args.num_classes,
                            width=args.width, small_input=args.small_input or None)


def cmd_info(args: argparse.Namespace) -> int:
    from jaxnas import spec as S

    spec = _resolve(args)
    cost = S.analyze(spec)
    rows = cost.table()
    out = {"name": spec.name, "macs": cost.macs, "params": cost.params,
           "input": [*spec.input_size, spec.in_channels], "num_classes": spec.head.num_classes, "blocks": rows}
    lines = [f"{spec.name}: {cost.macs / 1e6:.2f} M MACs, {cost.params / 1e6:.3f} M params, input "
             f"{spec.input_size[0]}x{spec.input_size[1]}x{spec.in_channels}",
             f"{'#':>3} {'kind':<10} {'in':>14} {'out':>14} {'MMACs':>9} {'params':>10}"]
    for r in rows:
        lines.append(f"{r['index']:>3} {r['kind']:<10} {'x'.join(map(str, r['in_shape'])):>14} "
                     f"{'x'.join(map(str, r['out_shape'])):>14} {r['macs'] / 1e6:>9.2f} {r['params']:>10}")
    return _emit(out, "\n".join(lines), args.json)


def cmd_methods(args: argparse.Namespace) -> int:
    from jaxnas import methods

    rows = [m.describe() for m in methods.all_methods()]
    text = "\n".join(f"{r['name']:<12} targets: {', '.join(r['targets']) or '-':<18} {r['summary']}" for r in rows)
    return _emit(rows, text, args.json)


# ----------------------------------------------------------------------------------------------------
# train / search / quickstart / eval
# ----------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, search: bool) -> int:
    from jaxnas.config import load_config
    from jaxnas.pipeline import run

    cfg = load_config(args.config, args.set or ())
    workdir = Path(args.workdir) if args.workdir else Path("runs") / cfg.name
    summary = run(cfg, workdir, search=search, deploy=not args.no_deploy, log=_log(args),
                  allow_config_change=args.allow_config_change)
    return _emit(summary, run_summary_text(summary, workdir), args.json)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from jaxnas.quickstart import run_quickstart

    summary = run_quickstart(args.workdir, epochs=args.epochs, export=not args.no_export, log=_log(args),
                             allow_config_change=args.allow_config_change)
    return _emit(summary, run_summary_text(summary, Path(args.workdir)), args.json)


def cmd_eval(args: argparse.Namespace) -> int:
    from jaxnas.data import load_dataset
    from jaxnas.train import weights_source
    from jaxnas.trainer import Trainer
    from jaxnas.workdir import load_workdir

    cfg, spec, variables = load_workdir(args.workdir)
    source = weights_source(args.workdir)
    test = Trainer(cfg, load_dataset(cfg.dataset_config())).evaluate(spec, variables, "test")
    out = {"workdir": str(args.workdir), "test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "test_examples": int(test["count"]), "weights": source}
    return _emit(out, f"{args.workdir}: test accuracy {out['test_accuracy']:.4f} (loss {out['test_loss']:.4f}, "
                      f"{out['test_examples']} examples); {source['text']}", args.json)


# ----------------------------------------------------------------------------------------------------
# export / latency
# ----------------------------------------------------------------------------------------------------


def _spec_variables_config(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(spec, weights, the work dir's config or None): a trained work dir, or a zoo model / spec JSON with
    --random-init."""
    from jaxnas.workdir import WorkdirError, load_workdir

    target = args.target
    if os.path.isdir(target):
        cfg, spec, variables = load_workdir(target)
        return spec, variables, cfg
    if not args.random_init:
        raise WorkdirError(f"{target} is not a work dir; to use an untrained model pass --random-init")
    from jaxnas import models

    args.model = target
    spec = _resolve(args)
    return spec, models.init_variables(models.build_model(spec), 0), None


def cmd_export(args: argparse.Namespace) -> int:
    from jaxnas.config import ConfigError
    from jaxnas.deploy import deploy
    from jaxnas.export.config import ExportConfig

    # The flags override the work dir's export section (formats, route, tolerance), else the defaults.
    given = {k: v for k, v in (("formats", args.format and [f.strip() for f in args.format.split(",") if f.strip()]),
                                ("route", args.route), ("input_layout", args.input_layout)) if v is not None}
    try:
        export_cfg = ExportConfig(**given)
    except ConfigError as e:
        raise ConfigError([ln.replace("export.formats", "--format") for ln in e.errors]) from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; give a directory for the exported files")
    spec, variables, cfg = _spec_variables_config(args)
    if cfg is not None:
        export_cfg = cfg.export.replace(**given)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot create it ({e.strerror or e}); "
                        "choose a writable directory") from None
    result = deploy(spec, variables, export_cfg, None, out_dir=args.out, precision=args.precision,
                    dynamic_batch=args.dynamic_batch)
    out = {fmt: {"path": str(r.path), "max_abs_diff": r.max_abs_diff, "seconds": r.seconds,
                 "input_shape": r.input_shape, "layout": r.layout}
           for fmt, r in result.exports.items()}
    return _emit(out, "\n".join(f"{k}: {v['path']} ({v['layout']} input, max |diff| {v['max_abs_diff']:.2e}, "
                                f"{v['seconds']:.1f} s)" for k, v in out.items()), args.json)


def _threads(args: argparse.Namespace) -> int:
    """--threads, checked against the backend: xla and tensorrt cannot honour one, so it is refused there
    (not ignored); unset, it is 1 (single-stream timing)."""
    if args.threads is not None:
        from jaxnas.latency.backends.base import check_thread_count
        from jaxnas.latency.backends import ALIASES

        name = args.backend.strip().lower()
        check_thread_count(ALIASES.get(name, name), args.threads, explicit=True)
    return 1 if args.threads is None else args.threads


def _latency_config(args: argparse.Namespace, **extra: Any) -> Any:
    from jaxnas.config import ConfigError
    from jaxnas.latency.config import LatencyConfig

    try:
        return LatencyConfig(backend=args.backend, threads=_threads(args), warmup=args.warmup, runs=args.runs,
                             rel_ci=args.rel_ci, priority=args.priority,
                             **({"max_time_s": args.max_time} if args.max_time else {}), **extra)
    except ConfigError as e:
        raise ConfigError([ln.replace("latency.rel_ci", "--rel-ci") for ln in e.errors]) from None


def cmd_latency_measure(args: argparse.Namespace) -> int:
    from jaxnas.deploy import deploy

    latency = _latency_config(args, batch_size=args.batch_size)
    spec, variables, _ = _spec_variables_config(args)
    m = deploy(spec, variables, None, latency, out_dir=None).latency
    return _emit(m.to_dict(), m.describe(spec.name), args.json,
                 [f"untrusted measurement: {'; '.join(m.stats.flags)}"] if m.stats.flags else [])


def cmd_latency_compare(args: argparse.Namespace) -> int:
    from jaxnas.latency.measure import compare_files

    stems = [Path(f).stem for f in args.models]
    names = stems if len(set(stems)) == len(stems) else list(args.models)
    latency = _latency_config(args, batch_size=args.batch_size or 1)
    fixed = {"rounds": args.rounds} if args.runs is not None else {}
    result = compare_files(dict(zip(names, args.models)), None, backend=args.backend, threads=_threads(args),
                           batch_size=args.batch_size, protocol=latency.protocol(30.0),
                           warmup=args.warmup, runs=args.runs, **fixed)
    return _emit(result.to_dict(), result.describe(), args.json, [f"untrusted comparison: {f}" for f in result.flags])


def cmd_latency_build(args: argparse.Namespace) -> int:
    from jaxnas.latency.builder import TABLE_PROTOCOL, build_table, untrusted_line

    table = build_table(args.space, args.backend, args.out, threads=_threads(args), warmup=args.warmup,
                        runs=args.runs, context=args.context, progress=not args.json,  # --json: stdout is JSON
                        protocol=_latency_config(args).protocol(TABLE_PROTOCOL.max_time_s))
    bad = untrusted_line(table, str(args.out))
    return _emit({"path": str(args.out), "entries": len(table), "untrusted": table.untrusted()},
                 f"{args.out}: {len(table)} entries", args.json, [bad] if bad else [])


def cmd_latency_validate(args: argparse.Namespace) -> int:
    from jaxnas.latency.builder import TABLE_PROTOCOL
    from jaxnas.latency.predictor import format_validation, validate_space

    report = validate_space(args.space, args.backend, args.samples, table_path=args.table, threads=_threads(args),
                            seed=args.seed, warmup=args.warmup, runs=args.runs, context=args.context,
                            rounds=args.passes, recalibrate=args.recalibrate,
                            protocol=_latency_config(args).protocol(TABLE_PROTOCOL.max_time_s))
    return _emit(report, format_validation(report), args.json, report.get("warnings", ()))


def cmd_latency_calibrate(args: argparse.Namespace) -> int:
    from jaxnas.latency.builder import TABLE_PROTOCOL
    from jaxnas.latency.calibrate import drift_warning, recalibrate

    cal = recalibrate(args.space, args.backend, args.table, threads=_threads(args), warmup=args.warmup,
                      runs=args.runs, passes=args.passes, progress=not args.json,
                      protocol=_latency_config(args).protocol(TABLE_PROTOCOL.max_time_s))
    text = (f"{args.table}: its {cal['n']} reference networks run at x{cal['scale']:.3f} their table times "
            f"(p10 {cal['ratio_p10']:.3f}, p90 {cal['ratio_p90']:.3f}); predictions from it are scaled by that")
    drift = drift_warning(cal)
    return _emit(cal, text, args.json, [drift] if drift else [])


def cmd_latency_predict(args: argparse.Namespace) -> int:
    """`jaxnas latency predict SPEC_JSON --table TABLE`: the table latency of a spec (TF-NAS or block table)."""
    from jaxnas.latency.predict import predict_latency
    from jaxnas.spec import ArchSpec

    spec = ArchSpec.load(args.spec)
    out = predict_latency(spec, args.table, stat=args.stat, device=args.device, batch_size=args.batch_size)
    fp = out["table_fingerprint"]
    text = (f"{spec.name}: {out['latency_ms']:.4f} ms on {args.table} ({out['kind']} table, {len(out['parts'])} parts, "
            f"{fp.get('device') or '?'}, batch {fp.get('batch_size') or '?'})")
    return _emit(out, text, args.json)


# ----------------------------------------------------------------------------------------------------
# import-weights
# ----------------------------------------------------------------------------------------------------


def cmd_import_weights(args: argparse.Namespace) -> int:
    """A torchvision / timm state dict -> a work dir (`jaxnas.weights`)."""
    from jaxnas.weights import import_weights

    s = import_weights(args.source, args.model, args.out, width=args.width, num_classes=args.num_classes,
                       resolution=args.resolution, overrides=args.set or (), replace=args.replace)
    head = (f"{s['num_classes']} classes" if s["classifier"] == "imported" else
            f"new {s['num_classes']}-class classifier (the state dict's has {s['source_num_classes']})")
    return _emit(s, f"{args.out}: {s['layout']} {s['model']} as {s['zoo_model']} ({s['params']:,} params, "
                    f"{s['tensors']} tensors, {head}) from {s['source']}", args.json)


# ----------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------


def _log(args: argparse.Namespace) -> Callable[[str], None] | None:
    return None if getattr(args, "quiet", False) else (lambda msg: print(msg, flush=True))


def _json_flag(q: argparse.ArgumentParser) -> None:
    q.add_argument("--json", action="store_true", help="print the machine-readable result")


def _command(q: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int]) -> None:
    """A command's last option, --json, and the function it runs."""
    _json_flag(q)
    q.set_defaults(fn=fn)


def allow_change_flag(q: argparse.ArgumentParser) -> None:
    q.add_argument("--allow-config-change", action="store_true",
                   help="continue a work dir whose stored config differs in what its weights mean "
                        "(the default refuses it)")


class Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line per problem (no usage block), like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from jaxnas import methods

    p = Parser(prog="jaxnas", description="Hardware-aware CNN search and pruning in JAX/Flax.")
    p.add_argument("--verbose", action="store_true", help="show third-party logging (TensorFlow, absl, XLA)")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q: argparse.ArgumentParser, random_init: bool = False) -> None:
        q.add_argument("--resolution", type=positive_int)
        q.add_argument("--num-classes", type=positive_int)
        q.add_argument("--width", type=positive_float)
        q.add_argument("--small-input", action="store_true", help="stride-1 stem for 28-32 px inputs")
        if random_init:
            q.add_argument("--random-init", action="store_true",
                           help="use an untrained model (MODEL_OR_SPEC_JSON instead of a work dir)")

    def run_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("config")
        q.add_argument("--workdir", help="where the run goes (default runs/<config name>)")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        q.add_argument("--no-deploy", action="store_true", help="skip export and latency measurement")
        q.add_argument("--quiet", action="store_true", help="no progress lines, only the closing summary")
        allow_change_flag(q)

    q = sub.add_parser("info", help="MACs, params and a per-block table of a zoo model or spec JSON")
    q.add_argument("model", metavar="MODEL_OR_SPEC_JSON")
    model_args(q)
    _command(q, cmd_info)

    q = sub.add_parser("methods", help="the registered search / pruning methods")
    _command(q, cmd_methods)

    q = sub.add_parser("train", help="train a model from a YAML config, then export and measure it")
    run_args(q)
    _command(q, functools.partial(_run, search=False))

    q = sub.add_parser("search", help="run the config's search.method, then export and measure what it found")
    run_args(q)
    _command(q, functools.partial(_run, search=True))

    q = sub.add_parser("eval", help="evaluate a trained work dir on its test split")
    q.add_argument("workdir")
    _command(q, cmd_eval)

    q = sub.add_parser("quickstart", help="the main job on the embedded Fashion-MNIST: train, eval, export, measure")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--epochs", type=positive_float, help="override the number of epochs")
    q.add_argument("--no-export", action="store_true", help="skip export and latency measurement")
    q.add_argument("--quiet", action="store_true", help="no progress lines, only the closing summary")
    allow_change_flag(q)
    _command(q, cmd_quickstart)

    q = sub.add_parser("export", help="export a work dir or a model to ONNX / TFLite / TensorRT with parity checks")
    q.add_argument("target", metavar="WORKDIR_OR_MODEL")
    model_args(q, random_init=True)
    q.add_argument("--format", help="comma list of onnx, tflite, tensorrt (default: a work dir's export.formats, "
                   "else onnx,tflite)")
    q.add_argument("--out", required=True)
    q.add_argument("--route", choices=("jax2onnx", "tflite"), help="default: a work dir's export.route, else jax2onnx")
    q.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    q.add_argument("--dynamic-batch", action="store_true")
    q.add_argument("--input-layout", default=None, choices=("NHWC", "NCHW"),
                   help="ONNX / TensorRT input layout (default: a work dir's export.input_layout, else NHWC): "
                        "NHWC (as the JAX model; one Transpose at the input) or "
                        "NCHW (as PyTorch users feed it; no layout op); TFLite is always NHWC")
    _command(q, cmd_export)

    lat = sub.add_parser("latency", help="measure latency, build lookup tables, validate the predictor")
    lsub = lat.add_subparsers(dest="latency_command", required=True)

    def timing_args(q: argparse.ArgumentParser, cap: float) -> None:
        q.add_argument("--backend", default="onnxruntime")
        q.add_argument("--threads", type=positive_int, default=None,
                       help="runtime threads (default 1; onnxruntime and tflite only)")
        q.add_argument("--rel-ci", type=positive_float, default=0.01,
                       help="time until the 95%% CI of the median is within this fraction of it (default 0.01)")
        q.add_argument("--max-time", type=positive_float, default=None,
                       help=f"cap in seconds per measurement (default {cap:g}); a capped one reports its interval")
        q.add_argument("--priority", choices=["auto", "fifo", "nice", "none"], default="auto",
                       help="timing thread scheduling: auto = SCHED_FIFO where allowed for 1-thread runtimes")
        q.add_argument("--warmup", type=non_negative_int, default=None,
                       help="warm-up runs per session (default 10; 20 with --runs)")
        q.add_argument("--runs", type=positive_int, default=None,
                       help="fixed number of runs in one session instead of the adaptive protocol")

    q = lsub.add_parser("measure", help="time a work dir or model end to end on a runtime")
    q.add_argument("target", metavar="WORKDIR_OR_MODEL")
    model_args(q, random_init=True)
    q.add_argument("--batch-size", type=positive_int, default=1)
    timing_args(q, 10.0)
    _command(q, cmd_latency_measure)

    q = lsub.add_parser("compare", help="time exported models in alternating rounds; speed-ups with intervals")
    q.add_argument("models", nargs="+", metavar="MODEL_FILE", help="ONNX / .tflite files; the first is the reference")
    q.add_argument("--batch-size", type=positive_int, default=None)
    q.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds with --runs (default 5)")
    timing_args(q, 30.0)
    _command(q, cmd_latency_compare)

    q = lsub.add_parser("build-table", help="measure every block of a search space into a lookup table")
    q.add_argument("space", help="built-in space name (mbv2-small, mbv2-224) or a space YAML")
    q.add_argument("--out", required=True)
    q.add_argument("--context", choices=["alone", "network"], default="alone",
                   help="time each block alone, or as the change it makes to a reference network, "
                        "weighed against its alone time by the probe's noise (better ranks on onnxruntime/CPU)")
    timing_args(q, 3.0)
    _command(q, cmd_latency_build)

    q = lsub.add_parser("predict", help="table latency of a spec: a TF-NAS table (base + block entries at "
                                         "each block's mid; the original's .pkl too) or a block table")
    q.add_argument("spec", metavar="SPEC_JSON")
    q.add_argument("--table", required=True, help="table JSON, or the original TF-NAS latency_*.pkl")
    q.add_argument("--stat", choices=["median", "mean", "p10", "min"], default="median")
    q.add_argument("--device", default="unknown", help="for a .pkl: where it was measured (recorded only)")
    q.add_argument("--batch-size", type=positive_int, help="for a .pkl: its batch size (recorded only)")
    _command(q, cmd_latency_predict)

    q = lsub.add_parser("validate", help="predictor vs end-to-end measurement on random architectures")
    q.add_argument("space")
    q.add_argument("--samples", type=positive_int, default=20)
    q.add_argument("--table")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--context", choices=["alone", "network"], default=None,
                   help="time each block alone, or as the change it makes to a reference network "
                        "(default: the table's own; alone for a new one)")
    q.add_argument("--passes", type=positive_int, default=None,
                   help="measurements of every net (default 2: the retest compares them; 3 with --runs)")
    q.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="time the table's reference networks again with the samples, scale the predictions by "
                        "their drift since the table was built and store that calibration in the table (default: "
                        "when it has references); --no-recalibrate validates the table as stored, unchanged")
    timing_args(q, 3.0)
    _command(q, cmd_latency_validate)

    q = lsub.add_parser("calibrate", help="time a table's reference networks again and store their drift "
                                          "(every prediction from the table is scaled by it)")
    q.add_argument("space", help="the space the table was built for (name or YAML)")
    q.add_argument("--table", required=True)
    q.add_argument("--passes", type=positive_int, default=2, help="measurements of every reference (default 2)")
    timing_args(q, 3.0)
    _command(q, cmd_latency_calibrate)

    q = sub.add_parser("import-weights", help="a torchvision / timm state dict (.pth / .safetensors) as a work dir")
    q.add_argument("source", metavar="SOURCE", help="state dict file: .pth / .pt (torch.save) or .safetensors")
    q.add_argument("--model", required=True, help="torchvision: mobilenet_v2, resnet18, resnet34, resnet50, "
                   "vgg19_bn; timm: mobilenetv2_100, mobilenetv2_140 (and _035, _050, _075)")
    q.add_argument("--width", type=positive_float, help="width multiplier of torchvision's mobilenet_v2 (default 1)")
    q.add_argument("--out", required=True, help="the work dir to write")
    q.add_argument("--num-classes", type=positive_int, help="a fresh N-class classifier when N differs from the "
                   "state dict's (default: the state dict's)")
    q.add_argument("--resolution", type=positive_int, default=224, help="input size in arch.json and config.yaml")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the written config.yaml")
    q.add_argument("--replace", action="store_true", help="replace an earlier import in --out made from another "
                   "file or with another config (the default refuses it)")
    _command(q, cmd_import_weights)

    # Methods' own sub-commands (jaxnas <method> <tool>), through the contract.
    for method in methods.all_methods():
        if method.add_commands is None:
            continue
        q = sub.add_parser(method.name, help=f"{method.name} tools")
        msub = q.add_subparsers(dest=f"{method.name}_command", required=True)
        method.add_commands(msub)
        for action in msub.choices.values():
            if not any(a.dest == "json" for a in action._actions):
                _json_flag(action)
            action.set_defaults(fn=_method_command)
    return p


def _method_command(args: argparse.Namespace) -> int:
    result, text = args.handler(args)
    return _emit(result, text, args.json)


# ----------------------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------------------


def quiet_third_party(verbose: bool) -> None:
    """Unless verbose: TensorFlow's C++ logs, the oneDNN notice, absl/orbax INFO and WARNING lines and
    library warnings off (native runtime output is kept off around exports by `jaxnas.runtime.quiet`)."""
    if verbose:
        os.environ["JAXNAS_VERBOSE"] = "1"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("absl", "tensorflow", "jax", "jax2onnx", "onnx", "orbax", "tf2onnx", "h5py"):
        # A filter, not a level: absl resets its logger's level when it is imported later.
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.ERROR)
    # urllib3 logs from child loggers (urllib3.connectionpool), which a parent's filter does not see.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    try:
        return args.fn(args)
    except UserError as e:
        return _report(str(e))
    except OSError as e:
        # A path the user gave that cannot be read or written (a file where a directory belongs, a read-only
        # directory, a full disk): one line naming it. Other OS errors are bugs.
        if e.filename is None:
            raise
        return _report(f"{e.filename}: {e.strerror or e}")
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _report(message: str) -> int:
    for line in [ln for ln in message.strip().splitlines() if ln.strip()] or ["unknown error"]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def entry() -> None:
    """The `jaxnas` console command: `main` on tcmalloc where the system has it (see jaxnas.allocator)."""
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    sys.exit(main())


if __name__ == "__main__":
    entry()
