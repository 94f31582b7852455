"""Per-layer latency grid: seconds per entry and agreement of two timing protocols on a config's supernet.

    python benchmarks/layer_grid_protocol.py [--config configs/metapruning/quick.yaml] [--entries 24] [--json]

Exports an evenly spaced sample of `--entries` of the distinct layer entries of the grid
`latency.layer_grid.build_layer_grid` builds for the config's supernet (for a MetaPruning config the
widest network of its space; for DMCP its supernet; with the search's channel_multiple), then times the sample on onnxruntime (1 thread,
batch 1) by two protocols, each once, one after the other:

* ``table``: `latency.builder.TABLE_PROTOCOL` with the config's rel_ci (default ±1 %, at most 3 s per
  entry): what every grid entry was timed by before `layer_grid.entry_protocol`;
* ``grid``: `latency.layer_grid.entry_protocol` of that protocol (what a grid entry is timed by now).

Prints seconds per entry of each, the projected time for the whole grid, and the per-entry relative
difference of the medians (grid / table - 1: median and max of |.|, and the signed mean), and the same for
the sum over the sample (what a prediction adds up).  Run it alone: it times.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def supernet_of(cfg):
    """(spec, channel_multiple) the search of `cfg` builds its layer grid for."""
    from jaxnas.pipeline import prepare
    from jaxnas.schema import validate

    prep = prepare(cfg, search=True)
    if cfg.search.method == "metapruning":
        from jaxnas.methods.metapruning.args import MetaPruningArgs
        from jaxnas.methods.metapruning.pipeline import space_for

        args = validate(cfg.search.args, MetaPruningArgs, "search.args")
        return space_for(cfg, prep.dataset, args).max_spec(), args.channel_multiple
    return prep.spec, int((cfg.search.args or {}).get("channel_multiple", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/metapruning/quick.yaml"))
    ap.add_argument("--entries", type=int, default=24, help="entries in the sample (evenly spaced over the grid)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    from jaxnas import export
    from jaxnas.config import load_config
    from jaxnas.latency.builder import TABLE_PROTOCOL, measure_models, resolve_backend
    from jaxnas.latency.layer_grid import entry_protocol, grid_entries, layer_spec
    from jaxnas.models import build_model, init_variables

    cfg = load_config(a.config)
    spec, multiple = supernet_of(cfg)
    entries = grid_entries(spec, multiple=multiple)
    pick = np.unique(np.linspace(0, len(entries) - 1, min(a.entries, len(entries))).round().astype(int))
    table = cfg.latency.protocol(TABLE_PROTOCOL.max_time_s) or TABLE_PROTOCOL
    protocols = {"table": table, "grid": entry_protocol(table)}
    backend = resolve_backend("onnxruntime", 1)
    out: dict = {"config": a.config, "supernet": spec.name, "grid_entries": len(entries), "sample": len(pick)}
    medians = {}
    with tempfile.TemporaryDirectory(prefix="grid_protocol_") as tmp:
        items = []
        for i in pick:
            key, rec, cin, cout = entries[i]
            one = layer_spec(spec, rec, cin, cout)
            path = Path(tmp) / f"m{i}.onnx"
            export.export_onnx(one, init_variables(build_model(one), 0), path, check=False)
            items.append((str(path), (1, *rec["in_shape"][:2], cin)))
        for name, p in protocols.items():
            t0 = time.perf_counter()
            stats = measure_models(backend, items, protocol=p, warmup=None, runs=None)
            seconds = time.perf_counter() - t0
            medians[name] = np.array([s.median for s in stats])
            out[name] = {"rel_ci": p.rel_ci, "max_time_s": p.max_time_s, "round_s": p.round_s,
                         "seconds_per_entry": round(seconds / len(items), 3),
                         "projected_grid_minutes": round(seconds / len(items) * len(entries) / 60, 1),
                         "flagged": sum(1 for s in stats if s.flags)}
    rel = medians["grid"] / medians["table"] - 1
    out["entry_difference"] = {"median_abs": round(float(np.median(np.abs(rel))), 4),
                               "max_abs": round(float(np.max(np.abs(rel))), 4), "mean": round(float(rel.mean()), 4)}
    out["sum_difference"] = round(float(medians["grid"].sum() / medians["table"].sum() - 1), 4)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['supernet']}: {len(entries)} grid entries, {len(pick)} sampled")
    for name in protocols:
        r = out[name]
        print(f"  {name:5s} rel_ci {r['rel_ci']:.2f}, cap {r['max_time_s']:g} s, rounds of {r['round_s']:g} s: "
              f"{r['seconds_per_entry']:.2f} s/entry -> whole grid {r['projected_grid_minutes']:.1f} min "
              f"({r['flagged']} flagged)")
    d = out["entry_difference"]
    print(f"  grid vs table medians per entry: |diff| median {d['median_abs']:.1%}, max {d['max_abs']:.1%}, "
          f"mean {d['mean']:+.1%}; sum over the sample {out['sum_difference']:+.1%}")


if __name__ == "__main__":
    main()
