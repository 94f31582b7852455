"""Depth compression's latency table T(st, end): one measured merged conv per valid segment.

For every valid segment of a `ConvChain` the merged conv (`merged_conv_shape`: kernel 1 + Σ(k_i - 1),
stride Π s_i, padding Σ p_i, depthwise iff all convs are) followed by its activation is built as a
one-layer spec (``Head(num_classes=0)``) at the feature shape of position st, exported with
`export.export_onnx` and timed with a latency backend.  Identical merged convs (same input shape,
channels, kernel, stride, padding, type) are measured once.  Measurements are cached in a
`LatencyTable` JSON next to the CSV (``<csv stem>.cache.json``), so an interrupted build resumes where
it stopped.  The CSV is the original's ``id,st,end,time,stdev`` (ms per batch; time = median).

    from jaxnas.latency.segment_table import build_time_table
    build_time_table(body_of(spec).chain, "runs/x/time_table.csv", threads=1)
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxnas.methods.depth.segments import ConvChain, MergedConv, feature_shapes, merged_conv_shape, valid_segments
from jaxnas.methods.depth.tables import TimeTable, time_table_from_mapping, write_time_table
from jaxnas.spec import ArchSpec, Block, Conv, Head

from .backends import get_backend
from .stats import progress_line
from .table import LatencyTable

__all__ = ["build_time_table", "segment_conv_spec", "segment_key", "measure_segments", "overhead_conv"]


def segment_key(m: MergedConv, in_shape: tuple[int, int, int], act: str, batch_size: int) -> str:
    """Cache key of one merged conv measurement."""
    h, w, c = in_shape
    return (f"h{h}w{w}c{c}_o{m.out_ch}_k{m.kernel}_s{m.stride}_p{m.padding}"
            f"{'_dw' if m.depthwise else ''}_{act}_b{batch_size}")


def segment_conv_spec(m: MergedConv, in_shape: tuple[int, int, int], act: str = "relu") -> ArchSpec:
    """The one-layer spec (merged conv + activation, no head) timed for a segment."""
    h, w, c = in_shape
    if c != m.in_ch:
        raise ValueError(f"feature map has {c} channels but the merged conv expects {m.in_ch}")
    p = m.padding
    conv = Conv(m.out_ch, (m.kernel, m.kernel), m.stride, padding=((p, p), (p, p)), depthwise=m.depthwise,
                act=act, norm=False, bias=True)
    return ArchSpec("depth_segment", (Block("merged", (conv,), name="seg"),), head=Head(num_classes=0),
                    input_size=(h, w), in_channels=c)


def overhead_conv(in_shape: tuple[int, int, int]) -> MergedConv:
    """The cheapest conv at an input shape (1x1 depthwise): its time is the per-call cost of a
    one-conv model (session, layout transposes / reorders, I/O) that a conv inside a network avoids."""
    return MergedConv(in_shape[2], in_shape[2], 1, 1, 0, True)


def measure_segments(chain: ConvChain, cache_path: str | Path, *, act: str = "relu", backend: Any = "onnxruntime",
                     threads: int = 1, batch_size: int = 1, warmup: int = 20, runs: int = 100,
                     pre_pool: bool = False, segments: Sequence[tuple[int, int]] | None = None,
                     subtract_overhead: bool = False,
                     log: Callable[[str], None] | None = print) -> dict[tuple[int, int], tuple[float, float]]:
    """{(st, end): (median ms, std ms)} for every valid segment, measuring what the cache lacks.

    With `subtract_overhead`, each time is reduced by that of :func:`overhead_conv` at the same input
    shape (floored at 1 ns), so that T(st, end) estimates the conv's cost inside a network.
    """
    from jaxnas.export import export_onnx
    from jaxnas.models import build_model, init_variables

    be = get_backend(backend, threads=threads) if isinstance(backend, str) else backend
    fp = be.fingerprint(batch_size=batch_size)
    cache_path = Path(cache_path)
    meta = {"kind": "depth_segments", "act": act, "warmup": warmup, "runs": runs}
    table = LatencyTable.open_or_create(cache_path, fp, meta=meta)
    segs = list(segments) if segments is not None else valid_segments(chain)
    shapes = feature_shapes(chain, pre_pool)
    keys, over = {}, {}
    for st, end in segs:
        m = merged_conv_shape(chain, st, end)
        keys[(st, end)] = (segment_key(m, shapes[st], act, batch_size), m, shapes[st])
        if subtract_overhead:
            o = overhead_conv(shapes[st])
            over[(st, end)] = (segment_key(o, shapes[st], "identity", batch_size), o, shapes[st])
    todo = {k: (m, s) for k, m, s in [*keys.values(), *over.values()] if k not in table}
    say = log or (lambda _m: None)
    if todo:
        say(f"latency: measuring {len(todo)} merged convs ({len(segs)} segments, "
            f"{len(set(k for k, _, _ in keys.values())) - len(todo)} cached) with {be!r}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_seg_") as tmp:
        for n, (key, (m, shape)) in enumerate(todo.items()):
            spec = segment_conv_spec(m, shape, "identity" if key.endswith(f"_identity_b{batch_size}") else act)
            variables = init_variables(build_model(spec), n)
            path = Path(tmp) / "seg.onnx"
            export_onnx(spec, variables, path, batch_size=batch_size, check=False)
            stats = be.measure(str(path), (batch_size, *shape), warmup=warmup, runs=runs)
            table.put(key, stats, meta={"in_shape": list(shape), "kernel": m.kernel, "stride": m.stride,
                                        "padding": m.padding, "out": m.out_ch, "depthwise": m.depthwise})
            table.save(cache_path)
            if (n + 1) % 20 == 0 or n + 1 == len(todo):
                say("latency: " + progress_line(n + 1, len(todo), time.perf_counter() - t0, "measured"))
    out = {}
    for seg, (key, _, _) in keys.items():
        t, sd = table.ms(key, "median"), float(table.get(key)["std"] or 0.0)
        if subtract_overhead:
            okey = over[seg][0]
            t = max(t - table.ms(okey, "median"), 1e-6)
            sd = float(np.hypot(sd, table.get(okey)["std"] or 0.0))
        out[seg] = (t, sd)
    return out


def build_time_table(chain: ConvChain, out_csv: str | Path, *, act: str = "relu", backend: Any = "onnxruntime",
                     threads: int = 1, batch_size: int = 1, warmup: int = 20, runs: int = 100,
                     pre_pool: bool = False, subtract_overhead: bool = False, cache: str | Path | None = None,
                     log: Callable[[str], None] | None = print) -> Path:
    """Measure (or resume) T(st, end) for `chain` and write the ``id,st,end,time,stdev`` CSV.

    `act` is the activation timed after each merged conv (the original timed ReLU); `backend` is a
    backend name or object; `cache` defaults to ``<out_csv stem>.cache.json`` beside the CSV.  The
    input shape of segment (st, ·) is position st's feature map (`pre_pool=True` reproduces the
    original VGG table's pre-pool shapes).  `subtract_overhead`: see :func:`measure_segments` (for
    runtimes whose per-call cost dwarfs small convs, e.g. onnxruntime on CPU at batch 1).  Returns the
    CSV path.
    """
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out_csv.with_name(out_csv.stem + ".cache.json")
    segs = valid_segments(chain)
    times = measure_segments(chain, cache, act=act, backend=backend, threads=threads, batch_size=batch_size,
                             warmup=warmup, runs=runs, pre_pool=pre_pool, segments=segs,
                             subtract_overhead=subtract_overhead, log=log)
    table: TimeTable = time_table_from_mapping(times, segs)
    from jaxnas.io_utils import atomic_write_text

    atomic_write_text(out_csv, write_time_table(table))
    return out_csv
