"""BatchNorm recalibration: reset a network's running statistics and recompute them from batches.

Weight-sharing methods evaluate sub-networks whose BN running statistics were never accumulated for that
sub-network (DMCP's sampled widths, MetaPruning's candidates); before evaluating one, its statistics are
recomputed over calibration batches run in train mode (each normalised with its own statistics, as during
training).  Two ways to combine the per-batch statistics:

* ``momentum=None``: the exact average of the per-batch means and (biased) variances, each batch weighted
  equally (DMCP here; the original DMCP kept only the last batch);
* ``momentum=m`` (PyTorch convention): reset to mean 0 / var 1, then ``running = (1 - m) running + m batch``
  per batch in order, i.e. PyTorch's train-mode update (MetaPruning: ``m = 0.1`` over 100 batches).

The model must have a `bn_momentum` attribute (Flax convention; `model.clone(bn_momentum=0.0)` makes a
train-mode pass write the batch's statistics exactly) and name its running statistics ``mean`` / ``var``
in the 'batch_stats' collection.  Statistics the calibration passes do not write (e.g. the unused rows of
MetaPruning's per-width BN banks) come out reset.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def reset_batch_stats(batch_stats: Any) -> Any:
    """The same tree with every ``var`` leaf 1 and every other leaf (``mean``) 0."""
    def reset(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        return jnp.ones_like(leaf) if name == "var" else jnp.zeros_like(leaf)
    return jax.tree_util.tree_map_with_path(reset, batch_stats)


def combine_batch_stats(acc: Any, batch: Any, index: Any, momentum: float | None) -> Any:
    """Fold batch number `index` (from 0) into `acc` (jittable): the running mean of the batches, or the
    PyTorch EMA from `acc` (the reset statistics before the first batch)."""
    if momentum is None:
        return jax.tree.map(lambda a, b: a + (b - a) / (index + 1), acc, batch)
    return jax.tree.map(lambda a, b: (1 - momentum) * a + momentum * b, acc, batch)


def batch_stats_fn(model: Any) -> Callable[[Any, Any, Any], Any]:
    """Jitted ``(variables, images, choices) -> the BN statistics of that batch`` (train mode, exactly the
    batch's): build it once and pass it to every `recalibrate_bn` of the same model, so that repeated
    recalibrations (one per evaluation) compile once."""
    exact = model.clone(bn_momentum=0.0)  # running <- batch statistics exactly

    @jax.jit
    def batch_stats(v, x, ch):
        kw = {} if ch is None else {"choices": ch}
        _, mutated = exact.apply(v, x, train=True, mutable=["batch_stats"], **kw)
        return mutated["batch_stats"]

    return batch_stats


def recalibrate_bn(model: Any, variables: Mapping[str, Any], batches: Iterable[Mapping[str, Any]],
                   choices: Any = None, *, momentum: float | None = None,
                   stats_fn: Callable[[Any, Any, Any], Any] | None = None) -> dict[str, Any]:
    """Variables whose BN running statistics are recomputed from `batches` (see the module docstring).
    `stats_fn`: `batch_stats_fn(model)` built once by a caller that recalibrates many times."""
    batch_stats = stats_fn or batch_stats_fn(model)
    reset = reset_batch_stats(variables["batch_stats"])
    v = {"params": variables["params"], "batch_stats": reset}
    acc, n = reset, 0
    for n, batch in enumerate(batches, 1):
        acc = combine_batch_stats(acc, batch_stats(v, batch["image"], choices), n - 1, momentum)
    if n == 0:
        raise ValueError("BN recalibration needs at least one batch")
    return {"params": variables["params"], "batch_stats": jax.tree.map(np.asarray, jax.device_get(acc))}


__all__ = ["batch_stats_fn", "combine_batch_stats", "recalibrate_bn", "reset_batch_stats"]
