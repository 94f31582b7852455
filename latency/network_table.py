"""Block latencies measured inside a reference network (`build_table(..., context="network")`).

A block timed alone pays per-call costs a block inside a network does not (on onnxruntime: the NHWC <->
NCHWc reorders at its boundaries, I/O, a warm cache), and those costs differ between block types, so a
sum of isolated blocks ranks networks worse than their MACs do (benchmarks/predictor_validation.py).
Here every choice is timed as the change it makes to a whole network:

* the reference R of each width: every stage at its largest depth, every block at the stage's middle
  choice;
* probes, each timed against R in alternating rounds (Δ = median of the per-round differences): stage s
  with its first block set to choice c; with all its later blocks set to c; with depth d < D_s.

Each probe p is one equation Σ_k n_pk τ_k = L_R + Δ_p over the in-network times τ_k of the parts it
holds (R itself: Δ = 0); :func:`derive_parts` solves them by least squares.  With additive costs the
probes pin down every block choice and every later block (through the depth probes); what they leave
open is how stem, head and the first blocks at their reference choice split their common sum, and every
architecture holds exactly one of each, so a prior settles it without changing any prediction.  By
construction the prediction of R is L_R.  The predictor reads these τ like any table entry.

A probe's Δ is only as good as the network's own noise: at 32 px a block is 5-20 % of its network and Δ is
known to ~1 % of the block; at 224 px a block is 1-2 % of a several-ms network, and 97 of 211 probes of
`mbv2-224` stopped at the timing cap with Δ known to ±20 % of the network — many times the block itself
(43 % of 30 nets predicted within ±5 %, where the alone table, on the same nets, had 100 %).  So every
part is also timed alone (``alone:<key>``) and the equations are solved by weighted least squares with
that as the prior: τ_k ≈ c · alone_k, c = L_R / Σ_R alone (the per-call costs the network does not pay,
spread in proportion), with a standard deviation of ρ of it, ρ read off the probes themselves
(:func:`prior_spread`, or fixed by PRIOR_REL); each probe is weighted by the standard error of its Δ.  Where the probes are precise (small inputs) they decide τ; where they are
noise (large inputs) τ falls back to the calibrated alone time.  A table without alone entries (built by
an older jaxnas) keeps the weak MACs prior and unweighted equations.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .batch_timing import ROUND_STATS as STATS
from .batch_timing import pair_into_table
from .spaces import BlockConfig, SearchSpace
from .table import ALONE_PREFIX, PROBE_PREFIX, LatencyTable, TableError
from .timing import TimingProtocol

__all__ = ["PROBE_PREFIX", "ALONE_PREFIX", "PRIOR_REL", "prior_spread", "reference_arch", "probes", "measure_probes",
           "derive_parts", "measure_network_probes", "alone_parts"]

# How far a part's in-network time may sit from its calibrated alone time (1 sd, relative).  Per-call
# boundary costs differ between block types, by up to about half a small block's time on onnxruntime
# here; how far they differ in a given table is read off its probes (prior_spread), so precise probes
# (SE a few % of the block) outweigh the prior and noisy ones are outweighed by it.
PRIOR_REL = None  # None: estimated from the probes (prior_spread); a number fixes it
PRIOR_REL_MIN, PRIOR_REL_MAX = 0.02, 1.0
SE_FLOOR_REL = 1e-6  # of L_R: a noiseless (simulated) Δ still has a finite weight


def _choice_key(c) -> str:
    k, e, se = c
    return f"k{int(k)}e{float(e):g}{'se' if se else ''}"


def reference_arch(space: SearchSpace, width: float) -> dict[str, Any]:
    """R: largest depth everywhere, each stage's middle choice in every block."""
    depths = [max(st.depths) for st in space.stages]
    choices = [space._choices(st) for st in space.stages]
    return {"width": float(width), "depths": depths,
            "blocks": [[list(opts[len(opts) // 2])] * d for opts, d in zip(choices, depths)]}


def probes(space: SearchSpace, width: float) -> dict[str, tuple[str, int, Any, dict[str, Any]]]:
    """{table key: (kind, stage, choice or depth, arch)} of every probe of R at `width` (R itself included)."""
    ref = reference_arch(space, width)
    w = f"w{float(width):g}"
    out: dict[str, tuple[str, int, Any, dict[str, Any]]] = {f"{PROBE_PREFIX}{w}:reference": ("reference", -1, None, ref)}

    def variant(si: int, blocks: list[Any]) -> dict[str, Any]:
        """R with stage ``si`` made of ``blocks`` (its depth their number)."""
        arch = {**ref, "depths": list(ref["depths"]), "blocks": [list(b) for b in ref["blocks"]]}
        arch["depths"][si], arch["blocks"][si] = len(blocks), blocks
        return arch

    for si, st in enumerate(space.stages):
        rb = ref["blocks"][si]
        D = len(rb)
        at = f"{PROBE_PREFIX}{w}:s{si}"
        for c in space._choices(st):
            if tuple(c) == tuple(rb[0]):
                continue
            out[f"{at}:first:{_choice_key(c)}"] = ("first", si, tuple(c), variant(si, [list(c)] + rb[1:]))
            if D > 1:
                out[f"{at}:later:{_choice_key(c)}"] = ("later", si, tuple(c), variant(si, rb[:1] + [list(c)] * (D - 1)))
        for d in st.depths:
            if d < D:
                out[f"{at}:depth{d}"] = ("depth", si, d, variant(si, rb[:d]))
    return out


def measure_probes(space: SearchSpace, backend, table: LatencyTable, save: Callable[[], None], *, width: float,
                   warmup: Optional[int], runs: Optional[int], rounds: int, log: Callable[[str], None],
                   protocol: Optional[TimingProtocol] = None) -> None:
    """Time every probe missing from `table` against R in alternating rounds
    (:func:`latency.batch_timing.pair_into_table`: by the ``protocol`` until the interval of their time
    ratio is within its ``rel_ci``, otherwise ``rounds`` fixed rounds) and save after each one."""
    todo = probes(space, width)
    ref_key = next(iter(todo))
    ref_spec = space.build(todo[ref_key][3], name=f"{space.name}_netref")
    candidates = {k: (lambda arch=arch: (space.build(arch, name=f"{space.name}_probe"), None))
                  for k, (_kind, _si, _what, arch) in todo.items() if k != ref_key}
    meta = {ref_key: {"kind": "netref", "arch": todo[ref_key][3]}}
    for k, (kind, si, what, arch) in todo.items():
        if k != ref_key:
            meta[k] = {"kind": "probe", "probe": kind, "stage": si, "width": float(width), "arch": arch,
                       "choice": list(what) if isinstance(what, tuple) else what}
    pair_into_table(table, save, backend, ref_key, (ref_spec, None), candidates, protocol=protocol, warmup=warmup,
                    runs=runs, rounds=rounds, entry_meta=meta, log=log, what="probes of the reference network")


def _delta_se(entry: dict[str, Any]) -> float:
    """Standard error of a probe's Δ: from its interval (by the protocol) or its rounds' spread."""
    meta = entry.get("meta") or {}
    ci = meta.get("delta_ci_ms")
    if ci is not None:
        return abs(float(ci[1]) - float(ci[0])) / (2 * 1.96)
    return 1.2533 * float(meta.get("delta_std_ms", 0.0)) / np.sqrt(max(int(meta.get("rounds", 1)), 1))


def _reference_se(entry: dict[str, Any]) -> float:
    return float(entry.get("std", 0.0)) / np.sqrt(max(int(entry.get("count", 1)), 1))


def derive_parts(space: SearchSpace, table: LatencyTable) -> dict[str, dict[str, Any]]:
    """{part key: entry} of the in-network times τ (see the module doc) from the probes of every width.

    Each probe p (and R) is one linear equation Σ_k n_pk τ_k = L_R + Δ_p over the parts it holds.  With
    every part's alone time in the table the equations are weighted by 1 / SE(Δ_p) and solved with prior
    rows τ_k = c · alone_k weighted by 1 / (ρ · c · alone_k), ρ from :func:`prior_spread` (or PRIOR_REL where
    that fixes it); otherwise (older tables) unweighted,
    with prior rows τ_k = share of L_R by MACs weighted 1e-4, which only decide what the probes leave open
    (how stem, head and first blocks split their common sum).  A block that occurs at two places (same
    key, e.g. two stages of equal width) gets one τ, as additivity requires.
    """
    rows, rhs, spreads, ses, ref_row, keys = [], [], [], [], [], {}
    cfgs: dict[str, BlockConfig] = {}
    prior: dict[str, float] = {}
    refs: list[tuple[dict[str, int], np.ndarray]] = []
    for width in space.widths:
        todo = probes(space, width)
        missing = [k for k in todo if k not in table]
        if missing:
            raise TableError(f"{len(missing)} probes of the reference network are not measured yet (e.g. {missing[0]})")
        ref_key = next(iter(todo))
        first_row = len(rows)
        L_R = np.asarray([table.ms(ref_key, s) for s in STATS])
        ref_parts = space.decompose(space.build(todo[ref_key][3]))
        m = np.asarray([float(p.macs()) for p in ref_parts])
        for p, share in zip(ref_parts, (m + m.mean()) / (m + m.mean()).sum()):
            prior.setdefault(p.key, float(share * L_R[STATS.index("median")]))
        for key, (_kind, _si, _what, arch) in todo.items():
            parts = space.decompose(space.build(arch))
            count: dict[str, int] = {}
            for p in parts:
                cfgs.setdefault(p.key, p)
                keys.setdefault(p.key, len(keys))
                count[p.key] = count.get(p.key, 0) + 1
            entry = table.get(key)
            meta = entry.get("meta") or {}
            rows.append(count)
            ref_row.append(first_row)
            rhs.append(L_R + (float(meta["delta_ms"]) if key != ref_key else 0.0))
            spreads.append(float(meta.get("delta_std_ms", 0.0)))
            floor = SE_FLOOR_REL * float(L_R[STATS.index("median")])
            ses.append(max(_delta_se(entry) if key != ref_key else _reference_se(entry), floor))
            if key == ref_key:
                refs.append((count, L_R))
    for k, c in cfgs.items():  # blocks outside every reference: prior from their own MACs
        if k not in prior:
            mr = float(c.macs())
            prior[k] = float(np.median([prior[q] * mr / max(float(cfgs[q].macs()), 1.0)
                                        for q in prior if cfgs[q].kind == c.kind] or [0.0]))
    n = len(keys)
    a = np.zeros((len(rows) + n, n))
    for i, count in enumerate(rows):
        for k, c in count.items():
            a[i, keys[k]] = c
    b = np.zeros((len(rows) + n, len(STATS)))
    b[:len(rows)] = np.asarray(rhs)
    alone = _alone_prior(table, keys, refs)
    if alone is None:  # no alone times: unweighted equations, a weak MACs prior
        eps = 1e-4
        for k, j in keys.items():
            a[len(rows) + j, j] = eps
            b[len(rows) + j] = eps * prior[k]
        tau, *_ = np.linalg.lstsq(a, b, rcond=None)
        derived, extra = "network probes", {}
    else:
        tau = np.zeros((n, len(STATS)))
        w_rows = 1.0 / np.asarray(ses)
        rel = prior_spread(a[:len(rows)], b[:len(rows), STATS.index("median")], np.asarray(ses), ref_row,
                           alone[:, STATS.index("median")]) if PRIOR_REL is None else PRIOR_REL
        for i in range(len(STATS)):  # each statistic: its own prior scale
            sd = np.maximum(rel * alone[:, i], 1e-9)
            aw = np.vstack([a[:len(rows)] * w_rows[:, None], np.diag(1.0 / sd)])
            bw = np.concatenate([b[:len(rows), i] * w_rows, alone[:, i] / sd])
            tau[:, i] = np.linalg.lstsq(aw, bw, rcond=None)[0]
        derived = "network probes, calibrated alone prior"
        extra = {"prior_rel": float(rel)}
    out: dict[str, dict[str, Any]] = {}
    for k, j in keys.items():
        moved = [sp for count, sp, r in zip(rows, spreads, ref_row) if count.get(k, 0) != rows[r].get(k, 0)]
        out[k] = {**{s: max(float(tau[j, i]), 0.0) for i, s in enumerate(STATS)},
                  "std": float(np.mean(moved)) if moved else 0.0, "count": len(moved),
                  "meta": {"kind": cfgs[k].kind, "config": cfgs[k].to_dict(), "derived": derived, **extra}}
    return out


def prior_spread(a: np.ndarray, rhs: np.ndarray, se: np.ndarray, ref_row: list[int], prior: np.ndarray) -> float:
    """How far in-network times sit from their calibrated alone times (relative sd ρ), from the probes
    themselves: each probe's Δ minus the Δ the prior predicts has variance SE² + ρ² Σ_k (Δn_k π_k)², so
    ρ² = Σ (r² − SE²) / Σ Σ_k (Δn_k π_k)² (method of moments), clipped to [PRIOR_REL_MIN, PRIOR_REL_MAX].
    Probes noisier than the blocks they move estimate ρ at about 0 and the alone times decide."""
    dn = a - a[np.asarray(ref_row)]
    resid = (rhs - rhs[np.asarray(ref_row)]) - dn @ prior
    moved = ((dn * prior) ** 2).sum(axis=1)
    use = moved > 0
    if not use.any():
        return PRIOR_REL_MAX
    rho2 = float(np.sum(resid[use] ** 2 - se[use] ** 2) / np.sum(moved[use]))
    return float(np.clip(np.sqrt(max(rho2, 0.0)), PRIOR_REL_MIN, PRIOR_REL_MAX))


def _alone_prior(table: LatencyTable, keys: dict[str, int],
                 refs: list[tuple[dict[str, int], np.ndarray]]) -> Optional[np.ndarray]:
    """[part, stat] of c · alone time (c per statistic: Σ L_R over Σ alone of the references' parts), or None
    where a part has no alone entry."""
    if any(ALONE_PREFIX + k not in table for k in keys):
        return None
    alone = np.asarray([[table.ms(ALONE_PREFIX + k, s) for s in STATS] for k in keys])  # rows in keys' order
    sum_alone = sum(sum(c * alone[keys[k]] for k, c in count.items()) for count, _ in refs)
    c = sum(L for _, L in refs) / np.maximum(sum_alone, 1e-12)
    return alone * c


def alone_parts(space: SearchSpace) -> dict[str, BlockConfig]:
    """{table key: part} of the alone timings a network table holds as its prior (every unique part)."""
    return {ALONE_PREFIX + p.key: p for p in space.unique_parts()}


def measure_network_probes(space: SearchSpace, backend, table: LatencyTable, save: Callable[[], None], *,
                           warmup: Optional[int], runs: Optional[int], rounds: int, log: Callable[[str], None],
                           protocol: Optional[TimingProtocol] = None) -> None:
    """Measure the probes of every width (resumable); the builder then times `alone_parts` and stores
    `derive_parts`."""
    for width in space.widths:
        measure_probes(space, backend, table, save, width=width, warmup=warmup, runs=runs, rounds=rounds,
                       log=log, protocol=protocol)
