"""The search constraint: a MACs cap/window (jaxnas MACs or the original's counter) or a latency budget.

The original constrains its "FLOPs" counter only (a cap of 330 M for the MobileNets, the window
[1950, 2050] M for ResNet-50).  Here the constraint is pluggable (seed spec §2.5):

* ``macs``: multiply-accumulates of convs and dense layers (`jaxnas.spec.macs`, as `jaxnas info`);
* ``flops_original``: the original counter (`flops.flops_original`: + bias, BN, ReLU modules, pooling);
* ``latency_ms``: predicted latency from a per-layer latency grid of the widest network measured on the
  configured runtime (`latency.layer_grid` through the latency oracle; the model is the one DMCP's latency
  target uses, `LatencyModel`: bilinear interpolation per conv over (c_in, c_out) plus the table's
  end-to-end calibration).

A budget is `max` (a cap) and optionally `min` (a window).  `check_reachable` refuses, before any training,
a budget below the narrowest network of the space or above the widest (it would constrain nothing), and
`check_table_covers` a latency table whose channel grids do not span the space's widths.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxnas import spec as S
from jaxnas.methods.base import SearchError
from jaxnas.methods.metapruning.flops import flops_original
from jaxnas.methods.metapruning.space import FULL_ID, MetaSpace, scaled
from jaxnas.supernet import conv_sites

KINDS = ("macs", "flops_original", "latency_ms")


class BudgetError(SearchError):
    """A budget no network of the space can meet, or a latency table that does not fit the space."""


@dataclasses.dataclass(frozen=True)
class Budget:
    kind: str
    max: float
    min: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BudgetError(f"budget kind must be one of {KINDS}, got {self.kind!r}")
        if not self.max > 0:
            raise BudgetError(f"the budget must be > 0, got {self.max}")
        if self.min is not None and not 0 <= self.min <= self.max:
            raise BudgetError(f"the budget window [{self.min}, {self.max}] is empty; the lower bound must be "
                              "below the cap")

    def allows(self, value: float) -> bool:
        return value <= self.max and (self.min is None or value >= self.min)

    def describe(self, value: float) -> str:
        if self.kind == "latency_ms":
            return f"{value:.4f} ms"
        return f"{value / 1e6:.3f} M {'MACs' if self.kind == 'macs' else 'FLOPs (original counter)'}"

    def as_dict(self) -> dict[str, float]:
        out = {self.kind: self.max}
        if self.min is not None:
            out[f"min_{self.kind}"] = self.min
        return out


class CostFunction:
    """`cost(genes) -> value` of a budget kind on a space (memoised)."""

    def __init__(self, space: MetaSpace, kind: str, *, table: Any = None, stat: str = "median",
                 smooth: bool = False):
        from jaxnas.costmodel import LatencyModel, MacsModel
        if kind not in KINDS:
            raise BudgetError(f"budget kind must be one of {KINDS}, got {kind!r}")
        self.space, self.kind, self.table = space, kind, table
        self.supernet = space.max_spec()
        prunable = frozenset(g.name for g in space.genes)
        self.macs_model = MacsModel(self.supernet, prunable)
        self.latency_model = None
        if table is not None:
            check_table_covers(space, table)
            try:
                self.latency_model = LatencyModel(self.supernet, prunable, table, stat=stat, smooth=smooth)
            except (S.SpecError, KeyError) as e:
                raise BudgetError(f"the latency table does not fit the {space.family} space: {e}") from None
        if kind == "latency_ms" and self.latency_model is None:
            raise BudgetError("a latency budget needs a per-layer latency table of the widest network")
        self._memo: dict[tuple[int, ...], float] = {}
        # (num_genes, 31) channel counts: every gene's width at every scale id, for `batch`
        self._widths = space.gene_width_table

    def macs(self, genes: Sequence[int]) -> int:
        return int(self.macs_model.exact(self.space.gene_channels(genes)))

    def flops_original(self, genes: Sequence[int]) -> int:
        return flops_original(self.space.to_spec(genes))

    def latency_ms(self, genes: Sequence[int]) -> float | None:
        if self.latency_model is None:
            return None
        return float(self.latency_model.exact(self.space.gene_channels(genes)))

    def __call__(self, genes: Sequence[int]) -> float:
        key = tuple(int(g) for g in genes)
        if key not in self._memo:
            self._memo[key] = float(getattr(self, self.kind)(key))
        return self._memo[key]

    def batch(self, ids: np.ndarray) -> np.ndarray:
        """Values of many candidates at once, one per row of `ids` (k, num_genes), as `__call__` gives them
        one by one: the random fill of the search draws up to 100,000 candidates per generation, and a
        latency prediction one at a time costs ~1 ms (53 layers' interpolations in numpy)."""
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.space.num_genes:
            raise BudgetError(f"batch wants (k, {self.space.num_genes}) ids, got shape {ids.shape}")
        if self.kind == "flops_original":  # counted on the decoded spec: no vectorised form
            return np.asarray([self(row) for row in ids], np.float64)
        channels = {g.name: self._widths[k][ids[:, k]] for k, g in enumerate(self.space.genes)}
        model = self.macs_model if self.kind == "macs" else self.latency_model
        return np.asarray(model.exact(channels), np.float64).reshape(len(ids))

    def record(self, genes: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"macs": self.macs(genes), "flops_original": self.flops_original(genes)}
        if self.latency_model is not None:
            out["predicted_latency_ms"] = self.latency_ms(genes)
        return out


def reachable_range(space: MetaSpace, cost: CostFunction) -> tuple[float, float]:
    """Cost of the narrowest (every id 0) and the widest (every id 30) network."""
    return cost(space.uniform(0)), cost(space.uniform(FULL_ID))


def check_reachable(space: MetaSpace, budget: Budget, cost: CostFunction) -> tuple[float, float]:
    lo, hi = reachable_range(space, cost)
    where = f"the {space.family} space spans [{budget.describe(lo)}, {budget.describe(hi)}]"
    if budget.max < lo:
        raise BudgetError(f"the budget {budget.describe(budget.max)} is below the narrowest network: {where}; "
                          "raise the target")
    if budget.max > hi:
        raise BudgetError(f"the budget {budget.describe(budget.max)} is above the widest network, so it "
                          f"constrains nothing: {where}; lower the target")
    if budget.min is not None and budget.min > hi:
        raise BudgetError(f"the window's lower bound {budget.describe(budget.min)} is above the widest network: "
                          f"{where}")
    return lo, hi


def check_table_covers(space: MetaSpace, table: Any) -> None:
    """Raise `BudgetError` unless every conv's channel grid of `table` spans the widths the space gives it."""
    layers = (getattr(table, "meta", None) or {}).get("layers")
    if not isinstance(layers, list):
        raise BudgetError("the latency table has no per-layer grid (meta['layers']); build it with "
                          "latency.layer_grid for the widest network of the space")
    sites = [s for s in conv_sites(space.max_spec())[0] if s.layer != "se"]
    if len(layers) != len(sites):
        raise BudgetError(f"the latency table describes {len(layers)} conv layers but the {space.family} space has "
                          f"{len(sites)}; rebuild it for this space")
    lowest = {g.name: scaled(g.base, 0, space.channel_multiple) for g in space.genes}
    for site, rec in zip(sites, layers):
        for (group, full), grid, what in ((site.cin, rec.get("cin_grid", []), "input"),
                                         (site.cout, rec.get("cout_grid", []), "output")):
            if group is None or not grid:
                continue
            need = (lowest[group], full)
            if min(grid) > need[0] or max(grid) < need[1]:
                raise BudgetError(
                    f"the latency table times layer {rec.get('key', site.index)} for {what} channels "
                    f"{min(grid)}..{max(grid)} but the space needs {need[0]}..{need[1]}; rebuild it with "
                    f"min_fraction <= 0.1 and channel_multiple {space.channel_multiple}")


__all__ = ["Budget", "BudgetError", "CostFunction", "KINDS", "check_reachable", "check_table_covers",
           "reachable_range"]
