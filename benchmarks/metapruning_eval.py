"""MetaPruning candidate evaluation: cost per candidate (BN recalibration + held-out top-1), single vs vectorised.

    python benchmarks/metapruning_eval.py [--config configs/metapruning/quick.yaml] [--ks 1,2,4,8] [--rounds 3]

Builds the config's PruningNet and `FitnessEvaluator` (its calibration batches and held-out split: for the
quick config 2 x 128 augmented training images and 600 held-out images at 28 px) and times evaluating
`--candidates` random candidates with `candidates_per_call` K in alternating rounds (after one untimed
call per K, which compiles).  Prints seconds per candidate and candidates per second per K, the median over
rounds, and the speed-up of each K over K = 1 (median of per-round ratios).  Errors must agree across K
(they are checked).

``--forward`` instead times the PruningNet's inference forward (one random candidate's generated kernels,
BN rows selected by its scale ids) against the plain widest network of the space (`MetaSpace.max_spec()`)
on the same held-out batch, in alternating rounds: the cost of selecting widths inside one compiled
forward, apart from recalibration.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import paired_rounds, step_ms  # noqa: E402

from jaxnas import allocator, models  # noqa: E402
from jaxnas.config import load_config  # noqa: E402
from jaxnas.data import load_dataset  # noqa: E402
from jaxnas.methods.metapruning.args import MetaPruningArgs  # noqa: E402
from jaxnas.methods.metapruning.fitness import FitnessEvaluator, calibration_images  # noqa: E402
from jaxnas.methods.metapruning.pipeline import space_for  # noqa: E402
from jaxnas.methods.metapruning.pruningnet import PruningNet, build_pruningnet, init_pruningnet  # noqa: E402
from jaxnas.schema import validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/metapruning/quick.yaml"))
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--candidates", type=int, default=8, help="candidates per timed call set (a multiple of every K)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forward", action="store_true", help="PruningNet inference forward vs the plain widest net")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    allocator.reexec_with_tcmalloc()
    cfg = load_config(a.config)
    args = validate(cfg.search.args, MetaPruningArgs, "search.args")
    dataset = load_dataset(cfg.dataset_config())
    space = space_for(cfg, dataset, args)
    model = build_pruningnet(space, cfg.model.depthwise)
    variables = init_pruningnet(model, 0)
    calib = calibration_images(dataset, args.calib_batches, args.calib_batch_size or cfg.data.batch_size, 0)
    holdout = dataset.arrays("holdout")
    rng = np.random.default_rng(0)
    cands = [tuple(int(v) for v in rng.integers(0, 31, space.num_genes)) for _ in range(a.candidates)]
    if a.forward:
        batch = np.asarray(holdout[0][:args.eval_batch_size or cfg.data.eval_batch_size])
        out = forward_vs_plain(model, variables, space, batch, cands[0], a.rounds)
        print(json.dumps(out, indent=1) if a.json else
              f"inference forward, batch {len(batch)} at {space.resolution} px: "
              f"PruningNet {out['pruningnet_ms']:.1f} ms, "
              f"plain widest net {out['plain_ms']:.1f} ms (ratio {out['ratio']:.2f}; load {out['load_average']})")
        return
    ks = [int(k) for k in a.ks.split(",")]
    evaluators = {}
    load = [round(os.getloadavg()[0], 2)]
    errors = {}
    compile_s = {}
    for k in ks:
        ev = FitnessEvaluator(model, variables, calib, holdout, eval_batch_size=args.eval_batch_size or
                              cfg.data.eval_batch_size, momentum=args.recalib_momentum, candidates_per_call=k)
        t = time.perf_counter()
        errors[k] = ev(cands[:k])                     # compiles
        compile_s[k] = time.perf_counter() - t
        evaluators[k] = ev
    per_round = {k: [] for k in ks}
    for _ in range(a.rounds):
        for k in ks:
            t = time.perf_counter()
            err = evaluators[k](cands)
            per_round[k].append((time.perf_counter() - t) / len(cands))
            errors[k] = err
    load.append(round(os.getloadavg()[0], 2))
    for k in ks[1:]:
        np.testing.assert_allclose(errors[k], errors[ks[0]], atol=1e-6)
    rows = []
    for k in ks:
        s = float(np.median(per_round[k]))
        rows.append({"k": k, "seconds_per_candidate": s, "candidates_per_second": 1 / s,
                     "speedup_over_k1": float(np.median(np.divide(per_round[ks[0]], per_round[k]))),
                     "first_call_seconds": round(compile_s[k], 1),
                     "rounds": [round(x, 3) for x in per_round[k]]})
    out = {"config": a.config, "images_per_candidate": int(calib.shape[0] * calib.shape[1] + len(holdout[1])),
           "resolution": space.resolution, "load_average": load, "rows": rows}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['images_per_candidate']} images per candidate at {space.resolution} px (load {load}):")
    for r in rows:
        print(f"  K={r['k']}: {r['seconds_per_candidate']:.3f} s/candidate ({r['candidates_per_second']:.2f}/s), "
              f"{r['speedup_over_k1']:.2f}x vs K=1 (first call incl. compile {r['first_call_seconds']} s)")


def forward_vs_plain(model, variables, space, images: np.ndarray, genes, rounds: int) -> dict:
    """Median ms of the PruningNet's and the plain widest net's inference forward, alternating rounds."""
    params = jax.device_put(variables["params"])
    choices = {"ids": jax.numpy.asarray(np.asarray(genes, np.int32))}
    kernels = jax.jit(lambda p, c: model.apply({"params": p}, c, method=PruningNet.generate))(params, choices)
    pnet_vars = jax.device_put(variables)
    plain = models.build_model(space.max_spec())
    plain_vars = jax.device_put(models.init_variables(plain, 0))
    x = jax.device_put(images)
    pnet_fn = jax.jit(lambda v, x, k, c: model.apply(v, x, k, False, c, method=PruningNet.forward))
    plain_fn = jax.jit(lambda v, x: plain.apply(v, x, train=False))
    calls = {"pruningnet": lambda: pnet_fn(pnet_vars, x, kernels, choices), "plain": lambda: plain_fn(plain_vars, x)}
    load = [round(os.getloadavg()[0], 2)]
    for fn in calls.values():
        jax.block_until_ready(fn())  # compiles
    timers = {k: (lambda steps, fn=fn: step_ms(lambda: jax.block_until_ready(fn()), steps)) for k, fn in calls.items()}
    times = paired_rounds(timers, rounds, 3)
    load.append(round(os.getloadavg()[0], 2))
    return {"pruningnet_ms": float(np.median(times["pruningnet"])), "plain_ms": float(np.median(times["plain"])),
            "ratio": float(np.median(np.divide(times["pruningnet"], times["plain"]))), "batch": len(images),
            "load_average": load}


if __name__ == "__main__":
    main()
