"""Run the `jaxnas` command on tcmalloc when the system has it (Linux).

XLA:CPU frees a step's temporaries and allocates them again on the next step. Under glibc malloc the
large ones come back as fresh pages each time: a MobileNetV2-224 train step (batch 16) took 226k page
faults and about 0.45 s of kernel time per step on this project's 2-core machine. tcmalloc keeps the
pages mapped (no faults) and the step got 10-15 % faster (benchmarks/train_step.py prints both).

An allocator must be loaded before the process starts, so the command re-executes itself once with
LD_PRELOAD set, as Intel's PyTorch launcher does for the same reason. `JAXNAS_ALLOCATOR=system` opts
out; Python API users get the same effect by starting Python with LD_PRELOAD themselves.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

OPT_OUT_VAR = "JAXNAS_ALLOCATOR"
_REEXEC_MARK = "JAXNAS_ALLOCATOR_REEXEC"
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/usr/local/lib")


def find_tcmalloc(dirs: Sequence[str] = SEARCH_DIRS) -> str | None:
    for d in dirs:
        for name in TCMALLOC_NAMES:
            path = os.path.join(d, name)
            if os.path.exists(path):
                return path
    return None


def loaded_allocator(maps_path: str = "/proc/self/maps") -> str:
    """'tcmalloc' or 'jemalloc' when one is mapped into this process, else 'system'."""
    try:
        with open(maps_path) as f:
            maps = f.read()
    except OSError:
        return "system"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "system")


def preload_env(env: Mapping[str, str], lib: str | None) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should run as it is."""
    if lib is None or env.get(OPT_OUT_VAR, "tcmalloc") == "system" or env.get(_REEXEC_MARK):
        return None
    preloaded = env.get("LD_PRELOAD", "")
    if "tcmalloc" in preloaded or "jemalloc" in preloaded:
        return None
    new = dict(env)
    new["LD_PRELOAD"] = f"{lib}:{preloaded}" if preloaded else lib
    new[_REEXEC_MARK] = "1"
    return new


def reexec_with_tcmalloc() -> None:
    """Replace this process by itself on tcmalloc, when available and not yet loaded; else return."""
    if not sys.platform.startswith("linux") or loaded_allocator() != "system":
        return
    env = preload_env(os.environ, find_tcmalloc())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
