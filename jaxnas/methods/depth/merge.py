"""Merge a finetuned `fix_act` network into its depth-compressed form (one conv per segment).

Per segment (st, end): BN folded into each conv (eps 1e-5), kernels composed (the full convolution of
the accumulated kernel with the next one), biases propagated, strides multiplied, paddings summed; a
residual block lying wholly inside the segment is fused as identity at the kernel centre.  Kernels are
kept depthwise (k, k, C) while every conv so far is depthwise, dense HWIO (k, k, I, O) otherwise.
Arithmetic is float64; the merged variables are float32.

The merged spec is: the untouched blocks before the body (stem), one ``Block('merged', (Conv,))`` per
fused segment, a ``Block('merged', convs..., shortcut='identity')`` per residual that could not be
fused (the SkipFeed), the max-pools of VGG in place, then the untouched blocks after the body (last
conv) and the head.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxnas.methods.depth.mergeable import (META_ACT, META_ACTS, META_MERGE, Body, PatternError, _np_tree, body_of,
                                            fused_residuals, merge_segments, pattern_of)
from jaxnas.spec import ArchSpec, Block, Conv

BN_EPS = 1e-5


class Kernel:
    """A merged kernel: depthwise (k, k, C) or dense (k, k, I, O), float64, with bias (O,)."""

    __slots__ = ("w", "b", "dw", "stride", "pad")

    def __init__(self, w: np.ndarray, b: np.ndarray, dw: bool, stride: int = 1, pad: int = 0):
        self.w, self.b, self.dw, self.stride, self.pad = w, b, dw, stride, pad

    @property
    def k(self) -> int:
        return int(self.w.shape[0])

    def dense(self) -> np.ndarray:
        if not self.dw:
            return self.w
        k, _, c = self.w.shape
        out = np.zeros((k, k, c, c))
        idx = np.arange(c)
        out[:, :, idx, idx] = self.w
        return out


def conv_kernel(conv: Conv, params: Mapping[str, Any], stats: Mapping[str, Any] | None,
                eps: float = BN_EPS) -> Kernel:
    """One conv (+ BN folded) as a :class:`Kernel`."""
    w = np.asarray(params["kernel"], np.float64)
    out = w.shape[-1]
    b = np.asarray(params["bias"], np.float64) if conv.bias else np.zeros(out)
    if conv.norm:
        bn_p, bn_s = params["bn"], (stats or {})["bn"]
        mul = np.asarray(bn_p["scale"], np.float64) / np.sqrt(np.asarray(bn_s["var"], np.float64) + eps)
        w = w * mul
        b = (b - np.asarray(bn_s["mean"], np.float64)) * mul + np.asarray(bn_p["bias"], np.float64)
    if conv.depthwise:
        w = w[:, :, 0, :]
    (pt, pb), (pl, pr) = conv.pads
    if not pt == pb == pl == pr:
        raise PatternError(f"merging needs symmetric padding, got {conv.pads}")
    return Kernel(w, b, conv.depthwise, conv.stride, pt)


def compose(a: Kernel | None, b: Kernel) -> Kernel:
    """The kernel of `a` followed by `b`: M[u, v] = Σ_{s, t} a[u - s, v - t] ∘ b[s, t] (channel product),
    bias Σ b · a.bias + b.bias, stride product, padding sum.  Valid when `a` has stride 1 or `b` is 1x1."""
    if a is None:
        return b
    if a.stride > 1 and b.k > 1:
        raise PatternError("a strided conv can only be merged with following 1x1 convs")
    ka, kb = a.k, b.k
    k = ka + kb - 1
    # depthwise b scales each channel of a (k, k, C) or (k, k, I, C); dense b maps them to (k, k, I, O)
    m = np.zeros((k, k, *a.w.shape[2:]) if b.dw else (k, k, a.w.shape[2], b.w.shape[-1]))
    for s in range(kb):
        for t in range(kb):
            if b.dw:
                m[s:s + ka, t:t + ka] += a.w * b.w[s, t]
            elif a.dw:
                m[s:s + ka, t:t + ka] += a.w[:, :, :, None] * b.w[s, t][None, None]
            else:
                m[s:s + ka, t:t + ka] += np.einsum("uvio,op->uvip", a.w, b.w[s, t], optimize=True)
    bias = b.w.sum((0, 1)) * a.b + b.b if b.dw else np.einsum("stop,o->p", b.w, a.b) + b.b
    return Kernel(m, bias, a.dw and b.dw, a.stride * b.stride, a.pad + b.pad)


def add_skip(k: Kernel, skip: np.ndarray | None = None) -> Kernel:
    """`k` plus the block's skip at the kernel centre: identity, or a 1x1 kernel (I, O)."""
    c = k.k // 2
    if skip is None and k.dw:
        w = k.w.copy()
        w[c, c] += 1.0
        return Kernel(w, k.b, True, k.stride, k.pad)
    w = k.dense().copy()
    w[c, c] += np.eye(w.shape[2]) if skip is None else skip
    return Kernel(w, k.b, False, k.stride, k.pad)


def _variables_of(variables: Mapping[str, Any], i: int, j: int | str) -> tuple[Mapping, Mapping | None]:
    name = j if isinstance(j, str) else f"conv{j}"
    p = variables["params"][f"block{i}"][name]
    s = variables.get("batch_stats", {}).get(f"block{i}", {}).get(name)
    return p, s


def merge_network(spec: ArchSpec, variables: Mapping[str, Any], act_pos: Sequence[int] | None = None,
                  merge_pos: Sequence[int] | None = None, eps: float = BN_EPS) -> tuple[ArchSpec, dict]:
    """(merged spec, merged variables) of a finetuned `fix_act` spec (eval mode).

    The pattern defaults to the one stored in the spec by `fix_act`.  The spec's paddings must be the
    re-arranged ones of that pattern (merging a net trained with per-layer 'same' padding would only be
    exact away from the borders), which is checked.
    """
    if act_pos is None or merge_pos is None:
        a, s = pattern_of(spec)
        act_pos = a if act_pos is None else act_pos
        merge_pos = s if merge_pos is None else merge_pos
    body = body_of(spec)
    chain = body.chain
    A = {int(p) for p in act_pos}
    segs = merge_segments(chain, A, merge_pos)
    _check_paddings(spec, body, segs)
    act = str(spec.metadata.get(META_ACT, body.act))
    fused = fused_residuals(chain, segs)
    res_at = {src: (src, tgt) for src, tgt in fused}
    block_of_res = {rt: i for i, rt in body.residual_blocks}

    def conv_at(p: int) -> Kernel:
        i, j = body.positions[p - 1]
        prm, st = _variables_of(variables, i, j)
        return conv_kernel(spec.blocks[i].layers[j], prm, st, eps)

    def merged(st: int, end: int) -> Kernel:
        acc, p = None, st
        while p < end:
            rt = res_at.get(p)
            if rt is not None and rt[1] <= end:
                blk = None
                for q in range(rt[0] + 1, rt[1] + 1):
                    blk = compose(blk, conv_at(q))
                i = block_of_res[rt]
                sc = spec.blocks[i].shortcut
                skip = None
                if isinstance(sc, Conv):
                    prm, _ = _variables_of(variables, i, "shortcut")
                    skip = np.asarray(prm["kernel"], np.float64)[0, 0]
                # A padded skip conv's zero padding is implied: the segment's input padding covers it.
                blk = add_skip(blk, skip)
                acc = compose(acc, blk)
                p = rt[1]
            else:
                acc = compose(acc, conv_at(p + 1))
                p += 1
        return acc

    out_blocks: list[Block] = []
    out_params: dict[str, Any] = {}
    out_stats: dict[str, Any] = {}

    def emit(block: Block, params: Mapping | None = None, stats: Mapping | None = None) -> None:
        name = f"block{len(out_blocks)}"
        out_blocks.append(block)
        if params:
            out_params[name] = params
        if stats:
            out_stats[name] = stats

    def as_conv(kern: Kernel, a: str) -> tuple[Conv, dict]:
        k, p = kern.k, kern.pad
        conv = Conv(int(kern.w.shape[-1]), (k, k), kern.stride, padding=((p, p), (p, p)), depthwise=kern.dw,
                    act=a, norm=False, bias=True)
        w = kern.w[:, :, None, :] if kern.dw else kern.w
        return conv, {"kernel": w.astype(np.float32), "bias": kern.b.astype(np.float32)}

    first, last = body.body_blocks[0], body.body_blocks[-1]
    for i in range(first):
        emit(spec.blocks[i], variables["params"].get(f"block{i}"), variables.get("batch_stats", {}).get(f"block{i}"))
    pools = set(chain.pools)
    unfused = {src: tgt for src, tgt in chain.residuals if (src, tgt) not in fused}
    k = 0
    while k < len(segs):
        st, end = segs[k]
        if st in unfused:
            tgt = unfused[st]
            layers, prm = [], {}
            while segs[k][1] <= tgt:
                s2, e2 = segs[k]
                conv, v = as_conv(merged(s2, e2), act if (e2 in A and e2 != tgt) else "identity")
                prm[f"conv{len(layers)}"] = v
                layers.append(conv)
                k += 1
                if e2 == tgt:
                    break
            emit(Block("merged", tuple(layers), "identity", post_act=act if tgt in A else "identity",
                       name=f"skip{st}_{tgt}"), prm)
            end = tgt
        else:
            conv, v = as_conv(merged(st, end), act if end in A else "identity")
            emit(Block("merged", (conv,), name=f"m{st}_{end}"), {"conv0": v})
            k += 1
        if end in pools:
            j = body.positions[end - 1][0] + 1
            if j >= len(spec.blocks) or spec.blocks[j].kind != "maxpool":
                raise PatternError(f"no max-pool block after body position {end}")
            emit(spec.blocks[j])
    for i in range(last + 1, len(spec.blocks)):
        b = spec.blocks[i]
        if i == last + 1 and b.kind == "maxpool" and chain.L in pools:
            continue  # emitted after the last segment
        emit(b, variables["params"].get(f"block{i}"), variables.get("batch_stats", {}).get(f"block{i}"))
    if "head" in variables["params"]:
        out_params["head"] = variables["params"]["head"]
    meta = dict(spec.meta)
    meta.update({META_ACTS: tuple(sorted(A)), META_MERGE: tuple(e for _, e in segs), "depth_merged": True,
                 META_ACT: act})
    merged_spec = dataclasses.replace(spec, name=f"{spec.name}_merged", blocks=tuple(out_blocks), stages=(),
                                      meta=tuple(sorted(meta.items())))
    out = {"params": _np_tree(out_params, np.float32), "batch_stats": _np_tree(out_stats, np.float32)}
    return merged_spec, out


def _check_paddings(spec: ArchSpec, body: Body, segs: Sequence[tuple[int, int]]) -> None:
    chain = body.chain
    for st, end in segs:
        if end - st == 1:
            want = {st + 1: chain.padding[st]}
        else:
            want = {p: (sum(chain.padding[st:end]) if p == st + 1 else 0) for p in range(st + 1, end + 1)}
        for p, q in want.items():
            i, j = body.positions[p - 1]
            if spec.blocks[i].layers[j].pads != ((q, q), (q, q)):
                raise PatternError(f"body conv {p} has padding {spec.blocks[i].layers[j].pads}, but segment "
                                   f"({st}, {end}) needs {((q, q), (q, q))}: finetune and merge the spec "
                                   "returned by fix_act(spec, A, S)")


def forward(spec: ArchSpec, variables: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """Eval-mode output of `Net(spec)` (jitted: one compile beats XLA:CPU's op-by-op dispatch)."""
    import jax

    from jaxnas.models import build_model

    model = build_model(spec)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(dict(variables), x))
