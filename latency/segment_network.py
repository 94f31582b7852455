"""Depth compression's T(st, end) measured inside the network instead of as one conv alone.

On a CPU runtime a network of small convs costs little per conv, while a conv timed alone pays the
per-call costs (layout reorders, I/O) that dominate it; merges also change how the runtime fuses and
reorders their neighbours.  So the change of the *whole network's* latency when one segment is merged
is what a merge saves.  For every valid segment (st, end) this times the base network with that segment
merged (`fix_act` + `merge_network`, the exact network the pipeline would ship) against the base network,
in alternating rounds, and keeps the median per-round difference Δ(st, end).

The table is then

    T(i, i+1) = c_i,    Σ_i c_i = L_base (the whole base network, stem and head included)
    T(st, end) = Σ_{st <= i < end} c_i + Δ(st, end)

Any split c of L_base gives every merge pattern the same total, L_base + Σ Δ over its merged segments,
so the split (here proportional to the convs' MACs plus their mean) changes no decision; only its sum
matters, and with Σ c = L_base a budget T0 = f · Σ T(i, i+1) asks for a network measured at f · L_base.
The additive model assumes merges in different segments do not interact (each Δ is measured with every
other segment unmerged); `benchmarks/depth_table_fidelity.py` measures how well that holds.

    from jaxnas.latency.segment_network import build_network_time_table
    build_network_time_table(spec, "runs/x/time_table.csv", threads=1)
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxnas.methods.depth.mergeable import META_ACT, body_of, fix_act, mergeable_spec, transfer_variables
from jaxnas.methods.depth.merge import merge_network
from jaxnas.methods.depth.segments import ConvChain, valid_segments
from jaxnas.methods.depth.tables import time_table_from_mapping, write_time_table
from jaxnas.spec import ArchSpec

from .backends import get_backend, measure_paired
from .stats import progress_line
from .table import LatencyTable

__all__ = ["segment_network", "conv_split", "measure_segment_deltas", "network_time_table",
           "build_network_time_table"]

BASE_KEY = "base"
MIN_TIME_MS = 1e-6


def segment_network(base: ArchSpec, variables: Mapping[str, Any], st: int, end: int) -> tuple[ArchSpec, dict]:
    """(spec, variables) of `base` with only segment (st, end) merged into one conv (eval-mode weights)."""
    chain = body_of(base).chain
    inside = set(range(st + 1, end))
    acts = [p for p in chain.default_acts if p not in inside]
    merges = [p for p in range(1, chain.L + 1) if p not in inside]
    fspec = fix_act(base, acts, merges)
    return merge_network(fspec, transfer_variables(variables, fspec))


def conv_split(chain: ConvChain, total_ms: float) -> list[float]:
    """c_i: `total_ms` split over the L convs in proportion to MACs_i + mean MACs (see the module doc)."""
    from jaxnas.methods.depth.segments import feature_shapes, merged_conv_shape
    shapes = feature_shapes(chain)
    macs = []
    for i in range(chain.L):
        m = merged_conv_shape(chain, i, i + 1)
        h, w, _ = shapes[i + 1]
        macs.append(h * w * m.out_ch * m.kernel ** 2 * (1 if m.depthwise else m.in_ch))
    weights = np.asarray(macs, dtype=np.float64) + float(np.mean(macs))
    return list(total_ms * weights / weights.sum())


def _segment_key(st: int, end: int) -> str:
    return f"s{st}_e{end}"


def measure_segment_deltas(spec: ArchSpec, cache_path: str | Path, *, variables: Mapping[str, Any] | None = None,
                           backend: Any = "onnxruntime", threads: int = 1, batch_size: int = 1, warmup: int = 20,
                           runs: int = 100, rounds: int = 3, segments: Sequence[tuple[int, int]] | None = None,
                           log: Callable[[str], None] | None = print) -> tuple[float, dict[tuple[int, int], tuple[float, float]]]:
    """(L_base ms, {(st, end): (Δ ms, spread ms)}) for the valid multi-conv segments of `spec`.

    Each segment is timed in `rounds` rounds alternating with the base network (`runs` runs each, median
    per round); Δ is the median of the per-round differences and the spread their std.  Results are
    cached in a `LatencyTable` JSON at `cache_path` (entry = the merged network's timing, Δ in its meta),
    so an interrupted build resumes.  Weights do not change latency: `variables` defaults to random ones.
    """
    from jaxnas.export import export_onnx
    from jaxnas.export.parity import random_variables

    be = get_backend(backend, threads=threads) if isinstance(backend, str) else backend
    base = mergeable_spec(spec) if META_ACT not in spec.metadata else spec
    chain = body_of(base).chain
    segs = [s for s in (segments if segments is not None else valid_segments(chain)) if s[1] - s[0] > 1]
    cache_path = Path(cache_path)
    meta = {"kind": "depth_segments_in_network", "spec": base.name, "L": chain.L, "warmup": warmup,
            "runs": runs, "rounds": rounds}
    table = LatencyTable.open_or_create(cache_path, be.fingerprint(batch_size=batch_size), meta=meta)
    if variables is None:
        variables = random_variables(base)
    shape = (batch_size, *base.input_size, base.in_channels)
    say = log or (lambda _m: None)
    todo = [s for s in segs if _segment_key(*s) not in table]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_segnet_") as tmp:
        base_file = Path(tmp) / "base.onnx"
        export_onnx(base, dict(variables), base_file, batch_size=batch_size, check=False)
        if BASE_KEY not in table:
            table.put(BASE_KEY, be.measure(str(base_file), shape, warmup=warmup, runs=runs * rounds))
            table.save(cache_path)
        if todo:
            say(f"latency: timing {len(todo)} merged networks against the base ({len(segs) - len(todo)} cached) "
                f"with {be!r}")
        for n, (st, end) in enumerate(todo):
            mspec, mvars = segment_network(base, variables, st, end)
            path = Path(tmp) / "seg.onnx"
            export_onnx(mspec, mvars, path, batch_size=batch_size, check=False)
            pt = measure_paired(be, str(base_file), str(path), shape, warmup=warmup, runs=runs, rounds=rounds)
            table.put(_segment_key(st, end), pt.best,
                      meta={"delta_ms": pt.delta_ms, "delta_std_ms": pt.delta_std_ms,
                            "base_ms": float(np.median([r.median for r in pt.reference])), "st": st, "end": end})
            table.save(cache_path)
            if (n + 1) % 20 == 0 or n + 1 == len(todo):
                say("latency: " + progress_line(n + 1, len(todo), time.perf_counter() - t0, "segments"))
    out = {}
    for s in segs:
        m = table.get(_segment_key(*s))["meta"]
        out[s] = (float(m["delta_ms"]), float(m["delta_std_ms"]))
    return table.ms(BASE_KEY, "median"), out


def network_time_table(chain: ConvChain, base_ms: float, deltas: Mapping[tuple[int, int], tuple[float, float]],
                       segments: Sequence[tuple[int, int]] | None = None) -> dict[tuple[int, int], tuple[float, float]]:
    """{(st, end): (T ms, stdev ms)} from L_base and the per-segment Δ (see the module doc)."""
    segs = list(segments) if segments is not None else valid_segments(chain)
    c = conv_split(chain, base_ms)
    out = {}
    for st, end in segs:
        d, sd = deltas.get((st, end), (0.0, 0.0)) if end - st > 1 else (0.0, 0.0)
        out[(st, end)] = (max(sum(c[st:end]) + d, MIN_TIME_MS), sd)
    return out


def build_network_time_table(spec: ArchSpec, out_csv: str | Path, *, backend: Any = "onnxruntime", threads: int = 1,
                             batch_size: int = 1, warmup: int = 20, runs: int = 100, rounds: int = 3,
                             variables: Mapping[str, Any] | None = None, cache: str | Path | None = None,
                             log: Callable[[str], None] | None = print) -> Path:
    """Measure (or resume) the in-network T(st, end) of `spec` and write the ``id,st,end,time,stdev`` CSV.

    `cache` defaults to ``<out_csv stem>.network.cache.json`` beside the CSV.  Returns the CSV path.
    """
    from jaxnas.io_utils import atomic_write_text

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out_csv.with_name(out_csv.stem + ".network.cache.json")
    base = mergeable_spec(spec) if META_ACT not in spec.metadata else spec
    chain = body_of(base).chain
    segs = valid_segments(chain)
    base_ms, deltas = measure_segment_deltas(base, cache, variables=variables, backend=backend, threads=threads,
                                             batch_size=batch_size, warmup=warmup, runs=runs, rounds=rounds,
                                             segments=segs, log=log)
    atomic_write_text(out_csv, write_time_table(time_table_from_mapping(network_time_table(chain, base_ms, deltas, segs),
                                                                        segs)))
    return out_csv
