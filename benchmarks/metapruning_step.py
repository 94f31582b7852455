"""MetaPruning training step: PruningNet vs the plain widest network, and vs the original PyTorch PruningNet.

    python benchmarks/metapruning_step.py [--original PATH_TO_MetaPruning_CHECKOUT] [--rounds 5] [--cost] [--json]

Cases: MetaPruning's MobileNetV2 space (the original's widths, channel_multiple 1) at (batch 64, 32 px,
small-input stem, 10 classes) and (batch 16, 224 px, 1000 classes).  Per case, in alternating rounds (each
turn after one untimed step; each figure the median over rounds, ratios the median of per-round ratios):

* ``pruningnet``: jaxnas's PruningNet train step (a fresh random encoding per step, label-smoothed CE, SGD
  with momentum): one compiled step for every encoding;
* ``plain``: the plain widest network of the space (`MetaSpace.max_spec()`) with the same optimizer;
* ``generator``: the weight generators alone (generate every kernel, backprop a dummy loss, SGD update) —
  the part of the PruningNet step that does not depend on batch or resolution;
* ``original`` (with ``--original``): the original repository's own PruningNet
  (``mobilenetv2/training/mobilenet_v2.py``, imported from your checkout, nothing copied) and its training
  step (random ids per batch, label-smoothed CE, ``SGD(momentum=0.9)``), in its own process with
  ``torch.set_num_threads`` = the JAX process's core count.  At 32 px the original's stem stride is set to 1
  and its ``AvgPool2d(7)`` replaced by a global average pool (the small-input variant; its own code does not
  run below 224 px), and its classifier sized to 10 classes;
* ``original_fixed_generators`` (with ``--original``): the same step with the generators cut off from
  the backward pass: each generator's output kernel is made a leaf of the autograd graph (a forward hook
  on its last layer, ``fc12``/``fc22``/``fc32``, returns it detached, with ``requires_grad``), so the forward
  still generates every kernel and the backward still computes every kernel's gradient, but no gradient
  reaches the generators' parameters and SGD skips them.  It is the original's step less its generator
  backward and update, to set beside jaxnas's plain step: which part of the original's step is its
  convolutions.  (Fixing the generators' parameters instead, ``requires_grad=False``, would also skip
  every conv's weight gradient, the generated kernels then needing none.)

``--cost`` also prints XLA's cost analysis of each compiled jaxnas step (memory traffic, "bytes accessed",
and FLOPs): on 2 CPU cores these steps are memory bound, and the traffic says where a step's time goes
without timing noise (the quick config's shapes are ``--cases 64x28``).

Targets (issue 14): pruningnet <= 1.5 x plain; jaxnas's step at least as fast as the original's.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import paired_rounds, step_ms  # noqa: E402

from jaxnas import allocator, models  # noqa: E402
from jaxnas.methods.metapruning.pruningnet import PruningNet, build_pruningnet, init_pruningnet  # noqa: E402
from jaxnas.methods.metapruning.space import get_space  # noqa: E402
from jaxnas.methods.metapruning.training import PRUNINGNET_STEP, sample_encoding  # noqa: E402
from jaxnas.train import TrainState, make_train_step  # noqa: E402

CASES = ((64, 32, 10), (16, 224, 1000))
Timer = Callable[[int], float]


def _space(res: int, classes: int):
    return get_space("mobilenet_v2", resolution=res, num_classes=classes, in_channels=3, small_input=res < 64)


def _batch(batch: int, res: int, classes: int):
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.normal(size=(batch, res, res, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, classes, batch), jnp.int32)}


def pruningnet_timer(batch: int, res: int, classes: int) -> Timer:
    space = _space(res, classes)
    model = build_pruningnet(space)
    tx = optax.sgd(0.1, momentum=0.9)
    state = [jax.device_put(TrainState.create(init_pruningnet(model, 0), tx))]
    # As the PruningNet trainer builds it (jaxnas.methods.metapruning.training.train_pruningnet).
    step = make_train_step(model, tx, label_smoothing=0.1, **PRUNINGNET_STEP)
    data, counter = _batch(batch, res, classes), [0]

    def run() -> None:
        ids = jnp.asarray(sample_encoding(space, 0, counter[0]))
        counter[0] += 1
        state[0], m = step(state[0], data, {"ids": ids})
        m["loss"].block_until_ready()

    run()
    return _counted(lambda steps: step_ms(run, steps), None,
                    lambda: step.lower(state[0], data, {"ids": jnp.asarray(sample_encoding(space, 0, 0))}))


def plain_timer(batch: int, res: int, classes: int) -> Timer:
    spec = _space(res, classes).max_spec()
    model = models.build_model(spec)
    tx = optax.sgd(0.1, momentum=0.9)
    state = [jax.device_put(TrainState.create(models.init_variables(model, 0), tx))]
    step = make_train_step(model, tx, label_smoothing=0.1, donate=True)
    data = _batch(batch, res, classes)

    def run() -> None:
        state[0], m = step(state[0], data)
        m["loss"].block_until_ready()

    run()
    return _counted(lambda steps: step_ms(run, steps), state[0].params, lambda: step.lower(state[0], data))


def _counted(timer: Timer, params, lower: Callable[[], "jax.stages.Lowered"]) -> Timer:
    """The timer with `.params` (the parameter count of what it trains, None: not counted) and `.cost()`
    (XLA's cost analysis of its compiled step: GB of memory traffic and GFLOPs)."""
    timer.params = None if params is None else int(sum(np.size(x) for x in jax.tree.leaves(params)))

    def cost() -> dict[str, float]:
        c = lower().compile().cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c  # older jax: one dict per device program
        return {"gbytes": round(float(c.get("bytes accessed", float("nan"))) / 1e9, 2),
                "gflops": round(float(c.get("flops", float("nan"))) / 1e9, 2)}

    timer.cost = cost
    return timer


def generator_timer(res: int, classes: int) -> Timer:
    space = _space(res, classes)
    model = build_pruningnet(space)
    params = jax.device_put(init_pruningnet(model, 0)["params"])
    tx = optax.sgd(0.1, momentum=0.9)

    def update(params, opt, ids):
        def loss(p):
            kernels = model.apply({"params": p}, {"ids": ids}, method=PruningNet.generate)
            return sum(jnp.mean(k) for k in jax.tree.leaves(kernels))
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    state = [params, tx.init(params)]
    update = jax.jit(update)  # not donated, as the PruningNet step (training.PRUNINGNET_STEP)
    counter = [0]

    def run() -> None:
        state[0], state[1] = update(state[0], state[1], jnp.asarray(sample_encoding(space, 0, counter[0])))
        counter[0] += 1
        jax.block_until_ready(state[0])

    run()
    return _counted(lambda steps: step_ms(run, steps), state[0],
                    lambda: update.lower(state[0], state[1], jnp.asarray(sample_encoding(space, 0, 0))))


# ------------------------------------------------------------------------------------------------------
# The original PyTorch PruningNet, imported from the user's checkout, in its own process.
# ------------------------------------------------------------------------------------------------------

def _original_runner(original: str, batch: int, res: int, classes: int, threads: int,
                     fixed_generators: bool = False) -> Callable[[], None]:
    import importlib.util

    import torch
    from torch import nn

    torch.set_num_threads(threads)
    path = Path(original) / "mobilenetv2" / "training" / "mobilenet_v2.py"
    spec = importlib.util.spec_from_file_location("metapruning_original_mbv2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.MobileNetV2()
    if res < 64:  # the small-input variant: stride-1 stem, global pooling (AvgPool2d(7) needs 7x7 maps)
        net.feature[0].stride = 1
        net.pool1 = nn.AdaptiveAvgPool2d(1)
    net.fc = nn.Linear(1280, classes)
    net.train()
    if fixed_generators:  # each generator ends in fc12 / fc22 / fc32 (fc11 ... feed them; the classifier is `fc`)
        for name, module in net.named_modules():
            if re.fullmatch(r"fc\d2", name.rsplit(".", 1)[-1]):
                module.register_forward_hook(lambda _m, _inp, out: out.detach().requires_grad_())
    # the original: SGD(momentum=0.9)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], 0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)  # = the original's CrossEntropyLabelSmooth(0.1)
    x, y = torch.randn(batch, 3, res, res), torch.randint(0, classes, (batch,))
    rng = np.random.default_rng(0)
    stage_repeat = [1, 1, 2, 3, 4, 3, 3, 1]

    def run() -> None:
        mid = rng.integers(0, 31, 18)            # the original's training draws (18 mid ids, stage ids)
        overall = [int(v) for s, r in zip(rng.integers(0, 31, 8), stage_repeat) for v in [s] * r]
        opt.zero_grad()
        crit(net(x, mid, overall), y).backward()
        opt.step()

    run()
    return run


def _original_worker(conn, original: str, batch: int, res: int, classes: int, threads: int,
                     fixed_generators: bool) -> None:
    try:
        run = _original_runner(original, batch, res, classes, threads, fixed_generators)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(f"{type(e).__name__}: {e}")
        return
    conn.send("ok")
    while steps := conn.recv():
        conn.send(step_ms(run, steps))


def original_timer(original: str, batch: int, res: int, classes: int, fixed_generators: bool = False) -> Timer:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_original_worker, daemon=True,
                       args=(child, original, batch, res, classes, os.cpu_count() or 1, fixed_generators))
    proc.start()
    status = parent.recv()
    if status != "ok":
        proc.join()
        raise RuntimeError(f"the original PruningNet did not run: {status}")

    def timer(steps: int) -> float:
        parent.send(steps)
        return parent.recv() if steps else 0.0

    return timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", help="a checkout of github.com/liuzechun/MetaPruning (its PruningNet is timed)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cases", default="64x32,16x224", help="batch x resolution, comma separated")
    ap.add_argument("--cost", action="store_true", help="also print XLA's cost analysis of each compiled step")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    allocator.reexec_with_tcmalloc()
    rows = []
    for case in a.cases.split(","):
        batch, res = (int(v) for v in case.split("x"))
        classes = 10 if res < 64 else 1000
        load_before = os.getloadavg()[0]
        timers = {"pruningnet": pruningnet_timer(batch, res, classes), "plain": plain_timer(batch, res, classes),
                  "generator": generator_timer(res, classes)}
        if a.original:
            timers["original"] = original_timer(a.original, batch, res, classes)
            timers["original_fixed_generators"] = original_timer(a.original, batch, res, classes, True)
        per_round = paired_rounds(timers, a.rounds, a.steps)
        if a.original:
            timers["original"](0)
            timers["original_fixed_generators"](0)
        row = {"batch": batch, "resolution": res, "classes": classes, "threads": os.cpu_count(),
               "allocator": allocator.loaded_allocator(), "rounds": a.rounds, "steps_per_round": a.steps,
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        for name, ms in per_round.items():
            row[f"{name}_ms"] = float(np.median(ms))
            row[f"{name}_ms_rounds"] = [round(m, 1) for m in ms]
        ratio = lambda x, y: float(np.median(np.divide(per_round[x], per_round[y])))  # noqa: E731
        row["pruningnet_over_plain"] = ratio("pruningnet", "plain")
        row["generator_share"] = ratio("generator", "pruningnet")
        # the generators' parameters (each conv's MLP ends in a layer of 32 x the full kernel's size) are
        # updated densely every step whatever the batch: the step cannot cost less than plain + generators
        row["plain_params"], row["pruningnet_params"] = timers["plain"].params, timers["generator"].params
        row["floor_over_plain"] = float(np.median((np.asarray(per_round["plain"]) + per_round["generator"])
                                                  / np.asarray(per_round["plain"])))
        if a.original:
            row["original_over_pruningnet"] = ratio("original", "pruningnet")
            row["original_fixed_generators_over_plain"] = ratio("original_fixed_generators", "plain")
        if a.cost:
            row["xla_cost"] = {n: timers[n].cost() for n in ("pruningnet", "plain", "generator")}
        rows.append(row)
        print(json.dumps(row) if a.json else
              f"batch {batch} @ {res}px: PruningNet {row['pruningnet_ms']:.0f} ms, plain widest net "
              f"{row['plain_ms']:.0f} ms (ratio {row['pruningnet_over_plain']:.2f}), generators alone "
              f"{row['generator_ms']:.0f} ms ({100 * row['generator_share']:.0f} % of the step; "
              f"{row['pruningnet_params'] / 1e6:.1f} M PruningNet parameters (nearly all in generators) vs "
              f"{row['plain_params'] / 1e6:.2f} M in the plain net: floor {row['floor_over_plain']:.2f} x plain)"
              + (f", original PyTorch {row['original_ms']:.0f} ms (original / jaxnas "
                 f"{row['original_over_pruningnet']:.2f}); its step with the generators fixed "
                 f"{row['original_fixed_generators_ms']:.0f} ms ({row['original_fixed_generators_over_plain']:.2f} x "
                 "jaxnas's plain step)" if a.original else "")
              + f"; load average {row['load_average']}"
              + ("; XLA memory traffic per step " + ", ".join(f"{n} {c['gbytes']:.1f} GB ({c['gflops']:.1f} GFLOPs)"
                                                              for n, c in row["xla_cost"].items())
                 if a.cost else ""), flush=True)
        del timers  # free this case's states (the PruningNet's are GBs) before building the next
        gc.collect()


if __name__ == "__main__":
    main()
