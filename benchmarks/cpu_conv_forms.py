"""Where XLA:CPU spends a MobileNetV2 train step: the conv formulations jaxnas uses on CPU, measured.

Prints milliseconds (median of --repeats) for
  1. forward + backward of 1x1 convs as an XLA convolution, as a matmul left to autodiff, and as
     `ops.pointwise_matmul` (its own VJP), and PyTorch's conv when torch is installed;
  2. forward + backward of the shifted 3x3 depthwise conv, left to autodiff vs with its own VJP
     (one-pass kernel gradient, `ops.sum_over_rows`), and XLA's grouped convolution;
  3. forward + kernel gradient of a stem conv (3x3, stride 2, 3 -> 32) as an XLA convolution vs as a
     matmul over stacked patches (what `ops.conv2d` does on CPU for shallow patches);
  4. whole train steps (benchmarks/train_step.py's step), in alternating rounds: as shipped; with both
     custom VJPs replaced by autodiff; with 1x1 convs as XLA convolutions; and with every depthwise conv
     replaced by a per-channel scale (the depthwise share of the step).

    python benchmarks/cpu_conv_forms.py [--repeats 5] [--rounds 3] [--skip-steps]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from jaxnas import allocator, ops, zoo  # noqa: E402
from train_step import jax_step_timer, paired_rounds, step_ms  # noqa: E402

POINTWISE = ((16, 112, 32, 16), (16, 112, 16, 96), (16, 56, 24, 144), (16, 56, 144, 24), (16, 14, 384, 64),
             (16, 7, 320, 1280))
DEPTHWISE = ((16, 112, 96, 2), (16, 56, 144, 1), (16, 112, 32, 1))
ZERO = ((0, 0), (0, 0))


def jax_ms(f, *args, repeats: int) -> float:
    return step_ms(lambda: jax.block_until_ready(f(*args)), repeats)


def torch_pointwise_ms(n, h, ci, co, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    x = torch.randn(n, ci, h, h, requires_grad=True)
    w = torch.randn(co, ci, 1, 1, requires_grad=True)
    return step_ms(lambda: (torch.nn.functional.conv2d(x, w) ** 2).sum().backward(), repeats)


def pointwise(repeats: int) -> None:
    print("1x1 conv, forward + backward (ms): XLA convolution | matmul, autodiff | matmul, own VJP | PyTorch")
    rng = np.random.default_rng(0)
    for n, h, ci, co in POINTWISE:
        x = jnp.asarray(rng.normal(size=(n, h, h, ci)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(1, 1, ci, co)) * 0.1, jnp.float32)
        forms = (lambda x, w: ops.conv2d(x, w, 1, ZERO, "grouped"), lambda x, w: ops._channel_matmul(x, w[0, 0]),
                 lambda x, w: ops.conv2d(x, w, 1, ZERO, "shift"))
        row = [jax_ms(jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) ** 2).sum(), (0, 1))), x, w, repeats=repeats)
               for f in forms]
        t = torch_pointwise_ms(n, h, ci, co, repeats)
        print(f"  {n}x{h}x{h} {ci:>4} -> {co:<4}  " + " | ".join(f"{v:7.1f}" for v in row)
              + f" | {'-' if t is None else f'{t:.1f}'}")


def depthwise(repeats: int) -> None:
    print("3x3 depthwise conv, forward + backward (ms): shifted, autodiff | shifted, own VJP | XLA grouped conv")
    rng = np.random.default_rng(0)
    pad = ((1, 1), (1, 1))
    for n, h, c, s in DEPTHWISE:
        x = jnp.asarray(rng.normal(size=(n, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)
        forms = (lambda x, w: ops._depthwise_shift_forward(x, w, s, pad),
                 lambda x, w: ops.depthwise_conv2d_shift(x, w, s, pad),
                 lambda x, w: ops.depthwise_conv2d_grouped(x, w, s, pad))
        row = [jax_ms(jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) ** 2).sum(), (0, 1))), x, w, repeats=repeats)
               for f in forms]
        print(f"  {n}x{h}x{h}x{c} stride {s}  " + " | ".join(f"{v:7.1f}" for v in row))


def stem(repeats: int) -> None:
    print("stem conv 3x3/2, 3 -> 32, forward + kernel gradient (ms): XLA convolution | matmul over stacked patches")
    rng = np.random.default_rng(0)
    pad = ((1, 1), (1, 1))
    for n, h in ((16, 224), (64, 32)):
        x = jnp.asarray(rng.normal(size=(n, h, h, 3)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 3, 32)), jnp.float32)
        row = [jax_ms(jax.jit(jax.grad(lambda w, x, impl=impl: (ops.conv2d(x, w, 2, pad, impl) ** 2).sum())),
                      w, x, repeats=repeats) for impl in ("grouped", "shift")]
        print(f"  {n}x{h}x{h}x3  " + " | ".join(f"{v:7.1f}" for v in row))


def steps(rounds: int) -> None:
    print("train step (ms, median of alternating rounds): as shipped | custom VJPs replaced by autodiff | "
          "1x1 as XLA convolution | depthwise replaced by a scale")
    saved = ops.conv2d, ops.depthwise_conv2d_shift, ops.pointwise_matmul
    conv2d, _, _ = saved
    variants = {
        "shipped": {},
        "autodiff": {"pointwise_matmul": ops._channel_matmul,
                     "depthwise_conv2d_shift": lambda x, w, s, p: ops._depthwise_shift_forward(x, w, s, tuple(p))},
        "xla_1x1": {"conv2d": lambda x, w, s, p, impl="grouped": conv2d(x, w, s, p, "grouped")},
        "no_depthwise": {"depthwise_conv2d_shift": lambda x, w, s, p: (x[:, ::s, ::s, :] if s > 1 else x) * w[1, 1, 0]},
    }
    cases = ((zoo.mobilenet_v2(num_classes=1000, resolution=224), 16, "MBV2-1.0 @224, batch 16"),
             (zoo.mobilenet_v2(num_classes=10, resolution=28, width=0.5, small_input=True, in_channels=3), 128,
              "MBV2-0.5 small-input @28, batch 128"))
    for spec, batch, name in cases:
        timers = {}
        for key, patch in variants.items():
            try:
                for attr, fn in patch.items():
                    setattr(ops, attr, fn)
                timers[key] = jax_step_timer(spec, "shift", False, batch)  # traced and compiled here
            finally:
                ops.conv2d, ops.depthwise_conv2d_shift, ops.pointwise_matmul = saved
        ms = {k: float(np.median(v)) for k, v in paired_rounds(timers, rounds, 2).items()}
        print(f"  {name}: " + " | ".join(f"{ms[k]:7.0f}" for k in variants))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the whole-step variants")
    ap.add_argument("--skip-steps", action="store_true", help="only the per-op timings (under a minute)")
    a = ap.parse_args(argv)
    allocator.reexec_with_tcmalloc()  # as the jaxnas command does; JAXNAS_ALLOCATOR=system opts out
    print(f"malloc: {allocator.loaded_allocator()}")
    pointwise(a.repeats)
    depthwise(a.repeats)
    stem(a.repeats)
    if not a.skip_steps:
        steps(a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
