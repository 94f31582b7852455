"""Per-layer latency grid: how well its calibration predicts whole networks of a MetaPruning space.

    python benchmarks/layer_grid_calibration.py --grid runs/calib/layer_grid.json \
        [--config configs/metapruning/quick.yaml] [--ids 0 3 6 ...] [--random 12] [--seed 0] [--rounds 3]
        [--stat p10] [--entry-cap S] [--json]

1. Builds, or finishes, the layer grid of the widest network of the config's MetaPruning space at
   `--grid` (`latency.layer_grid.build_layer_grid`, onnxruntime, 1 thread, batch 1, the search's
   channel_multiple): fixed runs per entry, or with `--entry-cap S` the adaptive protocol a search's grid is
   timed by, at most S seconds per layer entry (prints how long it took).  A grid built before the
   interior calibration networks gets only those measured.
2. Times end to end, in `--rounds` interleaved rounds (the `--stat` of each round, min over rounds), the
   space's uniform networks at `--ids` and `--random` networks with every gene drawn uniformly from the
   31 scale ids (numpy seed `--seed`): the kind of mixed-width nets an evolutionary search proposes.
3. Predicts each with `jaxnas.costmodel.LatencyModel` on that grid twice: through the calibration
   ``knots`` (every calibration network the grid timed) and through the line through the full and the
   minimal network only (what the grid's calibration was before the interior networks).

Prints per network the measured and both predicted ms, and per kind (uniform, random) the median and the
largest |predicted / measured - 1| and the share within 5 %, for both maps.  Run it alone: it times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/metapruning/quick.yaml"))
    ap.add_argument("--grid", required=True, help="layer grid JSON (built or finished here)")
    ap.add_argument("--ids", type=int, nargs="+", default=list(range(0, 31, 3)))
    ap.add_argument("--random", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--stat", default="p10", choices=("median", "mean", "p10", "min"))
    ap.add_argument("--entry-cap", type=float, default=None,
                    help="build the grid by the adaptive protocol the searches use (`layer_grid.entry_protocol`) with "
                         "this cap in seconds per layer entry, instead of fixed runs (5 warm-up, 30 timed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    import copy

    from jaxnas.config import load_config
    from jaxnas.costmodel import LatencyModel
    from jaxnas.latency.layer_grid import build_layer_grid
    from jaxnas.latency.measure import measure_spec
    from jaxnas.methods.metapruning.args import MetaPruningArgs
    from jaxnas.methods.metapruning.pipeline import space_for
    from jaxnas.models import build_model, init_variables
    from jaxnas.pipeline import prepare
    from jaxnas.schema import validate

    cfg = load_config(a.config)
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    space = space_for(cfg, prepare(cfg, search=True).dataset, args)
    widest = space.max_spec()
    timing = (dict(entry_max_time_s=a.entry_cap) if a.entry_cap else dict(warmup=5, runs=30, network_runs=a.runs))
    t0 = time.perf_counter()
    table = build_layer_grid(widest, "onnxruntime", out_path=a.grid, channel_multiple=args.channel_multiple, **timing)
    grid_s = time.perf_counter() - t0
    prunable = frozenset(g.name for g in space.genes)
    knots = LatencyModel(widest, prunable, table, stat=a.stat)
    line = copy.copy(knots)
    line.knots = None

    rng = np.random.default_rng(a.seed)
    nets = {f"uniform id {k}": space.uniform(k) for k in a.ids}
    nets.update({f"random {i}": tuple(int(g) for g in rng.integers(0, 31, space.num_genes)) for i in range(a.random)})
    specs = {n: space.to_spec(g, name=n.replace(" ", "_")) for n, g in nets.items()}
    variables = {n: init_variables(build_model(s), 0) for n, s in specs.items()}
    measured: dict[str, float] = {}
    for _ in range(a.rounds):
        for n, s in specs.items():
            r = measure_spec(s, variables[n], "onnxruntime", threads=1, warmup=a.warmup, runs=a.runs)
            measured[n] = min(measured.get(n, float("inf")), float(r.to_dict()[f"{a.stat}_ms"]))

    rows = []
    for n, g in nets.items():
        ch = space.gene_channels(g)
        rows.append({"net": n, "genes": list(g), "measured_ms": measured[n], "knots_ms": float(knots.exact(ch)),
                     "line_ms": float(line.exact(ch))})
    summary = {}
    for kind in ("uniform", "random"):
        sel = [r for r in rows if r["net"].startswith(kind)]
        if not sel:
            continue
        summary[kind] = {}
        for m in ("knots", "line"):
            err = np.array([r[f"{m}_ms"] / r["measured_ms"] - 1 for r in sel])
            summary[kind][m] = {"median_abs": float(np.median(np.abs(err))), "max_abs": float(np.max(np.abs(err))),
                                "mean": float(np.mean(err)), "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
                                "n": len(sel)}
    cal = table.meta["calibration"][a.stat]
    out = {"grid": str(a.grid), "grid_seconds": round(grid_s, 1), "entry_cap_s": a.entry_cap, "stat": a.stat,
           "knots": cal.get("knots"), "rows": rows, "summary": summary}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"grid {a.grid}: {'adaptive, %g s per entry at most' % a.entry_cap if a.entry_cap else 'fixed runs'}; "
          f"{grid_s:.0f} s here (0 when it was built before)")
    print(f"calibration knots ({a.stat}: layer sum ms -> network ms): "
          + ", ".join(f"{s:.3f}->{t:.3f}" for s, t in cal.get("knots") or []))
    print(f"{'net':>14} {'measured':>9} {'knots':>7} {'err':>6} {'line':>7} {'err':>6}")
    for r in rows:
        print(f"{r['net']:>14} {r['measured_ms']:9.3f} {r['knots_ms']:7.3f} "
              f"{r['knots_ms'] / r['measured_ms'] - 1:+6.1%} {r['line_ms']:7.3f} "
              f"{r['line_ms'] / r['measured_ms'] - 1:+6.1%}")
    for kind, s in summary.items():
        for m, v in s.items():
            print(f"{kind:>8} {m:>6}: |err| median {v['median_abs']:.1%}, max {v['max_abs']:.1%}, mean err "
                  f"{v['mean']:+.1%}, within 5 % {v['within_5pct']:.0%} of {v['n']}")


if __name__ == "__main__":
    main()
