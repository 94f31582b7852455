"""Convolution primitives, with depthwise, 1x1 and stem convolutions that are fast on XLA:CPU.

XLA:CPU lowers grouped convolutions (`feature_group_count`) to a slow generic loop: a 3x3 depthwise
conv on 56x56x144 took 26 ms under jit versus 0.4 ms in onnxruntime.  Written as kh*kw shifted
multiply-adds, XLA fuses it into one loop nest that is as fast as a vendor kernel, with identical
outputs and gradients.  XLA:CPU's convolution is also slow for 1x1 kernels and for shallow patches
(a stem on 1-3 input channels); both are matmuls here.  On GPU/TPU (and in exported models, where the
runtime should see a Conv) the convolution is the right op, so the choice is per backend: impl
"shift" (the CPU default) uses these rewrites, "grouped" none.

The CPU forms carry their own gradients (custom VJPs).  Left to autodiff, XLA:CPU materialises each
of the kh*kw shifted input patches of a depthwise layer as a full tensor to reduce it against the
output gradient, and transposes a 1x1 conv's incoming gradient to form its kernel gradient; in the
MobileNetV2-224 train step those copies were the largest single costs.  Figures:
benchmarks/cpu_conv_forms.py.
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

DepthwiseImpl = Literal["auto", "shift", "grouped"]
Padding = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_depthwise_impl(impl: DepthwiseImpl = "auto") -> str:
    if impl == "auto":
        return "shift" if jax.default_backend() == "cpu" else "grouped"
    if impl not in ("shift", "grouped"):
        raise ValueError(f"depthwise impl must be auto, shift or grouped, got {impl!r}")
    return impl


_IM2COL_MAX_DEPTH = 32


def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: Padding, impl: DepthwiseImpl = "grouped") -> jax.Array:
    """Dense NHWC conv with an HWIO kernel and explicit (PyTorch-style) padding.

    With impl "shift" (or "auto" on CPU) an unpadded 1x1 conv is computed as a matmul over channels
    (after subsampling for stride > 1), and a conv whose patches are shallow (kh*kw*Cin <= 32, i.e.
    a stem on 1-3 input channels) as a matmul over its stacked patches: the same sums, several times
    faster on XLA:CPU in the backward pass.
    """
    kh, kw, cin, cout = w.shape
    if resolve_depthwise_impl(impl) == "shift":
        if (kh, kw) == (1, 1) and tuple(map(tuple, padding)) == ((0, 0), (0, 0)):
            if stride > 1:
                x = x[:, ::stride, ::stride, :]
            return pointwise_matmul(x, w[0, 0])
        if kh * kw * cin <= _IM2COL_MAX_DEPTH:
            cols = jnp.concatenate(_shifted_patches(x, kh, kw, stride, padding), axis=-1)
            return pointwise_matmul(cols, w.reshape(kh * kw * cin, cout))
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DIMS)


def _channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def pointwise_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., Cin) @ w (Cin, Cout), with a kernel gradient taken over rows flattened to 2-D."""
    return _channel_matmul(x, w)


def _pointwise_fwd(x, w):
    return _channel_matmul(x, w), (x, w)


def _pointwise_bwd(res, g):
    x, w = res
    dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    # Contracting 2-D rows lets XLA:CPU read g in place; autodiff's 4-D contraction transposed g.
    dw = lax.dot_general(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return dx, dw


pointwise_matmul.defvjp(_pointwise_fwd, _pointwise_bwd)


def depthwise_conv2d_grouped(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Depthwise conv with kernel (kh, kw, 1, C) as a grouped convolution."""
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DIMS,
                                    feature_group_count=x.shape[-1])


def _shifted_patches(x: jax.Array, kh: int, kw: int, stride: int, padding: Padding) -> list[jax.Array]:
    """The kh*kw strided windows of the padded x, each the size of the conv's output, row-major."""
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    n, c = xp.shape[0], xp.shape[3]
    return [lax.slice(xp, (0, a, b, 0), (n, a + stride * (ho - 1) + 1, b + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1)) for a in range(kh) for b in range(kw)]


def _depthwise_shift_forward(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    kh, kw = w.shape[0], w.shape[1]
    out = None
    for i, patch in enumerate(_shifted_patches(x, kh, kw, stride, padding)):
        term = patch * w[i // kw, i % kw, 0]
        out = term if out is None else out + term
    return out


def sum_over_rows(operands: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Sum each (N, H, W, C) operand to (C,) in one pass over the inputs.

    One variadic reduce over H keeps C the minor (vectorised) dimension; the (N, W, C) partial sums
    are small.  XLA:CPU reduces over N, H, W at once column-wise, several times slower.
    """
    zeros = tuple(jnp.zeros((), o.dtype) for o in operands)
    partial = lax.reduce(operands, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
    return tuple(p.sum((0, 1)) for p in partial)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shift(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return _depthwise_shift_forward(x, w, stride, padding)


def _depthwise_shift_fwd(x, w, stride, padding):
    return _depthwise_shift_forward(x, w, stride, padding), (x, w)


def _depthwise_shift_bwd(stride, padding, res, g):
    x, w = res
    kh, kw = w.shape[0], w.shape[1]
    _, input_vjp = jax.vjp(lambda x: _depthwise_shift_forward(x, w, stride, padding), x)
    (dx,) = input_vjp(g)
    taps = sum_over_rows(tuple(p * g for p in _shifted_patches(x, kh, kw, stride, padding)))
    return dx, jnp.stack(taps).reshape(kh, kw, 1, -1)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def depthwise_conv2d_shift(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Depthwise conv as a sum of kh*kw strided slices times per-channel weights.

    Its kernel gradient sums all kh*kw tap products in one pass (`sum_over_rows`) instead of
    materialising each shifted patch.
    """
    return _depthwise_shift(x, w, stride, tuple(tuple(int(p) for p in pair) for pair in padding))


def depthwise_conv2d(x: jax.Array, w: jax.Array, stride: int, padding: Padding,
                     impl: DepthwiseImpl = "auto") -> jax.Array:
    if resolve_depthwise_impl(impl) == "shift":
        return depthwise_conv2d_shift(x, w, stride, padding)
    return depthwise_conv2d_grouped(x, w, stride, padding)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "relu":
        return jax.nn.relu(x)
    if name == "relu6":
        return jnp.clip(x, 0.0, 6.0)
    if name == "identity":
        return x
    if name == "swish":
        return x * jax.nn.sigmoid(x)
    if name == "hswish":
        return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
    if name == "sigmoid":
        return jax.nn.sigmoid(x)
    raise ValueError(f"unknown activation {name!r}")


def center_crop(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    dh = (x.shape[1] - hw[0]) // 2
    dw = (x.shape[2] - hw[1]) // 2
    return x[:, dh:dh + hw[0], dw:dw + hw[1], :]


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch AdaptiveAvgPool2d: bin i covers [floor(i*H/size), ceil((i+1)*H/size))."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (size, size):
        return x
    rows = []
    for i in range(size):
        h0, h1 = (i * h) // size, -(-((i + 1) * h) // size)
        cols = []
        for j in range(size):
            w0, w1 = (j * w) // size, -(-((j + 1) * w) // size)
            cols.append(jnp.mean(x[:, h0:h1, w0:w1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)
