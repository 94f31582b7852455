"""MetaPruning search spaces and gene encodings (seed spec §2.1), as in liuzechun/MetaPruning.

A candidate is a vector of scale ids into ``SCALES = (10 + 3i)/100, i = 0..30``; a layer with base width
``b`` and scale id ``k`` has ``int(b * SCALES[k])`` channels (floor, computed in float64 as the original).

Three spaces, one `MetaSpace` each (`get_space(family, ...)`):

* ``mobilenet_v2``: MetaPruning's 1.4x-based widths (stem 44, blocks 22 .. 448, last 1x1 conv 1280 fixed).
  Genes (compact form, 25): 8 stage-level output ids (stage_repeat = 1,1,2,3,4,3,3,1: stem, block 1, six
  MobileNetV2 stages) then 17 per-block mid ids.  The original prints a candidate as 18 per-layer output ids
  (equal within a stage) then 17 mid ids ("printed" form, 35 entries; the fitness slot left out);
  `parse_genes` takes either, told apart by length.  Block 1 keeps its 1x1 expansion conv (mid base 44);
  blocks 2..17 have mid base 6 x (base input).  A block has stride 2 iff its base output differs from the
  previous one and is not 132 or 448; the stem has stride 2 (1 with ``small_input``: 28-32 px inputs).
* ``mobilenet_v1``: 3x3 stem (32) and 13 depthwise-separable layers (64 .. 1024); 13 per-layer ids (the
  stem and layers 1..12; the last layer's 1024 is fixed).  Stride 2 iff the base output changes and is
  not 64.
* ``resnet50``: stem 64 (7x7/2 + max-pool), 16 bottlenecks; 20 genes: stem id, the output ids of stages
  1-3 (stage 4 is fixed at 2048, the original's id -1), 16 per-block mid ids (bottleneck base = out/4).

Search-phase decoding (pitfall §2.8): block ``i`` (1-based) uses mid gene ``i - 1`` of the 17 (the
PruningNet *training* code indexes an 18-array by ``i``; it draws them at random, so only the search
convention matters).  Residual rule: the PruningNet adds the identity iff the block's *base* input and
output widths are equal (``residual_rule='base'``, the network the search evaluated, the default); the
original's final (evaluation) nets add it whenever the *pruned* widths are equal at stride 1
(``residual_rule='pruned'``), which can join two stages whose pruned widths coincide.

`MetaSpace` also describes the PruningNet: every conv is a `GenConv` naming the genes that set its
input/output widths, the genes whose raw scale values feed its weight generator, and the gene that
selects its per-width BatchNorm.  Gene ``None`` means "fixed at scale 1.0" (id 30).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

from jaxnas.errors import UserError
from jaxnas.spec import ArchSpec, Block, Conv, Head, Pool

SCALES: tuple[float, ...] = tuple((10 + 3 * i) / 100 for i in range(31))
NUM_SCALES = len(SCALES)
FULL_ID = NUM_SCALES - 1
FAMILIES = ("mobilenet_v2", "mobilenet_v1", "resnet50")
RESIDUAL_RULES = ("base", "pruned")


class GeneError(UserError, ValueError):
    """A gene vector that does not describe a network of the space (or a space that does not exist)."""


def align(channels: int, multiple: int = 1) -> int:
    """`channels` rounded to the nearest multiple of `multiple` (at least `multiple`); 1 leaves it."""
    if multiple <= 1:
        return channels
    return max(multiple, int(channels / multiple + 0.5) * multiple)


def scaled(base: int, sid: int, multiple: int = 1) -> int:
    """``int(base * s)`` channels at scale id `sid` (the original's rounding; at least 1, which only
    matters for `width_mult` < 1: the original's narrowest layer has int(22 * 0.1) = 2), then aligned to
    `multiple` (1: the original)."""
    return align(max(1, int(base * SCALES[sid])), multiple)


@dataclasses.dataclass(frozen=True)
class Gene:
    name: str          # width group name in decoded specs, e.g. 'stage3' or 'b5.mid'
    kind: str          # 'stage' (output width of a run of layers), 'mid' (a block's inner width), 'layer'
    base: int          # base width at scale 1.0 (of the first layer it sets)
    layers: int = 1    # entries in the original's printed vector (stage genes: layers of the stage)


Ref = int | None  # a gene index, or None: fixed at scale 1.0


@dataclasses.dataclass(frozen=True)
class GenConv:
    """One conv of the PruningNet / decoded network."""

    name: str                 # 'conv{j}' or 'shortcut'
    kernel: int
    stride: int
    depthwise: bool
    base_in: int
    base_out: int
    in_gene: Ref
    out_gene: Ref             # depthwise: equals in_gene
    gen_genes: tuple[Ref, ...]  # raw scale values fed to the weight generator
    hidden: int               # generator hidden units (64: MobileNetV2 blocks, else 32)
    bn_gene: Ref              # gene whose id selects the per-width BN (the last MBV2 conv: its input's)
    bn_affine: bool
    act: str
    max_in: int = 0           # tensor widths (the widest network's); 0: base_in / base_out
    max_out: int = 0
    multiple: int = 1         # channel alignment of every width (1: the original)

    def __post_init__(self):
        if not self.max_in:
            object.__setattr__(self, "max_in", self.base_in)
        if not self.max_out:
            object.__setattr__(self, "max_out", self.base_out)

    def width(self, sid: int) -> int:
        """Output channels at scale id `sid` (fixed layers: `sid` = 30)."""
        return scaled(self.base_out, sid, self.multiple)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """HWIO shape of the full-size (widest) kernel."""
        k = self.kernel
        return (k, k, 1, self.max_out) if self.depthwise else (k, k, self.max_in, self.max_out)


@dataclasses.dataclass(frozen=True)
class GenBlock:
    name: str
    kind: str                           # spec block kind: conv, mbconv, bottleneck
    convs: tuple[GenConv, ...]
    shortcut: str | GenConv | None = None   # 'identity' (base rule), a projection GenConv, or None
    post_act: str = "identity"
    pool_after: Pool | None = None      # ResNet stem max-pool

    @property
    def all_convs(self) -> tuple[GenConv, ...]:
        """Its convs, then its projection shortcut if it has one."""
        return self.convs + ((self.shortcut,) if isinstance(self.shortcut, GenConv) else ())


@dataclasses.dataclass(frozen=True)
class MetaSpace:
    family: str
    genes: tuple[Gene, ...]
    blocks: tuple[GenBlock, ...]
    head_in: int
    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3
    small_input: bool = False
    random_low: int = 0          # random candidates draw ids in [random_low, random_high)
    random_high: int = NUM_SCALES
    width_mult: float = 1.0
    channel_multiple: int = 1

    # ------------------------------------------------------------------ genes
    @property
    def num_genes(self) -> int:
        return len(self.genes)

    @property
    def printed_length(self) -> int:
        return sum(g.layers for g in self.genes)

    def convs(self) -> Iterable[tuple[int, GenBlock, GenConv]]:
        for i, b in enumerate(self.blocks):
            for c in b.all_convs:
                yield i, b, c

    def check(self, genes: Sequence[int]) -> tuple[int, ...]:
        """`genes` as a tuple of ints after checking length and range (compact form)."""
        ids = tuple(int(g) for g in genes)
        if len(ids) != self.num_genes:
            raise GeneError(f"{self.family} takes {self.num_genes} genes, got {len(ids)}")
        bad = [i for i, g in enumerate(ids) if not 0 <= g < NUM_SCALES]
        if bad:
            raise GeneError(f"gene {bad[0]} ({self.genes[bad[0]].name}) is {ids[bad[0]]}: scale ids are "
                            f"0..{NUM_SCALES - 1}")
        return ids

    def from_printed(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Compact genes from the original's printed vector (stage genes repeated per layer)."""
        out, pos = [], 0
        for g in self.genes:
            run = [int(v) for v in ids[pos:pos + g.layers]]
            if len(set(run)) > 1:
                raise GeneError(f"the printed vector gives the layers of {g.name} different ids {run} (entries "
                                f"{pos}..{pos + g.layers - 1}); a stage shares one id")
            out.append(run[0])
            pos += g.layers
        return tuple(out)

    def to_printed(self, genes: Sequence[int]) -> tuple[int, ...]:
        """The original's printed form (stage genes repeated once per layer of the stage)."""
        return tuple(int(v) for g, v in zip(self.genes, genes) for _ in range(g.layers))

    def parse_genes(self, value: str | Sequence[int]) -> tuple[int, ...]:
        """Genes from '14,12,11,...', the original's print '[14. 12. 11. ...]' or a sequence; the
        compact and the printed form are told apart by length.  Raises `GeneError`."""
        if isinstance(value, str):
            tokens = [t for t in re.split(r"[\s,;\[\]()]+", value.strip()) if t]
            ids = []
            for t in tokens:
                try:
                    f = float(t)
                except ValueError:
                    raise GeneError(f"gene '{t}' is not a number; pass ids like 14,12,11") from None
                if not math.isfinite(f) or f != int(f):
                    raise GeneError(f"gene '{t}' is not an integer scale id")
                ids.append(int(f))
        else:
            ids = [int(v) for v in value]
        n, p = self.num_genes, self.printed_length
        if len(ids) == p and p != n:
            bad = [i for i, g in enumerate(ids) if not 0 <= g < NUM_SCALES]
            if bad:
                raise GeneError(f"entry {bad[0]} is {ids[bad[0]]}: scale ids are 0..{NUM_SCALES - 1}")
            ids = list(self.from_printed(ids))
        elif len(ids) != n:
            forms = f"{n} (compact)" + (f" or {p} (as the original prints it)" if p != n else "")
            raise GeneError(f"{self.family} takes {forms} genes, got {len(ids)}")
        return self.check(ids)

    # ------------------------------------------------------------------ widths
    def sid(self, genes: Sequence[int], ref: Ref) -> int:
        return FULL_ID if ref is None else int(genes[ref])

    def width(self, genes: Sequence[int], conv: GenConv) -> int:
        return conv.width(self.sid(genes, conv.out_gene))

    @functools.cached_property
    def gene_width_table(self) -> np.ndarray:
        """(num_genes, 31) channels of every gene at every scale id (row k: gene k's layers' width), read-only."""
        table = np.asarray([[scaled(g.base, v, self.channel_multiple) for v in range(NUM_SCALES)] for g in self.genes],
                           np.int64)
        table.flags.writeable = False
        return table

    def gene_channels(self, genes: Sequence[int]) -> dict[str, int]:
        """{gene name: channels} (a gene's layers all share one base, so one count each)."""
        genes = self.check(genes)
        table = self.gene_width_table
        return {g.name: int(table[k, v]) for k, (g, v) in enumerate(zip(self.genes, genes))}

    def network_key(self, genes: Sequence[int]) -> tuple[int, ...]:
        """Every gene's channels: equal for two gene vectors exactly when they decode to the same network
        (with ``channel_multiple`` > 1 several ids of a gene round to one width).  Unchecked (the search's
        own candidates): `gene_channels` checks."""
        return tuple(int(w) for w in self.gene_width_table[np.arange(self.num_genes), np.asarray(genes)])

    def channels(self, genes: Sequence[int]) -> dict[str, list[int]]:
        """The original's `adapt_channel` lists: 'overall' (output of every layer, fixed ones included)
        and 'mid' (every block's inner width)."""
        genes = self.check(genes)
        overall, mid = [], []
        for b in self.blocks:
            overall.append(self.width(genes, b.convs[-1]))
            if b.kind in ("mbconv", "bottleneck"):
                mid.append(self.width(genes, b.convs[0]))
        if self.family == "mobilenet_v2":
            overall = overall[:-1]  # the last 1x1 conv (1280) is not in the original's list
        return {"overall": overall, "mid": mid}

    def uniform(self, sid: int) -> tuple[int, ...]:
        """Every gene at scale id `sid` (a uniformly width-scaled network)."""
        return self.check([sid] * self.num_genes)

    # ------------------------------------------------------------------ networks
    def to_spec(self, genes: Sequence[int], *, residual_rule: str = "base", name: str | None = None) -> ArchSpec:
        """The decoded network as an `ArchSpec` (convs carry their gene's name as width group)."""
        if residual_rule not in RESIDUAL_RULES:
            raise GeneError(f"residual_rule must be one of {RESIDUAL_RULES}, got {residual_rule!r}")
        genes = self.check(genes)
        blocks: list[Block] = []
        cin = self.in_channels
        for b in self.blocks:
            convs = []
            for c in b.convs:
                group = None if c.out_gene is None else self.genes[c.out_gene].name
                convs.append(Conv(self.width(genes, c), (c.kernel, c.kernel), c.stride, depthwise=c.depthwise,
                                  act=c.act, width=group))
            cout = convs[-1].out
            shortcut: Any = b.shortcut
            if isinstance(b.shortcut, GenConv):
                s = b.shortcut
                shortcut = Conv(self.width(genes, s), (1, 1), s.stride, padding=0, act="identity",
                                width=None if s.out_gene is None else self.genes[s.out_gene].name)
            elif b.kind == "mbconv" and residual_rule == "pruned":
                shortcut = "identity" if cin == cout and max(c.stride for c in b.convs) == 1 else None
            blocks.append(Block(b.kind, tuple(convs), shortcut, post_act=b.post_act, name=b.name))
            if b.pool_after is not None:
                blocks.append(Block("maxpool", pool=b.pool_after, name=f"{b.name}_pool"))
            cin = cout
        head = Head(self.num_classes)
        meta = {"family": f"metapruning_{self.family}", "metapruning_genes": genes,
                "small_input": self.small_input, "residual_rule": residual_rule}
        if self.width_mult != 1.0:
            meta["width_mult"] = self.width_mult
        if self.channel_multiple != 1:
            meta["channel_multiple"] = self.channel_multiple
        return ArchSpec(name or f"metapruning_{self.family}", tuple(blocks), head,
                        (self.resolution, self.resolution), self.in_channels, (), meta=meta)

    def max_spec(self, **kw) -> ArchSpec:
        """The widest network (every gene at scale 1.0): the PruningNet's shape, the latency grid's supernet."""
        return self.to_spec(self.uniform(FULL_ID), name=f"metapruning_{self.family}_max", **kw)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "genes": [dataclasses.asdict(g) for g in self.genes],
                "printed_length": self.printed_length, "resolution": self.resolution,
                "num_classes": self.num_classes, "in_channels": self.in_channels,
                "small_input": self.small_input, "random_range": [self.random_low, self.random_high],
                "width_mult": self.width_mult, "channel_multiple": self.channel_multiple}


# ----------------------------------------------------------------------------------------------------
# The three spaces
# ----------------------------------------------------------------------------------------------------

MBV2_BASE = (44, 22, 33, 33, 44, 44, 44, 88, 88, 88, 88, 132, 132, 132, 224, 224, 224, 448)
MBV2_STAGE_REPEAT = (1, 1, 2, 3, 4, 3, 3, 1)
MBV2_LAST = 1280
MBV1_BASE = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
R50_STAGE_REPEAT = (3, 4, 6, 3)
R50_BASE = (64,) + (256,) * 3 + (512,) * 4 + (1024,) * 6 + (2048,) * 3


def _scaler(width_mult: float):
    return lambda b: b if width_mult == 1.0 else max(1, int(round(b * width_mult)))


def _mobilenet_v2(in_channels: int, small_input: bool, width_mult: float
                  ) -> tuple[tuple[Gene, ...], tuple[GenBlock, ...], int]:
    ref, sb = MBV2_BASE, _scaler(width_mult)   # strides/residuals follow the original's base widths
    base = tuple(sb(b) for b in ref)
    last = sb(MBV2_LAST)
    stage_of, first = [], 0
    genes = []
    for s, r in enumerate(MBV2_STAGE_REPEAT):
        genes.append(Gene(f"stage{s}", "stage", base[first], r))
        stage_of += [s] * r
        first += r
    n_stage = len(MBV2_STAGE_REPEAT)
    for i in range(1, len(base)):
        mid = base[0] if i == 1 else 6 * base[i - 1]
        genes.append(Gene(f"b{i}.mid", "mid", mid))
    blocks = [GenBlock("stem", "conv", (GenConv("conv0", 3, 1 if small_input else 2, False, in_channels, base[0],
                                                None, 0, (0,), 32, 0, False, "relu6"),))]
    for i in range(1, len(base)):
        b_in, b_out = base[i - 1], base[i]
        mid = base[0] if i == 1 else 6 * b_in
        stride = 1 if i == 1 else (2 if ref[i - 1] != ref[i] and ref[i] not in (132, 448) else 1)
        g_in, g_out, g_mid = stage_of[i - 1], stage_of[i], n_stage + i - 1   # search convention: mid[i-1]
        gen = (g_mid, g_in, g_out)
        convs = (GenConv("conv0", 1, 1, False, b_in, mid, g_in, g_mid, gen, 64, g_mid, False, "relu6"),
                 GenConv("conv1", 3, stride, True, mid, mid, g_mid, g_mid, gen, 64, g_mid, False, "relu6"),
                 GenConv("conv2", 1, 1, False, mid, b_out, g_mid, g_out, gen, 64, g_out, False, "identity"))
        blocks.append(GenBlock(f"b{i}", "mbconv", convs, "identity" if ref[i - 1] == ref[i] else None))
    g_last = stage_of[-1]
    blocks.append(GenBlock("last", "conv", (GenConv("conv0", 1, 1, False, base[-1], last, g_last, None,
                                                    (g_last,), 32, g_last, False, "relu6"),)))
    return tuple(genes), tuple(blocks), last


def _mobilenet_v1(in_channels: int, small_input: bool, width_mult: float
                  ) -> tuple[tuple[Gene, ...], tuple[GenBlock, ...], int]:
    ref, sb = MBV1_BASE, _scaler(width_mult)
    base = tuple(sb(b) for b in ref)
    n = len(base) - 1  # 13 genes: outputs of the stem and layers 1..12
    genes = tuple(Gene("stem" if i == 0 else f"l{i}.out", "layer", base[i]) for i in range(n))
    blocks = [GenBlock("stem", "conv", (GenConv("conv0", 3, 1 if small_input else 2, False, in_channels, base[0],
                                                None, 0, (0,), 32, 0, True, "relu"),))]
    for i in range(1, len(base)):
        b_in, b_out = base[i - 1], base[i]
        stride = 2 if ref[i - 1] != ref[i] and ref[i] != 64 else 1
        g_in, g_out = i - 1, (i if i < n else None)
        gen = (g_in, g_out)
        convs = (GenConv("conv0", 3, stride, True, b_in, b_in, g_in, g_in, gen, 32, g_in, True, "relu"),
                 GenConv("conv1", 1, 1, False, b_in, b_out, g_in, g_out, gen, 32, g_out, False, "relu"))
        blocks.append(GenBlock(f"l{i}", "conv", convs))
    return genes, tuple(blocks), base[-1]


def _resnet50(in_channels: int, small_input: bool, width_mult: float
              ) -> tuple[tuple[Gene, ...], tuple[GenBlock, ...], int]:
    if small_input:
        raise GeneError("the resnet50 space has no small-input variant (use mobilenet_v2 or mobilenet_v1)")
    base = tuple(_scaler(width_mult)(b) for b in R50_BASE)
    # The original's vector holds one id per stage (it expands them per block itself): layers=1.
    starts = np.cumsum((1,) + R50_STAGE_REPEAT[:-1])
    genes = [Gene("stem", "stage", base[0])] + [Gene(f"stage{s + 1}", "stage", base[int(starts[s])])
                                                for s in range(len(R50_STAGE_REPEAT) - 1)]
    n_out = len(genes)  # 4
    stage_of = [s for s, r in enumerate(R50_STAGE_REPEAT) for _ in range(r)]
    for j in range(1, len(base)):
        genes.append(Gene(f"b{j}.mid", "mid", max(1, base[j] // 4)))

    def out_gene(s: int) -> Ref:
        return 1 + s if s < len(R50_STAGE_REPEAT) - 1 else None

    blocks = [GenBlock("stem", "conv", (GenConv("conv0", 7, 2, False, in_channels, base[0], None, 0, (0,), 32, 0, False,
                                                "relu"),), pool_after=Pool(3, 2, 1))]
    for j in range(1, len(base)):
        s = stage_of[j - 1]
        first = j == 1 or stage_of[j - 2] != s
        b_in, b_out, mid = base[j - 1], base[j], max(1, base[j] // 4)
        stride = 2 if first and s > 0 else 1
        g_in = 0 if j == 1 else out_gene(stage_of[j - 2])
        g_out, g_mid = out_gene(s), n_out + j - 1
        gen = (g_mid, g_in, g_out)
        convs = (GenConv("conv0", 1, 1, False, b_in, mid, g_in, g_mid, gen, 32, g_mid, False, "relu"),
                 GenConv("conv1", 3, stride, False, mid, mid, g_mid, g_mid, gen, 32, g_mid, False, "relu"),
                 GenConv("conv2", 1, 1, False, mid, b_out, g_mid, g_out, gen, 32, g_out, False, "identity"))
        shortcut = (GenConv("shortcut", 1, stride, False, b_in, b_out, g_in, g_out, gen, 32, g_out, False, "identity")
                    if first else "identity")
        blocks.append(GenBlock(f"b{j}", "bottleneck", convs, shortcut, post_act="relu"))
    return tuple(genes), tuple(blocks), base[-1]


def _aligned(blocks: tuple[GenBlock, ...], in_channels: int, multiple: int) -> tuple[GenBlock, ...]:
    """The blocks with every conv's tensor widths aligned to `multiple` (the input image's are not)."""
    if multiple == 1:
        return blocks

    def fix(c: GenConv, max_in: int) -> GenConv:
        return dataclasses.replace(c, max_in=max_in, max_out=align(c.base_out, multiple), multiple=multiple)

    out, cin = [], in_channels
    for b in blocks:
        convs, x = [], cin
        for c in b.convs:
            c2 = fix(c, x)
            convs.append(c2)
            x = c2.max_out
        sc = fix(b.shortcut, cin) if isinstance(b.shortcut, GenConv) else b.shortcut
        out.append(dataclasses.replace(b, convs=tuple(convs), shortcut=sc))
        cin = x
    return tuple(out)


_BUILDERS = {"mobilenet_v2": _mobilenet_v2, "mobilenet_v1": _mobilenet_v1, "resnet50": _resnet50}
# ResNet random candidates draw ids in [int(0.4 * 31), int(0.8 * 31)) = [12, 24) (scales 0.46-0.79).
_RANDOM_RANGE = {"resnet50": (12, 24)}


def get_space(family: str, *, resolution: int = 224, num_classes: int = 1000, in_channels: int = 3,
              small_input: bool = False, width_mult: float = 1.0, channel_multiple: int = 1) -> MetaSpace:
    """The MetaPruning search space of `family` (mobilenet_v2, mobilenet_v1, resnet50).

    `width_mult` != 1 scales every base width (``max(1, round(base * width_mult))``, the fixed last widths
    included) for small problems and tests; 1.0 is the original's space.  Strides and the base residual
    rule always follow the original's base widths.  `channel_multiple` > 1 rounds every width (sampled and
    widest) to a multiple of it (at least it): CPU runtimes such as onnxruntime fall off their blocked
    kernels on unaligned channel counts, where the original's widths (22, 33, 44, int(b * s)) measured up
    to 4x slower than aligned networks of equal MACs; 1 is the original."""
    if not 0 < width_mult <= 4:
        raise GeneError(f"width_mult must be in (0, 4], got {width_mult}")
    if not 1 <= channel_multiple <= 64:
        raise GeneError(f"channel_multiple must be in [1, 64], got {channel_multiple}")
    if family not in _BUILDERS:
        import difflib
        hint = difflib.get_close_matches(family, FAMILIES, n=1)
        raise GeneError(f"unknown MetaPruning space '{family}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; one of {', '.join(FAMILIES)}")
    genes, blocks, head_in = _BUILDERS[family](in_channels, small_input, float(width_mult))
    blocks = _aligned(blocks, in_channels, int(channel_multiple))
    head_in = align(head_in, int(channel_multiple))
    lo, hi = _RANDOM_RANGE.get(family, (0, NUM_SCALES))
    return MetaSpace(family, genes, blocks, head_in, int(resolution), int(num_classes), int(in_channels),
                     bool(small_input), lo, hi, float(width_mult), int(channel_multiple))


__all__ = ["FAMILIES", "FULL_ID", "align", "GenBlock", "GenConv", "Gene", "GeneError", "MetaSpace", "NUM_SCALES",
           "RESIDUAL_RULES", "SCALES", "get_space", "scaled"]
