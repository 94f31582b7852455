"""Parsing and elasticity scaling (seed-specs §4.2), on the host with numpy.

Widths are `mids`: an int array (blocks, 8) holding every block-op's current mid width (the original's
mc_num_dddict); an architecture is parsed from the log_alphas (argmax op per block) and betas (depth =
argmax + 1).  `fit_mc_num_by_latency` and `elastic_scaling` port the original's functions step for step:

* a pass over some stages takes, for the chosen op of every kept block in them, the integer ratio
  step_b = round(mid_b / min mid) (Python rounding, as the original), then repeatedly adds sign * step_b
  to every block, clipped to [max // 2, max] (`bound_clip`: a block at a bound reports False), and
  recomputes the table latency; it stops when every block reported a bound in the last step or the
  latency crossed the target.  Expand (+1) keeps the last widths whose latency was <= target (the step
  that crossed is undone; so is the last step when every block hit a bound — the original's loop does the
  same); shrink (-1) keeps the first widths with latency < target.
  With `multiple` > 1 (not in the original, which ran on GPUs) a step is step_b * multiple channels and every
  width is a multiple of `multiple` within [max // 2, max]: on CPU runtimes an unaligned width falls off the
  blocked kernels (a net of widths 57, 97, 146 ... timed 0.35 ms where its table said 0.12 ms; the same net
  at multiples of 8, 0.13 ms), and a table measured on a grid of multiples cannot see that.
* end of an epoch: lat > target: one shrink pass over stages 1-6, then expand passes over stages s..6
  for s = 2..6; lat < target: an expand pass over 1-6, then the same expand passes.

New widths are realised by ranking the full-size depthwise filters by L1 norm (`l1_mask`).

After the search, `final_fit` (not in the original; `search.args.final_fit`) brings the parsed net to the
target on the table: greedy width steps of one block (or one up, another down), and only where no width
of the parsed depths reaches the target, depths repaired along the depth distribution.
The original's elasticity steps every block by its ratio at once, so the last step can leave the net a few
per cent off (measured here: -2.5 % with 8-channel steps); the paper reports its nets within 1 %.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxnas.latency.spaces import NUM_OPS, TfnasArch, TfnasLut, TfnasSpace

Parsed = tuple[tuple[int, ...], ...]  # per stage: the op index of every kept block


def parse_ops(space: TfnasSpace, log_alphas: np.ndarray, betas: Sequence[np.ndarray]) -> Parsed:
    """argmax op per block; stage depth argmax(beta) + 1, later blocks dropped (parse_architecture)."""
    log_alphas = np.asarray(log_alphas)
    out = []
    for blocks, beta in zip(space.stage_blocks(), betas):
        depth = int(np.argmax(np.asarray(beta))) + 1
        out.append(tuple(int(np.argmax(log_alphas[b.index])) for b in blocks[:depth]))
    return tuple(out)


def to_arch(space: TfnasSpace, parsed: Parsed, mids: np.ndarray) -> TfnasArch:
    stages = space.stage_blocks()
    return TfnasArch(parsed, tuple(tuple(int(mids[b.index, op]) for b, op in zip(stages[s], ops))
                                   for s, ops in enumerate(parsed)))


def _kept(space: TfnasSpace, parsed: Parsed, stages: Sequence[int]) -> list[tuple[int, int]]:
    blocks = space.stage_blocks()
    return [(blocks[s][j].index, op) for s in stages for j, op in enumerate(parsed[s])]


def lookup_latency(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray) -> float:
    """base + Σ table[key][mid] over the kept blocks at their chosen ops (get_lookup_latency)."""
    blocks = space.blocks()
    return lut.base + sum(lut.ms(blocks[b].key(op), mids[b, op]) for b, op in _kept(space, parsed, range(len(parsed))))


def bound_clip(mid: int, max_mid: int, multiple: int = 1) -> tuple[int, bool]:
    """(clipped mid, still free): a mid at or beyond max // 2 or max is clipped and reports False.  With
    `multiple` > 1 the mid is first rounded to a multiple and the bounds are the multiples inside them."""
    lo = -(-(max_mid // 2) // multiple) * multiple
    hi = max(lo, max_mid - max_mid % multiple)
    mid = int(round(mid / multiple)) * multiple
    if mid <= lo:
        return lo, False
    if mid >= hi:
        return hi, False
    return mid, True


def fit_mc_num_by_latency(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, target: float,
                          stages: Sequence[int], sign: int, multiple: int = 1) -> tuple[np.ndarray, float]:
    """One shrink (sign -1) or expand (+1) pass over `stages` (0-based); returns (mids, table latency)."""
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 (shrink) or 1 (expand), got {sign}")
    blocks = space.blocks()
    items = _kept(space, parsed, stages)
    lat = lookup_latency(lut, space, parsed, mids)
    nums = [int(mids[b, op]) for b, op in items]
    maxes = [blocks[b].max_mid(op) for b, op in items]
    smallest = min(nums)
    ratios = [int(round(x / smallest)) for x in nums]
    free = [True] * len(items)
    cur = np.array(mids, copy=True)
    new, new_lat = cur.copy(), lat
    while any(free) and sign * new_lat <= sign * target:
        cur, lat = new.copy(), new_lat
        for n, (b, op) in enumerate(items):
            new[b, op], free[n] = bound_clip(int(cur[b, op]) + sign * ratios[n] * multiple, maxes[n], multiple)
        new_lat = lookup_latency(lut, space, parsed, new)
    if sign == -1:
        cur, lat = new, new_lat
    return cur, float(lat)


def elastic_scaling(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray,
                    target: float, multiple: int = 1) -> tuple[np.ndarray, float, float]:
    """(new mids, latency before, latency after) of the end-of-epoch shrink/expand passes."""
    before = lookup_latency(lut, space, parsed, mids)
    n = len(parsed)
    after = before
    if before != target:  # shrink over every stage when above the target, else expand; then the expand passes
        sign = -1 if before > target else 1
        mids, after = fit_mc_num_by_latency(lut, space, parsed, mids, target, range(n), sign, multiple)
        for start in range(1, n):
            mids, after = fit_mc_num_by_latency(lut, space, parsed, mids, target, range(start, n), 1, multiple)
    return mids, before, after


def target_miss(lut: TfnasLut, space: TfnasSpace, arch: TfnasArch, target: float, multiple: int = 1,
                tolerance: float = 0.01) -> str | None:
    """Why a parsed architecture's table latency is off the target by more than `tolerance`, in words, or
    None when it is within.  Elasticity scaling moves only widths: when the parsed ops and depths miss the
    target even at their narrowest or widest, only the search (longer, or a larger lambda_lat) can fix it."""
    lat = lut.arch_latency(space, arch)
    if abs(lat / target - 1.0) <= tolerance:
        return None
    mids = np.zeros((len(space.blocks()), NUM_OPS), np.int64)
    for b, op, mid in space.arch_blocks(arch):
        mids[b.index, op] = mid
    narrowest, widest = width_reach(lut, space, arch.ops, mids, multiple)
    off = f"the net's table latency {lat:.4g} ms is {100 * (lat / target - 1):+.1f} % off the target {target:.4g} ms"
    if widest < target * (1 - tolerance):
        return (f"{off}: its ops and depths reach at most {widest:.4g} ms at full width (elasticity scaling "
                "moves widths only); search longer (epochs) or raise lambda_lat so the depths follow the target")
    if narrowest > target * (1 + tolerance):
        return (f"{off}: its ops and depths take at least {narrowest:.4g} ms at their narrowest; search longer "
                "(epochs) or raise lambda_lat so the depths follow the target")
    return (f"{off} although widths between {narrowest:.4g} and {widest:.4g} ms exist: the width steps "
            f"(channel_multiple {multiple}) are too coarse here, or (without final_fit) the last epoch's scaling "
            "was undone")


def _width_bounds(space: TfnasSpace, b: int, op: int, multiple: int) -> tuple[int, int]:
    top = space.blocks()[b].max_mid(op)
    return bound_clip(top // 2, top, multiple)[0], bound_clip(top, top, multiple)[0]


def _at_bounds(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, multiple: int, which: int) -> float:
    """Table latency of `parsed` with every kept block at its narrowest (which=0) or widest (1) mid."""
    m = np.array(mids, copy=True)
    for b, op in _kept(space, parsed, range(len(parsed))):
        m[b, op] = _width_bounds(space, b, op, multiple)[which]
    return lookup_latency(lut, space, parsed, m)


def width_reach(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, multiple: int = 1
                ) -> tuple[float, float]:
    """(narrowest, widest) table latency the widths of `parsed` reach.  A measured table need not be
    monotone in width, so the net's own latency (at `mids`) bounds both."""
    lat = lookup_latency(lut, space, parsed, mids)
    return (min(lat, _at_bounds(lut, space, parsed, mids, multiple, 0)),
            max(lat, _at_bounds(lut, space, parsed, mids, multiple, 1)))


def repair_depth(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, target: float,
                 log_alphas: np.ndarray, depth_probs: Sequence[np.ndarray], multiple: int = 1
                 ) -> tuple[Parsed, list[str]]:
    """Depths that let widths reach the target (not in the original).  While the net is below the target
    even at its widest, add the next block (its argmax op) to the stage whose depth distribution puts the
    most mass beyond its depth, P(depth > d); while it is above the target even at its narrowest, drop the
    last block of the stage with the least mass at or beyond its depth, P(depth >= d).  Ties go to the
    earlier stage.  `depth_probs[s][j]` is P(depth = j + 1).  What the widths reach is `width_reach`.
    Argmax depths can sit far from the soft depths the latency loss steered (a net of depth 1 everywhere
    parsed at 80 % of a target its soft latency met)."""
    stages = space.stage_blocks()
    cur = [list(s) for s in parsed]
    changes: list[str] = []

    def frozen() -> Parsed:
        return tuple(tuple(s) for s in cur)

    while width_reach(lut, space, frozen(), mids, multiple)[1] < target:
        free = [s for s in range(len(cur)) if len(cur[s]) < len(stages[s])]
        if not free:
            break
        s = max(free, key=lambda s: (float(np.sum(depth_probs[s][len(cur[s]):])), -s))
        b = stages[s][len(cur[s])]
        cur[s].append(int(np.argmax(log_alphas[b.index])))
        changes.append(f"{space.stage_names[s]}: depth {len(cur[s]) - 1} -> {len(cur[s])}")
    if changes:
        return frozen(), changes
    while width_reach(lut, space, frozen(), mids, multiple)[0] > target:
        free = [s for s in range(len(cur)) if len(cur[s]) > 1]
        if not free:
            break
        s = min(free, key=lambda s: (float(np.sum(depth_probs[s][len(cur[s]) - 1:])), s))
        cur[s].pop()
        changes.append(f"{space.stage_names[s]}: depth {len(cur[s]) + 1} -> {len(cur[s])}")
    return frozen(), changes


def align_widths(space: TfnasSpace, parsed: Parsed, mids: np.ndarray, multiple: int) -> np.ndarray:
    """Every kept block's mid on the grid of `multiple` inside its bounds (`bound_clip`); others unchanged."""
    out = np.array(mids, copy=True)
    if multiple > 1:
        for b, op in _kept(space, parsed, range(len(parsed))):
            out[b, op] = bound_clip(int(out[b, op]), space.blocks()[b].max_mid(op), multiple)[0]
    return out


def refine_widths(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, target: float,
                  multiple: int = 1, max_moves: int = 500) -> tuple[np.ndarray, float, int]:
    """Widths closer to the target than elasticity scaling's uniform steps reach (not in the original):
    greedy moves, each the one that brings the table latency closest to the target, while it strictly
    improves (so the result is never farther from the target than `mids`).  A move sets one block to any
    width of its grid (multiples of `multiple` in its bounds: a measured table need not be monotone in
    width, so one step can look worse where two are better), or, when none helps, moves one block up by
    one step and another down by one.  Returns (mids, table latency, moves made)."""
    items = _kept(space, parsed, range(len(parsed)))
    bounds = [_width_bounds(space, b, op, multiple) for b, op in items]
    cur = np.array(mids, copy=True)
    lat = lookup_latency(lut, space, parsed, cur)
    moves = 0

    def setting(changes) -> np.ndarray | None:
        new = cur.copy()
        for n, v in changes:
            (b, op), (lo, hi) = items[n], bounds[n]
            if not lo <= v <= hi:
                return None
            new[b, op] = v
        return new

    while moves < max_moves:
        at = [int(cur[b, op]) for b, op in items]
        singles = [((n, v),) for n, (lo, hi) in enumerate(bounds)
                   for v in range(at[n] - (at[n] - lo) // multiple * multiple, hi + 1, multiple) if v != at[n]]
        pairs = [((n, at[n] + multiple), (k, at[k] - multiple)) for n in range(len(items)) for k in range(len(items))
                 if n != k]
        best = None
        for candidates in (singles, pairs):
            for ch in candidates:
                new = setting(ch)
                if new is None:
                    continue
                new_lat = lookup_latency(lut, space, parsed, new)
                if abs(new_lat - target) < abs(lat - target) - 1e-12 and (
                        best is None or abs(new_lat - target) < abs(best[1] - target)):
                    best = (new, new_lat)
            if best is not None:
                break
        if best is None:
            break
        cur, lat = best
        moves += 1
    return cur, float(lat), moves


def final_fit(lut: TfnasLut, space: TfnasSpace, parsed: Parsed, mids: np.ndarray, target: float,
              log_alphas: np.ndarray, depth_probs: Sequence[np.ndarray], multiple: int = 1,
              tolerance: float = 0.01) -> tuple[TfnasArch, dict]:
    """The parsed architecture brought to the target on the table; returns it and a log of what moved.

    First the parsed depths: widths on the grid of `multiple`, then `refine_widths`.  Only when that misses
    the target by more than `tolerance`: `repair_depth`, the original's elasticity scaling for the new
    depths, `refine_widths` again; the repaired net is kept only if it is closer to the target."""
    before = lookup_latency(lut, space, parsed, mids)
    m, after, moves = refine_widths(lut, space, parsed, align_widths(space, parsed, mids, multiple), target, multiple)
    best = (parsed, m, after, moves, [])
    if abs(after / target - 1.0) > tolerance:
        new_parsed, changes = repair_depth(lut, space, parsed, mids, target, log_alphas, depth_probs, multiple)
        if changes:
            m2, _, _ = elastic_scaling(lut, space, new_parsed, mids, target, multiple)
            m2, after2, moves2 = refine_widths(lut, space, new_parsed, align_widths(space, new_parsed, m2, multiple),
                                               target, multiple)
            if abs(after2 - target) < abs(after - target):
                best = (new_parsed, m2, after2, moves2, changes)
    new_parsed, m, after, moves, changes = best
    return to_arch(space, new_parsed, m), {
        "table_before_ms": float(before), "table_after_ms": float(after), "depth_changes": changes,
        "width_moves": moves, "parsed": to_arch(space, parsed, mids).to_dict()}


def l1_mask(dw_kernel: np.ndarray, keep: int) -> np.ndarray:
    """0/1 mask over the channels of a full-size depthwise kernel (kh, kw, 1, C): the `keep` filters of
    largest L1 norm (ties: the higher channel index first, the original's reversed argsort)."""
    norms = np.abs(np.asarray(dw_kernel, np.float64)).sum(axis=(0, 1, 2))
    order = np.argsort(norms, kind="stable")[::-1][:keep]
    mask = np.zeros(norms.shape[0], np.float32)
    mask[order] = 1.0
    return mask


def mids_from_masks(masks: np.ndarray) -> np.ndarray:
    """Masks (blocks, 8, C) -> int mids (blocks, 8)."""
    return np.asarray(np.rint(np.asarray(masks).sum(-1)), np.int64)


def initial_masks(space: TfnasSpace) -> np.ndarray:
    """(blocks, 8, 8 * max cin) float masks: the first init_mid channels of each op (the original's
    mc_mask_dddict); e3 ops use the first 4 * cin entries of their row, the rest stay 0."""
    blocks = space.blocks()
    width = max(b.max_mid(op) for b in blocks for op in range(NUM_OPS))
    m = np.zeros((len(blocks), NUM_OPS, width), np.float32)
    for b in blocks:
        for op in range(NUM_OPS):
            m[b.index, op, :b.init_mid(op)] = 1.0
    return m


def rescale_masks(space: TfnasSpace, parsed: Parsed, masks: np.ndarray, new_mids: np.ndarray,
                  dw_kernels) -> tuple[np.ndarray, list[dict]]:
    """Masks after elasticity scaling: every kept block whose chosen op's width changed gets the top-mid
    L1 filters of its full-size depthwise kernel (`dw_kernels(block, op)` -> (k, k, 1, max_mid))."""
    masks = np.array(masks, copy=True)
    blocks = space.blocks()
    changed = []
    for b, op in _kept(space, parsed, range(len(parsed))):
        have = int(round(float(masks[b, op].sum())))
        want = int(new_mids[b, op])
        if want != have:
            size = blocks[b].max_mid(op)
            masks[b, op, :] = 0.0
            masks[b, op, :size] = l1_mask(dw_kernels(b, op), want)
            changed.append({"block": blocks[b].name, "op": op, "from": have, "to": want})
    return masks, changed
