"""Build a latency lookup table for a search space: time every unique block alone on a runtime.

Every part of :meth:`SearchSpace.unique_parts` (stem conv, each unique MBConv, head = last conv + pool +
classifier) is exported alone as a one-block spec (NHWC in; blocks end in ``Head(num_classes=0)`` so the
network outputs the block's feature map) with random weights, and timed with the backend (ONNX for
onnxruntime / TensorRT, ``.tflite`` for LiteRT, a jitted function for XLA).  The table also holds the
end-to-end latency of reference architectures (``ref:*`` entries), from which
:class:`latency.predictor.LatencyPredictor` derives its overhead term.

The build is resumable: the table is saved (atomically) after every entry and a rerun measures only the
missing entries.  A file measured on another setup (fingerprint), in other units, or for another space
(``meta.space_hash``) or channel grid is refused with :class:`TableError`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from jaxnas.spec import ArchSpec, analyze, macs

from .backends import LatencyBackend, get_backend
from .stats import TimingStats
from .table import DEFAULT_COMPAT_KEYS, REBUILD_HINT, LatencyTable, TableError
from .spaces import BlockConfig, SearchSpace, load_space

__all__ = ["build_table", "open_table", "resolve_backend", "measure_spec_latency", "export_for", "best_of", "median_of",
           "grid_parts", "reference_archs", "table_meta", "input_shape", "REF_PREFIX", "ONNX_BACKENDS"]

REF_PREFIX = "ref:"
# The provider too: a LiteRT table timed with XNNPACK says nothing about the builtin kernels.
COMPAT_KEYS = (*DEFAULT_COMPAT_KEYS, "provider")
ONNX_BACKENDS = ("onnxruntime", "tensorrt")

BackendLike = Union[str, LatencyBackend]
SpaceLike = Union[str, "os.PathLike[str]", Mapping[str, Any], SearchSpace]


def resolve_backend(backend: BackendLike, threads: int = 1) -> LatencyBackend:
    """A backend instance from a registry name (threads only where the runtime takes them) or as given."""
    if not isinstance(backend, str):
        return backend
    return get_backend(backend, threads=threads)  # xla / tensorrt refuse a count they cannot honour


def _variables(spec: ArchSpec, seed: int = 0) -> dict:
    from jaxnas.models import build_model, init_variables

    return init_variables(build_model(spec), seed)


def best_of(stats: Sequence[TimingStats]) -> TimingStats:
    """Combine repeated measurements of one model: each statistic's minimum over the rounds.

    On a shared machine a round can be slowed throughout (another process on the core, a cold cache);
    the quietest round is the best estimate of the model's own latency.
    """
    if len(stats) == 1:
        return stats[0]
    return TimingStats(median=min(s.median for s in stats), mean=min(s.mean for s in stats),
                       std=min(s.std for s in stats), p10=min(s.p10 for s in stats),
                       p90=min(s.p90 for s in stats), min=min(s.min for s in stats),
                       count=sum(s.count for s in stats))


def median_of(stats: Sequence[TimingStats]) -> TimingStats:
    """Combine repeated measurements of one model: each statistic's median over the rounds.

    Used to validate against: a model's timing can be bimodal across sessions (measured here: some
    onnxruntime sessions of one net ran 18 % faster than its other sessions, every time), and the best
    round would report the lucky mode; the median round reports the usual one.
    """
    if len(stats) == 1:
        return stats[0]
    med = {f: float(np.median([getattr(s, f) for s in stats])) for f in ("median", "mean", "std", "p10", "p90", "min")}
    return TimingStats(**med, count=sum(s.count for s in stats))


def export_for(spec: ArchSpec, backend: LatencyBackend, directory: Union[str, "os.PathLike[str]"], *,
               variables: Optional[dict] = None, seed: int = 0, check: bool = False, stem: str = "model") -> Any:
    """Export ``spec`` (random weights unless given) into ``directory`` in the backend's format.

    Returns the file path, or for the XLA backend a jittable function.  ``check`` runs the exporter's
    parity check (off by default: a timing needs the graph, not the numbers).
    """
    variables = _variables(spec, seed) if variables is None else variables
    name = getattr(backend, "name", "")
    if name == "xla":
        from jaxnas.models import build_model

        model = build_model(spec)
        return lambda x: model.apply(variables, x)
    if name == "tflite":
        from jaxnas.export.tflite_export import export_tflite

        return str(export_tflite(spec, variables, Path(directory) / f"{stem}.tflite",
                                 precision=getattr(backend, "precision", "fp32"), check=check).path)
    if name in ONNX_BACKENDS:
        from jaxnas.export.onnx_export import export_onnx

        return str(export_onnx(spec, variables, Path(directory) / f"{stem}.onnx", check=check).path)
    raise TableError(f"no export route for backend {name!r}; use onnxruntime, tensorrt, tflite or xla")


def input_shape(spec: ArchSpec) -> tuple[int, int, int, int]:
    return (1, *spec.input_size, spec.in_channels)


def measure_spec_latency(spec: ArchSpec, backend: LatencyBackend, *, warmup: int, runs: int,
                         variables: Optional[dict] = None, workdir: Optional[str] = None, seed: int = 0,
                         check: bool = False, rounds: int = 1) -> TimingStats:
    """Export ``spec`` to a temp dir, time it ``rounds`` times (:func:`best_of`), delete the file."""
    with tempfile.TemporaryDirectory(prefix="jaxnas_lat_", dir=workdir) as tmp:
        model = export_for(spec, backend, tmp, variables=variables, seed=seed, check=check)
        return best_of([backend.measure(model, input_shape(spec), warmup=warmup, runs=runs)
                        for _ in range(max(1, int(rounds)))])


def grid_parts(cfg: BlockConfig, step: Optional[int]) -> list[BlockConfig]:
    """The channel-grid configs that stand for ``cfg``: itself when on the grid (or no grid), else the
    configs with every channel count rounded down / up to a multiple of ``step`` (the stem's image
    channels and the class count are never rounded)."""
    if not step:
        return [cfg]
    step = int(step)

    def lo_hi(c: int) -> tuple[int, int]:
        if c % step == 0:
            return c, c
        lo = max(step, c // step * step)
        return lo, lo + step

    cin = (cfg.cin, cfg.cin) if cfg.kind == "conv" else lo_hi(cfg.cin)
    cout = lo_hi(cfg.cout)
    mid = lo_hi(cfg.mid) if cfg.expand else cin
    se = lo_hi(cfg.se) if cfg.se else (0, 0)
    lo = cfg.with_channels(cin[0], cout[0], mid[0], se[0])
    hi = cfg.with_channels(cin[1], cout[1], mid[1], se[1])
    return [lo] if lo.key == hi.key else [lo, hi]


def reference_archs(space: SearchSpace, n_random: int = 12, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Architectures timed end to end for the predictor's overhead term: the smallest and the largest of
    the space plus ``n_random`` random ones (seeded, so a resumed build asks for the same ones)."""
    refs = {"min": space.extreme_arch(largest=False), "max": space.extreme_arch(largest=True)}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0EF]))
    seen = {json.dumps(a, sort_keys=True) for a in refs.values()}
    for i in range(int(n_random)):
        arch = space.sample_arch(rng)
        if json.dumps(arch, sort_keys=True) not in seen:  # tiny spaces repeat themselves
            seen.add(json.dumps(arch, sort_keys=True))
            refs[f"r{i}"] = arch
    return refs


def _fingerprint(backend: LatencyBackend) -> dict[str, Any]:
    fp = backend.fingerprint(1)
    return fp.to_dict() if hasattr(fp, "to_dict") else dict(fp)


CONTEXTS = ("alone", "network")


def table_meta(space: SearchSpace, channel_step: Optional[int], context: str = "alone") -> dict[str, Any]:
    if context not in CONTEXTS:
        raise TableError(f"context must be one of {CONTEXTS}, got {context!r}")
    if context == "network" and channel_step:
        raise TableError("a network-context table times the space's own channel counts; drop channel_step")
    return {**space.meta(), "channel_step": int(channel_step) if channel_step else None, "context": context}


def open_table(path: Union[str, "os.PathLike[str]"], space: SearchSpace, fingerprint: Mapping[str, Any], *,
               channel_step: Optional[int] = None, context: str = "alone", create: bool = True) -> LatencyTable:
    """Load (or start, with ``create``) the table at ``path`` for ``space`` measured with ``fingerprint``.

    Raises :class:`TableError` when the file's units/schema are wrong, its fingerprint differs on any of
    backend, runtime, threads, batch size, precision, device or provider, or it was built for another
    space or channel grid.
    """
    path = Path(path)
    meta = table_meta(space, channel_step, context)
    if not path.exists():
        if not create:
            raise TableError(f"latency table not found: {path}; {REBUILD_HINT}")
        return LatencyTable.new(fingerprint, meta)
    table = LatencyTable.load(path)
    table.check_compatible(fingerprint, COMPAT_KEYS)
    have = table.meta.get("space_hash")
    if have != space.hash:
        raise TableError(f"{path} was built for search space {table.meta.get('space')!r} (hash {have}) but "
                         f"{space.name!r} (hash {space.hash}) was requested; use another path or {REBUILD_HINT}")
    if table.meta.get("channel_step") != meta["channel_step"]:
        raise TableError(f"{path} was built with channel_step={table.meta.get('channel_step')} but "
                         f"channel_step={meta['channel_step']} was requested; use another path or {REBUILD_HINT}")
    if table.meta.get("context", "alone") != context:
        raise TableError(f"{path} times blocks {table.meta.get('context', 'alone')!r} but context={context!r} was "
                         f"requested; use another path or {REBUILD_HINT}")
    return LatencyTable.open_or_create(path, fingerprint, meta, keys=COMPAT_KEYS)


def _progress(enabled: Union[bool, Callable[[str], None]]) -> Callable[[str], None]:
    if callable(enabled):
        return enabled
    if enabled:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return lambda msg: None


def _entry_stats(e: Mapping[str, Any]) -> TimingStats:
    def val(k: str) -> float:
        v = e.get(k)
        return float(e["mean"] if v is None else v)

    return TimingStats(median=val("median"), mean=val("mean"), std=val("std"), p10=val("p10"), p90=val("p90"),
                       min=val("min") if e.get("min") is not None else val("p10"), count=int(e.get("count") or 0))


def _rounds_done(e: Optional[Mapping[str, Any]]) -> float:
    if e is None:
        return 0
    r = (e.get("meta") or {}).get("rounds")
    return float("inf") if r is None else int(r)  # an entry from elsewhere counts as complete


def build_table(space: SpaceLike, backend: BackendLike, out: Union[str, "os.PathLike[str]"], *, threads: int = 1,
                warmup: int = 20, runs: int = 100, channel_step: Optional[int] = None,
                progress: Union[bool, Callable[[str], None]] = True, references: Optional[int] = 12,
                rounds: int = 3, seed: int = 0, check_export: bool = False, context: str = "alone",
                on_entry: Optional[Callable[[str, int, int], None]] = None, batch_size: int = 1) -> LatencyTable:
    """Measure every unique part of ``space`` (and the reference architectures) into the table at ``out``.

    Every entry is timed ``rounds`` times (``warmup`` + ``runs`` each) in ``rounds`` passes over the
    whole table, so that a busy spell on a shared machine hits one round of many entries rather than
    every round of a few; an entry keeps each statistic's best round (:func:`best_of`).  Resumes a
    partial table at ``out``: only missing rounds are measured, and the file is saved after each one.
    ``channel_step``: measure channel counts on this grid (parts off the grid are stored as their
    rounded-down and rounded-up neighbours; the predictor interpolates).  ``references``: how many random
    architectures to time end to end besides the space's smallest and largest (``None``: none, so the
    predictor has no overhead term).  ``on_entry(key, done, total)`` is called after each measurement is
    saved (``done``/``total`` count measurements of this call).  ``context="network"`` times every
    choice as the change it makes to a reference network instead of alone (:mod:`latency.network_table`;
    better ranks on runtimes with large per-call costs such as onnxruntime on CPU).  Returns the table.

    A TF-NAS space (family 'tfnas', e.g. 'tfnas-small') gets a table in the original's key format
    (:func:`latency.tfnas_table.build_tfnas_table`: mids on a grid of ``channel_step`` (default 8),
    timed at ``batch_size``).
    """
    from .tfnas_table import build_tfnas_table, resolve_tfnas_space

    tfnas = resolve_tfnas_space(space)
    if tfnas is not None:
        return build_tfnas_table(tfnas, backend, out, grid=int(channel_step or 8), context=context, threads=threads,
                                 batch_size=batch_size, warmup=warmup, runs=runs, rounds=rounds, seed=seed,
                                 progress=progress)
    space = load_space(space)
    be = resolve_backend(backend, threads)
    fp = _fingerprint(be)
    out = Path(out)
    table = open_table(out, space, fp, channel_step=channel_step, context=context)
    log = _progress(progress)
    rounds = max(1, int(rounds))

    todo: dict[str, tuple[str, Any]] = {}
    if context == "alone":
        for part in space.unique_parts():
            for g in grid_parts(part, channel_step):
                todo.setdefault(g.key, ("part", g))
    else:
        from .network_table import measure_network_parts

        with tempfile.TemporaryDirectory(prefix="jaxnas_table_") as tmp:
            measure_network_parts(space, be, table, lambda: table.save(out), warmup=warmup, runs=runs, rounds=rounds,
                                  export=lambda spec, stem: export_for(spec, be, tmp, seed=seed, stem=stem), log=log)
    if references is not None and references is not False:
        n_random = 12 if references is True else int(references)
        for name, arch in reference_archs(space, n_random, seed).items():
            todo[REF_PREFIX + name] = ("ref", arch)
    total = int(sum(max(0, rounds - min(_rounds_done(table.get(k)), rounds)) for k in todo))
    complete = sum(_rounds_done(table.get(k)) >= rounds for k in todo)
    log(f"[latency] {space.name} on {fp.get('runtime')} (threads={fp.get('threads')}): {len(todo)} entries x "
        f"{rounds} rounds, {complete} complete in {out}, {total} measurements to take")
    t_start = time.perf_counter()
    done = 0
    with tempfile.TemporaryDirectory(prefix="jaxnas_table_") as tmp:
        models: dict[str, tuple[Any, ArchSpec, dict[str, Any]]] = {}
        for r in range(1, rounds + 1):
            for key, (what, obj) in todo.items():
                prev = table.get(key)
                have = _rounds_done(prev)
                if have >= r:
                    continue
                t0 = time.perf_counter()
                if key not in models:  # export once per build, reuse the file in later rounds
                    if what == "part":
                        spec = obj.to_spec()
                        meta: dict[str, Any] = {"kind": obj.kind, "config": obj.to_dict(), "macs": macs(spec)}
                    else:
                        spec = space.build(obj, name=f"{space.name}_{key.replace(':', '_')}")
                        meta = {"kind": "reference", "arch": obj, "macs": macs(spec),
                                "params": analyze(spec).params, "parts": [p.to_dict() for p in space.decompose(spec)]}
                    model = export_for(spec, be, tmp, seed=seed, check=check_export, stem=f"e{len(models)}")
                    models[key] = (model, spec, meta)
                model, spec, meta = models[key]
                stats = be.measure(model, input_shape(spec), warmup=warmup, runs=runs)
                if prev is not None:
                    stats = best_of([_entry_stats(prev), stats])
                table.put(key, stats, meta={**meta, "warmup": warmup, "runs": runs, "rounds": int(have) + 1})
                table.save(out)
                done += 1
                log(f"[latency] {done}/{total} round {int(have) + 1} {key}: {stats.min:.4f} ms min, "
                    f"{stats.median:.4f} median ({time.perf_counter() - t0:.1f} s)")
                if on_entry is not None:
                    on_entry(key, done, total)
    if not out.exists():  # nothing to measure (empty space?) but the caller expects a file
        table.save(out)
    if done:
        log(f"[latency] {done} measurements in {time.perf_counter() - t_start:.1f} s -> {out}")
    return table
