"""Fitness of candidates (seed spec §2.3): held-out top-1 error after BN recalibration (or held-out loss).

For each candidate: generate its kernels once, reset *all* BN running statistics to (0, 1), run the
calibration batches (drawn once per search from the *training* split with training augmentation, the same
batches for every candidate) in train mode to recompute its statistics (PyTorch EMA with momentum 0.1 as
the original, or the exact average of the batches), then count top-1 hits on the held-out split.  Error =
100 - top-1 accuracy in percent, as the original.  `metric="loss"` ranks by the mean held-out cross-entropy
(nats, no label smoothing) instead: a 0/1 count over 1,200 images moves in steps of 0.083 % and its noise
is larger than the differences between candidates of one latency window, a per-image continuous loss is a
finer ranking statistic (benchmarks/metapruning_rank.py compares both against retrained accuracy).

Everything for a candidate runs inside one compiled call (scans over the calibration and held-out
batches); `candidates_per_call = K > 1` evaluates K candidates at once with `jax.vmap` (their generated
kernels come from one (K, hidden) x (hidden, numel) matmul per layer instead of K matrix-vector products,
and the convolutions see K times larger batches).  Differences from the original: the calibration batches
are fixed per search instead of a fresh shuffle per candidate (fairer comparison, deterministic resume).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas.methods.metapruning.pruningnet import PruningNet
from jaxnas.train.bn import combine_batch_stats, reset_batch_stats
from jaxnas.train.loop import balanced_batch_size


def calibration_images(dataset: Any, num_batches: int, batch_size: int, seed: int,
                       augment: bool | None = None) -> np.ndarray:
    """(num_batches, B, H, W, C) training images with training augmentation: `augment`, the setting the
    PruningNet was trained with (None: the dataset's, `data.augment`), as the original recalibrates with its
    training transforms.  (Augmenting here always gave a PruningNet trained on clean images statistics of
    padded crops and flips, for a held-out evaluation on clean images.)"""
    out = []
    epoch = 0
    while len(out) < num_batches:
        for batch in dataset.batches("train", batch_size, seed=seed + 7919, epoch=epoch, augment=augment):
            out.append(np.asarray(batch["image"]))
            if len(out) == num_batches:
                break
        epoch += 1
    return np.stack(out)


def padded_split(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nb, B, ...) images, labels and a validity mask, the last batch padded.

    B is `batch_size` balanced over the batches it takes (`balanced_batch_size`, as every evaluation here:
    600 images at 500 a batch are 2 x 300); B <= batch_size.
    """
    n = len(labels)
    batch_size = balanced_batch_size(n, batch_size)
    nb = max(1, -(-n // batch_size))
    pad = nb * batch_size - n
    x = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
    y = np.concatenate([labels, np.zeros((pad,), labels.dtype)]) if pad else labels
    m = np.arange(nb * batch_size) < n
    return (x.reshape(nb, batch_size, *images.shape[1:]), y.reshape(nb, batch_size).astype(np.int32),
            m.reshape(nb, batch_size))


METRICS = ("error", "loss")


class FitnessEvaluator:
    """`evaluator(list of gene tuples) -> np.ndarray` of fitness values (lower is better) on the held-out
    images: top-1 errors (%) for `metric="error"` (the original), mean cross-entropies for `"loss"`."""

    def __init__(self, model: PruningNet, variables: dict, calib_images: np.ndarray, holdout: tuple[np.ndarray, np.ndarray],
                 *, eval_batch_size: int = 500, momentum: float | None = 0.1, candidates_per_call: int = 1,
                 metric: str = "error"):
        if candidates_per_call < 1:
            raise ValueError("candidates_per_call must be >= 1")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.model, self.k = model, int(candidates_per_call)
        self.num_genes = model.space.num_genes
        self.params = jax.device_put(variables["params"])
        self.reset = jax.device_put(reset_batch_stats(variables["batch_stats"]))
        self.calib = jax.device_put(jnp.asarray(calib_images))
        hx, hy, hm = padded_split(*holdout, eval_batch_size)
        self.holdout = jax.device_put((jnp.asarray(hx), jnp.asarray(hy), jnp.asarray(hm)))
        self.count = int(hm.sum())
        self.momentum = momentum
        self._fn = jax.jit(self._build())
        self.calls = 0

    def _build(self):
        model, exact = self.model, self.model.clone(bn_momentum=0.0)
        momentum = self.momentum

        def one(params, reset, calib, holdout, ids):
            choices = {"ids": ids}
            kernels = model.apply({"params": params}, choices, method=PruningNet.generate)

            def calib_step(carry, x):
                acc, i = carry
                _, mutated = exact.apply({"params": params, "batch_stats": reset}, x, kernels, True, choices,
                                         method=PruningNet.forward, mutable=["batch_stats"])
                return (combine_batch_stats(acc, mutated["batch_stats"], i, momentum), i + 1), None

            (stats, _), _ = jax.lax.scan(calib_step, (reset, jnp.zeros((), jnp.float32)), calib)

            def eval_step(carry, batch):
                correct, loss = carry
                x, y, m = batch
                logits = model.apply({"params": params, "batch_stats": stats}, x, kernels, False, choices,
                                     method=PruningNet.forward)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
                return (correct + jnp.sum((jnp.argmax(logits, -1) == y) & m), loss + jnp.sum(jnp.where(m, ce, 0.0))), None

            (correct, loss), _ = jax.lax.scan(eval_step, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)), holdout)
            return correct, loss

        return jax.vmap(one, in_axes=(None, None, None, None, 0))  # ids: (K, num_genes)

    def measure(self, genes: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 error (%) and mean cross-entropy of each candidate (the last call padded to K candidates)."""
        hits, losses = [], []
        for start in range(0, len(genes), self.k):
            chunk = [tuple(g) for g in genes[start:start + self.k]]
            ids = np.asarray(chunk + [chunk[-1]] * (self.k - len(chunk)), np.int32)
            h, l = (np.asarray(v) for v in self._fn(self.params, self.reset, self.calib, self.holdout, jnp.asarray(ids)))
            hits.extend(int(v) for v in h[:len(chunk)])
            losses.extend(float(v) / self.count for v in l[:len(chunk)])
            self.calls += 1
        return 100.0 - 100.0 * np.asarray(hits, np.int64) / self.count, np.asarray(losses, np.float64)

    def errors(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        """Top-1 error (%) of each candidate."""
        return self.measure(genes)[0]

    def __call__(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        """The fitness (`metric`) of each candidate."""
        return self.measure(genes)[METRICS.index(self.metric)]

    def compiled_count(self) -> int:
        return self._fn._cache_size()


__all__ = ["METRICS", "FitnessEvaluator", "calibration_images", "padded_split"]
