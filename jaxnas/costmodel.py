"""Cost models over a spec's conv sites: MACs and latency as functions of per-width-group channel counts.

Shared by the channel-pruning methods (DMCP's expected cost, MetaPruning's constraint).  `MacsModel`:
MACs as a sum of ``coef * prod(channels[g])`` terms, exact (= `jaxnas.spec.macs` of the sub-network) at
integer channel counts and differentiable at expected ones.  `LatencyModel`: the sum over every conv of a
bilinear interpolation in (c_in, c_out) of that layer's measured latency grid (a `LatencyTable` built by
`jaxnas.latency.layer_grid`; only read here, duck-typed: ``table.meta``, ``table.ms(key, stat)``), then
the table's end-to-end calibration: piecewise linear in the sum through the networks the grid timed end
to end (`CALIBRATION_NETWORKS`), or ``constant_ms + scale * sum`` for a table with only the full and the
minimal network.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.spec import ArchSpec, SpecError
from jaxnas.supernet import Expr, conv_sites

__all__ = ["CALIBRATION_NETWORKS", "LatencyModel", "MacsModel", "bilinear", "calibration_knots",
           "calibration_network", "calibration_network_spec", "fit_calibration", "fraction_point", "grid_points",
           "piecewise_linear"]


class MacsModel:
    """Expected MACs as a sum of ``coef * prod(E[g] for g in factors)`` terms (differentiable)."""

    def __init__(self, spec: ArchSpec, prunable: Any, *, count_bias: bool = False):
        sites, head = conv_sites(spec, frozenset(prunable))
        terms: dict[tuple[str, ...], float] = {}

        def add(coef: float, *exprs: Expr) -> None:  # constant factors multiply the coefficient
            key = tuple(sorted(g for g, _ in exprs if g is not None))
            terms[key] = terms.get(key, 0.0) + math.prod((c for g, c in exprs if g is None), start=coef)

        for s in sites:
            kh, kw = s.conv.kernel
            hw = s.out_hw[0] * s.out_hw[1]
            if s.layer == "se":  # reduce (c -> se) and expand (se -> c) dense layers
                add(2.0 * s.conv.out, s.cin)
                continue
            if s.conv.depthwise:
                add(kh * kw * hw, s.cout)
            else:
                add(kh * kw * hw, s.cin, s.cout)
            if count_bias and s.conv.bias:
                add(hw, s.cout)
        if head is not None:  # dense layers: features x width (the first sees E[c_last] * pooled size)
            coef, feat = float(head.features_per_channel), head.cin
            for width in head.widths:
                add(coef * width, feat)
                if count_bias:
                    add(float(width))
                coef, feat = 1.0, (None, width)
        self.terms = tuple(sorted(terms.items()))

    def expected(self, channels: Mapping[str, Any]) -> jax.Array:
        """Expected MACs given (expected) channel counts per prunable group."""
        total = sum((math.prod((channels[g] for g in factors), start=coef) for factors, coef in self.terms), 0.0)
        return jnp.asarray(total, jnp.float32)

    def exact(self, channels: Mapping[str, Any]) -> Any:
        """MACs with these integer channel counts (equals `spec.macs` of the materialised sub-network).

        Channel counts may be numpy arrays of equal shape (many sub-networks at once, float64 result).
        """
        if all(np.ndim(v) == 0 for v in channels.values()):  # exact integers
            return sum(math.prod((int(channels[g]) for g in factors), start=int(round(coef)))
                       for factors, coef in self.terms)
        return sum((math.prod((np.asarray(channels[g], np.float64) for g in factors), start=np.float64(coef))
                    for factors, coef in self.terms), 0.0)


# ------------------------------------------------------------------------------------------------
# Latency from a per-layer grid table
# ------------------------------------------------------------------------------------------------

def _interp_weights(grid: Any, x: Any, xp: Any) -> tuple[Any, Any]:
    """Segment index and fraction for piecewise-linear interpolation (linear extrapolation outside)."""
    if grid.shape[0] == 1:
        return xp.zeros(xp.shape(x), int), xp.zeros_like(x)
    i = xp.clip(xp.searchsorted(grid, x, side="right") - 1, 0, grid.shape[0] - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, t


def bilinear(xs: jax.Array, ys: jax.Array, values: jax.Array, x: jax.Array, y: jax.Array, xp: Any = jnp) -> jax.Array:
    """Bilinear interpolation of ``values[len(xs), len(ys)]`` at (x, y); axes of length 1 are constant.
    `xp`: `jax.numpy` (differentiable), or `numpy` for numpy arrays."""
    i, tx = _interp_weights(xs, x, xp)
    j, ty = _interp_weights(ys, y, xp)
    i1 = xp.minimum(i + 1, xs.shape[0] - 1)
    j1 = xp.minimum(j + 1, ys.shape[0] - 1)
    v00, v01, v10, v11 = values[i, j], values[i, j1], values[i1, j], values[i1, j1]
    return (1 - tx) * ((1 - ty) * v00 + ty * v01) + tx * ((1 - ty) * v10 + ty * v11)


def _bilinear_fit(xs: np.ndarray, ys: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Least-squares fit of a + b*x + c*y + d*x*y (terms of one-point axes dropped), at the grid."""
    x, y = np.meshgrid(xs, ys, indexing="ij")
    cols = [np.ones_like(x)]
    if xs.size > 1:
        cols.append(x)
    if ys.size > 1:
        cols.append(y)
    if xs.size > 1 and ys.size > 1:
        cols.append(x * y)
    a = np.stack([c.ravel() for c in cols], axis=1)
    coef, *_ = np.linalg.lstsq(a, vals.ravel(), rcond=None)
    return (a @ coef).reshape(vals.shape)


# The end-to-end networks a layer grid is calibrated against: every width group at its grid minimum (None),
# at the grid point nearest 1/4, 1/2 and 3/4 of its width, and the full network.  Two were not enough on
# onnxruntime: a layer timed alone pays per-call costs the network does not, so network latency is not a
# line in the layers' sum, and the line through the minimal and the full network of MetaPruning's quick
# space predicted its uniform nets with a median |error| of 7.6 % (up to 13 %) and mixed-width nets with
# 9.1 %; through the five networks 1.4 % and 2.9 % (benchmarks/layer_grid_calibration.py).
CALIBRATION_NETWORKS: dict[str, float | None] = {"network:min": None, "network:f0.25": 0.25,
                                                 "network:f0.5": 0.5, "network:f0.75": 0.75, "network:full": 1.0}


def fraction_point(grid: Any, fraction: float | None) -> int:
    """Index of the grid point nearest `fraction` of the grid's largest (None: the smallest; ties: lower)."""
    pts = [float(c) for c in grid]
    if fraction is None:
        return 0
    return min(range(len(pts)), key=lambda i: (abs(pts[i] - fraction * pts[-1]), i))


def grid_points(channels: int, *, step: float = 0.25, min_fraction: float = 0.1, multiple: int = 1) -> list[int]:
    """Channel counts timed for a dimension of at most `channels`: floor(min_fraction*C), then every
    `step`*C up to C; with `multiple` > 1 (dividing C) all rounded to multiples of it, the low end down."""
    m = multiple if multiple > 1 and channels % multiple == 0 else 1
    lo = max(m, int(math.floor(min_fraction * channels / m)) * m)
    pts = {lo, channels}
    k = 1
    while k * step < 1 - 1e-9:
        c = int(round(k * step * channels / m)) * m
        if lo < c < channels:
            pts.add(c)
        k += 1
    return sorted(pts)


def calibration_network_spec(spec, variables, fraction: float | None, *, step: float = 0.25,
                             min_fraction: float = 0.1, multiple: int = 1):
    """(spec, variables) of the supernet with every width group at its grid point nearest `fraction` of
    its width (`fraction_point`; None: the grid minimum): the networks `latency.layer_grid` times end to end
    to calibrate a grid."""
    from jaxnas.supernet import materialize, prefix_mask, width_groups
    masks = {}
    for g, c in width_groups(spec).items():
        pts = grid_points(c, step=step, min_fraction=min_fraction, multiple=multiple)
        masks[g] = prefix_mask(c, pts[fraction_point(pts, fraction)])
    return materialize(spec, variables, {"masks": masks})


def calibration_network(key: str, spec, variables, *, step: float = 0.25, min_fraction: float = 0.1,
                        multiple: int = 1):
    """(spec, variables) of the calibration network `key` of `CALIBRATION_NETWORKS`: the supernet itself
    for ``network:full`` (not re-materialized), else `calibration_network_spec`."""
    if key == "network:full":
        return spec, variables
    return calibration_network_spec(spec, variables, CALIBRATION_NETWORKS[key], step=step,
                                    min_fraction=min_fraction, multiple=multiple)


def calibration_knots(points: list[tuple[float, float]]) -> list[list[float]]:
    """Knots [[layer sum, network ms], ...] of a monotone piecewise-linear calibration: `points` sorted by
    sum, keeping the smallest and the largest and every interior point strictly between its kept
    neighbours in both sum and ms (a noisy point that would give a segment a negative slope is dropped,
    so that a gradient never says a wider net is faster)."""
    pts = sorted((float(s), float(t)) for s, t in points)
    if len(pts) < 2:
        return [list(p) for p in pts]
    first, last = pts[0], pts[-1]
    kept = [first]
    for s, t in pts[1:-1]:
        if kept[-1][0] < s < last[0] and kept[-1][1] < t < last[1]:
            kept.append((s, t))
    kept.append(last)
    return [list(p) for p in kept]


def fit_calibration(sums: Mapping[str, float], table: Any, stat: str = "median") -> dict[str, Any]:
    """The map from summed layer latencies to end-to-end ms, given the layer sum of every
    `CALIBRATION_NETWORKS` key: ``knots`` through every calibration network `table` timed end to end, and
    the line ``constant_ms + scale * sum`` through the full and the minimal one."""
    s_full, s_min = sums["network:full"], sums["network:min"]
    t_full = table.ms("network:full", stat)
    t_min = table.ms("network:min", stat) if "network:min" in table else None
    scale = 1.0
    if t_min is not None and s_full - s_min > 1e-9:
        scale = (t_full - t_min) / (s_full - s_min)
    if not 0.2 <= scale <= 5.0:  # noise or a degenerate grid: keep the plain sum plus an offset
        scale = 1.0
    knots = calibration_knots([(sums[key], table.ms(key, stat)) for key in CALIBRATION_NETWORKS if key in table])
    return {"constant_ms": t_full - scale * s_full, "scale": scale, "full_ms": t_full, "min_ms": t_min,
            "layer_sum_full_ms": s_full, "layer_sum_min_ms": s_min, "knots": knots}


def piecewise_linear(x: Any, knots: Any, xp: Any = jnp) -> Any:
    """The piecewise-linear function through `knots` at x (linear extrapolation beyond the end knots)."""
    xs = [float(k[0]) for k in knots]
    ys = [float(k[1]) for k in knots]
    slopes = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
    out = ys[0] + slopes[0] * (x - xs[0])
    for i in range(1, len(slopes)):
        out = out + (slopes[i] - slopes[i - 1]) * xp.maximum(x - xs[i], 0.0)
    return out


class LatencyModel:
    """Expected latency (ms) of a supernet from a layer-grid `LatencyTable` (see `latency.layer_grid`).

    The table's ``meta['layers']`` lists every conv of the supernet in `conv_sites` order with its
    entry key, input shape, output channels and channel grids; entries are ``f"{key}:{cin}x{cout}"``.
    ``meta['calibration'][stat]`` maps the summed layer latencies to end-to-end ms: piecewise linear
    through its ``knots`` when the grid timed more than two networks, else ``constant_ms + scale * sum``;
    `stat` picks the entry statistic (median, mean, p10 or min).
    """

    def __init__(self, spec: ArchSpec, prunable: Any, table: Any, *, stat: str = "median", smooth: bool = False):
        """`smooth`: replace each layer's measured grid by its least-squares bilinear fit
        ``a + b*cin + c*cout + d*cin*cout`` (``a + b*c`` for depthwise) before interpolating: tiny layers
        are timed at the resolution of the runtime's per-call overhead, and a noisy grid has
        non-monotone cells whose gradients point the wrong way.  The end-to-end calibration is then
        refitted on the smoothed sums (from the table's end-to-end ``CALIBRATION_NETWORKS`` entries)."""
        meta = getattr(table, "meta", {}) or {}
        layers = meta.get("layers")
        if not isinstance(layers, list):
            raise SpecError("the latency table has no per-layer grid (meta['layers']); build it with "
                            "latency.layer_grid.build_layer_grid")
        sites, _ = conv_sites(spec, frozenset(prunable))
        sites = [s for s in sites if s.layer != "se"]
        if len(layers) != len(sites):
            raise SpecError(f"the latency table describes {len(layers)} conv layers but {spec.name} has "
                            f"{len(sites)}; rebuild the table for this supernet")
        self.sites = sites
        self.stat, self.smooth = stat, smooth
        self._layers, self._np_layers = [], []
        for s, lay in zip(sites, layers):
            want = [s.in_hw[0], s.in_hw[1], s.cin[1]]
            if list(lay["in_shape"]) != want or int(lay["out"]) != s.cout[1] or lay.get("block") != s.block:
                raise SpecError(f"latency table layer {s.index} is {lay['in_shape']}->{lay['out']} (block "
                                f"{lay.get('block')}) but the supernet has {want}->{s.cout[1]} (block {s.block}); "
                                "rebuild the table for this supernet")
            cin_grid, cout_grid = [int(c) for c in lay["cin_grid"]], [int(c) for c in lay["cout_grid"]]
            depthwise = bool(lay.get("depthwise", False))
            if depthwise:
                xs, ys = np.asarray(cout_grid, np.float64), np.zeros((1,), np.float64)
                vals = np.asarray([[table.ms(f"{lay['key']}:{c}x{c}", stat)] for c in cout_grid], np.float64)
            else:
                xs, ys = np.asarray(cin_grid, np.float64), np.asarray(cout_grid, np.float64)
                vals = np.asarray([[table.ms(f"{lay['key']}:{a}x{b}", stat) for b in cout_grid] for a in cin_grid],
                                  np.float64)
            if smooth:
                vals = _bilinear_fit(xs, ys, vals)
            self._np_layers.append((s, depthwise, xs, ys, vals))
            self._layers.append((s, depthwise, jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                                 jnp.asarray(vals, jnp.float32)))
        cal = (meta.get("calibration") or {}).get(stat, {})
        self.constant_ms = float(cal.get("constant_ms", 0.0))
        self.scale = float(cal.get("scale", 1.0))
        knots = cal.get("knots") or []
        self.knots = [list(map(float, k)) for k in knots] if len(knots) >= 3 else None
        if smooth and "network:full" in table:
            self._recalibrate(table, stat)

    def _recalibrate(self, table: Any, stat: str) -> None:
        # As latency.layer_grid.calibrate, on the smoothed grids: the full and the minimal network are
        # the grids' last and first corners, the interior networks their points nearest each fraction.
        sums = {key: sum(float(v[fraction_point(xs, f), fraction_point(ys, f)]) for _, _, xs, ys, v in self._np_layers)
                for key, f in CALIBRATION_NETWORKS.items()}
        cal = fit_calibration(sums, table, stat)
        self.scale, self.constant_ms = cal["scale"], cal["constant_ms"]
        if self.knots is not None:
            self.knots = cal["knots"] if len(cal["knots"]) >= 3 else None

    def _predict(self, channels: Mapping[str, Any], xp: Any, dtype: Any, layers: list) -> Any:
        def value(e: Expr):
            return xp.asarray(e[1] if e[0] is None else channels[e[0]], dtype)

        total = xp.zeros((), dtype)
        for s, depthwise, xs, ys, vals in layers:
            x, y = (value(s.cout), xp.zeros((), dtype)) if depthwise else (value(s.cin), value(s.cout))
            total = total + bilinear(xs, ys, vals, x, y, xp)
        if self.knots is not None:
            return piecewise_linear(total, self.knots, xp)
        return self.constant_ms + self.scale * total

    def expected(self, channels: Mapping[str, Any]) -> jax.Array:
        """Predicted end-to-end latency (ms) at these (expected or integer) channel counts (differentiable)."""
        return self._predict(channels, jnp, jnp.float32, self._layers)

    def exact(self, channels: Mapping[str, Any]) -> Any:
        """The same prediction in numpy (channel counts may be arrays: many sub-networks at once)."""
        out = self._predict(channels, np, np.float64, self._np_layers)
        return float(out) if np.ndim(out) == 0 else out
