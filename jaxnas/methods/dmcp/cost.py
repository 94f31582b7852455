"""Expected cost of a DMCP supernet: MACs (§3.2) and latency from a per-layer table; the log-L1 loss.

Expected MACs use products of expected channels (layers treated independently, as the original):
a conv costs ``kh*kw*E[c_in]*E[c_out]*Ho*Wo``, a depthwise conv ``kh*kw*E[c]*Ho*Wo``, the classifier
``E[c_last]*classes``.  Bias terms (``+Ho*Wo*E[c_out]`` per biased conv, ``+classes`` for the FC) are
counted only with ``count_bias=True``: jaxnas reports MACs without them (`jaxnas.spec.macs`), and
targets/achieved MACs must use one convention.  With hard channel counts the same formula gives
exactly `jaxnas.spec.macs` of the materialised sub-network.

Expected latency sums, over every conv layer of the supernet, a bilinear interpolation in
(E[c_in], E[c_out]) of that layer's measured latency grid (a `latency.LatencyTable` built by
`latency.layer_grid.build_layer_grid`; this module only reads the table), then applies the table's
end-to-end calibration ``constant_ms + scale * sum``.  Both models live in `jaxnas.costmodel` (shared
with MetaPruning).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The MACs and latency models are core (`jaxnas.costmodel`, shared with MetaPruning); re-exported here.
from jaxnas.costmodel import LatencyModel, MacsModel  # noqa: F401


# ------------------------------------------------------------------------------------------------
# The piecewise-log cost loss
# ------------------------------------------------------------------------------------------------

def log_l1(expected: jax.Array, target: float, *, far: float, near: float = 0.95) -> jax.Array:
    """DMCP's `log_l1` cost loss (§3.2), in the units of `target`.

    r = 0.1 if |E - T| > far else 1;  E < near*T: log(r|E - T|);  near*T <= E < T: 0;
    E >= T: log(r|E - near*T|).  `r` only shifts the loss by log(0.1) and never changes its gradient
    d/dE = 1/(E - T) or 1/(E - near*T), which is also independent of the units of E and T.
    """
    target = float(target)
    diff = expected - target
    r = jnp.where(jnp.abs(diff) > far, 0.1, 1.0)
    below = jnp.log(r * jnp.abs(diff) + 1e-12)
    above = jnp.log(r * jnp.abs(expected - near * target) + 1e-12)
    zero = jnp.zeros_like(expected)
    return jnp.where(expected < near * target, below, jnp.where(expected < target, zero, above))


@dataclasses.dataclass(frozen=True)
class CostTarget:
    """What the search constrains: MACs (loss in MFLOPs, as the original) or latency in ms."""

    kind: str  # 'macs' | 'latency_ms'
    value: float  # MACs or ms

    @property
    def loss_units(self) -> float:
        """Divisor turning the cost into the loss's units (MFLOPs for MACs, ms for latency)."""
        return 1e6 if self.kind == "macs" else 1.0

    def far_threshold(self) -> float:
        """|E - T| above which r = 0.1: 200 MFLOPs for MACs (original); for ms, 2/3 of the target
        (200 MFLOPs relative to the original's 300 M flagship target)."""
        return 200.0 if self.kind == "macs" else self.value * 2.0 / 3.0

    def describe(self, v: float) -> str:
        return f"{v / 1e6:.3f} MMACs" if self.kind == "macs" else f"{v:.4f} ms"

    def as_dict(self) -> dict[str, float]:
        return {"macs": self.value} if self.kind == "macs" else {"latency_ms": self.value}


class CostModel:
    """The cost a search constrains: expected value in native units and the log-L1 loss."""

    def __init__(self, target: CostTarget, macs: MacsModel, latency: LatencyModel | None = None):
        if target.kind == "latency_ms" and latency is None:
            raise ValueError("a latency target needs a LatencyModel")
        self.target, self.macs, self.latency = target, macs, latency

    def value(self, channels: Mapping[str, Any]) -> jax.Array:
        return self.macs.expected(channels) if self.target.kind == "macs" else self.latency.expected(channels)

    def exact(self, channels: Mapping[str, Any]) -> Any:
        """Cost of concrete sub-network(s) in native units (MACs or ms); arrays give one value per net."""
        out = self.macs.exact(channels) if self.target.kind == "macs" else self.latency.exact(channels)
        return float(out) if np.ndim(out) == 0 else out

    def loss(self, channels: Mapping[str, Any]) -> jax.Array:
        u = self.target.loss_units
        return log_l1(self.value(channels) / u, self.target.value / u, far=self.target.far_threshold())


def uniform_alpha_for(space: Any, cost: CostModel, value: float, lo: float = -12.0, hi: float = 12.0) -> float:
    """The alpha which, given to every gate, makes the expected cost equal `value` (bisection; the
    expected cost increases with a common alpha).  Clipped to [lo, hi]."""
    fn = jax.jit(lambda a: cost.value(space.expected_channels(space.init_alphas(a))))
    if float(fn(lo)) >= value:
        return lo
    if float(fn(hi)) <= value:
        return hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(fn(mid)) < value:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
