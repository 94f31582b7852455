"""XLA (JAX) latency backend: times a jitted Python callable on a JAX device."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..fingerprint import Fingerprint, cpu_model_name
from .base import BackendError, PreparedBackend, TimerBase, check_thread_count, random_input, resolve_shape

__all__ = ["XlaBackend"]

_PRECISION_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": "bfloat16"}


class XlaBackend(PreparedBackend):
    """Times ``fn(x)`` under ``jax.jit`` on ``device`` (default: JAX's default device).

    ``device`` may be a ``jax.Device``, a platform name ('cpu', 'gpu', 'tpu')
    or an index into ``jax.devices()``.  The first call compiles and is never
    timed; every run blocks on the result (``block_until_ready``).  XLA manages
    its own threads, so ``threads`` in the fingerprint is None and a thread
    count other than 1 (the config default) is refused rather than ignored.
    """

    name = "xla"

    def __init__(self, device: Any = None, *, precision: str = "fp32", seed: int = 0,
                 threads: Optional[int] = None):
        check_thread_count(self.name, threads)
        if precision not in _PRECISION_DTYPES:
            raise ValueError(f"precision must be one of {tuple(_PRECISION_DTYPES)}, got {precision!r}")
        self._device_spec = device
        self.precision = precision
        self.seed = seed

    @property
    def device(self):
        import jax

        spec = self._device_spec
        if spec is None:
            return jax.devices()[0]
        if isinstance(spec, str):
            try:
                return jax.devices(spec)[0]
            except RuntimeError as e:
                raise BackendError(f"no JAX device for platform {spec!r}: {e}") from e
        if isinstance(spec, int):
            devs = jax.devices()
            if not 0 <= spec < len(devs):
                raise BackendError(f"JAX device index {spec} out of range ({len(devs)} devices)")
            return devs[spec]
        return spec

    def fingerprint(self, batch_size: int = 1) -> Fingerprint:
        import jax
        import jaxlib

        dev = self.device
        platform = str(dev.platform)
        device = cpu_model_name() if platform == "cpu" else str(getattr(dev, "device_kind", platform))
        return Fingerprint(backend=self.name,
                           runtime=f"jax {jax.__version__} (jaxlib {jaxlib.__version__})",
                           device=device, provider=platform, threads=None, batch_size=batch_size,
                           precision=self.precision)

    def prepare(self, model: Callable[[Any], Any], input_shape: Optional[Sequence[int]] = None, *,
              batch_size: Optional[int] = None) -> "_XlaTimer":
        """``model`` jitted, compiled and run once on a fixed input (:class:`latency.timing.Timer`).  XLA
        has no sessions to renew: every round reuses the executable.  On CPU the process's CPU time
        checks for preemption (XLA may compute on its own threads, so it is not the thread's)."""
        import jax

        if not callable(model):
            raise BackendError(f"XlaBackend times Python callables fn(x); got {type(model).__name__} "
                               f"(use the onnxruntime/tflite/tensorrt backends for model files)")
        if input_shape is None:
            raise BackendError("XlaBackend needs input_shape (a callable declares no input shape)")
        shape = resolve_shape(input_shape, None, batch_size, what="callable")
        dtype = _PRECISION_DTYPES[self.precision]
        if dtype == "bfloat16":
            import jax.numpy as jnp

            dtype = jnp.bfloat16
        dev = self.device
        x = jax.device_put(random_input(shape, np.float32, seed=self.seed).astype(dtype), dev)
        jitted = jax.jit(model)
        try:
            jax.block_until_ready(jitted(x))  # compile + first run: never timed
        except Exception as e:
            raise BackendError(f"the callable failed under jax.jit on input {shape}: {e}") from e
        return _XlaTimer(lambda: jax.block_until_ready(jitted(x)), on_cpu=str(dev.platform) == "cpu",
                         what=getattr(model, "__name__", "the callable"))

    def __repr__(self) -> str:
        return f"XlaBackend(device={self._device_spec!r}, precision={self.precision!r})"


class _XlaTimer(TimerBase):
    def __init__(self, run: Callable[[], Any], *, on_cpu: bool, what: str):
        self._run = run
        self.what = what
        self.cpu_clock = time.process_time_ns if on_cpu else None

    def session(self):
        return self._run
