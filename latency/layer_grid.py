"""Per-layer latency grids of a supernet: every conv layer timed alone on a (c_in, c_out) channel grid.

`build_layer_grid(spec, backend, out_path=...)` walks the supernet's conv layers (blocks in order; a
block's chain, then its projection shortcut), builds for each a one-layer spec at the layer's input
feature shape (conv + BN + activation as in the network, head-less), exports it to ONNX and times it,
for every (c_in, c_out) on a grid of channel counts.  Identical layers (same kernel, stride, padding,
activation, feature size and channel counts) share entries.  The result is a `LatencyTable`:

* entries ``f"{layer_key}:{cin}x{cout}"`` (depthwise layers: ``cin == cout``), plus the end-to-end
  networks of `jaxnas.costmodel.CALIBRATION_NETWORKS`: ``network:full`` (the supernet), ``network:min``
  (every width group at its grid minimum) and ``network:f0.25``/``f0.5``/``f0.75`` (every width group at
  its grid point nearest that fraction of its width);
* ``meta['layers']``: one record per conv layer in order — ``block``, ``layer``, ``key``, ``in_shape``
  [H, W, C_in], ``out``, ``depthwise``, ``cin_grid``, ``cout_grid`` (a dimension without a width group
  has a one-point grid);
* ``meta['calibration'][stat]`` for stat in median/mean/p10/min: ``knots`` [[sum of layer latencies,
  network ms], ...], one per end-to-end network (`jaxnas.costmodel.calibration_knots`), through which
  the cost model maps a sum piecewise linearly, and ``{'constant_ms', 'scale'}``: the line through the
  full and the minimal network (what a grid built before the interior networks has).  The map absorbs the
  per-call costs of the isolated layers, the head, pooling and residual adds; it is not a line on
  onnxruntime (benchmarks/layer_grid_calibration.py).  On a contended machine the p10/min statistics are
  the more repeatable ones.

The table is saved after every entry, so an interrupted build resumes; an existing file measured on
another setup (fingerprint) or for another supernet/grid (meta) is refused.  Consumers (e.g.
`jaxnas.methods.dmcp`) read only the table, never a runtime.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from jaxnas.costmodel import (CALIBRATION_NETWORKS, calibration_network, calibration_network_spec, fit_calibration,
                              fraction_point, grid_points)

from .table import LatencyTable, TableError

STATS = ("median", "mean", "p10", "min")

__all__ = ["STATS", "build_layer_grid", "entry_protocol", "grid_entries", "grid_points", "grid_layers", "layer_spec",
           "min_network_spec", "calibration_network_spec", "calibrate"]

# A grid entry is one 5-100 us conv timed alone; the grid's sum is calibrated against the networks
# timed end to end (`calibrate`), and the methods check their picks end to end.  The table protocol's
# +-1 % per entry took its 3 s cap on nearly every entry (21.9 min projected for the 449 layer entries of
# MetaPruning's quick MobileNetV2 grid) and buys nothing over +-3 % in short rounds (1.9 min; per-entry
# medians within 0.7 %, median: benchmarks/layer_grid_protocol.py).  On a noisy 2-core machine every entry
# takes its cap instead: 449 s of the quick search's grid at 1 s per entry, 97 s at 0.2 s
# (benchmarks/layer_grid_calibration.py --entry-cap).  0.2 s is still ~100x the timed runs of the grids
# built with 30 fixed runs per entry, whose five-network calibration predicted whole networks within
# 1.4 % (uniform) / 2.9 % (mixed widths) median: an entry's noise averages out over a network's 53 layers;
# the machine's drift does not, and the methods' end-to-end checks measure it against a grid network.
ENTRY_REL_CI = 0.03
ENTRY_MAX_TIME_S = 0.2
ENTRY_ROUND_S = 0.02


def _layer_key(conv, in_hw: tuple[int, int]) -> str:
    (pt, pb), (pl, pr) = conv.pads
    kind = "dw" if conv.depthwise else "conv"
    extra = ("_bn" if conv.norm else "") + ("_bias" if conv.bias else "")
    return (f"{kind}_k{conv.kernel[0]}x{conv.kernel[1]}_s{conv.stride}_p{pt}{pb}{pl}{pr}_{conv.act}{extra}"
            f"_{in_hw[0]}x{in_hw[1]}")


def grid_layers(spec, *, step: float = 0.25, min_fraction: float = 0.1, multiple: int = 1) -> list[dict[str, Any]]:
    """The `meta['layers']` records of `spec` (see the module docstring), in `conv_sites` order
    without the squeeze-excite convs."""
    from jaxnas.supernet import conv_sites

    def dim(group, channels):
        return grid_points(channels, step=step, min_fraction=min_fraction, multiple=multiple) if group else [channels]

    out: list[dict[str, Any]] = []
    for s in conv_sites(spec)[0]:
        if s.layer == "se":
            continue
        rec = {"block": s.block, "layer": s.layer, "key": _layer_key(s.conv, s.in_hw),
               "in_shape": [s.in_hw[0], s.in_hw[1], s.cin[1]], "out": s.cout[1], "depthwise": s.conv.depthwise,
               "cin_grid": dim(*s.cin), "cout_grid": dim(*s.cout)}
        if s.conv.depthwise:
            rec["cin_grid"] = rec["cout_grid"]
        out.append(rec)
    return out


def grid_entries(spec, *, step: float = 0.25, min_fraction: float = 0.1, multiple: int = 1,
                 layers: list[dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any], int, int]]:
    """Every distinct layer entry of `spec`'s grid as (key, layer record, cin, cout), in layer order
    (identical layers share their entries; depthwise layers have cin == cout)."""
    if layers is None:
        layers = grid_layers(spec, step=step, min_fraction=min_fraction, multiple=multiple)
    out: dict[str, tuple[str, dict[str, Any], int, int]] = {}
    for rec in layers:
        pairs = ([(c, c) for c in rec["cout_grid"]] if rec["depthwise"]
                 else [(a, b) for a in rec["cin_grid"] for b in rec["cout_grid"]])
        for cin, cout in pairs:
            key = f"{rec['key']}:{cin}x{cout}"
            out.setdefault(key, (key, rec, cin, cout))
    return list(out.values())


def entry_protocol(protocol: Any, max_time_s: float = ENTRY_MAX_TIME_S) -> Any:
    """The protocol a layer entry is timed by: `protocol` with at least +-3 % (`ENTRY_REL_CI`), at most
    `max_time_s` per entry and 20 ms rounds (warm-up at most as long); the calibration networks keep
    `protocol` itself."""
    return protocol.replace(rel_ci=max(protocol.rel_ci, ENTRY_REL_CI),
                            max_time_s=min(protocol.max_time_s, max_time_s),
                            round_s=min(protocol.round_s, ENTRY_ROUND_S), warmup_s=min(protocol.warmup_s, ENTRY_ROUND_S))


def layer_spec(spec, rec: dict[str, Any], cin: int, cout: int):
    """The one-layer, head-less spec of layer record `rec` at (cin, cout) channels."""
    import dataclasses

    from jaxnas.spec import ArchSpec, Block, Head
    b = spec.blocks[rec["block"]]
    conv = b.shortcut if rec["layer"] == "shortcut" else b.layers[int(rec["layer"][4:])]
    conv = dataclasses.replace(conv, out=cout, width=None, act_slot=None)
    h, w, _ = rec["in_shape"]
    return ArchSpec(f"layer_{rec['key']}_{cin}x{cout}", (Block("conv", (conv,)),), Head(num_classes=0), (h, w), cin)


def min_network_spec(spec, variables, *, step: float = 0.25, min_fraction: float = 0.1, multiple: int = 1):
    """(spec, variables) of the supernet with every width group at its grid minimum."""
    return calibration_network_spec(spec, variables, None, step=step, min_fraction=min_fraction, multiple=multiple)


def layer_sum(table: LatencyTable, fraction: float | None, stat: str = "median") -> float:
    """Sum of the layer entries of the calibration network at `fraction` (None: the minimal network)."""
    total = 0.0
    for rec in table.meta["layers"]:
        ci, co = rec["cin_grid"], rec["cout_grid"]
        total += table.ms(f"{rec['key']}:{ci[fraction_point(ci, fraction)]}x{co[fraction_point(co, fraction)]}", stat)
    return total


def calibrate(table: LatencyTable, stat: str = "median") -> dict[str, Any]:
    """The map from summed layer latencies to end-to-end ms (`fit_calibration` on this table's layer sums)."""
    return fit_calibration({key: layer_sum(table, f, stat) for key, f in CALIBRATION_NETWORKS.items()}, table, stat)


def _spec_digest(spec) -> str:
    return hashlib.sha256(spec.to_json(indent=None).encode()).hexdigest()[:16]


def build_layer_grid(spec, backend: Any = "onnxruntime", *, out_path: str | Path,
                     grid_fraction_step: float = 0.25, min_fraction: float = 0.1, channel_multiple: int = 1,
                     warmup: int | None = None, runs: int | None = None, threads: int = 1, seed: int = 0,
                     network_runs: int | None = None, protocol: Any = None,
                     entry_max_time_s: float = ENTRY_MAX_TIME_S,
                     exporter: Callable[..., Any] | None = None, log: Callable[[str], None] | None = print,
                     ) -> LatencyTable:
    """Measure (or finish measuring) the layer grid of supernet `spec` into `out_path`; returns the table.

    `backend`: a latency backend object or a name for `latency.get_backend(name, threads=threads)`.
    `exporter(spec, variables, path)` writes the model file (default `export.export_onnx` without its
    parity check).  Batch size 1.  `channel_multiple`: grid channel counts are multiples of it (use the
    search space's alignment: unaligned counts can fall off a runtime's fast kernels).  Timing: the
    adaptive `protocol` (default `latency.builder.TABLE_PROTOCOL`; every entry with its interval, the
    entries' rounds interleaved, flagged ones timed again and reported; layer entries by
    `entry_protocol(protocol, entry_max_time_s)`, the calibration networks by `protocol`) unless fixed `runs` are given
    (`network_runs` for the calibration networks).
    """
    if not 0 < grid_fraction_step <= 1 or not 0 < min_fraction < 1:
        raise ValueError("grid_fraction_step must be in (0, 1] and min_fraction in (0, 1)")
    from jaxnas.models import build_model, init_variables

    from .batch_timing import untrusted_line
    from .builder import TABLE_PROTOCOL, measure_models, resolve_backend

    backend = resolve_backend(backend, threads)
    if exporter is None:
        from jaxnas import export as _export

        def exporter(s, v, p):
            return _export.export_onnx(s, v, p, check=False)
    layers = grid_layers(spec, step=grid_fraction_step, min_fraction=min_fraction, multiple=channel_multiple)
    meta = {"kind": "layer_grid", "spec_name": spec.name, "spec_sha": _spec_digest(spec),
            "input_size": list(spec.input_size), "grid_fraction_step": grid_fraction_step,
            "min_fraction": min_fraction, "batch_size": 1, "layers": layers,
            **({"channel_multiple": channel_multiple} if channel_multiple > 1 else {})}
    out_path = Path(out_path)
    table = LatencyTable.open_or_create(out_path, backend.fingerprint(batch_size=1), meta=meta)
    todo = {key: (rec, cin, cout) for key, rec, cin, cout in grid_entries(spec, layers=layers) if key not in table}
    nets = [k for k in CALIBRATION_NETWORKS if k not in table]
    say = log or (lambda _m: None)
    if todo or nets:
        say(f"layer grid {out_path}: {len(table)} entries present, measuring {len(todo)} layer entries "
            f"and {len(nets)} networks ({len(layers)} conv layers)")
    if protocol is None and runs is None:
        protocol = TABLE_PROTOCOL
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layer_grid_") as tmp:
        keys, items, metas = [], [], []  # every model exported first: their rounds are interleaved

        def add(key: str, s: Any, v: Any, shape: tuple[int, ...], meta: dict[str, Any] | None) -> None:
            path = Path(tmp) / f"m{len(keys)}.onnx"
            exporter(s, v, path)
            keys.append(key)
            items.append((str(path), shape))
            metas.append(meta)

        for key, (rec, cin, cout) in todo.items():
            one = layer_spec(spec, rec, cin, cout)
            add(key, one, init_variables(build_model(one), seed), (1, *rec["in_shape"][:2], cin),
                {"cin": cin, "cout": cout})
        if nets:
            full_vars = init_variables(build_model(spec), seed)
            for key in nets:
                s, v = calibration_network(key, spec, full_vars, step=grid_fraction_step, min_fraction=min_fraction,
                                           multiple=channel_multiple)
                add(key, s, v, (1, *s.input_size, s.in_channels), None)
        done = 0

        def store(j: int, stats: Any) -> None:
            nonlocal done
            table.put(keys[j], stats, meta=metas[j])
            table.save(out_path)
            done += 1
            if done % 50 == 0 or done == len(keys):
                say(f"  {done}/{len(keys)} entries ({time.perf_counter() - t0:.0f} s)")

        n_layers = len(todo)
        measure_models(backend, items[:n_layers], protocol=protocol and entry_protocol(protocol, entry_max_time_s), warmup=warmup,
                       runs=runs, on_done=store, names=keys[:n_layers])
        measure_models(backend, items[n_layers:], protocol=protocol, warmup=warmup, runs=network_runs or runs,
                       on_done=lambda j, st: store(n_layers + j, st), names=keys[n_layers:])
    bad = untrusted_line(table, str(out_path))
    if bad and (todo or nets):
        say(f"warning: {bad}")
    try:
        cal = {stat: calibrate(table, stat) for stat in STATS}
    except KeyError as e:
        raise TableError(f"{out_path}: incomplete layer grid ({e})") from None
    if table.meta.get("calibration") != cal:
        table.meta["calibration"] = cal
        table.save(out_path)
    return table
