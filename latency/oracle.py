"""The latency oracle the runner injects into methods (`jaxnas.methods.base.LatencyOracle`): tables,
predictions and measurements on the runtime of the config's latency section.

    oracle = RuntimeOracle(cfg.latency, workdir=Path("runs/x"))
    oracle.measure(spec, variables).median_ms
    oracle.layer_table(supernet, channel_multiple=8)          # DMCP / MetaPruning cost model
    oracle.compare((merged, mv), (base, bv)).ratio            # paired speed-up

Methods see only this object, never a runtime; tests hand them fakes with the same methods.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import LatencyConfig

__all__ = ["RuntimeOracle"]


class RuntimeOracle:
    """`LatencyOracle` over a real runtime (see the module docstring)."""

    def __init__(self, latency: LatencyConfig, *, workdir: str | Path | None = None,
                 log: Callable[[str], None] | None = print, compare_rounds: int = 5):
        self.cfg = latency
        self.workdir = Path(workdir) if workdir is not None else Path(".")
        self.log = log
        self.compare_rounds = compare_rounds

    @property
    def backend(self) -> str:
        return self.cfg.backend

    @functools.cached_property
    def _runtime(self) -> Any:
        from .builder import resolve_backend

        return resolve_backend(self.cfg.backend, self.cfg.threads)

    def fingerprint(self) -> dict[str, Any]:
        return self._runtime.fingerprint(batch_size=self.cfg.batch_size).to_dict()

    def _table_path(self, default: Path) -> Path:
        # latency.table names the file to use (and complete); the loaders refuse one measured elsewhere.
        return Path(self.cfg.table) if self.cfg.table else default

    def layer_table(self, spec: Any, *, channel_multiple: int = 1, out: Path | None = None) -> Any:
        from .layer_grid import build_layer_grid

        out_path = self._table_path(out or self.workdir / "latency_grid.json")
        return build_layer_grid(spec, self._runtime, out_path=out_path, channel_multiple=channel_multiple, log=self.log,
                                **self._table_timing())

    def block_table(self, space: Any, *, out: Path | None = None, context: str = "network") -> Any:
        from .builder import build_table

        return build_table(space, self._runtime, self._table_path(out or self.workdir / "latency_table.json"),
                           threads=self.cfg.threads, context=context, progress=self.log or False, batch_size=self.cfg.batch_size,
                           **self._table_timing())

    def predictor(self, table: Any) -> Any:
        from .predictor import LatencyPredictor

        return LatencyPredictor(table)

    def _variables(self, spec: Any, variables: Any) -> Any:
        if variables is not None:
            return variables
        from jaxnas.export.parity import random_variables

        return random_variables(spec)

    def _timing(self, default_cap_s: float | None = None) -> dict[str, Any]:
        c = self.cfg
        return dict(protocol=c.protocol(default_cap_s), warmup=c.warmup, runs=c.runs)

    def _table_timing(self) -> dict[str, Any]:
        """:meth:`_timing` with a table entry's shorter cap (:data:`latency.builder.TABLE_PROTOCOL`)."""
        from .builder import TABLE_PROTOCOL

        return self._timing(TABLE_PROTOCOL.max_time_s)

    def measure(self, spec: Any, variables: Any = None) -> Any:
        """A `Measurement` by the configured protocol (flagged ones carry their flags: `.trusted`)."""
        from .measure import measure_spec

        c = self.cfg
        return measure_spec(spec, self._variables(spec, variables), c.backend, threads=c.threads,
                            batch_size=c.batch_size, **self._timing())

    def compare(self, a: tuple[Any, Any], b: tuple[Any, Any]) -> Any:
        """a and b in alternating rounds: a `Comparison` (.ratio = a's time / b's, .speedup_ci(), .a, .b)."""
        from .measure import compare_specs

        c = self.cfg
        fixed = {"rounds": self.compare_rounds} if c.runs is not None else {}
        return compare_specs({"a": (a[0], self._variables(*a)), "b": (b[0], self._variables(*b))}, c.backend,
                             threads=c.threads, batch_size=c.batch_size, **self._timing(), **fixed)

    def measure_each(self, specs: Mapping[str, Any], *, cache: Path,
                     entry_meta: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        from .batch_timing import time_each

        return time_each(specs, cache, self._runtime, batch_size=self.cfg.batch_size,
                         **self._table_timing(), entry_meta=entry_meta, log=self.log)

    def paired_deltas(self, reference: tuple[Any, Any], candidates: Mapping[str, Callable[[], tuple[Any, Any]]], *,
                      cache: Path, rounds: int = 3) -> tuple[float, dict[str, tuple[float, float]]]:
        from .batch_timing import time_against

        return time_against((reference[0], self._variables(*reference)), candidates, cache, self._runtime,
                            batch_size=self.cfg.batch_size, **self._table_timing(),
                            rounds=rounds, log=self.log)
