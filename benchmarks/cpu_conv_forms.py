"""Where XLA:CPU spends a MobileNetV2 train step: the conv formulations jaxnas uses on CPU, measured.

Prints milliseconds (median of --repeats) for
  1. forward + backward of 1x1 convs as an XLA convolution vs as a matmul (what `ops.conv2d` does on
     CPU), and PyTorch's conv when torch is installed;
  2. the shifted depthwise conv's gradients: input gradient alone vs input + kernel gradient, and the
     kernel gradient's 9 sums as separate reductions vs one variadic `lax.reduce`;
  3. whole train steps (benchmarks/train_step.py's step) with 1x1 convs as matmuls vs as convolutions,
     and with every depthwise conv replaced by a per-channel scale (its share of the step).

    python benchmarks/cpu_conv_forms.py [--repeats 5] [--skip-steps]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxnas import ops, zoo  # noqa: E402
from train_step import _jax_step_ms  # noqa: E402

POINTWISE = ((16, 112, 32, 16), (16, 112, 16, 96), (16, 56, 24, 144), (16, 56, 144, 24), (16, 14, 384, 64),
             (16, 7, 320, 1280))
DEPTHWISE = ((16, 112, 96, 2), (16, 56, 144, 1), (16, 112, 32, 1))
ZERO = ((0, 0), (0, 0))


def jax_ms(f, *args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def torch_pointwise_ms(n, h, ci, co, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    x = torch.randn(n, ci, h, h, requires_grad=True)
    w = torch.randn(co, ci, 1, 1, requires_grad=True)

    def step():
        (torch.nn.functional.conv2d(x, w) ** 2).sum().backward()

    step()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def pointwise(repeats: int) -> None:
    print("1x1 conv, forward + backward (ms): XLA convolution | matmul | PyTorch")
    rng = np.random.default_rng(0)
    for n, h, ci, co in POINTWISE:
        x = jnp.asarray(rng.normal(size=(n, h, h, ci)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(1, 1, ci, co)) * 0.1, jnp.float32)
        row = []
        for impl in ("grouped", "shift"):
            g = jax.jit(jax.grad(lambda x, w, impl=impl: (ops.conv2d(x, w, 1, ZERO, impl) ** 2).sum(), (0, 1)))
            row.append(jax_ms(g, x, w, repeats=repeats))
        t = torch_pointwise_ms(n, h, ci, co, repeats)
        print(f"  {n}x{h}x{h} {ci:>4} -> {co:<4}  {row[0]:7.1f} | {row[1]:7.1f} | "
              f"{'-' if t is None else f'{t:.1f}'}")


def depthwise(repeats: int) -> None:
    print("shifted 3x3 depthwise conv (ms): grad x | grad x and w | kernel grad as 9 reductions | as one variadic reduce")
    rng = np.random.default_rng(0)
    pad = ((1, 1), (1, 1))
    for n, h, c, s in DEPTHWISE:
        x = jnp.asarray(rng.normal(size=(n, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)
        loss = lambda x, w: (ops.depthwise_conv2d_shift(x, w, s, pad) ** 2).sum()  # noqa: E731
        gx = jax_ms(jax.jit(jax.grad(loss)), x, w, repeats=repeats)
        gxw = jax_ms(jax.jit(jax.grad(loss, (0, 1))), x, w, repeats=repeats)
        ho = (h + 2 - 3) // s + 1
        g = jnp.asarray(rng.normal(size=(n, ho, ho, c)), jnp.float32)
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        wins = lambda xp: [lax.slice(xp, (0, a, b, 0), (n, a + s * (ho - 1) + 1, b + s * (ho - 1) + 1, c),  # noqa: E731
                                     (1, s, s, 1)) for a in range(3) for b in range(3)]
        sep = jax.jit(lambda xp, g: jnp.stack([jnp.sum(p * g, axis=(0, 1, 2)) for p in wins(xp)]))

        def variadic(xp, g):
            terms = tuple(p * g for p in wins(xp))
            zeros = tuple(jnp.zeros((), jnp.float32) for _ in terms)
            return jnp.stack(lax.reduce(terms, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1, 2)))

        print(f"  {n}x{h}x{h}x{c} stride {s}  {gx:7.1f} | {gxw:7.1f} | {jax_ms(sep, xp, g, repeats=repeats):7.1f} | "
              f"{jax_ms(jax.jit(variadic), xp, g, repeats=repeats):7.1f}")


def steps(repeats: int) -> None:
    print("train step (ms): 1x1 as matmul | 1x1 as XLA convolution | depthwise replaced by a scale")
    conv2d = ops.conv2d
    dw = ops.depthwise_conv2d_shift
    cases = ((zoo.mobilenet_v2(num_classes=1000, resolution=224), 16, "MBV2-1.0 @224, batch 16"),
             (zoo.mobilenet_v2(num_classes=10, resolution=28, width=0.5, small_input=True, in_channels=3), 128,
              "MBV2-0.5 small-input @28, batch 128"))
    try:
        for spec, batch, name in cases:
            as_matmul = _jax_step_ms(spec, "shift", False, batch, repeats)
            ops.conv2d = lambda x, w, s, p, impl="grouped": conv2d(x, w, s, p, "grouped")
            as_conv = _jax_step_ms(spec, "shift", False, batch, repeats)
            ops.conv2d = conv2d
            ops.depthwise_conv2d_shift = lambda x, w, s, p: (x[:, ::s, ::s, :] if s > 1 else x) * w[1, 1, 0]
            no_dw = _jax_step_ms(spec, "shift", False, batch, repeats)
            ops.depthwise_conv2d_shift = dw
            print(f"  {name}: {as_matmul:7.0f} | {as_conv:7.0f} | {no_dw:7.0f}")
    finally:
        ops.conv2d, ops.depthwise_conv2d_shift = conv2d, dw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-steps", action="store_true", help="only the per-op timings (a few seconds)")
    a = ap.parse_args(argv)
    pointwise(a.repeats)
    depthwise(a.repeats)
    if not a.skip_steps:
        steps(a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
