"""POP end to end on the embedded Fashion-MNIST, against uniformly scaled nets of the same family.

1. Run the POP search of `--config` (default configs/pop/quick.yaml: the 405-net `pop-small` space,
   onnxruntime, 1 thread, batch 1): the space size, how many candidates were trained and how many were
   pruned without training, the boundary, boundary.json/csv and pareto.png in the work dir.
2. At each `--targets` latency, the POP net = the most accurate boundary net measured under it.
3. Baselines of the same family (POP's ResNet-like blocks and stem): uniformly width-scaled nets
   (stage widths m x (16, 32, 64), 2 blocks per stage) and uniformly depth-scaled nets (widths
   (16, 32, 64), d blocks per stage).  All POP nets and baselines are measured in `--rounds` alternating
   rounds (median of rounds), and at each target the fastest width-scaled and the fastest depth-scaled
   net with equal or higher measured latency than the POP net is taken.
4. The POP nets and those baselines are retrained with the same budget (the config's full recipe,
   `train.epochs`) and evaluated on the test split, once per `--seeds` training seed (train.seed,
   train.seed + 1, ...); the comparison is on the mean test accuracy over the seeds, and the table
   also counts the seeds at which the POP net wins.

    flock /tmp/jaxnas-timing.lock python benchmarks/pop_e2e.py --workdir runs/pop-bench [--seeds 3] [--faster] [--audit] [--json]

Every stage resumes from `--workdir` (the search state, the latency cache, each training's checkpoints,
the paired timings).  `--audit` afterwards measures every architecture the pre-screen classified from
its predicted latency and counts the decisions its measured latency would have changed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnas import spec as S
from jaxnas import zoo
from jaxnas.config import load_config
from jaxnas.io_utils import atomic_write_json
from jaxnas.methods.pop import LocalExecutor, PopArgs, PopSearch
from jaxnas.methods.pop.method import candidate_trainer, choose, settings_from_args, space_for
from jaxnas.methods.pop.report import plot_pareto, write_boundary
from jaxnas.schema import validate
from jaxnas.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ services
def services(cfg, workdir: Path, log):
    """(dataset, trainer, oracle): the core's services, as `jaxnas search` hands them to the method."""
    from jaxnas.latency.oracle import RuntimeOracle
    from jaxnas.pipeline import prepare
    dataset = prepare(cfg).dataset
    return dataset, Trainer(cfg, dataset, log=log), RuntimeOracle(cfg.latency, workdir=workdir, log=log)


# ------------------------------------------------------------------------------------------------ baselines
def uniform_net(space, widths: tuple[int, int, int], depth: int, name: str) -> S.ArchSpec:
    arch = tuple(tuple([w] * depth) for w in widths)
    return zoo.dfnet(name, num_classes=space.num_classes, resolution=space.resolution, in_channels=space.in_channels,
                     widths=arch, stem=space.stem)


def baselines(space) -> dict[str, dict[str, S.ArchSpec]]:
    base = (16, 32, 64)
    width = {f"w{m:g}": uniform_net(space, tuple(S.make_divisible(b * m, 8) for b in base), 2, f"uniform_w{m:g}_d2")
             for m in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)}
    depth = {f"d{d}": uniform_net(space, base, d, f"uniform_w1_d{d}") for d in (1, 2, 3, 4, 5, 6)}
    return {"width": width, "depth": depth}


def paired_latency(oracle, nets: dict[str, S.ArchSpec], rounds: int, cache: Path, log) -> dict[str, dict[str, Any]]:
    """Median over `rounds` alternating rounds (every net once per round), resumable per round."""
    done = json.loads(cache.read_text()) if cache.is_file() else {"rounds": []}
    for r in range(len(done["rounds"]), rounds):
        row = {}
        for name, spec in nets.items():
            row[name] = _ms(oracle.measure(spec))
        done["rounds"].append(row)
        atomic_write_json(cache, done)
        log(f"bench: paired timing round {r + 1}/{rounds}")
    out = {}
    for name in nets:
        vals = [row[name] for row in done["rounds"][:rounds]]
        out[name] = {"median_ms": float(np.median(vals)), "rounds_ms": vals}
    return out


def _ms(m: Any) -> float:
    return float(m.median_ms) if hasattr(m, "median_ms") else float(m["median_ms"])


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "pop" / "quick.yaml"))
    p.add_argument("--workdir", default="runs/pop-bench")
    p.add_argument("--targets", type=float, nargs=2, default=[0.10, 0.16], help="two latency points (ms)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the paired timing")
    p.add_argument("--audit", action="store_true", help="measure what the pre-screen left unmeasured")
    p.add_argument("--faster", action="store_true",
                   help="also retrain, for reference, each family's slowest net that is faster than the POP net")
    p.add_argument("--seeds", type=int, default=1, help="retraining seeds per net (train.seed, train.seed + 1, ...)")
    p.add_argument("--set", action="append", default=[], help="config override key.path=value")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    t0 = time.time()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    cfg = load_config(a.config, a.set)
    args = validate(cfg.search.args, PopArgs, "search.args")
    dataset, trainer, oracle = services(cfg, work, log)
    space = space_for(args, dataset)

    # 1. The search.
    settings = settings_from_args(args, target_latency_ms=min(a.targets), seed=cfg.train.seed)
    if a.audit:
        settings = dataclasses.replace(settings, prescreen_audit=True)
    pop = PopSearch(space, settings, measure=oracle.measure, fingerprint=oracle.fingerprint(),
                    executor=LocalExecutor(candidate_trainer(trainer)), workdir=work / "pop", log=log)
    outcome = pop.run()
    t_search = time.time() - t0
    chosen = {t: choose(outcome, t) for t in a.targets}
    write_boundary(work, outcome, {"space": space.describe(), "window_ms": list(settings.window_ms),
                                   "targets_ms": a.targets})
    png = plot_pareto(work / "pareto.png", outcome, title=f"POP on {space.name} (onnxruntime, 1 thread, batch 1)",
                      target_ms=a.targets, chosen_key=[chosen[t]["key"] for t in a.targets],
                      window_ms=settings.window_ms)

    # 2-3. Paired latency of the POP nets and every baseline; pick the baselines per target.
    fam = baselines(space)
    nets = {f"pop@{t:g}": chosen[t]["spec"] for t in a.targets}
    for kind, members in fam.items():
        nets.update({f"{kind}:{k}": s for k, s in members.items()})
    lat = paired_latency(oracle, nets, a.rounds, work / "paired_latency.json", log)
    rows = []
    for t in a.targets:
        pop_name = f"pop@{t:g}"
        lp = lat[pop_name]["median_ms"]
        picks = {"pop": pop_name}
        for kind in fam:
            slower = [n for n in nets if n.startswith(kind + ":") and lat[n]["median_ms"] >= lp]
            picks[kind] = min(slower, key=lambda n: lat[n]["median_ms"]) if slower else None
        if a.faster:  # for reference, not the criterion: the slowest net of each family faster than POP's
            for kind in fam:
                faster = [n for n in nets if n.startswith(kind + ":") and lat[n]["median_ms"] < lp]
                picks[f"{kind} (faster)"] = max(faster, key=lambda n: lat[n]["median_ms"]) if faster else None
        rows.append((t, picks))

    # 4. Retrain with the same budget and test (one training per distinct network and seed).
    seeds = [cfg.train.seed + i for i in range(a.seeds)]
    trainers = {seeds[0]: trainer}
    for sd in seeds[1:]:
        trainers[sd] = Trainer(load_config(a.config, [*a.set, f"train.seed={sd}"]), dataset, log=log)
    results: dict[str, Any] = {}
    trained: dict[tuple[str, int], float] = {}
    for t, picks in rows:
        for role, name in picks.items():
            if name is None or name in results:
                continue
            spec = nets[name]
            ident = spec.replace(name="net", meta=()).to_json(indent=None)
            accs = []
            for sd in seeds:
                if (ident, sd) not in trained:
                    tag = name.replace(":", "_").replace("@", "_") + ("" if sd == seeds[0] else f"_seed{sd}")
                    res = trainers[sd].train(spec, work / "retrain" / tag, eval_split=None, test=True)
                    trained[(ident, sd)] = float(res.metrics["test"]["accuracy"])
                accs.append(trained[(ident, sd)])
            results[name] = {"test_accuracy": float(np.mean(accs)), "test_accuracy_seeds": accs,
                             "macs": S.macs(spec), "params": S.params(spec), "latency_ms": lat[name]["median_ms"],
                             "arch": [[b.layers[-1].out for b in spec.blocks[st.start:st.end]] for st in spec.stages]}
            log(f"bench: {name}: test accuracy {results[name]['test_accuracy']:.4f} (seeds {seeds}: "
                f"{', '.join(f'{x:.4f}' for x in accs)}), {lat[name]['median_ms']:.4f} ms")

    table = []
    for t, picks in rows:
        for role, name in picks.items():
            if name is None:
                table.append({"target_ms": t, "role": role, "net": None})
                continue
            table.append({"target_ms": t, "role": role, "net": name, **results[name],
                          "search_holdout_accuracy": chosen[t]["accuracy"] if role == "pop" else None})
    wins = {t: all(r["net"] is None or r["role"] not in fam or
                   results[picks["pop"]]["test_accuracy"] > r["test_accuracy"] for r in table if r["target_ms"] == t)
            for t, picks in rows}
    for r in table:  # at how many seeds the POP net beats this row's net
        if r["net"] is not None and r["role"] != "pop":
            mine = results[dict(rows)[r["target_ms"]]["pop"]]["test_accuracy_seeds"]
            r["pop_wins_seeds"] = sum(p > b for p, b in zip(mine, r["test_accuracy_seeds"]))
    c = outcome.counts
    summary = {
        "space": space.name, "space_size": c["space_size"], "trained": c["trained"],
        "pruned_without_training": c["pruned_without_training"],
        "pruned_by_predicted_latency": c["pruned_by_predicted_latency"], "open_left": c["open"],
        "measured_end_to_end": c["measured_end_to_end"], "stop_reason": outcome.stop_reason,
        "prescreen": outcome.prescreen, "boundary": [{k: e[k] for k in ("key", "latency_ms", "accuracy")}
                                                     for e in outcome.evaluated if e["on_boundary"]],
        "table": table, "pop_more_accurate": wins, "pareto_png": str(png),
        "search_seconds": round(t_search, 1), "seconds": round(time.time() - t0, 1),
        "retrain_epochs": cfg.train.epochs, "candidate_epochs": args.candidate_epochs, "seeds": seeds,
    }
    atomic_write_json(work / "bench.json", summary)
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"\nspace {space.name}: {c['space_size']} nets; trained {c['trained']}, pruned without training "
              f"{c['pruned_without_training']} ({c['pruned_by_predicted_latency']} from the pre-screen's bound), "
              f"open {c['open']}; measured end to end {c['measured_end_to_end']}")
        print("boundary (measured ms, held-out accuracy):")
        for e in summary["boundary"]:
            print(f"  {e['key']:<32} {e['latency_ms']:.4f}  {e['accuracy']:.4f}")
        print(f"\n| target ms | net | stage widths | MACs | latency ms | test acc (mean of {len(seeds)} seeds) | "
              "per seed | POP wins at |")
        print("|---|---|---|---|---|---|---|---|")
        for r in table:
            if r["net"] is None:
                print(f"| {r['target_ms']:g} | {r['role']}: none slower | | | | | | |")
                continue
            per = ", ".join(f"{x:.4f}" for x in r["test_accuracy_seeds"])
            won = "" if r["role"] == "pop" else f"{r['pop_wins_seeds']}/{len(seeds)} seeds"
            print(f"| {r['target_ms']:g} | {r['role']}: {r['net']} | {r['arch']} | {r['macs'] / 1e6:.2f} M | "
                  f"{r['latency_ms']:.4f} | {r['test_accuracy']:.4f} | {per} | {won} |")
        print(f"\nPOP more accurate (mean test accuracy) than both baselines of equal or higher latency: {wins}; "
              f"pareto.png: {png}")
        if outcome.prescreen and outcome.prescreen.get("audit"):
            au = outcome.prescreen["audit"]
            print(f"pre-screen audit: {au['measured']} unmeasured architectures measured; prediction error median "
                  f"{au['median_rel_error'] * 100:.1f} %, max {au['max_rel_error'] * 100:.1f} %, "
                  f"{au['within_margin'] * 100:.0f} % within the ±{outcome.prescreen['margin'] * 100:.0f} % bound; "
                  f"{len(au['wrong_decisions'])} decisions the measured latency would change")
    return summary


if __name__ == "__main__":
    main()
