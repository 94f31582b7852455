"""ONNX Runtime latency backend."""
from __future__ import annotations

import functools
import time
import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..fingerprint import Fingerprint, cpu_model_name
from .base import BackendError, PreparedBackend, TimerBase, random_input, read_model_bytes, resolve_shape

__all__ = ["OnnxRuntimeBackend"]

# Providers that run on the host CPU; anything else must really be active once requested.
_CPU_PROVIDERS = {"CPUExecutionProvider"}
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                  "MIGraphXExecutionProvider", "DmlExecutionProvider"}

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}

ProviderSpec = Union[str, tuple[str, Mapping[str, Any]]]


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - ort is installed in the dev env
        raise BackendError("onnxruntime is not installed: pip install onnxruntime "
                           "(or onnxruntime-gpu for CUDA/TensorRT providers)") from e
    return ort


def _provider_name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


@functools.lru_cache(maxsize=1)
def _probe_model_bytes() -> Optional[bytes]:
    """A one-node Identity model, used to ask ORT which providers really activate."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:  # pragma: no cover
        return None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    return m.SerializeToString()


class OnnxRuntimeBackend(PreparedBackend):
    """Times ONNX models with onnxruntime.

    Session setup for reproducible single-stream latency: ``intra_op_num_threads
    = threads``, ``inter_op_num_threads = 1``, sequential execution, graph
    optimisation level ALL.  After the session is created the *active*
    providers (``session.get_providers()``) are checked: onnxruntime(-gpu)
    silently falls back to CPU when a GPU provider cannot load, which would
    make a "GPU" table full of CPU numbers; that raises :class:`BackendError`.
    """

    name = "onnxruntime"

    def __init__(self, threads: Optional[int] = 1,
                 providers: Sequence[ProviderSpec] = ("CPUExecutionProvider",), *,
                 precision: str = "fp32", seed: int = 0, log_severity: int = 3):
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ValueError(f"threads must be >= 1 (or None for the onnxruntime default), got {threads!r}")
        if isinstance(providers, str):
            providers = (providers,)
        if not providers:
            raise ValueError("providers must name at least one execution provider")
        self.threads = None if threads is None else int(threads)
        self.providers = tuple(providers)
        self.precision = precision
        self.seed = seed
        self.log_severity = log_severity
        self._active: Optional[tuple[str, ...]] = None

    # --------------------------------------------------------------- session
    def session_options(self):
        ort = _import_ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 0 if self.threads is None else self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = self.log_severity
        return so

    def make_session(self, model: Any):
        """An ``InferenceSession`` for a path/bytes/ModelProto with the requested providers verified active."""
        ort = _import_ort()
        data, desc = read_model_bytes(model, kind="ONNX model")
        providers = [p if isinstance(p, str) else (p[0], dict(p[1])) for p in self.providers]
        with warnings.catch_warnings():
            # ORT warns "Specified provider ... is not in available provider names"; we raise instead.
            warnings.simplefilter("ignore", UserWarning)
            try:
                sess = ort.InferenceSession(data, sess_options=self.session_options(),
                                            providers=providers)
            except Exception as e:
                raise BackendError(f"onnxruntime could not load {desc}: {str(e).strip().splitlines()[-1]}") from e
        self._check_active(sess.get_providers())
        return sess

    def _check_active(self, active: Sequence[str]) -> None:
        active = tuple(active)
        ort = _import_ort()
        for p in self.providers:
            pname = _provider_name(p)
            if pname in _CPU_PROVIDERS or pname in active:
                continue
            kind = "GPU " if pname in _GPU_PROVIDERS else ""
            raise BackendError(
                f"requested {kind}execution provider {pname} is not active in onnxruntime "
                f"{ort.__version__} (active: {list(active)}; available in this build: "
                f"{ort.get_available_providers()}). onnxruntime silently falls back to CPU; "
                f"install onnxruntime-gpu with matching CUDA/cuDNN (and TensorRT) libraries, "
                f"or request providers=('CPUExecutionProvider',)")
        self._active = active

    def active_providers(self) -> tuple[str, ...]:
        """Providers that really activate (probed once with a 1-node model if nothing ran yet)."""
        if self._active is None:
            probe = _probe_model_bytes()
            if probe is None:  # pragma: no cover - onnx missing
                return tuple(_provider_name(p) for p in self.providers)
            self.make_session(probe)
        assert self._active is not None
        return self._active

    # ------------------------------------------------------------ interface
    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        ort = _import_ort()
        active = self.active_providers()
        main = active[0] if active else "CPUExecutionProvider"
        device = _gpu_name(self._device_id()) if main in _GPU_PROVIDERS else cpu_model_name()
        return Fingerprint(backend=self.name, runtime=f"onnxruntime {ort.__version__}",
                           device=device, provider=main,
                           threads=self.threads if main in _CPU_PROVIDERS else None,
                           batch_size=batch_size, precision=self.precision)

    def prepare(self, model: Any, input_shape: Optional[Sequence[int]] = None, *,
              batch_size: Optional[int] = None) -> "_OrtTimer":
        """The model prepared for timing (:class:`latency.timing.Timer`): one session created and run once
        (a bad model or shape fails here); ``session()`` then gives fresh sessions on the same input."""
        data, desc = read_model_bytes(model, kind="ONNX model")
        sess = self.make_session(data)
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"OnnxRuntimeBackend measures single-input models; this one has "
                               f"{len(inputs)} inputs: {[i.name for i in inputs]}")
        inp = inputs[0]
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise BackendError(f"unsupported ONNX input type {inp.type} for input {inp.name!r}")
        shape = resolve_shape(input_shape, inp.shape, batch_size, what="ONNX model")
        feeds = {inp.name: random_input(shape, dtype, seed=self.seed)}
        out_names = [o.name for o in sess.get_outputs()]
        try:
            sess.run(out_names, feeds)  # validates the shape before any timing
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run the model on input {shape}: "
                               f"{str(e).strip().splitlines()[-1]}") from e
        on_cpu = self.active_providers()[0] in _CPU_PROVIDERS
        return _OrtTimer(self, data, sess, feeds, out_names, exclusive=on_cpu and self.threads == 1, what=desc)

    # -------------------------------------------------------------- helpers
    def _device_id(self) -> int:
        for p in self.providers:
            if not isinstance(p, str) and "device_id" in p[1]:
                return int(p[1]["device_id"])
        return 0

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend(threads={self.threads}, providers={self.providers!r})"


class _OrtTimer(TimerBase):
    """Fresh ``InferenceSession``s of one model (sessions of one net can settle in different speed modes)."""

    def __init__(self, backend: OnnxRuntimeBackend, data: bytes, first, feeds, out_names, *, exclusive: bool,
                 what: str):
        self.backend, self.data, self.feeds, self.out_names = backend, data, feeds, out_names
        self._first = first
        self.exclusive = exclusive
        # 1 thread on the CPU provider: the run computes on this thread, so its CPU time shows preemption
        self.cpu_clock = time.thread_time_ns if exclusive else None
        self.what = what

    def session(self):
        sess = self._first if self._first is not None else self.backend.make_session(self.data)
        self._first = None
        out_names, feeds = self.out_names, self.feeds
        return lambda: sess.run(out_names, feeds)


def _gpu_name(device_id: int) -> str:
    from jaxnas.runtime.cuda_driver import gpu_name

    return gpu_name(device_id) or f"CUDA device {device_id}"
