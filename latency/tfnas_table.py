"""TF-NAS latency tables for a TF-NAS space (`tfnas_space`), in the original's key format.

A table is a `LatencyTable` with entries ``'base'`` (stems + feature mix + pool + classifier) and
``'{key}:mid{m}'`` for ``key = MBInvertedResBlock_{H}_{in}_{se}_{out}_k{k}_s{s}_{act}`` (what
`import_tfnas_pkl` makes of the original's pickles), so the method reads both alike.  Mids are measured
on a grid (multiples of ``grid`` channels plus the ends of each key's range [min max // 2, max max]) and
interpolated between (`TfnasLut.ms`).

Contexts:

* ``alone``: every (key, mid) is one block exported and timed by itself; base = first stem + second
  stem + head (feature mix, pool, classifier) each timed alone (the original's method).
* ``network``: the same alone grid gives each block's cost by op and mid; then whole networks are timed:
  a reference network R (every block at op k3e6, initial width, full depth) and probes of it, each timed
  against R in alternating rounds (one stage's first block set to another op, all its later blocks set
  to another op, or the stage cut to a smaller depth; and whole networks far from R: every stage at depth
  1 or half depth, narrow to wide ops, and random mixed networks, `global_probes`).  Each network N gives
  one equation ``L_R + Δ_N = base + scale * Σ_{b in N} alone(b) + offset * |N|``; least squares over all
  of them gives base, scale and a per-block offset (what timing a block alone adds: the runtime's
  per-call and layout work at the block's boundaries).  Entries are then scale * alone + offset (clipped
  at 0; the count is in ``meta.network_fit``).  The alone grid stays in the table as ``alone:`` entries, the probes as
  ``net:`` entries, so a table can be re-derived without measuring again.

Builds are resumable (the table is saved as entries are measured) and refuse a file measured on another
setup or for another space.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from .table import ALONE_PREFIX, PROBE_PREFIX
from .tfnas_space import (MID_SEP, NUM_OPS, OPS, REFERENCE_KEY, REFERENCE_OP, TFNAS_SPACES, BlockPos, TfnasArch,
                          TfnasLut, TfnasSpace, curve_arrays, get_tfnas_space, tfnas_block_key_and_mid,
                          tfnas_spec_blocks)
from jaxnas.spec import ArchSpec, Block, Conv, Head
from jaxnas.zoo import mbi_block

from .backends import measure_paired
from .batch_timing import ROUND_STATS as STATS
from .builder import COMPAT_KEYS, CONTEXTS
from .spaces import definition_hash
from .stats import TimingStats, progress_line
from .table import REBUILD_HINT, LatencyTable, TableError

__all__ = ["resolve_tfnas_space", "grid_mids", "table_entries", "build_tfnas_table", "predict_tfnas", "is_tfnas_table",
           "global_probes", "ALONE_PREFIX", "PROBE_PREFIX", "CONTEXTS", "REFERENCE_OP"]

BASE_PARTS = ("first_stem", "second_stem", "head")


# ----------------------------------------------------------------------------------------------------
# Spaces and keys
# ----------------------------------------------------------------------------------------------------

def resolve_tfnas_space(space: Any) -> Optional[TfnasSpace]:
    """The TF-NAS space `space` names (a TfnasSpace, a dict with family 'tfnas', a built-in name, or a
    YAML/JSON file with family 'tfnas'), else None (another kind of space)."""
    if isinstance(space, TfnasSpace):
        return space
    if isinstance(space, Mapping):
        return get_tfnas_space(space) if space.get("family") == "tfnas" else None
    if isinstance(space, str) and space in TFNAS_SPACES:
        return get_tfnas_space(space)
    p = Path(str(space))
    if p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file():
        import yaml

        d = yaml.safe_load(p.read_text(encoding="utf-8"))
        if isinstance(d, Mapping) and d.get("family") == "tfnas":
            return get_tfnas_space({"name": p.stem, **d})
    return None


def grid_mids(lo: int, hi: int, grid: int) -> list[int]:
    """Multiples of `grid` in [lo, hi] plus lo and hi themselves (every queried mid lies between two)."""
    return sorted({int(lo), int(hi), *range(-(-int(lo) // grid) * grid, int(hi) + 1, grid)})


def _representatives(space: TfnasSpace) -> dict[str, tuple[BlockPos, int]]:
    """{key: (a block position, an op) with that key}; for shared no-SE keys the e6 op."""
    out: dict[str, tuple[BlockPos, int]] = {}
    for b in space.blocks():
        for op in range(NUM_OPS):
            k = b.key(op)
            if k not in out or (OPS[op].expansion == 6 and OPS[out[k][1]].expansion != 6):
                out[k] = (b, op)
    return out


def table_entries(space: TfnasSpace, grid: int) -> dict[str, list[int]]:
    """{key: grid mids} a table for `space` measures."""
    return {k: grid_mids(lo, hi, grid) for k, (lo, hi) in space.key_mid_ranges().items()}


def block_spec(b: BlockPos, op: int, mid: int, name: str = "blk") -> ArchSpec:
    """Block `b` with op `op` at `mid` as a one-block network (NHWC in, its feature map out)."""
    block = mbi_block(b.cin, mid, b.se(op), b.cout, b.stride, kernel=OPS[op].kernel, act=b.act, name="b")
    return ArchSpec(name, (block,), Head(num_classes=0), (b.h, b.h), b.cin, meta={"latency_part": name})


def base_specs(space: TfnasSpace) -> dict[str, ArchSpec]:
    """The parts `base` sums, each as a network of its own (the original timed the same pieces alone)."""
    hw = space.stage_hw()
    c0 = space.stem_channels
    last_in = space.stage_blocks()[-1][-1].cout
    return {
        "first_stem": ArchSpec("first_stem", (Block("conv", (Conv(c0, (3, 3), space.stem_stride, act="relu"),)),),
                               Head(num_classes=0), (space.resolution, space.resolution), space.in_channels),
        "second_stem": ArchSpec("second_stem", (mbi_block(c0, c0, space.second_stem_se, space.second_stem_out, 1,
                                                          kernel=3, act="relu"),), Head(num_classes=0),
                                (hw[0], hw[0]), c0),
        "head": ArchSpec("head", (Block("conv", (Conv(space.feature_channels, (1, 1), act="swish"),)),),
                         Head(space.num_classes), (hw[-1], hw[-1]), last_in),
    }


def table_meta(space: TfnasSpace, grid: int, context: str) -> dict[str, Any]:
    if context not in CONTEXTS:
        raise TableError(f"context must be one of {CONTEXTS}, got {context!r}")
    return {"source": "jaxnas-tfnas", "space": space.name, "space_def": space.to_dict(),
            "space_hash": definition_hash(space.to_dict()), "grid": int(grid), "context": context}


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------

def _open(path: Path, space: TfnasSpace, fingerprint: Mapping[str, Any], grid: int, context: str) -> LatencyTable:
    meta = table_meta(space, grid, context)
    if not path.exists():
        return LatencyTable.new(fingerprint, meta)
    table = LatencyTable.load(path)
    table.check_compatible(fingerprint, COMPAT_KEYS)
    for k in ("space_hash", "grid", "context"):
        if table.meta.get(k) != meta[k]:
            raise TableError(f"{path} was built with {k}={table.meta.get(k)!r} but {meta[k]!r} is requested (space "
                             f"{space.name!r}); use another path or {REBUILD_HINT}")
    return table


class _Exporter:
    """Exports specs (random weights) for the backend at the table's batch size, into one temp dir."""

    def __init__(self, backend: Any, directory: str, batch_size: int, seed: int):
        self.backend, self.dir, self.batch_size, self.seed = backend, directory, int(batch_size), seed
        self.n = 0

    def __call__(self, spec: ArchSpec) -> Any:
        self.n += 1
        if self.batch_size == 1:
            from .builder import export_for

            return export_for(spec, self.backend, self.dir, seed=self.seed, stem=f"m{self.n}")
        name = getattr(self.backend, "name", "")
        if name not in ("onnxruntime", "tensorrt"):
            raise TableError(f"batch size {self.batch_size} tables need an ONNX backend (onnxruntime, tensorrt); "
                             f"{name} models are exported with batch 1")
        from jaxnas.export.parity import random_variables

        from .measure import export_for_backend

        return str(export_for_backend(spec, random_variables(spec), name, self.dir, batch_size=self.batch_size,
                                      name=f"m{self.n}"))

    def shape(self, spec: ArchSpec) -> tuple[int, int, int, int]:
        return (self.batch_size, *spec.input_size, spec.in_channels)


def _stats_entry(stats: list[TimingStats]) -> dict[str, Any]:
    best = {f: float(min(getattr(s, f) for s in stats)) for f in ("median", "mean", "std", "p10", "p90", "min")}
    return {**best, "count": int(sum(s.count for s in stats))}


def build_tfnas_table(space: Any, backend: Any, out: Union[str, Path], *, grid: int = 8, context: str = "network",
                      threads: int = 1, batch_size: int = 1, warmup: int = 20, runs: int = 100, rounds: int = 3,
                      seed: int = 0, progress: Union[bool, Callable[[str], None]] = True) -> LatencyTable:
    """Measure a TF-NAS table for `space` on `backend` into `out` (resumable; see the module docstring).

    Every alone entry is timed `rounds` times in passes over the whole grid and keeps each statistic's
    best round; network probes are timed against the reference network in `rounds` alternating rounds."""
    from .builder import _fingerprint, _progress, resolve_backend

    space = get_tfnas_space(space)  # itself, its dict or a built-in name
    be = resolve_backend(backend, threads)
    fp = _fingerprint(be, batch_size)
    out = Path(out)
    log = _progress(progress)
    table = _open(out, space, fp, grid, context)
    reps = _representatives(space)
    todo: dict[str, ArchSpec] = {}
    for key, mids in table_entries(space, grid).items():
        b, op = reps[key]
        for m in mids:
            todo[f"{ALONE_PREFIX}{key}{MID_SEP}{m}"] = block_spec(b, op, m)
    for name, spec in base_specs(space).items():
        todo[f"{ALONE_PREFIX}{name}"] = spec
    t0 = time.perf_counter()
    last_save = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxnas_tfnas_table_") as tmp:
        export = _Exporter(be, tmp, batch_size, seed)
        pending = [k for k in todo if k not in table]
        if pending:
            log(f"[latency] TF-NAS table for {space.name} on {fp.get('runtime')} (batch {batch_size}): {len(pending)} of "
                f"{len(todo)} blocks alone x {rounds} rounds, grid {grid}")
        models = {}
        stats: dict[str, list[TimingStats]] = {k: [] for k in pending}
        for r in range(max(1, rounds)):
            for n, k in enumerate(pending):
                if k not in models:
                    models[k] = export(todo[k])
                stats[k].append(be.measure(models[k], export.shape(todo[k]), warmup=warmup, runs=runs))
                if r == rounds - 1:
                    table.put(k, _stats_entry(stats[k]), meta={"kind": "alone", "rounds": rounds})
                    if time.perf_counter() - last_save > 10:
                        table.save(out)
                        last_save = time.perf_counter()
                if (n + 1) % 100 == 0 or n + 1 == len(pending):
                    log(f"[latency] round {r + 1}/{rounds}: " + progress_line(n + 1, len(pending),
                                                                              time.perf_counter() - t0, "blocks"))
        table.save(out)
        if context == "network":
            _measure_probes(space, be, table, lambda: table.save(out), export, warmup=warmup, runs=runs,
                            rounds=rounds, log=log)
    _derive(space, table, grid, context)
    table.save(out)
    return table


def probes(space: TfnasSpace) -> dict[str, TfnasArch]:
    """{table key: architecture} of the reference network and its probes (see the module docstring)."""
    ref = space.reference_arch()
    out = {REFERENCE_KEY: ref}
    stages = space.stage_blocks()
    for si, blocks in enumerate(stages):
        positions = [("first", blocks[:1])] + ([("later", blocks[1:])] if len(blocks) > 1 else [])
        for where, group in positions:
            ref_key = group[0].key(REFERENCE_OP)
            keys = [k for k in dict.fromkeys(group[0].key(op) for op in range(NUM_OPS)) if k != ref_key]
            for key in keys:
                # no-SE keys are shared by e3 and e6: probe the e6 op at its initial width
                op = max((o for o in range(NUM_OPS) if group[0].key(o) == key), key=lambda o: OPS[o].expansion)
                ops = [list(s) for s in ref.ops]
                mids = [list(s) for s in ref.mids]
                for b in group:
                    ops[si][b.j] = op
                    mids[si][b.j] = b.init_mid(op)
                out[f"{PROBE_PREFIX}s{si + 1}:{where}:{key}"] = TfnasArch(ops, mids)
        for d in range(1, len(blocks)):
            out[f"{PROBE_PREFIX}s{si + 1}:depth{d}"] = TfnasArch(
                [s[:d] if i == si else s for i, s in enumerate(ref.ops)],
                [s[:d] if i == si else s for i, s in enumerate(ref.mids)])
    seen = set(out.values())
    for key, arch in global_probes(space).items():
        if arch not in seen:  # in shallow spaces half depth is depth 1, or a probe is the reference itself
            out[key] = arch
            seen.add(arch)
    return out


GLOBAL_PROBES = ((0, "min"), (1, "init"), (4, "init"), (7, "max"))  # (op, width): narrow to wide, with and without SE
RANDOM_PROBES = 8  # mixed networks: random depth, op and width (a multiple of 8) per block, fixed seeds


def global_probes(space: TfnasSpace) -> dict[str, TfnasArch]:
    """Whole networks far from the reference: every stage at depth 1 and at half depth, each with one op per
    row of GLOBAL_PROBES at its narrowest, initial or widest mid; and RANDOM_PROBES mixed networks.  The
    per-stage probes in `probes` keep all but a few of the reference's blocks, so without these the fit
    extrapolates in the block count; searched nets are often shallow (measured here: parsed nets of 6 to
    8 blocks under-predicted by 6 to 8 %)."""
    out: dict[str, TfnasArch] = {}
    stages = space.stage_blocks()
    for depth_name, depth in (("depth1", lambda n: 1), ("halfdepth", lambda n: (n + 1) // 2)):
        for op, width in GLOBAL_PROBES:
            mid = {"min": BlockPos.min_mid, "init": BlockPos.init_mid, "max": BlockPos.max_mid}[width]
            kept = [bs[:depth(len(bs))] for bs in stages]
            out[f"{PROBE_PREFIX}all:{depth_name}:{OPS[op].name}:{width}"] = TfnasArch(
                tuple((op,) * len(bs) for bs in kept), tuple(tuple(mid(b, op) for b in bs) for bs in kept))
    # Searched nets mix ops (SE next to no SE, k3 next to k5) at other widths in every block: a uniform
    # probe does not see what such neighbours cost (measured here: mixed nets 2-3 % above the table).
    for i in range(RANDOM_PROBES):
        rng = np.random.default_rng([0x7F2A, i])
        ops, mids = [], []
        for bs in stages:
            d = int(rng.integers(1, len(bs) + 1))
            ops.append(tuple(int(rng.integers(NUM_OPS)) for _ in range(d)))
            mids.append(tuple(_random_mid(rng, b, op) for b, op in zip(bs, ops[-1])))
        out[f"{PROBE_PREFIX}random{i}"] = TfnasArch(tuple(ops), tuple(mids))
    return out


def _random_mid(rng: np.random.Generator, b: BlockPos, op: int) -> int:
    """A mid in [min, max] of the op, a multiple of 8 where one fits (CPU runtimes' blocked kernels)."""
    lo, hi = b.min_mid(op), b.max_mid(op)
    grid = [m for m in range(-(-lo // 8) * 8, hi + 1, 8)]
    return int(rng.choice(grid)) if grid else int(rng.integers(lo, hi + 1))


def _measure_probes(space: TfnasSpace, be: Any, table: LatencyTable, save: Callable[[], None], export: _Exporter, *,
                    warmup: int, runs: int, rounds: int, log: Callable[[str], None]) -> None:
    todo = probes(space)
    ref_key = next(iter(todo))
    pending = [k for k in todo if k != ref_key and k not in table]
    if not pending and ref_key in table:
        return
    ref_spec = space.build_spec(todo[ref_key], name=f"{space.name}_netref")
    shape = export.shape(ref_spec)
    ref_model = export(ref_spec)
    rounds_ref: list[dict[str, float]] = list(((table.get(ref_key) or {}).get("meta") or {}).get("round_stats", []))

    def put_ref(s: TimingStats) -> None:
        rounds_ref.append({f: float(getattr(s, f)) for f in ("median", "mean", "p10", "p90", "min")})
        med = {f: float(np.median([r[f] for r in rounds_ref])) for f in ("median", "mean", "p10", "p90", "min")}
        table.put(ref_key, {**med, "std": float(np.std([r["median"] for r in rounds_ref])), "count": len(rounds_ref)},
                  meta={"kind": "netref", "arch": todo[ref_key].to_dict(), "round_stats": rounds_ref[-400:]})

    if not rounds_ref:
        for _ in range(rounds):
            put_ref(be.measure(ref_model, shape, warmup=warmup, runs=runs))
        save()
    log(f"[latency] {len(pending)} probes of the reference network, {rounds} alternating rounds each")
    t0 = time.perf_counter()
    for n, key in enumerate(pending):
        model = export(space.build_spec(todo[key], name=f"{space.name}_probe"))
        pt = measure_paired(be, ref_model, model, shape, warmup=warmup, runs=runs, rounds=rounds)
        for r in pt.rounds[0]:
            put_ref(r)
        # per statistic: the median over rounds of (candidate - reference); under load the minimum of each
        # round's runs is the steady one (medians of one network swung 2x between rounds here)
        deltas = {st: float(np.median([getattr(c, st) - getattr(r, st) for c, r in zip(pt.rounds[1], pt.rounds[0])]))
                  for st in STATS}
        table.put(key, pt.best(), meta={"kind": "probe", "arch": todo[key].to_dict(), "delta_ms": pt.delta_ms(),
                                      "delta_std_ms": pt.delta_std_ms(), "deltas": deltas})
        save()
        if (n + 1) % 10 == 0 or n + 1 == len(pending):
            log("[latency] " + progress_line(n + 1, len(pending), time.perf_counter() - t0, "probes"))


def _alone(table: LatencyTable, stat: str) -> TfnasLut:
    """The alone grid as a TfnasLut (base = the sum of the alone base parts)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for name in table.entries:
        if name.startswith(ALONE_PREFIX) and MID_SEP in name:
            key, _, mid = name[len(ALONE_PREFIX):].rpartition(MID_SEP)
            curves.setdefault(key, []).append((int(mid), table.ms(name, stat)))
    return TfnasLut(sum(table.ms(f"{ALONE_PREFIX}{p}", stat) for p in BASE_PARTS),
                    {k: curve_arrays(v) for k, v in curves.items()})


def _network_rows(space: TfnasSpace, table: LatencyTable, stat: str) -> tuple[np.ndarray, np.ndarray]:
    """One row per measured network (the reference and every probe): [1, Σ alone(block), n_blocks] -> ms
    (the reference's median round of `stat` plus the probe's median paired difference in `stat`)."""
    todo = probes(space)
    ref_key = next(iter(todo))
    alone = _alone(table, stat)
    ref_rounds = ((table.get(ref_key) or {}).get("meta") or {}).get("round_stats") or []
    ref = float(np.median([r[stat] for r in ref_rounds])) if ref_rounds else table.ms(ref_key, stat)
    x, y = [], []
    for name, arch in todo.items():
        meta = (table.get(name) or {}).get("meta") or {}
        delta = 0.0 if name == ref_key else float((meta.get("deltas") or {}).get(stat, meta["delta_ms"]))
        blocks = space.arch_blocks(arch)
        x.append([1.0, sum(alone.ms(b.key(op), mid) for b, op, mid in blocks), float(len(blocks))])
        y.append(ref + delta)
    return np.array(x), np.array(y)


def robust_lstsq(x: np.ndarray, y: np.ndarray, rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Least squares, dropping rows more than 3 scaled MADs off the fit (a probe timed in a busy spell) while
    at least half the rows remain; returns (coefficients, kept mask)."""
    keep = np.ones(len(y), bool)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    for _ in range(rounds):
        res = y - x @ coef
        mad = 1.4826 * float(np.median(np.abs(res - np.median(res))))
        new = np.abs(res - np.median(res)) <= 3.0 * mad + 1e-12
        if new.sum() < max(len(y) // 2, x.shape[1] + 2) or (new == keep).all():
            break
        keep = new
        coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
    return coef, keep


def _derive(space: TfnasSpace, table: LatencyTable, grid: int, context: str) -> None:
    """Write the 'base' and '{key}:mid{m}' entries from the alone grid (and, in a network context, the probes).

    Network context: least squares of every measured network on [base, scale, offset]:
    L = base + scale * Σ alone(block) + offset * n_blocks; entries = scale * alone + offset.  Three numbers
    from ~70 networks average the probes' noise out (per-key offsets, one probe each, followed the noise of
    a shared machine: tens of microseconds on blocks of ten)."""
    grids = table_entries(space, grid)
    fit = {s: (_alone(table, s).base, 1.0, 0.0) for s in STATS}
    info: dict[str, Any] = {}
    if context == "network":
        for s in STATS:
            x, y = _network_rows(space, table, s)
            coef, keep = robust_lstsq(x, y)
            fit[s] = tuple(float(c) for c in coef)
            res = (y - x @ coef)[keep]
            info[s] = {"base_ms": fit[s][0], "scale": fit[s][1], "block_offset_ms": fit[s][2], "networks": len(y),
                       "used": int(keep.sum()), "rms_residual_ms": float(np.sqrt(np.mean(res ** 2))),
                       "max_abs_residual_pct": float(np.max(np.abs(res) / y[keep]) * 100)}
    clipped = 0
    table.put("base", {**{s: max(fit[s][0], 0.0) for s in STATS}, "std": 0.0, "count": None},
              meta={"kind": "base", "parts": list(BASE_PARTS), "derived": context})
    for key, mids in grids.items():
        for m in mids:
            alone = f"{ALONE_PREFIX}{key}{MID_SEP}{m}"
            raw = {s: fit[s][1] * table.ms(alone, s) + fit[s][2] for s in STATS}
            clipped += raw["median"] < 0
            table.put(f"{key}{MID_SEP}{m}", {**{s: max(v, 0.0) for s, v in raw.items()}, "std": 0.0, "count": None},
                      meta={"kind": "block", "mid": m, "derived": context})
    table.meta["channel_grid"] = grids
    table.meta["network_fit"] = {**info, "clipped_entries": int(clipped)} if context == "network" else None
    # per statistic: {base_ms, scale, block_offset_ms, networks, used, rms_residual_ms, max_abs_residual_pct}


# ----------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------

def is_tfnas_table(table: LatencyTable) -> bool:
    return "base" in table and any(MID_SEP in k for k in table.entries)


def predict_tfnas(spec: ArchSpec, table: LatencyTable, stat: str = "median") -> dict[str, Any]:
    """Table latency of a TF-NAS-shaped spec: base + Σ table[key(block)][mid(block)]."""
    lut = TfnasLut.from_table(table, stat)
    parts = []
    for i, block, in_shape in tfnas_spec_blocks(spec):
        key, mid = tfnas_block_key_and_mid(block, in_shape)
        parts.append({"block": block.name or f"block{i}", "key": key, "mid": mid, "ms": lut.ms(key, mid)})
    total = lut.base + sum(p["ms"] for p in parts)
    return {"latency_ms": float(total), "base_ms": lut.base, "blocks": parts, "stat": stat}
