"""Model files and input shapes, as every runtime sees them."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from jaxnas.runtime import BackendError

__all__ = ["read_model_bytes", "resolve_shape"]


def resolve_shape(input_shape: Optional[Sequence[Any]], model_shape: Optional[Sequence[Any]],
                  batch_size: Optional[int], *, what: str = "model") -> tuple[int, ...]:
    """Concrete input shape from the requested shape, the model's declared shape and the batch.

    ``model_shape`` may hold ``None``/``-1``/strings for dynamic dims.  The
    requested shape must agree with every static model dim; dynamic dims are
    taken from the request (dim 0 from ``batch_size`` first).  Raises
    :class:`BackendError` with both shapes on a mismatch.
    """
    def dyn(v: Any) -> bool:
        return v is None or isinstance(v, str) or (isinstance(v, (int, np.integer)) and v < 0)

    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if input_shape is None:
        if model_shape is None:
            raise BackendError(f"no input_shape given and the {what} declares none")
        shape = list(model_shape)
    else:
        shape = list(input_shape)
    if not shape:
        raise BackendError(f"input shape of the {what} is a scalar; expected at least a batch dim")
    if batch_size is not None:
        shape[0] = int(batch_size)
    elif dyn(shape[0]):
        shape[0] = 1
    if model_shape is not None:
        ms = list(model_shape)
        if len(ms) != len(shape):
            raise BackendError(f"input rank mismatch: requested shape {tuple(shape)} but the {what} "
                               f"expects rank {len(ms)} {tuple(ms)}")
        for i, (want, have) in enumerate(zip(shape, ms)):
            if dyn(want):
                if dyn(have):
                    raise BackendError(f"input dim {i} is dynamic in the {what} {tuple(ms)}; "
                                       f"pass input_shape with a concrete value")
                shape[i] = int(have)
            elif not dyn(have) and int(have) != int(want):
                hint = ""
                if len(ms) == 4 and not any(dyn(v) for v in ms[1:] + shape[1:]) and \
                        sorted(int(v) for v in shape[1:]) == sorted(int(v) for v in ms[1:]):
                    hint = " (same dims in another order: is the model NCHW? jaxnas measures NHWC)"
                raise BackendError(f"input shape mismatch: requested {tuple(shape)} but the {what} "
                                   f"has static input shape {tuple(ms)}{hint}")
    if any(dyn(v) for v in shape):
        raise BackendError(f"input shape {tuple(shape)} still has dynamic dims; pass input_shape")
    return tuple(int(v) for v in shape)


def read_model_bytes(model: Any, *, kind: str = "model") -> tuple[bytes, str]:
    """``(bytes, description)`` from a path, bytes or an object with ``SerializeToString``."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), f"<{len(model)} bytes>"
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto
        data = model.SerializeToString()
        return data, f"<{type(model).__name__}>"
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise BackendError(f"{kind} file not found: {path}")
        with open(path, "rb") as f:
            return f.read(), path
    raise BackendError(f"expected a {kind} path or bytes, got {type(model).__name__}")
