"""Keep native runtime chatter off the console unless the user asked for it (`jaxnas --verbose` sets
JAXNAS_VERBOSE=1): TensorFlow's converter and LiteRT's interpreter print INFO lines from C++ straight to
file descriptor 2, below anything Python's logging or warnings can reach."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

__all__ = ["native_stderr_quiet", "VERBOSE_ENV"]

VERBOSE_ENV = "JAXNAS_VERBOSE"


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (errors still raise and are reported after it)."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to quiet
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
