"""Latency predictor over a lookup table, and its validation against end-to-end measurements.

``LatencyPredictor(table).predict(spec)`` (ms) is::

    sum(table[part] for part in space.decompose(spec))   # stem + every MBConv block + head
      + overhead(spec)

Parts are timed alone, so their sum differs from the whole network in two ways.  (1) Each part's timing
includes one runtime call and its own boundary work (onnxruntime converts NHWC to its blocked NCHWc
layout and back at every part's input/output and cannot fuse the bias/residual adds there) that a
whole network pays once: about -6 us per part on onnxruntime/1 thread here.  (2) A part timed alone runs
from a warm cache; inside a network its weights are evicted by the other blocks' (a 2-4 M-parameter
network does not fit a 2 MiB L2), which costs time in proportion to the weights.  So::

    overhead = a + b * n_parts + c * params_in_millions

fitted by least squares to ``measured - sum of parts`` of the reference architectures the builder
timed end to end (``ref:*`` entries: the space's smallest and largest architectures plus random ones),
after dropping outlying references, with the terms chosen by leave-one-out error (:func:`fit_overhead`):
on LiteRT/XNNPACK, whose parts have hardly any boundary cost, the constant usually wins.  One or two
references give the constant alone; without references the overhead is 0.

Search methods use this object only, never a runtime.  ``validate_space`` measures how well it ranks
and predicts random architectures of the space on a real runtime.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from jaxnas.spec import ArchSpec, macs

from .spaces import BlockConfig, SearchSpace, decompose_spec, load_space
from .calibrate import table_scale
from .table import REBUILD_HINT, LatencyTable, TableError, interpolate

__all__ = ["LatencyPredictor", "MissingEntryError", "validate_space", "spearman", "rankdata",
           "prediction_metrics", "fit_overhead", "default_table_path", "STATS"]

STATS = ("min", "p10", "median", "mean")
# The median of each run's timings (and of a table's in-network times, which are medians of paired
# rounds).  Measured here on 30 mbv2-small nets, onnxruntime, 300 runs x 5 rounds: ranked by their
# median the nets agree with a second measurement at Spearman 0.99 and with the network-table
# prediction at 0.987; ranked by their minimum the prediction reaches only 0.87 (a minimum keeps one
# lucky run, and the minima of different nets are lucky differently).  Pass stat="min" for the
# latency without interference on a machine where medians swing under load.
DEFAULT_STAT = "median"

TableLike = Union[LatencyTable, str, "os.PathLike[str]"]


class MissingEntryError(TableError):
    """The table has no entry for a part of the architecture being predicted."""


class LatencyPredictor:
    """Predicts the latency (ms per batch) of a concrete spec from a lookup table.

    ``stat``: which entry statistic to sum ('median' default, 'p10', 'mean', 'min').
    ``untrusted``: {key: flags} of table entries whose timing was flagged; a table with any raises one
    :class:`latency.timing.TimingWarning` (``warn_untrusted=False``: the caller reports them itself).
    ``scale``: every entry's time is multiplied by it (the device's drift since the table was built,
    :mod:`latency.calibrate`); None: the table's stored calibration (1.0 where it has none).
    """

    def __init__(self, table: TableLike, *, stat: str = DEFAULT_STAT, warn_untrusted: bool = True,
                 scale: Optional[float] = None):
        if stat not in STATS:
            raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
        self.path: Optional[str] = None
        if not isinstance(table, LatencyTable):
            self.path = os.fspath(table)
            table = LatencyTable.load(table)
        self.table = table
        self.stat = stat
        self.scale = float(table_scale(table) if scale is None else scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.untrusted = table.untrusted()
        if self.untrusted and warn_untrusted:
            from .builder import untrusted_line
            from .timing import TimingWarning

            warnings.warn(TimingWarning(untrusted_line(table, self.path or "the latency table")), stacklevel=2)
        step = table.meta.get("channel_step")
        self.channel_step: Optional[int] = int(step) if step else None
        self.overhead = self._fit_overhead()

    # ------------------------------------------------------------ parts
    def _where(self) -> str:
        return f"latency table {self.path}" if self.path else "the latency table"

    def entry_ms(self, key: str) -> float:
        if key not in self.table:
            raise MissingEntryError(f"{self._where()} ({self.table.meta.get('space', '?')}) has no entry "
                                    f"{key!r}; was the architecture drawn from another space? {REBUILD_HINT}")
        return self.scale * self.table.ms(key, self.stat)

    def part_ms(self, cfg: BlockConfig) -> float:
        """Latency of one part: its entry, else (channel grid) interpolated between grid neighbours by MACs."""
        if cfg.key in self.table or not self.channel_step:
            return self.entry_ms(cfg.key)
        from .builder import grid_parts

        grid = grid_parts(cfg, self.channel_step)
        missing = [g.key for g in grid if g.key not in self.table]
        if missing:
            raise MissingEntryError(f"{self._where()} has no entry {cfg.key!r} nor its channel-grid "
                                    f"neighbour(s) {missing} (channel_step={self.channel_step}); {REBUILD_HINT}")
        if len(grid) == 1:
            return self.entry_ms(grid[0].key)
        xs = [float(g.macs()) for g in grid]
        ys = [self.entry_ms(g.key) for g in grid]
        if xs[0] == xs[1]:
            return float(np.mean(ys))
        return max(0.0, interpolate(xs, ys, float(cfg.macs())))

    def parts(self, spec: ArchSpec) -> list[BlockConfig]:
        return decompose_spec(spec)

    def breakdown(self, spec: ArchSpec) -> dict[str, Any]:
        """Per-part latencies, their sum, the overhead and the prediction (all ms)."""
        parts = self.parts(spec)
        ms = [self.part_ms(p) for p in parts]
        oh = self.overhead_ms(parts)
        total = float(sum(ms))
        return {"parts": [(p.key, m) for p, m in zip(parts, ms)], "sum_ms": total, "overhead_ms": oh,
                "predicted_ms": total + oh}

    def predict(self, spec: ArchSpec) -> float:
        """Predicted latency of ``spec`` in ms (sum of parts + overhead)."""
        return self.predict_parts(self.parts(spec))

    def predict_parts(self, parts: Sequence[BlockConfig]) -> float:
        """Predicted latency (ms) of the network made of ``parts`` ([stem, blocks..., head])."""
        return float(sum(self.part_ms(p) for p in parts)) + self.overhead_ms(parts)

    __call__ = predict

    # ------------------------------------------------------------ overhead
    @staticmethod
    def features(parts: Sequence[BlockConfig]) -> list[float]:
        """Overhead regressors of a network made of ``parts``: [1, n_parts, params in millions]."""
        return [1.0, float(len(parts)), sum(p.params() for p in parts) / 1e6]

    def overhead_ms(self, parts: Sequence[BlockConfig]) -> float:
        coef = self.overhead["coef"]
        return float(sum(c * f for c, f in zip(coef, self.features(parts))))

    def _fit_overhead(self) -> dict[str, Any]:
        refs = []
        for key, e in self.table.entries.items():
            m = e.get("meta") or {}
            if m.get("kind") != "reference" or not m.get("parts"):
                continue
            parts = [BlockConfig(**p) for p in m["parts"]]
            block_sum = float(sum(self.part_ms(p) for p in parts))
            measured = self.scale * self.table.ms(key, self.stat)
            refs.append({"key": key, "features": self.features(parts), "sum_ms": block_sum,
                         "measured_ms": measured, "residual_ms": measured - block_sum})
        out: dict[str, Any] = {"coef": [0.0, 0.0, 0.0], "terms": ["a", "b*n_parts", "c*mparams"], "model": [],
                               "references": refs}
        if not refs:
            return out
        x = np.array([r["features"] for r in refs], dtype=float)
        y = np.array([r["residual_ms"] for r in refs], dtype=float)
        coef, keep, cols, loo = fit_overhead(x, y)
        for r, k in zip(refs, keep):
            r["used"] = bool(k)
        out.update(coef=[float(v) for v in coef], model=[out["terms"][c] for c in cols],
                   loo_rms_ms=loo, rms_residual_ms=float(np.sqrt(np.mean((y[keep] - x[keep] @ coef) ** 2))))
        return out

    def describe(self) -> str:
        fp = self.table.fingerprint
        a, b, c = self.overhead["coef"]
        cal = f"; calibrated x{self.scale:.3f}" if self.scale != 1.0 else ""
        return (f"LatencyPredictor({len(self.table)} entries, {self.stat}, space={self.table.meta.get('space')!r}, "
                f"{fp.get('runtime')} threads={fp.get('threads')}; overhead {a:+.4f} {b:+.4f}*n_parts "
                f"{c:+.4f}*Mparams ms{cal})")

    __repr__ = describe


def _lstsq(x: np.ndarray, y: np.ndarray, cols: Sequence[int]) -> np.ndarray:
    coef = np.zeros(x.shape[1])
    sol, *_ = np.linalg.lstsq(x[:, list(cols)], y, rcond=None)
    coef[list(cols)] = sol
    return coef


_MODELS = ([0], [0, 1], [0, 2], [0, 1, 2])


def fit_overhead(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], Optional[float]]:
    """Overhead coefficients from reference features ``x`` (rows [1, n_parts, Mparams]) and residuals ``y``.

    One slow reference (a busy moment on a shared machine) would tilt a 3-term fit, so with 5 or more
    references those more than 3 scaled MADs off the full fit are dropped (iterated).  The terms are
    then chosen by leave-one-out error among a / a + b*n / a + c*P / a + b*n + c*P (a model needs two
    more references than terms); the constant alone for 1-2 references.
    Returns (coef[3], kept mask, chosen columns, LOO rms or None).
    """
    n = len(y)
    keep = np.ones(n, dtype=bool)
    if n >= 5:
        for _ in range(10):
            res = y - x @ _lstsq(x[keep], y[keep], [0, 1, 2])
            # spread over all references, so that trimming cannot feed on itself
            med = float(np.median(res))
            mad = 1.4826 * float(np.median(np.abs(res - med)))
            new = np.abs(res - med) <= 3.0 * mad + 1e-9
            if new.sum() < 4 or (new == keep).all():
                break
            keep = new
    xk, yk = x[keep], y[keep]
    best: tuple[float, list[int]] | None = None
    for cols in _MODELS:
        if len(yk) < len(cols) + 2 or any(np.ptp(xk[:, c]) == 0 for c in cols[1:]):
            continue
        errs = [yk[i] - xk[i] @ _lstsq(np.delete(xk, i, 0), np.delete(yk, i), cols) for i in range(len(yk))]
        loo = float(np.sqrt(np.mean(np.square(errs))))
        if best is None or loo < best[0] - 1e-12:
            best = (loo, list(cols))
    if best is None:
        return _lstsq(xk, yk, [0]), keep, [0], None
    return _lstsq(xk, yk, best[1]), keep, best[1], best[0]


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------

def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    _, group, size = np.unique(np.asarray(x, dtype=float).ravel(), return_inverse=True, return_counts=True,
                               equal_nan=False)
    return (np.cumsum(size) - (size - 1) / 2.0)[group]  # a tie group's last rank minus half its extra members


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average-tied ranks); nan if either is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def prediction_metrics(predicted: Sequence[float], measured: Sequence[float],
                       flops: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """within_5pct / within_10pct (fractions), rmspe / mean / max |error| (%), bias (%), Spearman."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    err = 100.0 * (p - m) / m
    a = np.abs(err)
    out: dict[str, Any] = {"n": int(len(m)), **dict.fromkeys(
        ("within_5pct", "within_10pct", "rmspe", "mape", "max_abs_error_pct", "bias_pct"), math.nan)}
    if len(m):
        out.update(within_5pct=float(np.mean(a <= 5.0)), within_10pct=float(np.mean(a <= 10.0)),
                   rmspe=float(np.sqrt(np.mean(err ** 2))), mape=float(np.mean(a)), max_abs_error_pct=float(np.max(a)),
                   bias_pct=float(np.mean(err)))
    out["spearman"] = spearman(p, m)
    if flops is not None:
        out["spearman_flops"] = spearman(flops, m)
    return out


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

def default_table_path(space: SearchSpace, fingerprint: Mapping[str, Any], context: str = "alone") -> Path:
    """Cache location of a table for (space, measuring setup): $JAXNAS_CACHE or ~/.cache/jaxnas."""
    import hashlib
    import json

    root = Path(os.environ.get("JAXNAS_CACHE") or Path.home() / ".cache" / "jaxnas") / "latency"
    fp = hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True, default=str).encode()).hexdigest()[:10]
    suffix = "" if context == "alone" else f"-{context}"
    return root / f"{space.name}-{space.hash}-{fingerprint.get('backend')}-{fp}{suffix}.json"


def _finite(v: Any) -> Any:
    """None for a non-finite float (JSON has no nan); anything else as it is."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


RETEST_SPEARMAN_MIN = 0.9
RETEST_WITHIN_5_MIN = 0.9


def noise_warning(report: Mapping[str, Any]) -> Optional[str]:
    """One line when the retest (the measurements against themselves) is too poor for the validation to
    mean anything at ±5 % (Spearman < 0.9 or < 90 % of nets within ±5 % of their own retest)."""
    t = report.get("retest")
    if not t:
        return None
    rs, w5 = t.get("spearman"), t.get("within_5pct")
    bad = (rs is not None and rs < RETEST_SPEARMAN_MIN) or (w5 is not None and w5 < RETEST_WITHIN_5_MIN)
    if not bad:
        return None
    load = report.get("loadavg_1m")
    where = f" (load average {load[0]:.1f} -> {load[1]:.1f})" if load else ""
    rs_txt = f"{rs:.2f}" if rs is not None else "n/a"
    return (f"the machine is too noisy for this validation{where}: the nets measured twice agree only to Spearman "
            f"{rs_txt} with {w5:.0%} within ±5 % (need >= {RETEST_SPEARMAN_MIN} and {RETEST_WITHIN_5_MIN:.0%}); "
            f"the accuracy figures are bounded by that; rerun on an idle machine")


def format_validation(report: Mapping[str, Any]) -> str:
    """The report as text: every accuracy figure with its retest (the noise ceiling) next to it."""
    fp = report["fingerprint"]
    t = report.get("retest") or {}
    st = report["settings"]
    how = (f"{st.get('passes')} passes by the adaptive protocol (±{st['protocol']['rel_ci']:.0%} target)"
           if st.get("protocol") else f"{st.get('rounds')} rounds x {st.get('runs')} runs")
    head = (f"{report['space']} ({report['context']} table) on {fp.get('runtime')} threads={fp.get('threads')}: "
            f"{report['n']} nets, {how}, stat={report['stat']}, table build {report['timing_s']['table_build']:.0f} s, "
            f"measure {report['timing_s']['export_and_measure']:.0f} s")
    if report.get("loadavg_1m"):
        head += " (load {:.1f} -> {:.1f})".format(*report["loadavg_1m"])

    def row(name: str, key: str, fmt: str) -> str:
        v, r = report.get(key), t.get(key)
        txt = "n/a" if v is None else format(v, fmt)
        rt = "n/a" if r is None else format(r, fmt)
        return f"  {name:<13} {txt:>7}   (retest {rt})"

    lines = [head, row("within ±5 %", "within_5pct", ".0%"), row("within ±10 %", "within_10pct", ".0%"),
             row("RMSPE %", "rmspe", ".1f"), row("max |err| %", "max_abs_error_pct", ".1f"),
             row("Spearman", "spearman", ".3f")]
    sf = report.get("spearman_flops")
    lines.append(f"  {'MACs Spearman':<13} {'n/a' if sf is None else format(sf, '.3f'):>7}   (the FLOPs proxy)")
    cal, stale = report.get("calibration"), report.get("uncalibrated")
    if cal and stale:
        where = "stored in the table" if cal.get("stored_in") else "not stored"
        lines.append(f"  recalibrated: the table's {cal['n']} references run at x{cal['scale']:.3f} their table times "
                     f"(p10 {cal['ratio_p10']:.3f}, p90 {cal['ratio_p90']:.3f}; {where}); at the table's previous "
                     f"scale x{cal.get('previous_scale', 1.0):.3f}: within ±5 % {stale['within_5pct']:.0%}, within "
                     f"±10 % {stale['within_10pct']:.0%}, bias {stale['bias_pct']:+.1f} %")
    elif report.get("scale", 1.0) != 1.0:
        lines.append(f"  predictions scaled x{report['scale']:.3f} by the table's stored calibration")
    if report.get("untrusted"):
        lines.append(f"  untrusted measurements: {len(report['untrusted'])} of {report['n']}")
    return "\n".join(lines)


def validate_space(space: Union[str, "os.PathLike[str]", Mapping[str, Any], SearchSpace], backend: Any, samples: int,
                   *, table_path: Optional[Union[str, "os.PathLike[str]"]] = None, threads: int = 1, seed: int = 0,
                   warmup: Optional[int] = None, runs: Optional[int] = None, stat: str = DEFAULT_STAT,
                   rounds: Optional[int] = None, context: Optional[str] = None,
                   progress: Union[bool, Callable[[str], None]] = True,
                   protocol: Optional[Any] = None, recalibrate: Optional[bool] = None) -> dict[str, Any]:
    """Predict and measure ``samples`` random architectures of ``space`` on ``backend``; report the fit.

    The table at ``table_path`` is loaded and checked against the space and the backend's fingerprint,
    or built (resumably, with the same timing) when missing; with ``table_path=None`` it lives in
    :func:`default_table_path`.  ``context``: how the table times blocks ('alone' or 'network', see
    :func:`latency.builder.build_table`); None: an existing table's own, 'alone' for a new one.

    Each architecture is exported whole (ONNX / TFLite like the table's parts) and timed in ``rounds``
    passes over all samples (default 2), each pass one adaptive measurement of every net with their
    rounds interleaved (``protocol``, default :data:`latency.builder.TABLE_PROTOCOL`;
    :func:`latency.builder.measure_models`); a net's figure pools its passes' rounds.  With
    ``runs`` given each pass is ``warmup`` + ``runs`` fixed runs (default 3 passes) and a net keeps each
    statistic's median pass (:func:`median_of`).  The retest compares the odd passes with the even ones:
    the agreement of the measurements with themselves, the ceiling of any predictor's.

    Returns a JSON-able dict: within_5pct, within_10pct, rmspe, spearman, spearman_flops, n, rows, retest
    (the same figures, measurement against measurement), untrusted (nets whose timing was flagged),
    table_untrusted, warnings (one line each: a flagged measurement, flagged table entries, a machine
    too noisy for the requested precision), scale, ...

    ``recalibrate`` (default: whenever the table holds reference networks): the table's references are
    timed again in the same passes, interleaved with the samples, the predictions are scaled by their drift
    since the table was built (:func:`latency.calibrate.drift_scale`, per statistic) and that calibration is
    stored in the table, atomically, as ``jaxnas latency calibrate`` would store it, so the predictor a
    search later reads from the table is the one validated here.  A table is a snapshot of a drifting
    machine (here nets ran 4-20 % faster hours to a day after their table was built), and a validation that
    left the drift in would measure the day, not the predictor.  ``calibration`` and ``uncalibrated`` (the
    figures at the table's previously stored scale) are reported with it.  ``recalibrate=False`` validates
    the table as stored and leaves it unchanged; ``True`` requires references.
    """
    from .builder import (_progress, build_table, combine, grid_parts, median_of, open_existing_table,
                          resolve_backend, time_networks, timing_mode, untrusted_line)
    from .calibrate import drift_scale, drift_warning, reference_specs, store_calibration
    from .timing import TimingWarning

    if isinstance(samples, bool) or int(samples) < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    protocol, warmup = timing_mode(protocol, warmup, runs)
    fixed = runs is not None
    passes = max(1, int(rounds if rounds is not None else (3 if fixed else 2)))
    space = load_space(space)
    be = resolve_backend(backend, threads)
    fp = be.fingerprint(1).to_dict()
    log = _progress(progress)
    path = Path(table_path) if table_path is not None else default_table_path(space, fp, context or "alone")
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    build_s = 0.0
    table_kw = dict(threads=threads, warmup=warmup, runs=runs, progress=progress, seed=seed, protocol=protocol,
                    rounds=passes if fixed else None)
    if path.exists():
        table = open_existing_table(path, space, fp, context=context)
        step, context = table.meta.get("channel_step"), table.meta.get("context", "alone")
        if any(g.key not in table for p in space.unique_parts() for g in grid_parts(p, step)):
            log(f"[validate] {path} is incomplete: resuming its build")
            table = build_table(space, be, path, channel_step=step, context=context, **table_kw)
            build_s = time.perf_counter() - t0
        if not any(k.startswith("ref:") for k in table):
            log(f"[validate] {path} has no reference architectures: the overhead term is 0")
    else:
        log(f"[validate] building the latency table {path}")
        table = build_table(space, be, path, context=context or "alone", **table_kw)
        build_s = time.perf_counter() - t0
    predictor = LatencyPredictor(table, stat=stat, warn_untrusted=False)
    predictor.path = str(path)

    rng = np.random.default_rng(seed)
    specs = [space.sample(rng, name=f"{space.name}_sample{i}") for i in range(int(samples))]
    refs = reference_specs(space, table) if recalibrate is not False else {}
    if recalibrate and not refs:
        raise TableError(f"{path} holds no reference networks (ref:*) to recalibrate against; rebuild it with "
                         "references (the default) or validate without recalibrating")
    timed = specs + list(refs.values())  # the references ride in the same passes, their rounds interleaved
    rows: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    measured = time_networks(be, timed, protocol=protocol, warmup=warmup, runs=runs, passes=passes, seed=seed,
                             log=log, what="[validate] ")
    measure_s = time.perf_counter() - t1
    merge = median_of if fixed else combine
    measured, ref_measured = measured[:len(specs)], measured[len(specs):]  # the retest compares samples only
    stats = [merge(m) for m in measured]
    ref_now = dict(zip(refs, (merge(m) for m in ref_measured)))
    calibration = {st: drift_scale({k: table.ms(k, st) for k in refs}, {k: getattr(v, st) for k, v in ref_now.items()})
                   for st in STATS} if refs else None
    stored_scale = predictor.scale

    flops = [float(macs(s)) for s in specs]
    by_stat: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TimingWarning)
        for st in STATS:
            pr = LatencyPredictor(table, stat=st, warn_untrusted=False,
                                  scale=calibration[st]["scale"] if calibration else None)
            pred = [pr.predict(s) for s in specs]
            meas = [getattr(x, st) for x in stats]
            by_stat[st] = {**prediction_metrics(pred, meas, flops), "overhead_coef": pr.overhead["coef"],
                           "scale": pr.scale}
            if calibration:
                stale = LatencyPredictor(table, stat=st, warn_untrusted=False)
                stale_fit = prediction_metrics([stale.predict(s) for s in specs], meas, flops)
                by_stat[st]["uncalibrated"] = {k: _finite(v) for k, v in stale_fit.items()}
            if st == stat:
                for i, (spec, p, m) in enumerate(zip(specs, pred, meas)):
                    rows.append({"name": spec.name, "macs": int(flops[i]), "n_parts": len(predictor.parts(spec)),
                                 "predicted_ms": p, "measured_ms": m, "error_pct": 100.0 * (p - m) / m,
                                 "measured": stats[i].to_dict(), "flags": list(stats[i].flags),
                                 "arch": spec.metadata.get("arch")})
    main = by_stat[stat]
    stored_error = None
    if calibration:
        # Stored only now, after every prediction above, so that "uncalibrated" is the table as it came.
        calibration[stat]["previous_scale"] = stored_scale
        try:
            store_calibration(table, path, {**calibration[stat], "stat": stat, "by": "validate"})
        except OSError as e:  # a read-only table: the figures stand, the table keeps its old scale
            stored_error = f"could not store the calibration in {path} ({e}); searches reading it keep x{stored_scale:.3f}"
    # The noise ceiling: the same nets measured again (the odd passes against the even ones) agree only
    # this well, and no predictor can agree better with one measurement than the measurements with each
    # other.
    retest = None
    if passes >= 2:
        halves = [(merge(m[1::2]), merge(m[0::2])) for m in measured]
        for st in STATS:
            rt = prediction_metrics([getattr(a, st) for a, _ in halves], [getattr(b, st) for _, b in halves])
            rt = {k: _finite(v) for k, v in rt.items()}
            by_stat[st]["retest"] = {k: rt[k] for k in ("within_5pct", "within_10pct", "rmspe", "spearman")}
            if st == stat:
                retest = rt
    untrusted = [row["name"] for row in rows if row["flags"]]
    report = {
        "space": space.name, "space_hash": space.hash, "backend": fp.get("backend"), "stat": stat,
        "context": table.meta.get("context", "alone"),
        **{k: main[k] for k in ("n", "within_5pct", "within_10pct", "rmspe", "mape", "max_abs_error_pct", "bias_pct")},
        "spearman": _finite(main["spearman"]), "scale": main["scale"],
        "calibration": ({**calibration[stat], "stored_in": None if stored_error else str(path)}
                        if calibration else None),
        "uncalibrated": main.get("uncalibrated"),
        "spearman_flops": _finite(main["spearman_flops"]), "retest": retest,
        "overhead": dict(predictor.overhead),
        # every statistic's figures (and retest, with >= 2 passes)
        "by_stat": {k: {kk: _finite(vv) for kk, vv in v.items()} for k, v in by_stat.items()},
        "fingerprint": fp, "table_path": str(path), "table_entries": len(table),
        "untrusted": untrusted, "table_untrusted": sorted(predictor.untrusted),
        "settings": {"samples": int(samples), "seed": seed, "warmup": warmup, "runs": runs, "rounds": passes,
                     "passes": passes, "threads": threads, "protocol": protocol.to_dict() if protocol else None},
        "timing_s": {"table_build": build_s, "export_and_measure": measure_s},
        "loadavg_1m": [load0, os.getloadavg()[0]] if load0 is not None else None,
        "rows": rows,
    }
    warn: list[str] = []
    if untrusted:
        first = next(r for r in rows if r["flags"])
        warn.append(f"{len(untrusted)} of {len(rows)} measured nets are untrusted timings (e.g. {first['name']}: "
                    f"{first['flags'][0]}); their errors may be the machine's, not the predictor's")
    more = (stored_error, drift_warning(calibration[stat]) if calibration else None, untrusted_line(table, str(path)),
            noise_warning(report))
    report["warnings"] = warn + [w for w in more if w]
    return report
