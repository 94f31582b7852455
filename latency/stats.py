"""Summary statistics of a latency measurement (milliseconds per batch)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

__all__ = ["TimingStats", "Measurement", "progress_line", "protocol_fields", "PROTOCOL_FIELDS"]


@dataclass(frozen=True)
class TimingStats:
    """Latency summary of ``count`` timed runs, in ``unit`` (always ``'ms'``) per batch.

    ``std`` is the population standard deviation (``ddof=0``, numpy's default);
    ``p10``/``p90`` use numpy's default linear percentile interpolation.

    A measurement by the adaptive protocol (:mod:`latency.timing`) also carries: ``ci_low``/``ci_high``,
    the ``confidence`` interval of the median (then the median of ``rounds`` round medians, each from a
    fresh session, listed in ``round_medians``); ``capped``: the time cap, not the precision target,
    ended it; ``flags``: one line per reason not to trust it (empty: trusted); ``notes``: what was seen
    and handled (dropped preempted runs, discarded bursts, session modes).  A plain run-by-run
    measurement has rounds=1 and no interval.
    """

    median: float
    mean: float
    std: float
    p10: float
    p90: float
    min: float
    count: int
    unit: str = "ms"
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    confidence: Optional[float] = None
    rounds: int = 1
    capped: bool = False
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    round_medians: tuple[float, ...] = ()

    @property
    def trusted(self) -> bool:
        """No flag: nothing seen that makes this measurement untrustworthy."""
        return not self.flags

    @property
    def rel_ci(self) -> Optional[float]:
        """Larger side of the interval relative to the median (None without an interval)."""
        if self.ci_low is None or self.ci_high is None or not self.median > 0:
            return None
        return max(self.median - self.ci_low, self.ci_high - self.median) / self.median

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float]) -> "TimingStats":
        """Summarise raw per-run timings given in milliseconds."""
        a = np.asarray(list(samples_ms), dtype=np.float64).reshape(-1)
        if a.size == 0:
            raise ValueError("TimingStats.from_samples needs at least one sample")
        if not np.all(np.isfinite(a)):
            raise ValueError("TimingStats.from_samples got a non-finite sample (nan/inf)")
        if np.any(a < 0):
            raise ValueError(f"TimingStats.from_samples got a negative time ({a.min()} ms)")
        p10, p50, p90 = np.percentile(a, [10.0, 50.0, 90.0])
        return cls(
            median=float(p50),
            mean=float(a.mean()),
            std=float(a.std()),
            p10=float(p10),
            p90=float(p90),
            min=float(a.min()),
            count=int(a.size),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("flags", "notes", "round_medians"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TimingStats":
        """Inverse of :meth:`to_dict`; ignores unknown keys, requires every numeric field.

        The protocol fields (interval, rounds, flags, ...) are optional: older dicts load with none."""
        missing = [n for n in _REQUIRED if n not in d]
        if missing:
            raise ValueError(f"TimingStats dict is missing {missing}")
        unit = d.get("unit", "ms")
        if unit != "ms":
            raise ValueError(f"TimingStats unit must be 'ms', got {unit!r}")
        vals: dict[str, Any] = {"unit": unit}
        for n in _REQUIRED:
            v = d[n]
            if not is_finite_number(v):
                raise ValueError(f"TimingStats field {n!r} must be a finite number, got {v!r}")
            vals[n] = int(v) if n == "count" else float(v)
        vals.update(protocol_fields(d))
        return cls(**vals)

    def __str__(self) -> str:  # compact, for logs
        out = (f"{self.median:.4g} ms median (mean {self.mean:.4g} ± {self.std:.2g}, "
               f"p10 {self.p10:.4g}, p90 {self.p90:.4g}, n={self.count}")
        if self.rel_ci is not None:
            out += f", {self.confidence or 0.95:.0%} CI ±{self.rel_ci:.1%} over {self.rounds} rounds"
        if self.capped:
            out += ", capped"
        return out + (f"; UNTRUSTED: {'; '.join(self.flags)})" if self.flags else ")")


@dataclass(frozen=True)
class Measurement:
    """One model's timing on one runtime: the statistics (with the protocol's interval, rounds and flags)
    and the runtime's fingerprint.  What `latency measure`, `measure_spec` and the oracle return."""

    stats: TimingStats
    fingerprint: Mapping[str, Any]
    batch_size: int = 1

    @property
    def median_ms(self) -> float:
        return self.stats.median

    @property
    def ci_ms(self) -> Optional[tuple[float, float]]:
        s = self.stats
        return None if s.ci_low is None or s.ci_high is None else (s.ci_low, s.ci_high)

    @property
    def runs(self) -> int:
        return self.stats.count

    @property
    def trusted(self) -> bool:
        return self.stats.trusted

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        out = {"median_ms": s.median, "mean_ms": s.mean, "std_ms": s.std, "p10_ms": s.p10, "p90_ms": s.p90,
               "min_ms": s.min, "count": s.count, "batch_size": self.batch_size, "fingerprint": dict(self.fingerprint)}
        if s.confidence is not None:  # the adaptive protocol's report
            out.update(ci_ms=list(self.ci_ms or (None, None)), confidence=s.confidence, rel_ci=s.rel_ci,
                       rounds=s.rounds, capped=s.capped, trusted=s.trusted, flags=list(s.flags), notes=list(s.notes))
        return out

    def describe(self, name: str = "the model") -> str:
        """'net on onnxruntime: median 0.412 ms (95 % CI 0.409-0.415, ±0.7 %, 12 sessions, n=1430)'."""
        s = self.stats
        if s.confidence is None:
            tail = f"p10 {s.p10:.3f}, p90 {s.p90:.3f}, n={s.count}"
        else:
            ci = self.ci_ms
            iv = f"{s.confidence:.0%} CI {ci[0]:.3f}-{ci[1]:.3f}, ±{s.rel_ci:.1%}" if ci else "no interval"
            tail = f"{iv}, {s.rounds} sessions, n={s.count}" + (", stopped by the time cap" if s.capped else "")
        return f"{name} on {self.fingerprint.get('backend', '?')}: median {s.median:.3f} ms ({tail})"


_REQUIRED = ("median", "mean", "std", "p10", "p90", "min", "count")
PROTOCOL_FIELDS = ("ci_low", "ci_high", "confidence", "rounds", "capped", "flags", "notes", "round_medians")


def is_finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def protocol_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """The adaptive-protocol fields present in ``d`` (a stats dict or a table entry), type-checked.

    Raises ValueError naming a malformed field; absent or null fields are left out."""
    out: dict[str, Any] = {}
    for k in ("ci_low", "ci_high", "confidence"):
        v = d.get(k)
        if v is not None:
            if not is_finite_number(v) or v < 0:
                raise ValueError(f"field {k!r} must be a finite number >= 0 or null, got {v!r}")
            out[k] = float(v)
    v = d.get("rounds")
    if v is not None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or int(v) != v:
            raise ValueError(f"field 'rounds' must be an integer >= 0, got {v!r}")
        out["rounds"] = int(v)
    v = d.get("capped")
    if v is not None:
        if not isinstance(v, bool):
            raise ValueError(f"field 'capped' must be true/false, got {v!r}")
        out["capped"] = v
    for k in ("flags", "notes"):
        v = d.get(k)
        if v is not None:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"field {k!r} must be a list of strings, got {v!r}")
            out[k] = tuple(v)
    v = d.get("round_medians")
    if v is not None:
        if not isinstance(v, (list, tuple)) or not all(is_finite_number(x) and x >= 0 for x in v):
            raise ValueError("field 'round_medians' must be a list of finite numbers >= 0")
        out["round_medians"] = tuple(float(x) for x in v)
    return out


def progress_line(done: int, total: int, elapsed_s: float, what: str) -> str:
    """``'12/40 <what>, 30s elapsed, ~70s left'`` for a build's progress log."""
    left = elapsed_s / max(done, 1) * (total - done)
    return f"{done}/{total} {what}, {elapsed_s:.0f}s elapsed, ~{left:.0f}s left"
