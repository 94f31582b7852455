"""The backend protocol, its error type and the shared timing loop."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from jaxnas.runtime import BackendError
from jaxnas.runtime.model_io import read_model_bytes, resolve_shape

from ..fingerprint import Fingerprint
from ..stats import TimingStats
from ..timing import (DEFAULT_PROTOCOL, Comparison, TimingProtocol, compare_adaptive, measure_adaptive, pool,
                      warn_if_flagged)

__all__ = [
    "BackendError",
    "LatencyBackend",
    "collect_samples",
    "measure_paired",
    "resolve_shape",
    "random_input",
    "read_model_bytes",
    "DEFAULT_WARMUP",
    "DEFAULT_RUNS",
    "DEFAULT_MAX_RUNS",
    "LEGACY_WARMUP",
    "LEGACY_RUNS",
    "TimerBase",
    "PreparedBackend",
    "supports_protocol",
    "timed",
    "measure_with",
    "compare",
]

DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50
# Upper bound on timed runs when ``min_time_s`` asks for more than ``runs``.
DEFAULT_MAX_RUNS = 100_000
# The fixed timing of backends that only offer measure(warmup, runs) (the defaults before the protocol).
LEGACY_WARMUP = 20
LEGACY_RUNS = 100


@runtime_checkable
class LatencyBackend(Protocol):
    """A way of timing a model on one runtime/device.

    ``measure`` returns milliseconds **per batch**.  By default it times by the adaptive protocol
    (:mod:`latency.timing`: rounds of fresh sessions until the CI of the median is within ±1 %, or a
    cap; the result carries the interval, the rounds and any flags).  With ``runs`` given it is the
    fixed loop: warm-up runs first (never timed), then at least ``runs`` timed runs (more while less
    than ``min_time_s`` seconds of timed runs have elapsed), each timed on its own.
    ``input_shape`` is the full input shape including the batch dimension
    (NHWC for images); ``batch_size``, when given, replaces dimension 0.
    The built-in backends also have ``prepare(model, input_shape, batch_size=)`` (a
    :class:`latency.timing.Timer`), which :func:`compare` uses for alternating rounds.
    """

    name: str

    def fingerprint(self, batch_size: int = 1) -> Fingerprint: ...

    def measure(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
                warmup: Optional[int] = None, runs: Optional[int] = None,
                batch_size: Optional[int] = None, min_time_s: float = 0.0,
                protocol: Optional[TimingProtocol] = None) -> TimingStats: ...


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


class TimerBase:
    """Shared by the backends' timers (:class:`latency.timing.Timer`): a context manager that closes."""

    self_timed: bool = False
    cpu_clock: Optional[Callable[[], int]] = None
    exclusive: bool = False
    what: str = "the model"  # how warnings name the model

    def session(self) -> Callable[[], Any]:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PreparedBackend:
    """``measure`` of the built-in backends: ``self.prepare(model, ...)`` (a :class:`TimerBase`), then
    :func:`timed`."""

    prepare: Callable[..., TimerBase]

    def measure(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
                warmup: Optional[int] = None, runs: Optional[int] = None,
                batch_size: Optional[int] = None, min_time_s: float = 0.0,
                protocol: Optional[TimingProtocol] = None) -> TimingStats:
        """Latency of one run on a fixed random input (ms per batch): by the adaptive protocol (a fresh session
        every round, where the runtime has sessions), or the fixed loop in one session when ``runs`` is given."""
        with self.prepare(model, input_shape, batch_size=batch_size) as t:
            return timed(t, warmup=warmup, runs=runs, min_time_s=min_time_s, protocol=protocol, what=t.what)


def supports_protocol(backend: Any) -> bool:
    """Whether ``backend`` can time by the adaptive protocol (it has ``prepare()``; all built-in ones do)."""
    return callable(getattr(backend, "prepare", None))


def timed(timer: Any, *, warmup: Optional[int], runs: Optional[int], min_time_s: float,
          protocol: Optional[TimingProtocol], what: str) -> TimingStats:
    """A backend's ``measure`` body.  ``runs`` given (or ``min_time_s``): the fixed loop, one session,
    exactly ``runs`` timed runs after ``warmup`` (no interval).  Otherwise the adaptive ``protocol``
    (default :data:`latency.timing.DEFAULT_PROTOCOL`; ``warmup`` overrides its per-session warm-up); a
    flagged result also raises a :class:`latency.timing.TimingWarning`."""
    if runs is not None or min_time_s:
        if protocol is not None:
            raise ValueError("pass either a timing protocol or a fixed number of runs, not both")
        return TimingStats.from_samples(collect_samples(
            timer.session(), warmup=DEFAULT_WARMUP if warmup is None else warmup,
            runs=DEFAULT_RUNS if runs is None else runs, min_time_s=min_time_s, self_timed=timer.self_timed))
    p = protocol or DEFAULT_PROTOCOL
    if warmup is not None:
        _check_loop_args(warmup, 1, 0.0)
        p = p.replace(warmup=warmup)
    stats = measure_adaptive(timer, p, what=what)
    warn_if_flagged(stats, what, stacklevel=4)
    return stats


def measure_with(backend: Any, model: Any, input_shape: Optional[Sequence[int]] = None, *,
                 protocol: Optional[TimingProtocol] = None, warmup: Optional[int] = None,
                 runs: Optional[int] = None) -> TimingStats:
    """``backend.measure`` by the protocol, or with fixed ``warmup``/``runs`` when ``runs`` is given.

    A backend without ``prepare()`` (a third-party or test stand-in that only has ``measure(model, shape,
    warmup=, runs=)``) is timed the fixed way with :data:`LEGACY_WARMUP` / :data:`LEGACY_RUNS`."""
    if runs is not None:
        return backend.measure(model, input_shape, warmup=DEFAULT_WARMUP if warmup is None else warmup, runs=runs)
    if supports_protocol(backend):
        return backend.measure(model, input_shape, protocol=protocol, warmup=warmup)
    return backend.measure(model, input_shape, warmup=LEGACY_WARMUP if warmup is None else warmup,
                           runs=LEGACY_RUNS)


def measure_paired(backend: "LatencyBackend", reference: Any, candidate: Any,
                   input_shape: Optional[Sequence[int]] = None, *, protocol: Optional[TimingProtocol] = None,
                   warmup: Optional[int] = None, runs: Optional[int] = None, rounds: Optional[int] = None,
                   batch_size: Optional[int] = None) -> Comparison:
    """Time ``candidate`` against ``reference`` in alternating rounds of one process (a
    :class:`latency.timing.Comparison`, reference first).

    By the adaptive ``protocol`` (default): rounds until the CI of the per-round time ratio is within
    ``rel_ci`` (:func:`compare`).  With ``runs`` or ``rounds`` given, or for a backend without
    ``prepare()``: the fixed way, ``rounds`` (default 3) rounds of ``backend.measure(warmup, runs)``, each
    the reference then the candidate."""
    if runs is None and rounds is None and supports_protocol(backend):
        return compare(backend, [reference, candidate], input_shape, protocol=protocol,
                       batch_size=batch_size, names=("reference", "candidate"))
    if protocol is not None and (runs is not None or rounds is not None):
        raise ValueError("pass either a timing protocol or fixed runs/rounds, not both")
    legacy = not supports_protocol(backend)
    warmup = (LEGACY_WARMUP if legacy else DEFAULT_WARMUP) if warmup is None else warmup
    runs = (LEGACY_RUNS if legacy else DEFAULT_RUNS) if runs is None else runs
    ref, cand = [], []
    kw: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    for _ in range(3 if rounds is None else int(rounds)):
        ref.append(backend.measure(reference, input_shape, warmup=warmup, runs=runs, **kw))
        cand.append(backend.measure(candidate, input_shape, warmup=warmup, runs=runs, **kw))
    return Comparison(("reference", "candidate"), (tuple(ref), tuple(cand)), (pool(ref), pool(cand)),
                      fingerprint=_fingerprint(backend, batch_size), batch_size=batch_size or 1)


def _fingerprint(backend: Any, batch_size: Optional[int]) -> Optional[dict[str, Any]]:
    fp = getattr(backend, "fingerprint", None)
    if fp is None:
        return None
    fp = fp(batch_size or 1)
    return fp.to_dict() if hasattr(fp, "to_dict") else dict(fp)


def compare(backend: Any, models: Union[Sequence[Any], Mapping[str, Any]],
            input_shape: Union[None, Sequence[int], Sequence[Sequence[int]]] = None, *,
            protocol: Optional[TimingProtocol] = None, batch_size: Optional[int] = None,
            names: Optional[Sequence[str]] = None) -> Comparison:
    """Time two or more models (files/bytes/callables the backend takes; a mapping names them) in
    alternating rounds until every model's time ratio to the first is known to ``rel_ci``.

    ``input_shape``: one shape for all, or one per model.  Returns a
    :class:`latency.timing.Comparison` (``speedup(j)``, ``speedup_ci(j)``,
    ``delta_ms(j)``, ``to_dict()``); a flagged comparison also raises a :class:`latency.timing.TimingWarning`."""
    if isinstance(models, Mapping):
        names = list(models) if names is None else names
        models = list(models.values())
    models = list(models)
    if len(models) < 2:
        raise ValueError("compare needs at least two models")
    if not supports_protocol(backend):
        raise BackendError(f"{type(backend).__name__} has no prepare(); alternating rounds need one")
    shapes: list[Optional[Sequence[int]]]
    if input_shape is not None and len(input_shape) and not isinstance(input_shape[0], (int, np.integer)):
        shapes = list(input_shape)  # type: ignore[arg-type]
        if len(shapes) != len(models):
            raise ValueError(f"{len(shapes)} input shapes for {len(models)} models")
    else:
        shapes = [input_shape] * len(models)  # type: ignore[list-item]
    p = protocol or DEFAULT_PROTOCOL
    with contextlib.ExitStack() as stack:
        timers = [stack.enter_context(backend.prepare(m, s, batch_size=batch_size)) for m, s in zip(models, shapes)]
        result = dataclasses.replace(compare_adaptive(timers, p, names=names),
                                     fingerprint=_fingerprint(backend, batch_size), batch_size=batch_size or 1)
    warn_if_flagged(result, "the comparison " + " vs ".join(result.names), stacklevel=3)
    return result


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
