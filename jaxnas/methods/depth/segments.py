"""Structural description of a mergeable conv chain (depth compression, Kim et al. ICML'23).

Positions: p in {0..L} means "after the p-th body conv" (1-based convs); position 0 is the body input
(the stem output, always activated).  A segment (st, end) with 0 <= st < end <= L stands for the
single conv obtained by merging convs st+1..end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M")


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision `_make_divisible` (kept local so this module has no intra-package imports)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@dataclass(frozen=True)
class ConvChain:
    """A chain of L convs (the network body) plus the structure the merge rules need.

    Per-conv fields are indexed by conv 1..L (stored 0-based).  `residuals` holds (src, tgt) position
    pairs: the block input is the tensor at position src and the add happens after conv tgt.
    `stride_breaks` are *explicit* extra breaks (e.g. VGG max-pools); breaks implied by strided convs
    and by `pools` are added by :func:`stride_breaks`.  `pools` are positions followed by a 2x2/2
    max-pool.  `input_hw` is the spatial size at position 0.
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    depthwise: tuple[bool, ...]
    in_ch: tuple[int, ...]
    out_ch: tuple[int, ...]
    residuals: tuple[tuple[int, int], ...] = ()
    block_ends: tuple[int, ...] = ()
    stride_breaks: tuple[int, ...] = ()
    default_acts: tuple[int, ...] = ()
    pools: tuple[int, ...] = ()
    input_hw: tuple[int, int] = (224, 224)
    name: str = "chain"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for f, cast in (("kernel", int), ("stride", int), ("padding", int), ("depthwise", bool),
                        ("in_ch", int), ("out_ch", int)):
            set_(f, tuple(cast(v) for v in getattr(self, f)))
        set_("residuals", tuple(sorted((int(s), int(t)) for s, t in self.residuals)))
        for f in ("block_ends", "stride_breaks", "default_acts", "pools"):
            set_(f, tuple(sorted({int(p) for p in getattr(self, f)})))
        set_("input_hw", (int(self.input_hw[0]), int(self.input_hw[1])))
        L = len(self.kernel)
        if L == 0:
            raise ValueError("ConvChain needs at least one conv")
        for f in ("stride", "padding", "depthwise", "in_ch", "out_ch"):
            if len(getattr(self, f)) != L:
                raise ValueError(f"ConvChain.{f} has {len(getattr(self, f))} entries, expected {L}")
        if any(k < 1 for k in self.kernel) or any(s < 1 for s in self.stride):
            raise ValueError("kernel sizes and strides must be >= 1")
        for i in range(1, L):
            if self.in_ch[i] != self.out_ch[i - 1]:
                raise ValueError(f"conv {i + 1} has in_ch {self.in_ch[i]} but conv {i} has out_ch "
                                 f"{self.out_ch[i - 1]}")
        for i in range(L):
            if self.depthwise[i] and self.in_ch[i] != self.out_ch[i]:
                raise ValueError(f"depthwise conv {i + 1} must keep its channel count")
        last = 0
        for s, t in self.residuals:
            if not 0 <= s < t <= L:
                raise ValueError(f"residual {(s, t)} out of range 0..{L}")
            if s < last:
                raise ValueError(f"residual {(s, t)} overlaps the previous one (ends at {last})")
            last = t
        for f in ("block_ends", "stride_breaks", "default_acts", "pools"):
            bad = [p for p in getattr(self, f) if not 0 <= p <= L]
            if bad:
                raise ValueError(f"ConvChain.{f} has positions outside 0..{L}: {bad}")

    @property
    def L(self) -> int:
        """Number of body convs (the original's `act_num`)."""
        return len(self.kernel)


class MergedConv(NamedTuple):
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    padding: int
    depthwise: bool


def stride_breaks(chain: ConvChain) -> tuple[int, ...]:
    """Positions no segment may cross (a segment may start or end there).

    For a strided conv k (1-based) position k+1 is a break when conv k+1 is 1x1 (the strided conv may
    absorb that 1x1 conv, nothing further; exactly the original's rule for MBV2).  If conv k+1 is not
    1x1 the break is put at k instead, because the merged-kernel formula assumes every conv after a
    strided one is 1x1 (not reachable for MBV2/VGG).  Max-pool positions and explicit breaks are added.
    """
    L = chain.L
    out = set(chain.stride_breaks) | set(chain.pools)
    for k in range(1, L):  # a strided last conv breaks nothing
        if chain.stride[k - 1] > 1:
            out.add(k + 1 if chain.kernel[k] == 1 else k)
    return tuple(sorted(p for p in out if 0 < p <= L))


def valid_segments(chain: ConvChain) -> list[tuple[int, int]]:
    """All mergeable segments, in the original's `valid_blks` order (st ascending, then end ascending).

    This is a port of the original loop.  Rules: no break strictly inside; for a residual (src, tgt) a
    segment starting strictly before src may end at src or at tgt or beyond (swallowing the whole
    block), one starting strictly inside (src, tgt) must end at or before tgt, and one starting exactly
    at src may end anywhere (its input is the skip's input).  The order guarantees that (st, j) comes
    before (st, end) for j < end, which is what both stage-1 recurrences need.
    """
    L = chain.L
    skip_s2t = dict(chain.residuals)
    breaks = [b for b in stride_breaks(chain) if b < L] + [L]
    phase = 0
    b_pos = breaks[0]
    skip_pos = b_pos
    segs: list[tuple[int, int]] = []
    for st in range(L):
        if st == b_pos:
            phase += 1
            b_pos = breaks[phase]
        if st == skip_pos:
            skip_pos = b_pos
        end = st + 1
        while end <= min(b_pos, skip_pos):
            segs.append((st, end))
            end = skip_s2t.get(end, end + 1)
        if st in skip_s2t:
            skip_pos = skip_s2t[st]
    return segs


def is_valid_segment(chain: ConvChain, st: int, end: int) -> bool:
    """Declarative form of the :func:`valid_segments` rules (used for cross-checking)."""
    if not 0 <= st < end <= chain.L:
        return False
    if any(st < b < end for b in stride_breaks(chain)):
        return False
    for s, t in chain.residuals:
        if s < st < t and end > t:
            return False
        if st < s < end < t:
            return False
    return True


def merged_conv_shape(chain: ConvChain, st: int, end: int) -> MergedConv:
    """Shape of the single conv equivalent to convs st+1..end (the original's `simulate_list_merge`)."""
    if not 0 <= st < end <= chain.L:
        raise ValueError(f"segment {(st, end)} out of range for L = {chain.L}")
    idx = range(st, end)
    kernel = 1 + sum(chain.kernel[i] - 1 for i in idx)
    return MergedConv(chain.in_ch[st], chain.out_ch[end - 1], kernel, math.prod(chain.stride[st:end]),
                      sum(chain.padding[i] for i in idx), all(chain.depthwise[i] for i in idx))


def feature_shapes(chain: ConvChain, pre_pool: bool = False) -> list[tuple[int, int, int]]:
    """(H, W, C) of the tensor at every position 0..L (the input of a conv starting there).

    With `pre_pool=True` position p is the conv output *before* a following max-pool, which is what the
    original's `trace_feat_size` recorded for VGG (its VGG T(st, end) rows with st at a pool position
    were therefore timed at the pre-pool resolution); the default gives the true input shape.
    """
    h, w = chain.input_hw
    shapes = [(h, w, chain.in_ch[0])]
    pools = set(chain.pools)
    for i in range(chain.L):
        k, s, p = chain.kernel[i], chain.stride[i], chain.padding[i]
        h = (h + 2 * p - k) // s + 1
        w = (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"feature map vanishes after conv {i + 1} (input {chain.input_hw})")
        hp, wp = (h // 2, w // 2) if (i + 1) in pools else (h, w)
        shapes.append((h, w, chain.out_ch[i]) if pre_pool else (hp, wp, chain.out_ch[i]))
        h, w = hp, wp
    return shapes


def segment_input_shape(chain: ConvChain, st: int, pre_pool: bool = False) -> tuple[int, int, int]:
    """(H, W, C) input shape at which segment (st, ·) is timed."""
    return feature_shapes(chain, pre_pool)[st]


MBV2_STRIDES = (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)


def mbv2_chain(width_mult: float = 1.0, input_size: int = 224, small_input: bool = False,
               block_strides: Sequence[int] | None = None, stem_stride: int | None = None) -> ConvChain:
    """torchvision MobileNetV2 body `features[1:-1]`: 17 inverted residuals, L = 50 convs.

    `small_input` (28-32 px inputs, as `jaxnas.zoo.mobilenet_v2(small_input=True)`): stem stride 1
    (total downsampling 16).  `block_strides` / `stem_stride` override per block.
    Residual iff stride 1 and in == out; hidden width is round(in * t) like torchvision.
    """
    block_strides = [int(s) for s in (MBV2_STRIDES if block_strides is None else block_strides)]
    if len(block_strides) != 17:
        raise ValueError(f"MobileNetV2 has 17 blocks, got {len(block_strides)} strides")
    if stem_stride is None:
        stem_stride = 1 if small_input else 2
    kern, strd, pad, dw, cin_l, cout_l = [], [], [], [], [], []
    residuals, block_ends, default_acts = [], [], []

    def conv(ci: int, co: int, k: int, s: int, depthwise: bool) -> None:
        kern.append(k), strd.append(s), pad.append(k // 2), dw.append(depthwise)
        cin_l.append(ci), cout_l.append(co)

    cin = _make_divisible(32 * width_mult)
    b = 0
    for t, c, n, _ in MBV2_SETTINGS:
        cout = _make_divisible(c * width_mult)
        for _k in range(n):
            s = block_strides[b]
            src = len(kern)
            hidden = int(round(cin * t))
            if t != 1:
                conv(cin, hidden, 1, 1, False)
                default_acts.append(len(kern))
            conv(hidden, hidden, 3, s, True)
            default_acts.append(len(kern))
            conv(hidden, cout, 1, 1, False)
            block_ends.append(len(kern))
            if s == 1 and cin == cout:
                residuals.append((src, len(kern)))
            cin = cout
            b += 1
    # Stem: 3x3 conv, padding 1.
    hw = (input_size + 2 - 3) // stem_stride + 1
    return ConvChain(kern, strd, pad, dw, cin_l, cout_l, residuals=tuple(residuals),
                     block_ends=tuple(block_ends), default_acts=tuple(default_acts),
                     input_hw=(hw, hw), name=f"mbv2_{float(width_mult)}" + ("_small" if small_input else ""))


def vgg19_chain(input_size: int = 224, width_mult: float = 1.0) -> ConvChain:
    """torchvision VGG-19-BN body: 16 3x3 convs; max-pools after convs 2, 4, 8, 12, 16 are breaks.

    `block_ends` are the VGGBlock ends {2, 4, 8, 12, 16} (as the original's `get_blk_info`); the
    original's VGG importance tables only use (st_act, end_act) = (1, 1).  All 16 convs carry a ReLU.
    """
    kern, strd, pad, dw, cin_l, cout_l, pools = [], [], [], [], [], [], []
    cin = 3
    for v in VGG19_CFG:
        if v == "M":
            pools.append(len(kern))
            continue
        co = _make_divisible(v * width_mult)
        kern.append(3), strd.append(1), pad.append(1), dw.append(False)
        cin_l.append(cin), cout_l.append(co)
        cin = co
    L = len(kern)
    return ConvChain(kern, strd, pad, dw, cin_l, cout_l, residuals=(), block_ends=tuple(pools),
                     stride_breaks=tuple(pools), default_acts=tuple(range(1, L + 1)), pools=tuple(pools),
                     input_hw=(input_size, input_size), name="vgg19_bn")
