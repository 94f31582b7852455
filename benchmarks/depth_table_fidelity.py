"""How well does the T(st, end) table predict the measured speed-up of a merged network?

For a small-input MobileNetV2 (random weights, non-trivial BN), builds the depth-compression time table
on onnxruntime (1 thread; each merged conv timed alone, optionally minus the per-call overhead),
solves stage 2 with a synthetic importance table (h = -(end - st) + noise, as benchmarks/depth_solve.py)
at several budgets T0 = fraction x Σ T(i, i+1), merges, and times the merged network against the
unmerged one end to end (alternating rounds, median of per-round ratios).  Weights do not affect
latency, so no training is needed: this isolates the latency model from the importance model.

    python benchmarks/depth_table_fidelity.py [--resolution 16] [--width 0.35] [--batch-size 1]
        [--fractions 0.5 0.75 0.9] [--subtract-overhead] [--workdir runs/depth-fidelity] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from depth_solve import synthetic_importance  # noqa: E402
from jaxnas.export import export_onnx  # noqa: E402
from jaxnas.export.parity import random_variables  # noqa: E402
from jaxnas import zoo  # noqa: E402
from jaxnas.methods.depth import (extended_importance, extended_segments, normalize_importance,  # noqa: E402
                                  optimal_time_table, read_time_table, solve, valid_segments)
from jaxnas.methods.depth.merge import merge_network  # noqa: E402
from jaxnas.methods.depth.mergeable import body_of, fix_act, mergeable_spec, transfer_variables  # noqa: E402
from jaxnas.latency import get_backend  # noqa: E402
from jaxnas.latency.config import LatencyConfig  # noqa: E402
from jaxnas.latency.oracle import RuntimeOracle  # noqa: E402
from jaxnas.methods.depth.time_table import build_network_time_table, build_time_table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--width", type=float, default=0.35)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--subtract-overhead", action="store_true")
    ap.add_argument("--context", choices=["alone", "network"], default="network",
                    help="T(st, end): each merged conv timed alone, or the change of the whole network's latency")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=str(ROOT / "runs/depth-fidelity"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    be = get_backend("onnxruntime", threads=1)
    res, bs = a.resolution, a.batch_size
    tag = f"r{res}_w{a.width:g}_b{bs}{'_sub' if a.subtract_overhead else ''}_{a.context}"
    spec = zoo.mobilenet_v2(width=a.width, small_input=True, resolution=res, num_classes=10, in_channels=1)
    variables = random_variables(spec)
    base = mergeable_spec(spec)
    body = body_of(base)
    chain = body.chain
    oracle = RuntimeOracle(LatencyConfig(backend="onnxruntime", threads=1, batch_size=bs), workdir=work,
                           log=print if not a.json else None)
    if a.context == "network":
        csv = build_network_time_table(base, work / f"time_{tag}.csv", oracle, variables=variables)
    else:
        csv = build_time_table(chain, work / f"time_{tag}.csv", oracle, act=body.act, batch_size=bs,
                               cache=work / f"time_r{res}_w{a.width:g}_b{bs}.cache.json",
                               subtract_overhead=a.subtract_overhead)
    segs = valid_segments(chain)
    T = read_time_table(csv, segs)
    T_opt = optimal_time_table(T, segs)
    ext = extended_segments(segs, chain.block_ends)
    I_ext = extended_importance(normalize_importance(synthetic_importance(ext, 0), 1.6, "single"), ext)
    single_sum = sum(T.entries[(i, i + 1)].time for i in range(chain.L))
    shape = (bs, res, res, 1)
    base_file = work / f"base_{tag}.onnx"
    export_onnx(spec, variables, base_file, batch_size=bs, check=False)
    rows = []
    for frac in a.fractions:
        r = solve(T_opt, I_ext, frac * single_sum, 4000 / (frac * single_sum), chain.L, check_time_table=T,
                  strict_check=False)
        fspec = fix_act(base, r.act_pos, r.merge_pos)
        mspec, mvars = merge_network(fspec, transfer_variables(variables, fspec))
        merged_file = work / f"merged_{tag}_{frac:g}.onnx"
        export_onnx(mspec, mvars, merged_file, batch_size=bs, check=False)
        tb, tm = [], []
        for _ in range(a.rounds):
            tb.append(be.measure(str(base_file), shape, warmup=20, runs=100).median)
            tm.append(be.measure(str(merged_file), shape, warmup=20, runs=100).median)
        rows.append({"fraction": frac, "convs": len(r.merge_pos), "acts": len(r.act_pos),
                     "predicted_speedup": single_sum / r.flt_time_sum,
                     "measured_speedup": float(np.median(np.asarray(tb) / np.asarray(tm))),
                     "baseline_ms": float(np.median(tb)), "merged_ms": float(np.median(tm))})
    out = {"resolution": res, "width": a.width, "batch_size": bs, "subtract_overhead": a.subtract_overhead,
           "L": chain.L, "single_conv_sum_ms": single_sum, "rows": rows}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"MBV2-{a.width:g} small-input @{res}px, batch {bs}, onnxruntime 1 thread; Σ T(i, i+1) = "
          f"{single_sum:.3f} ms{' (minus per-call overhead)' if a.subtract_overhead else ''}")
    print(f"{'T0/ΣT':>6} {'convs':>5} {'acts':>4} {'predicted':>9} {'measured':>8} {'base ms':>8} {'merged ms':>9}")
    for r in rows:
        print(f"{r['fraction']:6.2f} {r['convs']:5d} {r['acts']:4d} {r['predicted_speedup']:9.3f} "
              f"{r['measured_speedup']:8.3f} {r['baseline_ms']:8.3f} {r['merged_ms']:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
