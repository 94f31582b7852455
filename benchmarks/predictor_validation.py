"""Latency predictor vs end-to-end measurement on random architectures of a search space.

For each backend: build the space's lookup table (or reuse --table-dir/<space>-<backend>.json), sample N
architectures, export + time each whole network, predict each from the table, and report the fraction
within ±5% / ±10%, RMSPE, Spearman of predicted vs measured and of MACs (FLOPs proxy) vs measured.

    python benchmarks/predictor_validation.py [--space mbv2-small] [--backends onnxruntime,tflite]
        [--samples 30] [--threads 1] [--warmup 20] [--runs 300] [--rounds 5] [--contexts alone,network]
        [--table-dir DIR] [--out REPORT.json] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


from jaxnas.latency.predictor import validate_space  # noqa: E402
from jaxnas.latency.spaces import load_space  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv2-small")
    ap.add_argument("--backends", default="onnxruntime,tflite")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stat", default="median", choices=("min", "p10", "median", "mean"))
    ap.add_argument("--contexts", default="alone,network",
                    help="comma list: table blocks timed alone and/or inside a reference network")
    ap.add_argument("--table-dir", help="keep/reuse tables here (default: a temp dir, rebuilt every run)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the full reports (every architecture's row) to this JSON file")
    args = ap.parse_args(argv)

    space = load_space(args.space)
    results = {}
    with tempfile.TemporaryDirectory(prefix="jaxnas_bench_validate_") as tmp:
        tdir = Path(args.table_dir) if args.table_dir else Path(tmp)
        tdir.mkdir(parents=True, exist_ok=True)
        runs = [(b.strip(), c.strip()) for b in args.backends.split(",") if b.strip()
                for c in args.contexts.split(",") if c.strip()]
        for backend, context in runs:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = validate_space(space, backend, args.samples, table_path=tdir / f"{space.name}-{backend}-{context}.json",
                               threads=args.threads, seed=args.seed, warmup=args.warmup, runs=args.runs,
                               stat=args.stat, rounds=args.rounds, context=context, progress=not args.json)
            r["wall_s"] = time.perf_counter() - t0
            r["loadavg_1m"] = [load0, os.getloadavg()[0]]
            results[f"{backend}/{context}"] = r
            if not args.json:
                print(summary(r), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    return 0


def summary(r: dict) -> str:
    lines = [f"{r['space']} ({r['context']} table) on {r['fingerprint']['runtime']} threads={r['fingerprint']['threads']} "
             f"(n={r['n']}, stat={r['stat']}, table build {r['timing_s']['table_build']:.0f} s, "
             f"measure {r['timing_s']['export_and_measure']:.0f} s, load {r['loadavg_1m'][0]:.1f}):"]
    for st, m in r["by_stat"].items():
        mark = "*" if st == r["stat"] else " "
        lines.append(f" {mark}{st:>6}: within 5% {m['within_5pct']:.0%}  within 10% {m['within_10pct']:.0%}  "
                     f"RMSPE {m['rmspe']:.1f}%  bias {m['bias_pct']:+.1f}%  max|err| {m['max_abs_error_pct']:.1f}%  "
                     f"Spearman {m['spearman']:.3f}  Spearman(MACs) {m['spearman_flops']:.3f}  "
                     "overhead {:+.3f}{:+.4f}*n{:+.3f}*Mparams ms".format(*m["overhead_coef"]))
    if r.get("retest"):
        t = r["retest"]
        lines.append(f"  retest (odd vs even rounds, {r['stat']}): within 5% {t['within_5pct']:.0%}  within 10% "
                     f"{t['within_10pct']:.0%}  RMSPE {t['rmspe']:.1f}%  Spearman {t['spearman']:.3f}  (the noise ceiling)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
