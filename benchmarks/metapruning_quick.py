"""The MetaPruning quick config end to end on a fresh work dir: wall time and the time of each phase.

    python benchmarks/metapruning_quick.py [--config configs/metapruning/quick.yaml] [--workdir DIR] [--json]

Runs what `jaxnas search configs/metapruning/quick.yaml` runs (`jaxnas.pipeline.run(cfg, workdir,
search=True)`: checks and the per-layer latency grid, PruningNet training, the evolutionary search, the
end-to-end check of its best candidates, the retraining, export and measurement) in `--workdir`, which
must not exist (default: a new temporary dir, removed afterwards), and prints the wall time against the
issue's 15 min target, the method's phases (`phase_seconds` of the summary; `setup` is the checks
and the latency grid), the target, what was achieved and the test accuracy.  Run it alone: it trains on
both cores and it times.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MIN = 15.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/metapruning/quick.yaml"))
    ap.add_argument("--workdir", help="a new dir to run in (kept); default: a temporary one, removed")
    ap.add_argument("--set", action="append", default=[], help="config override a.b=c")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    from jaxnas.config import load_config
    from jaxnas.pipeline import run

    if a.workdir and Path(a.workdir).exists():
        ap.error(f"--workdir {a.workdir} exists: the benchmark times a first run; give a new dir")
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="metapruning_quick_")) / "run"
    try:
        cfg = load_config(a.config, a.set)
        t0 = time.perf_counter()
        s = run(cfg, work, search=True)  # the summary carries the method's metrics
        wall = time.perf_counter() - t0
    finally:
        if not a.workdir:
            shutil.rmtree(work.parent, ignore_errors=True)
    out = {"config": a.config, "wall_s": round(wall, 1), "target_min": TARGET_MIN,
           "within_target": wall <= TARGET_MIN * 60,
           **{k: s.get(k) for k in ("phase_seconds", "method_seconds", "evaluated_candidates", "target", "achieved",
                                    "holdout_error", "test_accuracy", "latency_ms")}}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in out["phase_seconds"].items())
    print(f"{a.config}: {wall / 60:.1f} min wall ({'within' if out['within_target'] else 'over'} the "
          f"{TARGET_MIN:g} min target); method {out['method_seconds']:.0f} s: {phases}; "
          f"{out['evaluated_candidates']} candidates evaluated")
    print(f"target {out['target']}, achieved {out['achieved']}; held-out error {out['holdout_error']:.2f} %, "
          f"test accuracy {out['test_accuracy']}, deployed latency {out['latency_ms']} ms")


if __name__ == "__main__":
    main()
