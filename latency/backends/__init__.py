"""Latency backends: one :class:`LatencyBackend` protocol, one module per runtime.

=============  ==========================  =====================================
name           class                       measures
=============  ==========================  =====================================
onnxruntime    :class:`OnnxRuntimeBackend`  ONNX file/bytes (CPU, or a GPU EP)
tflite         :class:`TFLiteBackend`       ``.tflite`` file/bytes (LiteRT, XNNPACK)
xla            :class:`XlaBackend`          a Python callable ``fn(x)`` under ``jax.jit``
tensorrt       :class:`TensorRTBackend`     ONNX (built to an engine) or ``.engine``
=============  ==========================  =====================================

Every runtime library is imported lazily, inside the backend that needs it.
"""
from __future__ import annotations

import difflib
from typing import Any

from .base import (DEFAULT_RUNS, DEFAULT_WARMUP, BackendError, LatencyBackend, collect_samples, compare,
                   measure_paired, measure_with, random_input, resolve_shape, supports_protocol)
from .ort import OnnxRuntimeBackend
from .tflite import TFLiteBackend
from .trt import TENSORRT_MISSING, TensorRTBackend, build_engine, build_serialized_engine
from .xla import XlaBackend

__all__ = [
    "BackendError", "UnknownBackendError", "LatencyBackend", "OnnxRuntimeBackend", "TFLiteBackend",
    "XlaBackend", "TensorRTBackend", "build_engine", "build_serialized_engine", "get_backend",
    "backend_names", "BACKENDS", "ALIASES", "collect_samples", "resolve_shape", "random_input",
    "TENSORRT_MISSING", "DEFAULT_WARMUP", "DEFAULT_RUNS", "measure_paired", "compare", "measure_with",
    "supports_protocol",
]

BACKENDS: dict[str, type] = {
    "onnxruntime": OnnxRuntimeBackend,
    "tflite": TFLiteBackend,
    "xla": XlaBackend,
    "tensorrt": TensorRTBackend,
}

ALIASES: dict[str, str] = {
    "ort": "onnxruntime", "onnx": "onnxruntime",
    "litert": "tflite", "tfl": "tflite",
    "jax": "xla",
    "trt": "tensorrt",
}


class UnknownBackendError(BackendError, ValueError):
    """``get_backend`` was given a name that is neither a backend nor an alias."""


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str, **kw: Any) -> LatencyBackend:
    """Instantiate a backend by registry name (or alias), forwarding ``kw`` to its constructor.

    >>> get_backend("onnxruntime", threads=1)  # doctest: +SKIP
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    canon = {n.replace("_", ""): n for n in BACKENDS}
    resolved = canon.get(key) or ALIASES.get(key)
    if resolved is None:
        options = list(BACKENDS) + list(ALIASES)
        close = difflib.get_close_matches(str(name).lower(), options, n=1, cutoff=0.5)
        hint = f"did you mean {ALIASES.get(close[0], close[0])!r}? " if close else ""
        raise UnknownBackendError(f"unknown latency backend {name!r}; {hint}"
                                  f"known backends: {', '.join(BACKENDS)}")
    return BACKENDS[resolved](**kw)
