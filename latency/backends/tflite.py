"""TFLite / LiteRT latency backend (CPU; XNNPACK delegate by default)."""
from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

from ..fingerprint import Fingerprint, cpu_model_name
from .base import BackendError, PreparedBackend, TimerBase, random_input, read_model_bytes, resolve_shape

__all__ = ["TFLiteBackend"]


def _import_interpreter():
    """``(Interpreter, OpResolverType, runtime string)`` from ai-edge-litert, tflite-runtime or TF."""
    from importlib import metadata

    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, f"ai-edge-litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        pass
    try:  # pragma: no cover - fallbacks for other installs
        from tflite_runtime.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, f"tflite-runtime {metadata.version('tflite-runtime')}"
    except ImportError:
        pass
    try:  # pragma: no cover
        import tensorflow as tf

        return (tf.lite.Interpreter, tf.lite.experimental.OpResolverType,
                f"tensorflow-lite {tf.__version__}")
    except ImportError:
        pass
    raise BackendError("no TFLite runtime is installed: pip install ai-edge-litert")


class TFLiteBackend(PreparedBackend):
    """Times ``.tflite`` models with the LiteRT interpreter.

    ``use_xnnpack=True`` uses the default op resolver, which applies the
    XNNPACK delegate to float models (what a phone CPU deployment does);
    ``False`` uses ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (reference-ish builtin kernels).
    """

    name = "tflite"

    def __init__(self, threads: int = 1, use_xnnpack: bool = True, *, precision: str = "fp32",
                 seed: int = 0):
        if isinstance(threads, bool) or int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.threads = int(threads)
        self.use_xnnpack = bool(use_xnnpack)
        self.precision = precision
        self.seed = seed

    @property
    def provider(self) -> str:
        return "XNNPACK" if self.use_xnnpack else "builtin"

    def interpreter(self, model: Any):
        """An allocated interpreter for a ``.tflite`` path or flatbuffer bytes."""
        Interpreter, OpResolverType, _ = _import_interpreter()
        resolver = (OpResolverType.AUTO if self.use_xnnpack
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isfile(path):
                raise BackendError(f"TFLite model file not found: {path}")
            kw: dict[str, Any] = {"model_path": path}
        else:
            data, _ = read_model_bytes(model, kind="TFLite model")
            kw = {"model_content": data}
        try:
            return Interpreter(num_threads=self.threads, experimental_op_resolver_type=resolver, **kw)
        except Exception as e:
            raise BackendError(f"LiteRT could not load the model: {str(e).strip().splitlines()[-1]}") from e

    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        _, _, runtime = _import_interpreter()
        return Fingerprint(backend=self.name, runtime=runtime, device=cpu_model_name(),
                           provider=self.provider, threads=self.threads, batch_size=batch_size,
                           precision=self.precision)

    def _ready(self, model: Any, input_shape: Optional[Sequence[int]], batch_size: Optional[int], x=None):
        """An interpreter resized, allocated, fed and run once; returns (interpreter, input)."""
        interp = self.interpreter(model)
        details = interp.get_input_details()
        if len(details) != 1:
            raise BackendError(f"TFLiteBackend measures single-input models; this one has "
                               f"{len(details)} inputs")
        d = details[0]
        signature = [int(v) for v in d.get("shape_signature", d["shape"])]
        shape = resolve_shape(input_shape, signature, batch_size, what="TFLite model")
        try:
            if tuple(shape) != tuple(int(v) for v in d["shape"]):
                interp.resize_tensor_input(d["index"], list(shape), strict=False)
            interp.allocate_tensors()
            x = random_input(shape, d["dtype"], seed=self.seed) if x is None else x
            interp.set_tensor(d["index"], x)
            interp.invoke()
        except Exception as e:
            raise BackendError(f"LiteRT failed to run the model on input {shape}: "
                               f"{str(e).strip().splitlines()[-1]}") from e
        return interp, x

    def prepare(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
              batch_size: Optional[int] = None) -> "_TFLiteTimer":
        """The model prepared for timing (:class:`latency.timing.Timer`); ``session()`` gives fresh
        interpreters (XNNPACK packs the weights anew in each) on the same input."""
        if isinstance(model, (str, os.PathLike)):
            desc = os.fspath(model)
        else:
            model, desc = read_model_bytes(model, kind="TFLite model")
        interp, x = self._ready(model, input_shape, batch_size)
        return _TFLiteTimer(self, model, input_shape, batch_size, interp, x, what=desc)

    def __repr__(self) -> str:
        return f"TFLiteBackend(threads={self.threads}, use_xnnpack={self.use_xnnpack})"


class _TFLiteTimer(TimerBase):
    def __init__(self, backend: TFLiteBackend, model: Any, input_shape, batch_size, first, x, *, what: str):
        self.backend, self.model, self.input_shape, self.batch_size, self.x = backend, model, input_shape, batch_size, x
        self._first = first
        self.exclusive = backend.threads == 1
        self.cpu_clock = time.thread_time_ns if self.exclusive else None
        self.what = what

    def session(self):
        if self._first is not None:
            interp, self._first = self._first, None
        else:
            interp, _ = self.backend._ready(self.model, self.input_shape, self.batch_size, self.x)
        return interp.invoke
