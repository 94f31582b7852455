"""Latency predictor vs end-to-end measurement on random architectures of a search space.

For each space, backend and table context: build the space's lookup table (or reuse --table-dir), sample
N architectures, export + time each whole network, predict each from the table, and report the fraction
within ±5% / ±10%, RMSPE, Spearman of predicted vs measured and of MACs (FLOPs proxy) vs measured, each
next to its retest (the nets measured again: the noise ceiling), with the load average before/after.

Timing is the CLI's default (`jaxnas latency validate`): the adaptive protocol, 2 passes per net (the
retest compares them).  `--runs N` times the old fixed way instead (N runs x --rounds passes).  Each
report ends with the issue's targets for the space (mbv2-small: >= 95 % within ±10 %, Spearman >= 0.95;
mbv2-224: >= 99 % within ±10 %, >= 80 % within ±5 %, Spearman >= 0.98; retest Spearman >= 0.95).

    python benchmarks/predictor_validation.py [--spaces mbv2-small,mbv2-224] [--backends onnxruntime,tflite]
        [--contexts alone,network] [--samples 30] [--threads 1] [--stat median] [--table-dir DIR]
        [--max-time S] [--rel-ci F] [--passes P] [--runs N --rounds R --warmup W] [--no-recalibrate]
        [--out REPORT.json] [--json]

Like the CLI, each table's reference networks are timed again, interleaved with the samples, the predictions
are scaled by their drift since the table was built and the calibration is stored in the table
(latency.calibrate); the figures at the table's previous scale are reported beside. `--no-recalibrate`
validates the table as stored.

Run timing benchmarks alone: `flock /tmp/jaxnas-timing.lock python benchmarks/predictor_validation.py ...`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from jaxnas.latency.builder import TABLE_PROTOCOL
from jaxnas.latency.predictor import format_validation, validate_space
from jaxnas.latency.spaces import load_space

# The "done means" per space: (within ±5 %, within ±10 %, Spearman) minima.
TARGETS = {"mbv2-small": (None, 0.95, 0.95), "mbv2-224": (0.80, 0.99, 0.98)}
RETEST_TARGET = 0.95


def targets_line(r: dict) -> str:
    w5, w10, rho = TARGETS.get(r["space"], (None, None, None))
    checks = []
    if w5 is not None:
        checks.append(("within ±5 %", r["within_5pct"], w5))
    if w10 is not None:
        checks.append(("within ±10 %", r["within_10pct"], w10))
    if rho is not None:
        checks.append(("Spearman", r["spearman"], rho))
    if r.get("retest"):
        checks.append(("retest Spearman", r["retest"]["spearman"], RETEST_TARGET))
    parts = [f"{name} {v:.3g} {'>=' if v is not None and v >= want else '<'} {want:g}"
             for name, v, want in checks if v is not None]
    ok = all(v is not None and v >= want for _, v, want in checks)
    return f"  targets: {'MET' if ok else 'NOT MET'} ({'; '.join(parts)})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", "--space", default="mbv2-small,mbv2-224")
    ap.add_argument("--backends", default="onnxruntime,tflite")
    ap.add_argument("--contexts", default="alone,network",
                    help="comma list: table blocks timed alone and/or inside a reference network")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stat", default="median", choices=("min", "p10", "median", "mean"))
    ap.add_argument("--rel-ci", type=float, default=TABLE_PROTOCOL.rel_ci)
    ap.add_argument("--max-time", type=float, default=TABLE_PROTOCOL.max_time_s, help="cap per measurement (s)")
    ap.add_argument("--passes", type=int, default=None, help="measurements per net (default 2; 3 with --runs)")
    ap.add_argument("--runs", type=int, default=None, help="fixed runs per pass instead of the adaptive protocol")
    ap.add_argument("--rounds", type=int, default=None, help="with --runs: passes (old name)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--table-dir", help="keep/reuse tables here (default: a temp dir, rebuilt every run)")
    ap.add_argument("--recalibrate", action=argparse.BooleanOptionalAction, default=None,
                    help="time each table's reference networks again with the samples, scale by their drift and "
                         "store it in the table (default, as the CLI's); --no-recalibrate: the table as stored")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the full reports (every architecture's row) to this JSON file")
    args = ap.parse_args(argv)

    protocol = None if args.runs else TABLE_PROTOCOL.replace(rel_ci=args.rel_ci, max_time_s=args.max_time)
    results = {}
    with tempfile.TemporaryDirectory(prefix="jaxnas_bench_validate_") as tmp:
        tdir = Path(args.table_dir) if args.table_dir else Path(tmp)
        tdir.mkdir(parents=True, exist_ok=True)
        runs = [(s.strip(), b.strip(), c.strip()) for s in args.spaces.split(",") if s.strip()
                for b in args.backends.split(",") if b.strip() for c in args.contexts.split(",") if c.strip()]
        for space_name, backend, context in runs:
            space = load_space(space_name)
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            r = validate_space(space, backend, args.samples, table_path=tdir / f"{space.name}-{backend}-{context}.json",
                               threads=args.threads, seed=args.seed, warmup=args.warmup, runs=args.runs,
                               stat=args.stat, rounds=args.passes or args.rounds, context=context,
                               progress=not args.json, protocol=protocol, recalibrate=args.recalibrate)
            r["wall_s"] = time.perf_counter() - t0
            r["loadavg_1m"] = [load0[0], os.getloadavg()[0]]
            r["loadavg"] = {"before": list(load0), "after": list(os.getloadavg())}
            results[f"{space.name}/{backend}/{context}"] = r
            if not args.json:
                print(summary(r), flush=True)
                for w in r.get("warnings", ()):
                    print(f"  warning: {w}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    return 0


def summary(r: dict) -> str:
    la = r["loadavg"]
    lines = [format_validation(r),
             f"  wall {r['wall_s']:.0f} s; load average (1/5/15 min) before "
             f"{la['before'][0]:.2f} {la['before'][1]:.2f} "
             f"{la['before'][2]:.2f}, after {la['after'][0]:.2f} {la['after'][1]:.2f} {la['after'][2]:.2f}"]
    for st, m in r["by_stat"].items():
        mark = "*" if st == r["stat"] else " "
        lines.append(f" {mark}{st:>6}: within 5% {m['within_5pct']:.0%}  within 10% {m['within_10pct']:.0%}  "
                     f"RMSPE {m['rmspe']:.1f}%  bias {m['bias_pct']:+.1f}%  max|err| {m['max_abs_error_pct']:.1f}%  "
                     f"Spearman {m['spearman']:.3f}  Spearman(MACs) {m['spearman_flops']:.3f}  "
                     "overhead {:+.3f}{:+.4f}*n{:+.3f}*Mparams ms".format(*m["overhead_coef"])
                     + (" | retest: within 5% {:.0%}, Spearman {:.3f}".format(m["retest"]["within_5pct"],
                                                                              m["retest"]["spearman"] or float("nan"))
                        if m.get("retest") else ""))
    lines.append(targets_line(r))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
