"""Milliseconds per train step and images/s for MobileNetV2 on this machine's default JAX backend.

    python benchmarks/train_step.py [--json] [--rounds 5] [--steps 2] [--torch]

Cases: (batch 64, 32x32, 10 classes) and (batch 16, 224x224, 1000 classes); for each, the plain model
with the backend's depthwise implementation, the masked supernet (all width masks passed as traced
arrays, as every channel-pruning method runs it), and with `--torch` the torchvision-equivalent PyTorch
CPU step (same shapes, SGD; in its own process).  These run in alternating rounds (each turn after
one untimed step), so a slow period of a shared machine hits every contender alike; each figure is the
median over rounds, and
`torch_over_plain` is the median of the per-round ratios.  The grouped-conv implementation (XLA's
default) is timed once after the rounds: it is several times slower and only shown for reference.
Like the `jaxnas` command, the script re-executes itself on tcmalloc where the system has it (see
jaxnas.allocator; the PyTorch worker inherits it); `JAXNAS_ALLOCATOR=system` times glibc malloc.
Targets (issue 2): at least PyTorch CPU speed; masked supernet overhead <= 15%.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas import allocator, models, supernet, zoo

CASES = ((64, 32, 10), (16, 224, 1000))


def jax_step_runner(spec, impl: str, masked: bool, batch: int) -> Callable[[], None]:
    """A compiled SGD train step on fixed random data; calling the runner runs one step and waits."""
    model = models.build_model(spec, depthwise_impl=impl)
    variables = models.init_variables(model, 0)
    tx = optax.sgd(0.1, 0.9, nesterov=True)
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
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]

    def run() -> None:
        *state[:], loss = step(*state, x, y, choices)  # the runner keeps the updated state
        loss.block_until_ready()

    run()  # compile
    return run


def step_ms(run: Callable[[], None], steps: int) -> float:
    """Median ms of `steps` steps, after one untimed step (training runs steps back to back)."""
    run()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


Timer = Callable[[int], float]


def paired_rounds(timers: dict[str, Timer], rounds: int, steps: int) -> dict[str, list[float]]:
    """Per-round median ms of each timer, the timers alternating within every round."""
    out: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            out[name].append(timer(steps))
    return out


def jax_step_timer(spec, impl: str, masked: bool, batch: int) -> Timer:
    run = jax_step_runner(spec, impl, masked, batch)
    return lambda steps: step_ms(run, steps)


def torch_step_runner(batch: int, res: int, classes: int) -> Callable[[], None] | None:
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)

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

    def run() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    run()  # warm-up
    return run


def _torch_worker(conn, batch: int, res: int, classes: int) -> None:
    run = torch_step_runner(batch, res, classes)
    conn.send(run is not None)
    while run is not None and (steps := conn.recv()):
        conn.send(step_ms(run, steps))


def torch_step_timer(batch: int, res: int, classes: int) -> Timer | None:
    """The PyTorch step timed in its own process (idle, blocked on a pipe, while JAX runs).

    In one process, the JAX step run after a PyTorch step was 20-50 % slower and erratic here: the
    two frameworks share one allocator and thread budget.  None when torch is not installed.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_torch_worker, args=(child, batch, res, classes), daemon=True)
    proc.start()
    if not parent.recv():
        proc.join()
        return None

    def timer(steps: int) -> float:  # 0 steps ends the worker
        parent.send(steps)
        return parent.recv() if steps else 0.0

    return timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (each figure: median over rounds)")
    ap.add_argument("--steps", type=int, default=2, help="steps per runner per round (median within a round)")
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch CPU equivalent")
    ap.add_argument("--no-grouped", action="store_true", help="skip the (slow) grouped-conv reference")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    allocator.reexec_with_tcmalloc()
    rows = []
    fast = "shift" if jax.default_backend() == "cpu" else "grouped"
    for batch, res, classes in CASES:
        spec = zoo.mobilenet_v2(num_classes=classes, resolution=res)
        timers = {"plain": jax_step_timer(spec, fast, False, batch),
                  "masked": jax_step_timer(spec, fast, True, batch)}
        torch_timer = torch_step_timer(batch, res, classes) if args.torch else None
        if torch_timer is not None:
            timers["torch"] = torch_timer
        per_round = paired_rounds(timers, args.rounds, args.steps)
        row = {"batch": batch, "resolution": res, "classes": classes, "backend": jax.default_backend(),
               "depthwise": fast, "allocator": allocator.loaded_allocator(), "rounds": args.rounds,
               "steps_per_round": args.steps}
        for name, ms in per_round.items():
            row[f"{name}_ms"] = float(np.median(ms))
            row[f"{name}_ms_rounds"] = [round(m, 1) for m in ms]
        if torch_timer is not None:
            timers["torch"](0)  # ends the worker
            row["torch_over_plain"] = float(np.median(np.divide(per_round["torch"], per_round["plain"])))
        row["mask_overhead_pct"] = 100 * (float(np.median(np.divide(per_round["masked"], per_round["plain"]))) - 1)
        row["images_per_s"] = batch / row["plain_ms"] * 1000
        if fast != "grouped" and not args.no_grouped:
            row["grouped_ms"] = jax_step_timer(spec, "grouped", False, batch)(2)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        extra = "".join(f", {k} {r[k]:.0f} ms" for k in ("torch_ms", "grouped_ms") if r.get(k))
        if "torch_over_plain" in r:
            extra += f" (PyTorch/JAX per round: {r['torch_over_plain']:.2f}x)"
        print(f"MobileNetV2 batch {r['batch']} @ {r['resolution']}px/{r['classes']} cls ({r['backend']}, "
              f"{r['depthwise']}, {r['allocator']} malloc): plain {r['plain_ms']:.0f} ms "
              f"({r['images_per_s']:.0f} img/s), masked "
              f"{r['masked_ms']:.0f} ms ({r['mask_overhead_pct']:+.1f}%){extra}")


if __name__ == "__main__":
    main()
