"""The nets of a finished MetaPruning table, retrained for a longer budget: does the MetaPruning pick pull
ahead of the uniformly width-scaled nets once training is long enough for capacity to matter?

`metapruning_table.py` compares at a 3-epoch retrain on 10,800 images, where test accuracy is flat in
capacity (16.7 M and 25.9 M MAC nets both reach 0.873), so its comparisons measure seed noise more than
architecture.  This script takes a finished table's work dir and retrains, per row, the MetaPruning net and
the row's uniform baselines (the very nets the table picked, at the latencies it measured) from scratch
for `--budget` epochs at `--seeds` seeds, with the table's own resolved config (its first search's
`config.yaml`) plus `--set` overrides, and compares the mean test accuracies.  Seeds run in the outer
loop, so a run stopped early still has whole seeds; every training resumes from `--workdir`.  Each
comparison also gets the difference of the means with a 95 % confidence interval (Welch's t) over the
seeds: a table's "won" at 3-5 seeds per net is often inside it.

    python benchmarks/metapruning_retrain.py --table runs/metapruning-bench --budget 10 --seeds 2 \\
        --set data.augment=true --workdir runs/metapruning-retrain [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metapruning_table import baseline_spec
from scipy.stats import ttest_ind

from jaxnas import spec as S
from jaxnas.config import load_config, override_config
from jaxnas.data import load_dataset
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.pipeline import space_for
from jaxnas.schema import validate
from jaxnas.trainer import Trainer

def row_nets(row: dict, table_dir: Path, cfg, dataset, space) -> dict[str, dict]:
    """{name: {spec, measured_ms}} of one table row: its MetaPruning net, then its baselines."""
    f = row["fraction"]
    nets = {f"mp {f:g}": {"spec": S.ArchSpec.load(table_dir / f"mp_{f:g}" / "arch.json"),
                          "measured_ms": row["measured_ms"]}}
    for base in (row.get("mobilenet_v2"), row.get("space_uniform")):
        if base is not None:
            nets[base["name"]] = {"spec": baseline_spec(base["name"], cfg, dataset, space),
                                  "measured_ms": base["measured_ms"]}
    return nets


def mean_difference(mine: list[float], theirs: list[float]) -> dict:
    """Mean of `mine` minus mean of `theirs` in points, with Welch's 95 % interval and p (None under 2 seeds
    each, or when neither varies across seeds: the test is undefined there)."""
    diff = 100 * (sum(mine) / len(mine) - sum(theirs) / len(theirs))
    if min(len(mine), len(theirs)) < 2 or len(set(mine)) == len(set(theirs)) == 1:
        return {"points": diff, "ci95_points": None, "p": None}
    test = ttest_ind(mine, theirs, equal_var=False)
    ci = test.confidence_interval(0.95)
    return {"points": diff, "ci95_points": [100 * float(ci.low), 100 * float(ci.high)], "p": float(test.pvalue)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", required=True, help="work dir of a finished benchmarks/metapruning_table.py run")
    p.add_argument("--workdir", default="runs/metapruning-retrain")
    p.add_argument("--budget", type=float, default=10.0, help="retraining epochs (every net)")
    p.add_argument("--seeds", type=int, default=2, help="train.seed 0..seeds-1 (offset by the config's seed)")
    p.add_argument("--set", action="append", default=[], help="config override a.b=c (after the table's config)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    table_dir = Path(a.table).absolute()
    if not (table_dir / "metapruning_table.json").is_file():
        p.error(f"{table_dir} holds no metapruning_table.json: pass the --workdir of a finished "
                "benchmarks/metapruning_table.py run")
    table = json.loads((table_dir / "metapruning_table.json").read_text())
    missing = [f"mp_{r['fraction']:g}/{n}" for r in table["rows"] for n in ("config.yaml", "arch.json")
               if not (table_dir / f"mp_{r['fraction']:g}" / n).is_file()]
    if missing:
        p.error(f"{table_dir} lacks {', '.join(missing)}: pass the --workdir of a finished "
                "benchmarks/metapruning_table.py run, with its search dirs")
    if a.seeds < 1 or a.budget <= 0:
        p.error(f"--seeds must be >= 1 and --budget > 0, got {a.seeds} and {a.budget}")
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()  # trains on the allocator the jaxnas command uses
    t0 = time.time()
    first = table["rows"][0]["fraction"]
    cfg = load_config(table_dir / f"mp_{first:g}" / "config.yaml",
                      [f"train.epochs={a.budget}", f"train.eval_every_epochs={a.budget}", *a.set])
    dataset = load_dataset(cfg.dataset_config())
    space = space_for(cfg, dataset, validate(cfg.search.args, MetaPruningArgs, "search.args"))
    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)

    nets = {row["fraction"]: row_nets(row, table_dir, cfg, dataset, space) for row in table["rows"]}
    seeds = [cfg.train.seed + i for i in range(a.seeds)]
    accs: dict[str, list[float]] = {}
    for sd in seeds:  # outer: a run stopped early has whole seeds
        trainer = Trainer(override_config(cfg, [f"train.seed={sd}"]), dataset)
        for row_nets_ in nets.values():
            for name, net in row_nets_.items():
                if len(accs.setdefault(name, [])) > seeds.index(sd):
                    continue  # a baseline shared by two rows
                tag = f"{name.replace(' ', '_')}_seed{sd}"
                accs[name].append(float(trainer.train(net["spec"], work / tag).metrics["test"]["accuracy"]))
                print(f"seed {sd} {name}: {accs[name][-1]:.4f}", flush=True)

    rows = []
    for row in table["rows"]:
        f = row["fraction"]
        mp_name, *bases = nets[f]
        mine = accs[mp_name]
        out = {"fraction": f, "target_ms": row["target_ms"], "metapruning": {
            "name": mp_name, "macs": S.macs(nets[f][mp_name]["spec"]), "measured_ms": row["measured_ms"],
            "accuracy": sum(mine) / len(mine), "accuracy_seeds": mine,
            "accuracy_at_table_budget": row["accuracy"]}, "baselines": []}
        for name in bases:
            theirs = accs[name]
            out["baselines"].append({
                "name": name, "macs": S.macs(nets[f][name]["spec"]), "measured_ms": nets[f][name]["measured_ms"],
                "accuracy": sum(theirs) / len(theirs), "accuracy_seeds": theirs,
                "beaten": sum(mine) / len(mine) > sum(theirs) / len(theirs),
                "seeds_won": sum(m > b for m, b in zip(mine, theirs)),
                "difference": mean_difference(mine, theirs)})
        rows.append(out)
    result = {"table": str(table_dir), "budget_epochs": a.budget, "table_budget_epochs": table["budget_epochs"],
              "seeds": seeds, "overrides": a.set, "train_examples": dataset.num_examples("train"),
              "test_examples": dataset.num_examples("test"), "rows": rows, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(work / "retrain_table.json", result)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"\n{a.budget:g}-epoch retrain (table: {table['budget_epochs']:g}), seeds {seeds}, {' '.join(a.set)}")
    print(f"{'target':>8} {'net':>16} {'MACs':>8} {'ms':>7} {'acc':>7}  seeds")
    for r in rows:
        for n in [r["metapruning"], *r["baselines"]]:
            won = f"  MP won {n['seeds_won']}/{len(seeds)}" if "seeds_won" in n else ""
            d = n.get("difference")
            if d is not None and d["ci95_points"] is not None:
                lo, hi = d["ci95_points"]
                won += f", MP - this {d['points']:+.2f} points (95 % CI {lo:+.2f} to {hi:+.2f}, p {d['p']:.2f})"
            print(f"{r['target_ms']:8.3f} {n['name']:>16} {n['macs'] / 1e6:7.2f}M {n['measured_ms']:7.3f} "
                  f"{n['accuracy']:7.4f}  {' '.join(f'{x:.4f}' for x in n['accuracy_seeds'])}{won}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
