"""Where and how a latency number was measured.

Latency tables are only valid for the runtime/device/threads/batch/precision they
were measured with; :class:`Fingerprint` records exactly that so a table measured
on one setup is never silently used for another.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Union

__all__ = [
    "Fingerprint",
    "DEFAULT_MATCH_KEYS",
    "cpu_model_name",
    "host_arch",
]

# Fields compared by default when deciding whether two measurements are comparable.
DEFAULT_MATCH_KEYS: tuple[str, ...] = (
    "backend", "runtime", "device", "provider", "threads", "batch_size", "precision", "arch",
)


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """CPU model string: /proc/cpuinfo 'model name' (x86) / 'Hardware'/'Model' (ARM), else platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    for wanted in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep and k.strip() == wanted and v.strip():
                return " ".join(v.split())
    if platform.system() == "Darwin":
        try:
            import subprocess

            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                return out
        except Exception:  # pragma: no cover - best effort
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_arch() -> str:
    """Host machine architecture, e.g. 'x86_64' or 'aarch64'."""
    return platform.machine() or "unknown"


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a measurement setup.

    backend     registry name of the backend ('onnxruntime', 'tflite', 'xla', 'tensorrt', …)
    runtime     runtime and version, e.g. 'onnxruntime 1.31.1'
    device      CPU model (from /proc/cpuinfo) or GPU name
    provider    execution provider / delegate / platform actually active
                ('CPUExecutionProvider', 'XNNPACK', 'cpu', 'cuda', …)
    threads     intra-op threads (None: runtime-managed, e.g. XLA or a GPU)
    batch_size  batch size the latency is per (ms per batch); None if unknown
    precision   'fp32' / 'fp16' (/ 'int8')
    arch        host machine architecture
    """

    backend: str
    runtime: str
    device: str
    provider: str = ""
    threads: int | None = 1
    batch_size: int | None = 1
    precision: str = "fp32"
    arch: str = ""

    def __post_init__(self):
        if not self.arch:
            object.__setattr__(self, "arch", host_arch())

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Fingerprint":
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("backend", "runtime", "device") if n not in d]
        if missing:
            raise ValueError(f"fingerprint is missing {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})

    # --------------------------------------------------------------- compare
    def matches(self, other: "FingerprintLike", keys: Iterable[str] = DEFAULT_MATCH_KEYS) -> bool:
        """Whether ``other`` has the same value for every key in ``keys`` (each a field of this class)."""
        od, sd, keys = as_dict(other), self.to_dict(), tuple(keys)
        unknown = next((k for k in keys if k not in sd), None)
        if unknown is not None:
            raise KeyError(f"unknown fingerprint field {unknown!r}; fields are {sorted(sd)}")
        return all(sd[k] == od.get(k) for k in keys)

    def describe(self) -> str:
        """One line, e.g. "onnxruntime 1.31.1 [CPUExecutionProvider] threads=1 batch=1 fp32 on 'AMD EPYC' (x86_64)"."""
        return describe(self)


FingerprintLike = Union[Fingerprint, Mapping[str, Any]]


def as_dict(fp: FingerprintLike) -> dict[str, Any]:
    if isinstance(fp, Fingerprint):
        return fp.to_dict()
    if isinstance(fp, Mapping):
        return dict(fp)
    raise TypeError(f"expected a Fingerprint or a dict, got {type(fp).__name__}")


def describe(fp: FingerprintLike) -> str:
    d = as_dict(fp)
    backend = d.get("backend", "?")
    runtime = d.get("runtime") or backend
    head = runtime if str(runtime).split(" ")[0] == backend else f"{backend} ({runtime})"
    prov = f" [{d['provider']}]" if d.get("provider") else ""
    threads = d.get("threads")
    return (f"{head}{prov} threads={threads if threads is not None else 'auto'} "
            f"batch={d.get('batch_size')} {d.get('precision', '?')} on {d.get('device', '?')!r}"
            f" ({d.get('arch') or '?'})")
