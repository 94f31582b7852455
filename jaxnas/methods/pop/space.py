"""POP search spaces as `ArchSpec` generators.

Two families, each a small definition dict (YAML in a config's `search.args.space`, or a preset name):

* ``family: resnet`` — the paper's ResNet-like backbone space (seed spec §1.1): a fixed stem of convs
  (``stem: [[channels, stride], ...]``; DF nets: 3x3/s2 -> 32, 3x3/s2 -> 64), then searched stages of
  residual blocks whose first block has stride 2.  A stage lists its ``depths`` (allowed block counts)
  and ``widths`` (allowed block widths: an int is a basic block, a ``[mid, out]`` pair a bottleneck).
  Widths never decrease along depth, across stages too (a width is compared as the pair (mid, out),
  a basic block w as (w, w), componentwise); a stage holds one block kind.  A block gets a 1x1
  projection shortcut whenever its stride is 2 or its configured width differs from the previous
  block's (`jaxnas.zoo.dfnet` builds every architecture, so DF1/DF2/DF2A of `pop-imagenet` are
  exactly the zoo's nets).
* ``family: mbv2`` — the MobileNetV2-block spaces of `jaxnas.latency.spaces` (same definition: widths,
  per-stage depths/kernels/expansions/se, stem, last, head; that module builds the specs), so POP
  searches the same space as the other methods; an architecture is (width multiplier, per stage the
  (kernel, expansion, se) of each kept block).

An architecture ("arch") is a plain hashable tuple; `space.build(arch)` gives its spec and
`space.arch_key(arch)` a short stable string used in every file POP writes.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import numpy as np

from jaxnas.latency.spaces import BUILTIN_SPACES, SearchSpace, definition_hash
from jaxnas.spec import ArchSpec, SpecError
from jaxnas.zoo import dfnet

Width = Union[int, tuple[int, int]]           # basic block width, or bottleneck (mid, out)
ResNetArch = tuple[tuple[Width, ...], ...]    # per searched stage, its blocks' widths
MBChoice = tuple[int, float, bool]            # (kernel, expansion, se)
MBArch = tuple[float, tuple[tuple[MBChoice, ...], ...]]


class SpaceError(SpecError):
    """A POP search-space definition that cannot be used (a ValueError: `jaxnas` prints one line)."""


def _pair(w: Width) -> tuple[int, int]:
    return (w, w) if isinstance(w, int) else (int(w[0]), int(w[1]))


def width_leq(a: Width, b: Width) -> bool:
    """a is no wider than b: componentwise on (mid, out) (a basic block w is (w, w))."""
    (am, ao), (bm, bo) = _pair(a), _pair(b)
    return am <= bm and ao <= bo


def _kind(w: Width) -> str:
    return "basic" if isinstance(w, int) else "bottleneck"


def _width(v: Any, where: str) -> Width:
    if isinstance(v, bool):
        raise SpaceError(f"{where}: a width is an int (basic block) or [mid, out] (bottleneck), got {v!r}")
    if isinstance(v, (int, np.integer)) and int(v) > 0:
        return int(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) and int(x) > 0 for x in v):
        return (int(v[0]), int(v[1]))
    raise SpaceError(f"{where}: a width is a positive int (basic block) or [mid, out] (bottleneck), got {v!r}")


def _pos_ints(v: Any, where: str) -> tuple[int, ...]:
    vals = v if isinstance(v, (list, tuple)) else [v]
    out = []
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < 1:
            raise SpaceError(f"{where}: expected positive integers, got {v!r}")
        out.append(int(x))
    if not out:
        raise SpaceError(f"{where}: must not be empty")
    return tuple(sorted(set(out)))


def _fmt_width(w: Width) -> str:
    return str(w) if isinstance(w, int) else f"{w[0]}x{w[1]}"


# ----------------------------------------------------------------------------------------------------
# The ResNet-like (Dongfeng) space
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StageChoices:
    name: str
    depths: tuple[int, ...]
    widths: tuple[Width, ...]   # sorted by (mid, out)


_RESNET_KEYS = {"name", "family", "description", "resolution", "in_channels", "num_classes", "stem", "stages"}
_STAGE_KEYS = {"name", "depths", "widths"}


class _SpaceBase:
    """What both families share: the description POP writes and membership (`check` raises SpaceError)."""

    @property
    def hash(self) -> str:
        return definition_hash(self.definition)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "hash": self.hash, "size": self.size(),
                "definition": self.definition}

    def contains(self, arch: Any) -> bool:
        try:
            self.check(arch)
        except SpaceError:
            return False
        return True


class ResNetSpace(_SpaceBase):
    """POP's ResNet-like backbone space (see the module docstring)."""

    family = "resnet"

    def __init__(self, definition: Mapping[str, Any]):
        d = copy.deepcopy(dict(definition))
        unknown = sorted(set(d) - _RESNET_KEYS)
        if unknown:
            raise SpaceError(f"unknown key(s) {unknown} in a resnet space; known: {sorted(_RESNET_KEYS)}")
        self.definition = d
        self.name = str(d.get("name") or "space")
        self.resolution = _pos_ints(d.get("resolution", 224), "resolution")[0]
        self.in_channels = _pos_ints(d.get("in_channels", 3), "in_channels")[0]
        self.num_classes = _pos_ints(d.get("num_classes", 1000), "num_classes")[0]
        stem = d.get("stem", [[32, 2], [64, 2]])
        if not isinstance(stem, (list, tuple)) or not stem:
            raise SpaceError("stem: a list of [channels, stride] convs, e.g. [[32, 2], [64, 2]]")
        self.stem = tuple(tuple(_pos_ints_ordered(c, f"stem[{i}]", 2)) for i, c in enumerate(stem))
        stages = d.get("stages")
        if not isinstance(stages, (list, tuple)) or not stages:
            raise SpaceError("stages: a list of {depths: [...], widths: [...]} (one per searched stage)")
        out = []
        for i, st in enumerate(stages):
            if not isinstance(st, Mapping):
                raise SpaceError(f"stages[{i}]: expected a mapping with depths and widths")
            bad = sorted(set(st) - _STAGE_KEYS)
            if bad:
                raise SpaceError(f"stages[{i}]: unknown key(s) {bad}; known: {sorted(_STAGE_KEYS)}")
            if "depths" not in st or "widths" not in st:
                raise SpaceError(f"stages[{i}]: needs depths and widths")
            widths = st["widths"] if isinstance(st["widths"], (list, tuple)) else [st["widths"]]
            ws = sorted({_width(w, f"stages[{i}].widths") for w in widths}, key=_pair)
            if not ws:
                raise SpaceError(f"stages[{i}].widths: must not be empty")
            out.append(StageChoices(str(st.get("name") or f"res{i + 2}"), _pos_ints(st["depths"], f"stages[{i}].depths"),
                                    tuple(ws)))
        self.stages: tuple[StageChoices, ...] = tuple(out)

    # ------------------------------------------------------------ enumeration
    def _stage_seqs(self, si: int) -> list[tuple[Width, ...]]:
        """All block-width sequences of stage `si`: one kind, non-decreasing, each allowed depth."""
        st = self.stages[si]
        seqs: list[tuple[Width, ...]] = []
        for kind in ("basic", "bottleneck"):
            opts = [w for w in st.widths if _kind(w) == kind]
            if not opts:
                continue
            for d in st.depths:
                for combo in itertools.combinations_with_replacement(range(len(opts)), d):
                    seq = tuple(opts[j] for j in combo)
                    if all(width_leq(a, b) for a, b in zip(seq, seq[1:])):
                        seqs.append(seq)
        return seqs

    def archs(self) -> Iterator[ResNetArch]:
        """Every architecture, in a stable order."""
        per_stage = [self._stage_seqs(i) for i in range(len(self.stages))]

        def rec(i: int, prev: Width | None, acc: tuple) -> Iterator[ResNetArch]:
            if i == len(per_stage):
                yield acc
                return
            for seq in per_stage[i]:
                if prev is None or width_leq(prev, seq[0]):
                    yield from rec(i + 1, seq[-1], acc + (seq,))

        yield from rec(0, None, ())

    def size(self) -> int:
        """Number of architectures (counted without enumerating)."""
        per_stage = [self._stage_seqs(i) for i in range(len(self.stages))]
        # counts[w] = number of prefixes ending with last width w
        counts: dict[Any, int] = {None: 1}
        for seqs in per_stage:
            nxt: dict[Any, int] = {}
            for prev, n in counts.items():
                for seq in seqs:
                    if prev is None or width_leq(prev, seq[0]):
                        nxt[seq[-1]] = nxt.get(seq[-1], 0) + n
            counts = nxt
        return sum(counts.values())

    def check(self, arch: ResNetArch) -> ResNetArch:
        arch = normalize_resnet_arch(arch)
        if len(arch) != len(self.stages):
            raise SpaceError(f"arch has {len(arch)} stages, the space {len(self.stages)}")
        prev = None
        for st, seq in zip(self.stages, arch):
            if len(seq) not in st.depths:
                raise SpaceError(f"{st.name}: depth {len(seq)} is not one of {list(st.depths)}")
            for w in seq:
                if w not in st.widths:
                    raise SpaceError(f"{st.name}: width {_fmt_width(w)} is not one of "
                                     f"{[_fmt_width(x) for x in st.widths]}")
                if prev is not None and not width_leq(prev, w):
                    raise SpaceError(f"{st.name}: width {_fmt_width(w)} after {_fmt_width(prev)} decreases")
                prev = w
            if len({_kind(w) for w in seq}) > 1:
                raise SpaceError(f"{st.name}: mixes basic and bottleneck blocks")
        return arch

    def smallest(self) -> ResNetArch:
        """Shallowest, narrowest architecture (the bottom of the partial order)."""
        return min(self.archs(), key=lambda a: (sum(map(len, a)), [_pair(w) for s in a for w in s]))

    def largest(self) -> ResNetArch:
        return max(self.archs(), key=lambda a: (sum(map(len, a)), [_pair(w) for s in a for w in s]))

    def sample_arch(self, rng: np.random.Generator) -> ResNetArch:
        """A uniformly random architecture (the enumeration is listed once and kept)."""
        if not hasattr(self, "_all"):
            self._all = list(self.archs())
        return self._all[int(rng.integers(len(self._all)))]

    # ------------------------------------------------------------ specs
    def build(self, arch: ResNetArch, name: str | None = None) -> ArchSpec:
        arch = self.check(arch)
        spec = dfnet(name or f"{self.name}_{self.arch_key(arch)}", num_classes=self.num_classes,
                     resolution=self.resolution, in_channels=self.in_channels, widths=arch, stem=self.stem)
        names = [st.name for st in self.stages]
        stages = tuple(dataclasses.replace(s, name=n) for s, n in zip(spec.stages, names))
        return spec.replace(stages=stages, meta={**spec.metadata, "space": self.name, "space_hash": self.hash,
                                                 "pop_arch": self.arch_key(arch)})

    def arch_of(self, spec: ArchSpec) -> ResNetArch:
        """The arch of a spec of this space (e.g. `zoo.df2()` in `pop-imagenet`); SpaceError if none."""
        if len(spec.stages) != len(self.stages):
            raise SpaceError(f"{spec.name}: {len(spec.stages)} stages, the space has {len(self.stages)}")
        arch = []
        for st in spec.stages:
            seq: list[Width] = []
            for b in spec.blocks[st.start:st.end]:
                if b.kind == "basic":
                    seq.append(b.layers[-1].out)
                elif b.kind == "bottleneck":
                    seq.append((b.layers[0].out, b.layers[-1].out))
                else:
                    raise SpaceError(f"{spec.name}: block kind {b.kind!r} is not in a resnet space")
            arch.append(tuple(seq))
        arch_t = self.check(tuple(arch))
        built = self.build(arch_t)
        if _structure(built) != _structure(spec):
            raise SpaceError(f"{spec.name}: same widths as {self.arch_key(arch_t)} but another structure "
                             "(stem, input, head or shortcuts differ from the space's)")
        return arch_t

    @staticmethod
    def arch_key(arch: ResNetArch) -> str:
        """e.g. '64.64.64-128.128.128-256.256.256.512' (bottlenecks as mid x out: '128x512')."""
        return "-".join(".".join(_fmt_width(w) for w in seq) for seq in normalize_resnet_arch(arch))

    @staticmethod
    def parse_key(key: str) -> ResNetArch:
        def w(tok: str) -> Width:
            if "x" in tok:
                m, o = tok.split("x")
                return (int(m), int(o))
            return int(tok)
        return tuple(tuple(w(t) for t in seg.split(".")) for seg in key.split("-"))

    def arch_json(self, arch: ResNetArch) -> Any:
        return [[w if isinstance(w, int) else list(w) for w in seq] for seq in arch]


def _pos_ints_ordered(v: Any, where: str, n: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != n or any(
            isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < 1 for x in v):
        raise SpaceError(f"{where}: expected {n} positive integers, got {v!r}")
    return tuple(int(x) for x in v)


def normalize_resnet_arch(arch: Any) -> ResNetArch:
    return tuple(tuple(w if isinstance(w, int) else (int(w[0]), int(w[1])) for w in seq) for seq in arch)


def _structure(spec: ArchSpec) -> tuple:
    """A spec without its names, width groups and metadata (what two builds must agree on)."""
    def conv(c):
        return None if c is None or isinstance(c, str) else dataclasses.replace(c, width=None)

    blocks = tuple(dataclasses.replace(b, name=None, layers=tuple(conv(c) for c in b.layers),
                                       shortcut=conv(b.shortcut) if not isinstance(b.shortcut, str) else b.shortcut)
                   for b in spec.blocks)
    return (blocks, spec.head, spec.input_size, spec.in_channels, tuple((s.start, s.end) for s in spec.stages))


# ----------------------------------------------------------------------------------------------------
# The MobileNetV2-block space (the format of latency.spaces)
# ----------------------------------------------------------------------------------------------------

class MBConvSpace(_SpaceBase):
    """The MobileNetV2-block space of `jaxnas.latency.spaces` (that module builds the specs, so POP
    searches exactly the nets its block tables and the other methods see)."""

    family = "mbv2"

    def __init__(self, definition: Mapping[str, Any]):
        try:
            self.inner = SearchSpace(definition)
        except SpecError as e:
            raise SpaceError(str(e)) from None
        self.definition = self.inner.definition
        self.name = self.inner.name
        self.widths = tuple(sorted(self.inner.widths))
        self.stage_choices: tuple[tuple[MBChoice, ...], ...] = tuple(
            tuple(sorted((int(k), float(e), bool(se)) for k, e, se in itertools.product(st.kernels, st.expansions, st.se)))
            for st in self.inner.stages)
        self.depths = tuple(tuple(sorted(st.depths)) for st in self.inner.stages)

    def size(self) -> int:
        return self.inner.size()

    def archs(self) -> Iterator[MBArch]:
        per_stage = [[seq for dd in ds for seq in itertools.product(ch, repeat=dd)]
                     for ch, ds in zip(self.stage_choices, self.depths)]
        for w in self.widths:
            for combo in itertools.product(*per_stage):
                yield (w, tuple(combo))

    def sample_arch(self, rng: np.random.Generator) -> MBArch:
        return self.check(self._from_json(self.inner.sample_arch(rng)))

    def check(self, arch: MBArch) -> MBArch:
        w, stages = float(arch[0]), tuple(tuple((int(c[0]), float(c[1]), bool(c[2])) for c in s) for s in arch[1])
        if w not in self.widths:
            raise SpaceError(f"width {w} is not one of {list(self.widths)}")
        if len(stages) != len(self.stage_choices):
            raise SpaceError(f"arch has {len(stages)} stages, the space {len(self.stage_choices)}")
        for i, (ch, ds, seq) in enumerate(zip(self.stage_choices, self.depths, stages)):
            if len(seq) not in ds:
                raise SpaceError(f"stage {i}: depth {len(seq)} is not one of {list(ds)}")
            for c in seq:
                if c not in ch:
                    raise SpaceError(f"stage {i}: choice {c} is not in the space")
        return (w, stages)

    def smallest(self) -> MBArch:
        return (self.widths[0], tuple(tuple([ch[0]] * ds[0]) for ch, ds in zip(self.stage_choices, self.depths)))

    def largest(self) -> MBArch:
        return (self.widths[-1], tuple(tuple([ch[-1]] * ds[-1]) for ch, ds in zip(self.stage_choices, self.depths)))

    def build(self, arch: MBArch, name: str | None = None) -> ArchSpec:
        arch = self.check(arch)
        key = self.arch_key(arch)
        spec = self.inner.build(self.arch_json(arch), name=name or f"{self.name}_{key}")
        return spec.replace(meta={**spec.metadata, "pop_arch": key})

    @staticmethod
    def arch_key(arch: MBArch) -> str:
        """e.g. 'w1-k3e1|k5e6.k3e3s' ('s': with SE)."""
        w, stages = arch
        parts = [".".join(f"k{k}e{float(e):g}" + ("s" if se else "") for k, e, se in seq) for seq in stages]
        return f"w{float(w):g}-" + "|".join(parts)

    @staticmethod
    def parse_key(key: str) -> MBArch:
        head, _, rest = key.partition("-")
        stages = []
        for seg in rest.split("|"):
            seq = []
            for tok in seg.split("."):
                se = tok.endswith("s")
                tok = tok[:-1] if se else tok
                k, e = tok[1:].split("e")
                seq.append((int(k), float(e), se))
            stages.append(tuple(seq))
        return (float(head[1:]), tuple(stages))

    @staticmethod
    def arch_json(arch: MBArch) -> dict[str, Any]:
        """The arch in `jaxnas.latency.spaces`' form: {width, depths, blocks}."""
        return {"width": arch[0], "depths": [len(s) for s in arch[1]],
                "blocks": [[[k, e, se] for k, e, se in seq] for seq in arch[1]]}

    @staticmethod
    def _from_json(d: Mapping[str, Any]) -> MBArch:
        return (float(d["width"]), tuple(tuple((int(c[0]), float(c[1]), bool(c[2]) if len(c) > 2 else False)
                                               for c in seq) for seq in d["blocks"]))


# ----------------------------------------------------------------------------------------------------
# Presets and loading
# ----------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ImageNet backbone space (seed spec §1.1, reconstructed from the released DF nets):
    # stem 3x3/s2 -> 32, 3x3/s2 -> 64; res2/res3/res4 basic blocks of widths {64,128} / {128,256} /
    # {256,512}, or bottlenecks in res3/res4 (DF2A's mid/out pairs).  DF1, DF2 and DF2A are members.
    "pop-imagenet": {
        "name": "pop-imagenet", "family": "resnet", "resolution": 224, "in_channels": 3, "num_classes": 1000,
        "stem": [[32, 2], [64, 2]],
        "stages": [
            {"name": "res2", "depths": [2, 3, 4], "widths": [64, 128]},
            {"name": "res3", "depths": list(range(2, 13)), "widths": [128, 256, [128, 512], [256, 1024]]},
            {"name": "res4", "depths": list(range(2, 9)), "widths": [256, 512, [256, 1024], [512, 1024]]},
        ],
    },
    # Basic blocks only (DF1, DF2).
    "pop-imagenet-basic": {
        "name": "pop-imagenet-basic", "family": "resnet", "resolution": 224, "in_channels": 3,
        "num_classes": 1000, "stem": [[32, 2], [64, 2]],
        "stages": [
            {"name": "res2", "depths": [2, 3, 4], "widths": [64, 128]},
            {"name": "res3", "depths": list(range(2, 13)), "widths": [128, 256]},
            {"name": "res4", "depths": list(range(2, 9)), "widths": [256, 512]},
        ],
    },
    # Small-input variant (28-32 px): stride-1 stem of 8 and 16 channels, widths a quarter of the DF
    # space's; the three stages bring 28 px to 4x4 (32 px: 4x4).  405 architectures.
    "pop-small": {
        "name": "pop-small", "family": "resnet", "resolution": 28, "in_channels": 1, "num_classes": 10,
        "stem": [[8, 1], [16, 1]],
        "stages": [
            {"name": "res2", "depths": [1, 2], "widths": [16, 32]},
            {"name": "res3", "depths": [1, 2, 3], "widths": [32, 64]},
            {"name": "res4", "depths": [1, 2, 3], "widths": [64, 128]},
        ],
    },
}

Space = Union[ResNetSpace, MBConvSpace]


def load_space(spec: Union[str, Mapping[str, Any], Space], *, resolution: int | None = None,
               in_channels: int | None = None, num_classes: int | None = None) -> Space:
    """A preset name, a YAML/JSON file, a definition dict or a space; input/classes may be overridden
    (sized to the data)."""
    # The MBConv presets are those of `jaxnas.latency.spaces` ('mbv2-small': too large to enumerate
    # (1.4e10), so POP searches a seeded random pool of it, search.args.pool_size).
    if isinstance(spec, _SpaceBase):
        d = spec.definition
    elif isinstance(spec, Mapping):
        d = dict(spec)
    elif isinstance(spec, str) and spec in PRESETS:
        d = PRESETS[spec]
    elif isinstance(spec, str) and spec in BUILTIN_SPACES:
        d = {"family": "mbv2", **BUILTIN_SPACES[spec]}
    elif isinstance(spec, str) and (spec.endswith((".yaml", ".yml", ".json")) or Path(spec).is_file()):
        p = Path(spec)
        if not p.is_file():
            raise SpaceError(f"search-space file {p} not found")
        import yaml
        d = yaml.safe_load(p.read_text()) if p.suffix != ".json" else json.loads(p.read_text())
        if not isinstance(d, Mapping):
            raise SpaceError(f"search-space file {p}: expected a mapping")
        d = {"name": p.stem, **d}
    else:
        import difflib
        hint = difflib.get_close_matches(str(spec), [*PRESETS, *BUILTIN_SPACES], n=1)
        raise SpaceError(f"unknown POP space {spec!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; presets: {', '.join([*PRESETS, *BUILTIN_SPACES])}, or a definition dict / YAML path")
    d = copy.deepcopy(dict(d))
    family = d.get("family", "resnet")
    if resolution is not None:
        d["resolution"] = int(resolution)
    if in_channels is not None:
        d["in_channels"] = int(in_channels)
    if num_classes is not None:
        if family == "mbv2":
            d["head"] = {**(d.get("head") or {}), "num_classes": int(num_classes)}
        else:
            d["num_classes"] = int(num_classes)
    if family == "resnet":
        return ResNetSpace(d)
    if family == "mbv2":
        return MBConvSpace(d)
    raise SpaceError(f"unknown space family {family!r}: 'resnet' (POP's DF space) or 'mbv2'")


__all__ = ["MBConvSpace", "PRESETS", "ResNetSpace", "Space", "SpaceError", "StageChoices", "Width", "load_space",
           "width_leq"]
