"""TF-NAS latency lookup tables as the method reads them: `base` + per-key curves {mid: ms}.

A table (the original's pickle imported by `latency.import_tfnas_pkl`, or one built for a space by
`latency.tfnas_table.build_tfnas_table`) is a `latency.LatencyTable` with entries ``'base'`` and
``'{key}:mid{m}'``; :meth:`Lut.from_table` reads it by duck typing (this package never imports the latency
package).  A curve is exact at its measured mids and piecewise linear between them, extrapolated linearly
outside (the original's tables hold every mid; tables built here measure a grid of 8 and interpolate).
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from jaxnas.methods.tfnas.space import NUM_OPS, SpaceError, TfnasArch, TfnasSpace

MID_SEP = ":mid"


class LutError(SpaceError):
    """A latency table that cannot serve a TF-NAS search (missing key, wrong device or batch, ...)."""


@dataclass
class Lut:
    """base (ms) + {key: (sorted mids, ms)}; `fingerprint`/`meta` describe where it was measured."""

    base: float
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_table(cls, table: Any, stat: str = "median") -> "Lut":
        """From a `latency.LatencyTable`-like object (``.entries``, ``.ms(key, stat)``, ``.meta``)."""
        entries = getattr(table, "entries", None)
        if entries is None or "base" not in entries:
            raise LutError("the latency table has no 'base' entry: it is not a TF-NAS table (import the "
                           "original's pickle with `latency.import_tfnas_pkl` or build one for the space)")
        points: dict[str, list[tuple[int, float]]] = {}
        for name in entries:
            key, sep, mid = name.rpartition(MID_SEP)
            if sep and mid.isdigit():
                points.setdefault(key, []).append((int(mid), float(table.ms(name, stat))))
        curves = {}
        for key, pts in points.items():
            pts.sort()
            curves[key] = (np.array([p[0] for p in pts], np.float64), np.array([p[1] for p in pts], np.float64))
        return cls(float(table.ms("base", stat)), curves, dict(getattr(table, "fingerprint", {}) or {}),
                   dict(getattr(table, "meta", {}) or {}))

    @classmethod
    def from_json(cls, path: str | Path, stat: str = "median") -> "Lut":
        """From a latency-table JSON file (`LatencyTable.save`: an imported TF-NAS pickle or a built table)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LutError(f"latency table {path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LutError(f"cannot read the latency table {path}: {e}") from None
        if not isinstance(d, Mapping) or d.get("units") != "ms" or not isinstance(d.get("entries"), Mapping):
            raise LutError(f"{path} is not a latency table in ms (write one with `jaxnas latency build-table` or "
                           "`jaxnas latency import-tfnas`)")
        return cls.from_table(_TableData(d), stat)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "Lut":
        """From the original's dict form {'base': ms, key: {mid: ms}}."""
        curves = {}
        for key, val in raw.items():
            if key == "base":
                continue
            mids = sorted(int(m) for m in val)
            curves[key] = (np.array(mids, np.float64), np.array([float(val[m]) for m in mids], np.float64))
        return cls(float(raw["base"]), curves)

    # ------------------------------------------------------------------ lookups
    def __contains__(self, key: str) -> bool:
        return key in self.curves

    def require(self, keys: Iterable[str], ranges: Mapping[str, tuple[int, int]] | None = None) -> None:
        """Raise LutError naming the first key the table lacks (or whose mids do not span `ranges`)."""
        for k in keys:
            if k not in self.curves:
                raise LutError(f"the latency table has no entry for {k!r} (the space needs it: build the table for "
                               "this space, or use a table of the same skeleton and input size)")
            if ranges is not None and k in ranges:
                xs = self.curves[k][0]
                lo, hi = ranges[k]
                if len(xs) < 2 and not (len(xs) == 1 and xs[0] == lo == hi):
                    raise LutError(f"the latency table's entry {k!r} has {len(xs)} measured mid(s); "
                                   "interpolation needs two")
                if xs[0] > lo or xs[-1] < hi:
                    raise LutError(f"the latency table's entry {k!r} covers mids {int(xs[0])}..{int(xs[-1])} but "
                                   f"the space needs {lo}..{hi}")

    def ms(self, key: str, mid: float) -> float:
        """Latency of `key` at `mid` channels: exact at a measured mid, else linear between neighbours."""
        try:
            xs, ys = self.curves[key]
        except KeyError:
            raise LutError(f"the latency table has no entry for {key!r}") from None
        return float(interp_extrapolate(xs, ys, float(mid)))

    def arrays(self, space: TfnasSpace) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys) of shape (blocks, ops, G): each block-op's curve padded to a common length G with
        points beyond its last mid on its last segment's line (so `interp_jnp` matches `ms` inside and
        extrapolates above it), for the jitted, differentiable lookup."""
        curves = [[self.curves[b.key(op)] for op in range(NUM_OPS)] for b in space.blocks()]
        g = max(len(c[0]) for row in curves for c in row)
        xs = np.zeros((len(curves), NUM_OPS, g + 1), np.float32)
        ys = np.zeros_like(xs)
        for i, row in enumerate(curves):
            for k, (x, y) in enumerate(row):
                n = len(x)
                slope = (y[-1] - y[-2]) / (x[-1] - x[-2]) if n > 1 else 0.0
                pad = x[-1] + 1.0e6 * np.arange(1, g + 2 - n)
                xs[i, k] = np.concatenate([x, pad])
                ys[i, k] = np.concatenate([y, y[-1] + slope * (pad - x[-1])])
        return xs, ys

    # ------------------------------------------------------------------ networks
    def arch_latency(self, space: TfnasSpace, arch: TfnasArch) -> float:
        """base + Σ table[key(block)][mid(block)] of a parsed architecture (the original's get_lookup_latency)."""
        return self.base + sum(self.ms(b.key(op), mid) for b, op, mid in space.arch_blocks(arch))


class _TableData:
    """The parts of a `LatencyTable` JSON dict `Lut.from_table` reads."""

    def __init__(self, d: Mapping[str, Any]):
        self.entries = dict(d["entries"])
        self.fingerprint = dict(d.get("fingerprint") or {})
        self.meta = dict(d.get("meta") or {})

    def ms(self, key: str, stat: str = "median") -> float:
        e = self.entries[key]
        v = e.get(stat)
        v = e.get("mean") if v is None else v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LutError(f"latency table entry {key!r} has no number for {stat!r} or 'mean'")
        return float(v)


def interp_extrapolate(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear through sorted (xs, ys), linear extrapolation outside; one point: constant."""
    if len(xs) == 1:
        return float(ys[0])
    i = bisect.bisect_left(xs.tolist(), x)
    if i < len(xs) and xs[i] == x:
        return float(ys[i])
    lo = min(max(i - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[lo], xs[lo + 1], ys[lo], ys[lo + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def interp_jnp(mids, xs, ys):
    """Differentiable lookup in jax: `mids` (...,) on curves `xs`, `ys` (..., G) from `Lut.arrays`.

    Linear between the two points around each mid (the first or last segment outside), so it agrees with
    `Lut.ms` wherever the mids lie inside a curve's measured range."""
    import jax.numpy as jnp

    g = xs.shape[-1]
    idx = jnp.sum(xs < mids[..., None], axis=-1)  # first point >= mid
    lo = jnp.clip(idx - 1, 0, g - 2)
    take = lambda a, i: jnp.take_along_axis(a, i[..., None], axis=-1)[..., 0]  # noqa: E731
    x0, x1, y0, y1 = take(xs, lo), take(xs, lo + 1), take(ys, lo), take(ys, lo + 1)
    return y0 + (y1 - y0) * (mids - x0) / (x1 - x0)
