"""The TensorRT engine builder, shared by the export (`export_tensorrt`) and the TensorRT latency
backend, so that exported engines and timed engines are built the same way.

Written against TensorRT's documented Python API, 8.6 through 10.x/11.x: ``trt.Builder`` ->
``create_network`` (EXPLICIT_BATCH flag only before 10.0, where it is required for ONNX) ->
``trt.OnnxParser`` -> builder config with a ``MemoryPoolType.WORKSPACE`` limit (and ``BuilderFlag.FP16``
for fp16 on TensorRT < 11) -> ``build_serialized_network``. ``import tensorrt`` happens lazily; without
it the builder raises a one-line `BackendError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxnas.runtime import BackendError
from jaxnas.runtime.model_io import read_model_bytes, resolve_shape

__all__ = ["TENSORRT_MISSING", "PRECISIONS", "import_tensorrt", "check_precision", "trt_logger",
           "build_serialized_engine", "build_engine"]

TENSORRT_MISSING = "tensorrt is not installed: pip install tensorrt (NVIDIA GPU required)"
PRECISIONS = ("fp32", "fp16")


def import_tensorrt():
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


def trt_logger(trt, level: str = "error"):
    sev = {"error": "ERROR", "warning": "WARNING", "info": "INFO", "verbose": "VERBOSE"}[level]
    return trt.Logger(getattr(trt.Logger, sev))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
    check_precision(precision)
    trt = import_tensorrt()
    data, desc = read_model_bytes(onnx_model, kind="ONNX model")
    logger = trt_logger(trt, log_level)
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
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [layer.get_output(j) for layer in layers for j in range(layer.num_outputs)]
    return any(t.dtype == trt.DataType.HALF for t in tensors)


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
