"""Memory bounds: refuse a request whose arrays would not fit before allocating them.

A user number that sizes an allocation (a DP budget x precision, an image size) is checked against the
memory this machine has available, so a typo is one line `error: ...` instead of a MemoryError, a swap
storm or the kernel's OOM killer.
"""
from __future__ import annotations

import os

from jaxnas.errors import UserError

__all__ = ["ResourceError", "available_memory", "check_fits_memory", "format_bytes"]

# The share of the available memory one request may take (the rest: the program, the data, the OS).
MEMORY_SHARE = 0.5


class ResourceError(UserError, MemoryError):
    """A request that would not fit in this machine's memory."""


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def check_fits_memory(nbytes: float, what: str, fix: str, share: float = MEMORY_SHARE) -> None:
    """Raise ResourceError when `nbytes` exceed `share` of the available memory.

    `what` names the allocation ("the DP table for ..."), `fix` says what to change. A lower bound of what a
    whole run needs is checked against all of it (`share=1`): a refusal is then certain."""
    limit = share * available_memory()
    if not nbytes <= limit:  # also catches inf / nan sizes
        raise ResourceError(f"{what} would need {format_bytes(nbytes)}, more than the {format_bytes(limit)} this "
                            f"machine can give it; {fix}")
