"""The method contract: what a search/pruning method gives the generic runner and what it gets from it.

A method is one folder under `jaxnas/methods/` whose `__init__.py` defines ``METHOD = Method(...)``.
The registry (`jaxnas.methods.get`) finds the folder by the config's `search.method` and imports it
only then; nothing else (CLI, runner, config schema) lists methods. The runner (`jaxnas.pipeline`)
validates `search.args` with `Method.args`, checks the config's target against `Method.targets`,
builds a `SearchContext` and calls `Method.run_search(ctx, args)` (`search` itself may be a "module:function" reference); the method returns a `SearchResult`
of objects (the chosen spec and its weights, metrics), and the runner writes `arch.json`, deploys
(export, parity check, measurement on the configured runtime, paired against `baseline` when given)
and writes `summary.json`.

Dependencies point one way: a method imports core modules (spec, zoo, models, supernet, train,
data, ...) and sees latency only through `ctx.oracle`, an object the runner injects; it never imports
`jaxnas.export` or a latency runtime. Keep `import jaxnas.methods.<name>` light (no jax/flax at import
time): `jaxnas methods` and `--help` import every method's package.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from jaxnas.errors import UserError

if TYPE_CHECKING:  # types only: the runner passes the objects in
    from jaxnas.config import ExperimentConfig
    from jaxnas.spec import ArchSpec
    from jaxnas.trainer import Trainer

__all__ = ["Method", "SearchContext", "SearchResult", "LatencyOracle", "SearchError", "lazy_exports"]


class SearchError(UserError, ValueError):
    """A search that cannot start or go on: unreachable target, a table that does not fit, bad args."""


class LatencyOracle(Protocol):
    """Latency as a method sees it: tables, predictions and measurements on the configured runtime.

    Implemented over `jaxnas.latency` by `jaxnas.latency.oracle.RuntimeOracle`; tests inject fakes.
    Every measurement follows the latency section's protocol (threads, batch size; adaptive timing to
    `rel_ci` by default, fixed `warmup`/`runs` when set).
    """

    backend: str

    def fingerprint(self) -> dict[str, Any]:
        """The device/runtime identity every table and measurement is tagged with."""

    def layer_table(self, spec: ArchSpec, *, channel_multiple: int = 1, out: Path | None = None) -> Any:
        """Per-conv latency over a grid of channel counts of `spec`'s width groups (a `LatencyTable`);
        `latency.table` from the config when set (refused if measured elsewhere), else built at `out`."""

    def block_table(self, space: Any, *, out: Path | None = None, context: str = "network") -> Any:
        """A block lookup table (`LatencyTable`) for a `jaxnas.latency.spaces.SearchSpace` (or its dict)."""

    def predictor(self, table: Any) -> Any:
        """A `LatencyPredictor` over a block table: `.predict(spec) -> ms`."""

    def measure(self, spec: ArchSpec, variables: Any = None) -> Any:
        """`spec` end to end on the runtime (export, timing by the config's protocol): a `Measurement`
        (.median_ms, .ci_ms, .runs, .trusted, .to_dict()); random weights when `variables` is None (weights
        do not change latency). A flagged measurement (`.trusted` False) must not be used silently."""

    def compare(self, a: tuple[ArchSpec, Any], b: tuple[ArchSpec, Any]) -> Any:
        """Both nets timed in alternating rounds in one session: a `Comparison` (.ratio = a's time / b's,
        .speedup_ci(), .a / .b Measurements, .flags)."""

    def measure_each(self, specs: dict[str, ArchSpec], *, cache: Path) -> dict[str, Any]:
        """Each spec timed alone (random weights), cached by key in `cache` (resumable): {key: TimingStats}."""

    def paired_deltas(self, reference: tuple[ArchSpec, Any],
                      candidates: dict[str, Callable[[], tuple[ArchSpec, Any]]], *,
                      cache: Path) -> tuple[float, dict[str, tuple[float, float]]]:
        """(reference ms, {key: (candidate - reference ms, spread)}): every candidate timed against the
        reference in alternating rounds; built lazily, cached by key in `cache` (resumable)."""


@dataclasses.dataclass
class SearchContext:
    """What the runner hands a method: the config, a work dir, the data, the sized spec and services."""

    cfg: ExperimentConfig
    workdir: Path
    dataset: Any                       # jaxnas.data.Dataset: 'train', 'holdout' (search fitness), 'test'
    spec: ArchSpec                     # the model section sized to the data (the supernet / base net)
    oracle: LatencyOracle
    trainer: Trainer
    log: Callable[[str], None] = print

    def target(self) -> tuple[str, float] | None:
        """(kind, value) of the config's target (the runner has checked the method accepts it)."""
        s = self.cfg.search
        if s.target_macs is not None:
            return "macs", float(s.target_macs)
        if s.target_latency_ms is not None:
            return "latency_ms", float(s.target_latency_ms)
        return None


@dataclasses.dataclass
class SearchResult:
    """What a search found, as objects: the runner writes arch.json, deploys and summarises."""

    spec: ArchSpec
    variables: Any | None                 # its trained weights; None when the method did not train it
    metrics: dict[str, Any]               # JSON-able, merged into summary.json
    baseline: tuple[ArchSpec, Any] | None = None  # measured paired against `spec` (speed-up)


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method; see the module docstring."""

    name: str
    summary: str
    targets: tuple[str, ...]  # target kinds it accepts, of "macs" and "latency_ms" (the config's search.target_<kind>)
    args: type | str       # the search.args Section, or "module:Class" (imported only when a search runs)
    search: Callable[[SearchContext, Any], SearchResult] | str  # or "module:function", imported when a search runs
    add_commands: Callable[[argparse._SubParsersAction], None] | None = None
    requires_target: bool = False
    # Target kinds ("none" without a target) under which the search reads `latency.table` through
    # `ctx.oracle`; under any other the runner refuses a `latency.table` it would ignore. None: not declared.
    table_targets: tuple[str, ...] | None = None

    def args_schema(self) -> type:
        return _load(self.args)

    def run_search(self, ctx: SearchContext, args: Any) -> SearchResult:
        return _load(self.search)(ctx, args)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "targets": list(self.targets),
                "commands": self.add_commands is not None}


def _load(ref: Any) -> Any:
    """A "module:name" reference imported on first use (so the registry stays light), or the object itself."""
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)
    return ref


def lazy_exports(package: str, table: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """(`__getattr__`, names) for a method package whose names load from `package.<module>` on first use,
    so importing the package (the registry, `jaxnas --help`) does not import jax, flax or pydantic."""
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__, sorted(where)
