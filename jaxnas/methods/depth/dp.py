"""Two-stage dynamic programming of latency-aware depth compression (Kim et al., ICML 2023).

Stage 1 (:func:`optimal_time_table`): T_opt(st, end), the fastest way to run convs st+1..end when no
activation is kept strictly inside.  Importance side (:func:`normalize_importance`,
:func:`extended_importance`): I_ext, the best importance of a segment whose interior may keep
zero-activation block ends.  Stage 2 (:func:`solve`): the activation set A and merge set S maximising
the summed importance under a latency budget.  Every tie-break follows the original `utils/dp.py` and
`exps/generate_tables.py` so that shipped tables reproduce exactly.
"""
from __future__ import annotations

import math
import time as _time
from dataclasses import asdict, dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from jaxnas.errors import UserError
from jaxnas.resources import check_fits_memory
from jaxnas.methods.depth.tables import (
    ExtImportanceTable,
    ExtSegment,
    ImportanceTable,
    Segment,
    TableError,
    TimeEntry,
    TimeTable,
    check_segments,
)


class BudgetError(UserError, ValueError):
    """The time limit is below the fastest network the tables allow."""


class MergeCheckError(RuntimeError):
    """Stage 2's merge set differs from the optimal merge pattern recomputed from its activations."""


# ------------------------------------------------------------------------------------------ stage 1

def optimal_time_table(time_table: TimeTable, segments: Sequence[Segment] | None = None) -> TimeTable:
    """T_opt(st, end) = min(T(st, end), min_j T_opt(st, j) + T(j, end)) over valid (st, j), (j, end).

    j is scanned upward and only a strictly smaller sum replaces the incumbent (the direct segment
    first), so ties keep the direct segment, then the smallest j.  The stdev of a split is the stdev
    of T_opt(st, j) plus that of T(j, end) (plain sum, as the original).  Output rows follow
    `segments` (default: the table's own order); breaks are "st,...,end".
    """
    segs = list(segments) if segments is not None else time_table.segments
    check_segments([s for s in segs if s in time_table.entries], segs, "time table")
    valid = set(segs)
    opt_t: dict[Segment, float] = {}
    opt_sd: dict[Segment, float] = {}
    opt_b: dict[Segment, tuple[int, ...]] = {}
    # (st, j) with j < end must be done first; ascending (st, end) guarantees it for any input order.
    for st, end in sorted(segs):
        e = time_table.entries[(st, end)]
        best, sd, amin = e.time, e.stdev, end
        for j in range(st + 1, end):
            if (st, j) in valid and (j, end) in valid:
                ej = time_table.entries[(j, end)]
                cand = opt_t[(st, j)] + ej.time
                if cand < best:
                    best, sd, amin = cand, opt_sd[(st, j)] + ej.stdev, j
        opt_t[(st, end)], opt_sd[(st, end)] = best, sd
        opt_b[(st, end)] = opt_b[(st, amin)] + (end,) if amin != end else (st, end)
    entries = {s: TimeEntry(opt_t[s], opt_sd[s], opt_b[s]) for s in segs}
    return TimeTable(entries, tuple(range(len(segs))), optimal=True, units=time_table.units)


# --------------------------------------------------------------------------------------- importance

def extended_segments(segments: Iterable[Segment], block_ends: Iterable[int], *,
                      exclude_zeros: bool = True, zero_acts: bool = True) -> list[ExtSegment]:
    """Extended segments (st, end, st_act, end_act) in the original's `construct_ext_blks` order.

    Only block ends may carry act 0.  With `exclude_zeros` (the original's setting): st = 0 -> (1, 1);
    st a block end -> st_act in {1, 0}, end_act = 1; else end a block end -> end_act in {1, 0};
    else (1, 1).  `zero_acts=False` gives (1, 1) only (the original's VGG tables).
    """
    blk = set(block_ends)
    out: list[ExtSegment] = []
    for st, end in segments:
        st_zero = zero_acts and st in blk and not (exclude_zeros and st == 0)
        end_zero = zero_acts and end in blk and not (exclude_zeros and (st == 0 or st in blk))
        out.extend((st, end, a, b) for a in ((1, 0) if st_zero else (1,)) for b in ((1, 0) if end_zero else (1,)))
    return out


def importance_offset(table: ImportanceTable, norm: str = "single", score: str = "val_acc",
                      default_acts: Iterable[int] | None = None, L: int | None = None) -> float:
    """Mean score over the normalisation rows (`--norm`): single-conv rows, all rows, or the rows of
    the default activation pattern (`default`, needs `default_acts` and `L`).  NaN scores are skipped."""
    keys = list(table.scores)
    if norm == "single":
        mask = [e - s == 1 for s, e, _, _ in keys]
    elif norm == "all":
        mask = [True] * len(keys)
    elif norm == "default":
        if default_acts is None or L is None:
            raise ValueError("norm='default' needs default_acts and L")
        d = set(default_acts)
        mask = [(e - s == 1 and (a == 1) == (s in d) and (b == 1) == (e in d)) or (s == 0 and e == 1)
                for s, e, a, b in keys]
        if sum(mask) != L:
            raise TableError(f"importance table has {sum(mask)} default-pattern single-conv rows, "
                             f"expected {L}")
    else:
        raise ValueError(f"unknown norm {norm!r} (single, all, default)")
    vals = np.array([table.scores[k][score] for k, m in zip(keys, mask) if m], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        raise TableError(f"no rows to normalise '{score}' with norm={norm!r}")
    return float(vals.sum() / vals.size)


def normalize_importance(table: ImportanceTable, alpha: float = 1.0, norm: str = "single",
                         score: str = "val_acc", default_acts: Iterable[int] | None = None,
                         L: int | None = None) -> ImportanceTable:
    """score <- score - alpha * mean(score over the `norm` rows); other columns are left alone.

    The original's settings: norm 'single', score val_acc, alpha 1.6 (MBV2-1.0), 1.2 (MBV2-1.4),
    1.4 (VGG19).  Returns a new table.
    """
    if score not in table.score_columns:
        raise TableError(f"importance table has no column '{score}' ({', '.join(table.score_columns)})")
    shift = alpha * importance_offset(table, norm, score, default_acts, L)
    scores = {k: {**v, score: v[score] - shift} for k, v in table.scores.items()}
    return ImportanceTable(scores, table.score_columns, table.ids, table.index_column, table.index_values)


def extended_importance(table: ImportanceTable, ext_segments: Sequence[ExtSegment],
                        score: str = "val_acc") -> ExtImportanceTable:
    """I_ext(st, end, a_s, a_e) = max(h(st, end, a_s, a_e), max_j I_ext(st, j, a_s, 0) + h(j, end, 0, a_e)).

    j is scanned upward; only a strictly larger value replaces the incumbent (direct segment first).
    (st, j, a_s, 0) must be an extended segment listed earlier and (j, end, 0, a_e) one listed at all,
    so inner zero-activation breaks only happen at block ends.  Breaks are "st,...,end".
    """
    ext_set = set(ext_segments)
    imp: dict[ExtSegment, float] = {}
    brk: dict[ExtSegment, tuple[int, ...]] = {}

    def h(key: ExtSegment) -> float:
        v = table.value(key, score)
        if v is None or math.isnan(v):
            raise TableError(f"importance table has no '{score}' value for extended segment {key}")
        return v

    for key in ext_segments:
        st, end, sa, ea = key
        best, amax = h(key), end
        for j in range(st + 1, end):
            if (st, j, sa, 0) in imp and (j, end, 0, ea) in ext_set:
                cand = imp[(st, j, sa, 0)] + h((j, end, 0, ea))
                if cand > best:
                    best, amax = cand, j
        imp[key] = best
        brk[key] = brk[(st, amax, sa, 0)] + (end,) if amax != end else (st, end)
    return ExtImportanceTable(imp, brk, tuple(range(len(imp))))


# ------------------------------------------------------------------------------------------ stage 2

@dataclass
class SolveResult:
    """Stage-2 answer.  Positions are 1-based "after conv p" positions in 1..L.

    `act_pos`: positions keeping an activation (A).  `merge_pos`: merge boundaries S (includes L,
    excludes 0; A is a subset).  `nodes`: the DP path [(position, act), ...] from the first node to L.
    `merge_check`: None if no T table was given, else whether the optimal merge pattern recomputed
    from A equals S.
    """

    act_pos: list[int]
    merge_pos: list[int]
    imp_sum: float
    int_time_sum: int
    flt_time_sum: float
    solve_seconds: float
    time_limit: float
    prec: float
    budget: int
    nodes: list[tuple[int, int]] = field(default_factory=list)
    merge_check: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _round7(x: np.ndarray) -> np.ndarray:
    """Python's round(v, 7) elementwise: numpy's rint-based rounding, redone in Python where the
    scaled value sits within float error of a .5 boundary (where the two may disagree)."""
    r = np.round(x, 7)
    with np.errstate(invalid="ignore"):
        y = x * 1e7
        frac = y - np.floor(y)
        near = np.isfinite(y) & (np.abs(frac - 0.5) < 1e-6 + 1e-12 * np.abs(y))
    for k in np.flatnonzero(near):
        r[k] = round(float(x[k]), 7)
    return r


def _int_times(opt_time: TimeTable, L: int, prec: float) -> dict[Segment, int]:
    return {(i, m): int(e.time * prec) for (i, m), e in opt_time.entries.items() if m <= L}


def min_achievable_time(opt_time: TimeTable, ext_importance: ExtImportanceTable, L: int,
                        prec: float) -> tuple[float, int]:
    """(fastest float time, fastest discretised time) over all paths stage 2 may take."""
    g = _int_times(opt_time, L, prec)
    inf = math.inf
    best_f = {(0, 1): 0.0}
    best_i = {(0, 1): 0}
    for m in range(1, L + 1):
        for a in (0, 1):
            bf, bi = inf, inf
            for i in range(m):
                if (i, m) not in g:
                    continue
                for j in (0, 1):
                    if (i, m, j, a) not in ext_importance.imp or (i, j) not in best_f:
                        continue
                    bf = min(bf, best_f[(i, j)] + opt_time.entries[(i, m)].time)
                    bi = min(bi, best_i[(i, j)] + g[(i, m)])
            if bf < inf:
                best_f[(m, a)], best_i[(m, a)] = bf, bi
    ends = [(m, a) for m, a in ((L, 0), (L, 1)) if (m, a) in best_f]
    if not ends:
        raise TableError(f"the tables allow no path from position 0 to {L} "
                         "(missing T_opt or importance rows)")
    return min(best_f[k] for k in ends), int(min(best_i[k] for k in ends))


def solve(opt_time: TimeTable, ext_importance: ExtImportanceTable, time_limit: float, prec: float,
          L: int, *, check_time_table: TimeTable | None = None, strict_check: bool = True) -> SolveResult:
    """Stage-2 DP (`optimal_patterns`): maximise Σ I_ext subject to Σ int(T_opt·prec) <= int(T0·prec).

    D[t, m, a] = max_{i<m, j} D[t - g(i, m), i, j] + I_ext(i, m, j, a), with D[t, 0, 1] = 0 for
    t in [0, B) (B excluded, as the original).  Candidates are scanned i ascending then j ascending;
    one replaces the incumbent if its importance rounded to 7 decimals is larger, or equal with a
    smaller accumulated integer time.  Vectorised over t.  With `check_time_table` (T), the merge set is
    re-derived from A with :func:`optimal_merge_pattern`; a mismatch raises MergeCheckError when
    `strict_check`, else sets `merge_check=False`.
    """
    t0 = _time.perf_counter()
    if not opt_time.optimal:
        raise TableError("solve() needs the optimal time table (T_opt with breaks), not T")
    if prec <= 0 or not math.isfinite(prec):
        raise ValueError(f"prec must be a positive number, got {prec}")
    check_dp_memory(time_limit, prec, L)
    B = int(time_limit * prec)
    g = _int_times(opt_time, L, prec)
    min_flt, min_int = min_achievable_time(opt_time, ext_importance, L, prec)
    if min_int > B:
        raise BudgetError(f"time limit {time_limit:g} ms is below the fastest achievable network "
                          f"({min_flt:.4f} ms; at prec {prec:g} the smallest feasible time limit is "
                          f"{min_int / prec:g} ms)")

    n_t = B + 1
    D = np.full((L + 1, 2, n_t), -np.inf)
    DT = np.zeros((L + 1, 2, n_t), dtype=np.int64)
    P_i = np.full((L + 1, 2, n_t), -1, dtype=np.int32)
    P_j = np.full((L + 1, 2, n_t), -1, dtype=np.int32)
    D[0, 1, :B] = 0.0
    imp = ext_importance.imp
    for m in range(1, L + 1):
        cands = [(i, g[(i, m)]) for i in range(m) if (i, m) in g and g[(i, m)] <= B]
        for a in (0, 1):
            best = np.full(n_t, -np.inf)
            best_r = np.full(n_t, -np.inf)
            best_t = np.zeros(n_t, dtype=np.int64)
            bi = np.full(n_t, -1, dtype=np.int32)
            bj = np.full(n_t, -1, dtype=np.int32)
            for i, gi in cands:
                for j in (0, 1):
                    h = imp.get((i, m, j, a))
                    if h is None:
                        continue
                    cand = np.full(n_t, -np.inf)
                    cand[gi:] = D[i, j, :n_t - gi] + h
                    ct = np.zeros(n_t, dtype=np.int64)
                    ct[gi:] = DT[i, j, :n_t - gi] + gi
                    rc = _round7(cand)
                    upd = np.isfinite(cand) & ((best_r < rc) | ((best_r == rc) & (ct < best_t)))
                    if upd.any():
                        best[upd], best_r[upd], best_t[upd] = cand[upd], rc[upd], ct[upd]
                        bi[upd], bj[upd] = i, j
            D[m, a], DT[m, a], P_i[m, a], P_j[m, a] = best, best_t, bi, bj

    ends = D[L, :, B]
    if not np.isfinite(ends).any():
        raise BudgetError(f"time limit {time_limit:g} ms admits no network (budget {B} units at prec "
                          f"{prec:g}; fastest achievable {min_flt:.4f} ms)")
    sol_a = int(np.argmax(ends))  # ties -> a = 0, as np.argmax in the original

    nodes: list[tuple[int, int]] = []
    merge: set[int] = {L}
    t, m, a = B, L, sol_a
    while m > 0:
        nodes.append((m, a))
        i, j = int(P_i[m, a, t]), int(P_j[m, a, t])
        merge.update(opt_time.entries[(i, m)].breaks)
        t, m, a = t - g[(i, m)], i, j
    if not (m == 0 and a == 1 and 0 <= t < B and D[0, 1, t] == 0):
        raise RuntimeError("stage-2 backtracking did not reach the initial state")  # internal bug
    nodes.reverse()
    merge.discard(0)
    act_pos = sorted(p for p, act in nodes if act)

    imp_sum, int_sum, flt_sum = 0.0, 0, 0.0
    st, st_act = 0, 1
    for pos, act in nodes:
        imp_sum += imp[(st, pos, st_act, act)]
        int_sum += g[(st, pos)]
        flt_sum += opt_time.entries[(st, pos)].time
        st, st_act = pos, act
    if imp_sum != D[L, sol_a, B]:
        raise RuntimeError("stage-2 importance sum does not match the DP value")  # internal bug

    result = SolveResult(act_pos, sorted(merge), float(imp_sum), int(int_sum), float(flt_sum), 0.0,
                         float(time_limit), float(prec), B, nodes)
    if check_time_table is not None:
        mp = optimal_merge_pattern(check_time_table, act_pos, L)
        result.merge_check = set(mp.merge_pos) == merge
        if not result.merge_check and strict_check:
            raise MergeCheckError(f"merge set from stage 2 {sorted(merge)} differs from the optimal "
                                  f"merge pattern for its activations {mp.merge_pos}")
    result.solve_seconds = _time.perf_counter() - t0
    return result


# Bytes per (position, activation, time unit) of stage 2: D (float64), DT (int64), P_i, P_j (int32); and
# per time unit of the scan's working vectors (best, best_r, best_t, cand, ct, rc: 8 bytes; bi, bj: 4).
_DP_BYTES_PER_STATE = 8 + 8 + 4 + 4
_DP_BYTES_PER_UNIT = 6 * 8 + 2 * 4


def dp_table_bytes(time_limit: float, prec: float, L: int) -> float:
    """Memory stage 2 allocates for a budget of int(time_limit * prec) units over L positions."""
    units = math.floor(time_limit * prec) + 1 if math.isfinite(time_limit * prec) else math.inf
    return units * ((L + 1) * 2 * _DP_BYTES_PER_STATE + _DP_BYTES_PER_UNIT)


def check_dp_memory(time_limit: float, prec: float, L: int) -> None:
    """Refuse (ResourceError, one line) a budget whose DP table would not fit in memory, before allocating."""
    need = dp_table_bytes(time_limit, prec, L)
    per_unit = (L + 1) * 2 * _DP_BYTES_PER_STATE + _DP_BYTES_PER_UNIT
    from jaxnas.resources import MEMORY_SHARE, available_memory

    fit_prec = MEMORY_SHARE * available_memory() / per_unit / max(time_limit, 1e-300)
    check_fits_memory(need, f"the stage-2 DP table for a time limit of {time_limit:g} ms at prec {prec:g} "
                            f"({time_limit * prec:.3g} time units x {L} positions)",
                      f"lower the precision (prec <= {fit_prec:.3g} units per ms fits) or the time limit")


class MergePattern(NamedTuple):
    merge_pos: list[int]
    time: float
    stdev: float


def optimal_merge_pattern(time_table: TimeTable, act_pos: Iterable[int], L: int) -> MergePattern:
    """Fastest merge set S ⊇ A for a fixed activation set A (the original's `--chk-time-path` check).

    dp[m] = min_{t in [last position of A ∪ {0} below m, m)} dp[t] + T(t, m) over rows present in T,
    t ascending with strict improvement.  Returns S (includes L, excludes 0), its total time and the
    summed stdev of its segments.
    """
    acts = set(int(p) for p in act_pos)
    bad = sorted(p for p in acts if not 1 <= p <= L)
    if bad:
        raise ValueError(f"activation positions must lie in 1..{L}: {bad}")
    starts = sorted(acts | {0})
    dp = [0.0] + [math.inf] * L
    arg = [0] * (L + 1)
    k = 0
    for m in range(1, L + 1):
        while k + 1 < len(starts) and starts[k + 1] < m:
            k += 1
        for t in range(starts[k], m):
            e = time_table.entries.get((t, m))
            if e is None:
                continue
            cand = dp[t] + e.time
            if dp[m] > cand:
                dp[m], arg[m] = cand, t
    if not math.isfinite(dp[L]):
        raise TableError(f"no merge pattern reaches position {L} with activations {sorted(acts)} "
                         "(the time table lacks the needed segments)")
    merge, m = set(), L
    while m > 0:
        merge.add(m)
        m = arg[m]
    S = sorted(merge)
    stdev = sum(time_table.entries[seg].stdev for seg in zip([0, *S], S))
    return MergePattern(S, dp[L], stdev)
