"""TensorRT latency backend (NVIDIA GPUs).

Written against TensorRT's documented Python API, 8.6 through 10.x/11.x:
``trt.Builder`` → ``create_network`` (EXPLICIT_BATCH flag only before 10.0,
where it is required for ONNX) → ``trt.OnnxParser`` → builder config with a
``MemoryPoolType.WORKSPACE`` limit (and ``BuilderFlag.FP16`` for fp16 on
TensorRT < 11) → ``build_serialized_network`` → ``Runtime.deserialize_cuda_engine``
→ name-based I/O (``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``) → ``execute_async_v3``.

Device buffers, the stream and the timing events come from a tiny ctypes
binding to the CUDA driver API (:mod:`jaxnas.runtime.cuda_driver`), so the
only GPU dependency is ``pip install tensorrt``.  Each timed run is bracketed
by two CUDA events on the execution stream (``timer='cuda_event'``, default)
or by ``perf_counter_ns`` + stream synchronisation (``timer='wall'``); the
input is copied to the device once, outside timing, like the other backends.

``import tensorrt`` happens lazily; without it the backend raises a one-line
:class:`BackendError`.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from jaxnas.runtime.tensorrt import (TENSORRT_MISSING, build_engine, build_serialized_engine, check_precision,
                                     import_tensorrt, trt_logger)

from ..fingerprint import Fingerprint
from .base import (BackendError, PreparedBackend, TimerBase, check_thread_count, random_input, read_model_bytes,
                   resolve_shape)

__all__ = ["TensorRTBackend", "build_engine", "build_serialized_engine", "TENSORRT_MISSING",
           "ENGINE_SUFFIXES"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_TIMERS = ("cuda_event", "wall")


def _is_engine_file(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(ENGINE_SUFFIXES)


class TensorRTBackend(PreparedBackend):
    """Times ONNX models (built into an engine on the fly) or prebuilt ``.engine``/``.plan`` files."""

    name = "tensorrt"

    def __init__(self, precision: str = "fp32", workspace_mb: int = 1024, *, device: int = 0,
                 timer: str = "cuda_event", allow_tf32: bool = True, seed: int = 0,
                 log_level: str = "error", threads: Optional[int] = None):
        check_thread_count(self.name, threads)
        self.precision = check_precision(precision)
        if timer not in _TIMERS:
            raise ValueError(f"timer must be one of {_TIMERS}, got {timer!r}")
        self.workspace_mb = int(workspace_mb)
        self.device = int(device)
        self.timer = timer
        self.allow_tf32 = allow_tf32
        self.seed = seed
        self.log_level = log_level
        self._trt = import_tensorrt()  # fail fast with the one-line message

    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        from jaxnas.runtime.cuda_driver import gpu_name

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
        from jaxnas.runtime.cuda_driver import CudaDriver

        if not _is_engine_file(model):  # surface a bad path before touching the GPU
            read_model_bytes(model, kind="ONNX model")
        t = _TrtTimer(CudaDriver(self.device))  # primary context made current before TensorRT touches CUDA
        t.what = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the engine"
        try:
            t.open(self, model, input_shape, batch_size)
        except BaseException:
            t.close()
            raise
        return t

    def __repr__(self) -> str:
        return (f"TensorRTBackend(precision={self.precision!r}, workspace_mb={self.workspace_mb}, "
                f"device={self.device})")


class _TrtTimer(TimerBase):
    """One execution context on its own stream; runs timed by CUDA events (``self_timed``) or wall clock."""

    def __init__(self, drv):
        self.drv = drv
        self.stream = self.ev0 = self.ev1 = None
        self.context = self.engine = None
        self.self_timed = True
        self._run: Any = None

    def open(self, be: "TensorRTBackend", model: Any, input_shape, batch_size) -> None:
        trt, drv = be._trt, self.drv
        plan = be.engine_bytes(model, input_shape, batch_size)
        runtime = trt.Runtime(trt_logger(trt, be.log_level))
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
