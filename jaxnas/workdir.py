"""A work dir: what a run leaves for the user and for resuming.

    config.yaml     the resolved config (reloads with jaxnas.config.load_config)
    arch.json       the architecture spec of the trained / found network
    checkpoints/    orbax checkpoints (every train.checkpoint_every steps and at the end); final/ weights
    metrics.jsonl   metrics rows (and metrics.csv)
    export/         deployable files with export.json
    summary.json    the run's figures (strict JSON)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxnas.errors import UserError
from jaxnas.io_utils import atomic_write_json

if TYPE_CHECKING:
    from jaxnas.config import ExperimentConfig
    from jaxnas.spec import ArchSpec

SUMMARY = "summary.json"
ARCH = "arch.json"
CONFIG = "config.yaml"

__all__ = ["WorkdirError", "SUMMARY", "ARCH", "CONFIG", "read_summary", "write_summary", "load_workdir"]


class WorkdirError(UserError, ValueError):
    """A work dir that does not hold what a command needs, or that a command must not touch."""


def read_summary(workdir: str | Path) -> dict[str, Any]:
    path = Path(workdir) / SUMMARY
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} is not readable JSON ({e}); delete it to start the summary afresh") from None


def write_summary(workdir: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into workdir/summary.json (atomic, strict JSON); returns the whole summary."""
    summary = read_summary(workdir)
    summary.update(updates)
    atomic_write_json(Path(workdir) / SUMMARY, summary)
    return json.loads((Path(workdir) / SUMMARY).read_text())


def load_workdir(workdir: str | Path) -> tuple[ExperimentConfig, ArchSpec, dict]:
    """(config, spec, trained variables) of a finished or interrupted training work dir."""
    from jaxnas import spec as S
    from jaxnas.config import load_config
    from jaxnas.train import load_variables

    workdir = Path(workdir)
    if not workdir.is_dir():
        what = "is not a directory" if workdir.exists() else "does not exist"
        raise WorkdirError(f"work dir {workdir} {what}; run `jaxnas train CONFIG --workdir {workdir}` first")
    for need in (CONFIG, ARCH):
        if not (workdir / need).is_file():
            raise WorkdirError(f"{workdir} has no {need}: it is not a jaxnas work dir (run `jaxnas train` into it)")
    cfg = load_config(workdir / CONFIG)
    spec = S.ArchSpec.load(workdir / ARCH)
    variables = load_variables(str(workdir))
    return cfg, spec, variables
