"""BatchNorm folding: eval-mode Conv -> BN becomes one Conv with a bias.

For a conv with BN (running mean mu, var s2, scale g, bias beta, epsilon eps):
    W' = W * g / sqrt(s2 + eps)      (per output channel: the last axis of an HWIO kernel, and of a
                                      depthwise (kh, kw, 1, C) kernel alike)
    b' = (b - mu) * g / sqrt(s2 + eps) + beta
Arithmetic is done in float64 and rounded once to float32 so folding adds no error of its own beyond
that rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from jaxnas.spec import ArchSpec, Block, Conv

__all__ = ["fold_batchnorm", "spec_bn_eps"]


def spec_bn_eps(spec: ArchSpec) -> float:
    """The BN epsilon the spec's model is built with (DF nets use 1e-4, everything else 1e-5)."""
    return float(spec.metadata.get("bn_eps", 1e-5))


def _np(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _np(v) for k, v in tree.items()}
    return np.asarray(tree)


def _fold_conv(conv: Conv, p: dict, s: dict, eps: float) -> tuple[Conv, dict]:
    """Folded (conv, params) of one layer; `p`/`s` are its params and batch_stats subtrees."""
    if not conv.norm:
        return conv, p
    bn_p, bn_s = p["bn"], s["bn"]
    kernel = np.asarray(p["kernel"], np.float64)
    mul = np.asarray(bn_p["scale"], np.float64) / np.sqrt(np.asarray(bn_s["var"], np.float64) + eps)
    b = np.asarray(p["bias"], np.float64) if conv.bias else np.zeros(kernel.shape[-1])
    new_p = {k: v for k, v in p.items() if k not in ("bn", "kernel", "bias")}
    new_p["kernel"] = (kernel * mul).astype(np.float32)
    new_p["bias"] = ((b - np.asarray(bn_s["mean"], np.float64)) * mul
                     + np.asarray(bn_p["bias"], np.float64)).astype(np.float32)
    return dataclasses.replace(conv, norm=False, bias=True), new_p


def _fold_block(block: Block, p: dict, s: dict, eps: float) -> tuple[Block, dict]:
    p = dict(p)

    def fold(fold_fn, key: str, item):  # folds `item` (a conv or a candidate block) stored under `key`
        folded, p[key] = fold_fn(item, p.get(key, {}), s.get(key, {}), eps)
        return folded

    layers = tuple(fold(_fold_conv, f"conv{j}", conv) for j, conv in enumerate(block.layers))
    shortcut = fold(_fold_conv, "shortcut", block.shortcut) if isinstance(block.shortcut, Conv) else block.shortcut
    cands = tuple(fold(_fold_block, f"cand{k}", cand) for k, cand in enumerate(block.candidates))
    return dataclasses.replace(block, layers=layers, shortcut=shortcut, candidates=cands), p


def fold_batchnorm(spec: ArchSpec, variables: Mapping[str, Any], *,
                   bn_eps: float | None = None) -> tuple[ArchSpec, dict]:
    """(spec without BN, variables) whose eval-mode output equals the original's.

    Every `Conv(norm=True)` becomes `Conv(norm=False, bias=True)`; the result has no `batch_stats`.
    `bn_eps` defaults to the spec's own (`spec.meta['bn_eps']`, else 1e-5, as `build_model` uses).
    """
    eps = spec_bn_eps(spec) if bn_eps is None else float(bn_eps)
    params = _np(variables["params"])
    stats = _np(variables.get("batch_stats", {}) or {})
    new_params = dict(params)
    blocks = []
    for i, block in enumerate(spec.blocks):
        key = f"block{i}"
        block2, pb = _fold_block(block, params.get(key, {}), stats.get(key, {}), eps)
        if pb:
            new_params[key] = pb
        blocks.append(block2)
    return dataclasses.replace(spec, blocks=tuple(blocks)), {"params": new_params, "batch_stats": {}}
