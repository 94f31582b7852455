"""What CPU pinning and scheduling priority of the timing thread do to the spread of latency measurements.

Random nets of a search space (ONNX, onnxruntime 1 thread, or LiteRT) are timed under each setting, the
settings interleaved (rotated per repetition) so that the machine's load hits them alike:

* round-median CV: the spread of the per-session medians (what the adaptive protocol's interval is made
  of: the smaller, the fewer rounds it needs);
* run p90/median: the spread of single runs;
* dropped: runs dropped as preempted (wall - CPU time) or inside outlier bursts;
* adaptive: time the default protocol needed for ±1 % (median over nets), and how many hit the cap.

Settings: none (default scheduling), pin (timing thread pinned to one CPU), nice (nice -10),
fifo (SCHED_FIFO, needs root or CAP_SYS_NICE), pin+fifo.

    flock /tmp/jaxnas-timing.lock python benchmarks/timing_noise.py [--space mbv2-small] [--nets 4]
        [--backend onnxruntime] [--reps 2] [--round-time 1.5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from jaxnas.latency import TimingWarning, get_backend
from jaxnas.latency.builder import export_for, input_shape
from jaxnas.latency.spaces import load_space
from jaxnas.latency.timing import DEFAULT_PROTOCOL


def settings(cpu: int) -> dict[str, dict]:
    return {"none": {"priority": "none"}, "pin": {"priority": "none", "pin": cpu}, "nice": {"priority": "nice"},
            "fifo": {"priority": "fifo"}, "pin+fifo": {"priority": "fifo", "pin": cpu}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv2-small")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--nets", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--round-time", type=float, default=1.5, help="seconds of fixed-length timing per net/setting")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    space = load_space(args.space)
    be = get_backend(args.backend, threads=1)
    cpu = max(os.sched_getaffinity(0))
    conf = settings(cpu)
    fixed = DEFAULT_PROTOCOL.replace(rel_ci=1e-9, max_time_s=args.round_time, retries=0)  # never stops early
    load0 = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    res: dict[str, dict[str, list]] = {k: {"cv": [], "run": [], "dropped": [], "t": [], "capped": [], "med": []}
                                       for k in conf}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        specs = [space.sample(rng, name=f"n{i}") for i in range(args.nets)]
        models = [export_for(s, be, tmp, stem=f"n{i}") for i, s in enumerate(specs)]
        names = list(conf)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                for spec, model in zip(specs, models):
                    st = be.measure(model, input_shape(spec), protocol=fixed.replace(**conf[name]))
                    v = np.asarray(st.round_medians)
                    res[name]["cv"].append(float(v.std() / v.mean()))
                    res[name]["run"].append(st.p90 / st.median)
                    res[name]["med"].append(st.median)
                    dropped = next((n for n in st.notes if "runs dropped" in n), "0 of 1")
                    a, b = dropped.split(" runs")[0].split(" of ")
                    res[name]["dropped"].append(int(a) / int(b))
                    t0 = time.perf_counter()
                    ad = be.measure(model, input_shape(spec), protocol=DEFAULT_PROTOCOL.replace(**conf[name]))
                    res[name]["t"].append(time.perf_counter() - t0)
                    res[name]["capped"].append(ad.capped)
                applied = next((n for n in st.notes if n.startswith("timing thread")), "timing thread: default")
                print(f"rep {rep + 1} {name:<9} done ({applied})", flush=True)
    load1 = os.getloadavg()
    print(f"\n{args.space} on {be.fingerprint().runtime} threads=1, {args.nets} nets x {args.reps} reps, "
          f"{args.round_time:g} s per fixed timing; load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"{'setting':<9} {'round-median CV':>16} {'(min-max)':>14} {'run p90/med':>12} {'dropped':>8} "
          f"{'median':>9} {'adaptive s':>11} {'capped':>7}")
    base = np.median(res["none"]["med"])
    for name, r in res.items():
        cv = np.asarray(r["cv"]) * 100
        print(f"{name:<9} {np.median(cv):>15.2f}% {cv.min():>6.2f}-{cv.max():<6.2f}% {np.median(r['run']):>12.3f} "
              f"{np.mean(r['dropped']) * 100:>7.1f}% {np.median(r['med']) / base:>8.3f}x {np.median(r['t']):>11.2f} "
              f"{int(np.sum(r['capped'])):>3}/{len(r['capped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
