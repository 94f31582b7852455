"""Architecture spec: the one currency of jaxnas.

An `ArchSpec` is a small, immutable, JSON-serialisable description of a concrete CNN.  Every block is
the same shape of graph: a chain of `Conv` layers (each conv -> optional BN -> activation), an optional
squeeze-and-excitation after one of them, an optional shortcut (identity or a projection conv) added to
the chain's output, and an activation after the add.  That one shape covers plain convs, VGG convs,
MBConv / inverted residuals (+SE), ResNet basic and bottleneck blocks, and the arbitrary merged convs
(large kernels, asymmetric padding, bias, no BN) that depth compression produces.  Pooling is a block
with no layers.

Padding follows PyTorch: explicit (top, bottom), (left, right) amounts; `None` means k // 2 on every
side.  MACs count multiply-accumulates of convs and dense layers (the convention of all five papers).
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from jaxnas.errors import UserError

ACTIVATIONS = ("relu", "relu6", "identity", "swish", "hswish", "sigmoid")
SE_GATES = ("sigmoid", "hsigmoid")
HEAD_POOLS = ("global", "adaptive7")
BLOCK_KINDS = ("conv", "vgg", "mbconv", "basic", "bottleneck", "merged", "maxpool", "avgpool", "choice")
SCHEMA_VERSION = 1
MAX_SPEC_BYTES = 16 << 20  # a spec is a few KB; refuse anything that cannot be one before reading it

Padding = tuple[tuple[int, int], tuple[int, int]]


class SpecError(UserError, ValueError):
    """An architecture spec that cannot describe a working network."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """TF-slim channel rounding: nearest multiple of `divisor`, at least `min_value`, never < 0.9x."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    # No coercion: a value that is not an int (or a pair of them) stays as given, for `validate` to name.
    if isinstance(v, (list, tuple)):
        return tuple(v)  # type: ignore[return-value]
    return (v, v)


@dataclass(frozen=True)
class Conv:
    """One conv -> (BN) -> activation layer.

    `depthwise=True` means groups == input channels == output channels.  `width` names an elastic
    width group (a supernet masks this layer's output channels with `choices['masks'][width]`);
    `act_slot` names an activation a supernet can switch to identity with `choices['acts'][act_slot]`.
    """

    out: int
    kernel: tuple[int, int] = (3, 3)
    stride: int = 1
    padding: Padding | None = None
    depthwise: bool = False
    act: str = "relu"
    norm: bool = True
    bias: bool = False
    width: str | None = None
    act_slot: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "kernel", _pair(self.kernel))
        if self.padding is not None:
            p = self.padding
            if _is_int(p):
                p = ((p, p), (p, p))
            if isinstance(p, (list, tuple)) and len(p) == 2:
                p = (_pair(p[0]), _pair(p[1]))
            object.__setattr__(self, "padding", p)

    @property
    def pads(self) -> Padding:
        if self.padding is not None:
            return self.padding
        kh, kw = self.kernel
        return ((kh // 2, kh // 2), (kw // 2, kw // 2))


@dataclass(frozen=True)
class SE:
    """Squeeze-and-excitation after layer `after`: GAP -> 1x1 (bias) -> act -> 1x1 (bias) -> gate."""

    channels: int
    after: int = 1
    act: str = "relu"
    gate: str = "sigmoid"


@dataclass(frozen=True)
class Pool:
    kernel: int = 2
    stride: int = 2
    padding: int = 0


@dataclass(frozen=True)
class Block:
    """A chain of convs with optional SE, shortcut and post-add activation, or a pooling layer.

    shortcut: None, "identity", or a `Conv` (projection applied to the block input).  With
    `crop_shortcut` an identity shortcut larger than the chain output is centre-cropped (used when
    depth compression moves all padding of a merged segment to its first conv).
    `choice`: for op-choice supernets (kind "choice"), the candidate blocks; the block's own layers are
    then empty and `choices['ops'][name]` weighs the candidates.
    `drop_connect`: in training, drop the chain's output per example with this probability (scaling the
    kept ones by 1 / (1 - p)) before the shortcut is added (EfficientNet / TF-NAS "drop connect"); needs a
    shortcut; identity at inference.
    """

    kind: str
    layers: tuple[Conv, ...] = ()
    shortcut: Conv | str | None = None
    se: SE | None = None
    post_act: str = "identity"
    pool: Pool | None = None
    crop_shortcut: bool = False
    name: str | None = None
    candidates: tuple["Block", ...] = ()
    drop_connect: float = 0.0


@dataclass(frozen=True)
class Head:
    """Classifier: pooling, optional hidden dense layers (ReLU + dropout), final dense layer.

    pool "global": global average pool.  pool "adaptive7": PyTorch AdaptiveAvgPool2d(7) + flatten
    (VGG's classifier).  `num_classes=0` means no head: the network outputs its last feature map
    (used to export and time single blocks).
    """

    num_classes: int = 1000
    pool: str = "global"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0


@dataclass(frozen=True)
class Stage:
    """A named run of blocks [start, end) whose depth a supernet may choose (sink connecting)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class ArchSpec:
    name: str
    blocks: tuple[Block, ...]
    head: Head = Head()
    input_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    stages: tuple[Stage, ...] = ()
    meta: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "input_size", _pair(self.input_size))
        if isinstance(self.meta, dict):
            object.__setattr__(self, "meta", tuple(sorted(self.meta.items())))

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.meta)

    def replace(self, **kw) -> "ArchSpec":
        return dataclasses.replace(self, **kw)

    def with_input(self, resolution: int | tuple[int, int] | None = None,
                   num_classes: int | None = None, in_channels: int | None = None) -> "ArchSpec":
        head = None if num_classes is None else dataclasses.replace(self.head, num_classes=num_classes)
        kw = {"input_size": resolution, "head": head, "in_channels": in_channels}  # __post_init__ pairs input_size
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(to_dict(self), indent=indent)

    @staticmethod
    def from_json(text: str) -> "ArchSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"arch spec is not valid JSON ({e}); write it with ArchSpec.to_json") from None
        return from_dict(data)

    def save(self, path) -> None:
        from jaxnas.io_utils import atomic_write_text
        atomic_write_text(path, self.to_json())

    @staticmethod
    def load(path) -> "ArchSpec":
        import pathlib
        p = pathlib.Path(path)
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            raise SpecError(f"arch spec file {p} {what}; pass a model name or an arch.json path")
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{p}: {p.stat().st_size} bytes is not an arch spec (the limit is {MAX_SPEC_BYTES})")
        try:
            return ArchSpec.from_json(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise SpecError(f"{p} is not a JSON text file ({e.reason}); pass an arch.json") from None


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------

def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):  # fields at their defaults are left out, except the ones always written
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) != f.default or f.name in ("out", "kind", "name", "blocks")}
    if isinstance(obj, tuple):
        return [_encode(v) for v in obj]
    return obj


def to_dict(spec: ArchSpec) -> dict:
    return {**_encode(spec), "schema_version": SCHEMA_VERSION, "meta": dict(spec.meta)}


def _tuplify(v):
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _show(v: Any) -> str:
    """A value as the JSON the user wrote (true, not True)."""
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(v), _show(v))


def _known(cls, d: Any, where: str) -> dict:
    """`d` as the keyword arguments of `cls`: an object with known fields and the required ones present."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected an object, got {_kind(d)}")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(d) - names)
    if unknown:
        import difflib
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        raise SpecError(f"{where}.{unknown[0]}: unknown field" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in d:
            raise SpecError(f"{where}: missing field '{f.name}'")
    return d


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise SpecError(f"{where}: expected a list, got {_kind(v)}")
    return v


def _conv_from(d: dict, where: str) -> Conv:
    return Conv(**{k: _tuplify(v) for k, v in _known(Conv, d, where).items()})  # as `from_dict` reads the head


def _block_from(d: dict, where: str) -> Block:
    d = dict(_known(Block, d, where))
    d["layers"] = tuple(_conv_from(c, f"{where}.layers[{j}]")
                        for j, c in enumerate(_list(d.get("layers", []), f"{where}.layers")))
    sc = d.get("shortcut")
    if isinstance(sc, dict):
        d["shortcut"] = _conv_from(sc, f"{where}.shortcut")
    if d.get("se") is not None:
        d["se"] = SE(**_known(SE, d["se"], f"{where}.se"))
    if d.get("pool") is not None:
        d["pool"] = Pool(**_known(Pool, d["pool"], f"{where}.pool"))
    d["candidates"] = tuple(_block_from(c, f"{where}.candidates[{j}]")
                            for j, c in enumerate(_list(d.get("candidates", []), f"{where}.candidates")))
    return Block(**d)


def from_dict(data: Any) -> ArchSpec:
    """An `ArchSpec` from its JSON object; every field's type and range is checked (`validate`), and an
    error names the field's path (``blocks[3].layers[0].out: must be an integer >= 1, got true``)."""
    if not isinstance(data, dict):
        raise SpecError(f"arch spec: the top level must be a JSON object with 'name' and 'blocks', got {_kind(data)}")
    data = dict(data)
    version = data.pop("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SpecError(f"arch spec schema_version {_show(version)} is not supported (this jaxnas reads "
                        f"{SCHEMA_VERSION})")
    data = _known(ArchSpec, data, "spec")
    blocks = tuple(_block_from(b, f"blocks[{i}]") for i, b in enumerate(_list(data["blocks"], "blocks")))
    head = Head(**{k: _tuplify(v) for k, v in _known(Head, data.get("head", {}), "head").items()})
    stages = tuple(Stage(**_known(Stage, s, f"stages[{i}]"))
                   for i, s in enumerate(_list(data.get("stages", []), "stages")))
    meta = data.get("meta", {}) or {}
    if not isinstance(meta, dict):
        raise SpecError(f"meta: expected an object, got {_kind(meta)}")
    spec = ArchSpec(name=data["name"], blocks=blocks, head=head,
                    input_size=_tuplify(data.get("input_size", (224, 224))),
                    in_channels=data.get("in_channels", 3), stages=stages,
                    meta=tuple(sorted((k, _tuplify(v)) for k, v in meta.items())))
    validate(spec)
    return spec


# ----------------------------------------------------------------------------------------------------
# Field types: every number a network is built from is an integer in range (not a bool, not 8.5).
# ----------------------------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(v: Any, where: str, lo: int = 1) -> None:
    if not _is_int(v) or v < lo:
        raise SpecError(f"{where}: must be an integer >= {lo}, got {_show(v)}")


def _int_pair(v: Any, where: str, lo: int = 1) -> None:
    if not (isinstance(v, tuple) and len(v) == 2):
        raise SpecError(f"{where}: must be an integer >= {lo} or a pair of them, got {_show(v)}")
    for k, x in enumerate(v):
        _int(x, f"{where}[{k}]", lo)


def _choice(v: Any, where: str, choices: Sequence[str], what: str) -> None:
    if not isinstance(v, str) or v not in choices:
        raise SpecError(f"{where}: unknown {what} {_show(v)} (one of {', '.join(choices)})")


def _flag(v: Any, where: str) -> None:
    if not isinstance(v, bool):
        raise SpecError(f"{where}: must be true or false, got {_show(v)}")


def _opt_str(v: Any, where: str) -> None:
    if v is not None and not isinstance(v, str):
        raise SpecError(f"{where}: must be a string or null, got {_show(v)}")


def _check_conv(c: Any, where: str) -> None:
    if not isinstance(c, Conv):
        raise SpecError(f"{where}: expected a conv, got {_show(c)}")
    _int(c.out, f"{where}.out")
    _int_pair(c.kernel, f"{where}.kernel")
    _int(c.stride, f"{where}.stride")
    if c.padding is not None:
        p = c.padding
        if not (isinstance(p, tuple) and len(p) == 2):
            raise SpecError(f"{where}.padding: must be null, an integer >= 0 or [[top, bottom], [left, right]], "
                            f"got {_show(p)}")
        for k, side in enumerate(p):
            _int_pair(side, f"{where}.padding[{k}]", 0)
    for name in ("depthwise", "norm", "bias"):
        _flag(getattr(c, name), f"{where}.{name}")
    _choice(c.act, f"{where}.act", ACTIVATIONS, "activation")
    _opt_str(c.width, f"{where}.width")
    _opt_str(c.act_slot, f"{where}.act_slot")


def _check_block(b: Any, where: str) -> None:
    if not isinstance(b, Block):
        raise SpecError(f"{where}: expected a block, got {_show(b)}")
    _choice(b.kind, f"{where}.kind", BLOCK_KINDS, "block kind")
    if not isinstance(b.layers, tuple):
        raise SpecError(f"{where}.layers: expected a list of convs, got {_show(b.layers)}")
    for j, c in enumerate(b.layers):
        _check_conv(c, f"{where}.layers[{j}]")
    if isinstance(b.shortcut, Conv):
        _check_conv(b.shortcut, f"{where}.shortcut")
    elif b.shortcut not in (None, "identity"):
        raise SpecError(f"{where}.shortcut: must be null, \"identity\" or a conv, got {_show(b.shortcut)}")
    if b.se is not None:
        if not isinstance(b.se, SE):
            raise SpecError(f"{where}.se: expected an object, got {_show(b.se)}")
        _int(b.se.channels, f"{where}.se.channels")
        _int(b.se.after, f"{where}.se.after", 0)
        _choice(b.se.act, f"{where}.se.act", ACTIVATIONS, "activation")
        _choice(b.se.gate, f"{where}.se.gate", SE_GATES, "gate")
    _choice(b.post_act, f"{where}.post_act", ACTIVATIONS, "activation")
    if b.pool is not None:
        if not isinstance(b.pool, Pool):
            raise SpecError(f"{where}.pool: expected an object, got {_show(b.pool)}")
        _int(b.pool.kernel, f"{where}.pool.kernel")
        _int(b.pool.stride, f"{where}.pool.stride")
        _int(b.pool.padding, f"{where}.pool.padding", 0)
    _flag(b.crop_shortcut, f"{where}.crop_shortcut")
    _opt_str(b.name, f"{where}.name")
    for j, c in enumerate(b.candidates):
        _check_block(c, f"{where}.candidates[{j}]")


def check_fields(spec: ArchSpec) -> ArchSpec:
    """Every field of `spec` has its type and range (raises SpecError naming the field's path)."""
    if not isinstance(spec.name, str) or not spec.name:
        raise SpecError(f"name: must be a non-empty string, got {_show(spec.name)}")
    _int_pair(spec.input_size, "input_size")
    _int(spec.in_channels, "in_channels")
    if not isinstance(spec.blocks, tuple) or not spec.blocks:
        raise SpecError("blocks: a spec needs at least one block")
    for i, b in enumerate(spec.blocks):
        _check_block(b, f"blocks[{i}]")
    h = spec.head
    _int(h.num_classes, "head.num_classes", 0)
    _choice(h.pool, "head.pool", HEAD_POOLS, "pool")
    if not isinstance(h.hidden, tuple):
        raise SpecError(f"head.hidden: must be a list of integers >= 1, got {_show(h.hidden)}")
    for k, width in enumerate(h.hidden):
        _int(width, f"head.hidden[{k}]")
    if isinstance(h.dropout, bool) or not isinstance(h.dropout, numbers.Real) or not 0 <= h.dropout < 1:
        raise SpecError(f"head.dropout: must be a number in [0, 1), got {_show(h.dropout)}")
    for i, st in enumerate(spec.stages):
        if not isinstance(st.name, str):
            raise SpecError(f"stages[{i}].name: must be a string, got {_show(st.name)}")
        _int(st.start, f"stages[{i}].start", 0)
        _int(st.end, f"stages[{i}].end", 0)
    return spec


# ----------------------------------------------------------------------------------------------------
# Shapes, validation, cost
# ----------------------------------------------------------------------------------------------------

def conv_out_hw(hw: tuple[int, int], conv: Conv) -> tuple[int, int]:
    (pt, pb), (pl, pr) = conv.pads
    kh, kw = conv.kernel
    h = (hw[0] + pt + pb - kh) // conv.stride + 1
    w = (hw[1] + pl + pr - kw) // conv.stride + 1
    return h, w


def pool_out_hw(hw: tuple[int, int], pool: Pool) -> tuple[int, int]:
    return tuple((s + 2 * pool.padding - pool.kernel) // pool.stride + 1 for s in hw)


@dataclass(frozen=True)
class LayerCost:
    name: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    macs: int
    params: int


@dataclass(frozen=True)
class BlockCost:
    index: int
    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    macs: int
    params: int
    layers: tuple[LayerCost, ...] = field(default=())


def conv_cost(conv: Conv, in_shape: tuple[int, int, int], name: str = "conv") -> LayerCost:
    h, w, cin = in_shape
    if conv.depthwise and conv.out != cin:
        raise SpecError(f"{name}: depthwise conv needs out == in channels ({conv.out} != {cin})")
    ho, wo = conv_out_hw((h, w), conv)
    if ho < 1 or wo < 1:
        raise SpecError(f"{name}: input {h}x{w} is too small for kernel {conv.kernel} stride {conv.stride}; "
                        "use a larger --resolution or the small-input variant")
    kh, kw = conv.kernel
    per_out = kh * kw * (1 if conv.depthwise else cin)
    weights = per_out * conv.out
    params = weights + (conv.out if conv.bias else 0) + (2 * conv.out if conv.norm else 0)
    return LayerCost(name, in_shape, (ho, wo, conv.out), ho * wo * conv.out * per_out, params)


def _block_layers_cost(block: Block, in_shape, where: str) -> list[LayerCost]:
    costs = []
    shape = in_shape
    for j, conv in enumerate(block.layers):
        c = conv_cost(conv, shape, f"{where}.conv{j}")
        costs.append(c)
        shape = c.out_shape
        if block.se is not None and block.se.after == j:
            ch = shape[2]
            p = ch * block.se.channels * 2 + block.se.channels + ch
            costs.append(LayerCost(f"{where}.se", shape, shape, ch * block.se.channels * 2, p))
    return costs


def block_cost(block: Block, in_shape: tuple[int, int, int], index: int = 0) -> BlockCost:
    where = f"blocks[{index}]"
    if block.kind not in BLOCK_KINDS:
        raise SpecError(f"{where}: unknown block kind '{block.kind}' (one of {', '.join(BLOCK_KINDS)})")
    if block.kind in ("maxpool", "avgpool"):
        if block.pool is None:
            raise SpecError(f"{where}: a {block.kind} block needs 'pool'")
        hw = pool_out_hw(in_shape[:2], block.pool)
        if min(hw) < 1:
            raise SpecError(f"{where}: input {in_shape[:2]} too small for pooling")
        out = (*hw, in_shape[2])
        return BlockCost(index, block.kind, in_shape, out, 0, 0)
    if block.kind == "choice":
        if not block.candidates:
            raise SpecError(f"{where}: a choice block needs candidates")
        costs = [block_cost(c, in_shape, index) for c in block.candidates]
        if len({c.out_shape for c in costs}) != 1:
            raise SpecError(f"{where}: choice candidates have different output shapes "
                            f"{sorted({c.out_shape for c in costs})}")
        # A choice block's cost is that of its largest candidate (the supernet's upper bound).
        big = max(costs, key=lambda c: c.macs)
        return BlockCost(index, "choice", in_shape, big.out_shape, big.macs, sum(c.params for c in costs))
    if not block.layers:
        raise SpecError(f"{where}: a {block.kind} block needs at least one conv layer")
    for conv in block.layers + ((block.shortcut,) if isinstance(block.shortcut, Conv) else ()):
        if conv.act not in ACTIVATIONS:
            raise SpecError(f"{where}: unknown activation '{conv.act}' (one of {', '.join(ACTIVATIONS)})")
        if conv.out < 1 or min(conv.kernel) < 1 or conv.stride < 1:
            raise SpecError(f"{where}: channels, kernel and stride must be positive")
    if block.post_act not in ACTIVATIONS:
        raise SpecError(f"{where}: unknown post_act '{block.post_act}'")
    if block.se is not None and not 0 <= block.se.after < len(block.layers):
        raise SpecError(f"{where}: se.after={block.se.after} is not a layer index")
    if block.se is not None and block.se.act not in ACTIVATIONS:
        raise SpecError(f"{where}: unknown SE activation '{block.se.act}' (one of {', '.join(ACTIVATIONS)})")
    if not 0.0 <= block.drop_connect < 1.0:
        raise SpecError(f"{where}: drop_connect must be in [0, 1), got {block.drop_connect}")
    if block.drop_connect and block.shortcut is None:
        raise SpecError(f"{where}: drop_connect drops the residual branch and needs a shortcut")
    layers = _block_layers_cost(block, in_shape, where)
    out = layers[-1].out_shape
    if block.shortcut == "identity":
        ok = in_shape[2] == out[2] and (in_shape[:2] == out[:2] or (
            block.crop_shortcut and all(i >= o and (i - o) % 2 == 0 for i, o in zip(in_shape[:2], out[:2]))))
        if not ok:
            raise SpecError(f"{where}: identity shortcut cannot add input {in_shape} to output {out}; "
                            "use a projection shortcut (a Conv) or matching channels/stride")
    elif isinstance(block.shortcut, Conv):
        sc = conv_cost(block.shortcut, in_shape, f"{where}.shortcut")
        if sc.out_shape != out:
            raise SpecError(f"{where}: projection shortcut gives {sc.out_shape} but the block gives {out}")
        layers.append(sc)
    elif block.shortcut is not None:
        raise SpecError(f"{where}: shortcut must be null, 'identity' or a conv")
    return BlockCost(index, block.kind, in_shape, out, sum(c.macs for c in layers),
                     sum(c.params for c in layers), tuple(layers))


def head_cost(head: Head, in_shape: tuple[int, int, int]) -> LayerCost:
    if head.num_classes == 0:
        return LayerCost("head", in_shape, in_shape, 0, 0)
    feat = in_shape[2] * (49 if head.pool == "adaptive7" else 1)
    if head.pool not in HEAD_POOLS:
        raise SpecError(f"head: unknown pool '{head.pool}' (global or adaptive7)")
    macs = params = 0
    for width in (*head.hidden, head.num_classes):
        macs += feat * width
        params += feat * width + width
        feat = width
    return LayerCost("head", in_shape, (1, 1, head.num_classes), macs, params)


@dataclass(frozen=True)
class SpecCost:
    macs: int
    params: int
    blocks: tuple[BlockCost, ...]
    head: LayerCost

    def table(self) -> list[dict]:
        rows = [(b.index, b.kind, b) for b in self.blocks] + [(len(self.blocks), "head", self.head)]
        return [dict(index=i, kind=kind, in_shape=list(c.in_shape), out_shape=list(c.out_shape), macs=c.macs,
                     params=c.params) for i, kind, c in rows]


def analyze(spec: ArchSpec) -> SpecCost:
    """Shapes, MACs and parameters of every block; raises SpecError on any inconsistency."""
    shape = (*spec.input_size, spec.in_channels)
    costs = []
    for i, block in enumerate(spec.blocks):
        c = block_cost(block, shape, i)
        costs.append(c)
        shape = c.out_shape
    head = head_cost(spec.head, shape)
    for s in spec.stages:
        if not 0 <= s.start < s.end <= len(spec.blocks):
            raise SpecError(f"stage {s.name}: block range [{s.start}, {s.end}) is outside the network")
    return SpecCost(sum(c.macs for c in costs) + head.macs, sum(c.params for c in costs) + head.params,
                    tuple(costs), head)


def validate(spec: ArchSpec) -> ArchSpec:
    """Field types and ranges (`check_fields`), then shapes and costs (`analyze`); raises SpecError."""
    if not spec.blocks:
        raise SpecError("spec has no blocks")
    check_fields(spec)
    analyze(spec)
    return spec


def macs(spec: ArchSpec) -> int:
    return analyze(spec).macs


def params(spec: ArchSpec) -> int:
    return analyze(spec).params


def iter_convs(spec: ArchSpec) -> Iterator[tuple[int, int, Conv]]:
    """(block index, layer index, conv) for every chain conv (not shortcuts)."""
    for i, b in enumerate(spec.blocks):
        for j, c in enumerate(b.layers):
            yield i, j, c
