"""Block-wise search spaces for latency lookup tables (MobileNetV2-style MBConv skeletons).

A space is a small dict / YAML file::

    name: mbv2-small
    family: mbv2                  # MBConv skeleton: stem conv -> stages of MBConv -> last 1x1 conv -> head
    resolution: 32                # input H = W
    in_channels: 3
    act: relu6
    kernels: [3, 5]               # per-block choices (a stage may override kernels / expansions / se)
    expansions: [3, 6]
    se: [false]                   # [false, true] searches squeeze-and-excitation per block
    se_ratio: 0.25                # SE channels = make_divisible(mid * se_ratio)
    widths: [1.0]                 # optional global width multipliers (channels = make_divisible(c * w))
    stem: {channels: 32, kernel: 3, stride: 1}
    stages:                       # blocks = max depth; depths = choices (keep the first d blocks)
      - {channels: 16, blocks: 1, stride: 1, kernels: [3], expansions: [1]}
      - {channels: 24, blocks: 2, stride: 2, depths: [1, 2]}
    last: {channels: 1280}        # 1x1 conv before the classifier (make_divisible(1280 * max(1, w)))
    head: {num_classes: 10}

Within a stage only the first block changes shape (stride, input channels); every later block has the
same input, so a stage contributes at most 2 x |kernels| x |expansions| x |se| unique blocks per width.
A network is timed as parts: the stem conv, every MBConv block, and the "head" (last conv + global
pool + classifier); :class:`BlockConfig` names each part with a stable key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from jaxnas.spec import SE, ArchSpec, Block, Conv, Head, SpecError, Stage, analyze, make_divisible
from jaxnas.zoo import mbv2_block

__all__ = ["BlockConfig", "SearchSpace", "SpaceError", "BUILTIN_SPACES", "definition_hash", "load_space", "space_names",
           # TF-NAS (re-exported from tfnas_space)
           "MID_SEP", "NUM_OPS", "OP_NAMES", "OPS", "STAGES", "TFNAS_SPACES", "BlockPos", "LutError", "OpDef",
           "REFERENCE_KEY", "TfnasArch", "TfnasError", "TfnasLut", "TfnasSpace", "get_tfnas_space",
           "interp_extrapolate",
           "tfnas_block_key_and_mid", "tfnas_spec_blocks"]


class SpaceError(SpecError):
    """A search-space description (or an architecture outside it) that cannot be used (a ValueError)."""


# ----------------------------------------------------------------------------------------------------
# Block configurations (table keys)
# ----------------------------------------------------------------------------------------------------

def definition_hash(definition: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of a canonical space definition: changes whenever any choice changes."""
    canon = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BlockConfig:
    """One timed part of a network: ``kind`` 'mbconv', 'conv' (the stem) or 'head'.

    h, w, cin: input map; cout: output channels (for 'head': the last conv's channels); mid: the
    expanded channels of an MBConv (== cin without an expand conv); se: SE reduce channels (0 = none);
    num_classes: classifier width of a 'head' part.
    """

    kind: str
    h: int
    w: int
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    mid: int = 0
    act: str = "relu6"
    se: int = 0
    num_classes: int = 0

    @property
    def expand(self) -> bool:
        """Whether an MBConv has its 1x1 expand conv (expansion != 1)."""
        return self.kind == "mbconv" and self.mid != self.cin

    @property
    def residual(self) -> bool:
        return self.kind == "mbconv" and self.stride == 1 and self.cin == self.cout

    @property
    def key(self) -> str:
        """Stable table key, e.g. ``mbconv_h16_w16_c24_o32_k5_s2_e6_relu6_se0``."""
        base = f"{self.kind}_h{self.h}_w{self.w}_c{self.cin}_o{self.cout}"
        if self.kind == "mbconv":
            # the expansion reads better than mid, but only when it is exact to two decimals
            ratio = f"e{self.mid / self.cin:g}" if (self.mid * 100) % self.cin == 0 else f"m{self.mid}"
            return f"{base}_k{self.kernel}_s{self.stride}_{ratio}_{self.act}_se{self.se}"
        if self.kind == "conv":
            return f"{base}_k{self.kernel}_s{self.stride}_{self.act}"
        if self.kind == "head":
            return f"{base}_{self.act}_n{self.num_classes}"
        raise SpaceError(f"unknown block kind {self.kind!r}")

    def __str__(self) -> str:
        return self.key

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "head":
            return (1, 1)
        p = self.kernel // 2
        return ((self.h + 2 * p - self.kernel) // self.stride + 1, (self.w + 2 * p - self.kernel) // self.stride + 1)

    def to_block(self, name: Optional[str] = None) -> Block:
        """The spec block this part stands for ('head': the last 1x1 conv; the classifier is the Head)."""
        if self.kind == "mbconv":
            b = mbv2_block(self.cin, self.mid, self.cout, self.stride, kernel=self.kernel, expand=self.expand,
                           act=self.act, name=name)
            if self.se:
                b = dataclasses.replace(b, se=SE(self.se, after=1 if self.expand else 0))
            return b
        if self.kind == "conv":
            return Block("conv", (Conv(self.cout, (self.kernel, self.kernel), self.stride, act=self.act),), name=name)
        if self.kind == "head":
            return Block("conv", (Conv(self.cout, (1, 1), act=self.act),), name=name)
        raise SpaceError(f"unknown block kind {self.kind!r}")

    def to_spec(self) -> ArchSpec:
        """A one-part network for timing: NHWC in, the block's feature map out (Head(num_classes=0)),
        or for 'head' the last conv + global pool + classifier."""
        head = Head(num_classes=self.num_classes, dropout=0.0) if self.kind == "head" else Head(num_classes=0)
        return ArchSpec(f"part_{self.key}", (self.to_block(name="b0"),), head, (self.h, self.w), self.cin,
                        meta={"latency_part": self.key})

    def macs(self) -> int:
        return _part_cost(self)[0]

    def params(self) -> int:
        """Parameters of the part (BN unfolded, as :func:`jaxnas.spec.analyze` counts them)."""
        return _part_cost(self)[1]

    def with_channels(self, cin: int, cout: int, mid: int, se: int) -> "BlockConfig":
        return dataclasses.replace(self, cin=cin, cout=cout, mid=mid if self.kind == "mbconv" else 0, se=se)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=4096)
def _part_cost(cfg: BlockConfig) -> tuple[int, int]:
    c = analyze(cfg.to_spec())
    return c.macs, c.params


def decompose_spec(spec: ArchSpec) -> list[BlockConfig]:
    """Parts of a concrete MBConv-family spec: [stem conv, MBConv blocks..., head (last conv + classifier)].

    Works from the spec's structure alone (not its meta).  Raises :class:`SpaceError` for a block that
    no :class:`BlockConfig` can describe.
    """
    cost = analyze(spec)
    parts: list[BlockConfig] = []
    n = len(spec.blocks)
    if n < 2:
        raise SpaceError(f"{spec.name}: expected a stem conv, MBConv blocks and a last conv; got {n} block(s)")
    if spec.head.num_classes == 0 or spec.head.hidden or spec.head.pool != "global":
        raise SpaceError(f"{spec.name}: the head must be global pool + one classifier layer (got {spec.head})")
    for i, (b, bc) in enumerate(zip(spec.blocks, cost.blocks)):
        h, w, cin = bc.in_shape
        where = f"{spec.name} block {i} ({b.name or b.kind})"
        if b.post_act != "identity" or b.pool is not None or b.candidates or b.crop_shortcut:
            raise SpaceError(f"{where}: not a plain conv/MBConv block")
        if i == 0 or i == n - 1:
            if b.kind != "conv" or len(b.layers) != 1 or b.shortcut is not None or b.se is not None:
                raise SpaceError(f"{where}: the {'stem' if i == 0 else 'last'} part must be one conv")
            c = b.layers[0]
            if c.depthwise or c.bias or not c.norm or c.padding is not None or c.kernel[0] != c.kernel[1]:
                raise SpaceError(f"{where}: unsupported conv {c}")
            if i == 0:
                parts.append(BlockConfig("conv", h, w, cin, c.out, c.kernel[0], c.stride, act=c.act))
            else:
                if c.kernel != (1, 1) or c.stride != 1:
                    raise SpaceError(f"{where}: the last conv must be 1x1 stride 1")
                parts.append(BlockConfig("head", h, w, cin, c.out, act=c.act, num_classes=spec.head.num_classes))
            continue
        if b.kind != "mbconv":
            raise SpaceError(f"{where}: expected an MBConv block, got kind {b.kind!r}")
        layers = b.layers
        expand = len(layers) == 3
        if len(layers) not in (2, 3):
            raise SpaceError(f"{where}: an MBConv has 2 or 3 convs, got {len(layers)}")
        dw, proj = layers[-2], layers[-1]
        mid = layers[0].out if expand else cin
        if not dw.depthwise or dw.kernel[0] != dw.kernel[1] or dw.padding is not None or proj.act != "identity":
            raise SpaceError(f"{where}: not a depthwise-separable MBConv")
        if expand and (layers[0].kernel != (1, 1) or layers[0].act != dw.act or layers[0].stride != 1):
            raise SpaceError(f"{where}: the expand conv must be 1x1 stride 1 with the block's activation")
        se = 0
        if b.se is not None:
            if b.se.after != len(layers) - 2 or b.se.act != "relu" or b.se.gate != "sigmoid":
                raise SpaceError(f"{where}: only SE(after=depthwise, act='relu', gate='sigmoid') is supported")
            se = b.se.channels
        cfg = BlockConfig("mbconv", h, w, cin, proj.out, dw.kernel[0], dw.stride, mid, dw.act, se)
        if (b.shortcut == "identity") != cfg.residual or isinstance(b.shortcut, Conv):
            raise SpaceError(f"{where}: shortcut {b.shortcut!r} differs from the MBConv rule "
                             f"(identity iff stride 1 and cin == cout)")
        parts.append(cfg)
    return parts


# ----------------------------------------------------------------------------------------------------
# Spaces
# ----------------------------------------------------------------------------------------------------

_MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def _mbv2_stages(depths: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    out = []
    for (t, c, n, s), d in zip(_MBV2_STAGES, depths):
        st: dict[str, Any] = {"channels": c, "blocks": n, "stride": s, "depths": list(d)}
        if t == 1:  # MobileNetV2's first block has no expand conv; the skeleton keeps it fixed
            st.update(kernels=[3], expansions=[1])
        out.append(st)
    return out


BUILTIN_SPACES: dict[str, dict[str, Any]] = {
    # Small-input MobileNetV2 (jaxnas.zoo.mobilenet_v2(small_input=True): stride-1 stem, 2x2 final map at
    # 32 px): 45 unique MBConv blocks + stem + head, a build takes about a minute on one core.
    "mbv2-small": {
        "name": "mbv2-small", "family": "mbv2", "resolution": 32, "in_channels": 3, "act": "relu6",
        "kernels": [3, 5], "expansions": [3, 6], "se": [False], "se_ratio": 0.25, "widths": [1.0],
        "stem": {"channels": 32, "kernel": 3, "stride": 1},
        "stages": _mbv2_stages([[1], [1, 2], [2, 3], [2, 3, 4], [2, 3], [2, 3], [1]]),
        "last": {"channels": 1280}, "head": {"num_classes": 10},
    },
    # torchvision MobileNetV2 at 224 px (stride-2 stem), ProxylessNAS-like choices.
    "mbv2-224": {
        "name": "mbv2-224", "family": "mbv2", "resolution": 224, "in_channels": 3, "act": "relu6",
        "kernels": [3, 5, 7], "expansions": [3, 4, 6], "se": [False], "se_ratio": 0.25, "widths": [1.0],
        "stem": {"channels": 32, "kernel": 3, "stride": 2},
        "stages": _mbv2_stages([[1], [1, 2], [2, 3], [2, 3, 4], [2, 3], [2, 3], [1]]),
        "last": {"channels": 1280}, "head": {"num_classes": 1000},
    },
}


def space_names() -> list[str]:
    return sorted(BUILTIN_SPACES)


def _as_list(v: Any, what: str) -> list[Any]:
    if isinstance(v, (list, tuple)):
        if not v:
            raise SpaceError(f"{what} must not be empty")
        return list(v)
    return [v]


def _pos_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise SpaceError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class _StageDef:
    channels: int
    blocks: int
    stride: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    se: tuple[bool, ...]


_TOP_KEYS = {"name", "family", "resolution", "in_channels", "act", "kernels", "expansions", "se", "se_ratio",
             "widths", "stem", "stages", "last", "head", "description"}
_STAGE_KEYS = {"channels", "blocks", "stride", "depths", "kernels", "expansions", "se"}


class SearchSpace:
    """A MobileNetV2-style block-wise search space (see the module docstring for the format)."""

    def __init__(self, definition: Mapping[str, Any]):
        d = copy.deepcopy(dict(definition))
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise SpaceError(f"unknown search-space key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
        self.definition = d
        self.name = str(d.get("name") or "space")
        family = d.get("family", "mbv2")
        if family != "mbv2":
            raise SpaceError(f"unknown space family {family!r}; supported: 'mbv2' (MBConv skeleton)")
        res = d.get("resolution", 224)
        self.resolution: tuple[int, int] = tuple(_pos_int(r, "resolution") for r in (
            res if isinstance(res, (list, tuple)) else (res, res)))  # type: ignore[assignment]
        self.in_channels = _pos_int(d.get("in_channels", 3), "in_channels")
        self.act = str(d.get("act", "relu6"))
        self.se_ratio = float(d.get("se_ratio", 0.25))
        self.widths = tuple(float(w) for w in _as_list(d.get("widths", [1.0]), "widths"))
        if any(w <= 0 for w in self.widths):
            raise SpaceError(f"widths must be positive, got {list(self.widths)}")
        kernels = tuple(_pos_int(k, "kernels") for k in _as_list(d.get("kernels", [3]), "kernels"))
        if any(k % 2 == 0 for k in kernels):
            raise SpaceError(f"kernels must be odd, got {list(kernels)}")
        exps = tuple(float(e) for e in _as_list(d.get("expansions", [6]), "expansions"))
        ses = tuple(bool(s) for s in _as_list(d.get("se", [False]), "se"))
        stem = dict(d.get("stem") or {})
        self.stem_channels = _pos_int(stem.get("channels", 32), "stem.channels")
        self.stem_kernel = _pos_int(stem.get("kernel", 3), "stem.kernel")
        self.stem_stride = _pos_int(stem.get("stride", 2), "stem.stride")
        last = d.get("last") or {}
        self.last_channels = _pos_int(last.get("channels", 1280), "last.channels")
        head = d.get("head") or {}
        self.num_classes = _pos_int(head.get("num_classes", 1000), "head.num_classes")
        raw_stages = d.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise SpaceError("a search space needs a non-empty 'stages' list")
        stages = []
        for i, st in enumerate(raw_stages):
            if not isinstance(st, Mapping):
                raise SpaceError(f"stages[{i}] must be a mapping, got {st!r}")
            bad = set(st) - _STAGE_KEYS
            if bad:
                raise SpaceError(f"stages[{i}]: unknown key(s) {sorted(bad)}; known: {sorted(_STAGE_KEYS)}")
            n = _pos_int(st.get("blocks", 1), f"stages[{i}].blocks")
            depths = tuple(sorted({_pos_int(x, f"stages[{i}].depths") for x in _as_list(st.get("depths", [n]),
                                                                                          "depths")}))
            if depths[-1] > n:
                raise SpaceError(f"stages[{i}]: depth choice {depths[-1]} exceeds blocks={n}")
            ks = tuple(_pos_int(k, "kernels") for k in _as_list(st.get("kernels", kernels), f"stages[{i}].kernels"))
            es = tuple(float(e) for e in _as_list(st.get("expansions", exps), f"stages[{i}].expansions"))
            if any(e <= 0 for e in es):
                raise SpaceError(f"stages[{i}]: expansions must be positive, got {list(es)}")
            stages.append(_StageDef(_pos_int(st.get("channels"), f"stages[{i}].channels"), n,
                                    _pos_int(st.get("stride", 1), f"stages[{i}].stride"), depths, ks, es,
                                    tuple(bool(s) for s in _as_list(st.get("se", ses), f"stages[{i}].se"))))
        self.stages: tuple[_StageDef, ...] = tuple(stages)
        if any(min(self._stage_inputs(width)[-1][:2]) < 1 for width in self.widths):
            raise SpaceError(f"resolution {self.resolution} is too small for the space's strides")

    # ------------------------------------------------------------ identity
    @property
    def hash(self) -> str:
        return definition_hash(self.definition)

    def meta(self) -> dict[str, Any]:
        """What a latency table records about the space it was built for."""
        return {"space": self.name, "resolution": list(self.resolution), "space_hash": self.hash}

    def __repr__(self) -> str:
        return (f"SearchSpace({self.name!r}, resolution={self.resolution}, stages={len(self.stages)}, "
                f"unique_blocks={len(self.unique_blocks())})")

    # ------------------------------------------------------------ geometry
    def _ch(self, c: int, width: float) -> int:
        return make_divisible(c * width, 8)

    def _stage_inputs(self, width: float) -> list[tuple[int, int, int]]:
        """Input (h, w, c) of each stage's first block (fixed: every stage keeps its first block)."""
        stem = self.stem_config(width)
        (h, w), c = stem.out_hw, stem.cout
        out = []
        for st in self.stages:
            out.append((h, w, c))
            h, w = (h - 1) // st.stride + 1, (w - 1) // st.stride + 1
            c = self._ch(st.channels, width)
        out.append((h, w, c))
        return out

    def _choices(self, st: _StageDef) -> list[tuple[int, float, bool]]:
        return list(itertools.product(st.kernels, st.expansions, st.se))

    def _mbconv(self, h: int, w: int, cin: int, cout: int, stride: int, k: int, e: float, se: bool) -> BlockConfig:
        mid = int(round(cin * e))
        return BlockConfig("mbconv", h, w, cin, cout, k, stride, mid, self.act,
                           make_divisible(mid * self.se_ratio, 8) if se else 0)

    def stem_config(self, width: float = 1.0) -> BlockConfig:
        h, w = self.resolution
        return BlockConfig("conv", h, w, self.in_channels, self._ch(self.stem_channels, width), self.stem_kernel,
                           self.stem_stride, act=self.act)

    def head_config(self, width: float = 1.0) -> BlockConfig:
        h, w, c = self._stage_inputs(width)[-1]
        return BlockConfig("head", h, w, c, make_divisible(self.last_channels * max(1.0, width), 8), act=self.act,
                           num_classes=self.num_classes)

    # ------------------------------------------------------------ enumeration
    def unique_blocks(self) -> list[BlockConfig]:
        """Every MBConv configuration any architecture of the space can contain (deduplicated, stable order)."""
        seen: dict[str, BlockConfig] = {}
        for width in self.widths:
            ins = self._stage_inputs(width)
            for si, st in enumerate(self.stages):
                h, w, cin = ins[si]
                cout = self._ch(st.channels, width)
                oh, ow = ins[si + 1][:2]
                positions = [(h, w, cin, st.stride)]
                if st.depths[-1] > 1:
                    positions.append((oh, ow, cout, 1))
                for ph, pw, pc, s in positions:
                    for k, e, se in self._choices(st):
                        cfg = self._mbconv(ph, pw, pc, cout, s, k, e, se)
                        seen.setdefault(cfg.key, cfg)
        return list(seen.values())

    def unique_parts(self) -> list[BlockConfig]:
        """Everything a table for this space holds: stem(s), unique blocks, head(s)."""
        parts: dict[str, BlockConfig] = {}
        for p in [*map(self.stem_config, self.widths), *self.unique_blocks(), *map(self.head_config, self.widths)]:
            parts.setdefault(p.key, p)
        return list(parts.values())

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        return len(self.widths) * math.prod(sum(len(self._choices(st)) ** d for d in st.depths) for st in self.stages)

    # ------------------------------------------------------------ architectures
    def build(self, arch: Mapping[str, Any], name: Optional[str] = None) -> ArchSpec:
        """A concrete spec from explicit choices:
        ``{'width': w, 'depths': [d per stage], 'blocks': [[[k, e, se], ...] per stage]}``
        (``blocks[s]`` lists the choices of the kept blocks of stage s)."""
        width = float(arch.get("width", self.widths[0]))
        if width not in self.widths:
            raise SpaceError(f"width {width} is not in the space's widths {list(self.widths)}")
        depths = list(arch["depths"])
        choices = [list(b) for b in arch["blocks"]]
        if len(depths) != len(self.stages) or len(choices) != len(self.stages):
            raise SpaceError(f"arch has {len(depths)} depths / {len(choices)} block lists; the space has "
                             f"{len(self.stages)} stages")
        ins = self._stage_inputs(width)
        stem = self.stem_config(width)
        blocks = [stem.to_block(name="stem")]
        stages = []
        for si, (st, d, ch) in enumerate(zip(self.stages, depths, choices)):
            if d not in st.depths:
                raise SpaceError(f"stage {si}: depth {d} is not one of {list(st.depths)}")
            if len(ch) != d:
                raise SpaceError(f"stage {si}: {d} blocks kept but {len(ch)} block choices given")
            h, w, cin = ins[si]
            cout = self._ch(st.channels, width)
            start = len(blocks)
            for j, c in enumerate(ch):
                k, e, se = int(c[0]), float(c[1]), bool(c[2]) if len(c) > 2 else False
                if (k, e, se) not in self._choices(st):
                    raise SpaceError(f"stage {si} block {j}: choice (k={k}, e={e:g}, se={se}) is not in the space")
                s = st.stride if j == 0 else 1
                cfg = self._mbconv(h, w, cin, cout, s, k, e, se)
                blocks.append(cfg.to_block(name=f"b{len(blocks)}"))
                h, w = cfg.out_hw
                cin = cout
            stages.append(Stage(f"stage{si + 1}", start, len(blocks)))
        head = self.head_config(width)
        blocks.append(head.to_block(name="last"))
        meta = {"space": self.name, "space_hash": self.hash,
                "arch": {"width": width, "depths": depths,
                         "blocks": [[[int(c[0]), float(c[1]), bool(c[2]) if len(c) > 2 else False] for c in ch]
                                    for ch in choices]}}
        return ArchSpec(name or f"{self.name}_arch", tuple(blocks), Head(self.num_classes, dropout=0.0),
                        self.resolution, self.in_channels, tuple(stages), meta=meta)

    def sample_arch(self, rng: Union[np.random.Generator, int, None] = None) -> dict[str, Any]:
        """Uniformly random choices (depth per stage, then (kernel, expansion, se) per kept block)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        width = self.widths[int(rng.integers(len(self.widths)))]
        depths, blocks = [], []
        for st in self.stages:
            d = st.depths[int(rng.integers(len(st.depths)))]
            opts = self._choices(st)
            depths.append(d)
            blocks.append([list(opts[int(rng.integers(len(opts)))]) for _ in range(d)])
        return {"width": width, "depths": depths, "blocks": blocks}

    def sample(self, rng: Union[np.random.Generator, int, None] = None, name: Optional[str] = None) -> ArchSpec:
        """A random concrete architecture (``rng``: a numpy Generator or an int seed)."""
        return self.build(self.sample_arch(rng), name=name)

    def extreme_arch(self, largest: bool, width: Optional[float] = None) -> dict[str, Any]:
        """Deepest/widest choices everywhere (``largest``) or the shallowest/smallest."""
        pick = max if largest else min
        width = pick(self.widths) if width is None else width
        depths = [pick(st.depths) for st in self.stages]
        blocks = [[list(pick(self._choices(st), key=lambda c: (c[1], c[0], c[2])))] * d
                  for st, d in zip(self.stages, depths)]
        return {"width": width, "depths": depths, "blocks": blocks}

    def decompose(self, spec: ArchSpec) -> list[BlockConfig]:
        """Table parts of a concrete spec: [stem, blocks..., head] (see :func:`decompose_spec`)."""
        return decompose_spec(spec)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

def load_space(name_or_path: Union[str, "os.PathLike[str]", Mapping[str, Any], SearchSpace]) -> SearchSpace:
    """A built-in space by name (``mbv2-small``, ``mbv2-224``), a YAML/JSON file, a dict, or a SearchSpace."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return SearchSpace(name_or_path)
    s = os.fspath(name_or_path)
    if s in BUILTIN_SPACES:
        return SearchSpace(BUILTIN_SPACES[s])
    p = Path(s)
    if p.suffix.lower() in (".yaml", ".yml", ".json") or p.exists():
        if not p.is_file():
            raise SpaceError(f"search-space file not found: {p}")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() == ".json":
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except Exception as e:
            raise SpaceError(f"cannot parse search space {p}: {e}") from e
        if not isinstance(d, Mapping):
            raise SpaceError(f"search space {p} must be a mapping at the top level")
        d = dict(d)
        d.setdefault("name", p.stem)
        return SearchSpace(d)
    close = difflib.get_close_matches(s, list(BUILTIN_SPACES), n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise SpaceError(f"unknown search space {s!r}; {hint}built-in spaces: {', '.join(space_names())} "
                     f"(or pass a .yaml path)")


# TF-NAS (seed-specs §4.1, §4.4): its skeleton, operations, table keys and lookup tables live in `tfnas_space`;
# methods read them from here.
from .tfnas_space import (MID_SEP, NUM_OPS, OP_NAMES, OPS, STAGES, TFNAS_SPACES, BlockPos, LutError,  # noqa: E402
                          OpDef, REFERENCE_KEY, TfnasArch, TfnasError, TfnasLut, TfnasSpace, get_tfnas_space,
                          interp_extrapolate, tfnas_block_key_and_mid, tfnas_spec_blocks)
