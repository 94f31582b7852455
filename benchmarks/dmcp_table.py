"""DMCP at latency targets vs uniformly width-scaled MobileNetV2s, end to end on Fashion-MNIST.

1. Build (or resume) the per-layer onnxruntime latency grid of the small-input MobileNetV2 supernet
   (`latency.layer_grid`, 1 thread, batch 1); it includes an end-to-end measurement of the supernet.
2. Run DMCP (`jaxnas.methods.dmcp.run`) at latency targets of `--fractions` x that measured supernet
   latency (the weight warm-up is shared by all targets); retrain each sampled net from scratch for
   `--budget` epochs.
3. Measure, interleaved in rounds (min over rounds, so that drifting machine load hits all nets
   alike): the supernet, the DMCP nets, uniformly width-scaled MobileNetV2s (`zoo.mobilenet_v2(width=w,
   small_input=True)`) and a few sub-networks that validate the grid's predictions.
4. Retrain, with the same budget, the narrowest uniform MobileNetV2 whose measured latency is at least
   each DMCP net's.

    python benchmarks/dmcp_table.py --budget 3 --workdir runs/dmcp-bench [--json]

Defaults follow configs/dmcp/quick.yaml (width-1.0 supernet, 2048 training images); about 20-30 min
on 2 CPU cores.  Every stage resumes from `--workdir`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from jaxnas import models, zoo  # noqa: E402
from jaxnas import spec as S  # noqa: E402
from jaxnas.config import config_from_dict, load_config, override_config  # noqa: E402
from jaxnas.data import load_dataset  # noqa: E402
from jaxnas.io_utils import atomic_write_json  # noqa: E402
from jaxnas.latency.layer_grid import build_layer_grid  # noqa: E402
from jaxnas.latency.measure import measure_spec  # noqa: E402
from jaxnas.methods.dmcp import DMCPSpace, LatencyModel, materialize_k  # noqa: E402
from jaxnas.methods.dmcp.args import DMCPArgs  # noqa: E402
from jaxnas.methods.dmcp.run import prepare  # noqa: E402
from jaxnas.methods.dmcp.search import schedule_steps, search  # noqa: E402
from jaxnas.model_config import build_spec  # noqa: E402
from jaxnas.pipeline import run  # noqa: E402
from jaxnas.trainer import Trainer  # noqa: E402


def measure_block(specs: dict[str, S.ArchSpec], args) -> dict[str, float]:
    """{name: ms} with the `--stat` statistic, min over `--rounds` interleaved rounds."""
    variables = {n: models.init_variables(models.build_model(s), 0) for n, s in specs.items()}
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for n, s in specs.items():
            r = measure_spec(s, variables[n], "onnxruntime", threads=1, warmup=args.warmup, runs=args.runs)
            best[n] = min(best.get(n, float("inf")), float(r[f"{args.stat}_ms"]))
    return best


def validation_nets(supernet: S.ArchSpec, multiple: int) -> dict[str, tuple[S.ArchSpec, dict[str, int], DMCPSpace]]:
    space = DMCPSpace(supernet, min_width=0.1, max_width=1.0, width_offset=0.05, channel_multiple=multiple)
    v = models.init_variables(models.build_model(supernet), 0)
    rng = np.random.default_rng(0)
    out = {}
    for tag in ("uniform 25%", "uniform 50%", "uniform 75%", "random 1", "random 2", "random 3"):
        if tag.startswith("uniform"):
            f = int(tag.split()[1][:-1]) / 100
            ks = {g: int(round(f * space.layouts[g].n)) for g in space.prunable}
        else:
            ks = {g: int(rng.integers(0, space.layouts[g].n + 1)) for g in space.prunable}
        out[tag] = (materialize_k(space, v, ks)[0], ks, space)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/dmcp/quick.yaml"))
    p.add_argument("--workdir", default="runs/dmcp-bench")
    p.add_argument("--budget", type=float, default=3.0, help="retraining epochs (DMCP nets and baselines)")
    p.add_argument("--search-epochs", type=float, default=None, help="override search.args.epochs")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--widths", type=float, nargs="+",
                   default=[0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.75, 1.0],
                   help="uniform MobileNetV2 widths considered as baselines")
    p.add_argument("--set", action="append", default=[], help="config override a.b=c")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (min is kept)")
    p.add_argument("--grid-step", type=float, default=0.25)
    p.add_argument("--stat", default="p10", choices=("median", "mean", "p10", "min"),
                   help="timing statistic of the table, the targets and the measurements (p10 is the more "
                        "repeatable one on a shared machine)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import jax
    # Searches at several targets compile the same supernet passes: reuse them across runs.
    jax.config.update("jax_compilation_cache_dir", str((work / "jax_cache").absolute()))
    overrides = [f"train.epochs={a.budget}", f"train.eval_every_epochs={a.budget}",
                 f"search.args.latency_stat={a.stat}", *a.set]
    if a.search_epochs is not None:
        overrides.append(f"search.args.epochs={a.search_epochs}")
    cfg = load_config(a.config, overrides)
    dataset = load_dataset(cfg.dataset_config())
    supernet = build_spec(cfg.model, dataset.num_classes, dataset.image_shape)

    # --- 1. Layer grid (with the end-to-end supernet latency). -------------------------------------
    args = config_from_dict(cfg.search.args, DMCPArgs, prefix="search.args")
    multiple = args.channel_multiple
    table = build_layer_grid(supernet, "onnxruntime", out_path=work / "layer_grid.json",
                             grid_fraction_step=a.grid_step, channel_multiple=multiple, warmup=5, runs=30,
                             network_runs=a.runs)
    table_full = table.ms("network:full", a.stat)
    print(f"supernet {supernet.name}: {S.macs(supernet) / 1e6:.2f} M MACs, {table_full:.3f} ms ({a.stat}) "
          f"when the grid was measured", flush=True)

    # --- 2. DMCP at each target, sharing the weight warm-up. ---------------------------------------
    targets = {f: round(f * table_full, 4) for f in a.fractions}
    first = override_config(cfg, ["search.target_macs=null", f"search.target_latency_ms={targets[a.fractions[0]]}"])
    setup = prepare(first, args, dataset, supernet, table)
    _, start = schedule_steps(setup.search, dataset.steps_per_epoch("train", setup.search.batch_size))
    model = models.build_model(supernet, cfg.model.depthwise)
    search(model, models.init_variables(model, setup.search.seed), setup.space, setup.cost, dataset,
           dataclasses.replace(setup.search, max_steps=start), work / "warmup")
    summaries = {}
    for f in a.fractions:
        # latency.table: the search uses (and does not rebuild) the grid measured above.
        c = override_config(cfg, ["search.target_macs=null", f"search.target_latency_ms={targets[f]}",
                                  f"search.args.warmup_from={work / 'warmup'}",
                                  f"latency.table={work / 'layer_grid.json'}"])
        summaries[f] = run(c, work / f"dmcp_{f:g}", search=True, deploy=False)

    # --- 3. Interleaved end-to-end measurements. ---------------------------------------------------
    uniform = {w: zoo.mobilenet_v2(width=w, small_input=True, resolution=supernet.input_size[0],
                                   num_classes=dataset.num_classes, in_channels=dataset.image_shape[2],
                                   dropout=cfg.model.dropout) for w in a.widths if w <= cfg.model.width + 1e-9}
    checks = validation_nets(supernet, multiple)
    specs = {"supernet": supernet, **{f"dmcp {f:g}": S.ArchSpec.load(s["arch_path"]) for f, s in summaries.items()},
             **{f"uniform {w:g}": s for w, s in uniform.items()}, **{k: v[0] for k, v in checks.items()}}
    measured = measure_block(specs, a)
    prunable = checks["random 1"][2].prunable
    predictors = {"grid": LatencyModel(supernet, prunable, table, stat=a.stat),
                  "smoothed": LatencyModel(supernet, prunable, table, stat=a.stat, smooth=True)}
    drift = measured["supernet"] / table_full
    vrows = []
    for tag, (spec, ks, space) in checks.items():
        row = {"net": tag, "macs": S.macs(spec), "measured_ms": measured[tag]}
        for name, lm in predictors.items():
            pred = lm.exact(space.channels_of(ks))
            row[f"{name}_ms"] = pred
            row[f"{name}_error"] = pred / measured[tag] - 1
            row[f"{name}_error_drift_corrected"] = pred * drift / measured[tag] - 1
        vrows.append(row)
    validation = {"rows": vrows, "drift": drift, **{
        f"{name}_mean_abs_error{sfx}": float(np.mean([abs(r[f"{name}_error{sfx}"]) for r in vrows]))
        for name in predictors for sfx in ("", "_drift_corrected")}}

    # --- 4. Uniform baselines of at least the DMCP nets' latency, same budget. ----------------------
    rows = []
    trained: dict[float, float] = {}
    for f, summary in summaries.items():
        ms = measured[f"dmcp {f:g}"]
        fits = [w for w in sorted(uniform) if measured[f"uniform {w:g}"] >= ms]
        w = fits[0] if fits else max(uniform)
        if w not in trained:
            result = Trainer(cfg, dataset).train(uniform[w], work / f"uniform_{w:g}")
            trained[w] = float(result.metrics["test"]["accuracy"])
        rows.append({"target_ms": targets[f], "fraction": f, "macs": summary["achieved"]["macs"],
                     "predicted_ms": summary.get("predicted_latency_ms"), "measured_ms": ms,
                     "accuracy": summary["test_accuracy"], "inherited_accuracy": summary["inherited_test_accuracy"],
                     "uniform_width": w, "uniform_macs": S.macs(uniform[w]), "uniform_ms": measured[f"uniform {w:g}"],
                     "uniform_accuracy": trained[w]})
    result = {"supernet": supernet.name, "supernet_macs": S.macs(supernet), "supernet_ms_table": table_full,
              "supernet_ms_now": measured["supernet"], "stat": a.stat, "budget_epochs": a.budget,
              "train_examples": dataset.num_examples("train"), "test_examples": dataset.num_examples("test"),
              "predictor": validation, "rows": rows, "measured": measured, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(work / "dmcp_table.json", result)
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"\nDMCP vs uniform MobileNetV2 ({supernet.name}: {S.macs(supernet) / 1e6:.2f} M MACs, {table_full:.3f} ms "
          f"{a.stat} in the grid, {measured['supernet']:.3f} ms at the end; retrain {a.budget:g} epochs on "
          f"{dataset.num_examples('train')} images, test on {dataset.num_examples('test')})")
    print(f"{'target ms':>9} {'MMACs':>7} {'pred ms':>8} {'meas ms':>8} {'acc':>6} | {'width':>5} {'MMACs':>7} "
          f"{'meas ms':>8} {'acc':>6}")
    for r in rows:
        print(f"{r['target_ms']:9.3f} {r['macs'] / 1e6:7.2f} {r['predicted_ms']:8.3f} {r['measured_ms']:8.3f} "
              f"{r['accuracy']:6.3f} | {r['uniform_width']:5.2f} {r['uniform_macs'] / 1e6:7.2f} {r['uniform_ms']:8.3f} "
              f"{r['uniform_accuracy']:6.3f}")
    print(f"\npredictor validation (vs end-to-end; the supernet now measures {drift:.2f}x its grid-time latency; "
          f"'dc' = drift-corrected):")
    for r in vrows:
        print(f"  {r['net']:<12} {r['macs'] / 1e6:6.2f} MMACs  measured {r['measured_ms']:.3f} ms  grid "
              f"{r['grid_ms']:.3f} ({r['grid_error'] * 100:+.1f} %, dc {r['grid_error_drift_corrected'] * 100:+.1f} %)"
              f"  smoothed {r['smoothed_ms']:.3f} ({r['smoothed_error'] * 100:+.1f} %, dc "
              f"{r['smoothed_error_drift_corrected'] * 100:+.1f} %)")
    print("  mean |error|: " + ", ".join(f"{k.replace('_mean_abs_error', '')} {v * 100:.1f} %"
                                         for k, v in validation.items() if "mean_abs" in k))
    print(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
