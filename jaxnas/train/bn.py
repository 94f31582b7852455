"""BatchNorm recalibration: running statistics recomputed for a network whose weights were trained as
part of a supernet (DMCP, MetaPruning, one-shot searches), where the supernet's running statistics do
not describe the sub-network.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import numpy as np

__all__ = ["recalibrate_bn"]


def recalibrate_bn(model: Any, variables: Mapping[str, Any], batches: Iterable[Mapping[str, Any]],
                   choices: Any = None) -> dict[str, Any]:
    """Variables whose BN running mean/var are the averages of the per-batch statistics of `batches`.

    Each batch is run in train mode (normalising with its own statistics, as during training); the
    running mean is the mean of the batch means and the running var the mean of the (biased) batch
    variances, each batch weighted equally.
    """
    exact = model.clone(bn_momentum=0.0)  # running <- batch statistics exactly

    @jax.jit
    def batch_stats(v, x, ch):
        kw = {} if ch is None else {"choices": ch}
        _, mutated = exact.apply(v, x, train=True, mutable=["batch_stats"], **kw)
        return mutated["batch_stats"]

    total, n = None, 0
    v = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    for batch in batches:
        s = batch_stats(v, batch["image"], choices)
        total = s if total is None else jax.tree.map(lambda a, b: a + b, total, s)
        n += 1
    if n == 0:
        raise ValueError("BN recalibration needs at least one batch")
    avg = jax.tree.map(lambda a: np.asarray(a) / n, jax.device_get(total))
    return {"params": variables["params"], "batch_stats": avg}
