"""CSV tables of the depth-compression method, in the original repository's formats.

* time table            ``id,st,end,time,stdev``                 (T; times in ms)
* optimal time table    ``id,st,end,time,stdev,breaks``          (T_opt; breaks = "st,...,end")
* importance table      ``[,]id,st,end,st_act,end_act,<scores>``  (train_loss,train_acc,val_loss,val_acc)
* ext importance table  ``id,st,end,st_act,end_act,imp,breaks``  (I_ext)

Floats are written with ``repr`` (shortest round-trip form, as pandas does), so read -> write
reproduces a file byte for byte.  An optional ``# units: ms`` comment line may precede the header;
times in any other unit are refused.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from jaxnas.errors import UserError

Segment = tuple[int, int]
ExtSegment = tuple[int, int, int, int]

TIME_COLUMNS = ("id", "st", "end", "time", "stdev")
OPT_COLUMNS = ("id", "st", "end", "time", "stdev", "breaks")
IMP_KEY_COLUMNS = ("id", "st", "end", "st_act", "end_act")
IMP_SCORE_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")
EXT_COLUMNS = ("id", "st", "end", "st_act", "end_act", "imp", "breaks")
UNITS = "ms"


class TableError(UserError, ValueError):
    """A latency / importance table is malformed or does not fit the chain."""


@dataclass(frozen=True)
class TimeEntry:
    time: float
    stdev: float
    breaks: tuple[int, ...] | None = None


@dataclass
class TimeTable:
    """T (``breaks is None`` everywhere) or T_opt table, keyed by segment in file order."""

    entries: dict[Segment, TimeEntry]
    ids: tuple[int, ...] | None = None
    optimal: bool = False
    units: str = UNITS

    @property
    def segments(self) -> list[Segment]:
        return list(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, seg: object) -> bool:
        return seg in self.entries


@dataclass
class ImportanceTable:
    """Raw per-segment importance rows (``importance.csv``): scores per extended segment."""

    scores: dict[ExtSegment, dict[str, float]]
    score_columns: tuple[str, ...] = IMP_SCORE_COLUMNS
    ids: tuple[int, ...] | None = None
    index_column: bool = False  # pandas' unnamed leading index column (aggregate_imp.py output)
    index_values: tuple[str, ...] | None = None

    def value(self, key: ExtSegment, score: str = "val_acc") -> float | None:
        row = self.scores.get(key)
        return None if row is None else row.get(score)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class ExtImportanceTable:
    """I_ext table: extended segment -> (imp, breaks)."""

    imp: dict[ExtSegment, float]
    breaks: dict[ExtSegment, tuple[int, ...]] = field(default_factory=dict)
    ids: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.imp)


# ----------------------------------------------------------------------------------------- parsing

def _read_text(source: str | os.PathLike | io.TextIOBase) -> tuple[str, str]:
    if isinstance(source, io.TextIOBase) or hasattr(source, "read"):
        return source.read(), getattr(source, "name", "<stream>")
    with open(source, newline="") as f:
        return f.read(), os.fspath(source)


def _split_comments(text: str, name: str, units: str) -> tuple[str, str | None, int]:
    """Strip leading '#' lines; return (csv text, declared units, number of stripped lines)."""
    lines = text.splitlines(keepends=True)
    declared = None
    n = 0
    while n < len(lines) and lines[n].lstrip().startswith("#"):
        body = lines[n].lstrip()[1:].strip()
        if body.lower().startswith("units"):
            declared = body.split(":", 1)[1].strip() if ":" in body else body[5:].strip()
        n += 1
    if declared is not None and declared.lower() != units.lower():
        raise TableError(f"{name}: table declares units '{declared}', expected '{units}' "
                         f"(convert the times to {units} first)")
    return "".join(lines[n:]), declared, n


def _rows(source, required: Sequence[str], units: str = UNITS) -> tuple[str, list[str], list[tuple[int, dict]]]:
    """(name, header, [(line number, row)]) of a CSV table, after its leading '#' lines."""
    text, name = _read_text(source)
    text, _, skip = _split_comments(text, name, units)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise TableError(f"{name}: empty table (no header)") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise TableError(f"{name}: missing column(s) {', '.join(repr(c) for c in missing)} "
                         f"(header: {','.join(header)})")
    rows = []
    for lineno, rec in enumerate(reader, start=skip + 2):
        if not rec or all(not v.strip() for v in rec):
            continue
        if len(rec) != len(header):
            raise TableError(f"{name}:{lineno}: {len(rec)} fields, header has {len(header)}")
        rows.append((lineno, dict(zip(header, rec))))
    return name, header, rows


def _int(v: str, col: str, name: str, lineno: int) -> int:
    try:
        f = float(v)
        if not f.is_integer():
            raise ValueError
        return int(f)
    except ValueError:
        raise TableError(f"{name}:{lineno}: non-integer value {v!r} in column '{col}'") from None


def _float(v: str, col: str, name: str, lineno: int) -> float:
    try:
        return float(v)
    except ValueError:
        raise TableError(f"{name}:{lineno}: non-numeric value {v!r} in column '{col}'") from None


def _breaks(v: str, st: int, end: int, name: str, lineno: int) -> tuple[int, ...]:
    try:
        b = tuple(int(x) for x in v.split(","))
    except ValueError:
        raise TableError(f"{name}:{lineno}: malformed breaks {v!r} (expected \"st,...,end\")") from None
    if len(b) < 2 or b[0] != st or b[-1] != end or any(x >= y for x, y in zip(b, b[1:])):
        raise TableError(f"{name}:{lineno}: breaks {v!r} must increase strictly from {st} to {end}")
    return b


def _segment(row: dict, name: str, lineno: int) -> Segment:
    st, end = _int(row["st"], "st", name, lineno), _int(row["end"], "end", name, lineno)
    if not 0 <= st < end:
        raise TableError(f"{name}:{lineno}: bad segment (st={st}, end={end}); need 0 <= st < end")
    return st, end


def _fmt_list(items: Iterable, n: int = 6) -> str:
    items = list(items)
    s = ", ".join(str(x) for x in items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_segments(table_segments: Iterable[Segment], expected: Sequence[Segment], name: str) -> None:
    """Raise TableError if the table lacks valid segments or has segments that are not valid."""
    have = set(table_segments)
    missing = [s for s in expected if s not in have]
    if missing:
        raise TableError(f"{name}: missing {len(missing)} of {len(expected)} valid segments: "
                         f"{_fmt_list(missing)}")
    extra = sorted(have - set(expected))
    if extra:
        raise TableError(f"{name}: segment(s) not mergeable in this chain: {_fmt_list(extra)}")


def chain_length(segments: Iterable[Segment]) -> int:
    """L, the number of convs a table's segments span (the largest end position)."""
    return max((end for _, end in segments), default=0)


def check_coverage(table: TimeTable, name: str) -> int:
    """A time table must time every conv of its chain: the single-conv rows (i, i+1) for i < L, where L is
    its largest end. Returns L; a truncated or partial table raises TableError."""
    L = chain_length(table.entries)
    if L == 0:
        raise TableError(f"{name}: the table has no rows")
    missing = [(i, i + 1) for i in range(L) if (i, i + 1) not in table.entries]
    if missing:
        raise TableError(f"{name}: rows reach conv {L} but the single-conv rows {_fmt_list(missing)} are missing: "
                         "the table is truncated or partial; build it again for the whole network")
    return L


def check_tables_agree(opt: TimeTable, ext: "ExtImportanceTable", opt_name: str, ext_name: str) -> int:
    """The time and importance tables of one depth search must describe the same network: the same number
    of convs and the same segments. Returns L."""
    L = check_coverage(opt, opt_name)
    L_imp = chain_length((st, end) for st, end, _, _ in ext.imp)
    if L_imp != L:
        raise TableError(f"{ext_name} covers {L_imp} convs but {opt_name} covers {L}: the tables come from "
                         "different networks; build both for the same one")
    t_segs = set(opt.entries)
    i_segs = {(st, end) for st, end, _, _ in ext.imp}
    only_t, only_i = sorted(t_segs - i_segs), sorted(i_segs - t_segs)
    if only_t or only_i:
        which = (f"{len(only_t)} segment(s) of {opt_name} have no importance ({_fmt_list(only_t)})" if only_t else
                 f"{len(only_i)} segment(s) of {ext_name} have no time ({_fmt_list(only_i)})")
        raise TableError(f"the tables do not cover the same segments: {which}; build both for the same network")
    return L


def read_time_table(source, segments: Sequence[Segment] | None = None, units: str = UNITS, *,
                    optimal: bool = False) -> TimeTable:
    """Read ``id,st,end,time,stdev`` (`optimal`: T_opt, with breaks); with `segments`, require exactly those
    segments."""
    name, _, rows = _rows(source, OPT_COLUMNS if optimal else TIME_COLUMNS, units)
    entries: dict[Segment, TimeEntry] = {}
    ids = []
    for lineno, row in rows:
        seg = _segment(row, name, lineno)
        t = _float(row["time"], "time", name, lineno)
        sd = _float(row["stdev"], "stdev", name, lineno)
        if not math.isfinite(t) or t < 0:
            raise TableError(f"{name}:{lineno}: invalid time {row['time']!r} for segment {seg} "
                             "(must be finite and >= 0)")
        if not math.isfinite(sd) or sd < 0:
            raise TableError(f"{name}:{lineno}: invalid stdev {row['stdev']!r} for segment {seg} "
                             "(must be finite and >= 0)")
        if seg in entries:
            raise TableError(f"{name}:{lineno}: duplicate row for segment {seg}")
        b = _breaks(row["breaks"], *seg, name, lineno) if optimal else None
        entries[seg] = TimeEntry(t, sd, b)
        ids.append(_int(row["id"], "id", name, lineno))
    if segments is not None:
        check_segments(entries, segments, name)
    return TimeTable(entries, tuple(ids), optimal, units)


def read_opt_table(source, segments: Sequence[Segment] | None = None, units: str = UNITS) -> TimeTable:
    """Read ``id,st,end,time,stdev,breaks`` (T_opt)."""
    return read_time_table(source, segments, units, optimal=True)


# ----------------------------------------------------------------------------------------- writing

def _num(x: float | int) -> str:
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


def _write(dest, header: Sequence[str], rows: Iterable[Sequence], units_header: str | None) -> str:
    buf = io.StringIO()
    if units_header:
        buf.write(f"# units: {units_header}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    if dest is not None:
        if hasattr(dest, "write"):
            dest.write(text)
        else:
            with open(dest, "w", newline="") as f:
                f.write(text)
    return text


def _ids(n: int, ids: tuple[int, ...] | None) -> Sequence[int]:
    return ids if ids is not None and len(ids) == n else range(n)


def write_time_table(table: TimeTable, dest=None, units_header: bool = False) -> str:
    """Write T as ``id,st,end,time,stdev``; returns the text (and writes `dest` if given)."""
    rows = [(i, st, end, _num(e.time), _num(e.stdev))
            for i, ((st, end), e) in zip(_ids(len(table), table.ids), table.entries.items())]
    return _write(dest, TIME_COLUMNS, rows, table.units if units_header else None)


def write_opt_table(table: TimeTable, dest=None, units_header: bool = False) -> str:
    """Write T_opt as ``id,st,end,time,stdev,breaks`` (breaks quoted, "st,...,end")."""
    rows = []
    for i, ((st, end), e) in zip(_ids(len(table), table.ids), table.entries.items()):
        if e.breaks is None:
            raise TableError(f"segment {(st, end)} has no breaks; is this an optimal table?")
        rows.append((i, st, end, _num(e.time), _num(e.stdev), ",".join(map(str, e.breaks))))
    return _write(dest, OPT_COLUMNS, rows, table.units if units_header else None)


# -------------------------------------------------------------------------------------- importance

def _ext_key(row: dict, name: str, lineno: int) -> ExtSegment:
    st, end = _segment(row, name, lineno)
    a, b = _int(row["st_act"], "st_act", name, lineno), _int(row["end_act"], "end_act", name, lineno)
    if a not in (0, 1) or b not in (0, 1):
        raise TableError(f"{name}:{lineno}: st_act/end_act must be 0 or 1, got {a}/{b}")
    return st, end, a, b


def read_importance_table(source, score_columns: Sequence[str] | None = None,
                          ext_segments: Sequence[ExtSegment] | None = None) -> ImportanceTable:
    """Read ``importance.csv`` (optionally with pandas' unnamed index column first).

    `score_columns` default to every column that is not a key column; NaN scores are kept (the
    original's pandas mean skips them) but non-numeric text is refused.
    """
    name, header, rows = _rows(source, IMP_KEY_COLUMNS)
    index_column = header[0] == ""
    cols = tuple(score_columns) if score_columns is not None else tuple(
        h for h in header if h not in IMP_KEY_COLUMNS and h != "")
    missing = [c for c in cols if c not in header]
    if missing or not cols:
        raise TableError(f"{name}: missing score column(s) {', '.join(map(repr, missing)) or '(none)'}")
    scores: dict[ExtSegment, dict[str, float]] = {}
    ids, index_values = [], []
    for lineno, row in rows:
        key = _ext_key(row, name, lineno)
        if key in scores:
            raise TableError(f"{name}:{lineno}: duplicate row for extended segment {key}")
        scores[key] = {c: _float(row[c], c, name, lineno) for c in cols}
        ids.append(_int(row["id"], "id", name, lineno))
        if index_column:
            index_values.append(row[""])
    if ext_segments is not None:
        missing_k = [k for k in ext_segments if k not in scores]
        if missing_k:
            raise TableError(f"{name}: missing {len(missing_k)} of {len(ext_segments)} extended "
                             f"segments (st, end, st_act, end_act): {_fmt_list(missing_k)}")
    return ImportanceTable(scores, cols, tuple(ids), index_column,
                           tuple(index_values) if index_column else None)


def write_importance_table(table: ImportanceTable, dest=None) -> str:
    header = ([""] if table.index_column else []) + list(IMP_KEY_COLUMNS) + list(table.score_columns)
    rows = []
    idx = table.index_values or tuple(str(i) for i in range(len(table)))
    for n, (i, (key, sc)) in enumerate(zip(_ids(len(table), table.ids), table.scores.items())):
        r = ([idx[n]] if table.index_column else []) + [i, *key]
        rows.append(r + [_num(sc[c]) for c in table.score_columns])
    return _write(dest, header, rows, None)


def read_ext_importance(source, ext_segments: Sequence[ExtSegment] | None = None) -> ExtImportanceTable:
    """Read ``id,st,end,st_act,end_act,imp,breaks`` (I_ext)."""
    name, _, rows = _rows(source, EXT_COLUMNS)
    imp: dict[ExtSegment, float] = {}
    brk: dict[ExtSegment, tuple[int, ...]] = {}
    ids = []
    for lineno, row in rows:
        key = _ext_key(row, name, lineno)
        if key in imp:
            raise TableError(f"{name}:{lineno}: duplicate row for extended segment {key}")
        v = _float(row["imp"], "imp", name, lineno)
        if not math.isfinite(v):
            raise TableError(f"{name}:{lineno}: importance {row['imp']!r} of {key} is not finite")
        imp[key] = v
        brk[key] = _breaks(row["breaks"], key[0], key[1], name, lineno)
        ids.append(_int(row["id"], "id", name, lineno))
    if ext_segments is not None:
        missing_k = [k for k in ext_segments if k not in imp]
        if missing_k:
            raise TableError(f"{name}: missing {len(missing_k)} of {len(ext_segments)} extended "
                             f"segments: {_fmt_list(missing_k)}")
    return ExtImportanceTable(imp, brk, tuple(ids))


def write_ext_importance(table: ExtImportanceTable, dest=None) -> str:
    rows = []
    for i, (key, v) in zip(_ids(len(table), table.ids), table.imp.items()):
        b = table.breaks.get(key, (key[0], key[1]))
        rows.append((i, key[0], key[1], key[2], key[3], _num(v), ",".join(map(str, b))))
    # Column order of the original output: id, st, end, st_act, end_act, imp, breaks.
    return _write(dest, EXT_COLUMNS, rows, None)


def time_table_from_mapping(times: Mapping[Segment, float | tuple[float, float]],
                            order: Sequence[Segment] | None = None) -> TimeTable:
    """Build a T table from {(st, end): time} or {(st, end): (time, stdev)} (stdev defaults to 0)."""
    order = list(order) if order is not None else list(times)
    entries = {}
    for seg in order:
        v = times[seg]
        t, sd = (v if isinstance(v, tuple) else (v, 0.0))
        if not math.isfinite(float(t)) or float(t) < 0:
            raise TableError(f"invalid time {t!r} for segment {seg}")
        entries[(int(seg[0]), int(seg[1]))] = TimeEntry(float(t), float(sd))
    return TimeTable(entries)
