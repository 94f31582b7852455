"""Measured latency for POP: a resumable, fingerprint-checked cache of end-to-end measurements, and
the additive pre-screen model that decides which candidates need one.

POP's pruning rule and its boundary use *measured* latency (seed spec §1.7: latency is not monotone
in width on real hardware).  Every candidate that is trained — so every candidate that can lie on
the boundary — is measured end to end on the configured runtime (the oracle's ``measure``).  The
rest of the space only needs to be *classified* (inside / outside the latency window, pruned or
not), and for that a prediction with an error bound is enough when it is far from every decision
threshold:

``AdditiveLatencyModel`` is a lookup table whose entries are learned from whole-network
measurements: a network's latency is modelled as the sum of one value per distinct part (each block
at its input shape, the head), fitted by non-negative least squares to a seed set of measured
networks that covers every part of the pool.  Its relative error bound ``margin`` is the largest
leave-one-out error on the seed set times a safety factor (at least ``min_margin``).  A candidate is
classified from the prediction only when the decision holds for every latency in
``[pred (1 - margin), pred (1 + margin)]``; otherwise it is measured first.  The search reports how
many end-to-end measurements this saved, and ``prescreen_audit`` measures the rest afterwards (into
``latency_audit.json``, apart from the search's cache) and counts the decisions the prediction got wrong.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxnas.errors import UserError
from jaxnas.io_utils import atomic_write_json
from jaxnas.spec import ArchSpec, analyze

from jaxnas.methods.pop.order import block_key


class LatencyCacheError(UserError, ValueError):
    """A latency cache measured on another device/runtime than the one configured."""


def measurement_record(m: Any) -> dict[str, Any]:
    """A JSON-able record of one measurement (an oracle `Measurement`, a dict or a float in ms)."""
    if isinstance(m, (int, float)):
        return {"median_ms": float(m)}
    if isinstance(m, Mapping):
        rec = dict(m)
    elif hasattr(m, "to_dict"):
        rec = dict(m.to_dict())
    else:
        raise TypeError(f"cannot read a latency measurement from {type(m).__name__}")
    if "median_ms" not in rec and hasattr(m, "median_ms"):
        rec["median_ms"] = float(m.median_ms)
    if "median_ms" not in rec:
        raise ValueError(f"a latency measurement needs median_ms, got keys {sorted(rec)}")
    rec["median_ms"] = float(rec["median_ms"])
    return json.loads(json.dumps(rec, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return str(v)


class LatencyCache:
    """`latency_cache.json` in the work dir: {fingerprint, entries: {arch key: measurement record}}.

    Written atomically after every measurement, so a killed search keeps every latency it paid for;
    refused (LatencyCacheError) when its fingerprint is not the oracle's.
    """

    def __init__(self, path: str | Path, fingerprint: Mapping[str, Any], flush_s: float = 1.0):
        self.path, self.flush_s = Path(path), float(flush_s)
        self._dirty, self._saved_at = False, float("-inf")
        self.fingerprint = json.loads(json.dumps(dict(fingerprint), default=_jsonable))
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("fingerprint") != self.fingerprint:
                raise LatencyCacheError(
                    f"{self.path} was measured with {_fp_line(data.get('fingerprint'))}, this search measures "
                    f"with {_fp_line(self.fingerprint)}; use a fresh workdir (or delete {self.path.name})")
            self.entries = dict(data.get("entries", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def ms(self, key: str) -> float | None:
        e = self.entries.get(key)
        return None if e is None else float(e["median_ms"])

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Add a measurement; written at once unless the last write was under `flush_s` ago (then at
        the next `put` after that, or `flush`): a kill loses at most that much measuring."""
        self.entries[key] = dict(record)
        self._dirty = True
        if time.monotonic() - self._saved_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            atomic_write_json(self.path, {"fingerprint": self.fingerprint, "entries": self.entries})
            self._dirty, self._saved_at = False, time.monotonic()


def _fp_line(fp: Any) -> str:
    if not isinstance(fp, Mapping):
        return "an unknown setup"
    keys = ("backend", "runtime", "device", "provider", "threads", "batch_size", "precision")
    return ", ".join(f"{k}={fp[k]}" for k in keys if k in fp) or json.dumps(fp, sort_keys=True)


class Measurer:
    """measure(key, spec) -> ms: the cache first, else the oracle (then cached)."""

    def __init__(self, cache: LatencyCache, measure_fn: Callable[[ArchSpec], Any]):
        self.cache, self.measure_fn = cache, measure_fn

    def __call__(self, key: str, spec: ArchSpec) -> float:
        ms = self.cache.ms(key)
        if ms is None:
            rec = measurement_record(self.measure_fn(spec))
            self.cache.put(key, rec)
            ms = rec["median_ms"]
        return ms


# ----------------------------------------------------------------------------------------------------
# Additive pre-screen model
# ----------------------------------------------------------------------------------------------------

def part_keys(spec: ArchSpec) -> list[str]:
    """The timed parts of a network: every block at its input shape (with its shortcut), and the head."""
    cost = analyze(spec)
    parts = []
    for b, c in zip(spec.blocks, cost.blocks):
        sc = b.shortcut if isinstance(b.shortcut, str) or b.shortcut is None else (
            "proj", b.shortcut.out, b.shortcut.stride, b.shortcut.kernel)
        parts.append(repr((block_key(b), c.in_shape, sc)))
    parts.append(repr(("head", cost.head.in_shape, spec.head.num_classes, spec.head.pool, spec.head.hidden)))
    return parts


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares (Lawson & Hanson's active-set method)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    tol = 10 * np.finfo(float).eps * max(1.0, np.linalg.norm(a, 1)) * max(m, n)
    for _ in range(max_iter or 3 * n + 10):
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > tol).all():
                x = z
                break
            neg = passive & (z <= tol)
            alpha = np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


class AdditiveLatencyModel:
    """latency(net) ~ sum of one non-negative value per part (see the module docstring)."""

    def __init__(self, min_margin: float = 0.05, safety: float = 1.5):
        self.min_margin, self.safety = float(min_margin), float(safety)
        self.index: dict[str, int] = {}
        self.values = np.zeros(0)
        self.loo_errors: list[float] = []
        self.margin = float("inf")

    def fit(self, parts: Sequence[Sequence[str]], ms: Sequence[float]) -> "AdditiveLatencyModel":
        """Fit on measured networks given as their part lists; sets `margin` from leave-one-out errors."""
        self.index = {}
        for ps in parts:
            for p in ps:
                self.index.setdefault(p, len(self.index))
        x, y = np.zeros((len(parts), len(self.index))), np.asarray(ms, dtype=float)
        for i, ps in enumerate(parts):
            for p in ps:
                x[i, self.index[p]] += 1.0
        self.values = nnls(x, y)
        errs = []
        counts = (x > 0).sum(axis=0)
        for i in range(len(y)):
            if (counts[x[i] > 0] < 2).any():
                continue  # holds a part no other seed network holds: left out, it cannot be predicted
            keep = np.arange(len(y)) != i
            v = nnls(x[keep], y[keep])
            errs.append(abs(float(x[i] @ v) - y[i]) / y[i])
        self.loo_errors = errs
        worst = max(errs) if errs else float("inf")
        self.margin = max(self.min_margin, self.safety * worst)
        return self

    def predict_parts(self, parts: Sequence[str]) -> float | None:
        if not self.index or not all(p in self.index for p in parts):
            return None
        return float(sum(self.values[self.index[p]] for p in parts))

    def describe(self) -> dict[str, Any]:
        e = np.asarray(self.loo_errors) if self.loo_errors else np.zeros(0)
        return {"parts": len(self.index), "seed_networks": len(self.loo_errors), "margin": self.margin,
                "loo_max_rel_error": float(e.max()) if e.size else None,
                "loo_median_rel_error": float(np.median(e)) if e.size else None}


def seed_design(parts: Sequence[Sequence[str]], size: int, rng: np.random.Generator,
                must: Sequence[int] = ()) -> list[int]:
    """Indices of the networks to measure for the fit: `must` first; then, part by part (in a stable
    order), a network holding a part seen fewer than twice (of up to 64 random holders, the one that
    covers the most such parts), until every part is covered twice or `size` is reached; then random
    others up to `size`."""
    n = len(parts)
    size = min(size, n)
    holders: dict[str, list[int]] = {}
    for i, ps in enumerate(parts):
        for p in set(ps):
            holders.setdefault(p, []).append(i)
    chosen: list[int] = []
    taken: set[int] = set()
    seen: dict[str, int] = {}

    def take(i: int) -> None:
        chosen.append(i)
        taken.add(i)
        for p in set(parts[i]):
            seen[p] = seen.get(p, 0) + 1

    for i in must:
        if i not in taken and len(chosen) < size:
            take(int(i))
    for p in sorted(holders):
        while seen.get(p, 0) < 2 and len(chosen) < size:
            free = [i for i in holders[p] if i not in taken]
            if not free:
                break
            pick = [free[int(j)] for j in rng.permutation(len(free))[:64]]
            gains = [sum(1 for q in set(parts[i]) if seen.get(q, 0) < 2) for i in pick]
            take(pick[int(np.argmax(gains))])
    for i in rng.permutation(n):
        if len(chosen) >= size:
            break
        if int(i) not in taken:
            take(int(i))
    return chosen


__all__ = ["AdditiveLatencyModel", "LatencyCache", "LatencyCacheError", "Measurer", "measurement_record", "nnls",
           "part_keys", "seed_design"]
