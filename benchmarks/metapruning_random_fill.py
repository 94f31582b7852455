"""MetaPruning's random fill under latency windows: how often a draw lands in the window, and the time to fill.

    python benchmarks/metapruning_random_fill.py --grid runs/metapruning-bench/layer_grid.json \
        [--fractions 0.5 0.3] [--windows 0.9 0.95] [--num 12] [--json]

Loads a per-layer latency grid of the config's space (the one `metapruning_table.py` or a search built);
its end-to-end time of the widest network is the reference of the targets, as in the table.  Prints:

1. the cost of a latency prediction, one candidate at a time (`CostFunction.__call__`) and per candidate of
   a batch (`CostFunction.batch`), over `--draws` uniform candidates;
2. per target window [w x f x widest, f x widest]: the fraction of `--draws` uniform draws (the original's
   random candidates) and of as many bounded draws (under a random upper or over a random lower id, the
   fill's fallback) inside the window, and the time `Proposer.random` takes to find `--num` candidates
   (the number the search's last generations ask for once mutation and crossover repeat tested nets) with
   the batched cost; one at a time, that time is projected from the draws it took and the per-draw cost.

No training and no runtime measurement: the costs are the grid's predictions.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxnas.config import load_config
from jaxnas.data import load_dataset
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.constraint import CostFunction
from jaxnas.methods.metapruning.evolution import EvolutionConfig, Proposer
from jaxnas.methods.metapruning.pipeline import space_for
from jaxnas.schema import validate
from jaxnas.latency.table import LatencyTable

ROOT = Path(__file__).resolve().parents[1]


class _Counting:
    """The batched cost, counting the candidates it priced."""

    def __init__(self, cost: CostFunction):
        self.cost, self.priced = cost, 0

    def __call__(self, genes):
        self.priced += 1
        return self.cost(genes)

    def batch(self, ids):
        self.priced += len(ids)
        return self.cost.batch(ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/metapruning/quick.yaml"))
    ap.add_argument("--grid", required=True, help="layer_grid.json of the config's space")
    ap.add_argument("--stat", default="p10", choices=("median", "mean", "p10", "min"))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    ap.add_argument("--windows", type=float, nargs="+", default=[0.9, 0.95])
    ap.add_argument("--num", type=int, default=12)
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    cfg = load_config(a.config, [])
    dataset = load_dataset(cfg.dataset_config())
    space = space_for(cfg, dataset, validate(cfg.search.args, MetaPruningArgs, "search.args"))
    table = LatencyTable.load(a.grid)
    cost = CostFunction(space, "latency_ms", table=table, stat=a.stat)
    widest = table.ms("network:full", a.stat)
    n = space.num_genes
    # The search's own draws (Proposer.draw), uniform then bounded, from one generator
    sampler = Proposer(EvolutionConfig(random_low=space.random_low, random_high=space.random_high), n,
                       np.random.default_rng(0), cost, lambda c: True)

    uniform = sampler.draw(a.draws, bounded=False)
    few = uniform[:2000]
    fresh = CostFunction(space, "latency_ms", table=table, stat=a.stat)  # its memo empty: every call prices
    t = time.perf_counter()
    one = np.asarray([fresh(tuple(int(v) for v in row)) for row in few])
    one_ms = (time.perf_counter() - t) / len(few) * 1e3
    t = time.perf_counter()
    lat_uniform = cost.batch(uniform)
    batch_ms = (time.perf_counter() - t) / len(uniform) * 1e3
    if not np.array_equal(lat_uniform[:len(few)], one):
        raise SystemExit("batched and one-at-a-time predictions differ")
    lat_bounded = cost.batch(sampler.draw(a.draws, bounded=True))

    rows = []
    for f in a.fractions:
        for w in a.windows:
            hi, lo = f * widest, w * f * widest
            inside = lambda x: float(np.mean((x >= lo) & (x <= hi)))
            counting = _Counting(cost)
            prop = Proposer(EvolutionConfig(random_low=space.random_low, random_high=space.random_high,
                                            random_tries=2_000_000), n, np.random.default_rng(1), counting,
                            lambda c: lo <= c <= hi)
            t = time.perf_counter()
            got = prop.random(a.num, {}, {})
            fill_s = time.perf_counter() - t
            rows.append({"fraction": f, "window": w, "window_ms": [round(lo, 4), round(hi, 4)],
                         "uniform_inside": inside(lat_uniform), "bounded_inside": inside(lat_bounded),
                         "found": len(got), "draws_priced": counting.priced, "fill_s_batched": round(fill_s, 3),
                         "fill_s_one_at_a_time_projected": round(counting.priced * one_ms / 1e3, 1)})

    result = {"grid": str(a.grid), "stat": a.stat, "widest_ms": widest, "draws": a.draws,
              "predict_ms_one_at_a_time": round(one_ms, 4), "predict_ms_per_candidate_batched": round(batch_ms, 5),
              "uniform_latency_ms_p1_p50_p99": [round(float(v), 4) for v in np.percentile(lat_uniform, [1, 50, 99])],
              "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"grid {a.grid}: widest {widest:.4f} ms ({a.stat}); a prediction {one_ms:.3f} ms one at a time, "
          f"{batch_ms * 1e3:.2f} us per candidate batched ({one_ms / batch_ms:.0f}x)")
    print(f"uniform draws' predicted latency: p1 / p50 / p99 = "
          f"{' / '.join(f'{v:.3f}' for v in result['uniform_latency_ms_p1_p50_p99'])} ms")
    print(f"{'target':>6} {'window ms':>17} {'uniform in':>10} {'bounded in':>10} {'priced':>8} {'fill s':>7} "
          f"{'one-at-a-time s':>15}")
    for r in rows:
        print(f"{r['fraction']:6.2f} {r['window_ms'][0]:8.4f}-{r['window_ms'][1]:.4f} {r['uniform_inside']:10.4%} "
              f"{r['bounded_inside']:10.4%} {r['draws_priced']:8d} {r['fill_s_batched']:7.3f} "
              f"{r['fill_s_one_at_a_time_projected']:15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
