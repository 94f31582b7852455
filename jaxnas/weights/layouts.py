"""Where each tensor of a torchvision / timm state dict goes in a jaxnas zoo model, and how it is laid out.

The map is written out per family from the zoo spec (so it always covers exactly the spec's variables):

* conv ``W[o, i, kh, kw]`` (OIHW) -> ``block{b}/conv{j}/kernel[kh, kw, i, o]`` (HWIO); a depthwise conv's
  ``(C, 1, kh, kw)`` becomes ``(kh, kw, 1, C)`` by the same transpose;
* BatchNorm ``weight, bias`` -> ``.../bn/{scale, bias}``; ``running_mean, running_var`` -> batch_stats
  ``.../bn/{mean, var}`` (eps 1e-5, PyTorch's default for both libraries); ``num_batches_tracked`` is
  training bookkeeping, accepted when present and not needed;
* Linear ``W[o, i]`` -> ``head/.../kernel[i, o]``.  VGG's first classifier layer reads the 512x7x7 map
  flattened channel-major (NCHW); jaxnas flattens NHWC, so its rows are permuted accordingly.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Iterator, Mapping

import numpy as np

from jaxnas.spec import ArchSpec, make_divisible
from jaxnas.weights.errors import WeightsError

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default; torchvision and timm keep it for these models


@dataclasses.dataclass(frozen=True)
class SourceModel:
    """A model as its source library names it, and the jaxnas zoo model with the same function."""

    name: str                  # 'mobilenet_v2', 'resnet50', 'mobilenetv2_140', ...
    layout: str                # 'torchvision' | 'timm' (the state dict's key names)
    zoo: str                   # jaxnas zoo name
    width: float | None = None  # fixed by the name (timm), or None: --width (torchvision mobilenet_v2)


TIMM_MBV2_WIDTHS = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}

SOURCE_MODELS: dict[str, SourceModel] = {
    "mobilenet_v2": SourceModel("mobilenet_v2", "torchvision", "mobilenet_v2"),
    # timm's resnet18/34/50 use the same keys and the same (v1.5: stride in the 3x3) blocks.
    "resnet18": SourceModel("resnet18", "torchvision", "resnet18", 1.0),
    "resnet34": SourceModel("resnet34", "torchvision", "resnet34", 1.0),
    "resnet50": SourceModel("resnet50", "torchvision", "resnet50", 1.0),
    "vgg19_bn": SourceModel("vgg19_bn", "torchvision", "vgg19_bn", 1.0),
    **{f"mobilenetv2_{k}": SourceModel(f"mobilenetv2_{k}", "timm", "mobilenet_v2", w)
       for k, w in TIMM_MBV2_WIDTHS.items()},
}

NOT_SUPPORTED = dict.fromkeys(("mobilenetv2_110d", "mobilenetv2_120d"),
                              "timm's 110d/120d change the depth and fix the stem/head widths, which the zoo's "
                              "mobilenet_v2 does not express")


def resolve_model(name: str, width: float | None = None) -> tuple[SourceModel, float]:
    """(source model, width) for a model name as torchvision / timm spell it.

    A timm pretrained tag or hub prefix is dropped (``timm/mobilenetv2_140.ra_in1k`` -> mobilenetv2_140).
    """
    base = name.split("/", 1)[1] if name.startswith("timm/") else name
    base = base.split(".", 1)[0].lower().replace("-", "_")
    if base in NOT_SUPPORTED:
        raise WeightsError(f"--model {name}: not supported ({NOT_SUPPORTED[base]}); supported: "
                           f"{', '.join(SOURCE_MODELS)}")
    if base not in SOURCE_MODELS:
        hint = difflib.get_close_matches(base, SOURCE_MODELS, n=1)
        raise WeightsError(f"--model {name}: unknown" + (f" (did you mean {hint[0]}?)" if hint else "")
                           + f"; supported: {', '.join(SOURCE_MODELS)} (torchvision / timm names)")
    src = SOURCE_MODELS[base]
    if src.width is None:
        w = 1.0 if width is None else float(width)
        if w <= 0:
            raise WeightsError(f"--width must be > 0, got {width}")
        return src, w
    if width is not None and abs(float(width) - src.width) > 1e-9:
        raise WeightsError(f"--width {width:g} does not apply to {src.name} (its width is {src.width:g}); "
                           "drop --width" + (" or pick the timm name with that width" if src.layout == "timm" else ""))
    return src, src.width


# ---------------------------------------------------------------------------------------- the map

@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One state dict tensor: its key, its jaxnas variable path, and how it is laid out."""

    key: str
    path: tuple[str, ...] | None   # ('params', 'block0', 'conv0', 'kernel'); None: not needed (counter)
    kind: str                      # 'conv' | 'dense' | 'dense_nchw' | 'vector' | 'counter'

    @property
    def optional(self) -> bool:
        return self.kind == "counter"


def _conv(jax_prefix: tuple[str, ...], conv_key: str, bn_key: str | None, bias: bool) -> Iterator[TensorMap]:
    yield TensorMap(f"{conv_key}.weight", ("params", *jax_prefix, "kernel"), "conv")
    if bias:
        yield TensorMap(f"{conv_key}.bias", ("params", *jax_prefix, "bias"), "vector")
    if bn_key is not None:
        bn = (*jax_prefix, "bn")
        yield TensorMap(f"{bn_key}.weight", ("params", *bn, "scale"), "vector")
        yield TensorMap(f"{bn_key}.bias", ("params", *bn, "bias"), "vector")
        yield TensorMap(f"{bn_key}.running_mean", ("batch_stats", *bn, "mean"), "vector")
        yield TensorMap(f"{bn_key}.running_var", ("batch_stats", *bn, "var"), "vector")
        yield TensorMap(f"{bn_key}.num_batches_tracked", None, "counter")


def _dense(jax_name: str, key: str, kind: str = "dense") -> Iterator[TensorMap]:
    yield TensorMap(f"{key}.weight", ("params", "head", jax_name, "kernel"), kind)
    yield TensorMap(f"{key}.bias", ("params", "head", jax_name, "bias"), "vector")


def _stage_of(spec: ArchSpec) -> dict[int, tuple[int, int]]:
    """Block index -> (stage number from 0, position in the stage)."""
    return {i: (s, i - st.start) for s, st in enumerate(spec.stages) for i in range(st.start, st.end)}


def _mbv2_torchvision(spec: ArchSpec) -> Iterator[TensorMap]:
    last = len(spec.blocks) - 1
    for i, block in enumerate(spec.blocks):
        if i in (0, last):                    # stem / last 1x1: Conv2dNormActivation = [conv, bn, act]
            yield from _conv((f"block{i}", "conv0"), f"features.{i}.0", f"features.{i}.1", False)
            continue
        f = f"features.{i}.conv"               # InvertedResidual.conv: [ConvBNAct]*(n-1), conv, bn
        n = len(block.layers)
        for j in range(n - 1):
            yield from _conv((f"block{i}", f"conv{j}"), f"{f}.{j}.0", f"{f}.{j}.1", False)
        yield from _conv((f"block{i}", f"conv{n - 1}"), f"{f}.{n - 1}", f"{f}.{n}", False)
    yield from _dense("classifier", "classifier.1")


def _mbv2_timm(spec: ArchSpec) -> Iterator[TensorMap]:
    stage = _stage_of(spec)
    last = len(spec.blocks) - 1
    for i, block in enumerate(spec.blocks):
        if i == 0:
            yield from _conv(("block0", "conv0"), "conv_stem", "bn1", False)
        elif i == last:
            yield from _conv((f"block{i}", "conv0"), "conv_head", "bn2", False)
        else:
            s, k = stage[i]
            names = ("conv_dw", "conv_pw") if len(block.layers) == 2 else ("conv_pw", "conv_dw", "conv_pwl")
            for j, name in enumerate(names):    # DepthwiseSeparableConv / InvertedResidual: bn1, bn2, bn3
                yield from _conv((f"block{i}", f"conv{j}"), f"blocks.{s}.{k}.{name}", f"blocks.{s}.{k}.bn{j + 1}",
                                 False)
    yield from _dense("classifier", "classifier")


def _resnet(spec: ArchSpec) -> Iterator[TensorMap]:
    stage = _stage_of(spec)
    for i, block in enumerate(spec.blocks):
        if block.kind in ("maxpool", "avgpool"):
            continue
        if i not in stage:                     # the stem
            yield from _conv((f"block{i}", "conv0"), "conv1", "bn1", False)
            continue
        s, k = stage[i]
        p = f"layer{s + 1}.{k}"
        for j in range(len(block.layers)):
            yield from _conv((f"block{i}", f"conv{j}"), f"{p}.conv{j + 1}", f"{p}.bn{j + 1}", False)
        if block.shortcut not in (None, "identity"):
            yield from _conv((f"block{i}", "shortcut"), f"{p}.downsample.0", f"{p}.downsample.1", False)
    yield from _dense("classifier", "fc")


def _vgg(spec: ArchSpec) -> Iterator[TensorMap]:
    idx = 0                                    # nn.Sequential index: conv, bn, relu per conv; one per pool
    for i, block in enumerate(spec.blocks):
        if block.kind == "maxpool":
            idx += 1
            continue
        yield from _conv((f"block{i}", "conv0"), f"features.{idx}", f"features.{idx + 1}", True)
        idx += 3
    if spec.head.pool != "adaptive7" or len(spec.head.hidden) != 2:
        raise WeightsError("torchvision vgg19_bn needs the 7x7-pooled 4096-4096 classifier (not small_input)")
    yield from _dense("fc0", "classifier.0", "dense_nchw")   # classifier: Linear, ReLU, Dropout, Linear, ...
    yield from _dense("fc1", "classifier.3")
    yield from _dense("classifier", "classifier.6")


_FAMILY_MAPS = {("mobilenet_v2", "torchvision"): _mbv2_torchvision, ("mobilenet_v2", "timm"): _mbv2_timm,
                ("resnet", "torchvision"): _resnet, ("vgg", "torchvision"): _vgg}

CLASSIFIER_KEYS = {("mobilenet_v2", "torchvision"): "classifier.1.weight", ("mobilenet_v2", "timm"): "classifier.weight",
                   ("resnet", "torchvision"): "fc.weight", ("vgg", "torchvision"): "classifier.6.weight"}


def family(src: SourceModel) -> str:
    return {"mobilenet_v2": "mobilenet_v2", "vgg19_bn": "vgg"}.get(src.zoo, "resnet")


def tensor_map(spec: ArchSpec, src: SourceModel) -> list[TensorMap]:
    """Every tensor of `src`'s state dict for the zoo spec `spec`, in state dict order."""
    return list(_FAMILY_MAPS[family(src), src.layout](spec))


# ------------------------------------------------------------------------------------ layouts

def torch_shape(jax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The PyTorch shape of a jaxnas variable of shape `jax_shape`."""
    if kind == "conv":
        kh, kw, i, o = jax_shape
        return (o, i, kh, kw)
    if kind in ("dense", "dense_nchw"):
        return tuple(jax_shape[::-1])
    return tuple(jax_shape)


def to_jax(a: np.ndarray, kind: str) -> np.ndarray:
    """A PyTorch tensor (numpy) in jaxnas layout, float32."""
    a = np.asarray(a, np.float32)
    if kind == "conv":
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if kind == "dense":
        return np.ascontiguousarray(a.T)
    if kind == "dense_nchw":                   # rows c*49 + h*7 + w (NCHW flatten) -> (h*7 + w)*C + c
        o, n = a.shape                         # (two copies that move whole rows: 20x faster on VGG's 103 M)
        return np.ascontiguousarray(a.T).reshape(n // 49, 49, o).transpose(1, 0, 2).reshape(n, o)
    return a


def to_torch(a: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of `to_jax`."""
    a = np.asarray(a, np.float32)
    if kind == "conv":
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if kind == "dense":
        return np.ascontiguousarray(a.T)
    if kind == "dense_nchw":
        n, o = a.shape
        return np.ascontiguousarray(a.reshape(49, n // 49, o).transpose(1, 0, 2).reshape(n, o).T)
    return a


# ------------------------------------------------------------------------------------ detection

def detect_model(state: Mapping[str, np.ndarray]) -> str | None:
    """The supported model a state dict looks like ('mobilenetv2_140', 'mobilenet_v2 --width 0.5', ...)."""
    def out(key: str) -> int | None:
        a = state.get(key)
        return int(a.shape[0]) if a is not None and a.ndim >= 1 else None

    if "conv_stem.weight" in state and "conv_head.weight" in state:
        c = out("blocks.6.0.conv_pwl.weight")
        for k, w in TIMM_MBV2_WIDTHS.items():
            if c == make_divisible(320 * w):
                return f"mobilenetv2_{k}"
        return None
    if "features.1.conv.0.0.weight" in state:
        c = out("features.17.conv.2.weight")
        for w in (1.0, 0.35, 0.5, 0.75, 1.4):
            if c == make_divisible(320 * w):
                return "mobilenet_v2" + ("" if w == 1.0 else f" --width {w:g}")
        return f"mobilenet_v2 --width {c / 320:g}" if c else None
    if "layer1.0.conv1.weight" in state and "fc.weight" in state:
        blocks = {m.group(1) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
        bottleneck = "layer1.0.conv3.weight" in state
        return {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}.get((len(blocks), bottleneck))
    if "features.0.weight" in state and "classifier.6.weight" in state and "features.1.running_var" in state:
        convs = [k for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4]
        return "vgg19_bn" if len(convs) == 16 else None
    return None
