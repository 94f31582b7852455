"""The one pipeline behind `jaxnas train`, `jaxnas search` and `jaxnas quickstart`:

    load data -> build the spec -> train it, or run the configured method's search -> deploy
    (export, parity check, measure on the configured runtime) -> summary.json

    summary = run(cfg, "runs/x", search=True)      # the configured method (search.method)
    summary = run(cfg, "runs/y")                     # plain training of the model section

Everything a run needs is validated before anything is written: the method name and its `search.args`,
the target kind, the data and the spec. The method gets its services as objects (a `SearchContext` with
the dataset, the sized spec, a trainer and a latency oracle) and returns objects (`SearchResult`); the
work dir keeps files for the user and for resuming.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from jaxnas.config import ExperimentConfig, save_resolved_config
from jaxnas.schema import validate
from jaxnas.workdir import ARCH, write_summary

__all__ = ["run", "Prepared", "prepare", "resolve_method", "check_target"]


def resolve_method(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(METHOD, validated args) of `search.method`; a one-line error for an unknown name or bad args."""
    from jaxnas import methods

    if cfg.search.method == "none":
        raise methods.SearchError("search.method: none: set a method for `jaxnas search` "
                                  f"({', '.join(methods.names())}), or use `jaxnas train`")
    method = methods.get(cfg.search.method)
    return method, validate(cfg.search.args, method.args_schema(), "search.args")


def check_target(cfg: ExperimentConfig, method: Any) -> None:
    """The config's target kinds must be ones the method accepts (a target it would ignore is refused)."""
    from jaxnas.methods import SearchError

    s = cfg.search
    given = [k for k, v in (("macs", s.target_macs), ("latency_ms", s.target_latency_ms)) if v is not None]
    if len(given) > 1:
        raise SearchError("set one of search.target_macs and search.target_latency_ms, not both")
    for kind in given:
        if kind not in method.targets:
            accepted = ", ".join(f"search.target_{k}" for k in method.targets) or "no search.target_*"
            raise SearchError(f"search.target_{kind}: method {method.name!r} does not take a {kind} target "
                              f"(it takes {accepted}); remove it or choose another method")
    if method.requires_target and not given:
        raise SearchError(f"method {method.name!r} needs a target: set "
                          + " or ".join(f"search.target_{k}" for k in method.targets))


@dataclasses.dataclass
class Prepared:
    """A run's inputs, validated: the config, the loaded dataset, the sized spec, the method and args."""

    cfg: ExperimentConfig
    dataset: Any
    spec: Any
    method: Any = None
    args: Any = None


def prepare(cfg: ExperimentConfig, *, search: bool = False) -> Prepared:
    """Validate the method and its args, load the data and build the spec (writes nothing)."""
    from jaxnas.data import load_dataset
    from jaxnas.model_config import build_spec

    method = args = None
    if search:
        method, args = resolve_method(cfg)
        check_target(cfg, method)
    dataset = load_dataset(cfg.dataset_config())
    spec = build_spec(cfg.model, dataset.num_classes, dataset.image_shape)
    return Prepared(cfg, dataset, spec, method, args)


def run(cfg: ExperimentConfig, workdir: str | Path, *, search: bool = False, deploy: bool = True,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train (or search), deploy and summarise into `workdir` (resumable); returns the summary."""
    from jaxnas.trainer import Trainer

    say = log or (lambda _m: None)
    workdir = Path(workdir)
    t0 = time.time()
    prep = prepare(cfg, search=search)
    workdir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, workdir)
    trainer = Trainer(cfg, prep.dataset, log=say)
    if search:
        result = _search(prep, trainer, workdir, say)
        spec, variables, metrics, baseline = result.spec, result.variables, dict(result.metrics), result.baseline
    else:
        spec = prep.spec
        spec.save(workdir / ARCH)
        trained = trainer.train(spec, workdir)
        variables, baseline = trained.variables, None
        test = trained.metrics["test"]
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_examples": int(test["count"])}
    from jaxnas import spec as S

    cost = S.analyze(spec)
    summary = {"name": cfg.name, "model": spec.name, "macs": cost.macs, "params": cost.params,
               "arch_path": str(workdir / ARCH), **metrics}
    if search:
        summary["method"] = cfg.search.method
    summary["train_seconds" if not search else "search_seconds"] = round(time.time() - t0, 1)
    write_summary(workdir, summary)
    if deploy and variables is not None:
        from jaxnas.deploy import deploy as deploy_fn

        say(f"deploy: exporting {spec.name} to {', '.join(cfg.export.formats)}")
        deployed = deploy_fn(spec, variables, cfg.export, cfg.latency, out_dir=workdir / "export", baseline=baseline,
                             log=say)
        summary.update(deployed.summary())
        if search and "achieved" in summary and isinstance(summary["achieved"], dict):
            summary["achieved"] = {**summary["achieved"], "latency_ms": deployed.latency.median_ms}
        say(f"deploy: {deployed.describe()}")
    summary["total_seconds"] = round(time.time() - t0, 1)
    return write_summary(workdir, summary)


def _search(prep: Prepared, trainer: Any, workdir: Path, say: Callable[[str], None]) -> Any:
    from jaxnas.latency.oracle import RuntimeOracle
    from jaxnas.methods import SearchContext
    from jaxnas.train import save_final

    cfg = prep.cfg
    oracle = RuntimeOracle(cfg.latency, workdir=workdir, log=say)
    ctx = SearchContext(cfg=cfg, workdir=workdir, dataset=prep.dataset, spec=prep.spec, oracle=oracle,
                        trainer=trainer, log=say)
    result = prep.method.search(ctx, prep.args)
    result.spec.save(workdir / ARCH)
    if result.variables is not None:
        save_final(workdir, result.variables)  # `jaxnas eval/export/latency measure WORKDIR` read them
    return result
