"""Candidate trainings behind a small executor interface.

The search hands an executor one round's jobs at once; the executor trains them in any order and with
any parallelism and reports each finished job through ``done(job, metrics)`` in the calling process.
The search records a result as soon as it arrives (so a killed search keeps it) but only updates the
boundary after the whole round, in the round's own order — so the result does not depend on the
order jobs finish in, and a cluster executor gives the same boundary as the local one.

A job is plain data (the spec, a work dir, the epochs), so it can be shipped to a worker
process; the worker trains with the same resumable trainer, so a preempted job restarts from its
checkpoint.  `LocalExecutor` runs them here, one after another.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from jaxnas.spec import ArchSpec


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Train `spec` (short schedule) in `workdir`; report held-out accuracy."""

    key: str                    # the architecture's key in the search space
    spec: ArchSpec
    workdir: Path
    epochs: float | None = None  # None: the trainer's default


TrainFn = Callable[[TrainJob], Mapping[str, Any]]   # -> metrics with at least 'accuracy' (held out)
Done = Callable[[TrainJob, Mapping[str, Any]], None]


class Executor(Protocol):
    def run(self, jobs: Sequence[TrainJob], done: Done, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Train every job (stop starting new ones once `should_stop()`); call `done` once per finished job."""


class LocalExecutor:
    """One job after another in this process."""

    def __init__(self, train_fn: TrainFn):
        self.train_fn = train_fn

    def run(self, jobs: Sequence[TrainJob], done: Done, should_stop: Callable[[], bool] = lambda: False) -> None:
        for job in jobs:
            if should_stop():
                return
            done(job, self.train_fn(job))


__all__ = ["Done", "Executor", "LocalExecutor", "TrainFn", "TrainJob"]
