"""Milliseconds per train step and images/s for MobileNetV2 on this machine's default JAX backend.

    python benchmarks/train_step.py [--json] [--steps 5] [--torch]

Cases: (batch 64, 32x32, 10 classes) and (batch 16, 224x224, 1000 classes); for each, the plain model
with the backend's depthwise implementation, the grouped-conv implementation (XLA's default), and the
masked supernet (all width masks passed as traced arrays, as every channel-pruning method runs it).
`--torch` adds torchvision-equivalent PyTorch CPU timings when torch is installed (same shapes, SGD).
Targets (issue 2): at least PyTorch CPU speed; masked supernet overhead <= 15%.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas import models, supernet, zoo

CASES = ((64, 32, 10), (16, 224, 1000))


def _jax_step_ms(spec, impl: str, masked: bool, batch: int, steps: int) -> float:
    model = models.build_model(spec, depthwise_impl=impl)
    variables = models.init_variables(model, 0)
    tx = optax.sgd(0.1, 0.9, nesterov=True)
    opt = tx.init(variables["params"])
    choices = {"masks": supernet.full_masks(spec)} if masked else None

    @jax.jit
    def step(params, stats, opt, x, y, choices):
        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, choices=choices,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *spec.input_size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, spec.head.num_classes, batch), jnp.int32)
    p, s = variables["params"], variables["batch_stats"]
    p, s, opt, loss = step(p, s, opt, x, y, choices)
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        p, s, opt, loss = step(p, s, opt, x, y, choices)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _torch_step_ms(batch: int, res: int, classes: int, steps: int) -> float | None:
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.set_num_threads(max(1, len(jax.devices("cpu")) and __import__("os").cpu_count()))

    def cbr(i, o, k=3, s=1, g=1, act=True):
        layers = [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class IR(nn.Module):
        def __init__(self, i, o, s, t):
            super().__init__()
            h = i * t
            layers = (cbr(i, h, 1) if t != 1 else []) + cbr(h, h, 3, s, h) + cbr(h, o, 1, act=False)
            self.body, self.res = nn.Sequential(*layers), s == 1 and i == o

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    layers, cin = cbr(3, 32, 3, 2), 32
    for t, c, n, s in zoo.MBV2_SETTINGS:
        for k in range(n):
            layers.append(IR(cin, c, s if k == 0 else 1, t))
            cin = c
    layers += cbr(cin, 1280, 1)
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, 3, res, res), torch.randint(0, classes, (batch,))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch CPU equivalent")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    fast = "shift" if jax.default_backend() == "cpu" else "grouped"
    for batch, res, classes in CASES:
        spec = zoo.mobilenet_v2(num_classes=classes, resolution=res)
        row = {"batch": batch, "resolution": res, "classes": classes, "backend": jax.default_backend(),
               "depthwise": fast}
        row["plain_ms"] = _jax_step_ms(spec, fast, False, batch, args.steps)
        row["masked_ms"] = _jax_step_ms(spec, fast, True, batch, args.steps)
        if fast != "grouped":
            row["grouped_ms"] = _jax_step_ms(spec, "grouped", False, batch, max(2, args.steps // 2))
        if args.torch:
            row["torch_ms"] = _torch_step_ms(batch, res, classes, args.steps)
        row["images_per_s"] = batch / row["plain_ms"] * 1000
        row["mask_overhead_pct"] = 100 * (row["masked_ms"] / row["plain_ms"] - 1)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        extra = "".join(f", {k} {r[k]:.0f} ms" for k in ("grouped_ms", "torch_ms") if r.get(k))
        print(f"MobileNetV2 batch {r['batch']} @ {r['resolution']}px/{r['classes']} cls ({r['backend']}, "
              f"{r['depthwise']}): plain {r['plain_ms']:.0f} ms ({r['images_per_s']:.0f} img/s), masked "
              f"{r['masked_ms']:.0f} ms ({r['mask_overhead_pct']:+.1f}%){extra}")


if __name__ == "__main__":
    main()
