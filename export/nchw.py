"""The eval-mode forward of an `ArchSpec` in NCHW, the form `export_onnx` hands to jax2onnx.

The Flax model (`jaxnas.models`) computes in NHWC, XLA's layout; ONNX's `Conv` is NCHW, so jax2onnx
wraps every conv of a traced NHWC model in a Transpose pair (MobileNetV2: 156 Transposes around 52
Convs).  This module writes the same network directly in NCHW with `jax.lax` ops and the weights as
constants already in ONNX layouts, so each conv traces to one bare `Conv`:

* conv kernels HWIO -> OIHW (depthwise (kh, kw, 1, C) -> (C, 1, kh, kw), group = C), explicit
  PyTorch-style padding kept as the Conv's `pads`; the (folded-BN) bias is added as a (C, 1, 1)
  constant, which `export.onnx_graph.fuse_conv_bias` moves into the Conv's bias input;
* activations map to single ONNX ops where ONNX has one (ReLU, Clip, Sigmoid, HardSwish,
  HardSigmoid); swish is x * sigmoid(x), as PyTorch exports SiLU;
* pools run through flax's `max_pool` / `avg_pool` (the forms jax2onnx converts to MaxPool /
  AveragePool) between an NCHW -> NHWC -> NCHW transpose pair that cancels with the plugin's own;
  their explicit padding becomes the pool's `pads` (`onnx_graph.fold_pad`);
* the head: global mean over H, W (ReduceMean) -> dense layers (Gemm).  VGG's adaptive-7 pool and
  the (h, w, c) flattening of the Flax model are folded into the first dense layer's weights (both
  are linear): flatten(pool(x)) @ W == flatten_chw(x) @ W', exact up to float32 rounding of W'
  (at 224 px the pool is the identity and W' is W with its rows reordered);
* the boundary is the Flax model's, NHWC: the input is transposed once, and a head-less net's
  feature map is transposed back once at the output (an NCHW boundary is made on the graph,
  `onnx_graph.set_boundary_layout`, where these Transposes cancel).

The reference for every export stays the Flax model: `export_onnx` checks the file against it
(`export.parity`), so this second form of the network is verified each time it is used.  BatchNorm
left unfolded (`fold_bn=False`) is an explicit per-channel multiply-add.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from jaxnas import ops
from jaxnas.spec import ArchSpec, Block, Conv, Head, analyze

__all__ = ["nchw_forward"]

_DIMS = ("NCHW", "OIHW", "NCHW")


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, np.float32)


def _activation(name: str, x):
    import jax

    if name == "hswish":  # one HardSwish op; ops.activation's x * clip(x + 3, 0, 6) / 6 traces to four
        return jax.nn.hard_swish(x)
    return ops.activation(name, x)  # layout-free; relu6 -> Clip, swish -> x * Sigmoid(x)


def _conv(conv: Conv, p: Mapping[str, Any], s: Mapping[str, Any], eps: float, x):
    from jax import lax

    w = np.transpose(_f32(p["kernel"]), (3, 2, 0, 1))  # HWIO -> OIHW; depthwise -> (C, 1, kh, kw)
    y = lax.conv_general_dilated(x, w, (conv.stride, conv.stride), conv.pads, dimension_numbers=_DIMS,
                                 feature_group_count=x.shape[1] if conv.depthwise else 1)
    if conv.bias:
        y = y + _f32(p["bias"]).reshape(-1, 1, 1)
    if conv.norm:  # unfolded BN (fold_bn=False): the Flax model's eval-mode arithmetic, per channel
        bn, st = p["bn"], s["bn"]
        mul = _f32(bn["scale"]) / np.sqrt(_f32(st["var"]) + np.float32(eps))
        y = y * mul.reshape(-1, 1, 1) + (_f32(bn["bias"]) - _f32(st["mean"]) * mul).reshape(-1, 1, 1)
    return _activation(conv.act, y)


def _dense(p: Mapping[str, Any], x, kernel: np.ndarray | None = None):
    return x @ (_f32(p["kernel"]) if kernel is None else kernel) + _f32(p["bias"])


def _squeeze_excite(block: Block, p: Mapping[str, Any], y):
    import jax
    import jax.numpy as jnp

    se = block.se
    s = _activation(se.act, _dense(p["se_reduce"], jnp.mean(y, axis=(2, 3))))
    s = _dense(p["se_expand"], s)
    gate = jax.nn.sigmoid(s) if se.gate == "sigmoid" else jax.nn.hard_sigmoid(s)
    return y * gate[:, :, None, None]


def _pool(block: Block, x):
    import flax.linen as nn
    import jax.numpy as jnp

    q = block.pool
    if q.padding:  # -inf for max, 0 for avg (count_include_pad), as the Flax model pads
        fill = -jnp.inf if block.kind == "maxpool" else 0.0
        x = jnp.pad(x, ((0, 0), (0, 0), (q.padding,) * 2, (q.padding,) * 2), constant_values=fill)
    pool = nn.max_pool if block.kind == "maxpool" else nn.avg_pool
    # flax pools are NHWC; jax2onnx's plugin transposes to NCHW around its MaxPool/AveragePool, and
    # those transposes cancel with these two.
    y = pool(jnp.transpose(x, (0, 2, 3, 1)), window_shape=(q.kernel, q.kernel), strides=(q.stride, q.stride),
             padding="VALID")
    return jnp.transpose(y, (0, 3, 1, 2))


def _block(block: Block, p: Mapping[str, Any], s: Mapping[str, Any], eps: float, x):
    if block.kind == "choice":  # the Flax model without choices returns its first candidate
        return _block(block.candidates[0], p.get("cand0", {}), s.get("cand0", {}), eps, x)
    if block.kind in ("maxpool", "avgpool"):
        return _pool(block, x)
    y = x
    for j, conv in enumerate(block.layers):
        y = _conv(conv, p.get(f"conv{j}", {}), s.get(f"conv{j}", {}), eps, y)
        if block.se is not None and block.se.after == j:
            y = _squeeze_excite(block, p, y)
    if block.shortcut is None:
        return y
    if block.shortcut == "identity":
        skip = x
        if x.shape[2:] != y.shape[2:]:  # centre crop (ops.center_crop in NCHW)
            dh, dw = (x.shape[2] - y.shape[2]) // 2, (x.shape[3] - y.shape[3]) // 2
            skip = x[:, :, dh:dh + y.shape[2], dw:dw + y.shape[3]]
    else:
        skip = _conv(block.shortcut, p.get("shortcut", {}), s.get("shortcut", {}), eps, x)
    return _activation(block.post_act, y + skip)


def _adaptive_bins(n: int, size: int) -> np.ndarray:
    """(size, n) averaging matrix of PyTorch's AdaptiveAvgPool (bin i: [floor(i n/s), ceil((i+1) n/s)))."""
    m = np.zeros((size, n))
    for i in range(size):
        a, b = (i * n) // size, -(-((i + 1) * n) // size)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _first_dense_chw(in_shape: tuple[int, int, int], kernel: Any) -> np.ndarray:
    """The first dense kernel of an adaptive-7 head, re-indexed to read the NCHW feature map flattened.

    The Flax head computes flatten_hwc(adaptive_pool7(x)) @ K with K's rows indexed (i, j, c).  Both
    steps are linear, so K' [(c, h, w)] = sum_ij P[i, h] Q[j, w] K[(i, j, c)] gives the same logits from
    flatten_chw(x) directly (float32: each entry sums at most 49 products).
    """
    h, w, c = in_shape
    k = np.asarray(kernel, np.float32).reshape(7, 7, c, -1)
    if (h, w) == (7, 7):  # the pool is the identity (224 px): only the flattening order changes
        return np.ascontiguousarray(k.transpose(2, 0, 1, 3)).reshape(c * 49, -1)
    # two small-matrix products (BLAS) instead of one 4-operand einsum: VGG's kernel is 100M entries
    kh = np.tensordot(_adaptive_bins(h, 7).astype(np.float32), k, axes=(0, 0))       # (h, 7, c, o)
    khw = np.tensordot(_adaptive_bins(w, 7).astype(np.float32), kh, axes=(0, 1))     # (w, h, c, o)
    return np.ascontiguousarray(khw.transpose(2, 1, 0, 3)).reshape(c * h * w, -1)


def _head(head: Head, in_shape: tuple[int, int, int], p: Mapping[str, Any], x):
    import jax
    import jax.numpy as jnp

    names = [f"fc{j}" for j in range(len(head.hidden))] + ["classifier"]
    first = None
    if head.pool == "global":
        x = jnp.mean(x, axis=(2, 3))
    else:
        x = x.reshape(x.shape[0], -1)
        first = _first_dense_chw(in_shape, p[names[0]]["kernel"])
    for k, name in enumerate(names):
        x = _dense(p[name], x, first if k == 0 else None)
        if k < len(names) - 1:
            x = jax.nn.relu(x)  # dropout is the identity in eval mode
    return x


def nchw_forward(spec: ArchSpec, variables: Mapping[str, Any], *, bn_eps: float = 1e-5) -> Callable[[Any], Any]:
    """`x (NHWC) -> logits` (or a head-less spec's last feature map, NHWC), computed in NCHW.

    Same inputs and outputs as the Flax model in eval mode.  `bn_eps` is used only for convs whose BN
    is not folded.  The weights are closed over.
    """
    import jax.numpy as jnp

    params = variables["params"]
    stats = variables.get("batch_stats", {}) or {}
    feature_shape = analyze(spec).blocks[-1].out_shape if spec.blocks else (*spec.input_size, spec.in_channels)

    def forward(x):
        x = jnp.transpose(x, (0, 3, 1, 2))
        for i, block in enumerate(spec.blocks):
            x = _block(block, params.get(f"block{i}", {}), stats.get(f"block{i}", {}), bn_eps, x)
        if spec.head.num_classes:
            return _head(spec.head, feature_shape, params["head"], x)
        return jnp.transpose(x, (0, 2, 3, 1))

    return forward
