"""MetaPruning at latency targets vs uniformly width-scaled networks, end to end on Fashion-MNIST.

1. Build (or resume) the per-layer onnxruntime latency grid of the widest network of the config's space
   (`latency.layer_grid`, 1 thread, batch 1, the config's channel_multiple); then time its five
   calibration networks again in `--rounds` interleaved rounds (step 3's protocol), rebuilding the grid
   while the ½ or ¼ network differs from its grid figure by over `--grid-tolerance`; the widest net so
   timed is the reference of the targets (`--targets-only` stops here).
2. Run MetaPruning (`jaxnas search` through `jaxnas.pipeline.run`) at latency targets of `--fractions` x
   that latency (handed to the search in the grid's terms, through the calibration networks' two
   timings), each a window [`--window` x target, target] (`search.args.min_latency_ms`, as the
   original's ResNet-50 window: a cap alone lets a noisy fitness pick nets that leave much of the budget
   unused, and the comparison is at the target); the PruningNet is trained once, for `--pruningnet-epochs`
   (before step 1, into `shared/` of the work dir), and every search starts from it
   (`search.args.pruningnet_from`); each picked network is retrained from scratch for `--budget` epochs.
3. Measure, interleaved in rounds (the `--stat` of each, min over rounds, so that drifting machine load
   hits all nets alike): the widest network, the MetaPruning nets and two families of uniformly
   width-scaled networks: MobileNetV2 at width multipliers 0.35, 0.40, ..., 1.40 (`zoo.mobilenet_v2(width=w,
   small_input=True)`, make_divisible(8)) and the space's own uniform networks (every gene at one of the 31
   scale ids), fine steps so that the baseline is the closest net above the MetaPruning net's latency.
   The block is saved in the work dir (`measured.json`) and reused while the nets and protocol are the
   same (`--remeasure` times them again).
4. Per target and family, retrain with the same budget the narrowest uniform network whose measured
   latency is at least the MetaPruning net's, and compare test accuracy: with `--seeds N`, both nets are
   retrained with train.seed 0..N-1 and compared by their mean (the table also counts the seeds won).

    python benchmarks/metapruning_table.py --budget 3 --seeds 3 --workdir runs/metapruning-bench [--json]

Defaults follow configs/metapruning/quick.yaml.  Every stage resumes from `--workdir`.  The timing phases
(1 and 3) hold /tmp/jaxnas-timing.lock (the lock `flock` takes; after `--lock-wait` seconds they run
without it, and the output says so), the training phases do not; the searches' own end-to-end checks of
their best candidates are timed without it.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from jaxnas import models, zoo
from jaxnas import spec as S
from jaxnas.config import load_config, override_config
from jaxnas.costmodel import calibration_knots, calibration_network, piecewise_linear
from jaxnas.data import load_dataset
from jaxnas.io_utils import atomic_write_json
from jaxnas.latency.layer_grid import build_layer_grid
from jaxnas.latency.measure import measure_spec
from jaxnas.methods.metapruning.args import MetaPruningArgs
from jaxnas.methods.metapruning.pipeline import space_for
from jaxnas.pipeline import run
from jaxnas.schema import validate
from jaxnas.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
GRID_CHECK = ("network:min", "network:f0.25", "network:f0.5", "network:f0.75", "network:full")  # see step 1


def grid_terms(grid_ms: dict[str, float], now_ms: dict[str, float]):
    """ms as the final block times a net -> ms in the grid's terms: the cost model's monotone piecewise-linear
    map (`costmodel.calibration_knots`, `piecewise_linear`) through the networks timed both ways."""
    knots = calibration_knots([(now_ms[k], grid_ms[k]) for k in now_ms])
    return lambda ms: float(piecewise_linear(ms, knots, np))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def timing_lock(wait_s: float, path: str = "/tmp/jaxnas-timing.lock"):
    """Hold the machine's timing lock (the one `flock /tmp/jaxnas-timing.lock ...` takes) for a timing phase
    only, so the long training phases in between do not block other timing runs.  Yields whether it is
    held: after `wait_s` seconds of waiting the phase runs without it (recorded in the output), so that
    a long queue of other timing runs cannot stall the benchmark indefinitely."""
    with open(path, "a") as f:
        deadline = time.time() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    held = False
                    break
                time.sleep(2)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(f, fcntl.LOCK_UN)


def measure_block(specs: dict[str, S.ArchSpec], a) -> dict[str, float]:
    """{name: ms} with the `--stat` statistic, min over `--rounds` interleaved rounds."""
    variables = {n: models.init_variables(models.build_model(s), 0) for n, s in specs.items()}
    best: dict[str, float] = {}
    for _ in range(a.rounds):
        for n, s in specs.items():
            r = measure_spec(s, variables[n], "onnxruntime", threads=1, warmup=a.warmup, runs=a.runs)
            best[n] = min(best.get(n, float("inf")), float(r.to_dict()[f"{a.stat}_ms"]))
    return best


def mbv2_baseline(width: float, cfg, dataset) -> S.ArchSpec:
    """The MobileNetV2 family's net at `width` (small-input, make_divisible(8)) for the config's data."""
    h, _, c = dataset.image_shape
    return zoo.mobilenet_v2(width=width, small_input=True, resolution=h, num_classes=dataset.num_classes,
                            in_channels=c, dropout=cfg.model.dropout)


def space_baseline(space, scale_id: int) -> S.ArchSpec:
    """The search space's own uniform net: every gene at `scale_id`."""
    return space.to_spec(space.uniform(scale_id), name=f"metapruning_uniform_{scale_id}")


def baseline_spec(name: str, cfg, dataset, space) -> S.ArchSpec:
    """The baseline net behind a name this script gives it in its tables ("mbv2 0.95", "uniform id 19")."""
    family, value = name.rsplit(" ", 1)
    return mbv2_baseline(float(value), cfg, dataset) if family == "mbv2" else space_baseline(space, int(value))


def pretrain_pruningnet(cfg, dataset, args: MetaPruningArgs, space, workdir: Path):
    """Train (or load, when `workdir` holds its finished training) the PruningNet exactly as the search's own
    first phase does (same model, config, seed); returns the model and its variables."""
    from types import SimpleNamespace

    from jaxnas.methods.metapruning.pipeline import pruningnet_batch_size, search_seed, training_config
    from jaxnas.methods.metapruning.pruningnet import build_pruningnet, init_pruningnet
    from jaxnas.methods.metapruning.training import train_pruningnet

    seed = search_seed(cfg, args)
    setup = SimpleNamespace(args=args, seed=seed, batch_size=pruningnet_batch_size(cfg, args))
    model = build_pruningnet(space, cfg.model.depthwise)
    variables, _ = train_pruningnet(model, init_pruningnet(model, seed), dataset, training_config(cfg, setup), workdir)
    return model, variables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/metapruning/quick.yaml"))
    p.add_argument("--workdir", default="runs/metapruning-bench")
    p.add_argument("--budget", type=float, default=3.0, help="retraining epochs (MetaPruning nets and baselines)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--window", type=float, default=0.9,
                   help="lower bound of each target's window as a fraction of the target (0: a cap alone)")
    p.add_argument("--seeds", type=int, default=1,
                   help="retrain every compared net with train.seed 0..seeds-1 and compare the means")
    p.add_argument("--widths", type=float, nargs="+", default=[round(0.35 + 0.05 * i, 2) for i in range(22)],
                   help="MobileNetV2 width multipliers considered as baselines (default 0.35, 0.40, ..., 1.40: "
                        "the nine widths 0.35, 0.5, 0.6, 0.75, 0.85, 1.0, 1.1, 1.25, 1.4 left the baseline up to "
                        "16 %% slower than the MetaPruning net)")
    p.add_argument("--ids", type=int, nargs="+", default=list(range(31)),
                   help="scale ids of the space's uniform networks considered as baselines (every one: the "
                        "baseline is then the closest in latency above the MetaPruning net)")
    p.add_argument("--families", nargs="+", default=["space", "mbv2"], choices=("space", "mbv2"),
                   help="uniform families whose baselines are retrained (both are measured)")
    p.add_argument("--pruningnet-epochs", type=float, default=8.0,
                   help="PruningNet training epochs (search.args.epochs; a --set of it wins).  The quick config's "
                        "2 epochs (356 steps) scored the picks at 31-36 %% held-out error and ranked nets no "
                        "better than uniform scaling (1 of 4 comparisons won); 8 epochs: 17.7-18.0 %%")
    p.add_argument("--set", action="append", default=[], help="config override a.b=c")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (min is kept)")
    p.add_argument("--stat", default="p10", choices=("median", "mean", "p10", "min"),
                   help="timing statistic of the table, the targets, the search's check and the measurements")
    p.add_argument("--lock-wait", type=float, default=1800,
                   help="seconds to wait for the timing lock before a timing phase runs without it")
    p.add_argument("--grid-tolerance", type=float, default=0.1,
                   help="rebuild the layer grid while its networks timed again after it differ by more than this")
    p.add_argument("--grid-tries", type=int, default=3, help="layer grids built at most (the last one is kept)")
    p.add_argument("--targets-only", action="store_true",
                   help="stop after the grid and its check, having printed the targets (both terms)")
    p.add_argument("--remeasure", action="store_true",
                   help="time the nets again even if the work dir holds this block's measurements")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not 0 <= a.window < 1 or a.seeds < 1:
        p.error(f"--window must be in [0, 1) and --seeds >= 1, got {a.window} and {a.seeds}")
    if a.grid_tries < 1 or a.grid_tolerance < 0:
        p.error(f"--grid-tries must be >= 1 and --grid-tolerance >= 0, got {a.grid_tries} and {a.grid_tolerance}")
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()  # trains and times on the allocator the jaxnas command uses
    t0 = time.time()
    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()]
    locks: dict[str, bool] = {}
    overrides = [f"train.epochs={a.budget}", f"train.eval_every_epochs={a.budget}",
                 f"search.args.latency_stat={a.stat}", f"search.args.epochs={a.pruningnet_epochs:g}", *a.set]
    cfg = load_config(a.config, overrides)
    dataset = load_dataset(cfg.dataset_config())
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    space = space_for(cfg, dataset, args)
    widest = space.max_spec()
    shared = work / "shared"

    # --- 0. The PruningNet (it does not depend on the budget) before the timing lock is needed, in a dir
    # of its own: every target's search starts from it (search.args.pruningnet_from; a run's work dir
    # must be empty or a jaxnas run, so it cannot be trained into the first target's). ---------------
    t = time.time()
    pretrain_pruningnet(cfg, dataset, args, space, shared / "pruningnet")
    pruningnet_s = round(time.time() - t, 1)

    # --- 1. Layer grid of the widest network (with its end-to-end latency). ------------------------
    # The grid times each calibration network once (100 runs, its p10); the table compares nets timed in
    # interleaved rounds (min over rounds), which for the wide nets is lower: on the EPYC the grid's widest
    # net came out 1.20-1.32x and its ¾ net 1.20x the same nets so re-timed, three grids in a row, while the
    # ½ and ¼ nets agreed within 1 %.  So right after the grid its calibration networks are timed again in
    # the final block's protocol; the grid is rebuilt (up to --grid-tries times) while the ½ or ¼ net
    # differs by over --grid-tolerance (a slow spell during the grid); the targets are fractions of the
    # widest net so timed, and are handed to the search (which predicts and checks in the grid's terms)
    # mapped into the grid's terms through the calibration networks' two timings (`grid_terms`).
    grid = work / "layer_grid.json"
    check_file = work / "grid_check.json"  # kept, so that a resumed run keeps its targets (the searches' configs)
    wide_vars = models.init_variables(models.build_model(widest), 0)
    nets = {k: calibration_network(k, widest, wide_vars, multiple=args.channel_multiple)[0] for k in GRID_CHECK}
    check_key = {"stat": a.stat, "rounds": a.rounds, "runs": a.runs, "warmup": a.warmup}

    def open_grid():
        return build_layer_grid(widest, "onnxruntime", out_path=grid, channel_multiple=args.channel_multiple,
                                warmup=5, runs=30, network_runs=a.runs)

    saved = json.loads(check_file.read_text()) if check_file.is_file() and grid.is_file() else None
    if saved is not None and saved["key"] == check_key and saved["grid_sha"] == _sha(grid):
        table = open_grid()
        grid_checks, now, locks["grid"] = saved["grid_checks"], saved["now"], saved["lock_held"]
        print(f"grid check from {check_file}: now / grid {grid_checks[-1]}", flush=True)
    else:
        grid_checks = []
        for attempt in range(a.grid_tries):
            with timing_lock(a.lock_wait) as held:  # the check times nets, even when the grid is resumed
                locks["grid"] = held
                table = open_grid()
                now = measure_block(nets, a)
            ratios = {k: round(now[k] / table.ms(k, a.stat), 3) for k in nets}
            grid_checks.append(ratios)
            print(f"grid check {attempt + 1}: now / grid {ratios}", flush=True)
            if all(abs(ratios[k] - 1) <= a.grid_tolerance for k in ("network:f0.25", "network:f0.5")) \
                    or attempt == a.grid_tries - 1:
                break
            grid.replace(work / f"layer_grid.stale{attempt}.json")  # kept for the record; a fresh grid is built
        atomic_write_json(check_file, {"key": check_key, "grid_sha": _sha(grid), "grid_checks": grid_checks,
                                       "now": now, "lock_held": held})
    full_ms = now["network:full"]
    in_grid = grid_terms({k: table.ms(k, a.stat) for k in nets}, now)
    print(f"widest {widest.name}: {S.macs(widest) / 1e6:.2f} M MACs, {full_ms:.3f} ms ({a.stat}) timed after the "
          f"grid ({table.ms('network:full', a.stat):.3f} ms in it)", flush=True)

    # --- 2. MetaPruning at each target (one PruningNet). ---------------------------------------------
    targets = {f: round(f * full_ms, 4) for f in a.fractions}
    targets_grid = {f: round(in_grid(targets[f]), 4) for f in a.fractions}
    for f in a.fractions:
        print(f"target {f:g}: {targets[f]:.4f} ms = {targets_grid[f]:.4f} ms in the grid's terms", flush=True)
    if a.targets_only:
        return 0
    summaries, seconds = {}, {}
    for f in a.fractions:
        low = round(in_grid(a.window * targets[f]), 4) if a.window else "null"
        sets = ["search.target_macs=null", f"search.target_latency_ms={targets_grid[f]}", f"latency.table={grid}",
                f"search.args.pruningnet_from={shared}", f"search.args.min_latency_ms={low}"]
        t = time.time()
        summaries[f] = run(override_config(cfg, sets), work / f"mp_{f:g}", search=True, deploy=False)
        seconds[f] = round(time.time() - t, 1)
    loads.append(os.getloadavg())

    # --- 3. Interleaved end-to-end measurements. -----------------------------------------------------
    mbv2 = {w: mbv2_baseline(w, cfg, dataset) for w in a.widths}
    same = {k: space_baseline(space, k) for k in a.ids}
    specs = {"widest": widest, **{f"mp {f:g}": S.ArchSpec.load(s["arch_path"]) for f, s in summaries.items()},
             **{f"mbv2 {w:g}": s for w, s in mbv2.items()}, **{f"uniform id {k}": s for k, s in same.items()}}
    # Kept in the work dir like every other stage: a rerun with more --seeds retrains against the same
    # measurements (a new block could reorder nets that measured within noise of each other).
    block = work / "measured.json"
    protocol = {"stat": a.stat, "rounds": a.rounds, "runs": a.runs, "warmup": a.warmup,
                "specs": {n: s.to_json(indent=None) for n, s in specs.items()}}
    saved = json.loads(block.read_text()) if block.is_file() and not a.remeasure else None
    if saved is not None and saved["protocol"] == protocol:
        measured, locks["measure"] = saved["measured"], saved["lock_held"]
        print(f"measurements from {block} (--remeasure to time again)", flush=True)
    else:
        with timing_lock(a.lock_wait) as held:
            locks["measure"] = held
            measured = measure_block(specs, a)
        atomic_write_json(block, {"protocol": protocol, "measured": measured, "lock_held": held})
    loads.append(os.getloadavg())

    # --- 4. Uniform baselines of at least the MetaPruning nets' latency, same budget and seeds. -------
    seeds = [cfg.train.seed + i for i in range(a.seeds)]
    trainers = {sd: Trainer(override_config(cfg, [f"train.seed={sd}"]), dataset) for sd in seeds}
    trained: dict[str, list[float]] = {}

    def accuracies(name: str, spec: S.ArchSpec, first: float | None = None) -> list[float]:
        """Test accuracy at every seed (`first`: the seed-0 accuracy already known)."""
        if name not in trained:
            accs = [] if first is None else [first]
            for sd in seeds[len(accs):]:
                tag = name.replace(" ", "_") + ("" if sd == seeds[0] else f"_seed{sd}")
                accs.append(float(trainers[sd].train(spec, work / tag).metrics["test"]["accuracy"]))
            trained[name] = accs
        return trained[name]

    def baseline(family: dict, prefix: str, ms: float):
        fits = [k for k in sorted(family, key=lambda k: measured[f"{prefix} {k:g}"]) if measured[f"{prefix} {k:g}"] >= ms]
        k = fits[0] if fits else max(family, key=lambda k: measured[f"{prefix} {k:g}"])
        name = f"{prefix} {k:g}"
        accs = accuracies(name, family[k])
        return {"name": name, "macs": S.macs(family[k]), "measured_ms": measured[name],
                "accuracy": sum(accs) / len(accs), "accuracy_seeds": accs}

    rows = []
    for f, summary in summaries.items():
        ms = measured[f"mp {f:g}"]
        # seed 0 is the search's own retraining
        mine = accuracies(f"mp {f:g}", specs[f"mp {f:g}"], first=float(summary["test_accuracy"]))
        row = {"fraction": f, "target_ms": targets[f], "window_ms": [round(a.window * targets[f], 4), targets[f]],
               "target_ms_grid_terms": targets_grid[f],
               "macs": summary["achieved"]["macs"],
               "predicted_ms": summary["achieved"].get("predicted_latency_ms"),
               "verified_ms": summary["achieved"].get("verified_latency_ms"), "measured_ms": ms,
               "accuracy": sum(mine) / len(mine), "accuracy_seeds": mine, "holdout_error": summary["holdout_error"],
               "genes": summary["genes_original"], "search_seconds": seconds[f],
               "pruningnet_seconds": pruningnet_s if f == a.fractions[0] else 0,
               "phase_seconds": summary.get("phase_seconds"),
               "within_target": ms <= targets[f] * 1.05,
               # The targets come from the grid's measurement of the widest net; the same check against
               # the widest net timed in this interleaved block is robust to load drift since the grid.
               "fraction_of_widest_now": ms / measured["widest"],
               "within_fraction_now": ms <= f * measured["widest"] * 1.05,
               "mobilenet_v2": baseline(mbv2, "mbv2", ms) if "mbv2" in a.families else None,
               "space_uniform": baseline(same, "uniform id", ms) if "space" in a.families else None}
        for key in ("mobilenet_v2", "space_uniform"):
            if row[key] is not None:
                row[f"beats_{key}"] = row["accuracy"] > row[key]["accuracy"]
                row[f"seeds_won_{key}"] = sum(m > b for m, b in zip(mine, row[key]["accuracy_seeds"]))
        rows.append(row)
    loads.append(os.getloadavg())
    result = {"widest": widest.name, "widest_macs": S.macs(widest), "widest_ms_targets": full_ms,
              "widest_ms_grid": table.ms("network:full", a.stat),
              "widest_ms_now": measured["widest"], "stat": a.stat, "budget_epochs": a.budget, "seeds": seeds,
              "window": a.window,
              "train_examples": dataset.num_examples("train"), "holdout_examples": dataset.num_examples("holdout"),
              "test_examples": dataset.num_examples("test"), "rows": rows, "measured": measured,
              "load_averages": [[round(x, 2) for x in l] for l in loads], "timing_lock_held": locks,
              "grid_checks": grid_checks,
              "seconds": round(time.time() - t0, 1)}
    atomic_write_json(work / "metapruning_table.json", result)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"\nMetaPruning vs uniform width ({widest.name}: {S.macs(widest) / 1e6:.2f} M MACs, {full_ms:.3f} ms "
          f"{a.stat} after the grid, {measured['widest']:.3f} ms at the end; retrain {a.budget:g} epochs on "
          f"{dataset.num_examples('train')} images, test on {dataset.num_examples('test')}; acc: mean over seeds "
          f"{seeds}, won: seeds at which the MetaPruning net is more accurate)")
    print(f"{'target':>7} {'MMACs':>6} {'pred':>6} {'meas':>6} {'/wide':>5} {'acc':>6} ok | {'MobileNetV2':>12} {'MMACs':>6} "
          f"{'meas':>6} {'acc':>6} won | {'space uniform':>14} {'MMACs':>6} {'meas':>6} {'acc':>6} won")
    none = {"name": "-", "macs": 0, "measured_ms": 0.0, "accuracy": 0.0}
    for r in rows:
        m, u = r["mobilenet_v2"] or none, r["space_uniform"] or none
        print(f"{r['target_ms']:7.3f} {r['macs'] / 1e6:6.2f} {r['predicted_ms'] or 0:6.3f} {r['measured_ms']:6.3f} "
              f"{r['fraction_of_widest_now']:5.2f} {r['accuracy']:6.4f} "
              f"{'y' if r['within_target'] and r['within_fraction_now'] else 'n':>2} | {m['name']:>12} {m['macs'] / 1e6:6.2f} "
              f"{m['measured_ms']:6.3f} {m['accuracy']:6.4f} {r.get('seeds_won_mobilenet_v2', 0):>3} | "
              f"{u['name']:>14} {u['macs'] / 1e6:6.2f} {u['measured_ms']:6.3f} {u['accuracy']:6.4f} "
              f"{r.get('seeds_won_space_uniform', 0):>3}")
    print(f"load averages (1/5/15 min) at start, after the searches, after measuring, at the end: "
          f"{result['load_averages']}; timing lock held: {locks}; total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
