"""Adaptive timing: time until the median is known to a requested precision, and say when it is not.

One measurement is a sequence of **rounds**.  A round opens a fresh runtime session (onnxruntime
``InferenceSession``, LiteRT interpreter; runtimes without sessions reuse theirs), warms it up, and times
a batch of runs; its value is the median of those runs.  Rounds repeat until the confidence interval of
the median over the round values is within ``rel_ci`` of it (default ±1 % at 95 %), or a time cap is
reached.

Why rounds of fresh sessions, and why this interval
    Runs inside one session are not independent samples of what a user gets: onnxruntime sessions of one
    net were seen to run 18 % faster than other sessions of the same net, every run of them, so no
    number of runs in one session measures the net (the spread across sessions is the real uncertainty).
    Runs are also serially correlated (a busy spell slows a stretch of them).  Round values from fresh
    sessions are closer to exchangeable, so the interval is taken over round medians, not runs.  Their
    distribution is skewed and sometimes bimodal (session modes, load), so the interval is the
    distribution-free one of the median from order statistics: for n values the number below the true
    median is Binomial(n, 1/2), hence ``[x_(k), x_(n-k+1)]`` covers it with probability
    ``1 - 2 P(Bin(n, 1/2) <= k-1)``; k is the largest rank with coverage >= ``confidence``.  It needs no
    variance estimate and no normality, and it is exact for any continuous distribution; it needs
    n >= 6 rounds at 95 %.  The reported median is the median of round medians (the usual session),
    the other statistics (p10, p90, min, mean) are over all kept runs.

What makes a measurement untrustworthy, and what happens then
    * preemption: on a single-threaded runtime a run whose wall time exceeds the timing thread's CPU time
      by more than ``max(preempt_abs_ms, preempt_rel * median)`` waited for the core; the run is dropped
      (another process's time slice is not the model's latency).
    * outlier bursts: a stretch of runs (a window of 10 % of the round, at least 3) whose median is more
      than ``burst_rel`` above the round's lower quartile; measured here under SCHED_FIFO, where nothing
      preempts the timing thread, stretches of ~5 ms ran 25-45 % slower (interference through the shared
      cache or the host), and under heavy load they covered most of some rounds.  Their slow runs are
      dropped like preempted ones.  A round that keeps less than a quarter of its runs is discarded and
      re-taken; too many discarded rounds flag the measurement (``bursts``).
    * round-to-round drift: a monotone trend of the round values (Mann-Kendall test, p < 0.01) that moves
      them by more than ``drift_rel`` over the measurement: it is re-measured from scratch
      (``retries``), and flagged (``drift``) if the trend is still there.
    * bimodal sessions: the sorted round values split into two groups (each >= 15 % of rounds, at least
      3) with a gap wider than either group and >= ``mode_gap_rel`` of the median.  With fresh sessions
      every round this is a property of the runtime, not noise: the median reports the majority mode, and
      the note says how often and how much faster the other mode was.  Where the modes are so even that
      the interval cannot close, the measurement ends at the cap and is flagged ``imprecise`` with
      the modes named.
    * the cap: a measurement stopped by the cap is reported as ``capped``; it is flagged ``imprecise``
      only when its interval is more than ``imprecise_factor`` x the requested one (or has no interval).
    Flags are one-line strings starting with their code; ``TimingStats.trusted`` is False when there is
    any, and backends emit a :class:`TimingWarning` for a flagged measurement, so that it is never used
    silently.

Scheduling (measured here, 2 shared cores, mbv2-small nets on onnxruntime 1 thread): at load ~7 the
per-session medians spread 4-17 % (CV) with default scheduling, 5-15 % with the timing thread pinned
to one core, 4-12 % at nice -20, and 0.7-1.3 % with the timing thread under ``SCHED_FIFO``; with
``benchmarks/timing_noise.py`` at load 7-8 (4 nets x 2 repetitions, settings interleaved): CV 6.8 %
default, 5.4 % pinned, 3.5 % nice -10, 3.4 % FIFO, 2.4 % FIFO + pinned; runs dropped as preempted or in
bursts 25 / 23 / 22 / 3.7 / 3.3 %; time for the ±1 % interval 10.1 / 10.2 / 10.1 / 2.1 / 3.4 s
(capped 4 / 5 / 6 / 1 / 0 of 8).  So ``priority="auto"`` runs the timing thread under ``SCHED_FIFO``
where the process may (root or CAP_SYS_NICE) and the runtime computes on the calling thread only (1
thread; a FIFO thread spinning for a normal-priority worker on its own core would starve it), else at
nice -10 where allowed; it sleeps ~10 % of each round so that the kernel's real-time throttling never
cuts into a run, and restores the thread's policy afterwards.  Pinning on top of FIFO was not clearly
better (one run better, one worse) and is off by default (``pin``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from jaxnas.errors import UserError

from .stats import Measurement, TimingStats

__all__ = [
    "TimingProtocol", "DEFAULT_PROTOCOL", "TimingWarning", "TimingError", "Timer", "RoundResult", "Comparison",
    "median_ci", "median_ci_ranks", "min_rounds_for", "relative_halfwidth", "mann_kendall", "theil_sen_slope",
    "find_modes", "clean_round", "burst_mask", "measure_interleaved", "drift_of", "timing_priority",
    "measure_adaptive", "compare_adaptive",
    "pool", "warn_if_flagged",
]


class TimingWarning(UserWarning):
    """A measurement is flagged untrustworthy (drift, bursts, imprecise at the cap)."""


class TimingError(UserError, RuntimeError):
    """No usable measurement could be taken (every round discarded)."""


# ----------------------------------------------------------------------------------------------------
# Protocol
# ----------------------------------------------------------------------------------------------------

PRIORITIES = ("auto", "fifo", "nice", "none")


@dataclass(frozen=True)
class TimingProtocol:
    """How long and how to time.  See the module doc for the rules; every threshold is relative."""

    rel_ci: float = 0.01            # target: half-width of the CI of the median, relative to the median
    confidence: float = 0.95
    max_time_s: float = 10.0        # cap per attempt (sessions, warm-up and runs)
    min_rounds: int = 0             # 0: the fewest rounds that give an interval at `confidence` (6 at 95 %)
    max_rounds: int = 400
    round_s: float = 0.05           # timed seconds per round (at least min_round_runs runs)
    min_round_runs: int = 5
    max_round_runs: int = 2000
    warmup: int = 10                # warm-up runs per session: at least 2, at most this many ...
    warmup_s: float = 0.05          # ... or until this long has passed
    fresh_sessions: bool = True     # a new runtime session every round (where the runtime has sessions)
    priority: str = "auto"          # auto | fifo | nice | none (see the module doc)
    pin: Optional[int] = None       # pin the timing thread to this CPU (None: leave it)
    retries: int = 1                # re-measurements after drift
    drift_rel: float = 0.02
    mode_gap_rel: float = 0.03
    burst_rel: float = 0.2
    preempt_abs_ms: float = 0.02
    preempt_rel: float = 0.05
    imprecise_factor: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.rel_ci < 1:
            raise ValueError(f"rel_ci must be in (0, 1), got {self.rel_ci!r}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence!r}")
        if not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be > 0, got {self.max_time_s!r}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")
        for name in ("min_round_runs", "max_round_runs", "max_rounds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0 or self.retries < 0 or self.min_rounds < 0:
            raise ValueError("warmup, retries and min_rounds must be >= 0")

    @property
    def rounds_needed(self) -> int:
        """The fewest rounds before the stopping rule is consulted."""
        return max(int(self.min_rounds), min_rounds_for(self.confidence))

    def replace(self, **kw: Any) -> "TimingProtocol":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_PROTOCOL = TimingProtocol()


# ----------------------------------------------------------------------------------------------------
# Statistics (pure functions)
# ----------------------------------------------------------------------------------------------------

def median_ci_ranks(n: int, confidence: float = 0.95) -> Optional[tuple[int, int]]:
    """0-based ranks ``(k-1, n-k)`` of the order-statistic CI of the median, or None when even
    ``[min, max]`` covers the median with probability below ``confidence`` (n < 6 at 95 %)."""
    alpha = 1.0 - float(confidence)
    best, below = None, 0  # below: the number of outcomes of n fair coins with fewer than k heads
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1)
        if 2 * below / 2 ** n > alpha + 1e-12:  # 2 P(Bin(n, 1/2) <= k-1), exact
            break
        best = k
    return None if best is None else (best - 1, n - best)


def min_rounds_for(confidence: float) -> int:
    """The fewest values whose ``[min, max]`` covers the median with probability >= ``confidence``."""
    n = 1
    while median_ci_ranks(n, confidence) is None:
        n += 1
    return n


def median_ci(values: Sequence[float], confidence: float = 0.95) -> Optional[tuple[float, float]]:
    """Distribution-free confidence interval of the median of ``values`` (order statistics)."""
    v = np.sort(np.asarray(values, dtype=float))
    ranks = median_ci_ranks(len(v), confidence)
    if ranks is None:
        return None
    return float(v[ranks[0]]), float(v[ranks[1]])


def relative_halfwidth(center: float, ci: Optional[tuple[float, float]]) -> float:
    """The larger side of an interval around ``center``, relative to it (inf without an interval)."""
    if ci is None or not center > 0:
        return math.inf
    return max(center - ci[0], ci[1] - center) / center


def mann_kendall(values: Sequence[float]) -> tuple[float, float]:
    """Mann-Kendall trend test: ``(z, two-sided p)`` (variance with the tie correction)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 3:
        return 0.0, 1.0
    d = np.sign(x[None, :] - x[:, None])
    s = float(np.triu(d, 1).sum())
    _, counts = np.unique(x, return_counts=True)
    var = (n * (n - 1) * (2 * n + 5) - float(np.sum(counts * (counts - 1) * (2 * counts + 5)))) / 18.0
    if var <= 0:
        return 0.0, 1.0
    z = (s - math.copysign(1.0, s)) / math.sqrt(var) if s != 0 else 0.0
    p = math.erfc(abs(z) / math.sqrt(2.0))
    return float(z), float(p)


def theil_sen_slope(values: Sequence[float]) -> float:
    """Median of pairwise slopes (per index step): a trend estimate robust to outlying rounds."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return 0.0
    i, j = np.triu_indices(n, 1)
    return float(np.median((x[j] - x[i]) / (j - i)))


def drift_of(values: Sequence[float], *, rel: float, p_max: float = 0.01) -> Optional[str]:
    """A one-line description of a significant monotone drift larger than ``rel`` overall, else None."""
    x = np.asarray(values, dtype=float)
    if len(x) < 8:
        return None
    z, p = mann_kendall(x)
    med = float(np.median(x))
    change = theil_sen_slope(x) * (len(x) - 1) / med if med > 0 else 0.0
    if p < p_max and abs(change) > rel:
        return (f"drift: round values moved {change:+.1%} over {len(x)} rounds "
                f"(Mann-Kendall p={p:.1g})")
    return None


@dataclass(frozen=True)
class Modes:
    """Two groups of round values: the lower holds ``low_count`` of ``n``."""

    low: float
    high: float
    low_count: int
    n: int

    def describe(self) -> str:
        low_major = self.low_count * 2 >= self.n
        minority = self.n - self.low_count if low_major else self.low_count
        if low_major:
            return (f"bimodal sessions: {minority} of {self.n} rounds {self.high / self.low - 1:.0%} slower "
                    f"({self.high:.4g} vs {self.low:.4g} ms)")
        return (f"bimodal sessions: {minority} of {self.n} rounds {1 - self.low / self.high:.0%} faster "
                f"({self.low:.4g} vs {self.high:.4g} ms)")


def find_modes(values: Sequence[float], *, gap_rel: float = 0.03, min_frac: float = 0.15,
               min_count: int = 3) -> Optional[Modes]:
    """Two clusters of ``values``: a gap between consecutive sorted values that is wider than the range
    of either side and at least ``gap_rel`` of the median, with each side holding at least
    ``max(min_count, min_frac * n)`` values.  The widest such gap, or None."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    m = max(int(min_count), int(math.ceil(min_frac * n)))
    if n < 2 * m:
        return None
    med = float(np.median(v))
    gaps = {i: float(v[i] - v[i - 1]) for i in range(m, n - m + 1)}
    # v is sorted, so the sides v[:i] and v[i:] span v[i-1] - v[0] and v[-1] - v[i]
    fits = [i for i, gap in gaps.items() if gap >= gap_rel * med and gap > max(v[i - 1] - v[0], v[-1] - v[i])]
    if not fits:
        return None
    i = max(fits, key=gaps.__getitem__)  # the first of the widest
    return Modes(low=float(np.median(v[:i])), high=float(np.median(v[i:])), low_count=i, n=n)


@dataclass
class RoundResult:
    """One round of one model: kept run times (ms, in time order) and why runs/rounds were dropped."""

    runs: np.ndarray
    total: int
    dropped: int = 0              # runs dropped as preempted
    status: str = "ok"            # ok | preempted / burst (lost half its runs to either: the round is discarded)
    burst_runs: int = 0           # runs dropped inside outlier bursts

    @property
    def median(self) -> float:
        return float(np.median(self.runs)) if len(self.runs) else math.nan


def burst_mask(runs: Sequence[float], burst_rel: float = 0.2) -> np.ndarray:
    """True for the runs inside an outlier burst: the runs above ``(1 + burst_rel)`` x the lower quartile
    that lie in a window of ``max(3, 10 %)`` consecutive runs whose median is above that too.

    Isolated slow runs are no burst (a window's median ignores them); a stretch of interference (another
    process on the shared cache, the host) is.  The threshold hangs on the lower quartile, not the
    median, because on a busy machine the bursts can cover most of a round and carry its median with
    them; a quiet round's quartile is within a few per cent of its median."""
    x = np.asarray(runs, dtype=float)
    mask = np.zeros(len(x), dtype=bool)
    win = max(3, int(math.ceil(0.1 * len(x))))
    if len(x) < 2 * win:
        return mask
    thr = float(np.percentile(x, 25)) * (1.0 + burst_rel)
    hot = np.flatnonzero(np.median(np.lib.stride_tricks.sliding_window_view(x, win), axis=1) > thr)
    for i in hot:
        seg = slice(i, i + win)
        mask[seg] |= x[seg] > thr  # the slow runs of a hot window (its fast ones are not interference)
    return mask


MIN_KEPT = 0.25  # a round that keeps less than this fraction of its runs is discarded


def clean_round(wall_ms: Sequence[float], cpu_ms: Optional[Sequence[float]] = None, *,
                preempt_abs_ms: float = 0.02, preempt_rel: float = 0.05, burst_rel: float = 0.2) -> RoundResult:
    """Drop preempted runs (wall - CPU time above the threshold), then the runs of outlier bursts
    (:func:`burst_mask`); a round that keeps less than a quarter of its runs is marked for discarding
    (``preempted`` or ``burst``, whichever took more)."""
    wall = np.asarray(wall_ms, dtype=float)
    n = len(wall)
    keep = np.ones(n, dtype=bool)
    if cpu_ms is not None and n:
        cpu = np.asarray(cpu_ms, dtype=float)
        thr = max(float(preempt_abs_ms), float(preempt_rel) * float(np.median(np.minimum(wall, cpu))))
        keep = (wall - cpu) <= thr
    kept = wall[keep]
    dropped = int(n - keep.sum())
    if n == 0 or len(kept) < MIN_KEPT * n:
        return RoundResult(kept, n, dropped, "preempted")
    burst = burst_mask(kept, burst_rel)
    clean = kept[~burst]
    status = "ok" if len(clean) >= MIN_KEPT * n else ("burst" if burst.sum() >= dropped else "preempted")
    return RoundResult(clean, n, dropped, status, int(burst.sum()))


# ----------------------------------------------------------------------------------------------------
# Scheduling of the timing thread
# ----------------------------------------------------------------------------------------------------

FIFO_PRIORITY = 10


@contextlib.contextmanager
def timing_priority(priority: str = "auto", *, exclusive: bool = True,
                    pin: Optional[int] = None) -> Iterator[dict[str, Any]]:
    """Raise the calling thread's scheduling priority (and pin it) for a timing loop; restore afterwards.

    ``auto``/``fifo``: ``SCHED_FIFO`` when ``exclusive`` (the runtime computes on this thread only) and
    the process may; otherwise (and for ``nice``) nice -10 where allowed.  Yields what was applied:
    ``{"priority": "SCHED_FIFO 10" | "nice -10" | "default", "pin": cpu or None}``.
    """
    applied: dict[str, Any] = {"priority": "default", "pin": None}
    undo: list[Callable[[], None]] = []
    try:
        if pin is not None and hasattr(os, "sched_setaffinity"):
            try:
                before = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {int(pin)})
                undo.append(lambda: os.sched_setaffinity(0, before))
                applied["pin"] = int(pin)
            except OSError:
                pass
        if priority in ("auto", "fifo") and exclusive and hasattr(os, "SCHED_FIFO"):
            try:
                policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
                undo.append(lambda: os.sched_setscheduler(0, policy, param))
                applied["priority"] = f"SCHED_FIFO {FIFO_PRIORITY}"
            except (OSError, AttributeError):
                pass
        if applied["priority"] == "default" and priority != "none" and hasattr(os, "setpriority"):
            try:
                before_nice = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, 0, -10)  # Linux: the calling thread
                undo.append(lambda: os.setpriority(os.PRIO_PROCESS, 0, before_nice))
                applied["priority"] = "nice -10"
            except OSError:
                pass
        yield applied
    finally:
        for fn in reversed(undo):
            try:
                fn()
            except OSError:  # pragma: no cover - restoring our own thread's settings
                pass


# ----------------------------------------------------------------------------------------------------
# The timing engine
# ----------------------------------------------------------------------------------------------------

class Timer(Protocol):
    """A model prepared for timing on one runtime (``backend.prepare(model, input_shape)``).

    ``session()`` returns the run function of a fresh session (or the same one for runtimes without
    sessions); with ``self_timed`` it returns its own milliseconds (CUDA events) or ``(wall_ms, cpu_ms)``.
    ``cpu_clock``: the timing thread's CPU-time clock in ns when the runtime computes on it (enables the
    preemption check).  ``exclusive``: the runtime computes on the calling thread only.
    """

    self_timed: bool
    cpu_clock: Optional[Callable[[], int]]
    exclusive: bool

    def session(self) -> Callable[[], Any]: ...

    def close(self) -> None: ...


def _take_round(timer: Timer, p: TimingProtocol, now: Callable[[], float],
                cached: dict[int, Callable[[], Any]]) -> RoundResult:
    key = id(timer)
    if p.fresh_sessions or key not in cached:
        cached[key] = timer.session()
    run = cached[key]
    t0 = now()
    k = 0
    while k < 2 or (k < p.warmup and now() - t0 < p.warmup_s):
        run()
        k += 1
    walls: list[float] = []
    cpus: list[float] = []
    total = 0.0
    perf = time.perf_counter_ns
    cpu_clock = timer.cpu_clock
    while len(walls) < p.min_round_runs or (total < p.round_s * 1e3 and len(walls) < p.max_round_runs):
        if timer.self_timed:
            out = run()
            if isinstance(out, tuple):
                wall = float(out[0])
                cpus.append(float(out[1]))
            else:
                wall = float(out)
        elif cpu_clock is not None:
            c0 = cpu_clock()
            t = perf()
            run()
            wall = (perf() - t) / 1e6
            cpus.append((cpu_clock() - c0) / 1e6)
        else:
            t = perf()
            run()
            wall = (perf() - t) / 1e6
        walls.append(wall)
        total += wall
    return clean_round(walls, cpus if len(cpus) == len(walls) else None, preempt_abs_ms=p.preempt_abs_ms,
                       preempt_rel=p.preempt_rel, burst_rel=p.burst_rel)


@dataclass
class _Attempt:
    applied: dict[str, Any]
    rounds: list[list[RoundResult]] = dataclasses.field(default_factory=list)  # each [contender 0, 1, ...]
    discarded: dict[str, int] = dataclasses.field(default_factory=lambda: {"preempted": 0, "burst": 0})
    dropped_runs: int = 0
    burst_runs: int = 0
    total_runs: int = 0
    capped: bool = False
    elapsed_s: float = 0.0

    def add(self, results: Sequence[RoundResult]) -> bool:
        """Count one round (one result per contender); keep it unless any contender's was disturbed."""
        self.dropped_runs += sum(r.dropped for r in results)
        self.burst_runs += sum(r.burst_runs for r in results)
        self.total_runs += sum(r.total for r in results)
        bad = [r.status for r in results if r.status != "ok"]
        if bad:
            self.discarded[bad[0]] += 1
            return False
        self.rounds.append(list(results))
        return True


def _values(rounds: list[list[RoundResult]], j: int) -> np.ndarray:
    return np.asarray([r[j].median for r in rounds], dtype=float)


def _ratios(rounds: list[list[RoundResult]], j: int) -> np.ndarray:
    return _values(rounds, j) / _values(rounds, 0)


def _targets(rounds: list[list[RoundResult]]) -> list[np.ndarray]:
    """What the stopping rule looks at: round medians (one model), per-round ratios to model 0 (more)."""
    k = len(rounds[0])
    return [_values(rounds, 0)] if k == 1 else [_ratios(rounds, j) for j in range(1, k)]


def _precise(values: np.ndarray, p: TimingProtocol) -> bool:
    """The stopping rule: enough values, and the interval of their median within ``rel_ci`` of it."""
    return len(values) >= p.rounds_needed and \
        relative_halfwidth(float(np.median(values)), median_ci(values, p.confidence)) <= p.rel_ci


def _run_attempt(timers: Sequence[Timer], p: TimingProtocol, now: Callable[[], float]) -> _Attempt:
    start = now()
    cached: dict[int, Callable[[], Any]] = {}
    n = len(timers)
    with timing_priority(p.priority, exclusive=all(t.exclusive for t in timers), pin=p.pin) as applied:
        att = _Attempt(dict(applied))
        fifo = applied["priority"].startswith("SCHED_FIFO")
        for taken in itertools.count():
            if len(att.rounds) >= p.max_rounds or now() - start >= p.max_time_s:
                att.capped = True
                break
            r0 = now()
            shift = taken % n  # rotate who goes first: no position bias
            res = {j: _take_round(timers[j], p, now, cached) for j in [*range(shift, n), *range(shift)]}
            if fifo:  # leave the core to others for a moment: RT throttling never cuts into a run
                time.sleep(max(0.001, 0.1 * (now() - r0)))
            if att.add([res[j] for j in range(n)]) and all(_precise(t, p) for t in _targets(att.rounds)):
                break
    att.elapsed_s = now() - start
    return att


def _drift(att: _Attempt, p: TimingProtocol) -> Optional[str]:
    """The first drift (:func:`drift_of`) among the attempt's stopping-rule targets, or None."""
    if not att.rounds:
        return None
    return next((d for d in (drift_of(t, rel=p.drift_rel) for t in _targets(att.rounds)) if d), None)


def _run(timers: Sequence[Timer], p: TimingProtocol, now: Callable[[], float]) -> tuple[_Attempt, list[str], list[str]]:
    """Attempts until no drift (or out of retries); returns (last attempt, flags, notes)."""
    notes: list[str] = []
    att = _run_attempt(timers, p, now)
    for _ in range(int(p.retries)):
        drift = _drift(att, p)
        if drift is None:
            break
        notes.append(f"re-measured after {drift}")
        att = _run_attempt(timers, p, now)
    flags, more = _verdict(att, p, drift_flags=True)
    return att, flags, notes + more


def _verdict(att: _Attempt, p: TimingProtocol, *, drift_flags: bool) -> tuple[list[str], list[str]]:
    """Flags (drift, bursts) and notes (discarded rounds, dropped runs, the cap, scheduling) of an attempt."""
    flags: list[str] = []
    notes: list[str] = []
    n = len(att.rounds)
    drift = _drift(att, p)
    if drift:
        (flags if drift_flags else notes).append(drift)
    n_disc = sum(att.discarded.values())
    if n_disc >= 3 and n_disc * 2 > n:
        flags.append(f"bursts: {n_disc} of {n + n_disc} rounds discarded "
                     f"({att.discarded['burst']} outlier bursts, {att.discarded['preempted']} preempted)")
    elif n_disc:
        notes.append(f"{n_disc} of {n + n_disc} rounds discarded ({att.discarded['burst']} outlier bursts, "
                     f"{att.discarded['preempted']} preempted) and re-taken")
    if att.dropped_runs or att.burst_runs:
        notes.append(f"{att.dropped_runs + att.burst_runs} of {att.total_runs} runs dropped ({att.dropped_runs} "
                     f"preempted, {att.burst_runs} in outlier bursts)")
    if att.capped:
        notes.append(f"stopped by the cap after {n} rounds ({att.elapsed_s:.1f} s)")
    if att.applied.get("priority") != "default" or att.applied.get("pin") is not None:
        notes.append(f"timing thread: {att.applied['priority']}"
                     + (f", pinned to CPU {att.applied['pin']}" if att.applied.get("pin") is not None else ""))
    return flags, notes


def measure_interleaved(timers: Sequence[Timer], protocol: Optional[TimingProtocol] = None, *,
                        now: Callable[[], float] = time.perf_counter,
                        on_done: Optional[Callable[[int, TimingStats], None]] = None,
                        what: Optional[Sequence[str]] = None) -> list[TimingStats]:
    """Time several models with their rounds interleaved (one round of each in turn, the order rotating),
    each until the interval of its own median meets ``rel_ci``; it then leaves the rotation and
    ``on_done(j, stats)`` is called.  The cap is ``max_time_s`` per model, shared.

    Why: a busy spell on a shared machine lasts seconds to minutes, longer than one model's measurement,
    and it would move every round of the model measured during it (a tight interval around a wrong
    value; measured here: two passes of 30 nets agreed to only 3.5-6 % RMS while each net's interval was
    ±1 %).  Interleaved, every model's rounds spread over the whole run and a spell hits a few rounds of
    many models.  A drift over the run is therefore the machine's, not a model's: it is a note here, not
    a flag (and no re-measurement)."""
    p = protocol or DEFAULT_PROTOCOL
    k = len(timers)
    if k == 0:
        return []
    names = list(what) if what is not None else [f"model {j}" for j in range(k)]
    start = now()
    budget = p.max_time_s * k
    out: list[Optional[TimingStats]] = [None] * k
    active = list(range(k))
    cached: dict[int, Callable[[], Any]] = {}

    def finish(j: int, capped: bool) -> None:
        atts[j].capped = capped
        out[j] = _single(atts[j], p, *_verdict(atts[j], p, drift_flags=False), names[j])
        if on_done is not None:
            on_done(j, out[j])

    with timing_priority(p.priority, exclusive=all(t.exclusive for t in timers), pin=p.pin) as applied:
        atts = [_Attempt(dict(applied)) for _ in range(k)]
        fifo = applied["priority"].startswith("SCHED_FIFO")
        sweep = 0
        while active:
            if now() - start >= budget:
                for j in list(active):
                    finish(j, True)
                break
            shift = sweep % len(active)
            for j in active[shift:] + active[:shift]:
                r0 = now()
                r = _take_round(timers[j], p, now, cached)
                if p.fresh_sessions:  # no session outlives its round (dozens of models are in rotation)
                    cached.pop(id(timers[j]), None)
                atts[j].add([r])
                if fifo:
                    time.sleep(max(0.001, 0.1 * (now() - r0)))
                atts[j].elapsed_s = now() - start
            sweep += 1
            for j in list(active):
                if _precise(_values(atts[j].rounds, 0), p):
                    active.remove(j)
                    finish(j, False)
                elif len(atts[j].rounds) + sum(atts[j].discarded.values()) >= p.max_rounds:
                    active.remove(j)
                    finish(j, True)
    return [s for s in out if s is not None]


def _imprecise(values: np.ndarray, p: TimingProtocol, n_rounds: int, elapsed: float, what: str) -> Optional[str]:
    ci = median_ci(values, p.confidence)
    med = float(np.median(values)) if len(values) else math.nan
    rel = relative_halfwidth(med, ci)
    if ci is None:
        return (f"imprecise: only {n_rounds} rounds in {elapsed:.1f} s, too few for a "
                f"{p.confidence:.0%} interval of {what}")
    if rel > p.imprecise_factor * p.rel_ci:
        msg = (f"imprecise: {what} known to ±{rel:.1%} after {n_rounds} rounds ({elapsed:.1f} s), "
               f"target ±{p.rel_ci:.1%}")
        modes = find_modes(values, gap_rel=p.mode_gap_rel)
        return msg + (f"; {modes.describe()}" if modes else "")
    return None


def _summarise(att: _Attempt, j: int, p: TimingProtocol, flags: Sequence[str], notes: Sequence[str]) -> TimingStats:
    vals = _values(att.rounds, j)
    runs = np.concatenate([r[j].runs for r in att.rounds])
    lo, hi = median_ci(vals, p.confidence) or (None, None)
    return dataclasses.replace(TimingStats.from_samples(runs), median=float(np.median(vals)), ci_low=lo, ci_high=hi,
                               confidence=p.confidence, rounds=len(vals), capped=att.capped, flags=tuple(flags),
                               notes=tuple(notes), round_medians=tuple(float(v) for v in vals))


def measure_adaptive(timer: Timer, protocol: Optional[TimingProtocol] = None, *,
                     now: Callable[[], float] = time.perf_counter, what: str = "the model") -> TimingStats:
    """Time one model by the protocol; a :class:`TimingStats` with the interval, rounds and flags."""
    p = protocol or DEFAULT_PROTOCOL
    att, flags, notes = _run([timer], p, now)
    return _single(att, p, flags, notes, what)


def _single(att: _Attempt, p: TimingProtocol, flags: Sequence[str], notes: Sequence[str], what: str) -> TimingStats:
    """One model's result: the precision verdict and the session modes added to the attempt's flags/notes."""
    if not att.rounds:
        raise TimingError(f"no usable round of {what} in {att.elapsed_s:.1f} s: every round was discarded "
                          f"({att.discarded['burst']} outlier bursts, {att.discarded['preempted']} preempted); "
                          f"the machine is too busy to time on, or raise max_time_s")
    vals = _values(att.rounds, 0)
    bad = _imprecise(vals, p, len(vals), att.elapsed_s, "the median")
    modes = find_modes(vals, gap_rel=p.mode_gap_rel)
    if modes and not bad:
        notes = [modes.describe(), *notes]
    return _summarise(att, 0, p, [*([bad] if bad else []), *flags], notes)


@dataclass(frozen=True)
class Comparison:
    """Models timed in alternating rounds in one session (:func:`compare_adaptive`, or fixed rounds by
    :func:`latency.backends.measure_paired`); model 0 is the reference (``a``), model 1 ``b``.

    ``rounds[j]`` holds model j's per-round statistics (round i of every model was taken back to back);
    ``stats[j]`` its pooled statistics with the CI of its median.  Every figure against the reference is
    per round, then its median and order-statistic CI: a slow spell that hits one round moves it less
    than it moves either model's own time.  ``ratio`` = a's time / b's time (> 1: b is faster).
    Keyword-only: the interval's ``confidence``, whether the cap ended it (``capped``), ``flags`` (reasons
    not to trust it; empty: trusted) and ``notes``.
    """

    names: tuple[str, ...]
    rounds: tuple[tuple[TimingStats, ...], ...]
    stats: tuple[TimingStats, ...]
    fingerprint: Any = None         # the runtime's (a mapping), where the caller knows it
    batch_size: int = 1
    _: dataclasses.KW_ONLY
    confidence: float = 0.95
    capped: bool = False
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        return not self.flags

    def _times(self, j: int) -> np.ndarray:
        return np.asarray([r.median for r in self.rounds[j]])

    def speedups(self, j: int = 1) -> np.ndarray:
        """Per round: the reference's time / model j's."""
        return self._times(0) / self._times(j)

    def speedup(self, j: int = 1) -> float:
        """Median over rounds of the reference's time / model j's (> 1: model j is faster)."""
        return float(np.median(self.speedups(j)))

    def speedup_ci(self, j: int = 1) -> Optional[tuple[float, float]]:
        return median_ci(self.speedups(j), self.confidence)

    @property
    def ratio(self) -> float:
        """a's time / b's time, per round, median (the contract's `Comparison.ratio`)."""
        return self.speedup(1)

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.speedups(1))

    def deltas_ms(self, j: int = 1) -> np.ndarray:
        """Per round: model j's median - the reference's."""
        return self._times(j) - self._times(0)

    def delta_ms(self, j: int = 1) -> float:
        return float(np.median(self.deltas_ms(j)))

    def delta_std_ms(self, j: int = 1) -> float:
        return float(self.deltas_ms(j).std())

    def delta_ci_ms(self, j: int = 1) -> Optional[tuple[float, float]]:
        return median_ci(self.deltas_ms(j), self.confidence)

    def best(self, j: int = 1) -> TimingStats:
        """Model j's round with the lowest median."""
        return min(self.rounds[j], key=lambda s: s.median)

    def measurement(self, j: int) -> Measurement:
        return Measurement(self.stats[j], dict(self.fingerprint or {}), self.batch_size)

    @property
    def a(self) -> Any:
        return self.measurement(0)

    @property
    def b(self) -> Any:
        return self.measurement(1)

    def extend(self, other: "Comparison") -> "Comparison":
        """Both comparisons' rounds as one (a re-measurement of the same models that stayed flagged)."""
        rounds = tuple(r + o for r, o in zip(self.rounds, other.rounds))
        stats = tuple(pool([s, t]) for s, t in zip(self.stats, other.stats))
        return dataclasses.replace(other, rounds=rounds, stats=stats)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "names": list(self.names), "rounds": len(self.rounds[0]), "capped": self.capped,
            "confidence": self.confidence, "flags": list(self.flags), "notes": list(self.notes),
            "median_ms": {n: s.median for n, s in zip(self.names, self.stats)},
            "ci_ms": {n: [s.ci_low, s.ci_high] for n, s in zip(self.names, self.stats)},
            "speedup": {}, "delta_ms": {},
        }
        for j in range(1, len(self.names)):
            sci = self.speedup_ci(j)
            out["speedup"][self.names[j]] = {"value": self.speedup(j), "ci": list(sci) if sci else None,
                                             "rounds": [float(v) for v in self.speedups(j)]}
            out["delta_ms"][self.names[j]] = self.delta_ms(j)
        if self.fingerprint:
            out.update(fingerprint=dict(self.fingerprint), batch_size=self.batch_size)
        return out

    def describe(self) -> str:
        """One line per model against the reference: speed-up with its interval."""
        lines = []
        for j in range(1, len(self.names)):
            val, ci, word = self.speedup(j), self.speedup_ci(j), "faster"
            if val < 1:  # say "1.19x slower", not "0.84x faster"
                val, ci, word = 1.0 / val, ci and (1 / ci[1], 1 / ci[0]), "slower"
            iv = f" ({self.confidence:.0%} CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else " (no interval)"
            lines.append(f"{self.names[j]} vs {self.names[0]}: {val:.3f}x {word}{iv}, "
                         f"{self.stats[j].median:.4g} vs {self.stats[0].median:.4g} ms, "
                         f"{len(self.rounds[0])} alternating rounds" + (", capped" if self.capped else ""))
        return "\n".join(lines)


def compare_adaptive(timers: Sequence[Timer], protocol: Optional[TimingProtocol] = None, *,
                     names: Optional[Sequence[str]] = None,
                     now: Callable[[], float] = time.perf_counter) -> Comparison:
    """Time two or more models in alternating rounds (the order rotates every round) until the CI of
    every model's median time ratio to model 0 is within ``rel_ci`` of the ratio, or the cap.

    Paired rounds cancel what hits both models alike (a slow spell, a drifting clock), so a ratio is
    known far sooner than either time.  A round where any model was disturbed is discarded whole."""
    if len(timers) < 2:
        raise ValueError("compare_adaptive needs at least two models")
    p = protocol or DEFAULT_PROTOCOL
    names = tuple(names) if names is not None else tuple(f"model{j}" for j in range(len(timers)))
    if len(names) != len(timers):
        raise ValueError(f"{len(names)} names for {len(timers)} models")
    att, flags, notes = _run(timers, p, now)
    if not att.rounds:
        raise TimingError(f"no usable alternating round in {att.elapsed_s:.1f} s: every round was discarded")
    bad = [b for b in (_imprecise(_ratios(att.rounds, j), p, len(att.rounds), att.elapsed_s,
                                  f"the ratio {names[j]}/{names[0]}") for j in range(1, len(timers))) if b]
    flags = [*bad, *flags]
    stats = tuple(_summarise(att, j, p, flags, notes) for j in range(len(timers)))
    rounds = tuple(tuple(TimingStats.from_samples(r[j].runs) for r in att.rounds) for j in range(len(timers)))
    return Comparison(names, rounds, stats, confidence=p.confidence, capped=att.capped, flags=tuple(flags),
                      notes=tuple(notes))


# ----------------------------------------------------------------------------------------------------
# Combining measurements, warnings
# ----------------------------------------------------------------------------------------------------

def pool(stats: Sequence[TimingStats], confidence: Optional[float] = None) -> TimingStats:
    """One measurement from several of the same model (e.g. passes over a table): the median and its CI
    over all their rounds, counts summed, the other statistics' medians, flags and notes kept.

    Measurements without per-round medians (fixed-run timings, imported entries) cannot be pooled
    exactly; they fall back to each statistic's median (:func:`latency.builder.median_of`'s rule)."""
    stats = list(stats)
    if not stats:
        raise ValueError("pool needs at least one measurement")
    if len(stats) == 1:
        return stats[0]
    conf = confidence or next((s.confidence for s in stats if s.confidence), 0.95)
    common: dict[str, Any] = {f: float(np.median([getattr(s, f) for s in stats]))
                              for f in ("mean", "std", "p10", "p90", "min")}
    common.update(count=int(sum(s.count for s in stats)), capped=any(s.capped for s in stats),
                  flags=tuple(dict.fromkeys(f for s in stats for f in s.flags)),
                  notes=tuple(dict.fromkeys(f for s in stats for f in s.notes)))
    if all(s.round_medians for s in stats):
        vals = [v for s in stats for v in s.round_medians]
        lo, hi = median_ci(vals, conf) or (None, None)
        return TimingStats(median=float(np.median(vals)), **common, ci_low=lo, ci_high=hi, confidence=conf,
                           rounds=len(vals), round_medians=tuple(vals))
    return TimingStats(median=float(np.median([s.median for s in stats])), **common,
                       rounds=int(sum(s.rounds for s in stats)))


def warn_if_flagged(stats: Any, what: str, stacklevel: int = 3) -> None:
    """Emit one :class:`TimingWarning` line naming ``what`` and its flags, if it has any."""
    flags = getattr(stats, "flags", ())
    if flags:
        warnings.warn(TimingWarning(f"untrusted timing of {what}: {'; '.join(flags)}"), stacklevel=stacklevel)
