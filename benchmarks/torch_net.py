"""A PyTorch network built from an `ArchSpec` + jaxnas variables (for `export_vs_torch.py`).

BatchNorm is folded first (`export.fold_batchnorm`, the same arithmetic as every jaxnas export), so
the PyTorch network and the jaxnas export carry bit-identical weights: Conv2d with bias, no BN, as
`torch.onnx.export` of an eval-mode torchvision model ends up after its own Conv+BN folding.
Layout: NCHW in, logits out.  Kernels HWIO -> OIHW, dense (in, out) -> Linear (out, in); VGG's
adaptive-7 classifier reads a flattened (h, w, c) vector in jaxnas and (c, h, w) in PyTorch, so the
first dense layer's rows are permuted.  Needs torch (`pip install torch`; not a jaxnas dependency).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxnas.export import fold_batchnorm
from jaxnas import spec as S

__all__ = ["torch_net"]


def torch_net(spec: S.ArchSpec, variables: Mapping[str, Any]):
    """An eval-mode `torch.nn.Module` computing what the jaxnas model computes (input NCHW)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    fspec, fvars = fold_batchnorm(spec, variables)
    params = fvars["params"]

    def tensor(a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))

    def act(name: str):
        return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "identity": nn.Identity(), "swish": nn.SiLU(),
                "hswish": nn.Hardswish(), "sigmoid": nn.Sigmoid()}[name]

    class ConvLayer(nn.Module):
        def __init__(self, conv: S.Conv, cin: int, p: Mapping[str, Any]):
            super().__init__()
            (t, b), (l, r) = conv.pads
            # symmetric padding inside the conv (what torchvision writes); asymmetric as an explicit pad
            self.pad = None if (t == b and l == r) else (l, r, t, b)
            self.conv = nn.Conv2d(cin, conv.out, conv.kernel, conv.stride,
                                  padding=(t, l) if self.pad is None else 0,
                                  groups=cin if conv.depthwise else 1, bias=conv.bias)
            with torch.no_grad():
                self.conv.weight.copy_(tensor(np.transpose(p["kernel"], (3, 2, 0, 1))))
                if conv.bias:
                    self.conv.bias.copy_(tensor(p["bias"]))
            self.act = act(conv.act)

        def forward(self, x):
            if self.pad is not None:
                x = F.pad(x, self.pad)
            return self.act(self.conv(x))

    def linear(p: Mapping[str, Any]) -> nn.Linear:
        k = np.asarray(p["kernel"])
        lin = nn.Linear(k.shape[0], k.shape[1])
        with torch.no_grad():
            lin.weight.copy_(tensor(k.T))
            lin.bias.copy_(tensor(p["bias"]))
        return lin

    class SqueezeExcite(nn.Module):
        def __init__(self, se: S.SE, p: Mapping[str, Any]):
            super().__init__()
            self.reduce, self.expand = linear(p["se_reduce"]), linear(p["se_expand"])
            self.act = act(se.act)
            self.gate = nn.Sigmoid() if se.gate == "sigmoid" else nn.Hardsigmoid()

        def forward(self, y):
            s = self.gate(self.expand(self.act(self.reduce(y.mean((2, 3))))))
            return y * s[:, :, None, None]

    class BlockNet(nn.Module):
        def __init__(self, block: S.Block, cin: int, p: Mapping[str, Any]):
            super().__init__()
            if block.kind == "choice":  # the jaxnas model's default: the first candidate
                block, p = block.candidates[0], p.get("cand0", {})
            self.block = block
            if block.kind in ("maxpool", "avgpool"):
                q = block.pool
                self.pool = (nn.MaxPool2d(q.kernel, q.stride, q.padding) if block.kind == "maxpool"
                             else nn.AvgPool2d(q.kernel, q.stride, q.padding, count_include_pad=True))
                return
            self.pool = None
            layers, c = [], cin
            for j, conv in enumerate(block.layers):
                layers.append(ConvLayer(conv, c, p[f"conv{j}"]))
                c = conv.out
            self.layers = nn.ModuleList(layers)
            self.se = SqueezeExcite(block.se, p) if block.se is not None else None
            self.proj = ConvLayer(block.shortcut, cin, p["shortcut"]) if isinstance(block.shortcut, S.Conv) else None
            self.post = act(block.post_act)

        def forward(self, x):
            if self.pool is not None:
                return self.pool(x)
            y = x
            for j, layer in enumerate(self.layers):
                y = layer(y)
                if self.se is not None and self.block.se.after == j:
                    y = self.se(y)
            sc = self.block.shortcut
            if sc is None:
                return y
            if sc == "identity":
                skip = x
                if x.shape[2:] != y.shape[2:]:  # centre crop (merged convs with all padding moved up front)
                    dh, dw = (x.shape[2] - y.shape[2]) // 2, (x.shape[3] - y.shape[3]) // 2
                    skip = x[:, :, dh:dh + y.shape[2], dw:dw + y.shape[3]]
            else:
                skip = self.proj(x)
            return self.post(y + skip)

    class Head(nn.Module):
        def __init__(self, head: S.Head, in_shape: tuple[int, int, int], p: Mapping[str, Any]):
            super().__init__()
            self.head = head
            if head.num_classes == 0:
                return
            h, w, c = in_shape
            dense, width = [], c
            if head.pool == "adaptive7":
                self.pool = nn.AdaptiveAvgPool2d(7)
                width = 49 * c
            for j in range(len(head.hidden)):
                dense.append(linear(p[f"fc{j}"]))
            dense.append(linear(p["classifier"]))
            if head.pool == "adaptive7":  # (h, w, c) flattening -> (c, h, w)
                with torch.no_grad():
                    wt = dense[0].weight.reshape(-1, 7, 7, c).permute(0, 3, 1, 2).reshape(-1, width)
                    dense[0].weight.copy_(wt)
            self.dense = nn.ModuleList(dense)

        def forward(self, x):
            if self.head.num_classes == 0:
                return x
            x = x.mean((2, 3)) if self.head.pool == "global" else torch.flatten(self.pool(x), 1)
            for lin in self.dense[:-1]:
                x = torch.relu(lin(x))
            return self.dense[-1](x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            cost = S.analyze(fspec)
            blocks, c = [], fspec.in_channels
            for i, block in enumerate(fspec.blocks):
                blocks.append(BlockNet(block, c, params.get(f"block{i}", {})))
                c = cost.blocks[i].out_shape[-1]
            self.blocks = nn.Sequential(*blocks)
            self.head = Head(fspec.head, cost.blocks[-1].out_shape, params.get("head", {}))

        def forward(self, x):
            return self.head(self.blocks(x))

    return Net().eval()
