"""The speed/accuracy boundary B(D) and POP's pruning rule (seed spec §1.2), as pure functions.

B(D): the evaluated architectures no other evaluated one beats, i.e. no b with Lat(b) <= Lat(a) and
Acc(b) >= Acc(a), one of them strictly (exact ties all stay on the boundary).

Pruning rule: an unevaluated A is discarded when some evaluated A' ⪰ A is already dominated at A's
latency: there is b in B(D) with Lat(b) <= Lat(A) and Acc(b) >= Acc(A').  Then Acc(A) <= Acc(A') <=
Acc(b) while A is no faster than b, so A cannot lift the boundary (at best it ties b).  For each
evaluated A' the rule reduces to one number, its threshold

    L*(A') = min { Lat(b) : b in B(D), Acc(b) >= Acc(A') }

(the fastest boundary net at least as accurate as A'), and A is pruned iff Lat(A) >= L*(A') for some
evaluated A' ⪰ A.  Thresholds only fall as D grows, so a pruned architecture stays pruned.
"""
from __future__ import annotations

import bisect
from typing import Hashable, Sequence

Point = tuple[Hashable, float, float]   # (key, latency_ms, accuracy)


def pareto_boundary(points: Sequence[Point]) -> list[Hashable]:
    """Keys of B(D), fastest first."""
    by_lat: dict[float, list[Point]] = {}
    for p in points:
        by_lat.setdefault(float(p[1]), []).append(p)
    out, best = [], float("-inf")
    for lat in sorted(by_lat):
        group = by_lat[lat]
        top = max(p[2] for p in group)
        if top > best:
            out.extend(p[0] for p in sorted(group, key=lambda p: str(p[0])) if p[2] == top)
            best = top
    return out


class Boundary:
    """B(D) of a set of evaluated points, with the step function f(L) = best accuracy at latency <= L
    and the pruning thresholds L*."""

    def __init__(self, points: Sequence[Point]):
        keys = set(pareto_boundary(points))
        self.members = sorted((p for p in points if p[0] in keys), key=lambda p: (p[1], str(p[0])))
        self._lats = [p[1] for p in self.members]
        # Boundary accuracies rise with latency (strictly, between distinct latencies).
        self._accs = [p[2] for p in self.members]

    @property
    def keys(self) -> list[Hashable]:
        return [p[0] for p in self.members]

    def best_at(self, latency_ms: float) -> float:
        """f(L): the best evaluated accuracy at latency <= L (-inf when none is that fast)."""
        i = bisect.bisect_right(self._lats, latency_ms)
        return max(self._accs[:i]) if i else float("-inf")

    def threshold(self, accuracy: float) -> float:
        """L*(acc): the fastest boundary latency whose accuracy is >= acc (inf when none)."""
        return next((lat for lat, acc in zip(self._lats, self._accs) if acc >= accuracy), float("inf"))


def dominated_at(latency_ms: float, super_accuracy: float, boundary: Boundary) -> bool:
    """The pruning condition for one evaluated A' ⪰ A: some b in B(D) with Lat(b) <= Lat(A) and
    Acc(b) >= Acc(A')."""
    return boundary.threshold(super_accuracy) <= latency_ms


__all__ = ["Boundary", "Point", "dominated_at", "pareto_boundary"]
