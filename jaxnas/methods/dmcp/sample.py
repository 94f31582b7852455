"""Turning searched alphas into a concrete architecture, and BN recalibration of a sub-network.

* `expected_architecture`: the expected-channel architecture snapped to channel-group boundaries
  (the original rounds E[c] without snapping, so its cost may miss the target; see §3.8).
* `direct_samples`: samples of the Markov chain whose cost is within `tolerance` of the target
  (the original keeps 5 within ±1 %); the closest sample when none is.
* `adjust_to_target`: greedily removes (adds) the least (most) probable channel group until the cost
  is at most the target and within ±`tolerance` of it.
* `recalibrate_bn`: running statistics = the exact average of the per-batch means and variances over
  ALL calibration batches (the original uses momentum 1.0, i.e. keeps only the last batch).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxnas.methods.dmcp.cost import CostModel
from jaxnas.methods.dmcp.gates import DMCPSpace
from jaxnas.spec import ArchSpec
from jaxnas.supernet import materialize
from jaxnas.train.bn import recalibrate_bn  # noqa: F401  (shared with other methods; re-exported)

Ks = dict[str, int]


def marginals_np(space: DMCPSpace, alphas: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {g: np.cumprod(1.0 / (1.0 + np.exp(-np.asarray(alphas[g], np.float64)))) for g in space.prunable}


def cost_of(space: DMCPSpace, cost: CostModel, ks: Mapping[str, int]) -> float:
    return float(cost.exact(space.channels_of(ks)))


def expected_architecture(space: DMCPSpace, alphas: Mapping[str, Any]) -> Ks:
    """Kept channel groups of the expected-channel architecture (E[c] snapped to the nearest group)."""
    e = space.expected_channels(alphas)
    return {g: int(np.clip(np.round((float(e[g]) - lay.min_ch) / lay.offset), 0, lay.n))
            for g, lay in space.layouts.items() if lay.prunable}


def direct_samples(space: DMCPSpace, cost: CostModel, alphas: Mapping[str, Any], target: float, *,
                   num: int = 5, tolerance: float = 0.01, max_tries: int = 2000, seed: int = 0,
                   chunk: int = 500) -> tuple[list[Ks], bool]:
    """Up to `num` Markov samples with cost within ±`tolerance` of `target` (and True), or the closest
    sample drawn (and False) when none of `max_tries` samples is within."""
    rng = np.random.default_rng(seed)
    found: list[Ks] = []
    best, best_err = None, np.inf
    tried = 0
    while tried < max_tries and len(found) < num:
        n = min(chunk, max_tries - tried)
        ks = space.markov_k_numpy(alphas, rng, n)
        channels = {g: np.asarray([lay.channels] * n) if not lay.prunable else lay.min_ch + lay.offset * ks[g]
                    for g, lay in space.layouts.items()}
        values = np.asarray(cost.exact(channels), np.float64)
        err = np.abs(values - target) / target
        for i in np.flatnonzero(err <= tolerance):
            if len(found) < num:
                found.append({g: int(ks[g][i]) for g in space.prunable})
        i = int(np.argmin(err))
        if err[i] < best_err:
            best, best_err = {g: int(ks[g][i]) for g in space.prunable}, float(err[i])
        tried += n
    if found:
        return found, True
    return [best], False


def adjust_to_target(space: DMCPSpace, cost: CostModel, alphas: Mapping[str, Any], ks: Mapping[str, int],
                     target: float, *, tolerance: float = 0.03, max_moves: int = 100_000) -> tuple[Ks, float]:
    """Greedy channel-group moves towards the target; returns (kept groups, cost).

    Above the target: drop the last kept channel group with the smallest marginal P(keep) (without
    falling below the ±`tolerance` band).  Below it: add the next channel group with the largest
    marginal that keeps the cost at most the target.  So the result is the target treated as a budget
    (cost <= target) whenever one channel group is finer than the band; when every move crosses the
    whole band, the move closest to the target is taken and the search stops.
    """
    marg = marginals_np(space, alphas)
    ks = {g: int(ks[g]) for g in space.prunable}
    lo, hi = target * (1 - tolerance), target * (1 + tolerance)
    value = cost_of(space, cost, ks)

    def moves(step: int):
        if step < 0:
            order = sorted((marg[g][ks[g] - 1], g) for g in space.prunable if ks[g] > 0)
        else:
            order = sorted((-marg[g][ks[g]], g) for g in space.prunable if ks[g] < space.layouts[g].n)
        for _, g in order:
            trial = {**ks, g: ks[g] + step}
            yield trial, cost_of(space, cost, trial)

    for _ in range(max_moves):
        if value == target:
            break
        step = -1 if value > target else 1
        ok = (lambda v: v >= lo) if step < 0 else (lambda v: v <= target)
        tried = []
        chosen = None
        for trial, v in moves(step):
            if ok(v):
                chosen = (trial, v)
                break
            tried.append((abs(v - target), v, trial))
        if chosen is not None:
            ks, value = chosen
            continue
        if lo <= value <= hi or not tried:
            break
        in_band = [t for t in tried if lo <= t[1] <= hi]
        _, v, trial = min(in_band or tried, key=lambda t: t[0])
        if abs(v - target) < abs(value - target):
            ks, value = trial, v
        break
    return ks, value


def materialize_k(space: DMCPSpace, variables: Mapping[str, Any], ks: Mapping[str, int], *,
                  name: str | None = None) -> tuple[ArchSpec, dict]:
    """(concrete spec, sliced supernet variables) keeping `ks[g]` channel groups of each group."""
    masks = space.hard_masks(space.channels_of(ks))
    spec, sliced = materialize(space.spec, variables, {"masks": masks})
    if name:
        spec = spec.replace(name=name)
    return spec, sliced
