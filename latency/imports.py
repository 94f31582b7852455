"""Importers for published latency tables, converted to :class:`LatencyTable`.

* TF-NAS ``latency_pkl/*.pkl`` (Hu et al., ECCV 2020): a pickled
  ``collections.OrderedDict``: ``'base'`` → float ms, and
  ``'MBInvertedResBlock_{H}_{in}_{se}_{out}_k{k}_s{s}_{act}'`` →
  ``OrderedDict{mid_channels: ms}``.  Unpickled with a restricted unpickler
  that resolves only ``collections.OrderedDict`` and a few builtin containers,
  so a hostile ``.pkl`` cannot run code.  Each (block, mid) pair becomes one
  entry ``'{block_key}:mid{mid}'``; the measured mids per block are kept in
  ``meta['channel_grid']`` for :func:`tfnas_lookup`'s interpolation.
  (``latency_gpu.pkl`` is ms per batch of 32 on a Titan RTX, ``latency_cpu.pkl``
  ms per image on a Xeon Gold 6130, single thread — pass those as
  ``device``/``batch_size``.)
* Depth-compression time tables (CSV ``id,st,end,time,stdev[,breaks]``) →
  entries ``'seg_{st}_{end}'`` with ``mean=time``, ``std=stdev``, ``count=null``.
"""
from __future__ import annotations

import bisect
import csv
import io
import math
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .fingerprint import Fingerprint
from .table import LatencyTable, TableError, interpolate

__all__ = [
    "import_tfnas_pkl",
    "load_tfnas_pkl",
    "tfnas_key",
    "tfnas_lookup",
    "tfnas_base",
    "parse_tfnas_key",
    "import_depth_csv",
    "TFNAS_KEY_RE",
]

PathLike = Union[str, "os.PathLike[str]"]

TFNAS_KEY_RE = re.compile(
    r"^(?P<block>[A-Za-z][A-Za-z0-9]*)_(?P<H>\d+)_(?P<cin>\d+)_(?P<se>\d+)_(?P<cout>\d+)"
    r"_k(?P<k>\d+)_s(?P<s>\d+)_(?P<act>[A-Za-z][A-Za-z0-9]*)$")
_MID_SEP = ":mid"


# ---------------------------------------------------------------- unpickling
class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a TF-NAS table needs; refuses everything else."""

    ALLOWED = frozenset({
        ("collections", "OrderedDict"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
        ("builtins", "set"), ("builtins", "frozenset"),
        ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    })

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _RefusedGlobal(
            f"refusing to load global {module}.{name} from {self._source}: a TF-NAS latency table "
            f"holds only OrderedDict/float/int (the file is not one, or it is malicious)")


def load_tfnas_pkl(path_or_bytes: Union[PathLike, bytes]) -> "OrderedDict[str, Any]":
    """The raw TF-NAS dict, unpickled safely; :class:`TableError` on anything unexpected."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        source = os.fspath(path_or_bytes)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise TableError(f"TF-NAS latency pickle not found: {source}") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except _RefusedGlobal as e:
        raise TableError(str(e)) from None
    except Exception as e:  # truncated/garbled pickles raise all sorts of things
        raise TableError(f"{source} is not a readable pickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise TableError(f"{source}: expected a dict of latencies, got {type(obj).__name__}")
    return obj  # type: ignore[return-value]


def parse_tfnas_key(key: str) -> Optional[dict[str, Any]]:
    """``{'block','H','in','se','out','k','s','act'}`` from a TF-NAS key, or None if it doesn't match."""
    m = TFNAS_KEY_RE.match(key)
    if not m:
        return None
    g = m.groupdict()
    return {"block": g["block"], "H": int(g["H"]), "in": int(g["cin"]), "se": int(g["se"]),
            "out": int(g["cout"]), "k": int(g["k"]), "s": int(g["s"]), "act": g["act"]}


def tfnas_key(H: int, cin: int, se: int, cout: int, k: int, s: int, act: str,
              block: str = "MBInvertedResBlock") -> str:
    """The TF-NAS block key, e.g. ``'MBInvertedResBlock_112_16_0_24_k3_s2_relu'``."""
    return f"{block}_{int(H)}_{int(cin)}_{int(se)}_{int(cout)}_k{int(k)}_s{int(s)}_{act}"


def _ms(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise TableError(f"{where}: latency must be a finite number >= 0 ms, got {v!r}")
    return float(v)


def _default_fp(backend: str, runtime: str, device: str, batch_size: Optional[int],
                threads: Optional[int], precision: str) -> Fingerprint:
    return Fingerprint(backend=backend, runtime=runtime, device=device, provider="", threads=threads,
                       batch_size=batch_size, precision=precision, arch="unknown")


def import_tfnas_pkl(path_or_bytes: Union[PathLike, bytes], *,
                     fingerprint: Optional[Union[Fingerprint, Mapping[str, Any]]] = None,
                     device: str = "unknown", batch_size: Optional[int] = None,
                     threads: Optional[int] = None, runtime: str = "pytorch 1.1 (TF-NAS)",
                     precision: str = "fp32") -> LatencyTable:
    """Convert a TF-NAS latency pickle to a :class:`LatencyTable` (one entry per block × mid).

    Entries: ``'base'`` and ``'{block_key}:mid{mid}'`` with ``mean`` = the
    published ms and ``count/std/median/p10/p90`` = null; entry ``meta`` keeps
    the parsed key fields (H, in, se, out, k, s, act), ``mid`` and ``source_key``.
    """
    raw = load_tfnas_pkl(path_or_bytes)
    source = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else os.fspath(path_or_bytes)
    fp = fingerprint if fingerprint is not None else _default_fp(
        "tfnas", runtime, device, batch_size, threads, precision)
    grid: dict[str, list[int]] = {}
    clamped: list[str] = []
    table = LatencyTable.new(fp, meta={"source": "tf-nas", "source_file": os.path.basename(source),
                                       "channel_grid": grid, "clamped_negative": clamped})
    for key, val in raw.items():
        if not isinstance(key, str):
            raise TableError(f"{source}: keys must be strings, got {key!r}")
        if isinstance(val, Mapping):
            parsed = parse_tfnas_key(key)
            mids = []
            for mid, ms in val.items():
                if isinstance(mid, bool) or not isinstance(mid, int) or mid < 1:
                    raise TableError(f"{source}: {key!r} has mid_channels key {mid!r}; expected int >= 1")
                meta = {**(parsed or {}), "mid": mid, "source_key": key}
                # The shipped tables were measured every 8 channels and extrapolated linearly below the
                # first knot, so a few tiny mids (never queried: a search uses [max // 2, max]) are negative.
                if isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms < 0:
                    clamped.append(f"{key}{_MID_SEP}{mid}")
                    ms = 0.0
                table.put(f"{key}{_MID_SEP}{mid}", _imported(_ms(ms, f"{source}: {key}[{mid}]")), meta=meta)
                mids.append(mid)
            grid[key] = sorted(mids)
        else:
            meta = {"source_key": key}
            if key == "base":
                meta["kind"] = "base"  # stem conv + first block + head, summed by TF-NAS
            table.put(key, _imported(_ms(val, f"{source}: {key}")), meta=meta)
    return table


def _imported(mean: float) -> dict[str, Any]:
    return {"count": None, "mean": mean, "std": None, "median": None, "p10": None, "p90": None}


def tfnas_base(table: LatencyTable) -> float:
    """TF-NAS ``'base'`` latency (stem, first block, head) in ms."""
    return table.ms("base", "mean")


def tfnas_lookup(table: LatencyTable, H: int, cin: int, se: int, cout: int, k: int, s: int,
                 act: str, mid: int, *, block: str = "MBInvertedResBlock") -> float:
    """Latency (ms) of a TF-NAS block with ``mid`` expansion channels.

    Exact when ``mid`` was measured; otherwise piecewise-linear between the
    nearest measured mids (linear extrapolation outside the grid, floored at 0).
    """
    key = tfnas_key(H, cin, se, cout, k, s, act, block=block)
    exact = f"{key}{_MID_SEP}{int(mid)}"
    if exact in table:
        return table.ms(exact, "mean")
    grid = (table.meta.get("channel_grid") or {}).get(key)
    if not grid:
        raise KeyError(f"no TF-NAS entry for {key!r} in this table")
    if len(grid) == 1:
        return table.ms(f"{key}{_MID_SEP}{grid[0]}", "mean")
    i = bisect.bisect_left(grid, mid)
    lo = min(max(i - 1, 0), len(grid) - 2)
    xs = [grid[lo], grid[lo + 1]]
    ys = [table.ms(f"{key}{_MID_SEP}{m}", "mean") for m in xs]
    return max(0.0, interpolate(xs, ys, mid))


# ------------------------------------------------------------ depth CSV tables
_CSV_REQUIRED = ("id", "st", "end", "time", "stdev")


def import_depth_csv(path: PathLike, *,
                     fingerprint: Optional[Union[Fingerprint, Mapping[str, Any]]] = None,
                     device: str = "unknown", batch_size: Optional[int] = None,
                     threads: Optional[int] = None, runtime: str = "unknown (depth-compression CSV)",
                     backend: str = "depth-csv", precision: str = "fp32") -> LatencyTable:
    """Convert a depth-compression time table (``id,st,end,time,stdev[,breaks]``) to a LatencyTable.

    Entry ``'seg_{st}_{end}'``: ``mean=time``, ``std=stdev``, other stats null;
    entry meta keeps ``id``, ``st``, ``end`` and, when the column exists and is
    non-empty, the raw ``breaks`` string.  A duplicate ``(st, end)`` is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TableError(f"depth-compression time table not found: {path}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in _CSV_REQUIRED if c not in header]
    if missing:
        raise TableError(f"{path}: missing column(s) {missing}; expected header "
                         f"'id,st,end,time,stdev[,breaks]', got {','.join(header) or '(empty file)'}")
    reader.fieldnames = header
    fp = fingerprint if fingerprint is not None else _default_fp(
        backend, runtime, device, batch_size, threads, precision)
    table = LatencyTable.new(fp, meta={"source": "depth-compression", "source_file": path.name})
    for lineno, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        where = f"{path}:{lineno}"
        try:
            st, end = int(row["st"].strip()), int(row["end"].strip())
            t, sd = float(row["time"]), float(row["stdev"])
        except (TypeError, ValueError, AttributeError):
            raise TableError(f"{where}: st/end must be integers and time/stdev numbers, got "
                             f"st={row.get('st')!r} end={row.get('end')!r} time={row.get('time')!r} "
                             f"stdev={row.get('stdev')!r}") from None
        key = f"seg_{st}_{end}"
        if key in table:
            raise TableError(f"{where}: duplicate segment st={st} end={end}")
        rid = (row.get("id") or "").strip()
        meta: dict[str, Any] = {"id": int(rid) if rid.lstrip("-").isdigit() else rid, "st": st, "end": end}
        breaks = row.get("breaks")
        if isinstance(breaks, str) and breaks.strip():
            meta["breaks"] = breaks.strip()
        table.put(key, {**_imported(_ms(t, f"{where} time")), "std": _ms(sd, f"{where} stdev")}, meta=meta)
    return table
