"""Build a latency lookup table for a search space: time every unique block alone on a runtime.

Every part of :meth:`SearchSpace.unique_parts` (stem conv, each unique MBConv, head = last conv + pool +
classifier) is exported alone as a one-block spec (NHWC in; blocks end in ``Head(num_classes=0)`` so the
network outputs the block's feature map) with random weights, and timed with the backend (ONNX for
onnxruntime / TensorRT, ``.tflite`` for LiteRT, a jitted function for XLA).  The table also holds the
end-to-end latency of reference architectures (``ref:*`` entries), from which
:class:`latency.predictor.LatencyPredictor` derives its overhead term.

Timing follows the adaptive protocol by default (:mod:`latency.timing`, :data:`TABLE_PROTOCOL`): every
entry is timed in rounds of fresh sessions until the 95 % interval of its median is within ±1 % (or the
cap), and stores the interval, the rounds and the run count.  An entry flagged untrustworthy is timed
once more; if it stays flagged it is stored with its flags and the build says so (one line), and
:class:`latency.predictor.LatencyPredictor` warns about it.  Passing ``runs`` selects the fixed timing
(``warmup`` + ``runs`` runs in one session per round, best of ``rounds``).

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
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from jaxnas.spec import ArchSpec, analyze, macs

from .backends import LatencyBackend, get_backend
from .backends.base import measure_with, supports_protocol
from .batch_timing import untrusted_line
from .calibrate import CALIBRATION_KEY
from .fingerprint import as_dict
from .stats import TimingStats
from .table import DEFAULT_COMPAT_KEYS, REBUILD_HINT, REF_PREFIX, LatencyTable, TableError, entry_stats
from .spaces import BlockConfig, SearchSpace, load_space
from .timing import DEFAULT_PROTOCOL, TimingProtocol, TimingWarning, pool

__all__ = ["build_table", "open_table", "open_existing_table", "resolve_backend", "export_for", "best_of", "median_of",
           "grid_parts", "time_networks", "reference_archs", "table_meta", "input_shape", "REF_PREFIX", "ONNX_BACKENDS",
           "TABLE_PROTOCOL", "timing_mode", "measure_entry", "measure_models", "combine", "untrusted_line"]

# Tables time many small models: the same ±1 % target as `latency measure`, a shorter cap per entry.
TABLE_PROTOCOL = DEFAULT_PROTOCOL.replace(max_time_s=3.0)
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


def _per_stat(stats: Sequence[TimingStats], agg: Callable[[list[float]], Any]) -> TimingStats:
    """One model's repeated measurements as one: ``agg`` of each statistic over them, their counts summed."""
    if len(stats) == 1:
        return stats[0]
    each = {f: float(agg([getattr(s, f) for s in stats])) for f in ("median", "mean", "std", "p10", "p90", "min")}
    return TimingStats(**each, count=sum(s.count for s in stats))


def best_of(stats: Sequence[TimingStats]) -> TimingStats:
    """Combine repeated measurements of one model: each statistic's minimum over the rounds.

    On a shared machine a round can be slowed throughout (another process on the core, a cold cache);
    the quietest round is the best estimate of the model's own latency.
    """
    return _per_stat(stats, min)


def median_of(stats: Sequence[TimingStats]) -> TimingStats:
    """Combine repeated measurements of one model: each statistic's median over the rounds.

    Used to validate against: a model's timing can be bimodal across sessions (measured here: some
    onnxruntime sessions of one net ran 18 % faster than its other sessions, every time), and the best
    round would report the lucky mode; the median round reports the usual one.
    """
    return _per_stat(stats, np.median)


def export_for(spec: ArchSpec, backend: LatencyBackend, directory: Union[str, "os.PathLike[str]"], *,
               variables: Optional[dict] = None, seed: int = 0, check: bool = False, stem: str = "model",
               batch_size: int = 1) -> Any:
    """Export ``spec`` (random weights unless given) into ``directory`` in the backend's format.

    Returns the file path, or for the XLA backend a jittable function.  ``check`` runs the exporter's
    parity check (off by default: a timing needs the graph, not the numbers).  ``batch_size``: the ONNX
    graph's static batch (LiteRT and XLA take any batch at timing).
    """
    variables = _variables(spec, seed) if variables is None else variables
    name = getattr(backend, "name", "onnxruntime")  # a stand-in runtime without a name times ONNX files
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

        return str(export_onnx(spec, variables, Path(directory) / f"{stem}.onnx", check=check,
                               batch_size=int(batch_size)).path)
    raise TableError(f"no export route for backend {name!r}; use onnxruntime, tensorrt, tflite or xla")


def input_shape(spec: ArchSpec) -> tuple[int, int, int, int]:
    return (1, *spec.input_size, spec.in_channels)


DEFAULT_WARMUP_FIXED = 20


def timing_mode(protocol: Optional[TimingProtocol], warmup: Optional[int],
                runs: Optional[int]) -> tuple[Optional[TimingProtocol], Optional[int]]:
    """``(protocol, warmup)`` of a table build or a validation: with fixed ``runs`` no protocol and ``warmup``
    (default :data:`DEFAULT_WARMUP_FIXED`), else ``protocol`` (default :data:`TABLE_PROTOCOL`)."""
    if runs is not None and protocol is not None:
        raise ValueError("pass either a timing protocol or a fixed number of runs, not both")
    if runs is not None:
        return None, DEFAULT_WARMUP_FIXED if warmup is None else warmup
    return protocol or TABLE_PROTOCOL, warmup


def combine(stats: Sequence[TimingStats]) -> TimingStats:
    """Repeated measurements of one entry as one: pooled rounds (:func:`latency.timing.pool`) when every
    one carries its round medians, else each statistic's best round (:func:`best_of`)."""
    return pool(stats) if all(s.round_medians for s in stats) else best_of(stats)


def measure_entry(backend: LatencyBackend, model: Any, shape: Sequence[int], *, protocol: Optional[TimingProtocol],
                  warmup: Optional[int], runs: Optional[int]) -> TimingStats:
    """One table measurement: by the protocol (a flagged one is timed once more: the better of the two is
    kept, pooled if both are trusted or both flagged) or fixed.  Flags stay in the stats; no warning is
    raised here, the build reports untrusted entries itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        st = measure_with(backend, model, shape, protocol=protocol, warmup=warmup, runs=runs)
        if runs is None and st.flags and supports_protocol(backend):
            again = measure_with(backend, model, shape, protocol=protocol, warmup=warmup)
            st = again if not again.flags else pool([st, again])
    return st


def measure_models(backend: LatencyBackend, items: Sequence[tuple[Any, Sequence[int]]], *,
                   protocol: Optional[TimingProtocol], warmup: Optional[int], runs: Optional[int],
                   on_done: Optional[Callable[[int, TimingStats], None]] = None,
                   names: Optional[Sequence[str]] = None) -> list[TimingStats]:
    """Time ``(model, input_shape)`` items; ``on_done(j, stats)`` once per item, as soon as it is final.

    By the protocol, on a backend with ``prepare()``: all items at once with their rounds interleaved
    (:func:`latency.timing.measure_interleaved`: a busy spell hits a few rounds of many items, not every
    round of one), the flagged ones timed once more (interleaved among themselves; a clean second
    measurement replaces a flagged one, two flagged ones are pooled) unless more than a quarter are
    flagged (then the machine is the cause and they stay flagged).  Otherwise one after the other
    (:func:`measure_entry`)."""
    import contextlib

    from .timing import measure_interleaved

    items = list(items)
    if runs is not None or protocol is None or not supports_protocol(backend) or not items:
        out = []
        for j, (model, shape) in enumerate(items):
            out.append(measure_entry(backend, model, shape, protocol=protocol, warmup=warmup, runs=runs))
            if on_done is not None:
                on_done(j, out[-1])
        return out
    p = protocol if warmup is None else protocol.replace(warmup=warmup)
    names = list(names) if names is not None else [str(m) for m, _ in items]
    final: dict[int, TimingStats] = {}

    def first(j: int, st: TimingStats) -> None:
        final[j] = st
        if not st.flags and on_done is not None:
            on_done(j, st)

    def run(idx: list[int], cb: Callable[[int, TimingStats], None]) -> None:
        with contextlib.ExitStack() as stack:
            timers = [stack.enter_context(backend.prepare(items[j][0], items[j][1])) for j in idx]
            measure_interleaved(timers, p, on_done=lambda i, st: cb(idx[i], st), what=[names[j] for j in idx])

    run(list(range(len(items))), first)
    bad = [j for j, st in final.items() if st.flags]
    # A few flagged: transients, timed again.  More: the machine, not a transient; reported, not repeated.
    if bad and len(bad) <= max(1, len(items) // 4):
        def again(j: int, st: TimingStats) -> None:
            final[j] = st if not st.flags else pool([final[j], st])
        bad = sorted(bad)
        run(bad, again)
    if on_done is not None:
        for j in bad:
            on_done(j, final[j])
    return [final[j] for j in range(len(items))]


def time_networks(backend: LatencyBackend, specs: Sequence[ArchSpec], *, protocol: Optional[TimingProtocol],
                  warmup: Optional[int], runs: Optional[int], passes: int, seed: int = 0,
                  log: Callable[[str], None] = lambda _msg: None, what: str = "") -> list[list[TimingStats]]:
    """Export every spec once, then time them all in ``passes`` passes, each one :func:`measure_models` call
    (their rounds interleaved by the protocol).  Returns every spec's per-pass stats."""
    out: list[list[TimingStats]] = [[] for _ in specs]
    with tempfile.TemporaryDirectory(prefix="jaxnas_nets_") as tmp:
        models = []
        for i, spec in enumerate(specs):
            models.append(export_for(spec, backend, tmp, seed=seed, stem=f"net{i}"))
            log(f"{what}exported {i + 1}/{len(specs)}")
        for r in range(max(1, int(passes))):
            for i, st in enumerate(measure_models(backend, [(m, input_shape(s)) for s, m in zip(specs, models)],
                                                  protocol=protocol, warmup=warmup, runs=runs,
                                                  names=[s.name for s in specs])):
                out[i].append(st)
            log(f"{what}pass {r + 1}/{passes} done")
    return out


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


def _fingerprint(backend: LatencyBackend, batch_size: int = 1) -> dict[str, Any]:
    return as_dict(backend.fingerprint(batch_size))


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


def open_existing_table(path: Union[str, "os.PathLike[str]"], space: SearchSpace, fingerprint: Mapping[str, Any], *,
                        context: Optional[str] = None) -> LatencyTable:
    """:func:`open_table` on a table that must exist, with its own channel grid and (unless ``context`` asks
    for one, which must then match) its own context."""
    path = Path(path)
    have = LatencyTable.load(path).meta if path.exists() else {}  # missing: open_table says so in one line
    return open_table(path, space, fingerprint, channel_step=have.get("channel_step"),
                      context=context or have.get("context", "alone"), create=False)


def _progress(enabled: Union[bool, Callable[[str], None]]) -> Callable[[str], None]:
    if callable(enabled):
        return enabled
    if enabled:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return lambda msg: None


def _rounds_done(e: Optional[Mapping[str, Any]]) -> float:
    if e is None:
        return 0
    r = (e.get("meta") or {}).get("rounds")
    return float("inf") if r is None else int(r)  # an entry from elsewhere counts as complete


def build_table(space: SpaceLike, backend: BackendLike, out: Union[str, "os.PathLike[str]"], *, threads: int = 1,
                warmup: Optional[int] = None, runs: Optional[int] = None, channel_step: Optional[int] = None,
                progress: Union[bool, Callable[[str], None]] = True, references: Optional[int] = 12,
                rounds: Optional[int] = None, seed: int = 0, check_export: bool = False, context: str = "alone",
                on_entry: Optional[Callable[[str, int, int], None]] = None,
                protocol: Optional[TimingProtocol] = None, batch_size: int = 1) -> LatencyTable:
    """Measure every unique part of ``space`` (and the reference architectures) into the table at ``out``.

    By default every entry is one adaptive measurement (``protocol``, default :data:`TABLE_PROTOCOL`;
    ``warmup`` overrides its per-session warm-up) and ``rounds`` (default 1) passes over the table pool
    their rounds (:func:`combine`).  With ``runs`` given, each of ``rounds`` (default 3) passes times
    every entry with ``warmup`` + ``runs`` runs and an entry keeps each statistic's best pass
    (:func:`best_of`).  Passes go over the whole table, so that a busy spell on a shared machine hits
    one pass of many entries rather than every pass of a few.  Resumes a partial table at ``out``: only
    missing passes are measured, and the file is saved after each one.
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
        # TF-NAS tables keep fixed rounds (each entry's best round / per-round probe deltas by statistic).
        return build_tfnas_table(tfnas, backend, out, grid=int(channel_step or 8), context=context, threads=threads,
                                 batch_size=batch_size, warmup=20 if warmup is None else warmup,
                                 runs=100 if runs is None else runs, rounds=3 if rounds is None else rounds,
                                 seed=seed, progress=progress)
    space = load_space(space)
    be = resolve_backend(backend, threads)
    fp = _fingerprint(be)
    out = Path(out)
    table = open_table(out, space, fp, channel_step=channel_step, context=context)
    log = _progress(progress)
    protocol, warmup = timing_mode(protocol, warmup, runs)
    fixed = runs is not None
    rounds = max(1, int(rounds if rounds is not None else (3 if fixed else 1)))
    table.meta.setdefault("timing", {"protocol": protocol.to_dict()} if protocol else
                          {"fixed": {"warmup": warmup, "runs": runs, "rounds": rounds}})

    todo: dict[str, tuple[str, Any]] = {}
    if context == "alone":
        for part in space.unique_parts():
            for g in grid_parts(part, channel_step):
                todo.setdefault(g.key, ("part", g))
    else:  # probes first, then every part alone (the derivation's prior), then the derived entries
        from .network_table import alone_parts, measure_network_probes

        measure_network_probes(space, be, table, lambda: table.save(out), warmup=warmup, runs=runs, rounds=rounds,
                               log=log, protocol=protocol)
        for key, part in alone_parts(space).items():
            todo.setdefault(key, ("part", part))
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
            pending = [key for key in todo if _rounds_done(table.get(key)) < r]
            for key in pending:
                if key in models:  # export once per build, reuse the file in later rounds
                    continue
                what, obj = todo[key]
                if what == "part":
                    spec = obj.to_spec()
                    meta: dict[str, Any] = {"kind": obj.kind, "config": obj.to_dict(), "macs": macs(spec)}
                else:
                    spec = space.build(obj, name=f"{space.name}_{key.replace(':', '_')}")
                    meta = {"kind": "reference", "arch": obj, "macs": macs(spec),
                            "params": analyze(spec).params, "parts": [p.to_dict() for p in space.decompose(spec)]}
                model = export_for(spec, be, tmp, seed=seed, check=check_export, stem=f"e{len(models)}")
                models[key] = (model, spec, meta)
            t0 = time.perf_counter()

            def store(key: str, stats: TimingStats) -> None:
                nonlocal done
                prev = table.get(key)
                have = _rounds_done(prev)
                if prev is not None:
                    stats = combine([entry_stats(prev), stats])
                table.put(key, stats, meta={**models[key][2], "warmup": warmup, "runs": runs, "rounds": int(have) + 1})
                # A drift calibration scales the entries measured before it; a new one is measured now.
                table.meta.pop(CALIBRATION_KEY, None)
                table.save(out)
                done += 1
                iv = f" ±{stats.rel_ci:.1%} ({stats.rounds} sessions)" if stats.rel_ci is not None else ""
                log(f"[latency] {done}/{total} round {int(have) + 1} {key}: {stats.min:.4f} ms min, "
                    f"{stats.median:.4f} median{iv} ({time.perf_counter() - t0:.1f} s)"
                    + (f" UNTRUSTED: {stats.flags[0]}" if stats.flags else ""))
                if on_entry is not None:
                    on_entry(key, done, total)

            # The reference networks are timed among themselves, as the nets they calibrate are (a validation's
            # samples, a search's candidates: whole networks interleaved with whole networks), not with
            # the one-block models of the parts.
            for group in ([k for k in pending if todo[k][0] != "ref"], [k for k in pending if todo[k][0] == "ref"]):
                if group:
                    measure_models(be, [(models[k][0], input_shape(models[k][1])) for k in group], protocol=protocol,
                                   warmup=warmup, runs=runs, on_done=lambda j, st, g=group: store(g[j], st), names=group)
    if context == "network":
        from .network_table import derive_parts

        for k, e in derive_parts(space, table).items():
            table.put(k, e)
        table.save(out)
    if not out.exists():  # nothing to measure (empty space?) but the caller expects a file
        table.save(out)
    if done:
        log(f"[latency] {done} measurements in {time.perf_counter() - t_start:.1f} s -> {out}")
    bad = untrusted_line(table, str(out))
    if bad:
        log(f"[latency] warning: {bad}")
    return table
