"""Supernet choices as arrays, and materialisation of a chosen sub-network.

A supernet is an ordinary `ArchSpec` (at its maximum size) run with `choices` (see `jaxnas.models`).
`materialize` turns (supernet spec, variables, hard choices) into the concrete spec of the chosen
sub-network and its sliced variables; the slim model computes exactly what the masked supernet computes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.spec import ArchSpec, Block, Conv, SpecError, conv_out_hw, pool_out_hw, validate


def width_groups(spec: ArchSpec) -> dict[str, int]:
    """{width group: channel count} for every named group; all convs of a group must agree."""
    groups: dict[str, int] = {}

    def visit(block: Block, where: str):
        convs = list(block.layers) + ([block.shortcut] if isinstance(block.shortcut, Conv) else [])
        for c in convs:
            if c.width is None:
                continue
            if groups.setdefault(c.width, c.out) != c.out:
                raise SpecError(f"{where}: width group '{c.width}' has {c.out} channels here but "
                                f"{groups[c.width]} elsewhere; convs sharing a group must agree")
        for k, cand in enumerate(block.candidates):
            visit(cand, f"{where}.candidates[{k}]")

    for i, b in enumerate(spec.blocks):
        visit(b, f"blocks[{i}]")
    return groups


# Channel expression: (width group or None, channel count at max width).
Expr = tuple[str | None, int]


@dataclasses.dataclass(frozen=True)
class ConvSite:
    """One conv of the supernet with its input/output channel groups and spatial sizes."""

    index: int  # position among all convs (blocks in order; a block's chain, then its shortcut)
    block: int
    layer: str  # 'conv{j}', 'se' (the squeeze-excite reduce conv) or 'shortcut'
    conv: Conv
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    cin: Expr
    cout: Expr


@dataclasses.dataclass(frozen=True)
class HeadSite:
    cin: Expr
    features_per_channel: int  # 49 for adaptive7, else 1
    widths: tuple[int, ...]  # hidden..., num_classes


def conv_sites(spec: ArchSpec, groups: Collection[str] | None = None) -> tuple[list[ConvSite], HeadSite | None]:
    """Every conv of a plain `spec` in execution order (a block's chain, its SE after conv `se.after`,
    then its shortcut) with spatial sizes and channel expressions over the width `groups` (None: all;
    a group left out counts as fixed channels).  The one walk that cost models and latency grids share,
    so their records line up."""
    def expr(conv: Conv, cin: Expr) -> Expr:
        if conv.depthwise:
            return cin  # a depthwise conv follows its input's channel selection
        return (conv.width if groups is None or conv.width in groups else None, conv.out)

    sites: list[ConvSite] = []
    hw = tuple(spec.input_size)
    cur: Expr = (None, spec.in_channels)
    for i, b in enumerate(spec.blocks):
        if b.kind in ("maxpool", "avgpool"):
            hw = pool_out_hw(hw, b.pool)
            continue
        if b.kind == "choice":
            raise SpecError(f"blocks[{i}]: conv sites cover plain specs; op-choice blocks are not supported")
        block_in, block_hw = cur, hw
        for j, conv in enumerate(b.layers):
            out_hw = conv_out_hw(hw, conv)
            out = expr(conv, cur)
            sites.append(ConvSite(len(sites), i, f"conv{j}", conv, hw, out_hw, cur, out))
            cur, hw = out, out_hw
            if b.se is not None and b.se.after == j:
                sites.append(ConvSite(len(sites), i, "se", Conv(b.se.channels, (1, 1), bias=True), (1, 1), (1, 1),
                                      cur, (None, b.se.channels)))
        if isinstance(b.shortcut, Conv):
            sc = b.shortcut
            sites.append(ConvSite(len(sites), i, "shortcut", sc, block_hw, conv_out_hw(block_hw, sc), block_in,
                                  expr(sc, block_in)))
    head = None
    if spec.head.num_classes:
        head = HeadSite(cur, 49 if spec.head.pool == "adaptive7" else 1, (*spec.head.hidden, spec.head.num_classes))
    return sites, head


def act_slots(spec: ArchSpec) -> list[str]:
    return sorted({c.act_slot for b in spec.blocks for c in b.layers if c.act_slot})


def full_masks(spec: ArchSpec) -> dict[str, jnp.ndarray]:
    return {g: jnp.ones((c,), jnp.float32) for g, c in width_groups(spec).items()}


def prefix_mask(total: int, keep: int) -> np.ndarray:
    m = np.zeros((total,), np.float32)
    m[:keep] = 1.0
    return m


def _hard(v, what: str) -> np.ndarray:
    a = np.asarray(v, np.float32)
    if not np.all((a == 0) | (a == 1)):
        raise SpecError(f"{what} must be hard (0/1) to materialise a sub-network; snap it first")
    return a


def _take(a: Any, idx: np.ndarray | None, axis: int) -> Any:
    """`a` (numpy or jax, traced included) restricted to channels `idx` along `axis`; a jax array stays a
    jax array, so `materialize` also slices traced weights (a prefix is a static slice)."""
    if not isinstance(a, jax.Array):
        return np.asarray(a) if idx is None else np.take(np.asarray(a), idx, axis=axis)
    if idx is None:
        return a
    if idx.size and np.array_equal(idx, np.arange(idx.size)):
        return jax.lax.slice_in_dim(a, 0, int(idx.size), axis=axis)
    return jnp.take(a, jnp.asarray(idx), axis=axis)


class _Slicer:
    def __init__(self, choices: Mapping[str, Mapping[str, Any]]):
        self.masks = {k: _hard(v, f"mask '{k}'") for k, v in (choices.get("masks") or {}).items()}
        self.acts = {k: float(_hard(v, f"act gate '{k}'")) for k, v in (choices.get("acts") or {}).items()}
        self.ops = {k: _hard(v, f"op weights '{k}'") for k, v in (choices.get("ops") or {}).items()}
        self.depth = {k: _hard(v, f"depth weights '{k}'") for k, v in (choices.get("depth") or {}).items()}

    def keep(self, conv: Conv) -> np.ndarray | None:
        if conv.width is None or conv.width not in self.masks:
            return None
        idx = np.flatnonzero(self.masks[conv.width])
        if idx.size == 0:
            raise SpecError(f"width group '{conv.width}' keeps no channel")
        return idx

    def conv(self, conv: Conv, p: dict, s: dict, in_idx: np.ndarray | None, where: str):
        out_idx = self.keep(conv)
        act = conv.act if self.acts.get(conv.act_slot, 1.0) == 1.0 else "identity"  # a 0 gate: identity
        if conv.depthwise:
            if not _same(in_idx, out_idx):
                raise SpecError(f"{where}: depthwise conv's channel selection differs from its input's; "
                                "give it the input's width group")
            out_idx = in_idx
        k = p["kernel"]
        if not conv.depthwise:
            k = _take(k, in_idx, 2)
        p2 = {"kernel": _take(k, out_idx, 3)}
        if "bias" in p:
            p2["bias"] = _take(p["bias"], out_idx, 0)
        s2 = {}
        if "bn" in p:
            p2["bn"] = {n: _take(v, out_idx, 0) for n, v in p["bn"].items()}
            s2["bn"] = {n: _take(v, out_idx, 0) for n, v in s["bn"].items()}
        n_out = conv.out if out_idx is None else int(out_idx.size)
        return dataclasses.replace(conv, out=n_out, act=act, act_slot=None), p2, s2, out_idx

    def block(self, block: Block, p: dict, s: dict, in_idx, where: str):
        if block.kind in ("maxpool", "avgpool"):
            return block, {}, {}, in_idx
        if block.kind == "choice":
            w = self.ops.get(block.name)
            if w is None or w.sum() != 1:
                raise SpecError(f"{where}: choice block '{block.name}' needs one-hot op weights")
            k = int(np.argmax(w))
            cand = dataclasses.replace(block.candidates[k], name=block.name)
            return self.block(cand, p[f"cand{k}"], s.get(f"cand{k}", {}), in_idx, where)
        layers, p2, s2 = [], {}, {}
        idx = in_idx
        for j, conv in enumerate(block.layers):
            c2, pj, sj, idx = self.conv(conv, p[f"conv{j}"], s.get(f"conv{j}", {}), idx, f"{where}.conv{j}")
            layers.append(c2)
            p2[f"conv{j}"] = pj
            if sj:
                s2[f"conv{j}"] = sj
            if block.se is not None and block.se.after == j:
                p2["se_reduce"] = {"kernel": _take(p["se_reduce"]["kernel"], idx, 0),
                                   "bias": p["se_reduce"]["bias"]}
                p2["se_expand"] = {"kernel": _take(p["se_expand"]["kernel"], idx, 1),
                                   "bias": _take(p["se_expand"]["bias"], idx, 0)}
        shortcut = block.shortcut
        if shortcut == "identity":
            if not _same(in_idx, idx):
                raise SpecError(f"{where}: residual add would join different channel selections; "
                                "residual inputs and outputs must share one width group")
        elif isinstance(shortcut, Conv):
            shortcut, ps, ss, sidx = self.conv(shortcut, p["shortcut"], s.get("shortcut", {}), in_idx,
                                               f"{where}.shortcut")
            if not _same(sidx, idx):
                raise SpecError(f"{where}: projection shortcut and block output use different width groups")
            p2["shortcut"] = ps
            if ss:
                s2["shortcut"] = ss
        new = dataclasses.replace(block, layers=tuple(layers), shortcut=shortcut)
        return new, p2, s2, idx


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.all(a == b))


def materialize(spec: ArchSpec, variables: Mapping[str, Any], choices: Mapping[str, Any]) -> tuple[ArchSpec, dict]:
    """(concrete spec, sliced variables) of the sub-network selected by hard `choices`.

    `choices` must be concrete (numpy or jax arrays with values); `variables` may be traced (inside
    jit), which makes the slim network a static program whose gradients flow back to the supernet's
    weights (zero outside the kept channels)."""
    sl = _Slicer(choices)
    params, stats = variables["params"], variables.get("batch_stats", {})
    keep_blocks = set(range(len(spec.blocks)))
    for st in spec.stages:
        w = sl.depth.get(st.name)
        if w is None:
            continue
        if w.shape != (st.end - st.start,) or w.sum() != 1:
            raise SpecError(f"stage {st.name}: depth weights must be one-hot of length {st.end - st.start}")
        depth = int(np.argmax(w)) + 1
        keep_blocks -= set(range(st.start + depth, st.end))
    blocks, new_p, new_s = [], {}, {}
    idx = None
    for i, block in enumerate(spec.blocks):
        if i not in keep_blocks:
            continue
        b2, pb, sb, idx = sl.block(block, params.get(f"block{i}", {}), stats.get(f"block{i}", {}), idx,
                                   f"blocks[{i}]")
        k = len(blocks)
        blocks.append(b2)
        if pb:
            new_p[f"block{k}"] = pb
        if sb:
            new_s[f"block{k}"] = sb
    if spec.head.num_classes:
        first = "fc0" if spec.head.hidden else "classifier"
        kernel = params["head"][first]["kernel"]
        if idx is not None:
            if spec.head.pool == "adaptive7":
                c = kernel.shape[0] // 49
                kernel = _take(kernel.reshape(49, c, -1), idx, 1).reshape(49 * idx.size, -1)
            else:
                kernel = _take(kernel, idx, 0)
        new_p["head"] = {**params["head"], first: {**params["head"][first], "kernel": kernel}}
    stages = tuple(_remap_stage(st, keep_blocks) for st in spec.stages)
    concrete = dataclasses.replace(spec, blocks=tuple(blocks), stages=tuple(s for s in stages if s))
    return validate(concrete), {"params": new_p, "batch_stats": new_s}


def _remap_stage(stage, kept: set[int]):
    before = sum(1 for i in kept if i < stage.start)
    inside = sum(1 for i in kept if stage.start <= i < stage.end)
    if inside == 0:
        return None
    return dataclasses.replace(stage, start=before, end=before + inside)
