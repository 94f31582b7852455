"""Config -> dataset, spec, model, training run.  Thin glue the CLI and the methods share.

A work dir holds `config.yaml` (resolved), `arch.json` (the spec), `checkpoints/`, `metrics.{jsonl,csv}`
and `summary.json`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from jaxnas import spec as S
from jaxnas.config import ExperimentConfig, load_config, save_resolved_config
from jaxnas.io_utils import atomic_write_json

SUMMARY = "summary.json"
ARCH = "arch.json"


class WorkdirError(ValueError):
    """A work dir that does not hold what a command needs."""


def data_config(cfg: ExperimentConfig):
    from jaxnas.data import DataConfig
    d = dataclasses.asdict(cfg.data)
    return DataConfig(**d, seed=cfg.train.seed)


def load_data(cfg: ExperimentConfig):
    from jaxnas.data import load_dataset
    return load_dataset(data_config(cfg))


def build_spec(cfg: ExperimentConfig, num_classes: int, image_shape: tuple[int, int, int]) -> S.ArchSpec:
    """The model section as a spec sized for the data (resolution, channels, classes)."""
    from jaxnas import zoo
    m = cfg.model
    classes = m.num_classes or num_classes
    h, w, c = image_shape
    if m.spec:
        spec = S.ArchSpec.load(m.spec).with_input((h, w), classes, c)
    else:
        spec = zoo.get_spec(m.name, resolution=h, num_classes=classes, width=m.width,
                            small_input=m.small_input if not m.name.startswith("df") else None, in_channels=c)
        if m.dropout != spec.head.dropout and spec.head.pool == "global":
            spec = spec.replace(head=dataclasses.replace(spec.head, dropout=m.dropout))
    return S.validate(spec)


def train_sections(cfg: ExperimentConfig):
    from jaxnas.train import OptimConfig, ScheduleConfig, TrainLoopConfig, coerce
    loop = coerce(TrainLoopConfig, cfg.train)
    loop = dataclasses.replace(loop, batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                               augment=cfg.data.augment)
    return coerce(OptimConfig, cfg.optim), coerce(ScheduleConfig, cfg.schedule), loop


def train_spec(spec: S.ArchSpec, dataset, cfg: ExperimentConfig, workdir: Path, *, variables=None,
               teacher=None) -> tuple[dict, dict]:
    """Train `spec` from scratch (or from `variables`) with the config's optimiser and loop; resumable.

    Returns (variables, test metrics)."""
    from jaxnas import models
    from jaxnas.train import evaluate, fit
    optim, schedule, loop = train_sections(cfg)
    if teacher is not None:
        loop = dataclasses.replace(loop, distill=dataclasses.replace(
            loop.distill, teacher=teacher[0], teacher_variables=teacher[1]))
    model = models.build_model(spec, cfg.model.depthwise, bn_eps=float(spec.metadata.get("bn_eps", 1e-5)))
    if variables is None:
        variables = models.init_variables(model, cfg.train.seed)
    state, _ = fit(model, variables, dataset, workdir=str(workdir), optim=optim, schedule=schedule, loop=loop)
    variables = state.variables()
    test = evaluate(model, variables, dataset, "test", cfg.data.eval_batch_size)
    return variables, test


def run_training(cfg: ExperimentConfig, workdir: str | Path) -> dict[str, Any]:
    """`jaxnas train`: resolve config, build data + spec, train (resuming), evaluate, write the summary."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, workdir)
    t0 = time.time()
    dataset = load_data(cfg)
    spec = build_spec(cfg, dataset.num_classes, dataset.image_shape)
    spec.save(workdir / ARCH)
    _, test = train_spec(spec, dataset, cfg, workdir)
    cost = S.analyze(spec)
    summary = {"name": cfg.name, "model": spec.name, "test_accuracy": float(test["accuracy"]),
               "test_loss": float(test["loss"]), "test_examples": int(test["count"]), "macs": cost.macs,
               "params": cost.params, "train_seconds": round(time.time() - t0, 1),
               "arch_path": str(workdir / ARCH)}
    write_summary(workdir, summary)
    return summary


def write_summary(workdir: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into workdir/summary.json (atomic)."""
    path = Path(workdir) / SUMMARY
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(updates)
    atomic_write_json(path, summary)
    return summary


def load_workdir(workdir: str | Path) -> tuple[ExperimentConfig, S.ArchSpec, dict]:
    """(config, spec, trained variables) of a finished or interrupted training work dir."""
    from jaxnas.train import load_variables
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise WorkdirError(f"work dir {workdir} does not exist; run `jaxnas train CONFIG --workdir {workdir}` first")
    for need in ("config.yaml", ARCH):
        if not (workdir / need).is_file():
            raise WorkdirError(f"{workdir} has no {need}: it is not a jaxnas work dir (run `jaxnas train` into it)")
    cfg = load_config(workdir / "config.yaml")
    spec = S.ArchSpec.load(workdir / ARCH)
    variables = load_variables(str(workdir))
    return cfg, spec, variables
