"""POP on the method contract: `search(ctx, args)` runs the search, writes the boundary outputs and
retrains the chosen net; the runner exports and measures it.

Work dir::

    pop/pop_state.json        search state (resume)       pop/latency_cache.json   measured latencies
    pop/candidates/<id>/      each candidate's short training (resumable)
    pop/latency_audit.json    with search.args.prescreen_audit: what the pre-screen left unmeasured
    boundary.json, boundary.csv, pareto.png                 every evaluated candidate, B(D), the chart
    retrain/                  the chosen net, full recipe
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

from jaxnas.methods.pop.args import PopArgs
from jaxnas.methods.pop.executor import LocalExecutor, TrainJob
from jaxnas.methods.pop.report import plot_pareto, write_boundary
from jaxnas.methods.pop.search import PopError, PopOutcome, PopSearch, PopSettings
from jaxnas.methods.pop.space import Space, load_space


def settings_from_args(args: PopArgs, *, target_latency_ms: float | None, seed: int) -> PopSettings:
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(PopSettings) if f.name in PopArgs.model_fields}
    w = args.latency_window_ms
    return PopSettings(**{**same, "window_ms": (None, None) if w is None else (float(w[0]), float(w[1])),
                          "seed": seed if args.seed is None else args.seed, "target_latency_ms": target_latency_ms})


def space_for(args: PopArgs, dataset: Any) -> Space:
    """The configured space sized to the data (input size, channels, classes)."""
    h, _, c = dataset.image_shape
    return load_space(args.space, resolution=h, in_channels=c, num_classes=dataset.num_classes)


def candidate_trainer(trainer: Any) -> Any:
    """train_fn(job) for the executor: the core trainer's short schedule, scored on `holdout`."""

    def train(job: TrainJob) -> Mapping[str, Any]:
        t0 = time.time()
        res = trainer.train(job.spec, job.workdir, epochs=job.epochs, eval_split=None, test=False)
        held = trainer.evaluate(job.spec, res.variables, "holdout")
        return {"accuracy": float(held["accuracy"]), "loss": float(held["loss"]), "count": int(held["count"]),
                "seconds": round(time.time() - t0, 1)}

    return train


def choose(outcome: PopOutcome, target_ms: float | None) -> dict[str, Any]:
    """The most accurate boundary net measured at or under the target (no target: the most accurate)."""
    if target_ms is None:
        on = [e for e in outcome.evaluated if e["on_boundary"]]
        return max(on, key=lambda e: (e["accuracy"], -e["latency_ms"]))
    best = outcome.best_under(target_ms)
    if best is None:
        fastest = min(e["latency_ms"] for e in outcome.evaluated)
        raise PopError(f"no evaluated architecture measured at or under search.target_latency_ms={target_ms} "
                       f"(fastest evaluated: {fastest:.4g} ms); raise the target or lower the latency window")
    return best


def search(ctx: Any, args: PopArgs) -> Any:
    cfg, log = ctx.cfg, ctx.log
    if not ctx.dataset.num_examples("holdout"):
        raise PopError("POP scores candidates on the holdout split, which is empty: set data.holdout > 0 "
                       "(e.g. 0.1)")
    target = cfg.search.target_latency_ms
    space = space_for(args, ctx.dataset)
    settings = settings_from_args(args, target_latency_ms=target, seed=cfg.train.seed)
    pop = PopSearch(space, settings, measure=ctx.oracle.measure, fingerprint=ctx.oracle.fingerprint(),
                    executor=LocalExecutor(candidate_trainer(ctx.trainer)), workdir=ctx.workdir / "pop", log=log)
    outcome = pop.run()
    chosen = choose(outcome, target)
    header = {"space": space.describe(), "window_ms": list(settings.window_ms), "target_latency_ms": target,
              "chosen": chosen["key"], "backend": ctx.oracle.fingerprint()}
    files = write_boundary(ctx.workdir, outcome, header)
    try:
        files["pareto_png"] = str(plot_pareto(
            ctx.workdir / "pareto.png", outcome, target_ms=target, chosen_key=chosen["key"],
            window_ms=settings.window_ms, title=f"POP on {space.name} ({ctx.oracle.backend})"))
    except ImportError:
        log("pop: matplotlib is not installed (pip install 'jaxnas[plot]'): no pareto.png")
    log(f"pop: chosen {chosen['key']}: {chosen['latency_ms']:.4f} ms, held-out accuracy {chosen['accuracy']:.4f}")

    spec = chosen["spec"].replace(name=f"pop_{space.name}")
    variables, test_acc = None, None
    if args.retrain:
        res = ctx.trainer.train(spec, ctx.workdir / "retrain", eval_split=None, test=True)
        variables, test_acc = res.variables, float(res.metrics["test"]["accuracy"])
        log(f"pop: retrained with the full recipe: test accuracy {test_acc:.4f}")
    c = outcome.counts
    metrics = {
        "method": "pop", "target": {"latency_ms": target} if target is not None else None,
        "achieved": {"latency_ms": chosen["latency_ms"]},   # the runner replaces it by its deploy measurement
        "test_accuracy": test_acc, "space_size": c["space_size"], "trained": c["trained"],
        "pruned_without_training": c["pruned_without_training"],
        "search_latency_ms": chosen["latency_ms"], "search_holdout_accuracy": chosen["accuracy"],
        "chosen": chosen["key"], "boundary": outcome.boundary, "counts": c, "stop_reason": outcome.stop_reason,
        "prescreen": outcome.prescreen, **files,
    }
    from jaxnas.methods.base import SearchResult
    return SearchResult(spec=spec, variables=variables, metrics=metrics)


__all__ = ["candidate_trainer", "choose", "search", "settings_from_args", "space_for"]
