"""TF-NAS step costs: bi-sampling weight step and arch step vs a plain single-path step, and vs the original.

    python benchmarks/tfnas_steps.py [--case quick|skeleton32|skeleton224] [--rounds 5] [--steps 2]
                                     [--original PATH_TO_TF-NAS_CHECKOUT] [--threads N] [--json]

Contenders, timed in alternating rounds (each turn after one untimed step; figure = median over rounds,
ratios = median of the per-round ratios):

* `plain`: a plain jaxnas training step (SGD, `make_train_step`) of a concrete single-path network of the
  same skeleton: every block k3e6 at its initial width, full depth (the original's first-epoch network
  with one op per block);
* `warmup`: the supernet's warm-up weight step (one Gumbel-sampled path, `lax.switch`);
* `bisample`: the supernet's bi-sampling weight step (Gumbel path + a second op drawn from the other seven,
  summed CE, one SGD step);
* `arch`: the architecture step (all 8 ops of every block, soft Gumbel weights, CE + latency loss, Adam);
* with `--original`: the original PyTorch implementation (AberHu/TF-NAS `models/model_search.Network`, run
  from a checkout you provide; nothing of it is part of jaxnas) doing the same: `torch_bisample` (its
  train_w_arch weight update: gumbel + random pass, clip, SGD step) and `torch_arch` (its arch update:
  sampling=False forward, CE + latency loss, Adam, log_softmax renormalisation), in its own process with
  the same thread count, batch and resolution.  Its networks are sliced to the current widths (3*in / 6*in
  at the start), ours compute the full-size tensors with masked channels.

Targets (issue 15): bisample <= 2.3x plain, arch <= 9x plain; jaxnas at least as fast as the original.
Cases: `quick` = the quick config's space (tfnas-small at 28 px, 1 channel, 10 classes, batch 64);
`skeleton32` / `skeleton224` = the original's skeleton (width 1.0, stride-2 stem, 3 channels) at 32 px batch
64 and at 224 px batch 8 (the original cannot run the small-input or narrow variants).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Callable

CASES = {
    "quick": dict(space="tfnas-small", resolution=28, in_channels=1, num_classes=10, batch=64, original=False),
    "skeleton32": dict(space="tfnas-224", resolution=32, in_channels=3, num_classes=10, batch=64, original=True),
    "skeleton224": dict(space="tfnas-224", resolution=224, in_channels=3, num_classes=100, batch=8, original=True),
}

Timer = Callable[[int], float]


def step_ms(run: Callable[[], None], steps: int) -> float:
    """Median ms of `steps` steps after one untimed step (benchmarks/train_step.py's protocol)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_step import step_ms as median_step_ms

    return median_step_ms(run, steps)


def jax_timers(case: dict) -> dict[str, Timer]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxnas import models
    from jaxnas.latency.spaces import TfnasLut, get_tfnas_space
    from jaxnas.methods.tfnas import elastic as E
    from jaxnas.methods.tfnas.search import SearchConfig, get_steps, init_arch
    from jaxnas.train import make_train_step
    from jaxnas.train.state import TrainState

    space = get_tfnas_space(case["space"], resolution=case["resolution"], in_channels=case["in_channels"],
                            num_classes=case["num_classes"])
    bs = case["batch"]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(bs, space.resolution, space.resolution, space.in_channels)), jnp.float32)
    y = jnp.asarray(rng.integers(0, space.num_classes, bs), jnp.int32)

    # plain: the concrete single-path network of the same skeleton
    spec = space.build_spec(space.default_arch(1))
    model = models.build_model(spec)
    tx = optax.sgd(0.025, 0.9)
    train_step = make_train_step(model, tx, donate=True)
    state = [TrainState.create(models.init_variables(model, 0), tx)]

    def plain() -> None:
        state[0], m = train_step(state[0], {"image": x, "label": y})
        m["loss"].block_until_ready()

    cfg = SearchConfig(batch_size=bs)
    steps = get_steps(space, "auto", cfg)
    net = steps.net
    sn = {"params": net.init(0), "arch": init_arch(space), "step": 0}
    sn["buf"] = jax.tree.map(jnp.zeros_like, sn["params"])
    sn["adam"] = steps.adam.init(sn["arch"])
    masks = jnp.asarray(E.initial_masks(space))
    key = jax.random.PRNGKey(0)
    raw = {"base": 1.0}
    for k, (lo, hi) in space.key_mid_ranges().items():
        raw[k] = {m: 0.001 * m for m in sorted({lo, hi, *range(8, hi + 1, 8)})}
    lut = TfnasLut.from_raw(raw)
    xs, ys = (jnp.asarray(a) for a in lut.arrays(space))

    def weight(bisample: bool) -> Callable[[], None]:
        def run() -> None:
            sn["params"], sn["buf"], m = steps.weight_step(sn["params"], sn["buf"], masks, sn["arch"], x, y,
                                                           jnp.float32(0.025), key, sn["step"], bisample)
            sn["step"] += 1
            m["loss"].block_until_ready()
        return run

    def arch() -> None:
        sn["arch"], sn["adam"], m = steps.arch_step(sn["params"], masks, sn["arch"], sn["adam"], x, y,
                                                    jnp.float32(5.0), key, xs, ys, jnp.float32(1.0),
                                                    jnp.float32(2.0))
        m["lat"].block_until_ready()

    out = {}
    for name, run in (("plain", plain), ("warmup", weight(False)), ("bisample", weight(True)), ("arch", arch)):
        t = time.perf_counter()
        run()  # compile
        print(f"  compiled {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        out[name] = (lambda r: lambda steps: step_ms(r, steps))(run)
    return out


# ----------------------------------------------------------------------------------------------------
# The original, in its own process
# ----------------------------------------------------------------------------------------------------

def torch_runners(original: str, case: dict, threads: int) -> dict[str, Callable[[], None]]:
    """The original's search steps (train_w_arch's weight update and arch update) on random data."""
    import collections

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    sys.path.insert(0, original)
    from models.model_search import Network  # noqa: E402  (the original, from the user's checkout)
    from tools.config import mc_mask_dddict  # noqa: E402

    mc = collections.OrderedDict()
    for stage, blocks in mc_mask_dddict.items():  # the first epoch's widths: 3*in / 6*in
        mc[stage] = collections.OrderedDict(
            (b, collections.OrderedDict((k, int(v.sum().item())) for k, v in ops.items())) for b, ops in blocks.items())
    lut = collections.defaultdict(lambda: collections.defaultdict(lambda: 0.1), base=1.0)  # latency values
    net = Network(case["num_classes"], mc, lut)  # do not change the cost; any key resolves
    net.set_temperature(5.0)
    net.train()
    opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=1e-5)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=0.01, betas=(0.5, 0.999), weight_decay=5e-4)
    bs, r = case["batch"], case["resolution"]
    x, y = torch.randn(bs, 3, r, r), torch.randint(0, case["num_classes"], (bs,))

    def bisample() -> None:  # train_w_arch, the weight half
        for p in net.weight_parameters():
            p.requires_grad = True
        for p in net.arch_parameters():
            p.requires_grad = False
        lg, _ = net(x, sampling=True, mode="gumbel")
        loss = F.cross_entropy(lg, y)
        lr_, _ = net(x, sampling=True, mode="random")
        loss = loss + F.cross_entropy(lr_, y)
        opt_w.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
        opt_w.step()

    def arch() -> None:  # train_w_arch, the arch half (every second step)
        for p in net.weight_parameters():
            p.requires_grad = False
        for p in net.arch_parameters():
            p.requires_grad = True
        lg, lat = net(x, sampling=False)
        loss = F.cross_entropy(lg, y) + torch.abs(lat / 2.0 - 1.0) * 0.1
        opt_a.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.arch_parameters(), 5.0)
        opt_a.step()
        for p in net.arch_parameters():
            p.data = F.log_softmax(p.detach().data, dim=-1)

    bisample()
    arch()
    return {"torch_bisample": bisample, "torch_arch": arch}


def _torch_worker(conn, original: str, case: dict, threads: int) -> None:
    try:
        runners = torch_runners(original, case, threads)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(f"{type(e).__name__}: {e}")
        return
    conn.send(sorted(runners))
    while (msg := conn.recv()) is not None:
        name, steps = msg
        conn.send(step_ms(runners[name], steps))


def torch_timers(original: str, case: dict, threads: int) -> tuple[dict[str, Timer], Callable[[], None]]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_torch_worker, args=(child, original, case, threads), daemon=True)
    proc.start()
    names = parent.recv()
    if isinstance(names, str):
        proc.join()
        raise SystemExit(f"error: the original could not run from {original}: {names}")

    def timer(name: str) -> Timer:
        def t(steps: int) -> float:
            parent.send((name, steps))
            return parent.recv()
        return t

    def close() -> None:
        parent.send(None)
        proc.join(timeout=30)

    return {n: timer(n) for n in names}, close


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), default="quick")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (JAX: XLA's default)")
    ap.add_argument("--original", help="a checkout of AberHu/TF-NAS (models/, tools/) to time the original")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from jaxnas import allocator

    allocator.reexec_with_tcmalloc()
    import numpy as np

    case = CASES[args.case]
    if args.original and not case["original"]:
        raise SystemExit(f"error: the original has no {args.case} variant; use --case skeleton32 or skeleton224")
    timers = jax_timers(case)
    close = None
    if args.original:
        more, close = torch_timers(args.original, case, args.threads)
        timers.update(more)
    rounds: dict[str, list[float]] = {k: [] for k in timers}
    load = os.getloadavg()
    for _ in range(args.rounds):
        for name, timer in timers.items():
            rounds[name].append(timer(args.steps))
    if close:
        close()
    ratio = lambda a, b: float(np.median(np.divide(rounds[a], rounds[b])))  # noqa: E731
    row = {"case": args.case, **case, "rounds": args.rounds, "steps_per_round": args.steps,
           "loadavg_before": [round(v, 2) for v in load], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
           **{f"{k}_ms": float(np.median(v)) for k, v in rounds.items()},
           **{f"{k}_ms_rounds": [round(m, 1) for m in v] for k, v in rounds.items()},
           "bisample_over_plain": ratio("bisample", "plain"), "arch_over_plain": ratio("arch", "plain"),
           "bisample_over_warmup": ratio("bisample", "warmup"), "arch_over_warmup": ratio("arch", "warmup")}
    if args.original:
        row["torch_threads"] = args.threads
        row["torch_over_jax_bisample"] = ratio("torch_bisample", "bisample")
        row["torch_over_jax_arch"] = ratio("torch_arch", "arch")
        jax_it = np.add(rounds["bisample"], np.multiply(rounds["arch"], 0.5))  # a search iteration: w + a/2
        torch_it = np.add(rounds["torch_bisample"], np.multiply(rounds["torch_arch"], 0.5))
        row["torch_over_jax_iteration"] = float(np.median(torch_it / jax_it))
    if args.json:
        print(json.dumps(row, indent=1))
        return
    print(f"TF-NAS steps, case {args.case} (batch {case['batch']} @ {case['resolution']} px, load "
          f"{row['loadavg_before'][0]:.1f} -> {row['loadavg_after'][0]:.1f}):")
    for k in rounds:
        print(f"  {k:15s} {row[k + '_ms']:8.1f} ms   rounds {row[k + '_ms_rounds']}")
    print(f"  bi-sampling / plain single path: {row['bisample_over_plain']:.2f}x (target <= 2.3x); "
          f"/ one supernet path: {row['bisample_over_warmup']:.2f}x")
    print(f"  arch step / plain single path:   {row['arch_over_plain']:.2f}x (target <= 9x); "
          f"/ one supernet path: {row['arch_over_warmup']:.2f}x")
    if args.original:
        print(f"  original / jaxnas: weight step {row['torch_over_jax_bisample']:.2f}x, arch step "
              f"{row['torch_over_jax_arch']:.2f}x, search iteration (w + a/2) {row['torch_over_jax_iteration']:.2f}x "
              f"(> 1: jaxnas faster)")


if __name__ == "__main__":
    main()
