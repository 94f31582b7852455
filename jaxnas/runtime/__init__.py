"""Runtime plumbing shared by `jaxnas.export` (which builds and parity-checks runtime files) and
`jaxnas.latency` (which times them): model-file and input-shape helpers, the TensorRT engine builder, a
ctypes binding to the CUDA driver, and the one error they raise. Every runtime library is imported
lazily; core modules and methods never import this package.
"""
from __future__ import annotations

from jaxnas.errors import UserError

__all__ = ["BackendError"]


class BackendError(UserError, RuntimeError):
    """A latency backend cannot run: runtime missing, provider inactive, bad model, …"""
