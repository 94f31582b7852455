"""`search.args` of POP (validated by the runner before anything is measured or trained).

The candidate trainings use the config's `optim` / `schedule` / `train` sections with
``candidate_epochs`` epochs (the "short schedule"; accuracy on the `holdout` split); the chosen net is
retrained with the full recipe (`train.epochs`) and reported on `test`.
"""
from __future__ import annotations

from typing import Any, Union

from pydantic import model_validator

from jaxnas.schema import Section


class PopArgs(Section):
    section = "search.args"

    # Search space: a preset ('pop-small', 'pop-imagenet', 'pop-imagenet-basic'; the MBConv spaces of
    # jaxnas.latency.spaces: 'mbv2-small', 'mbv2-224'), a YAML path or an inline definition
    # (jaxnas/methods/pop/space.py); input size, channels and classes follow the data.
    space: Union[str, dict[str, Any]] = "pop-small"
    latency_window_ms: tuple[float, float] | None = None   # [low, high] ms; null: the whole space
    # Budget: stop after this many candidate trainings or this much wall time (whichever first).
    max_trainings: int = 40
    time_budget_s: float | None = None
    candidate_epochs: float = 1.0             # the short schedule of every candidate
    candidates_per_round: int = 4             # one round = one executor batch
    boundary_bias: float = 0.75               # share of draws near the current boundary
    neighbour_scale: float = 0.15             # latency scale (log) of "near" a boundary net
    latency_bins: int = 8                     # bins of the uniform (exploration) draws
    seed: int | None = None                   # None: train.seed
    # Pre-screen: an additive latency table fitted to end-to-end measurements decides the
    # candidates far from every threshold; the rest are measured end to end.
    prescreen: bool = True
    prescreen_seed_size: int | None = None    # networks measured for the fit (None: 2 x parts + 8)
    prescreen_min_margin: float = 0.05        # relative error bound at least this
    prescreen_safety: float = 1.5             # bound = safety x worst leave-one-out error
    prescreen_audit: bool = False             # afterwards, measure what the pre-screen skipped
    max_enumerate: int = 200_000              # larger spaces: a random pool of pool_size
    pool_size: int = 20_000
    retrain: bool = True                      # retrain the chosen net with the full recipe

    @model_validator(mode="after")
    def _check(self) -> "PopArgs":
        e: list[str] = []
        if self.max_trainings < 1:
            e.append(f"max_trainings: must be >= 1 (a budget of zero trainings evaluates nothing), "
                     f"got {self.max_trainings}")
        e += self.out_of_range({"time_budget_s": "> 0 or null", "candidate_epochs": "> 0"})
        w = self.latency_window_ms
        if w is not None and not 0 < w[0] < w[1]:
            e.append(f"latency_window_ms: [low, high] with 0 < low < high, got {list(w)}")
        return self.checked(e + self.out_of_range({
            "candidates_per_round latency_bins max_enumerate pool_size": ">= 1", "boundary_bias": "in [0, 1]",
            "neighbour_scale": "> 0", "prescreen_seed_size": ">= 2 or null", "prescreen_min_margin": "in [0, 1)",
            "prescreen_safety": ">= 1"}))


__all__ = ["PopArgs"]
