"""TensorRT latency backend (NVIDIA GPUs).

Written against TensorRT's documented Python API, 8.6 through 10.x/11.x:
``trt.Builder`` → ``create_network`` (EXPLICIT_BATCH flag only before 10.0,
where it is required for ONNX) → ``trt.OnnxParser`` → builder config with a
``MemoryPoolType.WORKSPACE`` limit (and ``BuilderFlag.FP16`` for fp16 on
TensorRT < 11) → ``build_serialized_network`` → ``Runtime.deserialize_cuda_engine``
→ name-based I/O (``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``) → ``execute_async_v3``.

Device buffers, the stream and the timing events come from a tiny ctypes
binding to the CUDA driver API (:mod:`latency.backends.cuda_driver`), so the
only GPU dependency is ``pip install tensorrt``.  Each timed run is bracketed
by two CUDA events on the execution stream (``timer='cuda_event'``, default)
or by ``perf_counter_ns`` + stream synchronisation (``timer='wall'``); the
input is copied to the device once, outside timing, like the other backends.

``import tensorrt`` happens lazily; without it the backend raises a one-line
:class:`BackendError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..fingerprint import Fingerprint
from ..stats import TimingStats
from ..timing import TimingProtocol
from .base import BackendError, TimerBase, random_input, read_model_bytes, resolve_shape, timed

__all__ = ["TensorRTBackend", "build_engine", "build_serialized_engine", "TENSORRT_MISSING",
           "ENGINE_SUFFIXES"]

TENSORRT_MISSING = "tensorrt is not installed: pip install tensorrt (NVIDIA GPU required)"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_PRECISIONS = ("fp32", "fp16")
_TIMERS = ("cuda_event", "wall")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(TENSORRT_MISSING) from None
    return trt


def _major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (ValueError, AttributeError):  # pragma: no cover
        return 10


def _logger(trt, level: str = "error"):
    sev = {"error": "ERROR", "warning": "WARNING", "info": "INFO", "verbose": "VERBOSE"}[level]
    return trt.Logger(getattr(trt.Logger, sev))


def _check_precision(precision: str) -> str:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    return precision


def build_serialized_engine(onnx_model: Any, *, precision: str = "fp32", workspace_mb: int = 1024,
                            input_shape: Optional[Sequence[int]] = None,
                            batch_size: Optional[int] = None, allow_tf32: bool = True,
                            log_level: str = "error") -> bytes:
    """Build a TensorRT engine from an ONNX path/bytes/ModelProto; returns the serialized plan.

    Dynamic input dims (e.g. a symbolic batch) get a single-shape optimisation
    profile (min = opt = max) from ``input_shape``/``batch_size``.
    ``precision='fp16'`` sets ``BuilderFlag.FP16`` where it exists (TensorRT <
    11); TensorRT 11 removed weak typing, so there the ONNX model itself must
    already be fp16 (e.g. converted with ModelOpt AutoCast) or this raises.
    """
    _check_precision(precision)
    trt = _import_tensorrt()
    data, desc = read_model_bytes(onnx_model, kind="ONNX model")
    logger = _logger(trt, log_level)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if _major(trt) < 10 and explicit is not None:
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {desc}: " + ("; ".join(errs) or "unknown error"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if not allow_tf32 and getattr(trt.BuilderFlag, "TF32", None) is not None:
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is not None:
            config.set_flag(fp16)
        elif not _network_has_half(trt, network):
            raise BackendError(
                f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing was removed in 11.x): "
                f"for precision='fp16' pass an ONNX model already converted to fp16 "
                f"(e.g. ModelOpt AutoCast), or use precision='fp32'")
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        model_shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in model_shape):
            concrete = resolve_shape(input_shape, model_shape, batch_size, what="ONNX model")
            if profile is None:
                profile = builder.create_optimization_profile()
            profile.set_shape(t.name, concrete, concrete, concrete)
    if profile is not None:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT engine build failed for {desc} (precision={precision}); "
                           f"rerun with log_level='warning' to see the builder log")
    return bytes(serialized)


def _network_has_half(trt, network) -> bool:
    half = trt.DataType.HALF
    for i in range(network.num_inputs):
        if network.get_input(i).dtype == half:
            return True
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == half:
                return True
    return False


def build_engine(onnx_path: Any, engine_path: "str | os.PathLike[str]", precision: str = "fp32", *,
                 workspace_mb: int = 1024, input_shape: Optional[Sequence[int]] = None,
                 batch_size: Optional[int] = None, allow_tf32: bool = True,
                 log_level: str = "error") -> Path:
    """Build an engine from ``onnx_path`` and write it (atomically) to ``engine_path``."""
    plan = build_serialized_engine(onnx_path, precision=precision, workspace_mb=workspace_mb,
                                   input_shape=input_shape, batch_size=batch_size,
                                   allow_tf32=allow_tf32, log_level=log_level)
    from jaxnas.io_utils import atomic_write_bytes
    return atomic_write_bytes(engine_path, plan)


def _is_engine_file(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(ENGINE_SUFFIXES)


class TensorRTBackend:
    """Times ONNX models (built into an engine on the fly) or prebuilt ``.engine``/``.plan`` files."""

    name = "tensorrt"

    def __init__(self, precision: str = "fp32", workspace_mb: int = 1024, *, device: int = 0,
                 timer: str = "cuda_event", allow_tf32: bool = True, seed: int = 0,
                 log_level: str = "error"):
        self.precision = _check_precision(precision)
        if timer not in _TIMERS:
            raise ValueError(f"timer must be one of {_TIMERS}, got {timer!r}")
        self.workspace_mb = int(workspace_mb)
        self.device = int(device)
        self.timer = timer
        self.allow_tf32 = allow_tf32
        self.seed = seed
        self.log_level = log_level
        self._trt = _import_tensorrt()  # fail fast with the one-line message

    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        from .cuda_driver import gpu_name

        name = gpu_name(self.device)
        if name is None:
            raise BackendError(f"TensorRT needs an NVIDIA GPU: CUDA device {self.device} is not visible")
        return Fingerprint(backend=self.name, runtime=f"tensorrt {self._trt.__version__}",
                           device=name, provider="cuda", threads=None, batch_size=batch_size,
                           precision=self.precision)

    def engine_bytes(self, model: Any, input_shape: Optional[Sequence[int]] = None,
                     batch_size: Optional[int] = None) -> bytes:
        if _is_engine_file(model):
            return read_model_bytes(model, kind="TensorRT engine")[0]
        return build_serialized_engine(model, precision=self.precision, workspace_mb=self.workspace_mb,
                                       input_shape=input_shape, batch_size=batch_size,
                                       allow_tf32=self.allow_tf32, log_level=self.log_level)

    def prepare(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
              batch_size: Optional[int] = None) -> "_TrtTimer":
        """Engine built/deserialized, buffers bound, input copied and one run done
        (:class:`latency.timing.Timer`).  Every round reuses the execution context (a TensorRT engine
        is the session; building one per round would take minutes).  ``close()`` frees the GPU."""
        from .cuda_driver import CudaDriver

        if not _is_engine_file(model):  # surface a bad path before touching the GPU
            read_model_bytes(model, kind="ONNX model")
        t = _TrtTimer(CudaDriver(self.device))  # primary context made current before TensorRT touches CUDA
        try:
            t.open(self, model, input_shape, batch_size)
        except BaseException:
            t.close()
            raise
        return t

    def measure(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
                warmup: Optional[int] = None, runs: Optional[int] = None,
                batch_size: Optional[int] = None, min_time_s: float = 0.0,
                protocol: Optional[TimingProtocol] = None) -> TimingStats:
        with self.prepare(model, input_shape, batch_size=batch_size) as t:
            what = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the engine"
            return timed(t, warmup=warmup, runs=runs, min_time_s=min_time_s, protocol=protocol, what=what)

    def __repr__(self) -> str:
        return (f"TensorRTBackend(precision={self.precision!r}, workspace_mb={self.workspace_mb}, "
                f"device={self.device})")


class _TrtTimer(TimerBase):
    """One execution context on its own stream; runs timed by CUDA events (``self_timed``) or wall clock."""

    exclusive = False
    cpu_clock = None

    def __init__(self, drv):
        self.drv = drv
        self.stream = self.ev0 = self.ev1 = None
        self.context = self.engine = None
        self.self_timed = True
        self._run: Any = None

    def open(self, be: "TensorRTBackend", model: Any, input_shape, batch_size) -> None:
        trt, drv = be._trt, self.drv
        plan = be.engine_bytes(model, input_shape, batch_size)
        runtime = trt.Runtime(_logger(trt, be.log_level))
        engine = self.engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError("TensorRT could not deserialize the engine (built by another "
                               "TensorRT version or for another GPU?)")
        context = self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(ins) != 1:
            raise BackendError(f"TensorRTBackend measures single-input models; this engine has "
                               f"inputs {ins}")
        name = ins[0]
        shape = resolve_shape(input_shape, tuple(engine.get_tensor_shape(name)), batch_size,
                              what="TensorRT engine")
        if not context.set_input_shape(name, shape):
            raise BackendError(f"input shape {shape} is outside the engine's optimisation profile")
        x = random_input(shape, trt.nptype(engine.get_tensor_dtype(name)), seed=be.seed)
        ptr = drv.mem_alloc(x.nbytes)
        drv.memcpy_htod(ptr, x)
        context.set_tensor_address(name, ptr)
        for o in outs:
            oshape = tuple(context.get_tensor_shape(o))
            if any(d < 0 for d in oshape):
                raise BackendError(f"output {o!r} has a data-dependent shape {oshape}; not supported")
            itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(o))).itemsize
            context.set_tensor_address(o, drv.mem_alloc(int(np.prod(oshape, dtype=np.int64)) * itemsize))
        stream = self.stream = drv.stream_create()
        ev0, ev1 = self.ev0, self.ev1 = drv.event_create(), drv.event_create()

        def enqueue() -> None:
            if not context.execute_async_v3(stream):
                raise BackendError("TensorRT execute_async_v3 failed")

        def run_event() -> float:
            drv.event_record(ev0, stream)
            enqueue()
            drv.event_record(ev1, stream)
            drv.event_synchronize(ev1)
            return drv.event_elapsed_ms(ev0, ev1)

        def run_wall() -> None:
            enqueue()
            drv.stream_synchronize(stream)

        run_wall()  # first run (lazy init) outside warm-up accounting
        self.self_timed = be.timer == "cuda_event"
        self._run = run_event if self.self_timed else run_wall

    def session(self):
        return self._run

    def close(self) -> None:
        drv = self.drv
        if drv is None:
            return
        if self.stream is not None:
            try:
                drv.stream_synchronize(self.stream)
            except BackendError:  # pragma: no cover
                pass
        self.context = self.engine = None  # release the TensorRT objects before the CUDA context
        for ev in (self.ev0, self.ev1):
            if ev is not None:
                drv.event_destroy(ev)
        if self.stream is not None:
            drv.stream_destroy(self.stream)
        drv.close()  # frees every device buffer, releases the primary context
        self.drv = None
