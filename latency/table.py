"""Latency lookup tables: a JSON container keyed by block/segment name.

File layout (``schema_version`` 1)::

    {
      "schema_version": 1,
      "units": "ms",                      # ms per batch, always
      "backend": "onnxruntime",
      "fingerprint": {...},               # Fingerprint.to_dict() of the measuring setup
      "meta": {...},                      # optional: space name, input size, channel grid, …
      "entries": {
        "<key>": {"count": 50, "mean": 1.2, "std": 0.1, "median": 1.19,
                  "p10": 1.1, "p90": 1.3,
                  "min": 1.05,            # optional extra stats
                  "meta": {...}}          # optional per-entry metadata
      }
    }

``mean`` is always a number; ``count``/``std``/``median``/``p10``/``p90``
may be ``null`` for imported tables that only published a mean.

Entries timed by the adaptive protocol (:mod:`latency.timing`) also hold ``ci_low``/``ci_high`` (the
``confidence`` interval of the median), ``rounds`` (sessions; ``count`` is the runs), ``capped``,
``round_medians`` and, when there are any, ``flags`` (reasons not to trust the entry) and ``notes``.
All are optional: tables written before them load unchanged (same schema version).
"""
from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from jaxnas.errors import UserError
from jaxnas.io_utils import atomic_write_text

from .fingerprint import FingerprintLike, as_dict, describe
from .stats import PROTOCOL_FIELDS, TimingStats, is_finite_number, protocol_fields

# Key prefixes of entries that are not parts, shared by the table builders (network_table, tfnas_table):
PROBE_PREFIX = "net:"  # a whole network timed against a network table's reference network
ALONE_PREFIX = "alone:"  # a part timed alone inside a network table (the derivation's prior)
REF_PREFIX = "ref:"  # a reference architecture timed whole (the overhead fit, the drift calibration)

__all__ = [
    "LatencyTable",
    "TableError",
    "entry_stats",
    "interpolate",
    "SCHEMA_VERSION",
    "UNITS",
    "ENTRY_FIELDS",
    "DEFAULT_COMPAT_KEYS",
    "REBUILD_HINT",
]

SCHEMA_VERSION = 1
UNITS = "ms"
ENTRY_FIELDS: tuple[str, ...] = ("count", "mean", "std", "median", "p10", "p90")
_OPTIONAL_NUMERIC = ("min", "max")
DEFAULT_COMPAT_KEYS: tuple[str, ...] = ("backend", "runtime", "threads", "batch_size", "precision", "device")
REBUILD_HINT = "rebuild it with `jaxnas latency build-table`"


class TableError(UserError, ValueError):
    """A latency table file is missing, corrupt, of another schema, or measured elsewhere."""


def _validate_entry(key: Any, e: Any, where: str) -> dict[str, Any]:
    if not isinstance(key, str) or not key:
        raise TableError(f"{where}: entry keys must be non-empty strings, got {key!r}")
    if not isinstance(e, Mapping):
        raise TableError(f"{where}: entry {key!r} must be an object, got {type(e).__name__}")
    missing = [f for f in ENTRY_FIELDS if f not in e]
    if missing:
        raise TableError(f"{where}: entry {key!r} is missing required field(s) {missing}")
    if not is_finite_number(e["mean"]) or e["mean"] < 0:
        raise TableError(f"{where}: entry {key!r} field 'mean' must be a finite number >= 0, "
                         f"got {e['mean']!r}")
    for f in ENTRY_FIELDS[2:] + _OPTIONAL_NUMERIC:
        v = e.get(f)
        if v is not None and (not is_finite_number(v) or v < 0):
            raise TableError(f"{where}: entry {key!r} field {f!r} must be a finite number >= 0 "
                             f"or null, got {v!r}")
    c = e["count"]
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
        if not (isinstance(c, float) and c.is_integer() and c >= 0):
            raise TableError(f"{where}: entry {key!r} field 'count' must be an integer >= 0 or null, "
                             f"got {c!r}")
    if "meta" in e and not isinstance(e["meta"], Mapping):
        raise TableError(f"{where}: entry {key!r} field 'meta' must be an object")
    try:
        protocol_fields(e)
    except ValueError as err:
        raise TableError(f"{where}: entry {key!r} {err}") from None
    out = dict(e)
    if isinstance(c, float):
        out["count"] = int(c)
    return out


@dataclass
class LatencyTable:
    """Measured latencies (ms per batch) for one measuring setup (:class:`Fingerprint`)."""

    backend: str
    fingerprint: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    units: str = UNITS

    # ------------------------------------------------------------ creation
    @classmethod
    def new(cls, fingerprint: FingerprintLike, meta: Optional[Mapping[str, Any]] = None) -> "LatencyTable":
        fp = as_dict(fingerprint)
        if not fp.get("backend"):
            raise TableError("fingerprint has no 'backend'")
        return cls(backend=str(fp["backend"]), fingerprint=fp, meta=dict(meta or {}))

    # -------------------------------------------------------------- access
    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str, default: Any = None) -> Optional[dict[str, Any]]:
        """The entry dict for ``key`` (a copy), or ``default``."""
        e = self.entries.get(key)
        return default if e is None else dict(e)

    def ms(self, key: str, stat: str = "median") -> float:
        """One statistic of ``key`` in ms; falls back to ``mean`` where ``stat`` is null."""
        try:
            e = self.entries[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in this latency table ({len(self.entries)} entries)") from None
        v = e.get(stat)
        return float(e["mean"] if v is None else v)

    def put(self, key: str, stats: Union[TimingStats, Mapping[str, Any]], *,
            meta: Optional[Mapping[str, Any]] = None) -> None:
        """Insert/replace ``key`` from :class:`TimingStats` or an entry-shaped mapping."""
        if isinstance(stats, TimingStats):
            if stats.unit != UNITS:
                raise TableError(f"stats for {key!r} are in {stats.unit!r}; tables store {UNITS!r}")
            e: dict[str, Any] = {f: getattr(stats, f) for f in ENTRY_FIELDS}
            e["min"] = stats.min
            if stats.confidence is not None or stats.flags:  # measured by the adaptive protocol
                d = stats.to_dict()
                e.update({f: d[f] for f in PROTOCOL_FIELDS if d[f] is not None and d[f] != []})
        elif isinstance(stats, Mapping):
            missing = [f for f in ENTRY_FIELDS if f not in stats]
            if missing:
                raise TableError(f"put(): stats for {key!r} are missing field(s) {missing} "
                                 f"(use null/None for unknown values)")
            e = {f: stats[f] for f in ENTRY_FIELDS}
            for f in (*_OPTIONAL_NUMERIC, *PROTOCOL_FIELDS):
                if stats.get(f) is not None:
                    e[f] = list(stats[f]) if isinstance(stats[f], tuple) else stats[f]
            if stats.get("unit", UNITS) != UNITS:
                raise TableError(f"stats for {key!r} are in {stats['unit']!r}; tables store {UNITS!r}")
            if stats.get("meta") is not None:
                e["meta"] = dict(stats["meta"])
        else:
            raise TypeError(f"put() takes TimingStats or a mapping, got {type(stats).__name__}")
        if meta is not None:
            e["meta"] = {**e.get("meta", {}), **dict(meta)}
        self.entries[key] = _validate_entry(key, e, "put()")

    def stats(self, key: str) -> TimingStats:
        """The entry as :class:`TimingStats` (:func:`entry_stats`)."""
        return entry_stats(self.entries[key])

    def untrusted(self) -> dict[str, list[str]]:
        """{key: flags} of the entries whose measurement was flagged untrustworthy."""
        return {k: list(e["flags"]) for k, e in self.entries.items() if e.get("flags")}

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "units": self.units,
            "backend": self.backend,
            "fingerprint": dict(self.fingerprint),
            "meta": dict(self.meta),
            "entries": {k: dict(v) for k, v in self.entries.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "<dict>", hint: str = REBUILD_HINT) -> "LatencyTable":
        """Validate and build; every problem is one :class:`TableError` naming ``source``."""
        if not isinstance(d, Mapping):
            raise TableError(f"{source}: a latency table must be a JSON object, got {type(d).__name__}")
        sv = d.get("schema_version")
        if sv is None:
            raise TableError(f"{source}: missing 'schema_version' (not a jaxnas latency table?)")
        if isinstance(sv, bool) or not isinstance(sv, int):
            raise TableError(f"{source}: 'schema_version' must be an integer, got {sv!r}")
        if sv != SCHEMA_VERSION:
            raise TableError(f"{source}: unsupported schema_version {sv} (this jaxnas reads "
                             f"{SCHEMA_VERSION}); {hint}")
        units = d.get("units")
        if units != UNITS:
            raise TableError(f"{source}: units must be {UNITS!r} (milliseconds per batch), got {units!r}")
        backend = d.get("backend")
        if not isinstance(backend, str) or not backend:
            raise TableError(f"{source}: 'backend' must be a non-empty string, got {backend!r}")
        fp = d.get("fingerprint")
        if not isinstance(fp, Mapping):
            raise TableError(f"{source}: 'fingerprint' must be an object, got {type(fp).__name__}")
        if fp.get("backend", backend) != backend:
            raise TableError(f"{source}: 'backend' {backend!r} disagrees with fingerprint backend "
                             f"{fp.get('backend')!r}")
        meta = {} if d.get("meta") is None else d["meta"]
        if not isinstance(meta, Mapping):
            raise TableError(f"{source}: 'meta' must be an object, got {type(meta).__name__}")
        entries = d.get("entries")
        if not isinstance(entries, Mapping):
            raise TableError(f"{source}: 'entries' must be an object, got {type(entries).__name__}")
        checked = {k: _validate_entry(k, v, source) for k, v in entries.items()}
        return cls(backend=backend, fingerprint=dict(fp), entries=checked, meta=dict(meta),
                   schema_version=sv, units=units)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write atomically: a temp file in the same directory, fsync, ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False)
        except ValueError as e:
            raise TableError(f"cannot save {path}: {e}") from e
        return atomic_write_text(path, text + "\n")

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], *, hint: Optional[str] = None) -> "LatencyTable":
        """The table at ``path``; ``hint``: the fix a file that is there but unusable ends with (default: delete
        it or rebuild it with `jaxnas latency build-table`)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TableError(f"latency table not found: {path}; {REBUILD_HINT}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"cannot read latency table {path}: {e}") from e
        try:
            d = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as e:
            raise TableError(f"{path} is not valid JSON ({e}); {hint or f'delete it or {REBUILD_HINT}'}") from e
        return cls.from_dict(d, source=str(path), hint=hint or REBUILD_HINT)

    # ------------------------------------------------------- compatibility
    def check_compatible(self, backend_fingerprint: FingerprintLike,
                         keys: Sequence[str] = DEFAULT_COMPAT_KEYS, *, hint: str = REBUILD_HINT) -> None:
        """Raise :class:`TableError` naming every field in ``keys`` that differs; ``hint``: the fix it ends with."""
        want = as_dict(backend_fingerprint)
        have = dict(self.fingerprint)
        have.setdefault("backend", self.backend)
        bad = [(k, have.get(k), want.get(k)) for k in keys if have.get(k) != want.get(k)]
        if bad:
            diffs = ", ".join(f"{k} ({a!r} vs {b!r})" for k, a, b in bad)
            raise TableError(f"table was measured with {describe(have)} but requested "
                             f"{describe(want)}; mismatched: {diffs}; {hint}")

    def is_compatible(self, backend_fingerprint: FingerprintLike,
                      keys: Sequence[str] = DEFAULT_COMPAT_KEYS) -> bool:
        try:
            self.check_compatible(backend_fingerprint, keys)
        except TableError:
            return False
        return True

    @classmethod
    def open_or_create(cls, path: Union[str, "os.PathLike[str]"], backend_fingerprint: FingerprintLike,
                       meta: Optional[Mapping[str, Any]] = None, *,
                       keys: Sequence[str] = DEFAULT_COMPAT_KEYS, hint: Optional[str] = None) -> "LatencyTable":
        """Resume a table build: load ``path`` if it exists and is compatible, else start empty.

        Refuses (TableError) an existing file that is corrupt, measured with
        another setup (``keys``) or whose ``meta`` disagrees with ``meta`` on a
        key both define (each value shown in brief: a layer list can be
        thousands of characters).  Meta keys new in ``meta`` are added.
        Nothing is written until :meth:`save`.  ``hint``: the fix the errors
        end with (default: delete the file, or use another path; the caller
        builds what is missing).
        """
        path = Path(path)
        hint = hint or "delete it or use another path (a missing table is measured anew)"
        if not path.exists():
            return cls.new(backend_fingerprint, meta)
        table = cls.load(path, hint=hint)
        try:
            table.check_compatible(backend_fingerprint, keys, hint=hint)
        except TableError as e:
            raise TableError(f"{path}: {e}") from None
        if meta:
            clash = [k for k in meta if k in table.meta and _jsonish(table.meta[k]) != _jsonish(meta[k])]
            if clash:
                parts = ", ".join(f"{k} ({_brief(table.meta[k])} vs {_brief(meta[k])})" for k in clash)
                raise TableError(f"{path} was built for different settings: {parts}; {hint}")
            table.meta.update({k: v for k, v in meta.items() if k not in table.meta})
        return table


def entry_stats(e: Mapping[str, Any]) -> TimingStats:
    """A table entry as :class:`TimingStats` (null statistics fall back to ``mean``, ``min`` to ``p10``)."""
    def val(k: str) -> float:
        v = e.get(k)
        return float(e["mean"] if v is None else v)

    return TimingStats(median=val("median"), mean=val("mean"), std=val("std"), p10=val("p10"), p90=val("p90"),
                       min=val("min") if e.get("min") is not None else val("p10"), count=int(e.get("count") or 0),
                       **protocol_fields(e))


def _brief(v: Any, limit: int = 60) -> str:
    """``repr(v)``, or for a long one its start and the length of the list it is."""
    text = repr(v)
    if len(text) <= limit:
        return text
    size = f", {len(v)} items" if isinstance(v, (list, tuple, dict)) else ""
    return f"{text[:limit]}...{size}"


def _jsonish(v: Any) -> Any:
    """Normalise through JSON so tuples compare equal to lists after a round trip."""
    try:
        return json.loads(json.dumps(v, sort_keys=True))
    except (TypeError, ValueError):
        return v


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation through ``(xs, ys)``, linear extrapolation outside.

    ``xs`` need not be sorted but must be distinct.  One point → its ``y``
    everywhere.  (TF-NAS measured block latency on a channel grid, e.g. every
    8 channels; this fills in the widths between.)
    """
    if len(xs) != len(ys):
        raise ValueError(f"interpolate: {len(xs)} xs but {len(ys)} ys")
    if not xs:
        raise ValueError("interpolate needs at least one point")
    pts = sorted((float(a), float(b)) for a, b in zip(xs, ys))
    sx = [p[0] for p in pts]
    if any(b == a for a, b in zip(sx, sx[1:])):
        raise ValueError("interpolate: xs must be distinct")
    return interp_extrapolate(sx, [p[1] for p in pts], float(x))


def interp_extrapolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through sorted (xs, ys), linear extrapolation outside; one point: constant."""
    if len(xs) == 1:
        return float(ys[0])
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return float(ys[i])
    lo = min(max(i - 1, 0), len(xs) - 2)  # clamp to the first/last segment → extrapolation
    x0, x1, y0, y1 = xs[lo], xs[lo + 1], ys[lo], ys[lo + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
