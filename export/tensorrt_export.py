"""ArchSpec + variables -> ONNX (`export_onnx`) -> serialized TensorRT engine, parity-checked on the GPU.

The engine is built by `jaxnas.runtime.tensorrt.build_engine`, which the TensorRT latency backend uses too,
so the files timed by the backend and the files exported here are built the same way.  fp32 engines are
built with TF32 disabled by default (TF32 convolutions differ from float32 by ~1e-3 relative, far
above the 1e-4 parity bound); pass `allow_tf32=True` for the faster engine and a looser tolerance.
Running an engine uses the ctypes CUDA driver binding (`jaxnas/runtime/cuda_driver.py`):
TensorRT is the only GPU Python dependency.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxnas.spec import ArchSpec
from jaxnas.runtime import BackendError

from jaxnas.export.onnx_export import DEFAULT_LAYOUT, DEFAULT_ONNX_ROUTE, export_onnx
from jaxnas.export.parity import ExportError, ExportResult, check_choice, check_file

__all__ = ["export_tensorrt", "engine_export", "engine_from_onnx", "run_engine", "TensorRTMissing",
           "TENSORRT_PRECISIONS"]

TENSORRT_PRECISIONS = ("fp32", "fp16")


class TensorRTMissing(ExportError, BackendError):
    """`tensorrt` is not importable (the latency backend's one-line message)."""


def _import_tensorrt():
    from jaxnas.runtime.tensorrt import TENSORRT_MISSING

    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(TENSORRT_MISSING) from None
    return trt


def run_engine(engine_path: str | os.PathLike, x: np.ndarray, *, device: int = 0) -> np.ndarray:
    """Run a serialized single-input engine once on `x` (host array); returns its first output."""
    trt = _import_tensorrt()
    from jaxnas.runtime.cuda_driver import CudaDriver

    plan = Path(engine_path).read_bytes()
    drv = CudaDriver(device)  # primary context current before TensorRT touches CUDA
    runtime = context = engine = None
    stream = None
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))  # must outlive the engine
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ExportError(f"TensorRT could not deserialize {engine_path} (other TensorRT version or GPU?)")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(ins) != 1 or not outs:
            raise ExportError(f"run_engine needs one input and an output; engine has inputs {ins}, outputs {outs}")
        x = np.ascontiguousarray(x, dtype=trt.nptype(engine.get_tensor_dtype(ins[0])))
        if not context.set_input_shape(ins[0], tuple(x.shape)):
            raise ExportError(f"input shape {x.shape} is outside the engine's optimisation profile")
        ptr = drv.mem_alloc(x.nbytes)
        drv.memcpy_htod(ptr, x)
        context.set_tensor_address(ins[0], ptr)
        host, out_ptrs = {}, {}
        for o in outs:
            shape = tuple(context.get_tensor_shape(o))
            host[o] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(o)))
            out_ptrs[o] = drv.mem_alloc(host[o].nbytes)
            context.set_tensor_address(o, out_ptrs[o])
        stream = drv.stream_create()
        if not context.execute_async_v3(stream):
            raise ExportError("TensorRT execute_async_v3 failed")
        drv.stream_synchronize(stream)
        drv.memcpy_dtoh(host[outs[0]], out_ptrs[outs[0]])
        return host[outs[0]]
    finally:
        if stream is not None:
            drv.stream_destroy(stream)
        del context, engine, runtime
        drv.close()  # frees every device buffer


def engine_from_onnx(onnx_path: str | os.PathLike, path: str | Path, *, precision: str = "fp32",
                     allow_tf32: bool = False, batch_size: int = 1) -> Path:
    """Build and atomically write the engine for an ONNX file (`jaxnas.runtime.tensorrt.build_engine`)."""
    check_choice(precision, TENSORRT_PRECISIONS, "TensorRT precision")
    _import_tensorrt()
    from jaxnas.runtime.tensorrt import build_engine

    try:
        return build_engine(onnx_path, path, precision, batch_size=batch_size, allow_tf32=allow_tf32)
    except BackendError as e:
        raise ExportError(str(e)) from e


def export_tensorrt(spec: ArchSpec, variables: dict, path: str | Path, *, precision: str = "fp32",
                    onnx_path: str | Path | None = None, route: str = DEFAULT_ONNX_ROUTE, batch_size: int = 1,
                    input_layout: str = DEFAULT_LAYOUT, allow_tf32: bool = False, check: bool = True,
                    tolerance: float = 1e-4) -> ExportResult:
    """Export to ONNX (kept at `onnx_path`, else a temporary file) and build a TensorRT engine at `path`.

    Static batch `batch_size`.  With `check`, the ONNX file and then the engine (on the GPU) are
    compared with the unfolded JAX model on the fixed parity input: fp32 against `tolerance` absolute,
    fp16 against max(tolerance, FP16_RTOL) relative to max(1, max|reference|).  Without `tensorrt`
    raises `TensorRTMissing` (an `ExportError` and a runtime `BackendError`) before exporting anything.
    """
    _import_tensorrt()
    check_choice(precision, TENSORRT_PRECISIONS, "TensorRT precision")
    with tempfile.TemporaryDirectory(prefix="jaxnas_trt_") as tmp:
        target = Path(onnx_path) if onnx_path is not None else Path(tmp) / "model.onnx"
        onnx_result = export_onnx(spec, variables, target, route=route, batch_size=batch_size,
                                  input_layout=input_layout, check=check, tolerance=tolerance)
        return engine_export(spec, variables, path, onnx_result, precision=precision, allow_tf32=allow_tf32,
                             check=check, tolerance=tolerance)


def engine_export(spec: ArchSpec, variables: Mapping[str, Any], path: str | Path, onnx_result: ExportResult, *,
                  precision: str = "fp32", allow_tf32: bool = False, check: bool = True,
                  tolerance: float = 1e-4) -> ExportResult:
    """The engine of an already exported ONNX file (`export_onnx`'s result), parity-checked on the GPU.

    A dynamic-batch ONNX file gets a batch-1 engine; the engine takes the ONNX file's input layout.
    """
    check_choice(precision, TENSORRT_PRECISIONS, "TensorRT precision")
    path = Path(path)
    batch = onnx_result.input_shape[0] or 1
    # Built under a temporary name next to `path` and renamed only after the parity check passes.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    try:
        engine_from_onnx(onnx_result.path, tmp, precision=precision, allow_tf32=allow_tf32, batch_size=batch)
        seconds = onnx_result.seconds + time.perf_counter() - t0
        in_shape = (batch,) + tuple(onnx_result.input_shape[1:])
        out_shape = (batch,) + tuple(onnx_result.output_shape[1:])
        diff = None
        if check:
            diff = check_file(lambda x: run_engine(tmp, x), spec, variables, in_shape, onnx_result.layout, tolerance,
                              f"TensorRT ({precision}) engine of {spec.name}", precision=precision)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult("tensorrt", path, diff, seconds, onnx_result.route, in_shape, out_shape, precision,
                        onnx_result.layout)
