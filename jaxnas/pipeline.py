"""The one pipeline behind `jaxnas train`, `jaxnas search` and `jaxnas quickstart`:

    load data -> build the spec -> train it, or run the configured method's search -> deploy
    (export, parity check, measure on the configured runtime) -> summary.json

    summary = run(cfg, "runs/x", search=True)      # the configured method (search.method)
    summary = run(cfg, "runs/y")                     # plain training of the model section

Everything a run needs is validated before anything is written: the method name and its `search.args`,
the target kind, the work dir (a lock held for the whole run: one command per work dir; a stored config
that differs in what the weights mean is refused), the data against the model and the spec. Only then is
`config.yaml` written. The method gets its services as objects (a `SearchContext` with the dataset, the
sized spec, a trainer and a latency oracle) and returns objects (`SearchResult`); the work dir keeps
files for the user and for resuming.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any, Callable

from jaxnas.config import ExperimentConfig, save_resolved_config
from jaxnas.schema import validate
from jaxnas.workdir import (ARCH, LOCK, WorkdirError, WorkdirLock, check_config_change, check_workdir_path,
                            keep_previous_config, read_summary, write_summary)

__all__ = ["run", "Prepared", "prepare", "resolve_method", "check_target", "check_latency_table"]


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


def check_latency_table(cfg: ExperimentConfig, method: Any = None) -> None:
    """`latency.table` is refused where it would be ignored: `jaxnas train` (it times the network end to
    end) and a method (None: train) that reads no table under the config's target kind."""
    from jaxnas.methods import SearchError

    if not cfg.latency.table:
        return
    if method is None:
        raise SearchError("latency.table: `jaxnas train` times the trained network end to end and reads no "
                          "latency table; remove latency.table (tables are for `jaxnas search`)")
    s = cfg.search
    kind = "macs" if s.target_macs is not None else "latency_ms" if s.target_latency_ms is not None else "none"
    if method.table_targets is None or kind in method.table_targets:
        return
    if not method.table_targets:
        why = f"method {method.name!r} reads no latency table"
    else:
        given = "no target" if kind == "none" else f"search.target_{kind}"
        why = (f"method {method.name!r} reads one only for "
               f"{' or '.join(f'search.target_{k}' for k in method.table_targets)}, not for {given}")
    raise SearchError(f"latency.table: {why}, so {cfg.latency.table} would be ignored; remove latency.table")


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
    check_data_fits(cfg, dataset)
    spec = build_spec(cfg.model, dataset.num_classes, dataset.image_shape)
    check_model_fits(spec, cfg.data.batch_size)
    return Prepared(cfg, dataset, spec, method, args)


def check_model_fits(spec: Any, batch_size: int) -> None:
    """Refuse a model whose training on CPU could not fit in memory, before building it: a lower bound
    (weights, gradients and one optimizer slot in float32, and each layer's output for one batch, kept for
    the backward pass), so a refusal is certain and a pass is not a promise. On an accelerator the batch is
    split over devices with memories of their own; XLA reports what does not fit there."""
    import jax

    from jaxnas import spec as S
    from jaxnas.resources import check_fits_memory

    if jax.default_backend() != "cpu":
        return
    cost = S.analyze(spec)
    acts = sum(layer.out_shape[0] * layer.out_shape[1] * layer.out_shape[2] for b in cost.blocks for layer in b.layers)
    need = 4 * (3 * cost.params + batch_size * acts)
    check_fits_memory(need, f"training {spec.name} ({cost.params / 1e6:.3g} M parameters, batch {batch_size})",
                      "lower model.width, data.image_size or data.batch_size, or choose a smaller model", share=1.0)


def check_data_fits(cfg: ExperimentConfig, dataset: Any) -> None:
    """The data must fit the model and the batch: every label has a logit, a train batch fits the split."""
    from jaxnas.data import DataError

    n = cfg.model.num_classes
    if n is not None and n < dataset.num_classes:
        raise DataError(f"model.num_classes={n} but the data has {dataset.num_classes} classes (labels up to "
                        f"{dataset.num_classes - 1}); remove model.num_classes or set it >= {dataset.num_classes}")
    n_train, bs = dataset.num_examples("train"), cfg.data.batch_size
    if bs > n_train:
        raise DataError(f"data.batch_size={bs} exceeds the {n_train} examples of the train split (after "
                        f"data.holdout and data.limit_train); set data.batch_size <= {n_train}")


def _check_run_kind(workdir: Path, search: bool, allow: bool) -> None:
    """`jaxnas search` must not replace a trained network's weights, nor `jaxnas train` a search's result."""
    summary = read_summary(workdir)
    if not summary or allow:
        return
    from jaxnas.weights.workdir import MARKER

    if summary.get(MARKER):
        raise WorkdirError(f"{workdir} holds imported weights (jaxnas import-weights); train or search into a new "
                           "--workdir that names it (search.args.baseline, train.distill.teacher)")
    was = f"a `jaxnas search` ({summary['method']})" if "method" in summary else "a `jaxnas train` run"
    if ("method" in summary) != search:
        raise WorkdirError(f"{workdir} holds {was}; `jaxnas {'search' if search else 'train'}` would replace its "
                           "weights: use a new --workdir")


def _check_arch_unchanged(workdir: Path, spec: Any, allow: bool) -> None:
    """A training's stored arch.json must be the spec this config builds (a spec file edited in place)."""
    from jaxnas.spec import ArchSpec, SpecError

    path = workdir / ARCH
    if allow or not path.is_file():
        return
    try:
        same = ArchSpec.load(path).to_json() == spec.to_json()
    except SpecError:
        same = False
    if not same:
        raise WorkdirError(f"{path} is another network than the one this config builds (the spec file or the "
                           "data changed); use a new --workdir, or pass --allow-config-change to train the new "
                           "one there")


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    return list(itertools.takewhile(lambda p: not p.exists(), (path.absolute(), *path.absolute().parents)))


def _undo_created(workdir: Path, created: list[Path], lock_existed: bool) -> None:
    """Remove what a refused run made: its lock file and the directories it created (if still empty)."""
    try:
        if not lock_existed:
            (workdir / LOCK).unlink(missing_ok=True)
        for d in created:
            d.rmdir()
    except OSError:
        pass


def run(cfg: ExperimentConfig, workdir: str | Path, *, search: bool = False, deploy: bool = True,
        log: Callable[[str], None] | None = print, allow_config_change: bool = False) -> dict[str, Any]:
    """Train (or search), deploy and summarise into `workdir` (resumable); returns the summary.

    The work dir is locked for the whole run. A work dir holding a run of another config (in a key that
    changes what the weights mean, see `jaxnas.workdir.FREE_KEYS`) is refused unless `allow_config_change`.
    Nothing is written before the inputs are validated.
    """
    workdir = Path(workdir)
    t0 = time.time()
    say = log or (lambda _m: None)
    method = resolve_method(cfg)[0] if search else None
    if method is not None:
        check_target(cfg, method)  # config-only checks first: cheap, and nothing to undo
    check_latency_table(cfg, method)
    check_workdir_path(workdir)
    created, lock_existed = _missing_dirs(workdir), (workdir / LOCK).exists()
    lock = WorkdirLock(workdir).acquire()
    started = False
    try:
        changes = check_config_change(workdir, cfg, search=search, allow=allow_config_change)
        _check_run_kind(workdir, search, allow_config_change)
        prep = prepare(cfg, search=search)
        if not search:
            _check_arch_unchanged(workdir, prep.spec, allow_config_change)
        started = True
        if changes:  # allowed: the stored config is kept beside the new one
            kept = keep_previous_config(workdir)
            say(f"--allow-config-change: {'; '.join(changes)} (the previous config is kept as {kept.name})")
        return _run(prep, workdir, search=search, deploy=deploy, say=say, t0=t0)
    except BaseException:
        if not started:
            _undo_created(workdir, created, lock_existed)
        raise
    finally:
        lock.release()


def _run(prep: Prepared, workdir: Path, *, search: bool, deploy: bool, say: Callable[[str], None],
         t0: float) -> dict[str, Any]:
    from jaxnas.trainer import Trainer

    cfg = prep.cfg
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
            summary["achieved"] = {**summary["achieved"], **achieved_latency(summary.get("target"), deployed.latency)}
        say(f"deploy: {deployed.describe()}")
    summary["total_seconds"] = round(time.time() - t0, 1)
    return write_summary(workdir, summary)


def achieved_latency(target: Any, measurement: Any) -> dict[str, Any]:
    """{'latency_ms'[, 'latency_statistic']}: the deployed net's latency on the scale of the method's target
    (its ``statistic``, default the median): a target on a table of per-round minima (TF-NAS'
    ``table_stat: min``) is met or missed by the net's minimum, not by its median (14 % apart on a 0.17 ms
    net here)."""
    stat = (target.get("statistic") if isinstance(target, dict) else None) or "median"
    out: dict[str, Any] = {"latency_ms": float(getattr(measurement.stats, stat))}
    if stat != "median":
        out["latency_statistic"] = stat
    return out


def _search(prep: Prepared, trainer: Any, workdir: Path, say: Callable[[str], None]) -> Any:
    from jaxnas.latency.oracle import RuntimeOracle
    from jaxnas.methods import SearchContext
    from jaxnas.train import save_final

    cfg = prep.cfg
    oracle = RuntimeOracle(cfg.latency, workdir=workdir, log=say)
    ctx = SearchContext(cfg=cfg, workdir=workdir, dataset=prep.dataset, spec=prep.spec, oracle=oracle,
                        trainer=trainer, log=say)
    result = prep.method.run_search(ctx, prep.args)
    result.spec.save(workdir / ARCH)
    if result.variables is not None:
        save_final(workdir, result.variables)  # `jaxnas eval/export/latency measure WORKDIR` read them
    return result
