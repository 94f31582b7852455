"""Summary statistics of a latency measurement (milliseconds per batch)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["TimingStats", "progress_line"]


@dataclass(frozen=True)
class TimingStats:
    """Latency summary of ``count`` timed runs, in ``unit`` (always ``'ms'``) per batch.

    ``std`` is the population standard deviation (``ddof=0``, numpy's default);
    ``p10``/``p90`` use numpy's default linear percentile interpolation.
    """

    median: float
    mean: float
    std: float
    p10: float
    p90: float
    min: float
    count: int
    unit: str = "ms"

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
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TimingStats":
        """Inverse of :meth:`to_dict`; ignores unknown keys, requires every numeric field."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n != "unit" and n not in d]
        if missing:
            raise ValueError(f"TimingStats dict is missing {missing}")
        unit = d.get("unit", "ms")
        if unit != "ms":
            raise ValueError(f"TimingStats unit must be 'ms', got {unit!r}")
        vals: dict[str, Any] = {"unit": unit}
        for n in names:
            if n == "unit":
                continue
            v = d[n]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TimingStats field {n!r} must be a finite number, got {v!r}")
            vals[n] = int(v) if n == "count" else float(v)
        return cls(**vals)

    def __str__(self) -> str:  # compact, for logs
        return (f"{self.median:.4g} ms median (mean {self.mean:.4g} ± {self.std:.2g}, "
                f"p10 {self.p10:.4g}, p90 {self.p90:.4g}, n={self.count})")


def progress_line(done: int, total: int, elapsed_s: float, what: str) -> str:
    """``'12/40 <what>, 30s elapsed, ~70s left'`` for a build's progress log."""
    left = elapsed_s / max(done, 1) * (total - done)
    return f"{done}/{total} {what}, {elapsed_s:.0f}s elapsed, ~{left:.0f}s left"
