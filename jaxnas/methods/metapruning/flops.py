"""The original MetaPruning "FLOPs" counter (`cal_FLOPs.print_model_parm_flops`, seed spec §2.3) on a spec.

The original hooks a plain PyTorch model built from the genes and sums, at batch 1:

* conv: ``C_out * (kh * kw * C_in / groups + bias) * H_out * W_out`` (multiply-accumulates);
* linear: weights + biases;
* BatchNorm2d: the elements of its input;
* ``nn.ReLU`` modules: the elements of their input (only the ResNet uses modules: after bn1, bn2, the add and
  the stem; MobileNetV2's functional ReLU6 and MobileNetV1's functional ReLU are not counted);
* pooling layers ``nn.MaxPool2d`` / ``nn.AvgPool2d``: ``k * k * C * H_out * W_out`` (the MobileNets' final
  ``AvgPool2d(7)`` counts ``49 * C`` at 224 px: here a global average pool over an H x W map counts
  ``H * W * C``; the ResNet's ``AdaptiveAvgPool2d`` is not a hooked type and counts 0).

The original always counts at 224 x 224; here the spec's own input size is used.
"""
from __future__ import annotations

from jaxnas.spec import ArchSpec, conv_cost, pool_out_hw

# Families whose ReLUs are nn.ReLU modules (counted) and whose head pool is a hooked AvgPool2d.
_RELU_MODULES = ("metapruning_resnet50", "resnet")
_ADAPTIVE_HEAD_POOL = ("metapruning_resnet50", "resnet")


def flops_original(spec: ArchSpec, family: str | None = None) -> int:
    """The original counter's total for `spec` (an integer number of operations, not millions)."""
    family = family or str(spec.metadata.get("family", ""))
    relu_modules = family in _RELU_MODULES
    total = 0
    h, w, c = (*spec.input_size, spec.in_channels)
    for i, block in enumerate(spec.blocks):
        if block.kind in ("maxpool", "avgpool"):
            ho, wo = pool_out_hw((h, w), block.pool)
            total += block.pool.kernel ** 2 * c * ho * wo
            h, w = ho, wo
            continue
        if block.kind == "choice" or block.se is not None:
            raise ValueError(f"blocks[{i}]: the original counter covers plain conv blocks only")
        shape = (h, w, c)
        for j, conv in enumerate(block.layers):
            total += _conv(conv, shape, relu_modules, f"blocks[{i}].conv{j}")
            shape = conv_cost(conv, shape).out_shape
        if block.shortcut is not None and block.shortcut != "identity":
            total += _conv(block.shortcut, (h, w, c), relu_modules, f"blocks[{i}].shortcut")
        if block.post_act == "relu" and relu_modules:
            total += shape[0] * shape[1] * shape[2]
        h, w, c = shape
    head = spec.head
    if head.num_classes:
        if head.pool == "global" and family not in _ADAPTIVE_HEAD_POOL:
            total += h * w * c
        feat = c * (49 if head.pool == "adaptive7" else 1)
        for width in (*head.hidden, head.num_classes):
            total += feat * width + width
            feat = width
    return int(total)


def _conv(conv, shape, relu_modules: bool, where: str) -> int:
    cost = conv_cost(conv, shape, where)
    ho, wo, co = cost.out_shape
    n = cost.macs + (ho * wo * co if conv.bias else 0)
    if conv.norm:
        n += ho * wo * co
    if conv.act == "relu" and relu_modules:
        n += ho * wo * co
    return n


__all__ = ["flops_original"]
