"""The TF-NAS search space (seed-specs §4.1) and its lookup tables (§4.4).

An EfficientNet-B0-like skeleton with three freedoms.

Skeleton (channels at width 1.0)::

    first_stem   conv3x3 3->32, stride 2 (1 in the small-input variant), ReLU
    second_stem  MBInvertedResBlock 32->16, mid 32 (expansion-free), dw3x3, SE 8, ReLU
    stage1..6    searchable MBInvertedResBlocks (table below), depth chosen per stage
    feature_mix  conv1x1 320->1280, swish; global average pool; FC

    stage  in -> out          strides    act    blocks (depth choices)
    1      16->24, 24->24     2,1        relu   2 (1-2)
    2      24->40, 2x 40->40  2,1,1      swish  3 (1-3)
    3      40->80, 3x 80->80  2,1,1,1    swish  4 (1-4)
    4      80->112, 3x 112    1,1,1,1    swish  4 (1-4)
    5      112->192, 3x 192   2,1,1,1    swish  4 (1-4)
    6      192->320           1          swish  1 (fixed)

Every searchable block chooses one of 8 operations, in the original's order
[k3e3, k3e6, k5e3, k5e6, k3e3se, k3e6se, k5e3se, k5e6se]; the SE width is the block's input width (e3) or
twice it (e6), and the SE uses the block's activation.  Each operation's mid (expanded) width is elastic:
a subset of a full-size tensor of 4*in (e3) or 8*in (e6) channels, initially the first 3*in / 6*in, within
[max // 2, max].  The small-input variant (28-32 px inputs) has a stride-1 first stem; `width` scales every
channel count (make_divisible(c * width, 8)) for networks small enough to search on a CPU.

This module is pure Python (no jax, no runtime): the TF-NAS method, the table builder
(`tfnas_table`) and the CLI share it; methods import it through `jaxnas.latency.spaces`.
Tables (`TfnasLut`): the original's format, 'base' + {key: {mid: ms}} curves, exact at measured mids and
piecewise linear between them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxnas.spec import ArchSpec, Block, Conv, Head, SpecError, Stage, analyze, make_divisible, validate
from jaxnas.zoo import mbi_block

from .imports import tfnas_key
from .table import PROBE_PREFIX, interp_extrapolate


@dataclass(frozen=True)
class OpDef:
    """One candidate operation: kernel size, expansion ratio (3 or 6), squeeze-excite or not."""

    kernel: int
    expansion: int
    se: bool

    @property
    def name(self) -> str:
        return f"k{self.kernel}e{self.expansion}" + ("se" if self.se else "")


OPS: tuple[OpDef, ...] = (OpDef(3, 3, False), OpDef(3, 6, False), OpDef(5, 3, False), OpDef(5, 6, False),
                          OpDef(3, 3, True), OpDef(3, 6, True), OpDef(5, 3, True), OpDef(5, 6, True))
NUM_OPS = len(OPS)
REFERENCE_OP = 1  # k3e6: the op of every block of a network table's reference network
REFERENCE_KEY = PROBE_PREFIX + "reference"  # ... and the one every other entry is anchored to
OP_NAMES = tuple(op.name for op in OPS)


class TfnasError(SpecError):
    """A TF-NAS space, architecture, model.config or table that cannot be used (a UserError)."""


# (name, inputs, outputs, strides, activation) of the six searchable stages at width 1.0.
STAGES: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], str], ...] = (
    ("stage1", (16, 24), (24, 24), (2, 1), "relu"),
    ("stage2", (24, 40, 40), (40, 40, 40), (2, 1, 1), "swish"),
    ("stage3", (40, 80, 80, 80), (80, 80, 80, 80), (2, 1, 1, 1), "swish"),
    ("stage4", (80, 112, 112, 112), (112, 112, 112, 112), (1, 1, 1, 1), "swish"),
    ("stage5", (112, 192, 192, 192), (192, 192, 192, 192), (2, 1, 1, 1), "swish"),
    ("stage6", (192,), (320,), (1,), "swish"),
)


def _out_hw(h: int, stride: int) -> int:
    # k//2 padding: (h + 2*(k//2) - k) // s + 1 == (h - 1) // s + 1 for odd k
    return (h - 1) // stride + 1


@dataclass(frozen=True)
class BlockPos:
    """A searchable block position: global index, stage, index in the stage, channels, stride, input size."""

    index: int
    stage: int  # 0-based
    stage_name: str
    j: int  # 0-based position in the stage
    cin: int
    cout: int
    stride: int
    act: str
    h: int  # input spatial size (the original's x.size(-1))

    @property
    def name(self) -> str:
        return f"{self.stage_name}.block{self.j + 1}"

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    def se(self, op: int) -> int:
        o = OPS[op]
        return (self.cin if o.expansion == 3 else 2 * self.cin) if o.se else 0

    def max_mid(self, op: int) -> int:
        return (4 if OPS[op].expansion == 3 else 8) * self.cin

    def min_mid(self, op: int) -> int:
        return self.max_mid(op) // 2

    def init_mid(self, op: int) -> int:
        return OPS[op].expansion * self.cin

    def key(self, op: int) -> str:
        """The original's latency-table key: MBInvertedResBlock_{H}_{in}_{se}_{out}_k{k}_s{s}_{act}."""
        return tfnas_key(self.h, self.cin, self.se(op), self.cout, OPS[op].kernel, self.stride, self.act)


@dataclass(frozen=True)
class TfnasArch:
    """A parsed architecture: per stage the operation index and mid width of every kept block."""

    ops: tuple[tuple[int, ...], ...]
    mids: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(tuple(int(o) for o in s) for s in self.ops))
        object.__setattr__(self, "mids", tuple(tuple(int(m) for m in s) for s in self.mids))

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"depths": list(self.depths), "ops": [[OP_NAMES[o] for o in s] for s in self.ops],
                "op_indices": [list(s) for s in self.ops], "mids": [list(s) for s in self.mids]}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TfnasArch":
        ops = d.get("op_indices")
        if ops is None:
            ops = [[OP_NAMES.index(o) if isinstance(o, str) else int(o) for o in s] for s in d["ops"]]
        return TfnasArch(tuple(tuple(s) for s in ops), tuple(tuple(s) for s in d["mids"]))


@dataclass(frozen=True)
class TfnasSpace:
    """The §4.1 skeleton at an input size, width and class count (see the module docstring)."""

    name: str = "tfnas-224"
    resolution: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    width: float = 1.0
    small_input: bool = False  # stride-1 first stem for 28-32 px inputs
    last_channels: int | None = None  # feature-mix width; None: 1280 * max(1, width)
    max_depths: tuple[int, ...] | None = None  # keep only the first n blocks of each stage (tiny test spaces)

    def __post_init__(self):
        if self.max_depths is not None:
            md = tuple(int(d) for d in self.max_depths)
            object.__setattr__(self, "max_depths", md)
            if len(md) != len(STAGES) or any(not 1 <= d <= len(s[1]) for d, s in zip(md, STAGES)):
                raise TfnasError(f"TF-NAS space {self.name}: max_depths {list(md)} must give 1..n blocks for each "
                                 f"of the {len(STAGES)} stages (n = {[len(s[1]) for s in STAGES]})")
        if self.width <= 0 or self.resolution < 1 or self.in_channels < 1 or self.num_classes < 1:
            raise TfnasError(f"TF-NAS space {self.name}: width, resolution, in_channels and num_classes must "
                             f"be positive (got {self.width}, {self.resolution}, {self.in_channels}, "
                             f"{self.num_classes})")
        if self.last_channels is not None and self.last_channels < 1:
            raise TfnasError(f"TF-NAS space {self.name}: last_channels must be positive")
        if self.stage_hw()[-1] < 1:
            raise TfnasError(f"TF-NAS space {self.name}: resolution {self.resolution} is too small")

    # ------------------------------------------------------------------ geometry
    def ch(self, c: int) -> int:
        return c if self.width == 1.0 else make_divisible(c * self.width, 8)

    @property
    def stem_channels(self) -> int:
        return self.ch(32)

    @property
    def stem_stride(self) -> int:
        return 1 if self.small_input else 2

    @property
    def second_stem_out(self) -> int:
        return self.ch(16)

    @property
    def second_stem_se(self) -> int:
        return self.ch(8)

    @property
    def feature_channels(self) -> int:
        if self.last_channels is not None:
            return int(self.last_channels)
        return make_divisible(1280 * max(1.0, self.width), 8)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s[0] for s in STAGES)

    def stages(self) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], str], ...]:
        """(name, ins, outs, strides, act) of the searchable stages at width 1.0 (`max_depths` applied)."""
        if self.max_depths is None:
            return STAGES
        return tuple((n, i[:d], o[:d], s[:d], a) for (n, i, o, s, a), d in zip(STAGES, self.max_depths))

    def stage_hw(self) -> list[int]:
        """Input size of the second stem, then of every searchable block in order, then of feature_mix."""
        h = _out_hw(self.resolution, self.stem_stride)
        out = [h]
        for _, _, _, strides, _ in self.stages():
            for s in strides:
                out.append(h)
                h = _out_hw(h, s)
        out.append(h)
        return out

    def blocks(self) -> tuple[BlockPos, ...]:
        hw = self.stage_hw()[1:-1]
        out = []
        for si, (name, ins, outs, strides, act) in enumerate(self.stages()):
            for j, (ci, co, s) in enumerate(zip(ins, outs, strides)):
                i = len(out)
                out.append(BlockPos(i, si, name, j, self.ch(ci), self.ch(co), s, act, hw[i]))
        return tuple(out)

    def stage_blocks(self) -> list[list[BlockPos]]:
        out: list[list[BlockPos]] = [[] for _ in STAGES]
        for b in self.blocks():
            out[b.stage].append(b)
        return out

    def table_keys(self) -> list[str]:
        """Every latency-table key an architecture of this space can need (stable order, no duplicates)."""
        return list(dict.fromkeys(b.key(op) for b in self.blocks() for op in range(NUM_OPS)))

    def key_mid_ranges(self) -> dict[str, tuple[int, int]]:
        """{key: (lowest, highest) mid any op of any block with that key can take} (the queried range)."""
        out: dict[str, tuple[int, int]] = {}
        for b in self.blocks():
            for op in range(NUM_OPS):
                lo, hi = b.min_mid(op), b.max_mid(op)
                k = b.key(op)
                a, z = out.get(k, (lo, hi))
                out[k] = (min(a, lo), max(z, hi))
        return out

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        d = {"family": "tfnas", **dataclasses.asdict(self)}
        for k in ("last_channels", "max_depths"):
            if d[k] is None:
                del d[k]
            elif k == "max_depths":
                d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TfnasSpace":
        d = dict(d)
        fam = d.pop("family", "tfnas")
        if fam != "tfnas":
            raise TfnasError(f"not a TF-NAS space (family {fam!r})")
        known = {f.name for f in dataclasses.fields(TfnasSpace)}
        bad = sorted(set(d) - known)
        if bad:
            raise TfnasError(f"unknown TF-NAS space key(s) {bad}; known: {sorted(known)}")
        return TfnasSpace(**d)

    # ------------------------------------------------------------------ architectures
    def initial_mids(self) -> list[list[int]]:
        return [[b.init_mid(op) for op in range(NUM_OPS)] for b in self.blocks()]

    def max_mids(self) -> list[list[int]]:
        return [[b.max_mid(op) for op in range(NUM_OPS)] for b in self.blocks()]

    def check_arch(self, arch: TfnasArch) -> None:
        stages = self.stage_blocks()
        if len(arch.ops) != len(stages) or len(arch.mids) != len(stages):
            raise TfnasError(f"architecture has {len(arch.ops)} stages, the space {len(stages)}")
        for si, (ops, mids, blocks) in enumerate(zip(arch.ops, arch.mids, stages)):
            if not 1 <= len(ops) <= len(blocks) or len(mids) != len(ops):
                raise TfnasError(f"{STAGES[si][0]}: depth {len(ops)} (with {len(mids)} mids) is not in "
                                 f"1..{len(blocks)}")
            for b, op, mid in zip(blocks, ops, mids):
                if not 0 <= op < NUM_OPS:
                    raise TfnasError(f"{b.name}: operation {op} is not in 0..{NUM_OPS - 1}")
                if mid < 1:
                    raise TfnasError(f"{b.name}: mid width {mid} must be positive")

    def arch_blocks(self, arch: TfnasArch) -> list[tuple[BlockPos, int, int]]:
        """(position, op, mid) of every kept block."""
        self.check_arch(arch)
        return [(b, op, mid) for ops, mids, blocks in zip(arch.ops, arch.mids, self.stage_blocks())
                for b, op, mid in zip(blocks, ops, mids)]

    def reference_arch(self) -> TfnasArch:
        """The network a network-context table is anchored to (its ``net:reference`` entry): every block at
        op k3e6 (REFERENCE_OP) at its initial width, full depth."""
        return self.default_arch(REFERENCE_OP)

    def default_arch(self, op: int = 1) -> TfnasArch:
        """Every block at full depth with operation `op` at its initial width."""
        st = self.stage_blocks()
        return TfnasArch(tuple((op,) * len(bs) for bs in st), tuple(tuple(b.init_mid(op) for b in bs) for bs in st))

    def build_spec(self, arch: TfnasArch, *, dropout: float = 0.0, drop_connect: float = 0.0,
                   name: str | None = None) -> ArchSpec:
        """The concrete network of `arch`.  drop_connect as the original: rate * block_idx / block_count with
        block_count = 1 + kept searched blocks and the second stem as block 1 (only residual blocks use it)."""
        kept = self.arch_blocks(arch)
        count = 1 + len(kept)
        blocks = [Block("conv", (Conv(self.stem_channels, (3, 3), self.stem_stride, act="relu"),), name="first_stem"),
                  mbi_block(self.stem_channels, self.stem_channels, self.second_stem_se, self.second_stem_out, 1,
                            kernel=3, act="relu", drop_connect=drop_connect / count, name="second_stem")]
        stages, start, stage = [], len(blocks), 0
        for n, (b, op, mid) in enumerate(kept, start=2):
            if b.stage != stage:
                stages.append(Stage(STAGES[stage][0], start, len(blocks)))
                stage, start = b.stage, len(blocks)
            blocks.append(mbi_block(b.cin, mid, b.se(op), b.cout, b.stride, kernel=OPS[op].kernel, act=b.act,
                                    drop_connect=drop_connect * n / count, name=b.name))
        stages.append(Stage(STAGES[stage][0], start, len(blocks)))
        blocks.append(Block("conv", (Conv(self.feature_channels, (1, 1), act="swish"),), name="feature_mix"))
        meta = {"family": "tfnas", "space": self.name,
                "tfnas_ops": tuple(tuple(OP_NAMES[o] for o in s) for s in arch.ops), "tfnas_mids": arch.mids}
        spec = ArchSpec(name or f"{self.name}_arch", tuple(blocks), Head(self.num_classes, dropout=dropout),
                        (self.resolution, self.resolution), self.in_channels, tuple(stages), meta=meta)
        return validate(spec)

    def uniform_arch(self, fraction: float, op: int = 1, multiple: int = 1) -> TfnasArch:
        """Every block at full depth with `op`, its mid a `fraction` of its max width rounded to a multiple of
        `multiple` (at least one multiple, at most the max)."""
        st = self.stage_blocks()

        def mid(b: BlockPos) -> int:
            return min(b.max_mid(op), max(multiple, multiple * int(round(b.max_mid(op) * fraction / multiple))))
        return TfnasArch(tuple((op,) * len(bs) for bs in st), tuple(tuple(mid(b) for b in bs) for bs in st))


TFNAS_SPACES: dict[str, dict[str, Any]] = {
    # The original's ImageNet skeleton (224 px).
    "tfnas-224": {"name": "tfnas-224", "resolution": 224},
    # Small-input variant for 28-32 px inputs: stride-1 first stem (total stride 16), half width, a narrow
    # feature mix: a supernet that searches in minutes on two CPU cores.
    "tfnas-small": {"name": "tfnas-small", "resolution": 32, "small_input": True, "width": 0.5, "num_classes": 10,
                    "last_channels": 256},
}


def get_tfnas_space(name_or_dict: str | Mapping[str, Any] | TfnasSpace, **overrides: Any) -> TfnasSpace:
    """A built-in space by name, a dict (`TfnasSpace.to_dict()` form) or a TfnasSpace, with overrides."""
    if isinstance(name_or_dict, TfnasSpace):
        base = name_or_dict.to_dict()
    elif isinstance(name_or_dict, Mapping):
        base = dict(name_or_dict)
    else:
        if name_or_dict not in TFNAS_SPACES:
            import difflib
            hint = difflib.get_close_matches(str(name_or_dict), TFNAS_SPACES, n=1)
            raise TfnasError(f"unknown TF-NAS space {name_or_dict!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; built-in: {', '.join(TFNAS_SPACES)}")
        base = dict(TFNAS_SPACES[name_or_dict])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TfnasSpace.from_dict(base)


def tfnas_spec_blocks(spec: ArchSpec) -> list[tuple[int, Block, tuple[int, int, int]]]:
    """(index, block, input shape) of every block of a TF-NAS-shaped spec between the stems and the feature
    mix: the parts a latency table keys (the rest is the table's 'base')."""
    cost = analyze(spec)
    n = len(spec.blocks)
    if n < 3 or spec.blocks[0].kind != "conv" or spec.blocks[-1].kind != "conv" or spec.blocks[1].kind != "mbconv":
        raise TfnasError(f"{spec.name}: not a TF-NAS network (first stem conv, second stem MBConv, blocks, "
                         "feature-mix conv)")
    out = []
    for i in range(2, n - 1):
        b = spec.blocks[i]
        if b.kind != "mbconv":
            raise TfnasError(f"{spec.name} block {i} ({b.name or b.kind}): expected an MBInvertedResBlock")
        out.append((i, b, cost.blocks[i].in_shape))
    return out


def tfnas_block_key_and_mid(block: Block, in_shape: Sequence[int]) -> tuple[str, int]:
    """The original's table key of a concrete MBInvertedResBlock and its mid width."""
    layers = block.layers
    if len(layers) not in (2, 3) or not layers[-2].depthwise:
        raise TfnasError(f"block {block.name}: not an MBInvertedResBlock ([1x1] -> depthwise -> 1x1)")
    dw = layers[-2]
    h, w, cin = in_shape
    mid = layers[0].out if len(layers) == 3 else cin
    se = block.se.channels if block.se is not None else 0
    return tfnas_key(w, cin, se, layers[-1].out, dw.kernel[0], dw.stride, dw.act), mid


# ----------------------------------------------------------------------------------------------------
# Lookup tables
# ----------------------------------------------------------------------------------------------------

MID_SEP = ":mid"


def curve_arrays(points: Iterable[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(mids, ms) arrays of a key's (mid, ms) points, sorted by mid."""
    pts = sorted(points)
    return np.array([p[0] for p in pts], np.float64), np.array([p[1] for p in pts], np.float64)


class LutError(TfnasError):
    """A latency table that cannot serve a TF-NAS search (missing key, wrong device or batch, ...)."""


@dataclass
class TfnasLut:
    """base (ms) + {key: (sorted mids, ms)}; `fingerprint`/`meta` describe where it was measured."""

    base: float
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_table(cls, table: Any, stat: str = "median") -> "TfnasLut":
        """From a `latency.LatencyTable`-like object (``.entries``, ``.ms(key, stat)``, ``.meta``)."""
        entries = getattr(table, "entries", None)
        if entries is None or "base" not in entries:
            raise LutError("the latency table has no 'base' entry: it is not a TF-NAS table (import the "
                           "original's pickle with `latency.import_tfnas_pkl` or build one for the space)")
        points: dict[str, list[tuple[int, float]]] = {}
        for name in entries:
            key, sep, mid = name.rpartition(MID_SEP)
            if sep and mid.isdigit():
                points.setdefault(key, []).append((int(mid), float(table.ms(name, stat))))
        return cls(float(table.ms("base", stat)), {key: curve_arrays(pts) for key, pts in points.items()},
                   dict(getattr(table, "fingerprint", {}) or {}), dict(getattr(table, "meta", {}) or {}))

    @classmethod
    def load(cls, path: str | Path, stat: str = "median", *, device: str = "unknown",
             batch_size: int | None = None) -> "TfnasLut":
        """From a file: the original's pickle (imported with `import_tfnas_pkl`, tagged with `device` and
        `batch_size`) or a latency-table JSON (an imported or built TF-NAS table)."""
        from .imports import import_tfnas_pkl
        from .table import LatencyTable

        path = Path(path)
        if path.suffix.lower() in (".pkl", ".pickle"):
            table = import_tfnas_pkl(path, device=device, batch_size=batch_size)
        else:
            table = LatencyTable.load(path)
        return cls.from_table(table, stat)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "TfnasLut":
        """From the original's dict form {'base': ms, key: {mid: ms}}."""
        return cls(float(raw["base"]), {key: curve_arrays((int(m), float(ms)) for m, ms in val.items())
                                        for key, val in raw.items() if key != "base"})

    def scaled(self, factor: float) -> "TfnasLut":
        """Every latency (base and curves) times `factor`: the table on a machine `factor` times slower."""
        curves = {k: (xs, ys * float(factor)) for k, (xs, ys) in self.curves.items()}
        return TfnasLut(self.base * float(factor), curves, dict(self.fingerprint),
                        {**self.meta, "scaled_by": float(factor)})

    # ------------------------------------------------------------------ lookups
    def __contains__(self, key: str) -> bool:
        return key in self.curves

    def require(self, keys: Iterable[str], ranges: Mapping[str, tuple[int, int]] | None = None) -> None:
        """Raise LutError naming the first key the table lacks (or whose mids do not span `ranges`)."""
        for k in keys:
            if k not in self.curves:
                raise LutError(f"the latency table has no entry for {k!r} (the space needs it: build the table for "
                               "this space, or use a table of the same skeleton and input size)")
            if ranges is not None and k in ranges:
                xs = self.curves[k][0]
                lo, hi = ranges[k]
                if len(xs) < 2 and not (len(xs) == 1 and xs[0] == lo == hi):
                    raise LutError(f"the latency table's entry {k!r} has {len(xs)} measured mid(s); "
                                   "interpolation needs two")
                if xs[0] > lo or xs[-1] < hi:
                    raise LutError(f"the latency table's entry {k!r} covers mids {int(xs[0])}..{int(xs[-1])} but "
                                   f"the space needs {lo}..{hi}")

    def ms(self, key: str, mid: float) -> float:
        """Latency of `key` at `mid` channels: exact at a measured mid, else linear between neighbours."""
        try:
            xs, ys = self.curves[key]
        except KeyError:
            raise LutError(f"the latency table has no entry for {key!r}") from None
        return float(interp_extrapolate(xs, ys, float(mid)))

    def arrays(self, space: TfnasSpace) -> tuple[np.ndarray, np.ndarray]:
        """(xs, ys) of shape (blocks, ops, G): each block-op's curve padded to a common length G with
        points beyond its last mid on its last segment's line (so `interp_jnp` matches `ms` inside and
        extrapolates above it), for the jitted, differentiable lookup."""
        curves = [[self.curves[b.key(op)] for op in range(NUM_OPS)] for b in space.blocks()]
        g = max(len(c[0]) for row in curves for c in row)
        xs = np.zeros((len(curves), NUM_OPS, g + 1), np.float32)
        ys = np.zeros_like(xs)
        for i, row in enumerate(curves):
            for k, (x, y) in enumerate(row):
                n = len(x)
                slope = (y[-1] - y[-2]) / (x[-1] - x[-2]) if n > 1 else 0.0
                pad = x[-1] + 1.0e6 * np.arange(1, g + 2 - n)
                xs[i, k] = np.concatenate([x, pad])
                ys[i, k] = np.concatenate([y, y[-1] + slope * (pad - x[-1])])
        return xs, ys

    # ------------------------------------------------------------------ networks
    def arch_latency(self, space: TfnasSpace, arch: TfnasArch) -> float:
        """base + Σ table[key(block)][mid(block)] of a parsed architecture (the original's get_lookup_latency)."""
        return self.base + sum(self.ms(b.key(op), mid) for b, op, mid in space.arch_blocks(arch))

