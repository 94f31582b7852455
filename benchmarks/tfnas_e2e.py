"""TF-NAS end to end on the embedded Fashion-MNIST: precise latency targets, and accuracy against uniformly
width-scaled networks of the same skeleton at equal or higher measured latency.

1. Build (or resume) the TF-NAS latency table of the quick config's space on onnxruntime (1 thread, batch 1;
   `search.args.table_context`: blocks alone on a grid of 8 mids + in-network probes) and read the table's
   narrowest and widest network.
2. For each of `--fractions`: search at target T = narrowest + fraction x (widest - narrowest) with the
   quick config (`jaxnas.pipeline.run`: search, re-base the table on the machine's speed now
   (`search.args.rebase_table`), final fit, retrain, export, measure), every run resumable; right after
   the run, the net is measured (`--window-rounds` rounds of `--runs` runs, alternating with the table's
   reference network, spread over `--window` seconds; median over rounds of each round's
   `search.args.table_stat`, the table's statistic).
3. Baselines: the skeleton at full depth with k3e6 in every block and every mid at one fraction w of its
   maximum ("uniformly width-scaled"); for each TF-NAS net the narrowest w on a 1/64 grid whose table
   latency is at least the TF-NAS net's latency on the table's scale, widened until its measured latency
   (paired with the TF-NAS net in alternating rounds) is at least the TF-NAS net's; retrained with the same
   trainer and budget (`--seeds`: both with seeds 0..seeds-1, compared by their means).
4. Report: table latency vs T (target: within +-1 %), measured vs T (+-5 %; a measurement window whose
   reference net had a burst in it or ran more than --max-drift off the speed the net was fitted at is
   measured again, and every window is in e2e.json), the reference's drift since
   the table was built, the table's own prediction error (measured over drift vs the table as built), test
   accuracy vs the baseline's.

    python benchmarks/tfnas_e2e.py --workdir runs/tfnas-e2e [--fractions 0.3 0.6] [--seeds 2]

Timing (the table build and every measurement) holds the machine's timing lock (/tmp/jaxnas-timing.lock,
as `flock` does) so that two timing runs never overlap; searches and retraining run without it.  The
machine's load average is printed with the figures (the machine is shared; measured latency moves with it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

from jaxnas import spec as S
from jaxnas.config import load_config, override_config
from jaxnas.io_utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
LOCK = "/tmp/jaxnas-timing.lock"


class timing_lock:
    """Exclusive flock on LOCK while timing (the convention of the machine's benchmarks)."""

    def __enter__(self):
        import fcntl

        self.f = open(LOCK, "a")
        t = time.time()
        fcntl.flock(self.f, fcntl.LOCK_EX)
        if time.time() - t > 1:
            print(f"(waited {time.time() - t:.0f} s for the timing lock)", flush=True)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def measure_rounds(nets: dict[str, S.ArchSpec], rounds: int, runs: int, stat: str = "min",
                   window_s: float = 0.0, per_round: bool = False):
    """{name: ms}: each net exported once and timed in `rounds` alternating rounds, spread evenly over
    `window_s` seconds; the median over rounds of each round's `stat` (the table's statistic: 'min' in the
    quick config).  per_round: ({name: ms}, {name: [each round's ms]})."""
    import tempfile

    from jaxnas.export.parity import random_variables
    from jaxnas.latency.backends import get_backend
    from jaxnas.latency.builder import export_for
    from jaxnas.latency.measure import input_shape
    from jaxnas.methods.tfnas.rebase import wait_for_round

    be = get_backend("onnxruntime", threads=1)
    out: dict[str, list[float]] = {n: [] for n in nets}
    with tempfile.TemporaryDirectory() as tmp:
        files = {n: export_for(s, be, tmp, variables=random_variables(s), stem=n) for n, s in nets.items()}
        start = time.monotonic()
        for i in range(rounds):
            wait_for_round(start, i, rounds, window_s)
            for n, s in nets.items():
                out[n].append(getattr(be.measure(str(files[n]), input_shape(s), warmup=20, runs=runs), stat))
    medians = {n: float(np.median(v)) for n, v in out.items()}
    return (medians, out) if per_round else medians


def measure_window(nets: dict[str, S.ArchSpec], expected_reference_ms, args, runs: int, stat: str):
    """The deployed net's measurement window, measured again (up to `--window-tries` windows, `--retry-wait`
    s apart) when it cannot be trusted — issue 12's rule, a flagged measurement is never silently used:
    the reference net's rounds spread wider than rebase.BURST_SPREAD (another tenant's burst), or its
    median is more than `--max-drift` off the speed the net was fitted at (the re-based reference;
    the table's entry without a re-base).  Returns (medians of the window used, every window's record);
    the window used is the first trusted one, or else the one least off the fitted speed."""
    from jaxnas.methods.tfnas.rebase import BURST_SPREAD, window_spread

    windows = []
    for k in range(args.window_tries):
        m, rounds = measure_rounds(nets, args.window_rounds, runs, stat, args.window, per_round=True)
        rec = {"medians": m, "loadavg": round(os.getloadavg()[0], 2)}
        if "reference" in m and expected_reference_ms:
            rec.update(spread=window_spread(rounds["reference"]),
                       off_fitted_speed=m["reference"] / expected_reference_ms - 1)
            rec["trusted"] = rec["spread"] <= BURST_SPREAD and abs(rec["off_fitted_speed"]) <= args.max_drift
        else:
            rec["trusted"] = True  # nothing to check it against
        windows.append(rec)
        if rec["trusted"]:
            break
        print(f"measurement window {k + 1}: reference {100 * rec['off_fitted_speed']:+.1f} % off the fitted speed, "
              f"rounds spread {100 * rec['spread']:.0f} %: not used"
              + (f", measured again in {args.retry_wait:g} s" if k + 1 < args.window_tries else ""), flush=True)
        if k + 1 < args.window_tries:
            time.sleep(args.retry_wait)
    used = next((w for w in windows if w["trusted"]),
                min(windows, key=lambda w: abs(w.get("off_fitted_speed", 0.0))))
    return used["medians"], windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "tfnas" / "quick.yaml"))
    ap.add_argument("--workdir", default="runs/tfnas-e2e")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6])
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds of the uniform comparisons")
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per round (default: latency.runs of the config, as the table was timed: a minimum "
                         "over 300 runs is lower than over 100)")
    ap.add_argument("--window-rounds", type=int, default=21, help="rounds of each net's measurement after its run")
    ap.add_argument("--window", type=float, default=60.0,
                    help="seconds those rounds are spread over (the machine's speed wanders over tens of seconds)")
    ap.add_argument("--window-tries", type=int, default=4,
                    help="measurement windows at most, while the reference net says the window cannot be trusted")
    ap.add_argument("--max-drift", type=float, default=0.03,
                    help="a window whose reference net runs further than this off the speed the net was fitted at "
                         "is measured again (quiet minutes differ by 1-2 %% here)")
    ap.add_argument("--retry-wait", type=float, default=30.0, help="seconds between measurement windows")
    ap.add_argument("--seeds", type=int, default=1, help="retrain both nets with this many seeds, compare means")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    import jax

    from jaxnas.data import load_dataset
    from jaxnas.latency.oracle import RuntimeOracle
    from jaxnas.latency.spaces import TfnasLut
    from jaxnas.latency.table import LatencyTable
    from jaxnas.methods.tfnas.args import TfnasArgs
    from jaxnas.methods.tfnas.run import make_space, reachable_range
    from jaxnas.pipeline import run
    from jaxnas.schema import validate
    from jaxnas.trainer import Trainer

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str((root / "jax_cache").absolute()))  # one compile per shape
    t0 = time.time()
    table_path = (root / "latency_table.json").absolute()
    cfg = override_config(load_config(args.config), [f"latency.table={table_path}"])
    targs = validate(cfg.search.args, TfnasArgs, "search.args")
    dataset = load_dataset(cfg.dataset_config())
    space = make_space(targs, dataset)
    runs = args.runs or cfg.latency.runs or 100

    # 1. the table
    t = time.time()
    # a finished table (its derived 'base' entry is written last, and every probe of a network table is in
    # it: tables of an older jaxnas lack some and measure them now) is read without waiting for the lock
    from jaxnas.latency.spaces import REFERENCE_KEY
    from jaxnas.latency.tfnas_table import probes

    def finished(t: LatencyTable) -> bool:
        return "base" in t and (targs.table_context != "network" or all(k in t for k in probes(space)))
    built = table_path.exists() and finished(LatencyTable.load(table_path))
    with contextlib.nullcontext() if built else timing_lock():
        table = RuntimeOracle(cfg.latency, workdir=root, log=lambda m: print(m, flush=True)).block_table(
            space.to_dict(), out=table_path, context=targs.table_context)
    lut = TfnasLut.from_table(table, targs.table_stat)
    lo, hi = reachable_range(lut, space)
    table_s = time.time() - t
    print(f"table {table_path}: {len(table)} entries ({table_s:.0f} s), networks {lo:.4f} .. {hi:.4f} ms", flush=True)

    # The table's reference network (network tables), timed in the same rounds: the machine's drift since
    # the table was measured (these shared machines drift by up to 10 % in an hour) is its latency now over
    # its entry.
    ref_spec = space.build_spec(space.reference_arch(), name=f"{space.name}_netref")
    ref_key = REFERENCE_KEY
    ref_table = table.ms(ref_key, targs.table_stat) if ref_key in table else None
    extra = {"reference": ref_spec} if ref_table else {}

    rows = []
    for i, frac in enumerate(args.fractions):
        target = lo + frac * (hi - lo)
        wd = root / f"target{i}"
        c = override_config(cfg, [f"search.target_latency_ms={target}", "search.args.target_fraction=null"])
        t = time.time()
        summary = run(c, wd, search=True, log=lambda m: print(m, flush=True))
        spec = S.ArchSpec.load(wd / "arch.json")
        run_s = round(time.time() - t, 1)
        # measured right after its run (with the table's reference in the same rounds): what a user who
        # deploys the result gets; the comparison with uniform nets below has its own paired rounds
        rebase = summary.get("rebase") or {}
        fitted_ref = rebase["reference_now_ms"] if rebase.get("applied") else ref_table
        with timing_lock():
            m0, windows = measure_window({"tfnas": spec, **extra}, fitted_ref, args, runs, targs.table_stat)
        rows.append({"fraction": frac, "target_ms": target, "workdir": str(wd), "spec": spec,
                     "table_ms": summary["table_latency_ms"], "deploy_ms": summary.get("latency_ms"),
                     "table_ms_as_built": summary.get("table_latency_ms_as_built", summary["table_latency_ms"]),
                     "rebase_factor": rebase.get("factor", 1.0) if rebase.get("applied") else 1.0,
                     "measured_ms": m0["tfnas"], "drift": m0["reference"] / ref_table if ref_table else 1.0,
                     "windows": windows,
                     "accuracies": [summary["test_accuracy"]], "choices": summary["choices"], "run_seconds": run_s})

    # 3. baselines: uniform width fraction w, k3e6 everywhere, full depth
    trainer_cfg = cfg  # the quick config's optim/schedule/train: what each TF-NAS run retrained with

    def uniform(w: float):
        return space.uniform_arch(w, multiple=targs.channel_multiple)  # aligned like the search's widths
    for r in rows:
        grid = [k / 64 for k in range(8, 65)]
        on_table = r["measured_ms"] / r["drift"]  # the TF-NAS net's latency on the table's scale
        pick = next((w for w in grid if lut.arch_latency(space, uniform(w)) >= on_table), 1.0)
        for _ in range(8):
            base_spec = space.build_spec(uniform(pick), dropout=targs.dropout,
                                         drop_connect=targs.drop_connect, name=f"uniform_w{pick:.4f}")
            with timing_lock():
                m = measure_rounds({"tfnas": r["spec"], "uniform": base_spec, **extra}, args.rounds, runs,
                                   targs.table_stat)
            if m["uniform"] >= m["tfnas"] or pick >= 1.0:
                break
            pick = min(1.0, pick + 2 / 64)
        r.update(uniform_fraction=pick, uniform_spec=base_spec, paired_ms=m["tfnas"], uniform_ms=m["uniform"])
        # the same retraining budget for both; --seeds > 1: both retrained with train.seed 0..seeds-1 and
        # compared by their mean (the TF-NAS run itself is seed 0)
        r["uniform_accuracies"] = []
        for seed in range(args.seeds):
            scfg = override_config(trainer_cfg, [f"train.seed={seed}"])
            if seed:
                tr = Trainer(scfg, dataset, log=lambda msg: None).train(r["spec"], Path(r["workdir"]) / f"seed{seed}")
                r["accuracies"].append(float(tr.metrics["test"]["accuracy"]))
            sub = f"uniform_w{pick:.4f}" + (f"_seed{seed}" if seed else "")
            trained = Trainer(scfg, dataset, log=lambda msg: None).train(base_spec, root / sub)
            r["uniform_accuracies"].append(float(trained.metrics["test"]["accuracy"]))

    load = os.getloadavg()
    out = []
    for r in rows:
        out.append({
            "fraction": r["fraction"], "target_ms": r["target_ms"], "table_ms": r["table_ms"],
            "table_error_pct": 100 * (r["table_ms"] / r["target_ms"] - 1), "measured_ms": r["measured_ms"],
            "measured_error_pct": 100 * (r["measured_ms"] / r["target_ms"] - 1), "deploy_ms": r["deploy_ms"],
            "drift_pct": 100 * (r["drift"] - 1),
            "drift_since_rebase_pct": 100 * (r["drift"] / r["rebase_factor"] - 1),
            "prediction_error_pct": 100 * (r["measured_ms"] / r["drift"] / r["table_ms_as_built"] - 1),
            "table_ms_as_built": r["table_ms_as_built"], "rebase_factor": r["rebase_factor"],
            "test_accuracy": float(np.mean(r["accuracies"])), "accuracies": r["accuracies"],
            "macs": S.macs(r["spec"]), "params": S.params(r["spec"]),
            "depths": r["choices"]["depths"], "ops": r["choices"]["ops"], "mids": r["choices"]["mids"],
            "uniform_fraction": r["uniform_fraction"], "uniform_ms": r["uniform_ms"], "paired_ms": r["paired_ms"],
            "uniform_accuracy": float(np.mean(r["uniform_accuracies"])), "uniform_accuracies": r["uniform_accuracies"],
            "uniform_macs": S.macs(r["uniform_spec"]),
            "run_seconds": r["run_seconds"], "measurement_windows": r["windows"],
            "measurement_trusted": any(w["trusted"] for w in r["windows"]),
            "within_1pct": abs(r["table_ms"] / r["target_ms"] - 1) <= 0.01,
            "within_5pct": abs(r["measured_ms"] / r["target_ms"] - 1) <= 0.05,
            "beats_uniform": bool(np.mean(r["accuracies"]) > np.mean(r["uniform_accuracies"])
                                  and r["uniform_ms"] >= r["paired_ms"])})
    report = {"table": str(table_path), "runs": runs, "window_rounds": args.window_rounds, "window_s": args.window, "table_entries": len(table), "table_seconds": round(table_s, 1),
              "narrowest_ms": lo, "widest_ms": hi, "rows": out, "loadavg": [round(v, 2) for v in load],
              "total_seconds": round(time.time() - t0, 1), "config": args.config}
    atomic_write_json(root / "e2e.json", report)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"\nTF-NAS e2e ({args.config}), table {lo:.4f}..{hi:.4f} ms, load {load[0]:.1f}:")
    print(f"{'target':>8} {'table':>8} {'err%':>6} {'rebase':>6} {'measured':>9} {'err%':>6} {'drift%':>6} "
          f"{'pred%':>6} {'win':>4} {'acc':>6} | {'uniform w':>9} {'paired':>8} {'measured':>9} {'acc':>6}")
    for o in out:
        print(f"{o['target_ms']:8.4f} {o['table_ms']:8.4f} {o['table_error_pct']:+6.2f} {o['rebase_factor']:6.3f} "
              f"{o['measured_ms']:9.4f} {o['measured_error_pct']:+6.2f} {o['drift_pct']:+6.1f} "
              f"{o['prediction_error_pct']:+6.2f} {len(o['measurement_windows']):3d}{'' if o['measurement_trusted'] else '!'} "
              f"{o['test_accuracy']:6.4f} | {o['uniform_fraction']:9.4f} "
              f"{o['paired_ms']:8.4f} {o['uniform_ms']:9.4f} {o['uniform_accuracy']:6.4f}")
    print("table: on the table re-based before the final fit (rebase: its factor, search.args.rebase_table); "
          "drift: the table's reference network timed with the net over its table entry; pred: the table's "
          "error on its own scale (measured / (1 + drift) over the table as built); win: measurement windows taken "
          "(! none could be trusted: the one least off the fitted speed is shown); paired: the TF-NAS net "
          "in the rounds with the uniform net; acc: mean over --seeds")


if __name__ == "__main__":
    main()
