"""POP's partial order on architectures, computed on specs: ``A ⪯ A'`` when A' is obtained from A by
widening blocks and/or adding blocks (A is a sub-architecture of A'; seed spec §1.2).

A spec is read as a skeleton of segments: the blocks outside every `Stage` are fixed (stem, last
conv, pools) and pair one to one; each stage is a run of blocks that may grow.  Then ``A ⪯ A'`` iff

* both have the same input (size, channels), head and skeleton (same fixed blocks in the same places,
  the same number of stages);
* every fixed block of A is no wider than its partner in A';
* in every stage, A's first block (the one that changes resolution) is no wider than A''s first
  block, and A's other blocks embed, in order, into A''s other blocks, each no wider than the block
  it maps to ("adding blocks" = A' has extra blocks anywhere after the first).

"No wider" (`block_leq`) compares two blocks of the same structure (kind, number of layers, strides,
depthwise flags, activations, pooling, post-activation) size by size: every layer's output channels,
every kernel side (a larger kernel holds the smaller one zero-padded, so it widens the block too:
a decision for the MBConv space, where kernels are searched), and the SE width (0 = no SE).  Shortcut
types are ignored: a projection appears exactly where a widened neighbour changes the width, which is
part of widening.  Blocks of different kinds (basic vs bottleneck) are incomparable.

The relation is reflexive and transitive (blockwise <= is, and order-preserving embeddings compose);
the greedy leftmost embedding decides the stage condition exactly.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Sequence

from jaxnas.spec import ArchSpec, Block, Conv

# A block as (structure id, sizes): two blocks compare iff their structures are equal; then sizewise.
BlockKey = tuple[int, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class OrderKey:
    """What the partial order needs of a spec (hashable, cheap to compare)."""

    frame: tuple                                   # input size/channels, head, skeleton
    fixed: tuple[BlockKey, ...]                     # blocks outside stages, in order
    stages: tuple[tuple[BlockKey, ...], ...]        # blocks of each stage, in order


def _conv_structure(c: Conv) -> tuple:
    return (c.stride, c.depthwise, c.act, c.norm, c.bias, c.padding is None)


_STRUCTURES: dict[tuple, int] = {}   # interned block structures: comparing two ints is cheap


def block_key(block: Block) -> BlockKey:
    """(structure id, sizes): the structure interned to an int, the sizes every layer's output
    channels, every kernel side and the SE width."""
    layers = block.layers
    structure = (block.kind, tuple(_conv_structure(c) for c in layers), block.post_act, block.pool,
                 block.crop_shortcut, tuple(block_key(c) for c in block.candidates))
    sid = _STRUCTURES.setdefault(structure, len(_STRUCTURES))
    sizes = tuple(c.out for c in layers) + tuple(k for c in layers for k in c.kernel) + (
        block.se.channels if block.se is not None else 0,)
    return sid, sizes


def block_leq(a: BlockKey, b: BlockKey) -> bool:
    """Block a is no wider than block b (same structure, every size <=)."""
    return a[0] == b[0] and all(map(operator.le, a[1], b[1]))


def order_key(spec: ArchSpec) -> OrderKey:
    in_stage = [None] * len(spec.blocks)
    for si, st in enumerate(spec.stages):
        for i in range(st.start, st.end):
            in_stage[i] = si
    skeleton, fixed = [], []
    for i, b in enumerate(spec.blocks):
        if in_stage[i] is None:
            skeleton.append("f")
            fixed.append(block_key(b))
        elif i == spec.stages[in_stage[i]].start:
            skeleton.append(f"s{in_stage[i]}")
    head = dataclasses.astuple(spec.head)
    frame = (tuple(spec.input_size), spec.in_channels, head, tuple(skeleton))
    stages = tuple(tuple(block_key(b) for b in spec.blocks[st.start:st.end]) for st in spec.stages)
    return OrderKey(frame, tuple(fixed), stages)


def _embeds(a: Sequence[BlockKey], b: Sequence[BlockKey]) -> bool:
    """a maps, in order, into b with each block no wider than its image (greedy leftmost is exact)."""
    if len(a) > len(b):
        return False
    j = 0
    for x in a:
        while j < len(b) and not block_leq(x, b[j]):
            j += 1
        if j == len(b):
            return False
        j += 1
    return True


def key_leq(a: OrderKey, b: OrderKey) -> bool:
    """A ⪯ A' on order keys."""
    if a.frame != b.frame or len(a.stages) != len(b.stages) or len(a.fixed) != len(b.fixed):
        return False
    if not all(block_leq(x, y) for x, y in zip(a.fixed, b.fixed)):
        return False
    for sa, sb in zip(a.stages, b.stages):
        if not sa:
            continue
        if not sb or not block_leq(sa[0], sb[0]) or not _embeds(sa[1:], sb[1:]):
            return False
    return True


def precedes(a: ArchSpec | OrderKey, b: ArchSpec | OrderKey) -> bool:
    """A ⪯ A': b is a from widening and/or adding blocks (reflexive: precedes(a, a) is True)."""
    ka = a if isinstance(a, OrderKey) else order_key(a)
    kb = b if isinstance(b, OrderKey) else order_key(b)
    return key_leq(ka, kb)


def comparable(a: ArchSpec | OrderKey, b: ArchSpec | OrderKey) -> bool:
    return precedes(a, b) or precedes(b, a)


__all__ = ["BlockKey", "OrderKey", "block_key", "block_leq", "comparable", "key_leq", "order_key", "precedes"]
