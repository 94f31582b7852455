"""The original's `model.config` (what `parsing_model.py` and `train_eval.py` write, §4.5) <-> ArchSpec.

    {"first_stem": ConvLayer, "second_stem": MBInvertedResBlock, "stage1": [MBInvertedResBlock, ...], ...,
     "stage6": [...], "feature_mix_layer": ConvLayer, "classifier": LinearLayer}

Layer configs carry the original's fields (name, in/mid/se/out channels, kernel_size, stride, groups,
has_shuffle, bias, use_bn, affine, act_func, ops_order).  A spec must have the TF-NAS shape (a conv stem,
the second-stem block, blocks grouped into stages stage1..stage6, a 1x1 feature-mix conv, global pool and
one classifier layer); `from_model_config` builds exactly that, with the original's per-block drop-connect
rates when asked.  Pure Python: the CLI commands `jaxnas tfnas import-config / export-config` use it.
"""
from __future__ import annotations

from typing import Any, Mapping

from jaxnas.latency.spaces import STAGES, TfnasError
from jaxnas.spec import ArchSpec, Block, Conv, Head, Stage, analyze, validate
from jaxnas.zoo import mbi_block

CONFIG_KEYS = ("first_stem", "second_stem", *(s[0] for s in STAGES), "feature_mix_layer", "classifier")
_ACT_TO_ORIGINAL = {"relu": "relu", "relu6": "relu6", "swish": "swish", "hswish": "h-swish"}
_ACT_FROM_ORIGINAL = {v: k for k, v in _ACT_TO_ORIGINAL.items()}


# ----------------------------------------------------------------------------------------------------
# spec -> model.config
# ----------------------------------------------------------------------------------------------------

def _act_out(act: str, where: str) -> str:
    if act not in _ACT_TO_ORIGINAL:
        raise TfnasError(f"{where}: activation {act!r} has no TF-NAS name (relu, relu6, swish, h-swish)")
    return _ACT_TO_ORIGINAL[act]


def _conv_layer(conv: Conv, cin: int, where: str) -> dict[str, Any]:
    if conv.depthwise or conv.bias or not conv.norm or conv.kernel[0] != conv.kernel[1] or conv.padding is not None:
        raise TfnasError(f"{where}: only a plain conv -> BN -> act (square kernel, same padding) is a ConvLayer")
    return {"name": "ConvLayer", "kernel_size": conv.kernel[0], "stride": conv.stride, "groups": 1,
            "has_shuffle": False, "bias": False, "in_channels": cin, "out_channels": conv.out, "use_bn": True,
            "affine": True, "act_func": _act_out(conv.act, where), "ops_order": "weight_bn_act"}


def _mbi(block: Block, cin: int, where: str) -> dict[str, Any]:
    layers = block.layers
    if block.kind != "mbconv" or len(layers) not in (2, 3) or not layers[-2].depthwise:
        raise TfnasError(f"{where}: not an MBInvertedResBlock ([1x1 expand] -> depthwise -> 1x1 project)")
    dw, proj = layers[-2], layers[-1]
    mid = layers[0].out if len(layers) == 3 else cin
    se = block.se.channels if block.se is not None else 0
    residual = dw.stride == 1 and cin == proj.out
    if (block.shortcut == "identity") != residual or proj.act != "identity" or block.post_act != "identity":
        raise TfnasError(f"{where}: shortcut/activations differ from an MBInvertedResBlock")
    if block.se is not None and (block.se.act != dw.act or block.se.gate != "sigmoid"):
        raise TfnasError(f"{where}: the SE must use the block's activation and a sigmoid gate")
    return {"name": "MBInvertedResBlock", "in_channels": cin, "mid_channels": mid, "se_channels": se,
            "out_channels": proj.out, "kernel_size": dw.kernel[0], "stride": dw.stride, "groups": 1,
            "has_shuffle": False, "bias": False, "use_bn": True, "affine": True,
            "act_func": _act_out(dw.act, where)}


def to_model_config(spec: ArchSpec) -> dict[str, Any]:
    """The original's model.config of a TF-NAS-shaped spec (see the module docstring)."""
    cost = analyze(spec)
    blocks = spec.blocks
    names = [s.name for s in spec.stages]
    if names != [s[0] for s in STAGES] or len(blocks) < 3:
        raise TfnasError(f"{spec.name}: a TF-NAS network has stages {', '.join(s[0] for s in STAGES)} (got "
                         f"{names or 'none'}); import it with `jaxnas tfnas import-config` or build it with the "
                         "TF-NAS space")
    if spec.stages[0].start != 2 or spec.stages[-1].end != len(blocks) - 1 or any(
            a.end != b.start for a, b in zip(spec.stages, spec.stages[1:])):
        raise TfnasError(f"{spec.name}: stages must cover the blocks between the second stem and the feature mix")
    if spec.head.hidden or spec.head.pool != "global" or spec.head.num_classes < 1:
        raise TfnasError(f"{spec.name}: the head must be global pooling and one classifier layer")
    cin = [c.in_shape[2] for c in cost.blocks]
    if any(b.kind != "conv" or len(b.layers) != 1 for b in (blocks[0], blocks[-1])):
        raise TfnasError(f"{spec.name}: the first stem and the feature mix must be single convs")
    out: dict[str, Any] = {"first_stem": _conv_layer(blocks[0].layers[0], cin[0], "first_stem"),
                           "second_stem": _mbi(blocks[1], cin[1], "second_stem")}
    for st in spec.stages:
        out[st.name] = [_mbi(blocks[i], cin[i], f"{st.name}[{i - st.start}]") for i in range(st.start, st.end)]
    out["feature_mix_layer"] = _conv_layer(blocks[-1].layers[0], cin[-1], "feature_mix_layer")
    out["classifier"] = {"name": "LinearLayer", "in_features": blocks[-1].layers[0].out,
                         "out_features": spec.head.num_classes, "bias": True, "use_bn": False, "affine": False,
                         "act_func": None, "ops_order": "weight_bn_act"}
    return out


# ----------------------------------------------------------------------------------------------------
# model.config -> spec
# ----------------------------------------------------------------------------------------------------

def _field(layer: Mapping[str, Any], key: str, where: str) -> int:
    """A positive integer field of a layer config."""
    if key not in layer:
        raise TfnasError(f"{where}: missing '{key}'")
    v = layer[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TfnasError(f"{where}.{key}: expected a positive integer, got {v!r}")
    return v


def _check_plain(layer: Mapping[str, Any], where: str, name: str) -> None:
    if not isinstance(layer, Mapping):
        raise TfnasError(f"{where}: expected a layer config object, got {type(layer).__name__}")
    if layer.get("name") != name:
        raise TfnasError(f"{where}: expected a {name}, got name={layer.get('name')!r}")
    for key, want in (("groups", 1), ("has_shuffle", False), ("bias", False), ("use_bn", True)):
        if key in layer and layer[key] != want:
            raise TfnasError(f"{where}.{key}: {layer[key]!r} is not supported (jaxnas builds {key}={want!r})")
    if "ops_order" in layer and layer["ops_order"] != "weight_bn_act":
        raise TfnasError(f"{where}.ops_order: only 'weight_bn_act' is supported, got {layer['ops_order']!r}")


def _act_in(layer: Mapping[str, Any], where: str) -> str:
    act = layer.get("act_func")
    if act not in _ACT_FROM_ORIGINAL:
        raise TfnasError(f"{where}.act_func: {act!r} is not one of {', '.join(_ACT_FROM_ORIGINAL)}")
    return _ACT_FROM_ORIGINAL[act]


def _kernel(layer: Mapping[str, Any], where: str) -> int:
    k = layer.get("kernel_size")
    if isinstance(k, list) and len(k) == 2 and k[0] == k[1]:
        k = k[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise TfnasError(f"{where}.kernel_size: expected an odd positive integer, got {k!r}")
    return k


def _mbi_from(layer: Mapping[str, Any], cin: int, where: str, drop_connect: float) -> Block:
    _check_plain(layer, where, "MBInvertedResBlock")
    if _field(layer, "in_channels", where) != cin:
        raise TfnasError(f"{where}.in_channels: {layer['in_channels']} but the previous layer gives {cin}")
    se = layer.get("se_channels", 0)
    if isinstance(se, bool) or not isinstance(se, int) or se < 0:
        raise TfnasError(f"{where}.se_channels: expected an integer >= 0, got {se!r}")
    return mbi_block(cin, _field(layer, "mid_channels", where), se, _field(layer, "out_channels", where),
                     _field(layer, "stride", where), kernel=_kernel(layer, where), act=_act_in(layer, where),
                     drop_connect=drop_connect, name=where)


def from_model_config(config: Mapping[str, Any], *, resolution: int = 224, num_classes: int | None = None,
                      dropout: float = 0.0, drop_connect: float = 0.0, name: str = "tfnas") -> ArchSpec:
    """The ArchSpec of an original model.config (blocks named as `TfnasSpace.build_spec` names them).

    `drop_connect`: the original's per-block rate * block_idx / block_count (block_count = 1 + stage
    blocks, the second stem is block 1); `num_classes` overrides the classifier's out_features."""
    if not isinstance(config, Mapping):
        raise TfnasError(f"a model.config is a JSON object with {', '.join(CONFIG_KEYS)}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise TfnasError(f"model.config lacks {', '.join(repr(k) for k in missing)} (expected the keys the original's "
                         f"parsing_model.py writes: {', '.join(CONFIG_KEYS)})")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TfnasError(f"model.config has unknown key(s) {unknown}")
    stage_layers = [config[s[0]] for s in STAGES]
    for s, layers in zip(STAGES, stage_layers):
        if not isinstance(layers, list) or not layers:
            raise TfnasError(f"model.config {s[0]}: expected a non-empty list of MBInvertedResBlock configs")
    count = 1 + sum(len(layers) for layers in stage_layers)
    stem = config["first_stem"]
    _check_plain(stem, "first_stem", "ConvLayer")
    in_channels = _field(stem, "in_channels", "first_stem")
    blocks = [Block("conv", (Conv(_field(stem, "out_channels", "first_stem"), (_kernel(stem, "first_stem"),) * 2,
                                  _field(stem, "stride", "first_stem"), act=_act_in(stem, "first_stem")),),
                    name="first_stem")]
    cin = blocks[0].layers[0].out
    blocks.append(_mbi_from(config["second_stem"], cin, "second_stem", drop_connect / count))
    cin = blocks[-1].layers[-1].out
    stages, idx = [], 1
    for s, layers in zip(STAGES, stage_layers):
        start = len(blocks)
        for j, layer in enumerate(layers):
            idx += 1
            blocks.append(_mbi_from(layer, cin, f"{s[0]}.block{j + 1}", drop_connect * idx / count))
            cin = blocks[-1].layers[-1].out
        stages.append(Stage(s[0], start, len(blocks)))
    mix = config["feature_mix_layer"]
    _check_plain(mix, "feature_mix_layer", "ConvLayer")
    if _field(mix, "in_channels", "feature_mix_layer") != cin or _kernel(mix, "feature_mix_layer") != 1:
        raise TfnasError(f"feature_mix_layer: expected a 1x1 conv on {cin} channels")
    blocks.append(Block("conv", (Conv(_field(mix, "out_channels", "feature_mix_layer"), (1, 1),
                                      _field(mix, "stride", "feature_mix_layer"),
                                      act=_act_in(mix, "feature_mix_layer")),), name="feature_mix"))
    cls = config["classifier"]
    if not isinstance(cls, Mapping) or cls.get("name") != "LinearLayer":
        raise TfnasError("classifier: expected a LinearLayer")
    if _field(cls, "in_features", "classifier") != blocks[-1].layers[0].out:
        raise TfnasError(f"classifier.in_features: {cls['in_features']} but the feature mix gives "
                         f"{blocks[-1].layers[0].out}")
    classes = num_classes or _field(cls, "out_features", "classifier")
    spec = ArchSpec(name, tuple(blocks), Head(classes, dropout=dropout), (resolution, resolution), in_channels,
                    tuple(stages), meta={"family": "tfnas", "source": "model.config"})
    return validate(spec)
