"""Fitness of candidates (seed spec §2.3): held-out top-1 error after BN recalibration.

For each candidate: generate its kernels once, reset *all* BN running statistics to (0, 1), run the
calibration batches (drawn once per search from the *training* split with training augmentation, the same
batches for every candidate) in train mode to recompute its statistics (PyTorch EMA with momentum 0.1 as
the original, or the exact average of the batches), then count top-1 hits on the held-out split.  Error =
100 - top-1 accuracy in percent, as the original.

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

from jaxnas.methods.metapruning.pruningnet import PruningNet
from jaxnas.train.bn import combine_batch_stats, reset_batch_stats
from jaxnas.train.loop import balanced_batch_size


def calibration_images(dataset: Any, num_batches: int, batch_size: int, seed: int) -> np.ndarray:
    """(num_batches, B, H, W, C) training images with training augmentation (the dataset's setting)."""
    out = []
    epoch = 0
    while len(out) < num_batches:
        for batch in dataset.batches("train", batch_size, seed=seed + 7919, epoch=epoch, augment=True):
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


class FitnessEvaluator:
    """`evaluator(list of gene tuples) -> np.ndarray` of top-1 errors (%) on the held-out images."""

    def __init__(self, model: PruningNet, variables: dict, calib_images: np.ndarray, holdout: tuple[np.ndarray, np.ndarray],
                 *, eval_batch_size: int = 500, momentum: float | None = 0.1, candidates_per_call: int = 1):
        if candidates_per_call < 1:
            raise ValueError("candidates_per_call must be >= 1")
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

            def eval_step(correct, batch):
                x, y, m = batch
                logits = model.apply({"params": params, "batch_stats": stats}, x, kernels, False, choices,
                                     method=PruningNet.forward)
                return correct + jnp.sum((jnp.argmax(logits, -1) == y) & m), None

            correct, _ = jax.lax.scan(eval_step, jnp.zeros((), jnp.int32), holdout)
            return correct

        return jax.vmap(one, in_axes=(None, None, None, None, 0))  # ids: (K, num_genes)

    def correct(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        """Top-1 hits of each candidate (the last call padded to K candidates)."""
        out = []
        for start in range(0, len(genes), self.k):
            chunk = [tuple(g) for g in genes[start:start + self.k]]
            ids = np.asarray(chunk + [chunk[-1]] * (self.k - len(chunk)), np.int32)
            hits = np.asarray(self._fn(self.params, self.reset, self.calib, self.holdout, jnp.asarray(ids)))
            out.extend(int(h) for h in hits[:len(chunk)])
            self.calls += 1
        return np.asarray(out, np.int64)

    def __call__(self, genes: Sequence[Sequence[int]]) -> np.ndarray:
        """Top-1 error (%) of each candidate."""
        return 100.0 - 100.0 * self.correct(genes) / self.count

    def compiled_count(self) -> int:
        return self._fn._cache_size()


__all__ = ["FitnessEvaluator", "calibration_images", "padded_split"]
