"""The backend protocol, its error type and the shared timing loop."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from jaxnas.runtime import BackendError
from jaxnas.runtime.model_io import read_model_bytes, resolve_shape

from ..fingerprint import Fingerprint
from ..stats import TimingStats

__all__ = [
    "BackendError",
    "LatencyBackend",
    "ModelLike",
    "collect_samples",
    "PairedTiming",
    "measure_paired",
    "resolve_shape",
    "random_input",
    "read_model_bytes",
    "DEFAULT_WARMUP",
    "DEFAULT_RUNS",
    "DEFAULT_MAX_RUNS",
]

DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50
# Upper bound on timed runs when ``min_time_s`` asks for more than ``runs``.
DEFAULT_MAX_RUNS = 100_000

ModelLike = Union[str, "os.PathLike[str]", bytes, Callable[..., Any]]


@runtime_checkable
class LatencyBackend(Protocol):
    """A way of timing a model on one runtime/device.

    ``measure`` returns milliseconds **per batch**: warm-up runs first (never
    timed), then at least ``runs`` timed runs (more while less than
    ``min_time_s`` seconds of timed runs have elapsed), each timed on its own.
    ``input_shape`` is the full input shape including the batch dimension
    (NHWC for images); ``batch_size``, when given, replaces dimension 0.
    """

    name: str

    def fingerprint(self, batch_size: int = 1) -> Fingerprint: ...

    def measure(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
                warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS,
                batch_size: Optional[int] = None, min_time_s: float = 0.0) -> TimingStats: ...


# Backends that run on a pool or device of their own: they cannot honour a thread count.
NO_THREAD_COUNT = {"xla": "XLA runs on its own thread pool, sized when jax starts",
                   "tensorrt": "TensorRT runs the model on the GPU"}


def check_thread_count(backend: str, threads: Optional[int], *, explicit: bool = False) -> None:
    """A thread count the runtime cannot honour is refused: any count the user gave (`explicit`), else any
    other than 1 (the config's default)."""
    if threads is not None and (explicit or threads != 1) and backend in NO_THREAD_COUNT:
        raise BackendError(f"the {backend} backend takes no thread count ({NO_THREAD_COUNT[backend]}); --threads "
                           "and latency.threads apply to onnxruntime and tflite: remove it or time on one of those")


def _check_loop_args(warmup: int, runs: int, min_time_s: float) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an int >= 1, got {runs!r}")
    if min_time_s is None or min_time_s < 0:
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s!r}")


def collect_samples(run_once: Callable[[], Optional[float]], *, warmup: int = DEFAULT_WARMUP,
                    runs: int = DEFAULT_RUNS, min_time_s: float = 0.0,
                    max_runs: int = DEFAULT_MAX_RUNS, self_timed: bool = False) -> list[float]:
    """Warm up, then time ``run_once`` repeatedly; returns per-run times in ms.

    With ``self_timed=False`` each call is bracketed by ``time.perf_counter_ns``.
    With ``self_timed=True`` ``run_once`` returns its own elapsed milliseconds
    (e.g. measured with CUDA events).  Timing stops once ``runs`` samples exist
    and the timed runs add up to at least ``min_time_s`` seconds (or at
    ``max_runs`` samples, whichever first).
    """
    _check_loop_args(warmup, runs, min_time_s)
    max_runs = max(int(max_runs), runs)
    for _ in range(warmup):
        run_once()
    samples: list[float] = []
    total_ms = 0.0
    min_ms = float(min_time_s) * 1e3
    perf = time.perf_counter_ns
    while len(samples) < runs or (total_ms < min_ms and len(samples) < max_runs):
        if self_timed:
            ms = float(run_once())
        else:
            t0 = perf()
            run_once()
            ms = (perf() - t0) / 1e6
        samples.append(ms)
        total_ms += ms
    return samples


@dataclass(frozen=True)
class PairedTiming:
    """Rounds of a reference model and a candidate timed alternately (`measure_paired`)."""

    reference: tuple[TimingStats, ...]
    candidate: tuple[TimingStats, ...]

    @property
    def deltas_ms(self) -> np.ndarray:
        """Per round: candidate median - reference median."""
        return np.asarray([c.median for c in self.candidate]) - np.asarray([r.median for r in self.reference])

    @property
    def delta_ms(self) -> float:
        """The median of the per-round differences: a slow spell that hits one pair moves it less than it
        moves either model's own timing."""
        return float(np.median(self.deltas_ms))

    @property
    def delta_std_ms(self) -> float:
        return float(self.deltas_ms.std())

    @property
    def best(self) -> TimingStats:
        """The candidate's round with the lowest median."""
        return min(self.candidate, key=lambda s: s.median)


def measure_paired(backend: "LatencyBackend", reference: Any, candidate: Any, input_shape: Sequence[int], *,
                   warmup: int, runs: int, rounds: int) -> PairedTiming:
    """Time `candidate` against `reference` in `rounds` rounds, each the reference then the candidate."""
    ref, cand = [], []
    for _ in range(rounds):
        ref.append(backend.measure(reference, input_shape, warmup=warmup, runs=runs))
        cand.append(backend.measure(candidate, input_shape, warmup=warmup, runs=runs))
    return PairedTiming(tuple(ref), tuple(cand))


def random_input(shape: Sequence[int], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    """A fixed (seeded) random input; integers for integer dtypes."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dt)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dt)
