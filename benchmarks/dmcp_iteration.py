"""DMCP search iteration time: jaxnas vs the original PyTorch DMCP (Zx55/dmcp), same machine, same run.

    python benchmarks/dmcp_iteration.py [--original /path/to/Zx55-dmcp-checkout] [--rounds 5] [--iters 2]
                                        [--threads 2] [--classes 1000] [--json]

Settings (issue 18): the original's MobileNetV2 1.5x supernet, widths 0.1-1.5 in steps of 0.1 (channel groups
as its AlphaLayer, channel_multiple 1), batch 32 of 64x64 random images, `--classes` outputs (1000: the
original's head; jaxnas's quick config has 10), label smoothing 0.1, in-place distillation.  Two phases:

* weight warm-up: the sandwich (max, min, two random widths) summed into one SGD step;
* arch phase: the same sandwich, then one step of the architecture parameters (max width, alpha-scaled).

jaxnas runs `jaxnas.methods.dmcp.search.build_program(...).iteration`, the code `jaxnas search` runs.  The
original runs its own model (`models.dmcp.dmcp_mobilenet`) and its own iteration
(`runner.dmcp_runner.DMCPRunner._train_one_batch`) from a local checkout given by `--original` (nothing of
it is copied here), in its own process, with the SGD optimizers and LR schedulers its `utils.tools` builds
(same parameter groups, `utils.lr_scheduler.WarmUpCosineLRScheduler`).  Two shims make its code run on a
CPU-only PyTorch 2: its metrics helper `utils.meter.accuracy` is replaced by the same computation with
`reshape` (its `view` fails on non-contiguous tensors since PyTorch 1.x), and matplotlib, imported by its
plotting helpers only, is stubbed when absent.

Contenders alternate within every round (each turn after one untimed iteration), so a slow period of a
shared machine hits both alike; a figure is the median over rounds of the per-round median, and a ratio
the median of per-round ratios (original / jaxnas: > 1 means jaxnas is faster).  Like the `jaxnas`
command the script re-executes itself on tcmalloc where the system has it (the PyTorch worker inherits it).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH, RESOLUTION, MAX_WIDTH, MIN_WIDTH, WIDTH_OFFSET = 32, 64, 1.5, 0.1, 0.1
PHASES = ("warmup", "arch")
TARGET_FRACTION = 0.5  # MACs target: halfway between the smallest and the full supernet (any value times the same)


def median_ms(run: Callable[[], None], iters: int) -> float:
    """Median ms of `iters` iterations after one untimed iteration."""
    run()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


# ------------------------------------------------------------------------------------------------- jaxnas

def jaxnas_runners(classes: int) -> dict[str, Callable[[], None]]:
    """{phase: run one search iteration and wait}, on fixed random data."""
    import jax
    import jax.numpy as jnp

    from jaxnas import models, zoo
    from jaxnas.methods.dmcp.cost import CostModel, CostTarget, MacsModel
    from jaxnas.methods.dmcp.gates import DMCPSpace
    from jaxnas.methods.dmcp.run import reachable_range
    from jaxnas.methods.dmcp.search import SearchConfig, build_program
    from jaxnas.train import OptimConfig, ScheduleConfig

    spec = zoo.mobilenet_v2(width=MAX_WIDTH, resolution=RESOLUTION, num_classes=classes)
    space = DMCPSpace(spec, min_width=MIN_WIDTH, max_width=MAX_WIDTH, width_offset=WIDTH_OFFSET)
    macs = MacsModel(spec, space.prunable)
    lo, hi = reachable_range(space, CostModel(CostTarget("macs", 1.0), macs))
    cost = CostModel(CostTarget("macs", lo + TARGET_FRACTION * (hi - lo)), macs)
    # The original's MobileNetV2 settings (configs/dmcp/mbv2_300m.yaml): SGD 0.2 -> 0.5 -> 0.08, wd 4e-5.
    cfg = SearchConfig(epochs=40, batch_size=BATCH, label_smoothing=0.1, progress=False,
                       optim=OptimConfig(learning_rate=0.5, weight_decay=4e-5),
                       schedule=ScheduleConfig(warmup_epochs=0.8, warmup_start=0.4, end_value=0.16))
    model = models.build_model(spec)
    variables = models.init_variables(model, 0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(BATCH, RESOLUTION, RESOLUTION, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, classes, BATCH), jnp.int32)}
    runners = {}
    for phase in PHASES:
        steps_per_epoch = 1000
        program = build_program(model, space, cost, cfg, steps_per_epoch,
                                start=10 ** 9 if phase == "warmup" else 0)
        holder = {"state": program.init_state(variables), "step": 0}

        def run(program=program, holder=holder) -> None:
            state, metrics = program.iteration(holder["state"], batch, holder["step"])
            jax.block_until_ready((state, metrics))
            holder["state"], holder["step"] = state, holder["step"] + 1

        run()  # compile
        runners[phase] = run
    return runners


# ------------------------------------------------------------------------------------------------ original

class _Config(dict):
    """The attribute access of the original's EasyDict config."""

    def __getattr__(self, key: str) -> Any:
        return self[key]


def original_runners(path: str, classes: int, threads: int) -> dict[str, Callable[[], None]]:
    """{phase: run one `DMCPRunner._train_one_batch` of the original checkout at `path`}."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    sys.path.insert(0, path)
    try:
        import matplotlib  # noqa: F401  (imported by the original's plotting helpers only)
    except ImportError:
        for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.backends", "matplotlib.backends.backend_pdf"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["matplotlib.backends.backend_pdf"].PdfPages = None
    import runner.dmcp_runner
    import runner.us_runner
    from models.dmcp.dmcp_mobilenet import dmcp_mobilenet_v2
    from utils.lr_scheduler import WarmUpCosineLRScheduler
    from utils.meter import AverageMeter

    def accuracy(output, target, top_k=(1,)):
        # utils.meter.accuracy, with reshape where it calls view on a non-contiguous tensor.
        _, pred = output.topk(max(top_k), 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / target.size(0)) for k in top_k]

    runner.us_runner.accuracy = runner.dmcp_runner.accuracy = accuracy
    random.seed(0)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION), torch.randint(0, classes, (BATCH,))
    runners = {}
    for phase in PHASES:
        # config/mbv2/dmcp.yaml; start_train decides the phase (the original sets it to max_iter // 2).
        cfg = _Config(
            training=_Config(sandwich=_Config(max_width=MAX_WIDTH, min_width=MIN_WIDTH, width_offset=WIDTH_OFFSET,
                                              num_sample=4),
                             label_smooth=0.1,
                             distillation=_Config(enable=True, temperature=1, loss_weight=1, hard_label=False)),
            arch=_Config(start_train=10 ** 9 if phase == "warmup" else 0, train_freq=1,
                         sample_type=["max", "min", "scheduled_random", "scheduled_random"], floss_type="log_l1",
                         flop_loss_weight=0.1, target_flops=0.0),
            dataset=_Config(input_size=RESOLUTION), logging=_Config(print_freq=50))
        model = dmcp_mobilenet_v2(num_classes=classes, input_size=RESOLUTION,
                                  width=[MIN_WIDTH, MAX_WIDTH, WIDTH_OFFSET], prob_type="sigmoid")
        cfg["arch"]["target_flops"] = TARGET_FRACTION * float(model.expected_flops(RESOLUTION, RESOLUTION).item())
        wrapper = nn.DataParallel(model)  # CPU: a plain pass-through with the `.module` the runner uses
        wrapper.train()
        dmcp = runner.dmcp_runner.DMCPRunner(cfg, wrapper)
        dmcp._sample_width()
        # utils.tools.get_param_group / get_optimizer / get_lr_scheduler with config/mbv2/dmcp.yaml.
        no_wd = []
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                no_wd.append(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                no_wd += [m.weight, m.bias]
        skip = {id(p) for p in no_wd}
        normal = [p for n, p in model.named_parameters() if id(p) not in skip and "alpha" not in n]
        opt = torch.optim.SGD([{"params": normal}, {"params": no_wd, "weight_decay": 0.0}], 0.2, momentum=0.9,
                              weight_decay=4e-5, nesterov=True)
        arch_opt = torch.optim.SGD(model.arch_parameters(), 0.5, momentum=0.9, weight_decay=0, nesterov=True)
        max_iter = 10 ** 6
        scheds = (WarmUpCosineLRScheduler(opt, max_iter, 0.08, 0.2, 0.5, 1000),
                  WarmUpCosineLRScheduler(arch_opt, max_iter, 0.1, 0.5, 0.5, max_iter // 2))
        meters = [[AverageMeter(50) for _ in range(3)] for _ in range(3)] + [AverageMeter(50) for _ in range(5)]
        criterions = dmcp._get_criterion()

        def run(dmcp=dmcp, opts=(opt, arch_opt), scheds=scheds, meters=meters, criterions=criterions) -> None:
            dmcp._train_one_batch(x, y, opts, scheds, meters, criterions, time.time())

        run()
        runners[phase] = run
    return runners


def _original_worker(conn, path: str, classes: int, threads: int) -> None:
    import logging
    import warnings
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    runners = original_runners(path, classes, threads)
    conn.send(True)
    while (msg := conn.recv()) is not None:
        phase, iters = msg
        conn.send(median_ms(runners[phase], iters))


def original_timers(path: str, classes: int, threads: int) -> dict[str, Callable[[int], float]] | None:
    """{phase: iters -> median ms} of the original in its own process (idle on a pipe while jaxnas runs)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_original_worker, args=(child, path, classes, threads), daemon=True)
    proc.start()
    if not parent.poll(3600) or not parent.recv():
        return None

    def timer(phase: str) -> Callable[[int], float]:
        def t(iters: int) -> float:
            parent.send((phase, iters))
            return parent.recv()
        return t

    timers = {phase: timer(phase) for phase in PHASES}
    timers["close"] = lambda: (parent.send(None), proc.join(10))
    return timers


def original_available(path: str | None) -> str | None:
    """Why the original's column is skipped, or None when `path` holds its checkout and torch imports."""
    if not path:
        return "no --original checkout given"
    if not (Path(path) / "runner" / "dmcp_runner.py").is_file():
        return f"{path} is not a checkout of github.com/Zx55/dmcp (no runner/dmcp_runner.py)"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch==2.13.0)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", default=None, help="path of a local checkout of github.com/Zx55/dmcp")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per contender and phase in a round")
    ap.add_argument("--threads", type=int, default=2, help="threads of each contender (jaxnas: XLA's CPU threads)")
    ap.add_argument("--classes", type=int, default=1000, help="classifier outputs (the original: 1000)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    from jaxnas import allocator
    allocator.reexec_with_tcmalloc()

    skipped = original_available(args.original)
    timers: dict[str, Callable[[int], float]] = {}
    for phase, run in jaxnas_runners(args.classes).items():
        timers[f"jaxnas_{phase}"] = lambda iters, run=run: median_ms(run, iters)
    original = None
    if skipped is None:
        original = original_timers(str(Path(args.original).resolve()), args.classes, args.threads)
        if original is None:
            skipped = "the original's worker failed to start"
    per_round: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for phase in PHASES:
            contenders = {f"jaxnas_{phase}": timers[f"jaxnas_{phase}"]}
            if original is not None:
                contenders[f"original_{phase}"] = original[phase]
            for name, timer in contenders.items():
                per_round.setdefault(name, []).append(timer(args.iters))
    if original is not None:
        original["close"]()
    load = os.getloadavg()
    row: dict[str, Any] = {"batch": BATCH, "resolution": RESOLUTION, "classes": args.classes, "threads": args.threads,
                           "rounds": args.rounds, "iters_per_round": args.iters, "load_average": list(load),
                           "original_skipped": skipped}
    from jaxnas import allocator as alloc
    row["allocator"] = alloc.loaded_allocator()
    for name, ms in per_round.items():
        row[f"{name}_ms"] = float(np.median(ms))
        row[f"{name}_ms_rounds"] = [round(m, 1) for m in ms]
    if original is not None:
        for phase in PHASES:
            row[f"{phase}_ratio"] = float(np.median(np.divide(per_round[f"original_{phase}"],
                                                              per_round[f"jaxnas_{phase}"])))
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    print(f"DMCP iteration, MobileNetV2 {MAX_WIDTH:g}x supernet, batch {BATCH} @ {RESOLUTION} px, {args.classes} "
          f"classes, {args.threads} thread(s) each, {row['allocator']} malloc, {args.rounds} rounds x {args.iters} "
          f"iterations, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for phase, title in zip(PHASES, ("weight warm-up (sandwich)", "arch phase (sandwich + alpha step)")):
        line = f"  {title}: jaxnas {row[f'jaxnas_{phase}_ms']:.0f} ms"
        if original is not None:
            line += (f", original {row[f'original_{phase}_ms']:.0f} ms, original/jaxnas per round "
                     f"{row[f'{phase}_ratio']:.2f}x")
        print(line)
    if skipped:
        print(f"  original skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
