"""A tiny ctypes binding to the CUDA *driver* API (libcuda.so.1).

Why this instead of cuda-python / pycuda / cupy / torch: the driver library
ships with every NVIDIA driver, so device buffers, a stream and timing events
need no extra Python package at all (``pip install tensorrt`` is the only
GPU dependency of :class:`~latency.backends.trt.TensorRTBackend`).

We bind the device's *primary* context and make it current, which is the
context the CUDA runtime (and therefore TensorRT) uses too, so pointers and
stream handles from here are valid for ``IExecutionContext.set_tensor_address``
and ``execute_async_v3``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import subprocess
import sys
from typing import Optional

import numpy as np

from jaxnas.runtime import BackendError

__all__ = ["CudaDriver", "gpu_name"]

_c_ptr = ctypes.c_void_p
_c_devptr = ctypes.c_uint64  # CUdeviceptr is unsigned long long on 64-bit hosts


def _load_libcuda() -> ctypes.CDLL:
    names = (["nvcuda.dll"] if sys.platform == "win32"
             else ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")])
    for n in filter(None, names):
        try:
            return ctypes.CDLL(n)
        except OSError:
            pass
    raise BackendError("CUDA driver library (libcuda.so.1) not found: an NVIDIA GPU and driver are required")


class CudaDriver:
    """Device memory, one stream and events on CUDA device ``device`` (primary context)."""

    def __init__(self, device: int = 0, *, context: bool = True):
        """``context=False`` only initialises the driver (enough for :meth:`device_name`)."""
        self._lib = _load_libcuda()
        self._fns: dict[str, object] = {}
        self.device_ordinal = int(device)
        self._check(self._fn("cuInit")(0), "cuInit")
        count = ctypes.c_int(0)
        self._check(self._fn("cuDeviceGetCount")(ctypes.byref(count)), "cuDeviceGetCount")
        if not 0 <= self.device_ordinal < count.value:
            raise BackendError(f"CUDA device {self.device_ordinal} does not exist ({count.value} visible)")
        dev = ctypes.c_int(0)
        self._check(self._fn("cuDeviceGet")(ctypes.byref(dev), self.device_ordinal), "cuDeviceGet")
        self._dev = dev
        self._ctx: Optional[ctypes.c_void_p] = None
        self._allocs: list[int] = []
        if not context:
            return
        ctx = _c_ptr()
        self._check(self._fn("cuDevicePrimaryCtxRetain")(ctypes.byref(ctx), dev),
                    "cuDevicePrimaryCtxRetain")
        self._ctx = ctx
        self._check(self._fn("cuCtxSetCurrent")(ctx), "cuCtxSetCurrent")

    # -------------------------------------------------------------- plumbing
    def _fn(self, name: str):
        """Driver entry point ``name``; a ``*_v2`` name (the ABI the CUDA headers map to since
        CUDA 4/11) falls back to the unversioned symbol on drivers that lack it."""
        if name not in self._fns:
            for n in ((name, name[:-3]) if name.endswith("_v2") else (name,)):
                f = getattr(self._lib, n, None)
                if f is not None:
                    f.restype = ctypes.c_int
                    self._fns[name] = f
                    break
            else:
                raise BackendError(f"CUDA driver lacks {name} (driver too old?)")
        return self._fns[name]

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = ctypes.c_char_p()
            try:
                self._lib.cuGetErrorString(ctypes.c_int(rc), ctypes.byref(msg))
                text = msg.value.decode() if msg.value else ""
            except Exception:  # pragma: no cover
                text = ""
            raise BackendError(f"CUDA driver call {what} failed with error {rc}{': ' + text if text else ''}")

    def make_current(self) -> None:
        if self._ctx is None:
            raise BackendError("CudaDriver was created with context=False")
        self._check(self._fn("cuCtxSetCurrent")(self._ctx), "cuCtxSetCurrent")

    # --------------------------------------------------------------- queries
    def device_name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._check(self._fn("cuDeviceGetName")(buf, 256, self._dev), "cuDeviceGetName")
        return buf.value.decode(errors="replace").strip()

    def driver_version(self) -> str:
        v = ctypes.c_int(0)
        self._check(self._fn("cuDriverGetVersion")(ctypes.byref(v)), "cuDriverGetVersion")
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"

    # ---------------------------------------------------------------- memory
    def mem_alloc(self, nbytes: int) -> int:
        ptr = _c_devptr(0)
        self._check(self._fn("cuMemAlloc_v2")(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))),
                    f"cuMemAlloc({nbytes})")
        self._allocs.append(ptr.value)
        return ptr.value

    def mem_free(self, ptr: int) -> None:
        self._check(self._fn("cuMemFree_v2")(_c_devptr(ptr)), "cuMemFree")
        if ptr in self._allocs:
            self._allocs.remove(ptr)

    def memcpy_htod(self, dst: int, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        self._check(self._fn("cuMemcpyHtoD_v2")(_c_devptr(dst), src.ctypes.data_as(_c_ptr),
                                             ctypes.c_size_t(src.nbytes)), "cuMemcpyHtoD")

    def memcpy_dtoh(self, dst: np.ndarray, src: int) -> None:
        if not dst.flags["C_CONTIGUOUS"]:
            raise ValueError("memcpy_dtoh needs a C-contiguous destination array")
        self._check(self._fn("cuMemcpyDtoH_v2")(dst.ctypes.data_as(_c_ptr), _c_devptr(src),
                                             ctypes.c_size_t(dst.nbytes)), "cuMemcpyDtoH")

    # ------------------------------------------------------- streams/events
    def stream_create(self) -> int:
        s = _c_ptr()
        self._check(self._fn("cuStreamCreate")(ctypes.byref(s), 0), "cuStreamCreate")
        return s.value or 0

    def stream_synchronize(self, stream: int) -> None:
        self._check(self._fn("cuStreamSynchronize")(_c_ptr(stream)), "cuStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self._check(self._fn("cuStreamDestroy_v2")(_c_ptr(stream)), "cuStreamDestroy")

    def event_create(self) -> int:
        e = _c_ptr()
        self._check(self._fn("cuEventCreate")(ctypes.byref(e), 0), "cuEventCreate")
        return e.value or 0

    def event_record(self, event: int, stream: int) -> None:
        self._check(self._fn("cuEventRecord")(_c_ptr(event), _c_ptr(stream)), "cuEventRecord")

    def event_synchronize(self, event: int) -> None:
        self._check(self._fn("cuEventSynchronize")(_c_ptr(event)), "cuEventSynchronize")

    def event_elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float(0.0)
        self._check(self._fn("cuEventElapsedTime")(ctypes.byref(ms), _c_ptr(start), _c_ptr(end)),
                    "cuEventElapsedTime")
        return float(ms.value)

    def event_destroy(self, event: int) -> None:
        self._check(self._fn("cuEventDestroy_v2")(_c_ptr(event)), "cuEventDestroy")

    # --------------------------------------------------------------- cleanup
    def close(self) -> None:
        for p in list(self._allocs):
            try:
                self.mem_free(p)
            except BackendError:  # pragma: no cover
                pass
        if self._ctx is not None:
            try:
                self._check(self._fn("cuDevicePrimaryCtxRelease_v2")(self._dev), "cuDevicePrimaryCtxRelease")
            except BackendError:  # pragma: no cover
                pass
            self._ctx = None

    def __enter__(self) -> "CudaDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=8)
def gpu_name(device: int = 0) -> Optional[str]:
    """GPU model name (driver API, else nvidia-smi), or None when no NVIDIA GPU is visible."""
    try:
        drv = CudaDriver(device, context=False)  # no context: no GPU memory used for a name
        try:
            return drv.device_name()
        finally:
            drv.close()
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, timeout=10)
        name = out.stdout.strip().splitlines()
        return name[0].strip() if out.returncode == 0 and name else None
    except Exception:
        return None
