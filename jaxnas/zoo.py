"""Model zoo as architecture specs: MobileNetV1/V2, ResNet-18/34/50, VGG-19-BN, POP's DF1/DF2/DF2A.

Channel counts, strides and parameter counts follow the torchvision reference implementations (and the
POP Caffe prototxts for the DF nets).  Every conv carries a `width` group name so the same spec serves
as a supernet for channel pruning: convs whose outputs must agree (residual chains) share a group.
"""
from __future__ import annotations

from typing import Callable

from jaxnas.spec import SE, ArchSpec, Block, Conv, Head, Pool, SpecError, Stage, make_divisible

MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))


def mbv2_block(cin: int, mid: int, cout: int, stride: int, *, kernel: int = 3, expand: bool = True,
               act: str = "relu6", in_group: str | None = None, mid_group: str | None = None,
               out_group: str | None = None, residual: bool | None = None, name: str | None = None) -> Block:
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project (+ identity when shapes allow)."""
    layers = []
    if expand:
        layers.append(Conv(mid, (1, 1), act=act, width=mid_group))
    layers.append(Conv(mid, (kernel, kernel), stride, depthwise=True, act=act,
                       width=mid_group if expand else in_group))
    if residual is None:
        residual = stride == 1 and cin == cout
    layers.append(Conv(cout, (1, 1), act="identity", width=in_group if residual else out_group))
    return Block("mbconv", tuple(layers), "identity" if residual else None, name=name)


def mbi_block(cin: int, mid: int, se: int, cout: int, stride: int, *, kernel: int = 3, act: str = "swish",
              drop_connect: float = 0.0, name: str | None = None) -> Block:
    """TF-NAS / EfficientNet MBInvertedResBlock: [1x1 expand -> BN -> act] -> kxk depthwise -> BN -> act ->
    [SE: GAP -> 1x1 (bias) -> act -> 1x1 (bias) -> sigmoid gate] -> 1x1 project -> BN, + identity when
    stride 1 and cin == cout (the residual branch dropped with `drop_connect` in training).

    As in the original, the expand conv exists only when mid > cin; otherwise the block is expansion-free
    and its depthwise conv runs on the cin input channels (mid is then cin).  `se` = 0: no SE.
    """
    expand = mid > cin
    mid = mid if expand else cin
    layers = []
    if expand:
        layers.append(Conv(mid, (1, 1), act=act))
    layers.append(Conv(mid, (kernel, kernel), stride, depthwise=True, act=act))
    layers.append(Conv(cout, (1, 1), act="identity"))
    residual = stride == 1 and cin == cout
    return Block("mbconv", tuple(layers), "identity" if residual else None,
                 se=SE(se, after=len(layers) - 2, act=act) if se else None, name=name,
                 drop_connect=drop_connect if residual else 0.0)


def mobilenet_v2(width: float = 1.0, num_classes: int = 1000, resolution: int = 224,
                 small_input: bool = False, dropout: float = 0.2, in_channels: int = 3) -> ArchSpec:
    """torchvision MobileNetV2.  `small_input`: the stem has stride 1 (for 28-32 px inputs: total
    stride 16, a 2x2 final map at 32 px) — the rest of the network is unchanged."""
    stem_c = make_divisible(32 * width)
    blocks = [Block("conv", (Conv(stem_c, (3, 3), 1 if small_input else 2, act="relu6", width="stem"),),
                    name="stem")]
    cin, group = stem_c, "stem"
    stages = []
    for si, (t, c, n, s) in enumerate(MBV2_SETTINGS):
        cout = make_divisible(c * width)
        start = len(blocks)
        for k in range(n):
            idx = len(blocks)
            stride = s if k == 0 else 1
            residual = stride == 1 and cin == cout
            out_group = group if residual else f"b{idx}.out"
            blocks.append(mbv2_block(cin, int(round(cin * t)), cout, stride, expand=t != 1,
                                     in_group=group, mid_group=f"b{idx}.mid", out_group=out_group,
                                     name=f"b{idx}"))
            cin, group = cout, out_group
        stages.append(Stage(f"stage{si + 1}", start, len(blocks)))
    last = make_divisible(1280 * max(1.0, width))
    blocks.append(Block("conv", (Conv(last, (1, 1), act="relu6", width="last"),), name="last"))
    name = f"mobilenet_v2_{width:g}" + ("_small" if small_input else "")
    return ArchSpec(name, tuple(blocks), Head(num_classes, dropout=dropout), (resolution, resolution),
                    in_channels, tuple(stages), meta={"family": "mobilenet_v2", "width": width,
                                                      "small_input": small_input})


MBV1_SETTINGS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                 (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(width: float = 1.0, num_classes: int = 1000, resolution: int = 224,
                 small_input: bool = False, dropout: float = 0.0, in_channels: int = 3) -> ArchSpec:
    """MobileNetV1 (Howard et al. 2017): 3x3 stem, 13 depthwise-separable layers, ReLU after every BN (as the
    paper and MetaPruning; TF-slim uses ReLU6).  Channels ``max(int(c * width), 8)`` (TF-slim's depth
    multiplier).  `small_input`: stem stride 1 (total stride 16, for 28-32 px)."""
    def ch(c: int) -> int:
        return max(int(c * width), 8)

    blocks = [Block("conv", (Conv(ch(32), (3, 3), 1 if small_input else 2, act="relu", width="stem"),),
                    name="stem")]
    group = "stem"
    for i, (c, s) in enumerate(MBV1_SETTINGS, 1):
        out_group = f"l{i}.out"
        blocks.append(Block("conv", (Conv(blocks[-1].layers[-1].out, (3, 3), s, depthwise=True,
                                          act="relu", width=group),
                                     Conv(ch(c), (1, 1), act="relu", width=out_group)), name=f"l{i}"))
        group = out_group
    name = f"mobilenet_v1_{width:g}" + ("_small" if small_input else "")
    return ArchSpec(name, tuple(blocks), Head(num_classes, dropout=dropout), (resolution, resolution),
                    in_channels, meta={"family": "mobilenet_v1", "width": width, "small_input": small_input})


def _resnet_shortcut(cin: int, cout: int, stride: int, projection: bool | None, in_group: str,
                     out_group: str) -> tuple[Conv | str, str]:
    """(shortcut, width group of the block output): a 1x1 projection when the shape changes (or asked), else
    identity, whose output must share the input's group."""
    if projection is None:
        projection = stride != 1 or cin != cout
    if not projection:
        return "identity", in_group
    return Conv(cout, (1, 1), stride, padding=0, act="identity", width=out_group), out_group


def resnet_basic(cin: int, cout: int, stride: int, *, in_group: str, mid_group: str, out_group: str,
                 projection: bool | None = None, name: str | None = None) -> Block:
    shortcut, group = _resnet_shortcut(cin, cout, stride, projection, in_group, out_group)
    return Block("basic", (Conv(cout, (3, 3), stride, act="relu", width=mid_group),
                           Conv(cout, (3, 3), act="identity", width=group)),
                 shortcut, post_act="relu", name=name)


def resnet_bottleneck(cin: int, mid: int, cout: int, stride: int, *, in_group: str, mid_group: str,
                      out_group: str, projection: bool | None = None, name: str | None = None) -> Block:
    shortcut, group = _resnet_shortcut(cin, cout, stride, projection, in_group, out_group)
    return Block("bottleneck", (Conv(mid, (1, 1), act="relu", width=f"{mid_group}1"),
                                Conv(mid, (3, 3), stride, act="relu", width=f"{mid_group}2"),
                                Conv(cout, (1, 1), act="identity", width=group)),
                 shortcut, post_act="relu", name=name)


def _resnet(name: str, depths: tuple[int, ...], bottleneck: bool, num_classes: int, resolution: int,
            width: float, in_channels: int, small_input: bool) -> ArchSpec:
    stem_c = make_divisible(64 * width)
    if small_input:
        blocks = [Block("conv", (Conv(stem_c, (3, 3), 1, act="relu", width="stem"),), name="stem")]
    else:
        blocks = [Block("conv", (Conv(stem_c, (7, 7), 2, act="relu", width="stem"),), name="stem"),
                  Block("maxpool", pool=Pool(3, 2, 1), name="pool")]
    cin, group = stem_c, "stem"
    stages = []
    for si, n in enumerate(depths):
        planes = make_divisible(64 * 2 ** si * width)
        cout = planes * 4 if bottleneck else planes
        start = len(blocks)
        for k in range(n):
            idx = len(blocks)
            stride = 2 if si > 0 and k == 0 else 1
            projection = stride != 1 or cin != cout
            out_group = f"s{si + 1}.out" if projection else group
            kw = dict(in_group=group, mid_group=f"b{idx}.mid", out_group=out_group, name=f"b{idx}")
            if bottleneck:
                blocks.append(resnet_bottleneck(cin, planes, cout, stride, **kw))
            else:
                blocks.append(resnet_basic(cin, cout, stride, **kw))
            cin, group = cout, out_group
        stages.append(Stage(f"layer{si + 1}", start, len(blocks)))
    return ArchSpec(name, tuple(blocks), Head(num_classes), (resolution, resolution), in_channels,
                    tuple(stages), meta={"family": "resnet", "width": width, "small_input": small_input})


def resnet18(num_classes: int = 1000, resolution: int = 224, width: float = 1.0, in_channels: int = 3,
             small_input: bool = False) -> ArchSpec:
    return _resnet("resnet18", (2, 2, 2, 2), False, num_classes, resolution, width, in_channels, small_input)


def resnet34(num_classes: int = 1000, resolution: int = 224, width: float = 1.0, in_channels: int = 3,
             small_input: bool = False) -> ArchSpec:
    return _resnet("resnet34", (3, 4, 6, 3), False, num_classes, resolution, width, in_channels, small_input)


def resnet50(num_classes: int = 1000, resolution: int = 224, width: float = 1.0, in_channels: int = 3,
             small_input: bool = False) -> ArchSpec:
    return _resnet("resnet50", (3, 4, 6, 3), True, num_classes, resolution, width, in_channels, small_input)


VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M")


def vgg19_bn(num_classes: int = 1000, resolution: int = 224, width: float = 1.0, in_channels: int = 3,
             small_input: bool = False) -> ArchSpec:
    """torchvision vgg19_bn (convs keep their bias; classifier 25088-4096-4096-classes).

    `small_input` replaces the 7x7-pooled 4096-wide classifier by global pooling + one dense layer.
    """
    blocks = []
    for v in VGG19_CFG:
        if v == "M":
            blocks.append(Block("maxpool", pool=Pool(2, 2, 0), name=f"pool{len(blocks)}"))
        else:
            idx = len(blocks)
            blocks.append(Block("vgg", (Conv(make_divisible(v * width), (3, 3), act="relu", bias=True,
                                             width=f"b{idx}"),), name=f"b{idx}"))
    head = Head(num_classes) if small_input else Head(num_classes, "adaptive7", (4096, 4096), 0.5)
    return ArchSpec("vgg19_bn", tuple(blocks), head, (resolution, resolution), in_channels,
                    meta={"family": "vgg", "width": width, "small_input": small_input})


# POP "Dongfeng" backbones: (width or (mid, out), stride) per block of res2/res3/res4.
DF_NETS = {
    "df1": ([64, 64, 64], [128, 128, 128], [256, 256, 256, 512]),
    "df2": ([64, 64, 128], [128] * 10 + [256], [256, 256, 256, 256, 512, 512]),
    "df2a": ([64, 64, 128], [(128, 512)] * 10 + [(256, 1024)],
             [(256, 1024)] * 4 + [(512, 1024)] * 2),
}


DF_STEM = ((32, 2), (64, 2))  # (channels, stride) of conv1, conv2


def dfnet(variant: str, num_classes: int = 1000, resolution: int = 224, in_channels: int = 3,
          widths: tuple | None = None, stem: tuple[tuple[int, int], ...] = DF_STEM) -> ArchSpec:
    """POP's DF1 / DF2 / DF2A; `widths` overrides the per-stage block list (the POP search space),
    `stem` the (channels, stride) of the two stem convs (POP's small-input space: stride 1).

    A block gets a projection shortcut whenever its stride is 2 or its configured width differs from
    the previous block's (for bottlenecks: mid or out width), as in the released prototxts.
    """
    stages_cfg = widths if widths is not None else DF_NETS[variant]
    blocks = [Block("conv", (Conv(c, (3, 3), s, act="relu", width=f"conv{i + 1}"),), name=f"conv{i + 1}")
              for i, (c, s) in enumerate(stem)]
    cin, prev_cfg, group = stem[-1][0], None, f"conv{len(stem)}"
    stages = []
    for si, cfg in enumerate(stages_cfg):
        start = len(blocks)
        for k, w in enumerate(cfg):
            idx = len(blocks)
            stride = 2 if k == 0 else 1
            projection = stride != 1 or w != prev_cfg or (isinstance(w, int) and w != cin)
            out_group = f"b{idx}.out" if projection else group
            kw = dict(in_group=group, mid_group=f"b{idx}.mid", out_group=out_group, projection=projection,
                      name=f"b{idx}")
            if isinstance(w, int):
                blocks.append(resnet_basic(cin, w, stride, **kw))
            else:
                blocks.append(resnet_bottleneck(cin, *w, stride, **kw))  # w = (mid, out)
            cin, prev_cfg, group = blocks[-1].layers[-1].out, w, out_group
        stages.append(Stage(f"res{si + 2}", start, len(blocks)))
    return ArchSpec(variant, tuple(blocks), Head(num_classes), (resolution, resolution), in_channels,
                    tuple(stages), meta={"family": "dfnet", "bn_eps": 1e-4})


def df1(**kw) -> ArchSpec:
    return dfnet("df1", **kw)


def df2(**kw) -> ArchSpec:
    return dfnet("df2", **kw)


def df2a(**kw) -> ArchSpec:
    return dfnet("df2a", **kw)


ZOO: dict[str, Callable[..., ArchSpec]] = {
    "mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "resnet18": resnet18, "resnet34": resnet34,
    "resnet50": resnet50, "vgg19_bn": vgg19_bn, "df1": df1, "df2": df2, "df2a": df2a,
}


def get_spec(name: str, *, resolution: int | None = None, num_classes: int | None = None,
             width: float | None = None, small_input: bool | None = None,
             in_channels: int | None = None) -> ArchSpec:
    """A zoo model by name, e.g. get_spec('mobilenet_v2', width=0.5, resolution=32, small_input=True)."""
    if name not in ZOO:
        import difflib
        hint = difflib.get_close_matches(name, ZOO, n=1)
        raise SpecError(f"unknown model '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; known: {', '.join(ZOO)}, or a path to an arch spec JSON")
    if name.startswith("df") and (width not in (None, 1.0) or small_input):
        raise SpecError(f"{name} has fixed widths: --width and small_input do not apply")
    kw = dict(resolution=resolution, num_classes=num_classes, in_channels=in_channels)
    if not name.startswith("df"):
        kw.update(width=width, small_input=small_input)
    return ZOO[name](**{k: v for k, v in kw.items() if v is not None})


def resolve_spec(model_or_path: str, **kw) -> ArchSpec:
    """A zoo name or an arch spec JSON file (then resolution/num_classes override its input/head)."""
    import os
    if model_or_path.endswith(".json") or os.path.sep in model_or_path:
        spec = ArchSpec.load(model_or_path)
        return spec.with_input(kw.get("resolution"), kw.get("num_classes"), kw.get("in_channels"))
    return get_spec(model_or_path, **kw)

