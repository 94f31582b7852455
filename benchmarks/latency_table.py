"""Latency lookup-table build: wall time and entry count for a search space on one backend.

Builds into a fresh file (a temp dir unless --out) so nothing is resumed, one thread by default.

    python benchmarks/latency_table.py [--space mbv2-small] [--backend onnxruntime] [--threads 1]
                                       [--warmup 20] [--runs 100] [--out table.json] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


from jaxnas.latency.builder import build_table  # noqa: E402
from jaxnas.latency.spaces import load_space  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv2-small")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", help="table path (must not exist: the benchmark times a full build)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    space = load_space(args.space)
    with tempfile.TemporaryDirectory(prefix="jaxnas_bench_table_") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / f"{space.name}.json"
        if out.exists():
            ap.error(f"{out} exists; the benchmark times a build from scratch")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        table = build_table(space, args.backend, out, threads=args.threads, warmup=args.warmup, runs=args.runs,
                            progress=not args.json)
        seconds = time.perf_counter() - t0
        refs = [k for k in table if k.startswith("ref:")]
        result = {
            "space": space.name, "space_hash": space.hash, "backend": table.backend,
            "fingerprint": table.fingerprint, "entries": len(table), "parts": len(table) - len(refs),
            "unique_blocks": len(space.unique_blocks()), "references": len(refs),
            "build_s": seconds, "s_per_entry": seconds / max(1, len(table)),
            "warmup": args.warmup, "runs": args.runs, "loadavg_1m": [load0, os.getloadavg()[0]],
            "path": str(out) if args.out else None,
        }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{space.name} on {table.fingerprint.get('runtime')} (threads={args.threads}): "
              f"{result['entries']} entries ({result['unique_blocks']} unique blocks + stem/head + "
              f"{result['references']} reference nets) in {seconds:.1f} s "
              f"({result['s_per_entry']:.2f} s/entry; load average {load0:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
