"""Depth compression's latency table T(st, end), measured through the latency oracle.

Two ways (`search.args.time_table_context`):

* ``alone`` (the original's): for every valid segment the merged conv (`merged_conv_shape`: kernel
  1 + Σ(k_i - 1), stride Π s_i, padding Σ p_i, depthwise iff all convs are) followed by its activation
  is a one-layer spec (``Head(num_classes=0)``) at the feature shape of position st, timed alone.
  Identical merged convs (same input shape, channels, kernel, stride, padding, type) are timed once.
* ``network`` (default): on a CPU runtime a network of small convs costs little per conv, while a conv
  timed alone pays the per-call costs (layout reorders, I/O) that dominate it, and merges change how
  the runtime fuses their neighbours. So the change of the *whole network's* latency when one segment
  is merged is what the merge saves: for every valid segment (st, end) the base network with only
  that segment merged (`fix_act` + `merge_network`, the exact network the pipeline would ship) is
  timed against the base network in alternating rounds, and the median per-round difference is
  Δ(st, end). The table is then

      T(i, i+1) = c_i,    Σ_i c_i = L_base (the whole base network, stem and head included)
      T(st, end) = Σ_{st <= i < end} c_i + Δ(st, end)

  Any split c of L_base gives every merge pattern the same total, L_base + Σ Δ over its merged
  segments, so the split (here proportional to the convs' MACs plus their mean) changes no decision;
  only its sum matters, and with Σ c = L_base a budget T0 = f · Σ T(i, i+1) asks for a network
  measured at f · L_base. The additive model assumes merges in different segments do not interact
  (each Δ is measured with every other segment unmerged); `benchmarks/depth_table_fidelity.py`
  measures how well that holds.

Both write the original's ``id,st,end,time,stdev`` CSV (ms per batch) and keep their measurements in a
cache beside it, so an interrupted build resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxnas.io_utils import atomic_write_text
from jaxnas.methods.depth.segments import ConvChain, MergedConv, feature_shapes, merged_conv_shape, valid_segments
from jaxnas.methods.depth.tables import time_table_from_mapping, write_time_table
from jaxnas.spec import ArchSpec, Block, Conv, Head

__all__ = ["segment_conv_spec", "segment_key", "overhead_conv", "segment_times", "build_time_table",
           "segment_network", "conv_split", "network_time_table", "build_network_time_table"]

MIN_TIME_MS = 1e-6


# ---------------------------------------------------------------------------------------------- alone

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


def segment_times(chain: ConvChain, oracle: Any, cache: str | Path, *, act: str = "relu", batch_size: int = 1,
                  pre_pool: bool = False, segments: Sequence[tuple[int, int]] | None = None,
                  subtract_overhead: bool = False) -> dict[tuple[int, int], tuple[float, float]]:
    """{(st, end): (median ms, std ms)} of every valid segment's merged conv timed alone.

    With `subtract_overhead`, each time is reduced by that of :func:`overhead_conv` at the same input
    shape (floored at 1 ns), so that T(st, end) estimates the conv's cost inside a network.
    """
    segs = list(segments) if segments is not None else valid_segments(chain)
    shapes = feature_shapes(chain, pre_pool)
    keys, over, specs, info = {}, {}, {}, {}
    for st, end in segs:
        parts = [("seg", merged_conv_shape(chain, st, end), act)]
        if subtract_overhead:
            parts.append(("over", overhead_conv(shapes[st]), "identity"))
        for kind, m, a in parts:
            key = segment_key(m, shapes[st], a, batch_size)
            (keys if kind == "seg" else over)[(st, end)] = key
            specs[key] = segment_conv_spec(m, shapes[st], a)
            info[key] = {"in_shape": list(shapes[st]), "kernel": m.kernel, "stride": m.stride, "padding": m.padding,
                         "out": m.out_ch, "depthwise": m.depthwise}
    stats = oracle.measure_each(specs, cache=Path(cache), entry_meta=info)
    out = {}
    for seg, key in keys.items():
        t, sd = stats[key].median, float(stats[key].std)
        if subtract_overhead:
            o = stats[over[seg]]
            t, sd = max(t - o.median, MIN_TIME_MS), float(np.hypot(sd, o.std))
        out[seg] = (t, sd)
    return out


def build_time_table(chain: ConvChain, out_csv: str | Path, oracle: Any, *, act: str = "relu", batch_size: int = 1,
                     pre_pool: bool = False, subtract_overhead: bool = False,
                     cache: str | Path | None = None) -> Path:
    """Measure (or resume) T(st, end) of `chain` with each merged conv alone; writes and returns the CSV.

    `act` is the activation timed after each merged conv (the original timed ReLU; MobileNetV2's body
    uses ReLU6); `cache` defaults to ``<out_csv stem>.cache.json``. The input shape of segment (st, ·)
    is position st's feature map (`pre_pool=True` reproduces the original VGG table's pre-pool shapes).
    """
    out_csv = Path(out_csv)
    cache = Path(cache) if cache is not None else out_csv.with_name(out_csv.stem + ".cache.json")
    segs = valid_segments(chain)
    times = segment_times(chain, oracle, cache, act=act, batch_size=batch_size, pre_pool=pre_pool, segments=segs,
                          subtract_overhead=subtract_overhead)
    atomic_write_text(out_csv, write_time_table(time_table_from_mapping(times, segs)))
    return out_csv


# -------------------------------------------------------------------------------------------- network

def segment_network(base: ArchSpec, variables: Mapping[str, Any], st: int, end: int) -> tuple[ArchSpec, dict]:
    """(spec, variables) of `base` with only segment (st, end) merged into one conv (eval-mode weights)."""
    from jaxnas.methods.depth.merge import merge_network
    from jaxnas.methods.depth.mergeable import body_of, fix_act, transfer_variables

    chain = body_of(base).chain
    inside = set(range(st + 1, end))
    acts = [p for p in chain.default_acts if p not in inside]
    merges = [p for p in range(1, chain.L + 1) if p not in inside]
    fspec = fix_act(base, acts, merges)
    return merge_network(fspec, transfer_variables(variables, fspec))


def conv_split(chain: ConvChain, total_ms: float) -> list[float]:
    """c_i: `total_ms` split over the L convs in proportion to MACs_i + mean MACs (see the module doc)."""
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


def segment_deltas(base: ArchSpec, oracle: Any, cache: str | Path, *, variables: Mapping[str, Any] | None = None,
                   rounds: int = 3, segments: Sequence[tuple[int, int]] | None = None,
                   ) -> tuple[float, dict[tuple[int, int], tuple[float, float]]]:
    """(L_base ms, {(st, end): (Δ ms, spread ms)}) for the valid multi-conv segments of `base` (a
    mergeable spec), each timed against the base network in `rounds` alternating rounds."""
    from jaxnas.methods.depth.mergeable import body_of

    if variables is None:
        from jaxnas.models import build_model, init_variables

        variables = init_variables(build_model(base), 0)
    chain = body_of(base).chain
    segs = [s for s in (segments if segments is not None else valid_segments(chain)) if s[1] - s[0] > 1]
    candidates = {_segment_key(st, end): (lambda st=st, end=end: segment_network(base, variables, st, end))
                  for st, end in segs}
    base_ms, deltas = oracle.paired_deltas((base, variables), candidates, cache=Path(cache), rounds=rounds)
    return base_ms, {s: deltas[_segment_key(*s)] for s in segs}


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


def build_network_time_table(spec: ArchSpec, out_csv: str | Path, oracle: Any, *, rounds: int = 3,
                             variables: Mapping[str, Any] | None = None, cache: str | Path | None = None) -> Path:
    """Measure (or resume) the in-network T(st, end) of `spec`; writes and returns the CSV.

    `cache` defaults to ``<out_csv stem>.network.cache.json`` beside the CSV.
    """
    from jaxnas.methods.depth.mergeable import META_ACT, body_of, mergeable_spec

    out_csv = Path(out_csv)
    cache = Path(cache) if cache is not None else out_csv.with_name(out_csv.stem + ".network.cache.json")
    base = mergeable_spec(spec) if META_ACT not in spec.metadata else spec
    chain = body_of(base).chain
    segs = valid_segments(chain)
    base_ms, deltas = segment_deltas(base, oracle, cache, variables=variables, rounds=rounds, segments=segs)
    table = time_table_from_mapping(network_time_table(chain, base_ms, deltas, segs), segs)
    atomic_write_text(out_csv, write_time_table(table))
    return out_csv
